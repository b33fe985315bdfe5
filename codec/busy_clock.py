"""`BusyClock`: how long a device was busy when several threads share it. Torch-free, so the archive
driver, which declares the encode actors, does not import torch for it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class BusyClock:
    """The union of busy intervals of several threads: time during which at least one was busy."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self.intervals = 0  # how many busy() blocks ran
        self._since = 0.0
        self.busy_seconds = 0.0
        self.first: float | None = None
        self.last: float | None = None

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            now = self._clock()
            self.intervals += 1
            if self._active == 0:
                self._since = now
            if self.first is None:
                self.first = now
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                now = self._clock()
                self._active -= 1
                if self._active == 0:
                    self.busy_seconds += now - self._since
                self.last = now

    def report(self) -> dict[str, float | None]:
        """busy seconds, the span from the first start to the last end, and busy / span."""
        with self._lock:
            span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
            busy = self.busy_seconds + (self._clock() - self._since if self._active else 0.0)
        return {
            "busy_seconds": busy,
            "span_seconds": span,
            "busy_fraction": busy / span if span > 0 else None,
            "intervals": self.intervals,
        }
