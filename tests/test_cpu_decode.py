"""The neural codecs' CPU path: the fast kernels compute the same network, a pixel decode does not
depend on the thread count, and GOPs decoded side by side equal GOPs decoded one at a time.

Equality of digests and payloads only: speed is measured by `vidarc bench codec`, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codec import wan_cpu
from codec.base import RateTarget, frames_sha256
from codec.glvc.tokenizer import load_tokenizer
from codec.modeldir import bundled_model_path, load_model_dir
from codec.registry import build_codec
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The codecs set this thread's torch threads to one on the CPU: give other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("kt", "stride", "padding"),
    [(3, (1, 1, 1), (1, 1)), (3, (2, 1, 1), (0, 0)), (1, (1, 1, 1), (0, 0)), (3, (1, 2, 2), (1, 1))],
)
def test_causal_conv3d_as_2d_convolutions_equals_conv3d(kt, stride, padding) -> None:
    """Every shape the Wan VAE uses: temporal stride 2 in the encoder, 1×1×1 shortcuts, spatial stride."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 7, 10, 12, generator=g)
    weight = torch.randn(5, 6, kt, 3 if kt == 3 else 1, 3 if kt == 3 else 1, generator=g)
    bias = torch.randn(5, generator=g)
    expected = F.conv3d(x, weight, bias, stride, (0, *padding))
    got = wan_cpu.causal_conv3d(x, weight, bias, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_frames_spread_over_cores_give_the_bytes_of_one_core(monkeypatch) -> None:
    """The convolution's frames on the shared pool, or inline as on a one-core machine: same bits."""
    from codec import cpu_threads

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 6, 40, 72, generator=g).transpose(3, 4).transpose(3, 4)  # a strided view
    weight, bias = torch.randn(16, 16, 3, 3, 3, generator=g), torch.randn(16, generator=g)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 4)
    spread = wan_cpu.causal_conv3d(x, weight, bias, (1, 1, 1), (1, 1))
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 1)
    torch.set_num_threads(1)
    inline = wan_cpu.causal_conv3d(x, weight, bias, (1, 1, 1), (1, 1))
    assert torch.equal(spread, inline)


@pytest.fixture(scope="module")
def bundled() -> Path:
    return load_model_dir(bundled_model_path()).path


def test_the_cpu_kernels_compute_diffusers_network(bundled: Path) -> None:
    """Same weights, the two forwards: latents to float rounding, pixels at most one level apart."""
    frames = synthetic_clip(EVAL_IMAGES[0], 5, 64, 48, seed=3)
    fast = load_tokenizer(bundled / "tokenizer", cpu_kernels=True)
    plain = load_tokenizer(bundled / "tokenizer", cpu_kernels=False)
    assert type(fast.vae.decoder.conv_in) is not type(plain.vae.decoder.conv_in)
    assert fast.vae.state_dict().keys() == plain.vae.state_dict().keys()
    latents = plain.encode(frames)
    torch.testing.assert_close(fast.encode(frames), latents, rtol=1e-4, atol=1e-4)
    delta = np.abs(fast.decode(latents).astype(int) - plain.decode(latents).astype(int))
    assert delta.max() <= 1


def test_a_glvc_pixel_decode_does_not_depend_on_the_thread_count() -> None:
    """At this size oneDNN split its work differently with one thread and with two, and the same
    payload decoded to other bytes (so verify said drift on the machine that wrote the archive)."""
    codec = build_codec("glvc", model=None, device="cpu", options={})
    frames = synthetic_clip(EVAL_IMAGES[1], 9, 256, 144, seed=2)
    torch.set_num_threads(2)
    gop = codec.encode(frames, RateTarget("quality", 32), Fraction(25))
    digests = set()
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        digests.add(frames_sha256(codec.decode(gop.payload, 9, 256, 144)))
    assert digests == {frames_sha256(gop.reconstruction)}


