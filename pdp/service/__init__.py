"""The SVID-authenticated gRPC decision service (``pdp.v1.DecisionService``).

Public API::

    config = ServiceConfig(...)  or  load_config("pdp.yaml")
    with open_identity(config.identity) as identity:
        server = DecisionServer(config, engine, identity, sink=my_audit_sink).start()
        serve_until_signalled(server)

``DecisionSink`` is where audit plugs in (see pdp.service.sink). The same server answers
``pdp.v1.AuditService`` (pdp.service.watch) for the ``audit_watchers``: a live feed of
the audit log (``audit_feed=``) and the health detail behind gRPC health
(``health_sources=``, see pdp.service.operations).
"""

# First, before anything imports grpc: grpc reads its TLS 1.2 cipher list at import.
from pdp.service import cipher_suites  # noqa: F401  # isort: split
from pdp.service.config import (
    CallerBinding,
    ConfigError,
    DevIdentity,
    FileIdentity,
    McpDoorConfig,
    RateLimit,
    ServerOptions,
    ServiceConfig,
    ServiceLimits,
    WorkloadApiIdentity,
    load_config,
)
from pdp.service.server import DecisionServer, open_identity, serve_until_signalled
from pdp.service.sink import (
    DecisionEvent,
    DecisionSink,
    NullSink,
    RefusalCode,
    RefusalEvent,
)

__all__ = [
    "CallerBinding",
    "ConfigError",
    "DecisionEvent",
    "DecisionServer",
    "DecisionSink",
    "DevIdentity",
    "FileIdentity",
    "McpDoorConfig",
    "NullSink",
    "RateLimit",
    "RefusalCode",
    "RefusalEvent",
    "ServerOptions",
    "ServiceConfig",
    "ServiceLimits",
    "WorkloadApiIdentity",
    "load_config",
    "open_identity",
    "serve_until_signalled",
]
