"""pdp: a SPIFFE-native policy decision point for AI-agent tool calls."""

__version__ = "0.1.0"
