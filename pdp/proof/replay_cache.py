"""Remembering the ``jti`` of every signed intent accepted, until it expires.

Per process: with ``pdp serve --workers N`` each worker remembers its own, so a token
can be accepted once by each worker its replays reach (at most N times); within one
worker, and with one worker, a second use is always refused. Nothing is kept across a
restart either: a token accepted before a restart can be used once more after it,
while it has not expired (the issuer bounds that with ``exp``; pdp bounds lifetimes
with ``max_intent_lifetime_s``).
"""

from __future__ import annotations

import threading


class JtiCache:
    """(issuer, jti) -> expiry (epoch seconds), bounded; thread-safe."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, issuer: str, jti: str, expires: float, now: float) -> bool | None:
        """True: first use, now remembered until ``expires``. False: seen and not yet
        expired (a replay). None: full of unexpired entries (the caller denies)."""
        key = (issuer, jti)
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen >= now:
                return False
            if seen is None and len(self._seen) >= self._max:
                self._purge(now)
                if len(self._seen) >= self._max:
                    return None
            self._seen[key] = expires
            return True

    def _purge(self, now: float) -> None:
        expired = [key for key, expires in self._seen.items() if expires < now]
        for key in expired:
            del self._seen[key]
