"""What the manifest's quality columns cost: each metric's time on one GOP, next to the codec's.

The encode actor measures quality on the reconstruction of every `--metrics-every`-th GOP, on the
codec's device. For fast codecs that costs more than coding, which is what `--metrics-every` and
`--skip-metric` are for; this bench says by how much, per metric, in one run on one GOP:

- the codec's encode time for the GOP (the actor's own work, reconstruction included), then
- `compute_gop_metrics_timed` on the same source and reconstruction, per metric, on `device`,
- each metric's seconds as a ratio to the encode.

LPIPS and DISTS run their real architectures (AlexNet, VGG16 and their heads). When the official
ImageNet backbone weights are not installed, random backbone tensors of the right shapes are injected
(`perceptual.backbone_override`): the arithmetic, and so the time, is the same. Their values are then
meaningless, so this bench never prints metric values, only seconds; the run says which weights it used.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction
from typing import Any

from codec.base import RateTarget

#: What is timed: the cheap metrics' shared pass, then each expensive metric.
ALL_METRIC_COLUMNS = ("psnr+psnr_y+flicker", "ms_ssim", "lpips", "lpips_vgg", "dists", "vmaf")


@dataclasses.dataclass
class MetricsBenchResult:
    codec: str
    device: str
    width: int
    height: int
    frames: int
    encode_seconds: float
    metric_seconds: dict[str, float]
    backbones: str  # "official" or "random (timing only)"
    notes: list[str]

    def lines(self) -> list[str]:
        size = f"{self.width}x{self.height}, {self.frames} frames"
        out = [
            f"metrics cost on one GOP ({size}), device {self.device}; backbones: {self.backbones}",
            f"{'stage':<22}{'seconds':>10}{'ms/frame':>10}{'x encode':>10}",
            f"{self.codec + ' encode':<22}{self.encode_seconds:>10.3f}"
            f"{1000 * self.encode_seconds / self.frames:>10.1f}{1.0:>10.2f}",
        ]
        for name, seconds in self.metric_seconds.items():
            out.append(
                f"{name:<22}{seconds:>10.3f}{1000 * seconds / self.frames:>10.1f}"
                f"{seconds / self.encode_seconds:>10.2f}"
            )
        total = sum(self.metric_seconds.values())
        out.append(
            f"{'all metrics':<22}{total:>10.3f}{1000 * total / self.frames:>10.1f}{total / self.encode_seconds:>10.2f}"
        )
        out.extend(f"note: {note}" for note in self.notes)
        return out


def _random_backbones() -> dict[str, dict[str, Any]]:
    """Random feature-stack tensors of AlexNet's and VGG16's shapes (timing only)."""
    from pipeline.metrics.perceptual import _features_module

    return {arch: _features_module(arch).state_dict() for arch in ("alexnet", "vgg16")}


def run_metrics_bench(
    *,
    codec: str = "x264",
    width: int = 640,
    height: int = 360,
    frames: int = 48,
    device: str = "cpu",
    weights_dir: str | None = None,
    repeats: int = 2,
) -> MetricsBenchResult:
    """Time the codec and every metric on one synthetic GOP (best of `repeats`, after a warm-up)."""
    import contextlib

    from codec.registry import create_codec
    from pipeline.archive.config import DEFAULT_QUALITY
    from pipeline.metrics import MetricsConfig, compute_gop_metrics_timed
    from pipeline.metrics.perceptual import backbone_override, get_model
    from pipeline.metrics.weights import WeightsUnavailable
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

    source = synthetic_clip(EVAL_IMAGES[0], frames, width, height, seed=0)
    coder = create_codec(codec)
    target = RateTarget("quality", DEFAULT_QUALITY.get(codec, 23))
    fps = Fraction(24)
    coder.encode(source, target, fps)  # warm-up: model loads, encoder start-up
    encode_seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encoded = coder.encode(source, target, fps)
        encode_seconds = min(encode_seconds, time.perf_counter() - started)

    try:
        for metric in ("lpips", "lpips_vgg", "dists"):
            get_model(metric, device, weights_dir)
        backbones, override = "official (sha256-checked)", contextlib.nullcontext()
    except WeightsUnavailable:
        backbones = "random tensors of the official shapes (official weights not installed; timing only)"
        override = backbone_override(_random_backbones())
    config = MetricsConfig(device=device, fps=float(fps), weights_dir=weights_dir)
    best: dict[str, float] = {}
    notes: list[str] = []
    with override:
        compute_gop_metrics_timed(source, encoded.reconstruction, config)  # warm-up: builds the networks
        for _ in range(repeats):
            values, timing = compute_gop_metrics_timed(source, encoded.reconstruction, config)
            for name, seconds in timing.items():
                best[name] = min(best.get(name, float("inf")), seconds)
    if values.get("metrics_note"):
        notes.append(str(values["metrics_note"]))
    ordered = {name: best[name] for name in ALL_METRIC_COLUMNS if name in best}
    return MetricsBenchResult(codec, device, width, height, frames, encode_seconds, ordered, backbones, notes)


def result_record(result: MetricsBenchResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
