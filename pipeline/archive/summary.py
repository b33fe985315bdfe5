"""A run's `summary.json`: counts, bytes, rates, quality percentiles, failures, wall time, the compute
spent (device-seconds per stage and device kind, per video; `accounting`) and the classic reference's
equal-quality comparison (`reference`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters
from pipeline.audit.sketch import Reservoir
from pipeline.metrics import UNSAMPLED_NOTE

#: Non-video file names kept for the summary (the count is always exact).
MAX_LISTED = 1000
RATE_COLUMNS = ("bpp", "kbps")
QUALITY_COLUMNS = ("psnr", "ms_ssim", "lpips", "dists", "vmaf")


class RunningStats:
    """One GOP column over a run in bounded memory: exact count/min/max, frame-weighted mean, and
    percentiles from a uniform reservoir (exact up to 100 000 GOPs; see `pipeline.audit.sketch`)."""

    FLUSH = 4096

    def __init__(self) -> None:
        self.reservoir = Reservoir()
        self.weighted = 0.0
        self.weight = 0.0
        self._buffer: list[float] = []

    def add(self, value: float | None, frames: int) -> None:
        if value is None or not np.isfinite(value):
            return
        self._buffer.append(float(value))
        self.weighted += float(value) * frames
        self.weight += frames
        if len(self._buffer) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.reservoir.add(np.asarray(self._buffer, dtype=np.float64))
            self._buffer = []

    @property
    def count(self) -> int:
        self._flush()
        return self.reservoir.count

    def percentiles(self) -> dict[str, float]:
        if not self.count:
            return {}
        p5, p50, p95 = (self.reservoir.quantile(q) for q in (0.05, 0.5, 0.95))
        return {"p5": p5, "p50": p50, "p95": p95, "count": self.count}

    def stats(self) -> dict[str, float] | None:
        if not self.count:
            return None
        return {
            "mean_per_frame": self.weighted / self.weight if self.weight else None,
            **self.percentiles(),
            "min": float(self.reservoir.minimum),
            "max": float(self.reservoir.maximum),
        }


@dataclasses.dataclass
class RunTally:
    """What the committed videos of a run add up to (failures are kept by `FailureLog`), in memory
    that does not grow with the number of videos."""

    gops: int = 0
    frames: int = 0
    #: Videos another live run holds the lease of (`leases`): not touched by this run; the first MAX_LISTED.
    leased_elsewhere: list[str] = dataclasses.field(default_factory=list)
    leased_elsewhere_total: int = 0
    source_bytes: int = 0
    archive_bytes: int = 0
    not_videos: list[str] = dataclasses.field(default_factory=list)  # the first MAX_LISTED
    not_videos_total: int = 0
    #: Sources archived with a note (truncated, or precision the codec does not keep); the first MAX_LISTED.
    warnings: list[dict[str, str]] = dataclasses.field(default_factory=list)
    warnings_total: int = 0
    #: GOPs whose quality was measured, and those of them in the expensive metrics' sample.
    gops_measured: int = 0
    gops_sampled: int = 0
    #: GOPs whose bits missed a bitrate target (the codec's verdict), and the first MAX_LISTED of them.
    rate_target_missed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rate_target_missed_total: int = 0
    columns: dict[str, RunningStats] = dataclasses.field(
        default_factory=lambda: {name: RunningStats() for name in (*RATE_COLUMNS, *QUALITY_COLUMNS)}
    )

    def committed(self, source_bytes: int, result: dict[str, Any]) -> None:
        """Add one committed video (`result`: what `video_writer.commit_video` returned)."""
        self.source_bytes += source_bytes
        self.archive_bytes += result["archive_bytes"]
        for gop in result["gops"]:
            self.gops += 1
            self.frames += gop["frame_count"]
            for name, stats in self.columns.items():
                stats.add(gop.get(name), gop["frame_count"])
            if gop.get("psnr") is not None:
                self.gops_measured += 1
                self.gops_sampled += UNSAMPLED_NOTE not in (gop.get("metrics_note") or "")
            if gop.get("target_reached") is False:
                self.rate_target_missed_total += 1
                if len(self.rate_target_missed) < MAX_LISTED:
                    self.rate_target_missed.append(
                        {k: gop.get(k) for k in ("video_key", "gop_index", "bpp", "kbps", "payload_bytes")}
                    )

    def warning(self, record: dict[str, str]) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_LISTED:
            self.warnings.append(record)

    def leased(self, key: str) -> None:
        """A video another live run holds (its lease): skipped by this run."""
        self.leased_elsewhere_total += 1
        if len(self.leased_elsewhere) < MAX_LISTED:
            self.leased_elsewhere.append(key)

    def not_video(self, reason: str) -> None:
        self.not_videos_total += 1
        if len(self.not_videos) < MAX_LISTED:
            self.not_videos.append(reason)


def quality_sample(cfg: ArchiveConfig, tally: RunTally) -> dict[str, Any]:
    """How many GOPs each kind of metric was measured on: the cheap ones on every measured GOP, the
    expensive ones on the seeded sample (`--metrics-sample`), which is what their counts rest on."""
    from pipeline.metrics import EXPENSIVE_METRICS

    sample = cfg.metrics_sample_spec()
    return {
        "expensive_metrics": list(EXPENSIVE_METRICS),
        "fraction": sample.fraction,
        "seed": sample.seed,
        "on_every_measured_gop": list(cfg.always_measured()),
        "gops": tally.gops,
        "gops_measured": tally.gops_measured,
        "gops_sampled": tally.gops_sampled,
    }


def build_summary(
    *,
    cfg: ArchiveConfig,
    run_id: str,
    identity: dict[str, Any],
    counters: Counters,
    tally: RunTally,
    failures: list[dict[str, str]],
    targets_missed: list[dict[str, Any]],
    actor_restarts: int,
    entries_total: int,
    peak_gops_per_actor: int = 0,
    compute: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    already_done: int,
    previously_failed: int,
) -> dict[str, Any]:
    c = counters
    frames = tally.frames
    return {
        "run_id": run_id,
        "codec": identity,
        "target": cfg.target_record(),
        "quality_goal": cfg.quality_goal.as_record() if cfg.quality_goal else None,
        # in video and GOP order: an actor codes several GOPs at once, so they finish in any order
        "quality_targets_missed": sorted(
            targets_missed, key=lambda m: (m["video_key"], m.get("gop_index", -1))
        ),
        # GOPs whose bits missed --target-kbps/--target-bpp (in video and GOP order; the first
        # MAX_LISTED), and how many in all: a codec that cannot reach a rate says so here
        "rate_target_missed": sorted(
            tally.rate_target_missed, key=lambda m: (m["video_key"] or "", m["gop_index"] or 0)
        ),
        "rate_target_missed_gops": tally.rate_target_missed_total,
        "files_listed": entries_total,
        "videos_ok": c.videos_ok,
        "videos_failed": c.videos_failed,
        "videos_skipped_done": already_done,
        "videos_skipped_failed": 0 if cfg.retry_failed else previously_failed,
        "not_videos": tally.not_videos,
        "not_videos_total": tally.not_videos_total,
        "videos_leased_elsewhere": tally.leased_elsewhere,
        "videos_leased_elsewhere_total": tally.leased_elsewhere_total,
        "warnings": tally.warnings,
        "warnings_total": tally.warnings_total,
        "gops": tally.gops,
        "frames": frames,
        "source_bytes": tally.source_bytes,
        "archive_bytes": tally.archive_bytes,
        "compression_ratio": (tally.source_bytes / tally.archive_bytes) if tally.archive_bytes else None,
        "compression_ratio_of": "source bytes / archive object bytes",  # as `vidarc audit` defines it
        "storage_class": cfg.storage_class,  # of the video and pack objects (None: the store's default)
        "bpp": tally.columns["bpp"].stats(),
        "kbps": tally.columns["kbps"].stats(),
        "quality": {name: tally.columns[name].percentiles() for name in QUALITY_COLUMNS},
        "quality_sample": quality_sample(cfg, tally),
        "failures": failures,
        "actor_restarts": actor_restarts,
        "peak_gops_in_flight_per_actor": peak_gops_per_actor,
        "compute": compute,
        "reference": reference,
        # until the last commit; the driver sets `wall_seconds` again at the end of the run (closing
        # compaction and verify included: `verify.wall_seconds` is the verify's own)
        "archive_wall_seconds": c.elapsed,
        "wall_seconds": c.elapsed,
        "frames_per_second": frames / c.elapsed,  # over archive_wall_seconds
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
