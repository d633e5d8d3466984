"""The decision engine: load a policy directory once, decide requests purely."""

from pdp.engine.evaluate import Engine, cedar_context, cedar_request
from pdp.engine.source import Diagnostic, PolicyUnit
from pdp.engine.store import CompiledPolicies, PolicyLoadError, load_policies

__all__ = [
    "CompiledPolicies",
    "Diagnostic",
    "Engine",
    "PolicyLoadError",
    "PolicyUnit",
    "cedar_context",
    "cedar_request",
    "load_policies",
]
