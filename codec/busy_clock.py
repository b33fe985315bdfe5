"""`BusyClock`: how long a device was busy when several threads share it. Torch-free, so the archive
driver, which declares the encode actors, does not import torch for it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Share:
    """One busy() block's share of the busy time: each stretch of time is divided equally among the
    blocks running then, so the shares of all blocks add up to the clock's busy seconds."""

    __slots__ = ("seconds", "wall")

    def __init__(self) -> None:
        self.seconds = 0.0  # its share (so far, then in all)
        self.wall = 0.0  # the block's own wall time, from the same clock readings


class BusyClock:
    """The union of busy intervals of several threads: time during which at least one was busy, and
    each block's fair share of it (what a device shared by concurrent GOPs spent on each one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._holders: list[Share] = []
        self.intervals = 0  # how many busy() blocks ran
        self._since = 0.0
        self._settled = 0.0
        self.busy_seconds = 0.0
        self.first: float | None = None
        self.last: float | None = None

    @contextlib.contextmanager
    def busy(self) -> Iterator[Share]:
        share = Share()
        with self._lock:
            now = started = self._clock()
            self._settle(now)
            self.intervals += 1
            if not self._holders:
                self._since = now
            if self.first is None:
                self.first = now
            self._holders.append(share)
        try:
            yield share
        finally:
            with self._lock:
                now = self._clock()
                self._settle(now)
                self._holders.remove(share)
                share.wall = now - started
                if not self._holders:
                    self.busy_seconds += now - self._since
                self.last = now

    def _settle(self, now: float) -> None:
        """Give the time since the last start or end to the blocks running through it, equally."""
        if self._holders:
            part = (now - self._settled) / len(self._holders)
            for holder in self._holders:
                holder.seconds += part
        self._settled = now

    def report(self) -> dict[str, float | None]:
        """busy seconds, the span from the first start to the last end, and busy / span."""
        with self._lock:
            span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
            busy = self.busy_seconds + (self._clock() - self._since if self._holders else 0.0)
        return {
            "busy_seconds": busy,
            "span_seconds": span,
            "busy_fraction": busy / span if span > 0 else None,
            "intervals": self.intervals,
        }
