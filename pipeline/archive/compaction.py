"""Compaction as part of the archive job (`pipeline.tools.compact`), so an archive never piles up millions of
per-video manifest parts because nobody ran `vidarc compact`.

When:
- during the run, each time `ArchiveConfig.compact_every` more videos (default 10,000) have been
  committed since the last compaction began: in a thread of the driver, so the encoders never wait for
  it (readers stay correct while it runs: `pipeline.read.manifest_layout`);
- once when the run ends, if it committed anything since, *before* the closing verify: the verify then
  reads the manifest as it will stay, so it also checks the compacted files' rows against the objects.
  A run with `--reference` that committed nothing compacts too when `reference/` holds parts (it may
  have completed a killed run's reference parts).

Each compaction also compacts the classic reference's parts (`pipeline.tools.compact_reference`): those
of done videos whose reference is complete. During the run only once `MIN_PARTS_DURING_RUN` of them are
eligible (a file per 10,000 committed videos would be small); at the end, all of them (the run's
reference tasks are all finished by then).

Safe beside other runs on the same OUT (other shards): compaction absorbs only done videos' parts and
takes `manifest/_compaction.lock`; while another run holds it this run skips with a one-line note and
the parts wait for the next compaction. Nothing here fails the run: the videos are committed by then,
so a storage error during compaction is a warning (in `summary.json` under `compaction`), never a
failed video or another exit code. `--no-compact` (`ArchiveConfig.compact = False`) opts out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters
from pipeline.store.storage import describe, redact

log = logging.getLogger("vidarc.archive")

#: How often the driver's compaction thread looks at the committed count (a cheap integer compare).
POLL_SECONDS = 5.0


class RunCompaction:
    """Compacts `cfg.out` during and at the end of one archive run; `record()` goes to summary.json."""

    def __init__(self, cfg: ArchiveConfig, counters: Counters, say: Callable[[str], None]) -> None:
        self.cfg, self.counters, self.say = cfg, counters, say
        self.passes = 0
        self.parts_absorbed = 0
        self.files_written = 0
        self.rows = 0
        self.leftovers_removed = 0
        self.reference_parts_absorbed = 0
        self.reference_files_written = 0
        self.reference_rows = 0
        self.seconds = 0.0
        self.notes: list[str] = []  # skipped: another compaction held the lock, or the run's storage failed
        self.warnings: list[str] = []  # a compaction that failed (storage), or parts it found damaged
        self._started_at = 0  # counters.videos_ok when the last compaction began
        self._retry = False  # the last compaction did not run to the end: the final one runs anyway
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cfg.compact

    def start(self) -> None:
        """Start watching the committed count (with `compact_every` set)."""
        if self.enabled and self.cfg.compact_every:
            self._thread = threading.Thread(target=self._watch, name="vidarc-compaction", daemon=True)
            self._thread.start()

    def due(self) -> bool:
        """Whether `compact_every` videos were committed since the last compaction began."""
        every = self.cfg.compact_every
        return bool(every) and self.counters.videos_ok - self._started_at >= every

    def stop(self) -> None:
        """Stop the watcher without waiting (the run is failing): a compaction under way is crash-safe."""
        self._stop.set()

    def finish(self, *, skip: str | None = None) -> dict[str, Any] | None:
        """Wait for a compaction under way, then compact what the run committed since (unless `skip`
        says why not); the record for summary.json, or None with compaction off."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return None
        if skip is not None:
            self._note(f"compaction skipped: {skip}")
        elif self.counters.videos_ok > self._started_at or self._retry or self._reference_parts():
            self.compact_now(final=True)
        return self.record()

    def compact_now(self, *, final: bool = False) -> None:
        """One compaction; never raises for storage or a held lock (noted instead). Reference parts are
        absorbed during the run only once enough are eligible, at its end (`final`) all of them."""
        from pipeline.tools.compact import CompactError, CompactionLocked, compact
        from pipeline.tools.compact_reference import MIN_PARTS_DURING_RUN

        with self._busy:
            self._started_at = self.counters.videos_ok
            self._retry = True
            try:
                report = compact(
                    self.cfg.out,
                    endpoint_url=self.cfg.endpoint_url,
                    reference_min_parts=0 if final else MIN_PARTS_DURING_RUN,
                )
            except CompactionLocked as exc:
                self._note(f"compaction skipped: {redact(str(exc))}; these parts wait for the next one")
                return
            except CompactError as exc:
                self._warn(f"compaction could not run: {redact(str(exc))}")
                return
            except Exception as exc:  # storage during the compaction: the parts stay, readers stay right
                self._warn(f"compaction stopped: {describe(exc, self.cfg.out)}")
                return
            self._retry = False
            self.passes += 1
            self.parts_absorbed += report.parts_absorbed
            self.files_written += len(report.files_written)
            self.rows += report.rows
            self.leftovers_removed += report.leftovers_removed
            self.reference_parts_absorbed += report.reference.parts_absorbed
            self.reference_files_written += len(report.reference.files_written)
            self.reference_rows += report.reference.rows
            self.seconds += report.seconds
            for damaged in report.damaged:
                self._warn(f"unreadable file left as it is: {redact(damaged)}")
            self.say(f"manifest {report.line()}")

    def record(self) -> dict[str, Any]:
        return {
            "compactions": self.passes,
            "parts_absorbed": self.parts_absorbed,
            "files_written": self.files_written,
            "rows": self.rows,
            "leftovers_removed": self.leftovers_removed,
            "reference_parts_absorbed": self.reference_parts_absorbed,
            "reference_files_written": self.reference_files_written,
            "reference_rows": self.reference_rows,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def _reference_parts(self) -> bool:
        """A `--reference` run that committed nothing may still have written reference parts (those a
        killed run left pending): whether `reference/` holds any (one listing request)."""
        if self.cfg.reference is None:
            return False
        from pipeline.store.storage import filesystem
        from pipeline.tools.compact_reference import has_parts

        try:
            fs, root = filesystem(self.cfg.out, endpoint_url=self.cfg.endpoint_url)
            return has_parts(fs, root)
        except Exception as exc:  # the parts wait for the next compaction
            self._warn(f"compaction could not look at reference/: {describe(exc, self.cfg.out)}")
            return False

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            if self.due():
                self.compact_now()

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.say(line)

    def _warn(self, line: str) -> None:
        self.warnings.append(line)
        log.warning("%s", line)
        self.say(f"warning: {line}")
