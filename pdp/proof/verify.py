"""Verifying a request's tokens, and what the configuration requires of it.

:meth:`Prover.prove` takes a parsed request and the decision time (the server's clock:
never a time the caller sent, or an expired token could be backdated into validity)
and returns the request with its :class:`pdp.model.Proof` filled in, plus a denial when
a token fails or a required proof is missing. Every failure has its own reason code,
``intent_<check>`` or ``agent_svid_<check>`` (the checks of pdp.proof.jose, and
``expired``, ``not_yet_valid``, ``wrong_audience``, ``subject_mismatch``,
``unknown_issuer``, ``replayed``…), and ``intent_unsigned`` / ``agent_unproven`` for
a proof the configuration requires but the request lacks. A token that is presented
is always checked, required or not: a forged token is an attack, not an omission.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id
from pdp.model import (
    DEFAULT_LIMITS,
    Intent,
    Limits,
    Request,
    RequestError,
    TokenDigest,
    format_time,
    parse_intent,
)
from pdp.proof.config import ProofConfig
from pdp.proof.jose import TokenRejected, UnverifiedToken, read_token, verify_signature
from pdp.proof.keys import Keys
from pdp.proof.replay_cache import JtiCache

REASON_INTENT_UNSIGNED = "intent_unsigned"
REASON_AGENT_UNPROVEN = "agent_unproven"
INTENT_PREFIX = "intent_"
AGENT_SVID_PREFIX = "agent_svid_"
# Every reason code pdp.proof can deny with (for replay, which cannot re-verify tokens).
CHECKS = (
    "too_large",
    "malformed",
    "alg_none",
    "alg_confusion",
    "alg_not_allowed",
    "unknown_issuer",
    "unknown_trust_domain",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "lifetime_too_long",
    "wrong_audience",
    "subject_mismatch",
    "replayed",
    "replay_cache_full",
)
REASON_CODES = frozenset(
    {REASON_INTENT_UNSIGNED, REASON_AGENT_UNPROVEN}
    | {INTENT_PREFIX + c for c in CHECKS}
    | {AGENT_SVID_PREFIX + c for c in CHECKS}
)
_MAX_VERIFIED_SVIDS = 4096
_SVID_HEADERS = frozenset({"alg", "kid", "typ"})
_MAX_JTI_BYTES = 256


@dataclass(frozen=True, slots=True)
class Denial:
    code: str
    message: str


class IssuerKeys(Protocol):
    def keys_for(self, issuer: str) -> Keys | None: ...


class JwtBundles(Protocol):
    """JWT authorities per trust domain (files, or the Workload API's JWT bundles)."""

    def keys_for(self, trust_domain: str) -> Keys | None: ...

    def close(self) -> None: ...


class NoJwtBundles:
    def keys_for(self, trust_domain: str) -> Keys | None:
        return None

    def close(self) -> None:
        pass


GroupsOf = Callable[[str], frozenset[str]]


def _no_groups(agent: str) -> frozenset[str]:
    return frozenset()


class Prover:
    def __init__(
        self,
        config: ProofConfig,
        *,
        audience: Callable[[], str],
        issuers: IssuerKeys,
        jwt_bundles: JwtBundles,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.config = config
        self._audience = audience
        self._issuers = issuers
        self._bundles = jwt_bundles
        self._limits = limits
        self.jtis = JtiCache(config.max_remembered_jtis)
        # JWT-SVIDs verified, by the token's SHA-256 -> the key set that verified it. An
        # agent sends the same JWT-SVID with many calls; its signature is checked once
        # per key set (a reloaded or rotated bundle is a new set: checked again). Claims
        # (exp, aud, sub) are checked at every decision all the same.
        self._svid_signatures: OrderedDict[str, Keys] = OrderedDict()
        self._svid_lock = threading.Lock()

    @classmethod
    def unconfigured(cls) -> Prover:
        """No issuers, no JWT bundles: every token presented is denied."""
        from pdp.proof.keys import KeyFiles

        return cls(
            ProofConfig(), audience=lambda: "", issuers=KeyFiles({}), jwt_bundles=NoJwtBundles()
        )

    def close(self) -> None:
        self._bundles.close()

    @property
    def audience(self) -> str:
        return self.config.audience or self._audience()

    def prove(
        self,
        request: Request,
        now: datetime,
        groups_of: GroupsOf = _no_groups,
        *,
        claim_intent: bool = True,
    ) -> tuple[Request, Denial | None]:
        """The request with its proof, and the first denial (None: nothing failed).

        ``claim_intent=False`` verifies a signed intent without using up its ``jti``:
        for questions that authorize nothing (AllowedTools), so that listing the tools
        under an intent does not spend the one decision it is good for."""
        proof = request.proof
        denial: Denial | None = None
        if request.intent_token:
            intent, digest, issuer, denial = self._intent(
                request, now.timestamp(), claim=claim_intent
            )
            proof = dataclasses.replace(proof, intent_issuer=issuer, intent_token=digest)
            request = dataclasses.replace(request, intent=intent, proof=proof)
        if request.agent_svid:
            digest, proven, agent_denial = self._agent(request, now.timestamp())
            proof = dataclasses.replace(proof, agent_proven=proven, agent_token=digest)
            request = dataclasses.replace(request, proof=proof)
            denial = denial or agent_denial
        signed_required = self.config.require_signed_intent.applies
        if (
            denial is None
            and not proof.intent_issuer
            and signed_required(request.agent, request.server, groups_of)
        ):
            denial = Denial(
                REASON_INTENT_UNSIGNED,
                f"a signed intent is required for {request.agent} calling"
                f" {request.server}/{request.tool}; send it as intent.token",
            )
        proof_required = self.config.require_agent_proof.applies
        if (
            denial is None
            and not proof.agent_proven
            and proof_required(request.agent, request.server, groups_of)
        ):
            denial = Denial(
                REASON_AGENT_UNPROVEN,
                f"proof of the agent is required for {request.agent}: forward its"
                f" JWT-SVID for audience {self.audience} as agent_svid",
            )
        return request, denial

    # -- signed intents -----------------------------------------------------------

    def _intent(
        self, request: Request, now: float, *, claim: bool = True
    ) -> tuple[Intent | None, TokenDigest, str, Denial | None]:
        digest = TokenDigest(sha256="")
        try:
            token = read_token(request.intent_token, self.config.max_token_bytes)
            digest = _digest(token, str(token.claims.get("iss", ""))[:256])
            intent, issuer, jti, expires = self._verify_intent(token, request, now)
        except TokenRejected as exc:
            if not digest.sha256:
                digest = TokenDigest(sha256=_sha(request.intent_token))
            return (
                None,
                digest,
                "",
                Denial(INTENT_PREFIX + exc.code, "signed intent: " + exc.message),
            )
        if not claim:
            return intent, digest, issuer, None
        claimed = self.jtis.claim(issuer, jti, expires + self.config.leeway_s, now)
        if claimed is None:
            return (
                None,
                digest,
                "",
                Denial(
                    INTENT_PREFIX + "replay_cache_full",
                    "signed intent: too many unexpired intents remembered; denied until some"
                    " expire",
                ),
            )
        if not claimed:
            return (
                None,
                digest,
                "",
                Denial(
                    INTENT_PREFIX + "replayed",
                    f"signed intent: jti {jti[:64]!r} of {issuer} was already used;"
                    " a signed intent is good for one decision",
                ),
            )
        return intent, digest, issuer, None

    def _verify_intent(
        self, token: UnverifiedToken, request: Request, now: float
    ) -> tuple[Intent, str, str, float]:
        claims = token.claims
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise TokenRejected("malformed", "the token has no 'iss' naming its issuer")
        keys = self._issuers.keys_for(issuer)
        if keys is None:
            raise TokenRejected("unknown_issuer", f"issuer {issuer[:128]!r} is not configured")
        verify_signature(token, keys)
        expires = self._times(claims, now)
        issued = _number(claims, "iat")
        start = issued if issued is not None else now
        if expires - start > self.config.max_intent_lifetime_s:
            raise TokenRejected(
                "lifetime_too_long",
                f"the token lives {int(expires - start)} s; at most"
                f" {int(self.config.max_intent_lifetime_s)} s is accepted",
            )
        self._check_audience(claims)
        if claims.get("sub") != request.agent:
            raise TokenRejected(
                "subject_mismatch",
                f"the token's sub {str(claims.get('sub'))[:128]!r} is not the request's"
                f" agent {request.agent}",
            )
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti.encode()) > _MAX_JTI_BYTES:
            raise TokenRejected(
                "malformed", f"the token needs a 'jti' of 1 to {_MAX_JTI_BYTES} bytes"
            )
        try:
            intent = parse_intent(
                {"purpose": claims.get("purpose", ""), "tools": claims.get("tools", [])},
                self._limits,
            )
        except RequestError as exc:
            raise TokenRejected("malformed", f"claim {exc.field}: {exc.detail}") from None
        at = datetime.fromtimestamp(expires, tz=request.time.tzinfo)
        return dataclasses.replace(intent, expires_at=at), issuer, jti, expires

    # -- JWT-SVIDs --------------------------------------------------------------

    def _agent(self, request: Request, now: float) -> tuple[TokenDigest, bool, Denial | None]:
        digest = TokenDigest(sha256=_sha(request.agent_svid))
        try:
            token = read_token(request.agent_svid, self.config.max_token_bytes)
            trust_domain = self._verify_svid(token, request, now)
        except TokenRejected as exc:
            return digest, False, Denial(AGENT_SVID_PREFIX + exc.code, "JWT-SVID: " + exc.message)
        return _digest(token, trust_domain), True, None

    def _verify_svid(self, token: UnverifiedToken, request: Request, now: float) -> str:
        extra = set(token.header) - _SVID_HEADERS
        if extra:
            raise TokenRejected(
                "malformed", f"header {sorted(extra)[0][:32]!r} is not allowed in a JWT-SVID"
            )
        if token.header.get("typ", "JWT") not in ("JWT", "JOSE"):
            raise TokenRejected("malformed", "typ must be JWT or JOSE")
        subject = token.claims.get("sub")
        try:
            spiffe_id = parse_spiffe_id(
                subject if isinstance(subject, str) else "", require_path=True
            )
        except InvalidSpiffeId as exc:
            raise TokenRejected("malformed", f"sub is not a SPIFFE ID: {exc}") from None
        if str(spiffe_id) != request.agent:
            raise TokenRejected(
                "subject_mismatch", f"the JWT-SVID is {spiffe_id}'s, not {request.agent}'s"
            )
        # The keys of the subject's own trust domain, never another's (JWT-SVID.md 4).
        keys = self._bundles.keys_for(spiffe_id.trust_domain)
        if keys is None:
            raise TokenRejected(
                "unknown_trust_domain", f"no JWT bundle for trust domain {spiffe_id.trust_domain}"
            )
        self._verify_svid_signature(token, keys)
        self._times(token.claims, now)
        self._check_audience(token.claims)
        return spiffe_id.trust_domain

    def _verify_svid_signature(self, token: UnverifiedToken, keys: Keys) -> None:
        with self._svid_lock:
            if self._svid_signatures.get(token.sha256) is keys:
                self._svid_signatures.move_to_end(token.sha256)
                return
        verify_signature(token, keys)
        with self._svid_lock:
            self._svid_signatures[token.sha256] = keys
            if len(self._svid_signatures) > _MAX_VERIFIED_SVIDS:
                self._svid_signatures.popitem(last=False)

    # -- shared claim checks ------------------------------------------------------

    def _times(self, claims: Mapping[str, Any], now: float) -> float:
        leeway = self.config.leeway_s
        expires = _number(claims, "exp")
        if expires is None:
            raise TokenRejected("malformed", "the token needs an 'exp'")
        if now > expires + leeway:
            raise TokenRejected("expired", f"the token expired at {_iso(expires)}")
        for name in ("nbf", "iat"):
            value = _number(claims, name)
            if value is not None and value > now + leeway:
                raise TokenRejected(
                    "not_yet_valid", f"the token is not valid before {_iso(value)} ({name})"
                )
        return expires

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        audience = claims.get("aud")
        values = [audience] if isinstance(audience, str) else audience
        wanted = self.audience
        if not wanted or not isinstance(values, list) or wanted not in values:
            raise TokenRejected(
                "wrong_audience",
                f"the token's audience {str(audience)[:200]!r} does not name {wanted}",
            )


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim; None when absent. Raises for anything else (NaN included)."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TokenRejected("malformed", f"'{name}' must be a number (NumericDate)")
    return float(value)


def _iso(epoch: float) -> str:
    try:
        return format_time(datetime.fromtimestamp(epoch, tz=UTC))
    except (OverflowError, ValueError, OSError):
        return str(epoch)


def _sha(text: str) -> str:
    from pdp.proof.jose import token_sha256

    return token_sha256(text)


def _digest(token: UnverifiedToken, issuer: str) -> TokenDigest:
    jti = token.claims.get("jti")
    return TokenDigest(
        sha256=token.sha256,
        issuer=issuer,
        jti=jti[:_MAX_JTI_BYTES] if isinstance(jti, str) else "",
        key_id=token.kid[:128],
    )
