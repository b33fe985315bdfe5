"""Quality metrics: analytic PSNR values, documented fallbacks, flicker, real VMAF, weight checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from pipeline.metrics import (
    METRIC_COLUMNS,
    PIXEL_PASS,
    MetricsConfig,
    compute_gop_metrics,
    compute_gop_metrics_timed,
    perceptual,
    psnr_rgb,
    psnr_y,
    should_measure,
)
from pipeline.metrics.fidelity import PSNR_CAP_DB, ms_ssim
from pipeline.metrics.temporal import temporal_flicker
from pipeline.metrics.vmaf import vmaf
from pipeline.metrics.weights import BACKBONES

FAST = MetricsConfig(lpips=False, dists=False, vmaf=False)


def natural_gop(frames: int, size: int) -> np.ndarray:
    """A small pan over a real photograph (metrics behave differently on noise than on images)."""
    image = data.astronaut()
    return np.stack([image[100 + 2 * t : 100 + 2 * t + size, 150 : 150 + size] for t in range(frames)])


def add_noise(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(frames.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def test_psnr_matches_the_analytic_value_for_a_known_mse():
    source = np.full((3, 8, 8, 3), 100, dtype=np.uint8)
    recon = source + 2  # squared error 4 everywhere
    expected = 10 * math.log10(255**2 / 4)
    assert psnr_rgb(source, recon) == pytest.approx(expected)
    assert psnr_y(source, recon) == pytest.approx(expected, abs=1e-4)  # luma weights sum to 1


def test_psnr_of_identical_frames_is_capped_not_infinite():
    frames = natural_gop(2, 32)
    assert psnr_rgb(frames, frames) == PSNR_CAP_DB


def test_psnr_y_ignores_a_chroma_only_change_that_rgb_psnr_sees():
    source = np.full((2, 8, 8, 3), 128, dtype=np.uint8)
    recon = source.copy()
    # Shift R and B against G so BT.709 luma stays almost unchanged: dY = 0.2126*a - 0.7152*b + 0.0722*a
    recon[..., 0] += 10
    recon[..., 2] += 10
    recon[..., 1] -= 3  # 0.2848*10 - 0.7152*3 ≈ 0.70 luma change, 10-px RGB change
    assert psnr_y(source, recon) > psnr_rgb(source, recon) + 15


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_rgb(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 5, 3), np.uint8))


def test_ms_ssim_is_one_for_identical_frames_and_drops_with_noise():
    frames = natural_gop(2, 176)
    same, note = ms_ssim(frames, frames)
    assert note is None and same == pytest.approx(1.0, abs=1e-6)
    mild, _ = ms_ssim(frames, add_noise(frames, 4))
    strong, _ = ms_ssim(frames, add_noise(frames, 20))
    assert 1.0 > mild > strong > 0.0


def test_ms_ssim_on_small_frames_is_null_with_a_note_not_a_crash():
    frames = natural_gop(2, 64)
    value, note = ms_ssim(frames, frames)
    assert value is None and "64x64" in note and "161" in note


def test_flicker_separates_alternating_brightness_from_a_steady_error_of_equal_size():
    static = np.repeat(natural_gop(1, 48), 8, axis=0)
    steady = np.clip(static.astype(int) + 4, 0, 255).astype(np.uint8)
    signs = np.where(np.arange(8) % 2 == 0, 4, -4)[:, None, None, None]
    alternating = np.clip(static.astype(int) + signs, 0, 255).astype(np.uint8)
    # Same per-frame error magnitude, so per-frame metrics cannot tell them apart ...
    assert psnr_rgb(static, steady) == pytest.approx(psnr_rgb(static, alternating), abs=0.2)
    steady_flicker, _ = temporal_flicker(static, steady)
    alternating_flicker, _ = temporal_flicker(static, alternating)
    # ... but flicker does: about 2·4 luma units per frame change versus ~0.
    assert steady_flicker < 0.5
    assert alternating_flicker > 6.0


def test_flicker_does_not_charge_for_motion_the_source_has():
    moving = natural_gop(6, 48)
    value, _ = temporal_flicker(moving, moving)
    assert value == 0.0
    value, note = temporal_flicker(moving[:1], moving[:1])
    assert value is None and "single-frame" in note


def test_vmaf_runs_for_real_and_ranks_degradation():
    source = natural_gop(4, 64)
    same, note = vmaf(source, source)
    assert note is None and same > 90
    degraded, _ = vmaf(source, add_noise(source, 25))
    assert degraded < same - 10


def test_vmaf_on_tiny_frames_is_null_with_a_note():
    tiny = natural_gop(2, 16)
    value, note = vmaf(tiny, tiny)
    assert value is None and "16x16" in note


def test_gop_metrics_return_exactly_the_manifest_columns_and_timing():
    source = natural_gop(3, 40)
    values, timing = compute_gop_metrics_timed(source, add_noise(source, 5), FAST)
    assert set(values) == {*METRIC_COLUMNS, "metrics_note"}
    assert values["lpips"] is None and values["vmaf"] is None
    assert "disabled" in values["metrics_note"] and "vmaf" in values["metrics_note"]
    assert values["temporal_flicker"] > 0
    assert {PIXEL_PASS, "ms_ssim"} <= set(timing)
    assert all(seconds >= 0 for seconds in timing.values())


def test_should_measure_samples_every_nth_gop():
    assert [i for i in range(10) if should_measure(i, 4)] == [0, 4, 8]
    assert all(should_measure(i, 1) for i in range(5))
    with pytest.raises(ValueError):
        MetricsConfig(every=0)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with no checkpoints, as on a machine that never downloaded them."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    perceptual._models.clear()
    perceptual._failures.clear()
    yield tmp_path
    torch.hub.set_dir(previous)
    perceptual._models.clear()
    perceptual._failures.clear()


def test_missing_backbone_weights_give_null_and_a_note_never_random_weights(empty_hub):
    source = natural_gop(2, 64)
    values = compute_gop_metrics(source, source, MetricsConfig(vmaf=False, weights_dir=str(empty_hub / "w")))
    assert values["lpips"] is None and values["lpips_vgg"] is None and values["dists"] is None
    assert BACKBONES["alexnet"].filename in values["metrics_note"]
    assert BACKBONES["vgg16"].filename in values["metrics_note"]


def test_backbone_with_a_wrong_hash_is_refused(empty_hub):
    weights_dir = empty_hub / "w"
    weights_dir.mkdir()
    (weights_dir / BACKBONES["alexnet"].filename).write_bytes(b"not the ImageNet weights")
    source = natural_gop(2, 64)
    values = compute_gop_metrics(
        source, source, MetricsConfig(vmaf=False, dists=False, weights_dir=str(weights_dir))
    )
    assert values["lpips"] is None
    assert "sha256" in values["metrics_note"] and BACKBONES["alexnet"].sha256_prefix in values["metrics_note"]


@pytest.fixture(scope="module")
def injected_backbones():
    """Seeded random feature stacks of the real architectures: exercises the plumbing only."""
    torch.manual_seed(0)
    states = {arch: perceptual._features_module(arch).state_dict() for arch in ("alexnet", "vgg16")}
    with perceptual.backbone_override(states):
        yield


@pytest.mark.parametrize("metric", ["lpips", "lpips_vgg", "dists"])
def test_perceptual_plumbing_is_zero_for_identical_and_grows_with_distortion(injected_backbones, metric):
    source = natural_gop(3, 64)
    same, note = perceptual.perceptual_distance(metric, source, source, batch_frames=2)
    assert note is None and abs(same) < 1e-4
    mild, _ = perceptual.perceptual_distance(metric, source, add_noise(source, 5), batch_frames=2)
    strong, _ = perceptual.perceptual_distance(metric, source, add_noise(source, 40), batch_frames=2)
    assert all(math.isfinite(v) for v in (mild, strong))
    assert strong > mild > same


def test_metrics_bench_times_every_metric_against_the_encode():
    from pipeline.benchmarks.metric_costs import ALL_METRIC_COLUMNS, run_metrics_bench

    result = run_metrics_bench(width=64, height=48, frames=4, repeats=1)
    assert set(result.metric_seconds) == set(ALL_METRIC_COLUMNS)
    assert result.encode_seconds > 0 and all(s >= 0 for s in result.metric_seconds.values())
    text = "\n".join(result.lines())
    assert "x264 encode" in text and "all metrics" in text and result.backbones in text
    # Seconds only: with random backbones a metric value would be meaningless, so none is reported.
    assert "random" not in result.backbones or "timing only" in result.backbones
