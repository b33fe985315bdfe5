"""Live progress of an archive run: counters the driver updates and a display that shows them.

On a terminal the display is a rich live line (videos done/total, GOPs, frames/s, bytes in/out,
ETA); elsewhere (CI logs, `ray job submit`) it prints one plain line every `interval` seconds, since
redrawn terminal lines are unreadable in a log. The same counters feed `summary.json`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TextIO

from pipeline.text import format_seconds, printable, text_console

__all__ = ["Counters", "ProgressDisplay", "format_seconds", "human_bytes"]


@dataclasses.dataclass
class Counters:
    videos_total: int = 0
    videos_ok: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    gops_done: int = 0
    frames_done: int = 0
    frames_total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def frames_per_second(self) -> float:
        return self.frames_done / self.elapsed

    def eta_seconds(self) -> float | None:
        if not self.frames_done or self.frames_total <= self.frames_done:
            return None
        return (self.frames_total - self.frames_done) / self.frames_per_second

    def line(self) -> str:
        eta = self.eta_seconds()
        finished = self.videos_ok + self.videos_failed
        return (
            f"videos {finished}/{self.videos_total} (ok {self.videos_ok}, failed {self.videos_failed}, "
            f"skipped {self.videos_skipped}) | GOPs {self.gops_done} | frames {self.frames_done} "
            f"({self.frames_per_second:.1f}/s) | in {human_bytes(self.bytes_in)} out {human_bytes(self.bytes_out)}"
            + (f" | ETA {format_seconds(eta)}" if eta is not None else "")
        )


class ProgressDisplay:
    """Shows `Counters`; call `refresh()` often (it rate-limits itself) and `close()` at the end."""

    def __init__(
        self,
        counters: Counters,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        live: bool | None = None,
    ) -> None:
        self.counters = counters
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._live = None
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        if live:
            from rich.live import Live

            self._live = Live(
                "", console=text_console(file=self.stream), refresh_per_second=4, transient=False
            )
            self._live.start()

    def log(self, message: str) -> None:
        """A one-off message (a failure, a skipped file) above the live line; names in it are data,
        shown as text (`pipeline.text.printable`), never as terminal control codes."""
        message = printable(message)
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def refresh(self, *, force: bool = False) -> None:
        if self._live is not None:
            self._live.update(self.counters.line())
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            print(self.counters.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self.counters.line())
            self._live.stop()
            self._live = None
        else:
            self.refresh(force=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"
