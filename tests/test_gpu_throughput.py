"""The GPU-throughput machinery, checked on a CPU: reconstructions only where measured, the tokenizer's
tiling and compile decisions, several GOPs in flight per encode actor with results identical to coding
them one by one, the busy measures, and `vidarc bench gpu` with fractional GPUs per actor.

The CUDA-only parts (streams, pinned copies, NVML) take the same code paths with no-ops here; their
speed is measured by `vidarc bench gpu` on a GPU (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.base import RateTarget
from codec.glvc.random_model import build_random_model
from codec.gpu import (
    MEMORY_HEADROOM,
    BusyClock,
    CompiledOrEager,
    compile_by_default,
    vae_needs_tiling,
    vae_untiled_bytes,
)
from codec.registry import create_codec
from pipeline.archive.encode_worker import EncodeWorker
from pipeline.benchmarks.throughput import SKIPPED_METRICS
from pipeline.format.digests import fingerprint_psnr, frames_sha256
from pipeline.metrics import psnr_rgb

FPS = Fraction(24)
GIB = 2**30


def test_tokenizer_tiles_only_when_the_untiled_pass_would_not_fit() -> None:
    # The memory model reproduces the H100 peaks it was calibrated on (Wan2.1 VAE, bf16), from above.
    for (width, height), measured in (((1280, 720), 10 * GIB), ((1920, 1080), 22.5 * GIB)):
        assert measured <= vae_untiled_bytes(height, width, 17, 96, 2) <= 1.3 * measured
    # GLVC's 720p is 1280x736 once padded: untiled on an 80 GB card, tiled on a small one.
    assert not vae_needs_tiling(70 * GIB, 736, 1280, 49, 96, 2)
    assert vae_needs_tiling(8 * GIB, 736, 1280, 49, 96, 2)
    # The dtype counts: memory that holds a bf16 pass does not hold a float32 one.
    free = int(vae_untiled_bytes(1088, 1920, 33, 96, 2) / MEMORY_HEADROOM) + 1
    assert not vae_needs_tiling(free, 1088, 1920, 33, 96, 2)
    assert vae_needs_tiling(free, 1088, 1920, 33, 96, 4)
    # Longer GOPs hold more frames; a tiny VAE needs far less than the full one.
    assert vae_untiled_bytes(736, 1280, 97, 96, 2) > vae_untiled_bytes(736, 1280, 17, 96, 2)
    assert vae_untiled_bytes(736, 1280, 17, 8, 4) < vae_untiled_bytes(736, 1280, 17, 96, 2) / 4
    # Unknown free memory keeps the old rule: untiled up to 1280x720.
    assert not vae_needs_tiling(None, 720, 1280, 17, 96, 2)
    assert vae_needs_tiling(None, 736, 1280, 17, 96, 2)


def test_compile_is_on_by_default_only_on_cuda_and_falls_back_to_eager_with_a_log(caplog) -> None:
    assert compile_by_default(torch.device("cuda")) and not compile_by_default(torch.device("cpu"))
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 2, 8, 8)
    expected = conv(x)

    def broken_backend(graph, inputs):
        raise RuntimeError("no compiler toolchain here")

    wrapped = CompiledOrEager(conv, "a test conv", backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="vidarc.gpu"):
        first, second = wrapped(x), wrapped(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert wrapped.compiled is None and "no compiler toolchain here" in (wrapped.fallback_reason or "")
    assert sum("running it eagerly" in r.getMessage() for r in caplog.records) == 1
    assert wrapped.out_channels == 4  # attributes of the wrapped module stay reachable
    working = CompiledOrEager(conv, "a test conv", backend="eager")
    assert torch.allclose(working(x), expected) and working.compiled is not None


def test_busy_clock_counts_overlapping_work_once() -> None:
    now = [0.0]
    clock = BusyClock(lambda: now[0])
    first, second = clock.busy(), clock.busy()
    first.__enter__()
    now[0] = 1.0
    second.__enter__()  # overlaps the first
    now[0] = 3.0
    first.__exit__(None, None, None)
    now[0] = 4.0
    second.__exit__(None, None, None)
    now[0] = 6.0  # idle for 2 s
    with clock.busy():
        now[0] = 7.0
    report = clock.report()
    assert report == {"busy_seconds": 5.0, "span_seconds": 7.0, "busy_fraction": 5.0 / 7.0, "intervals": 3}


def test_busy_clock_shares_overlapping_time_among_the_blocks_running_then() -> None:
    """What each GOP in flight on an actor is charged: a stretch with k blocks running costs each 1/k
    of it, so the shares add up to the busy time however the blocks overlap."""
    now = [0.0]
    clock = BusyClock(lambda: now[0])
    a, b, c = clock.busy(), clock.busy(), clock.busy()
    share_a = a.__enter__()
    now[0] = 2.0
    share_b = b.__enter__()  # 0-2: a alone
    now[0] = 3.0
    share_c = c.__enter__()  # 2-3: a, b
    now[0] = 6.0
    a.__exit__(None, None, None)  # 3-6: a, b, c
    now[0] = 7.0
    b.__exit__(None, None, None)  # 6-7: b, c
    now[0] = 9.0
    c.__exit__(None, None, None)  # 7-9: c alone
    assert share_a.seconds == pytest.approx(2 + 0.5 + 1)
    assert share_b.seconds == pytest.approx(0.5 + 1 + 0.5)
    assert share_c.seconds == pytest.approx(1 + 0.5 + 2)
    assert (share_a.wall, share_b.wall, share_c.wall) == (6.0, 5.0, 6.0)
    assert share_a.seconds + share_b.seconds + share_c.seconds == pytest.approx(
        clock.report()["busy_seconds"]
    )


@pytest.fixture(scope="module")
def glvc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("glvc") / "model", seed=0).path


def test_glvc_actor_overlaps_gops_and_skips_reconstructions_nobody_measures(
    glvc_model: Path, clip: np.ndarray
) -> None:
    """Two GOPs in flight at once on one actor (threads, as Ray's threaded actor runs them), quality
    measured and pixel-proven on every 2nd: the payloads are those of coding the GOPs one by one, the
    measured GOP gets the metrics and the pixel proof of the sequential reconstruction, the tokenizer
    decoded only that one, and the other GOP's proof is its exact part alone."""
    worker = EncodeWorker(
        "glvc", str(glvc_model), "cpu", {}, metrics_every=2, skip_metrics=SKIPPED_METRICS, fingerprint_every=2
    )
    codec = worker.codec
    assert codec is not None and codec.thread_safe
    gops = [np.ascontiguousarray(clip[5 * i : 5 * i + 5, :32, :32]) for i in range(2)]
    target = RateTarget("quality", 30)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: worker.encode(gops[i], target, 24, 1, i, f"GOP {i}"), range(2)))
    report = worker.utilisation()
    # 2 tokenizer encodes + 1 reconstruction (GOP 0): GOP 1's decode was skipped.
    assert report["device_stage"]["intervals"] == 3
    assert report["gops"] == 2 and report["actor"]["intervals"] == 2
    assert 0 < report["actor"]["busy_seconds"] <= report["actor"]["span_seconds"] + 1e-9
    assert codec.tokenizer.last_tiled is False
    sequential = [codec.encode(g, target, FPS) for g in gops]
    for i, ((meta, payload), alone) in enumerate(zip(results, sequential, strict=True)):
        assert meta.error is None
        assert payload == alone.payload
        assert meta.exact_sha256 == alone.exact_digest
        if i == 0:
            assert meta.metric("psnr") == pytest.approx(psnr_rgb(gops[i], alone.reconstruction))
            assert meta.recon_sha256 == frames_sha256(alone.reconstruction)
            assert fingerprint_psnr(meta.fingerprint, alone.reconstruction) == float("inf")
        else:
            assert meta.metric("psnr") is None and "not measured" in meta.metrics_note
            assert meta.recon_sha256 is None and meta.fingerprint is None


