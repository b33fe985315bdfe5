"""Quality metrics for one GOP: what the manifest's quality columns hold and how they are computed.

`compute_gop_metrics(source, recon, config)` returns exactly the manifest columns psnr, psnr_y, ms_ssim,
lpips, lpips_vgg, dists, vmaf, temporal_flicker and metrics_note. A metric that cannot be computed
(weights absent, frames too small, metric switched off) is None and `metrics_note` says why: the manifest
never holds a made-up value. Definitions live with each metric:

- `fidelity`: PSNR (RGB, pooled over the GOP), PSNR-Y (BT.709), MS-SSIM (5-scale, ≥161-px frames)
- `perceptual`: LPIPS-Alex, LPIPS-VGG, DISTS, from verified official weights only (`weights`)
- `vmaf`: libvmaf through imageio-ffmpeg's ffmpeg
- `temporal`: flicker, the mean absolute temporal difference of the luma error

Metrics run on whole GOPs as batches (chunks of `batch_frames`) on `config.device`. They come in two
costs. The cheap ones (PSNR, PSNR-Y, flicker: one pass over the pixels, ~1 ms per 640×360 frame) are
measured on every GOP the job measures (`should_measure(gop_index, every)`, `--metrics-every`). The
expensive ones (`EXPENSIVE_METRICS`: MS-SSIM, VMAF, LPIPS, DISTS; each costs about an x264 encode)
on a seeded sample of those GOPs (`MetricsSample`, `--metrics-sample`, 10 % by default; 1 measures
every GOP): the same GOPs in every run of the same archive, and an unbiased sample of its GOPs, so
the audit's means and percentiles of a sampled metric come with intervals computed from the sample's
size. What a quality target, a floor or the classic reference needs is measured on every GOP it
looks at, whatever the sample (`MetricsConfig.always`).
`compute_gop_metrics_timed` also returns seconds per metric, which the pipeline may log or summarise —
cost is an operational number, not a quality column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable

import numpy as np

from codec.base import to_8bit
from pipeline.metrics.fidelity import check_pair, ms_ssim, pixel_metrics, psnr_rgb, psnr_y
from pipeline.metrics.temporal import SINGLE_FRAME_NOTE
from pipeline.metrics.vmaf import vmaf

__all__ = [
    "EXPENSIVE_METRICS",
    "HIGHER_IS_BETTER",
    "METRIC_COLUMNS",
    "PIXEL_PASS",
    "UNSAMPLED_NOTE",
    "MetricsConfig",
    "MetricsSample",
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

#: Metrics that cost about an encode each: measured on `MetricsSample`'s GOPs unless asked for on all.
EXPENSIVE_METRICS: tuple[str, ...] = ("ms_ssim", "lpips", "lpips_vgg", "dists", "vmaf")

#: The default share of measured GOPs that also get the expensive metrics. With MS-SSIM and VMAF at
#: about an x264-medium encode each, 10 % keeps all metrics under the encode's cost, and still gives
#: a 1,000-GOP archive ~100 measured GOPs per metric (a VMAF mean to about ±1 at 95 %).
DEFAULT_SAMPLE_FRACTION = 0.1

MetricValues = dict[str, float | str | None]

#: How `metrics_note` begins the list of expensive metrics a GOP outside the sample did not get.
UNSAMPLED_NOTE = "not in the sample for expensive metrics"

#: The timing key of the one pass that measures PSNR, PSNR-Y and flicker together.
PIXEL_PASS = "psnr+psnr_y+flicker"


@dataclasses.dataclass(frozen=True)
class MetricsSample:
    """Which GOPs get the expensive metrics: those whose blake2b(seed, video key, GOP index), read as a
    number in [0, 1), is below `fraction`. Seeded and keyed, not random: a resumed or repeated run
    measures the same GOPs, whichever actor codes them and in whatever order; and independent of the
    content, so the sample is an unbiased one of the archive's GOPs."""

    fraction: float = DEFAULT_SAMPLE_FRACTION
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"metrics sample fraction must be in (0, 1], got {self.fraction}")

    def selects(self, video_key: str, gop_index: int) -> bool:
        if self.fraction >= 1:
            return True
        digest = hashlib.blake2b(
            f"{self.seed}\0{video_key}\0{gop_index}".encode(), digest_size=8, person=b"vidarc-metrics"
        ).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < self.fraction

    def describe(self) -> str:
        return "every GOP" if self.fraction >= 1 else f"a seeded {100 * self.fraction:g} % of GOPs"


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
    #: Expensive metrics measured on every GOP, sampled or not (what a target or floor checks).
    always: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"metrics every must be >= 1, got {self.every}")
        if self.batch_frames < 1:
            raise ValueError(f"metrics batch_frames must be >= 1, got {self.batch_frames}")


