"""Progress lines of a verify: "verify: 3/12 GOPs decoded (0:41, ETA 1:58)".

Why: a neural sample decodes for minutes on a CPU (GLVC's tiny model, 12 GOPs: about 3 minutes), and a
verify of a large archive reads every manifest file and checks every container first; a command that
says nothing for that long reads as a hang. The caller decides where lines go (`emit`; the archive's
closing verify and `vidarc verify` print them to stderr, so stdout stays the report).

Lines are rate-limited to one every `interval` seconds per phase (the archive's own progress prints every
10 s off a terminal), and appear only when the count moved. The decode phase always says when it starts
and how long it took, so even a quick verify leaves its time in the log; the phases before it (manifest,
containers) speak only when they are slow enough to reach the interval. Read side: no Ray, no rich.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pipeline.text import format_seconds

#: Seconds between two progress lines of one phase (as the archive's progress off a terminal).
INTERVAL_SECONDS = 10.0


class VerifyProgress:
    """Rate-limited progress of one verify, phase by phase; `emit=None` prints nothing."""

    def __init__(
        self,
        emit: Callable[[str], None] | None,
        *,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.interval, self.clock = emit, interval, clock
        self.what, self.total, self.done = "", None, 0
        self.started = self.last = clock()
        self._lock = threading.Lock()  # in-process verify decodes GOPs on several threads

    def start(self, what: str, total: int | None = None, *, line: str | None = None) -> None:
        """A new phase counting `what` ("GOPs decoded") up to `total` (None: unknown); `line` is said
        at once (the decode phase's "decoding 12 GOPs on cpu")."""
        self.what, self.total, self.done = what, total, 0
        self.started = self.last = self.clock()
        if line:
            self._say(line)

    def advance(self, n: int = 1) -> None:
        """`n` more done (in-process decodes, from any of their threads)."""
        with self._lock:
            self.update(self.done + n)

    def update(self, done: int) -> None:
        """`done` so far (Ray tasks: polled); a line when it moved and the interval has passed."""
        moved, self.done = done != self.done, done
        now = self.clock()
        complete = self.total is not None and done >= self.total  # `finish` says that
        if moved and not complete and now - self.last >= self.interval:
            self.last = now
            self._say(self._count() + f" ({self._timing(now)})")

    def finish(self) -> None:
        """The phase's closing line: how many and how long ("12/12 GOPs decoded in 3:14")."""
        self._say(f"{self._count()} in {format_seconds(self.clock() - self.started)}")

    def _count(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        return f"{self.done}{total} {self.what}"

    def _timing(self, now: float) -> str:
        elapsed = now - self.started
        text = format_seconds(elapsed)
        if self.total is not None and 0 < self.done < self.total:
            text += f", ETA {format_seconds(elapsed / self.done * (self.total - self.done))}"
        return text

    def _say(self, line: str) -> None:
        if self.emit is not None:
            self.emit(f"verify: {line}")
