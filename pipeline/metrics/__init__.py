"""Quality metrics for one GOP: what the manifest's quality columns hold and how they are computed.

`compute_gop_metrics(source, recon, config)` returns exactly the manifest columns psnr, psnr_y, ms_ssim,
lpips, lpips_vgg, dists, vmaf, temporal_flicker and metrics_note. A metric that cannot be computed
(weights absent, frames too small, metric switched off) is None and `metrics_note` says why: the manifest
never holds a made-up value. Definitions live with each metric:

- `fidelity`: PSNR (RGB, pooled over the GOP), PSNR-Y (BT.709), MS-SSIM (5-scale, ≥161-px frames)
- `perceptual`: LPIPS-Alex, LPIPS-VGG, DISTS, from verified official weights only (`weights`)
- `vmaf`: libvmaf through imageio-ffmpeg's ffmpeg
- `temporal`: flicker, the mean absolute temporal difference of the luma error

Metrics run on whole GOPs as batches (chunks of `batch_frames`) on `config.device`. Measuring quality
costs more than encoding for fast codecs, so big jobs sample GOPs: `should_measure(gop_index, every)`.
`compute_gop_metrics_timed` also returns seconds per metric, which the pipeline may log or summarise —
cost is an operational number, not a quality column.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from codec.base import to_8bit
from pipeline.metrics.fidelity import check_pair, ms_ssim, psnr_rgb, psnr_y
from pipeline.metrics.temporal import temporal_flicker
from pipeline.metrics.vmaf import vmaf

__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_COLUMNS",
    "MetricsConfig",
    "compute_gop_metrics",
    "compute_gop_metrics_timed",
    "psnr_rgb",
    "psnr_y",
    "should_measure",
]

#: Quality columns of the manifest, in schema order of appearance; `metrics_note` explains nulls.
METRIC_COLUMNS: tuple[str, ...] = (
    "psnr",
    "psnr_y",
    "ms_ssim",
    "lpips",
    "lpips_vgg",
    "dists",
    "vmaf",
    "temporal_flicker",
)

#: Direction of each metric: True when a higher value means better quality.
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True,
    "psnr_y": True,
    "ms_ssim": True,
    "vmaf": True,
    "lpips": False,
    "lpips_vgg": False,
    "dists": False,
    "temporal_flicker": False,
}

MetricValues = dict[str, float | str | None]


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Which metrics to compute and where.

    `weights_dir`: extra directory searched (before the torch hub cache) for the official LPIPS/DISTS
    backbone checkpoints. `every`: measure every Nth GOP (see `should_measure`). `fps` only matters to
    VMAF's motion feature timing (it scores frame pairs, not seconds). `batch_frames` bounds memory.
    """

    device: str = "cpu"
    lpips: bool = True
    dists: bool = True
    vmaf: bool = True
    temporal: bool = True
    weights_dir: str | None = None
    every: int = 1
    batch_frames: int = 16
    fps: float = 25.0
    vmaf_threads: int = 1

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"metrics every must be >= 1, got {self.every}")
        if self.batch_frames < 1:
            raise ValueError(f"metrics batch_frames must be >= 1, got {self.batch_frames}")


def should_measure(gop_index: int, every: int) -> bool:
    """True for the GOPs a job with `--metrics-every N` measures: 0, N, 2N, … (every video's first GOP)."""
    return every <= 1 or gop_index % every == 0


def compute_gop_metrics(
    source: np.ndarray, recon: np.ndarray, config: MetricsConfig | None = None
) -> MetricValues:
    """Manifest quality columns for one GOP (uint8 T×H×W×3 source and reconstruction)."""
    return compute_gop_metrics_timed(source, recon, config)[0]


def compute_gop_metrics_timed(
    source: np.ndarray, recon: np.ndarray, config: MetricsConfig | None = None
) -> tuple[MetricValues, dict[str, float]]:
    """(manifest quality columns, seconds spent per metric). uint16 (RGB48, a 10-bit source) pairs are
    measured on their 8-bit rounding, and the note says so: every metric here is defined on 8 bits."""
    config = config or MetricsConfig()
    notes: list[str] = []
    if source.dtype == np.uint16 or recon.dtype == np.uint16:
        source, recon = to_8bit(source), to_8bit(recon)
        notes.append("measured on 8-bit renditions of high-bit-depth frames")
    check_pair(source, recon)
    values: MetricValues = dict.fromkeys(METRIC_COLUMNS)
    timing: dict[str, float] = {}

    def run(column: str, fn: Callable[[], tuple[float | None, str | None]]) -> None:
        started = time.perf_counter()
        value, note = fn()
        timing[column] = time.perf_counter() - started
        values[column] = value
        if note:
            notes.append(note)

    run("psnr", lambda: (psnr_rgb(source, recon), None))
    run("psnr_y", lambda: (psnr_y(source, recon), None))
    run("ms_ssim", lambda: ms_ssim(source, recon, device=config.device, batch_frames=config.batch_frames))
    from pipeline.metrics.perceptual import perceptual_distance  # imports torch and the metric packages

    perceptual = [("lpips", config.lpips), ("lpips_vgg", config.lpips), ("dists", config.dists)]
    for column, enabled in perceptual:
        if enabled:
            run(
                column,
                lambda column=column: perceptual_distance(
                    column,
                    source,
                    recon,
                    device=config.device,
                    weights_dir=config.weights_dir,
                    batch_frames=config.batch_frames,
                ),
            )
    if config.vmaf:
        run("vmaf", lambda: vmaf(source, recon, fps=config.fps, threads=config.vmaf_threads))
    if config.temporal:
        run("temporal_flicker", lambda: temporal_flicker(source, recon))
    disabled = [name for name, enabled in _switches(config) if not enabled]
    if disabled:
        notes.append(f"not computed (disabled): {', '.join(disabled)}")
    values["metrics_note"] = "; ".join(notes) or None
    return values, timing


def _switches(config: MetricsConfig) -> list[tuple[str, bool]]:
    return [
        ("lpips, lpips_vgg", config.lpips),
        ("dists", config.dists),
        ("vmaf", config.vmaf),
        ("temporal_flicker", config.temporal),
    ]
