"""A run's `summary.json`: counts, bytes, rates, quality percentiles, failures, wall time, the compute
spent (device-seconds per stage and device kind, per video; `accounting`) and the classic reference's
equal-quality comparison (`reference`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters


@dataclasses.dataclass
class RunTally:
    """What the committed videos of a run add up to (failures are kept by `FailureLog`)."""

    gop_stats: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    not_videos: list[str] = dataclasses.field(default_factory=list)
    #: Videos another live run holds the lease of (`leases`): not touched by this run.
    leased_elsewhere: list[str] = dataclasses.field(default_factory=list)
    source_bytes: int = 0
    archive_bytes: int = 0

    def committed(self, source_bytes: int, result: dict[str, Any]) -> None:
        """Add one committed video (`result`: what `video_writer.commit_video` returned)."""
        self.source_bytes += source_bytes
        self.archive_bytes += result["archive_bytes"]
        self.gop_stats.extend(result["gops"])


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
    compute: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    already_done: int,
    previously_failed: int,
) -> dict[str, Any]:
    c = counters
    gops = tally.gop_stats
    frames = sum(g["frame_count"] for g in gops)
    return {
        "run_id": run_id,
        "codec": identity,
        "target": cfg.target_record(),
        "quality_goal": cfg.quality_goal.as_record() if cfg.quality_goal else None,
        "quality_targets_missed": targets_missed,
        "files_listed": entries_total,
        "videos_ok": c.videos_ok,
        "videos_failed": c.videos_failed,
        "videos_skipped_done": already_done,
        "videos_skipped_failed": 0 if cfg.retry_failed else previously_failed,
        "not_videos": tally.not_videos,
        "videos_leased_elsewhere": tally.leased_elsewhere,
        "gops": len(gops),
        "frames": frames,
        "source_bytes": tally.source_bytes,
        "archive_bytes": tally.archive_bytes,
        "compression_ratio": (tally.source_bytes / tally.archive_bytes) if tally.archive_bytes else None,
        "bpp": _stats([g["bpp"] for g in gops], weights=[g["frame_count"] for g in gops]),
        "kbps": _stats([g["kbps"] for g in gops], weights=[g["frame_count"] for g in gops]),
        "quality": {
            name: _percentiles([g[name] for g in gops if g.get(name) is not None])
            for name in ("psnr", "ms_ssim", "lpips", "dists", "vmaf")
        },
        "failures": failures,
        "actor_restarts": actor_restarts,
        "compute": compute,
        "reference": reference,
        "wall_seconds": c.elapsed,
        "frames_per_second": frames / c.elapsed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _stats(values: list[float], *, weights: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {
        "mean_per_frame": float(np.average(v, weights=np.asarray(weights, dtype=float))),
        **_percentiles(values),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    import numpy as np

    p5, p50, p95 = np.percentile(np.asarray(values, dtype=float), [5, 50, 95])
    return {"p5": float(p5), "p50": float(p50), "p95": float(p95), "count": len(values)}