def should_measure(gop_index: int, every: int) -> bool:
    """True for the GOPs a job with `--metrics-every N` measures: 0, N, 2N, … (every video's first GOP)."""
    return every <= 1 or gop_index % every == 0


def compute_gop_metrics(
    source: np.ndarray, recon: np.ndarray, config: MetricsConfig | None = None, *, sampled: bool = True
) -> MetricValues:
    """Manifest quality columns for one GOP (uint8 T×H×W×3 source and reconstruction)."""
    return compute_gop_metrics_timed(source, recon, config, sampled=sampled)[0]


def compute_gop_metrics_timed(
    source: np.ndarray, recon: np.ndarray, config: MetricsConfig | None = None, *, sampled: bool = True
) -> tuple[MetricValues, dict[str, float]]:
    """(manifest quality columns, seconds spent per metric). `sampled`: whether this GOP is in the
    expensive metrics' sample (else only the cheap ones and `config.always` are measured).
    uint16 (RGB48, a 10-bit source) pairs are measured on their 8-bit rounding, and the note says
    so: every metric here is defined on 8 bits."""
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

    started = time.perf_counter()
    pixels = pixel_metrics(source, recon)  # PSNR, PSNR-Y and flicker share one pass
    timing[PIXEL_PASS] = time.perf_counter() - started
    values["psnr"], values["psnr_y"] = pixels.psnr, pixels.psnr_y

    def wanted(column: str) -> bool:
        return sampled or column in config.always

    if wanted("ms_ssim"):
        run("ms_ssim", lambda: ms_ssim(source, recon, device=config.device, batch_frames=config.batch_frames))
    perceptual = [("lpips", config.lpips), ("lpips_vgg", config.lpips), ("dists", config.dists)]
    for column, enabled in perceptual:
        if not (enabled and wanted(column)):
            continue
        missing = _weights_missing(column, config.weights_dir)
        if missing is not None:
            values[column] = None
            notes.append(missing)
        else:
            from pipeline.metrics.perceptual import perceptual_distance  # imports torch and the packages

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
    if config.vmaf and wanted("vmaf"):
        run("vmaf", lambda: vmaf(source, recon, fps=config.fps, threads=config.vmaf_threads))
    if config.temporal:
        values["temporal_flicker"] = pixels.temporal_flicker
        if pixels.temporal_flicker is None:
            notes.append(SINGLE_FRAME_NOTE)
    unsampled = [name for name, enabled in _expensive_switches(config) if enabled and not wanted(name)]
    if unsampled:
        notes.append(f"{UNSAMPLED_NOTE}: {', '.join(unsampled)}")
    disabled = [name for name, enabled in _switches(config) if not enabled]
    if disabled:
        notes.append(f"not computed (disabled): {', '.join(disabled)}")
    values["metrics_note"] = "; ".join(notes) or None
    return values, timing


def _weights_missing(column: str, weights_dir: str | None) -> str | None:
    """Why `column` cannot be measured for want of weights, found without importing torch (4 s on a
    small machine, in every actor that never uses it). Once the perceptual module is loaded it answers
    itself (it may hold injected backbones)."""
    if "pipeline.metrics.perceptual" in sys.modules:
        return None
    from pipeline.metrics.weights import missing_backbone, warn_once

    missing = missing_backbone(column, weights_dir)
    if missing is not None:
        warn_once(missing)
    return missing


def _expensive_switches(config: MetricsConfig) -> list[tuple[str, bool]]:
    return [
        ("ms_ssim", True),
        ("lpips", config.lpips),
        ("lpips_vgg", config.lpips),
        ("dists", config.dists),
        ("vmaf", config.vmaf),
    ]


def _switches(config: MetricsConfig) -> list[tuple[str, bool]]:
    return [
        ("lpips, lpips_vgg", config.lpips),
        ("dists", config.dists),
        ("vmaf", config.vmaf),
        ("temporal_flicker", config.temporal),
    ]
