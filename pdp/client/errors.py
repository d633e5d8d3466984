"""The client's few exceptions, and the reason codes of answers it makes up itself.

A failed call is, by default, not an exception but a deny whose single reason carries
one of the ``FAILURE_*`` codes below (fail closed): a caller that only looks at
``allowed`` can never mistake a pdp it could not reach for a permission.
"""

from __future__ import annotations

# Reason codes of the denies the client makes when it has no answer from pdp. They
# share the namespace of pdp's built-in codes ("default_deny", "invalid_request"...),
# and all start with "pdp_" so that no policy @id can be mistaken for one.
FAILURE_UNREACHABLE = "pdp_unreachable"  # no connection (refused, TLS failed, stopped)
FAILURE_WRONG_SERVER = "pdp_wrong_server"  # the peer is not the expected SPIFFE ID
FAILURE_TIMEOUT = "pdp_timeout"  # the call's deadline passed
FAILURE_REFUSED = "pdp_refused"  # pdp refused the call (not allowed, rate limited...)
FAILURE_BAD_ANSWER = "pdp_bad_answer"  # an answer that cannot be read
FAILURE_ERROR = "pdp_error"  # any other gRPC error

FAILURE_CODES = frozenset(
    {
        FAILURE_UNREACHABLE,
        FAILURE_WRONG_SERVER,
        FAILURE_TIMEOUT,
        FAILURE_REFUSED,
        FAILURE_BAD_ANSWER,
        FAILURE_ERROR,
    }
)


class ClientError(Exception):
    """Base of every exception :mod:`pdp.client` raises."""


class ClientConfigError(ClientError):
    """The client cannot be set up: a bad target, unreadable or inconsistent identity
    files, no bundle for the server's trust domain, no Workload API. Raised when the
    client is built, never by a call."""


class InvalidRequestError(ClientError, ValueError):
    """A request the client cannot even encode as a ``pdp.v1`` message (e.g. a field
    of the wrong JSON type). Nothing is sent. pdp itself answers a well-formed but
    invalid request with a deny (reason ``invalid_request``), not with this."""


class DecisionUnavailable(ClientError):
    """No answer from pdp. Raised only by a client built with ``on_failure="raise"``;
    by default the same failure is a deny with reason ``code``. ``code`` is one of the
    ``FAILURE_*`` codes, ``detail`` says what happened."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