def test_gvc_skips_its_final_vae_decode_when_no_reconstruction_is_asked() -> None:
    from codec.gvc.oracle import OracleBackbone
    from pipeline.sources.synthetic import TRAIN_IMAGES, synthetic_clip

    clip = synthetic_clip(TRAIN_IMAGES[0], 5, 32, 32, seed=0)
    codec = create_codec("gvc", backbone=OracleBackbone([clip], sigma=0.0), mode="t2v", steps=4, ode_tail=1,
                         atoms=64, model_id="oracle@1", model_sha256="ab" * 32)  # fmt: skip
    without = codec.encode(clip, RateTarget("quality", 4), FPS, reconstruct=False)
    full = codec.encode(clip, RateTarget("quality", 4), FPS)
    assert without.reconstruction is None and without.payload == full.payload
    assert np.array_equal(codec.decode(without.payload, 5, 32, 32), full.reconstruction)
    assert codec.stage.clock.intervals == 3  # two encodes and one decode, one at a time


def test_bench_gpu_runs_codec_and_pipeline_with_two_actors_sharing_a_gpu(
    ray_address: str, tmp_path: Path
) -> None:
    """`--num-gpus-per-actor 0.5` on a cluster with one (logical) GPU: both actors schedule at once,
    each holds half the GPU, both code GOPs, and the bench reports their busy measures."""
    from pipeline.benchmarks.gpu_goals import result_record, run_gpu_bench

    result = run_gpu_bench(
        codec="x264", videos=2, frames=8, width=64, height=48, gop_frames=4, metrics_every=1, actors=2,
        num_gpus_per_actor=0.5, gops_in_flight=2, device="cpu", workdir=str(tmp_path),
    )  # fmt: skip
    assert result.codec_encode_fps > 0 and result.codec_decode_fps > 0 and result.pipeline_fps > 0
    assert len(result.actors_report) == 2
    for actor in result.actors_report:
        assert actor["resources"].get("GPU") == 0.5
        assert actor["gops"] >= 1 and actor["actor"]["busy_seconds"] > 0
    assert sum(actor["gops"] for actor in result.actors_report) == 4
    assert result.actor_busy_fraction is not None and 0 < result.actor_busy_fraction <= 1.0 + 1e-9
    assert result.nvml_busy_fraction is None  # no GPU, no NVML
    assert "encode actor busy" in "\n".join(result.lines())
    json.dumps(result_record(result))


def test_channels_last_tokenizer_gives_the_same_latents_and_frames() -> None:
    import copy

    from diffusers import AutoencoderKLWan

    from codec.glvc.random_model import TINY_TOKENIZER
    from codec.glvc.tokenizer import Tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_TOKENIZER)
    plain, channels_last = Tokenizer(copy.deepcopy(vae)), Tokenizer(copy.deepcopy(vae), channels_last=True)
    conv3d = next(m for m in channels_last.vae.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    latents = plain.encode(frames)
    torch.testing.assert_close(channels_last.encode(frames), latents, rtol=0, atol=1e-5)
    assert np.abs(plain.decode(latents).astype(int) - channels_last.decode(latents)).max() <= 1
