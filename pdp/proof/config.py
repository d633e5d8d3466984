"""What pdp is told about proofs: intent issuers, JWT bundles, what to require.

Read from the ``proof:`` section of the service configuration (pdp/service/config.py)::

    proof:
      audience: spiffe://acme.test/pdp       # default: the server's own SPIFFE ID
      intent_issuers:
        - issuer: https://approvals.acme.test   # the tokens' `iss`
          jwks: /etc/pdp/approvals.jwks.json    # its public keys (re-read on change)
      require_signed_intent: {agents: [spiffe://acme.test/agent/finance-*], groups: [finance],
                              servers: [payments]}
      jwt_bundles: {acme.test: /etc/pdp/acme.jwt.json}   # default: the Workload API's
      require_agent_proof: {trust_domains: [acme.test]}
      max_token_bytes: 8192
      leeway_s: 30
      max_intent_lifetime_s: 3600
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pdp.identity.spiffe_id import InvalidSpiffeId, SpiffeIdPattern, parse_trust_domain
from pdp.proof.jose import DEFAULT_MAX_TOKEN_BYTES


class ProofConfigError(ValueError):
    """The ``proof`` configuration is unusable; the message names the key."""


@dataclass(frozen=True, slots=True)
class IntentIssuer:
    issuer: str  # the `iss` of its tokens, matched exactly
    jwks: Path  # a JWK Set of its public keys, each with a `kid`


@dataclass(frozen=True, slots=True)
class Requirement:
    """Which requests must carry a proof: any agent matching ``agents`` (SPIFFE ID
    patterns), in one of ``groups`` (inventory agent groups, nested included), of one of
    ``trust_domains``, or calling a tool of one of ``servers``."""

    agents: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    _patterns: tuple[SpiffeIdPattern, ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        patterns: list[SpiffeIdPattern] = []
        for text in (*self.agents, *self.trust_domains):
            try:
                if text in self.agents:
                    patterns.append(SpiffeIdPattern(text))
                else:
                    parse_trust_domain(text)
            except InvalidSpiffeId as exc:
                raise ProofConfigError(f"{text!r}: {exc}") from None
        object.__setattr__(self, "_patterns", tuple(patterns))

    def __bool__(self) -> bool:
        return bool(self.agents or self.groups or self.servers or self.trust_domains)

    def applies(self, agent: str, server: str, groups_of: Callable[[str], frozenset[str]]) -> bool:
        if server in self.servers or any(p.matches(agent) for p in self._patterns):
            return True
        if self.trust_domains and agent[len("spiffe://") :].split("/", 1)[0] in self.trust_domains:
            return True
        return bool(self.groups) and not groups_of(agent).isdisjoint(self.groups)


@dataclass(frozen=True, slots=True)
class ProofConfig:
    audience: str = ""  # pdp's SPIFFE ID as token audiences name it; "": the server's own
    intent_issuers: tuple[IntentIssuer, ...] = ()
    require_signed_intent: Requirement = Requirement()
    # Trust domain -> JWT bundle file (SPIFFE bundle / JWK Set). Empty: the Workload API's
    # JWT bundles when the server's identity comes from it, else no agent can be proven.
    jwt_bundles: Mapping[str, Path] = field(default_factory=dict)
    require_agent_proof: Requirement = Requirement()
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    leeway_s: float = 30.0  # clock skew allowed on exp, nbf, iat
    # A signed intent may live this long (exp - iat): its jti is remembered that long.
    max_intent_lifetime_s: float = 3600.0
    max_remembered_jtis: int = 100_000  # per process; beyond it new intents are denied
    key_check_interval_s: float = 5.0  # how often key files are looked at for changes

    def __post_init__(self) -> None:
        if self.require_agent_proof.servers:
            raise ProofConfigError(
                "require_agent_proof: servers is not supported (agents, groups, trust_domains)"
            )
        for name in ("max_token_bytes", "max_intent_lifetime_s", "max_remembered_jtis"):
            if getattr(self, name) <= 0:
                raise ProofConfigError(f"{name}: must be greater than 0")
        if self.leeway_s < 0 or self.leeway_s > 300:
            raise ProofConfigError("leeway_s: must be between 0 and 300 seconds")
        seen: set[str] = set()
        for issuer in self.intent_issuers:
            if not issuer.issuer or issuer.issuer in seen:
                raise ProofConfigError(f"intent_issuers: {issuer.issuer!r} is empty or repeated")
            seen.add(issuer.issuer)
        for trust_domain in self.jwt_bundles:
            try:
                parse_trust_domain(trust_domain)
            except InvalidSpiffeId as exc:
                raise ProofConfigError(f"jwt_bundles: {exc}") from None
        if self.require_signed_intent and not self.intent_issuers:
            raise ProofConfigError(
                "require_signed_intent: no intent_issuers are configured, so nothing could pass"
            )
