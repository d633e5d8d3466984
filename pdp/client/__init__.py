"""pdp's Python client: ask a running ``pdp serve`` whether an agent may call a tool.

    from pdp.client import Client, ClientIdentity, ToolCall

    identity = ClientIdentity.workload_api("spiffe://acme.test/pdp")
    with Client("pdp.internal:8443", identity) as pdp:
        result = pdp.check(ToolCall(agent, "tickets", "get_ticket", {"id": 7}))
        if not result.allowed: ...  # result.reasons, result.decision_id

Every connection to pdp is mutual TLS with the client's X.509-SVID, and pdp must
present exactly the expected SPIFFE ID on that very connection
(:mod:`pdp.client.transport`). Failures are denies with a ``pdp_*`` reason code by
default (:mod:`pdp.client.errors`). :class:`AsyncClient` is the asyncio twin.
"""

from pdp.client.client import AsyncClient, Client, OnFailure
from pdp.client.errors import (
    FAILURE_BAD_ANSWER,
    FAILURE_CODES,
    FAILURE_ERROR,
    FAILURE_REFUSED,
    FAILURE_TIMEOUT,
    FAILURE_UNREACHABLE,
    FAILURE_WRONG_SERVER,
    ClientConfigError,
    ClientError,
    DecisionUnavailable,
    InvalidRequestError,
)
from pdp.client.identity import ClientIdentity, identity_from_options
from pdp.client.values import AllowedToolsResult, CheckResult, ToolCall
from pdp.model import Intent, Reason, ToolAnswer, ToolVerdict

__all__ = [
    "FAILURE_BAD_ANSWER",
    "FAILURE_CODES",
    "FAILURE_ERROR",
    "FAILURE_REFUSED",
    "FAILURE_TIMEOUT",
    "FAILURE_UNREACHABLE",
    "FAILURE_WRONG_SERVER",
    "AllowedToolsResult",
    "AsyncClient",
    "CheckResult",
    "Client",
    "ClientConfigError",
    "ClientError",
    "ClientIdentity",
    "DecisionUnavailable",
    "Intent",
    "InvalidRequestError",
    "OnFailure",
    "Reason",
    "ToolAnswer",
    "ToolCall",
    "ToolVerdict",
    "identity_from_options",
]
