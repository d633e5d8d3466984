"""Decision ids: UUIDv7 (RFC 9562 §5.7), time-ordered so log lines sort by creation.

Python 3.11 has no ``uuid.uuid7``. This generator follows RFC 9562 §6.2 "Method 1":
the 12-bit ``rand_a`` field is a counter, reseeded from a random value every
millisecond and incremented within one, so ids made by one process are strictly
increasing even when many are made in the same millisecond or the wall clock steps back.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def new_decision_id() -> str:
    """Returns a new UUIDv7 as its canonical 36-character lowercase string."""
    global _last_ms, _counter  # noqa: PLW0603 -- one process-wide monotonic state, by design
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Seed with the top bit clear: at least 2048 increments fit in this millisecond.
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            # Same millisecond, or the clock went back: keep counting on the last timestamp.
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def decision_id_time_ms(decision_id: str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7 (raises ValueError if not a v7)."""
    parsed = uuid.UUID(decision_id)
    if parsed.version != 7:
        raise ValueError(f"{decision_id!r} is not a UUIDv7")
    return parsed.int >> 80
