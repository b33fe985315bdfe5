"""Failure records of a run: every failed video gets a failed manifest row and marker, a line on the
display, and an entry in the run's summary. Recording must never stop the run: if the row or marker
cannot be written, the summary still lists the failure.

A failure caused by the storage (an outage or throttling that outlasted every retry) is not the
video's fault: it is listed in the summary (`transient`) but gets no failed row or marker, so rerunning
the same command retries it instead of skipping it as failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.errors import one_line, one_line_text
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.summary import MAX_LISTED
from pipeline.archive.video_writer import record_failure
from pipeline.store.storage import redact


class FailureLog:
    """The failed videos of one run, in the order they failed."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        run_id: str,
        identity: dict[str, Any],
        counters: Counters,
        display: ProgressDisplay,
        *,
        on_recorded: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.run_id, self.identity = cfg, run_id, identity
        self.on_recorded = on_recorded  # told each failed video's key once it is recorded (its lease goes)
        self.counters, self.display = counters, display
        self.records: list[dict[str, Any]] = []  # the first MAX_LISTED (the summary's list)
        self.total = 0
        self.transient_total = 0  # failures of the storage, not of the video (a rerun retries them)

    def record(self, key: str, uri: str, size: int, reason: str, *, transient: bool = False) -> None:
        """Count, show and store one failed video (`reason`: its one-line error; `transient`: the
        storage failed, not the video, so nothing is stored and a rerun retries it)."""
        try:
            self._record(key, uri, size, reason, transient=transient)
        finally:
            if self.on_recorded is not None:
                self.on_recorded(key)

    def _record(self, key: str, uri: str, size: int, reason: str, *, transient: bool) -> None:
        reason = redact(one_line_text(reason, uri))
        self.total += 1
        self.transient_total += int(transient)
        if len(self.records) < MAX_LISTED:
            record: dict[str, Any] = {"video_key": key, "source_uri": uri, "error": reason}
            if transient:
                record["transient"] = True
            self.records.append(record)
        self.counters.videos_failed += 1
        if transient:  # not the video's failure: nothing is recorded, a rerun retries it
            self.display.log(f"not written, the storage failed (a rerun retries it): {reason}")
            return
        self.display.log(f"failed: {reason}")
        try:
            record_failure(
                out=self.cfg.out,
                endpoint_url=self.cfg.endpoint_url,
                run_id=self.run_id,
                video_key=key,
                source_uri=uri,
                source_bytes=size,
                error=reason,
                identity=self.identity,
            )
        except Exception as exc:  # the run goes on; the summary still lists the failure
            self.display.log(f"could not record the failure of {uri}: {one_line(uri, exc)}")
