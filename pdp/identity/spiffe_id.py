"""Strict SPIFFE ID parsing.

py-spiffe's ``SpiffeId`` is too lenient for input validation: it accepts a
trailing newline (Python's ``$`` matches before it), lowercases uppercase trust
domains and maps non-ASCII look-alikes such as the Kelvin sign to ASCII. An
authorization component must reject such input, never normalise it, so pdp
parses SPIFFE IDs with this full-match ASCII grammar (SPIFFE-ID.md section 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

# \A ... \Z with re.fullmatch: no newline slips through. ASCII only, lowercase trust domain.
_TRUST_DOMAIN = r"[a-z0-9._-]+"
_SEGMENT = r"[A-Za-z0-9._-]+"
_SPIFFE_ID_RE = re.compile(
    rf"\Aspiffe://(?P<td>{_TRUST_DOMAIN})(?P<path>(?:/{_SEGMENT})*)\Z", re.ASCII
)
_TRUST_DOMAIN_RE = re.compile(rf"\A{_TRUST_DOMAIN}\Z", re.ASCII)


class InvalidSpiffeId(ValueError):
    """A string is not a valid SPIFFE ID; the message says which rule it breaks."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A syntactically valid SPIFFE ID, e.g. ``spiffe://acme.test/agent/support-bot``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def is_root(self) -> bool:
        """A trust-domain ID without a path; never valid as a workload identity."""
        return self.path == ""


def _explain(value: str) -> str:
    """Names the first rule ``value`` breaks (only called on the slow, failing path)."""
    if not value.isascii():
        return "contains non-ASCII characters"
    if not value.startswith("spiffe://"):
        return "must start with 'spiffe://' (lowercase scheme)"
    rest = value[len("spiffe://") :]
    authority, _, path = rest.partition("/")
    if "?" in value or "#" in value:
        return "must not contain a query or fragment"
    if "%" in value:
        return "must not contain percent-encoding"
    if not authority:
        return "trust domain is empty"
    if "@" in authority:
        return "trust domain must not contain userinfo"
    if authority.startswith("["):
        return (
            "trust domain must not be an IP literal such as '[::1]' (it may only contain"
            " lowercase letters, digits, '.', '-' and '_')"
        )
    if ":" in authority:
        return "trust domain must not contain a port"
    if not _TRUST_DOMAIN_RE.fullmatch(authority):
        return "trust domain may only contain lowercase letters, digits, '.', '-' and '_'"
    if path == "" and rest.endswith("/"):
        return "must not end with '/'"
    for segment in path.split("/"):
        if segment == "":
            return "path has an empty segment or a trailing '/'"
        if segment in (".", ".."):
            return "path must not contain '.' or '..' segments"
        if not re.fullmatch(_SEGMENT, segment, re.ASCII):
            return "path segments may only contain letters, digits, '.', '-' and '_'"
    return "is not a valid SPIFFE ID"


def parse_spiffe_id(value: str, *, require_path: bool = False) -> SpiffeId:
    """Parses ``value`` strictly; raises :class:`InvalidSpiffeId` naming the broken rule.

    ``require_path`` rejects trust-domain (root) IDs, which can never identify a workload.
    """
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise InvalidSpiffeId(f"is longer than {MAX_SPIFFE_ID_BYTES} bytes")
    match = _SPIFFE_ID_RE.fullmatch(value)
    if match is None:
        raise InvalidSpiffeId(_explain(value))
    trust_domain, path = match.group("td"), match.group("path")
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if any(segment in (".", "..") for segment in path.split("/")[1:]):
        raise InvalidSpiffeId("path must not contain '.' or '..' segments")
    if require_path and not path:
        raise InvalidSpiffeId("must have a path (a trust-domain ID does not name a workload)")
    return SpiffeId(trust_domain, path)


def parse_trust_domain(value: str) -> str:
    """Validates a bare trust domain name such as ``acme.test``."""
    if len(value) > MAX_TRUST_DOMAIN_BYTES or not _TRUST_DOMAIN_RE.fullmatch(value):
        raise InvalidSpiffeId(f"{value!r} is not a valid trust domain name")
    return value


class SpiffeIdPattern:
    """An allow-list entry: an exact SPIFFE ID, or a prefix ending in ``/*``.

    ``spiffe://acme.test/gateway/*`` matches every ID below ``/gateway/`` (one or more
    further segments) in trust domain ``acme.test`` and nothing in another trust domain.
    """

    __slots__ = ("_exact", "_prefix", "text", "trust_domain")

    def __init__(self, text: str) -> None:
        self.text = text
        if text.endswith("/*"):
            base = parse_spiffe_id(text[:-2])
            self._prefix: str | None = str(base) + "/"
            self._exact: str | None = None
            self.trust_domain = base.trust_domain
        else:
            exact = parse_spiffe_id(text, require_path=True)
            self._prefix = None
            self._exact = str(exact)
            self.trust_domain = exact.trust_domain

    def matches(self, spiffe_id: str) -> bool:
        if self._exact is not None:
            return spiffe_id == self._exact
        assert self._prefix is not None
        return spiffe_id.startswith(self._prefix) and len(spiffe_id) > len(self._prefix)

    def __repr__(self) -> str:
        return f"SpiffeIdPattern({self.text!r})"