@pytest.mark.parametrize("name", ["glvc", "gvc-flf2v"])
def test_neural_gops_decoded_side_by_side_equal_one_at_a_time(name: str) -> None:
    """The CPU passes of several threads run at once (no device lock on the CPU; each thread has its
    own causal cache): every GOP decodes to the golden digest whichever thread decodes it."""
    from codec.cores import usable_cores
    from pipeline.read.reader import ArchiveReader, decode_workers

    reader = ArchiveReader(str(GOLDEN / "v2" / f"{name}.vdrc"))
    record = json.loads((GOLDEN / "v2" / "goldens.json").read_text())["archives"][name]
    decoder = reader.decoder_for(model=str(GOLDEN / "model"), device="cpu")
    gops = reader.index().gops
    assert decode_workers(decoder, len(gops)) == min(len(gops), usable_cores())
    one_at_a_time = [frames_sha256(reader.decode(g.index, decoder)) for g in gops]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(gops))

    def decode(i: int) -> None:
        barrier.wait()  # all threads inside the codec together
        results[i] = frames_sha256(reader.decode(i, decoder))

    threads = [threading.Thread(target=decode, args=(g.index,)) for g in gops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[g.index] for g in gops] == one_at_a_time
    in_order = [frames_sha256(f) for f in reader.decode_in_order([g.index for g in gops], decoder)]
    assert in_order == one_at_a_time
    recorded = [g["frames_sha256"] for g in record["gops"]]
    width, height = int(reader.header.width), int(reader.header.height)
    exact = [decoder.decode_with_digest(reader.gop(g.index), g.frame_count, width, height)[1] for g in gops]
    assert exact == [g["exact_sha256"] for g in record["gops"]]
    assert len(set(one_at_a_time)) == len(gops) and len(recorded) == len(gops)


def test_classic_decoders_decode_one_gop_at_a_time() -> None:
    from pipeline.read.reader import decode_workers

    assert decode_workers(build_codec("x264", model=None, device="cpu", options={}), 8) == 1


def _vidarc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_bench_codec_measures_a_codec_beside_x265() -> None:
    result = _vidarc("bench", "codec", "--codec", "x264", "--size", "64x48", "--frames", "5", "--gops", "2",
                     "--target", "bpp=0.2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["codec"] == "x264" and record["frames_per_gop"] == 5 and record["gops"] == 2
    for side in ("codec_speed", "x265"):
        assert record[side]["encode_fps"] > 0 and record[side]["decode_fps"] > 0
    assert record["codec_speed"]["evaluations"] >= 1  # a bpp target searches
    assert (
        record["codec_speed"]["parallel_encode_fps"] > 0 and record["codec_speed"]["parallel_decode_fps"] > 0
    )
    assert record["x265"]["parallel_encode_fps"] is None  # the baseline is coded one GOP at a time
    assert record["decode_ratio_to_x265"] == pytest.approx(
        record["codec_speed"]["decode_fps"] / record["x265"]["decode_fps"]
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target", "bpp"], "--target 'bpp'"),
        (["--size", "64"], "64"),
        (["--codec", "nope"], "nope"),
        (["--codec", "glvc", "--frames", "6"], "6"),
    ],
)
def test_bench_codec_refuses_bad_options_in_one_line(args: list[str], says: str) -> None:
    result = _vidarc("bench", "codec", "--size", "64x48", "--frames", "5", *args)
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bpp_search_runs_the_tokenizer_once_per_gop() -> None:
    """Only the latent codec runs per candidate quality index; the tokenizer's encoder once per GOP
    and its decoder once, for the reconstruction of the chosen one."""
    codec = build_codec("glvc", model=None, device="cpu", options={})
    clip = synthetic_clip(EVAL_IMAGES[0], 18, 64, 48, seed=4)
    passes, evaluations = codec.tokenizer._passes, []
    for gop in (clip[:9], clip[9:]):
        before = dict(passes)
        evaluations.append(codec.encode(gop, RateTarget("bpp", 0.1), Fraction(25)).params["evaluations"])
        assert passes["encoder"] - before["encoder"] == 1
        assert passes["decoder"] - before["decoder"] == 1
    assert evaluations[0] > 2  # a real search (the second GOP starts from the first one's index)


def test_attention_by_heads_is_the_same_attention() -> None:
    """GVC's flow transformer on the CPU: one head per call on the pool, the same values as all heads
    at once (to float rounding), and left alone for what it does not cover (a mask)."""
    from diffusers.models.transformers import transformer_wan

    before = transformer_wan.dispatch_attention_fn
    wan_cpu.use_cpu_attention()
    wan_cpu.use_cpu_attention()  # once per process, however often it is asked
    wrapped = transformer_wan.dispatch_attention_fn
    assert wrapped.vidarc_by_heads and (before is wrapped or not getattr(before, "vidarc_by_heads", False))
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 40, 4, 8, generator=g) for _ in range(3))  # [batch, tokens, heads, dim]
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    got = wrapped(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
    mask = torch.ones(40, 40, dtype=torch.bool)
    torch.testing.assert_close(wrapped(q, k, v, attn_mask=mask), got, rtol=1e-5, atol=1e-5)
