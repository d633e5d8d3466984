"""Who may call: authentication of the peer SVID, the caller allow-list, rate limits.

grpc's TLS layer has already checked the client chain against the *pooled* roots of
every trusted trust domain; :class:`CallerGate` re-verifies the leaf on every call with
:class:`pdp.identity.peer.PeerVerifier` against the bundle of the trust domain the leaf
claims, with the X509-SVID leaf rules and the validity window at the time of the call
(connections outlive certificates and bundle changes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pdp.identity.peer import PeerAuthError, PeerVerifier
from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.model import Caller
from pdp.service.config import CallerBinding, RateLimit

# auth_context keys set by grpc core for an SSL peer (ssl_utils.cc).
AUTH_PEER_CERT = "x509_pem_cert"
AUTH_PEER_CHAIN = "x509_pem_cert_chain"
# What ServicerContext.auth_context() returns: property name -> values.
AuthContext = Mapping[str, Sequence[bytes]]


class Refused(Exception):
    """A call is refused before any decision; ``message`` is safe to send to the peer.
    ``caller`` is set once the peer is authenticated."""

    def __init__(self, message: str, caller: Caller | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.caller = caller


class NotAuthenticated(Refused):
    pass


class NotAllowed(Refused):
    pass


@dataclass(frozen=True, slots=True)
class CallerGrant:
    """What an allowed caller may ask about."""

    caller: Caller
    agents: tuple[SpiffeIdPattern, ...]

    def may_ask_about(self, agent: str) -> bool:
        return any(pattern.matches(agent) for pattern in self.agents)


class CallerPolicy:
    """The allow-list: caller patterns, each bound to the agent patterns it may ask about.

    A caller matching several entries gets the union of their agents. Resolved grants
    are cached per SPIFFE ID (bounded; callers are already authenticated).
    """

    def __init__(self, bindings: Sequence[CallerBinding], *, cache_size: int = 4096) -> None:
        self.bindings = tuple(bindings)
        self._rules = tuple(
            (SpiffeIdPattern(b.caller), tuple(SpiffeIdPattern(a) for a in b.agents))
            for b in bindings
        )
        self._cache: dict[str, tuple[SpiffeIdPattern, ...] | None] = {}
        self._cache_size = cache_size

    def agents_for(self, spiffe_id: str) -> tuple[SpiffeIdPattern, ...] | None:
        """The agent patterns bound to ``spiffe_id``, or None if it is not on the list."""
        try:
            return self._cache[spiffe_id]
        except KeyError:
            pass
        agents: list[SpiffeIdPattern] = []
        listed = False
        for caller_pattern, agent_patterns in self._rules:
            if caller_pattern.matches(spiffe_id):
                listed = True
                agents.extend(agent_patterns)
        result = tuple(agents) if listed else None
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # rare; simpler and safe (it is only a cache)
        self._cache[spiffe_id] = result
        return result


class WatcherPolicy:
    """Who may use the audit service (``audit_watchers``): SPIFFE ID patterns, nothing
    else. Separate from :class:`CallerPolicy`: a decision caller is not a watcher."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._rules = tuple(SpiffeIdPattern(p) for p in patterns)

    def allows(self, spiffe_id: str) -> bool:
        return any(rule.matches(spiffe_id) for rule in self._rules)


class CallerGate:
    """``admit(auth_context)`` -> :class:`CallerGrant`, or raises :class:`Refused`.

    ``authenticate`` alone serves methods open to any authenticated peer (health,
    reflection); ``admit`` also requires the caller to be on the allow-list, and
    ``admit_watcher`` the watcher list (a grant without agents).
    """

    def __init__(
        self,
        verifier: PeerVerifier,
        policy: CallerPolicy,
        *,
        watchers: WatcherPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._verifier = verifier
        self._policy = policy
        self._watchers = watchers or WatcherPolicy(())
        self._clock = clock

    def authenticate(self, auth_context: AuthContext) -> Caller:
        leaf = auth_context.get(AUTH_PEER_CERT)
        if not leaf:
            # Not reachable through the mTLS port (the handshake requires a certificate),
            # but an insecure port or a transport change must not become an open door.
            raise NotAuthenticated("no client certificate: connect with mutual TLS and an SVID")
        chain = auth_context.get(AUTH_PEER_CHAIN) or [b""]
        try:
            return self._verifier.authenticate(leaf[0], chain[0], self._clock())
        except PeerAuthError as exc:
            raise NotAuthenticated(exc.reason) from None

    def admit(self, auth_context: AuthContext) -> CallerGrant:
        caller = self.authenticate(auth_context)
        agents = self._policy.agents_for(caller.spiffe_id)
        if agents is None:
            raise NotAllowed(
                f"caller {caller.spiffe_id} is not allowed to ask for decisions", caller
            )
        return CallerGrant(caller, agents)

    def admit_watcher(self, auth_context: AuthContext) -> CallerGrant:
        caller = self.authenticate(auth_context)
        if not self._watchers.allows(caller.spiffe_id):
            raise NotAllowed(
                f"caller {caller.spiffe_id} is not allowed to watch the audit log"
                " (config audit_watchers)",
                caller,
            )
        return CallerGrant(caller, ())


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """A token bucket per caller SPIFFE ID: ``rate`` decisions per second, ``burst`` deep.

    A request costs its number of decisions, capped at ``burst`` so that a maximal
    batch can still pass after an idle period. Thread-safe; idle (full) buckets are
    forgotten when there are many callers, which changes nothing (a new bucket is full).
    """

    def __init__(
        self,
        config: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 10_000,
    ) -> None:
        self.rate = config.decisions_per_second
        self.burst = float(config.burst)
        self.enabled = config.enabled
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, cost: int = 1) -> bool:
        """Takes ``cost`` tokens from ``caller``'s bucket; False when there are not enough."""
        if not self.enabled:
            return True
        need = min(float(max(cost, 1)), self.burst)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(caller)
            if bucket is None:
                if len(self._buckets) >= self._max_callers:
                    self._forget_full(now)
                bucket = self._buckets[caller] = _Bucket(self.burst, now)
            else:
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
                bucket.stamp = now
            if bucket.tokens < need:
                return False
            bucket.tokens -= need
            return True

    def _forget_full(self, now: float) -> None:
        full = [
            caller
            for caller, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        for caller in full:
            del self._buckets[caller]
        if len(self._buckets) >= self._max_callers:
            # Every caller is busy: drop the oldest half rather than grow without bound.
            for caller in sorted(self._buckets, key=lambda c: self._buckets[c].stamp)[
                : self._max_callers // 2
            ]:
                del self._buckets[caller]
