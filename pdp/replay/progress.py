"""A one-line progress bar on stderr, only when stderr is a terminal.

It reads how far each source has got (bytes of files, messages of a stream) and
redraws at most a few times a second. It never writes into the report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from pdp.replay.sources import Source

_WIDTH = 24


class Progress:
    def __init__(
        self,
        sources: Sequence[Source],
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
        every: int = 64,
    ) -> None:
        self.sources = sources
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.every = max(1, every)  # ticks between looks at the clock
        self.records = 0
        self._calls = 0
        self._last = 0.0
        self._drawn = False

    def fraction(self) -> float:
        if not self.sources:
            return 0.0
        parts = []
        for source in self.sources:
            done, total = source.progress()
            parts.append(min(1.0, done / total) if total > 0 else 0.0)
        return sum(parts) / len(parts)

    def tick(self, records: int = 1) -> None:
        self.records += records
        if not self.enabled:
            return
        self._calls += 1
        if self._calls % self.every:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        fraction = self.fraction()
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        self.stream.write(f"\rreplay [{bar}] {fraction * 100:5.1f}%  {self.records} records ")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (_WIDTH + 48) + "\r")
            self.stream.flush()
            self._drawn = False
