"""What one caller may take from the service: in-flight calls and audit bytes of refusals.

No caller can starve the others:

- :class:`CallerSlots`: a call holds a slot from the moment its peer is authenticated
  (when its stream opens, before its request message) until it is answered. A caller
  (a SPIFFE ID, or a peer address when the peer is not authenticated) holds at most
  ``per_caller`` slots; the pool of ``total`` keeps ``reserve`` slots that only health
  and status calls may take, so an operator can always see what is going on.
- :class:`RecordBudget`: bytes per second (token bucket) of detail that records of one
  caller's refused or invalid requests may take in the audit log; over it, records keep
  only fixed-size facts (invalid requests) or are counted instead of written (refused
  calls).
- :class:`RefusalCounts`: refused calls per caller and code, for metrics.

The interceptor (pdp.service.interceptor) applies the slots to every method of every
servicer registered on the server, whichever front door it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pdp.model import Caller
from pdp.service.config import RateLimit
from pdp.service.gate import RateLimiter

log = logging.getLogger(__name__)

# Keys kept by the per-caller counters before the rest are counted together.
MAX_COUNTED_CALLERS = 10_000
OTHER_CALLERS = "(other callers)"


def caller_key(caller: Caller | None, peer: str) -> str:
    """Whom a call is charged to: the caller's SPIFFE ID, or, before authentication,
    the peer's address without its port (grpc's ``ipv4:10.0.0.1:5000`` -> ``ipv4:10.0.0.1``)."""
    if caller is not None:
        return caller.spiffe_id
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class CallerSlots:
    """In-flight calls per caller, within a pool with a reserve (see module docstring).

    ``take`` and ``release`` are called on the event loop; the lock keeps them right if
    a thread ever calls them too.
    """

    def __init__(self, total: int, per_caller: int, reserve: int) -> None:
        if not 0 <= reserve < total:
            raise ValueError(f"reserve {reserve} must be below the pool of {total}")
        self.total = total
        self.per_caller = per_caller
        self.reserve = reserve
        self._held: dict[str, int] = {}
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def held_by(self, key: str) -> int:
        return self._held.get(key, 0)

    def take(self, key: str, *, reserved: bool = False) -> str:
        """Takes a slot for ``key``: "" when taken, else why not (for the refusal).
        ``reserved`` calls (health, status) may use the reserve."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.per_caller:
                return (
                    f"{key} has {held} calls in flight, its share"
                    " (server.max_rpcs_per_caller); retry when one is answered"
                )
            limit = self.total if reserved else self.total - self.reserve
            if self._in_flight >= limit:
                return (
                    f"the server has {self._in_flight} calls in flight"
                    " (server.max_concurrent_rpcs); retry with backoff"
                )
            self._held[key] = held + 1
            self._in_flight += 1
            return ""

    def release(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0)
            if held <= 1:
                self._held.pop(key, None)
            else:
                self._held[key] = held - 1
            self._in_flight = max(0, self._in_flight - 1)


class RefusalCounts:
    """Refused calls per (caller key, refusal code); bounded in the number of callers."""

    def __init__(self, max_callers: int = MAX_COUNTED_CALLERS) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._callers: set[str] = set()
        self._max_callers = max_callers
        self._lock = threading.Lock()

    def add(self, key: str, code: str) -> None:
        with self._lock:
            if key not in self._callers:
                if len(self._callers) >= self._max_callers:
                    key = OTHER_CALLERS
                else:
                    self._callers.add(key)
            self._counts[(key, code)] = self._counts.get((key, code), 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def of(self, key: str) -> int:
        """All refusals counted for ``key``."""
        with self._lock:
            return sum(n for (k, _), n in self._counts.items() if k == key)


class RecordBudget:
    """Bytes per second of refused-request detail one caller may put in the audit log.

    A token bucket per caller key (the same one as the decision rate limit, counted in
    bytes). What goes over is counted per caller and logged at most every
    ``log_every_s``, so an operator sees that detail was left out, and whose.
    """

    def __init__(
        self,
        bytes_per_second: float,
        burst_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_every_s: float = 10.0,
    ) -> None:
        self._bucket = RateLimiter(
            RateLimit(decisions_per_second=bytes_per_second, burst=burst_bytes), clock=clock
        )
        self._clock = clock
        self._log_every_s = log_every_s
        self._next_log = 0.0
        self._over: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, size: int) -> bool:
        """Spends ``size`` bytes of ``key``'s budget; False when it has not enough."""
        if self._bucket.take(key, size):
            return True
        with self._lock:
            self._over[key] = self._over.get(key, 0) + 1
            now = self._clock()
            if now < self._next_log:
                return False
            self._next_log = now + self._log_every_s
            over, self._over = self._over, {}
        worst = sorted(over.items(), key=lambda item: -item[1])[:5]
        log.warning(
            "audit record budget exceeded: %d refused or invalid request(s) recorded without"
            " detail or not recorded (limits.refusal_record_bytes_per_s), most from %s",
            sum(over.values()),
            ", ".join(f"{k} ({n})" for k, n in worst),
        )
        return False
