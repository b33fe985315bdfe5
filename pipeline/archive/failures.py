"""Failure records of a run: every failed video gets a failed manifest row and marker, a line on the
display, and an entry in the run's summary. Recording must never stop the run: if the row or marker
cannot be written, the summary still lists the failure."""

from __future__ import annotations

from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.errors import one_line
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.summary import MAX_LISTED
from pipeline.archive.video_writer import record_failure
from pipeline.storage import redact


class FailureLog:
    """The failed videos of one run, in the order they failed."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        run_id: str,
        identity: dict[str, Any],
        counters: Counters,
        display: ProgressDisplay,
    ) -> None:
        self.cfg, self.run_id, self.identity = cfg, run_id, identity
        self.counters, self.display = counters, display
        self.records: list[dict[str, str]] = []  # the first MAX_LISTED (the summary's list)
        self.total = 0

    def record(self, key: str, uri: str, size: int, reason: str) -> None:
        """Count, show and store one failed video (`reason`: its one-line error)."""
        reason = redact(reason.splitlines()[0])
        self.total += 1
        if len(self.records) < MAX_LISTED:
            self.records.append({"video_key": key, "source_uri": uri, "error": reason})
        self.counters.videos_failed += 1
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
