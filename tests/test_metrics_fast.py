"""The metrics' fast paths hold their definitions, and the expensive ones follow the seeded sample.

The cheap metrics' single pass and the CPU MS-SSIM are checked against the straightforward forms
(float64 two-image PSNR and flicker written out here; pytorch-msssim itself) on real x264 output, at
sizes that exercise chunk boundaries and odd sides.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim

from codec.base import RateTarget
from codec.registry import create_codec
from pipeline.archive.config import ArchiveConfig, ConfigError, QualityGoal
from pipeline.metrics import (
    DEFAULT_SAMPLE_FRACTION,
    MetricsConfig,
    MetricsSample,
    compute_gop_metrics,
)
from pipeline.metrics.fidelity import CHUNK_FRAMES, PSNR_CAP_DB, ms_ssim, pixel_metrics
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

BT709 = np.array([0.2126, 0.7152, 0.0722])
ROOT = Path(__file__).resolve().parents[1]


def x264_pair(frames: int, width: int, height: int, crf: float = 36) -> tuple[np.ndarray, np.ndarray]:
    source = synthetic_clip(EVAL_IMAGES[1], frames, width, height, seed=5)
    encoded = create_codec("x264").encode(source, RateTarget("quality", crf), Fraction(24))
    return source, encoded.reconstruction


def psnr_of(mse: float) -> float:
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * np.log10(255**2 / mse))


def two_image_forms(source: np.ndarray, recon: np.ndarray) -> tuple[float, float, float | None]:
    """PSNR, PSNR-Y and flicker as their definitions read, in float64 on whole arrays."""
    s, r = source.astype(np.float64), recon.astype(np.float64)
    ys, yr = s @ BT709, r @ BT709
    error = yr - ys
    flicker = float(np.abs(np.diff(error, axis=0)).mean()) if len(source) > 1 else None
    return psnr_of(float(((s - r) ** 2).mean())), psnr_of(float(((ys - yr) ** 2).mean())), flicker


@pytest.mark.parametrize(
    ("frames", "width", "height"), [(2 * CHUNK_FRAMES + 1, 97, 33), (CHUNK_FRAMES, 64, 48), (1, 40, 24)]
)
def test_the_single_pixel_pass_equals_the_two_image_definitions(frames, width, height):
    source, recon = x264_pair(frames, width, height)
    fast = pixel_metrics(source, recon)
    psnr, psnr_y, flicker = two_image_forms(source, recon)
    assert fast.psnr == pytest.approx(psnr, abs=1e-9)  # integer differences: exact
    assert fast.psnr_y == pytest.approx(psnr_y, abs=1e-5)
    if flicker is None:
        assert fast.temporal_flicker is None
    else:
        assert fast.temporal_flicker == pytest.approx(flicker, rel=1e-5)


@pytest.mark.parametrize(("width", "height"), [(192, 176), (201, 163)])  # even sides; odd ones (pooling pads)
def test_cpu_ms_ssim_equals_pytorch_msssim(width, height):
    source, recon = x264_pair(3, width, height, crf=40)
    value, note = ms_ssim(source, recon, device="cpu")
    x = torch.from_numpy(source).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(recon).permute(0, 3, 1, 2).float()
    expected = float(reference_ms_ssim(x, y, data_range=255.0, size_average=False).double().mean())
    assert note is None
    assert 0.5 < expected < 0.999  # a real degradation, so agreement is not agreement on 1.0
    assert value == pytest.approx(expected, abs=1e-4)


def test_the_sample_is_seeded_keyed_and_of_the_asked_size():
    sample = MetricsSample(0.1)
    picks = [sample.selects(f"video-{v}", g) for v in range(500) for g in range(20)]
    again = [MetricsSample(0.1).selects(f"video-{v}", g) for v in range(500) for g in range(20)]
    assert picks == again
    share = sum(picks) / len(picks)
    assert abs(share - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(picks))  # binomial, 4 sigma
    other_seed = [MetricsSample(0.1, seed=1).selects(f"video-{v}", g) for v in range(500) for g in range(20)]
    assert other_seed != picks
    assert all(MetricsSample(1.0).selects(f"v{v}", g) for v in range(50) for g in range(5))
    with pytest.raises(ValueError):
        MetricsSample(0.0)


def test_a_gop_outside_the_sample_gets_the_cheap_metrics_and_a_note():
    source, recon = x264_pair(4, 192, 176)
    config = MetricsConfig(lpips=False, dists=False, vmaf=True)
    outside = compute_gop_metrics(source, recon, config, sampled=False)
    assert outside["psnr"] > 0 and outside["psnr_y"] > 0 and outside["temporal_flicker"] > 0
    assert outside["ms_ssim"] is None and outside["vmaf"] is None
    assert "not in the sample for expensive metrics: ms_ssim, vmaf" in outside["metrics_note"]
    inside = compute_gop_metrics(source, recon, config, sampled=True)
    assert inside["ms_ssim"] is not None and inside["vmaf"] is not None
    assert inside["psnr"] == outside["psnr"]
    forced = compute_gop_metrics(source, recon, dataclasses.replace(config, always=("vmaf",)), sampled=False)
    assert forced["vmaf"] == pytest.approx(inside["vmaf"]) and forced["ms_ssim"] is None


def test_the_archive_options_check_the_sample_and_force_what_targets_need(tmp_path):
    base = dict(src=str(tmp_path), out=str(tmp_path / "out"), codec="x264")
    assert ArchiveConfig(**base).resolved().metrics_sample == DEFAULT_SAMPLE_FRACTION
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="--metrics-sample"):
            ArchiveConfig(**base, metrics_sample=bad).resolved()
    assert ArchiveConfig(**base).resolved().always_measured() == ()
    assert ArchiveConfig(**base, min_vmaf=80).resolved().always_measured() == ("vmaf",)
    goal = QualityGoal(metric="vmaf", target=90)
    assert ArchiveConfig(**base, quality_goal=goal).resolved().always_measured() == ("vmaf",)


def test_the_cli_default_is_the_library_default():
    import inspect

    from jobs.archive import archive_command

    default = inspect.signature(archive_command).parameters["metrics_sample"].default
    assert default == DEFAULT_SAMPLE_FRACTION


def test_reservoir_intervals_come_from_the_sample_size():
    from pipeline.audit.sketch import Reservoir

    rng = np.random.default_rng(0)
    small, large = Reservoir(), Reservoir()
    small.add(rng.normal(90, 5, 20))
    large.add(rng.normal(90, 5, 2000))
    low, high = small.mean_interval()
    assert low < small.mean < high
    large_low, large_high = large.mean_interval()
    assert (large_high - large_low) < (high - low) / 5  # ~√100 narrower
    assert small.quantile_interval(0.01)[0] is None  # 20 values cannot bound the 1st percentile below
    p50_low, p50_high = large.quantile_interval(0.5)
    assert p50_low < large.quantile(0.5) < p50_high
    single = Reservoir()
    single.add(np.array([3.0]))
    assert single.mean_interval() is None


def test_a_classic_codec_actor_codes_and_measures_without_loading_torch():
    """torch costs seconds of start-up in every actor; the classic path (codec, default metrics
    without perceptual weights) must not load it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, tempfile
        import numpy as np
        from codec.base import RateTarget
        from pipeline.archive.encode_worker import EncodeWorker
        worker = EncodeWorker("x264", None, "cpu", {}, metric_weights=tempfile.mkdtemp())
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, (4, 176, 192, 3), dtype=np.uint8)
        meta, payload = worker.encode(frames, RateTarget("quality", 30), 24, 1, 0, "clip GOP 0", None, None, True)
        assert meta.metric("ms_ssim") is not None and meta.metric("vmaf") is not None, meta
        assert meta.metric("lpips") is None, meta
        print("torch" in sys.modules)
        """
    )
    env = {"HOME": "/nonexistent-home", "PATH": "/usr/bin:/bin"}  # no torch hub cache: no weights
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(ROOT)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
