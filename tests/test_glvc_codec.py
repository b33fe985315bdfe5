"""GlvcCodec end to end with a tiny random-weight model: geometry, rate, bitstream errors, determinism.

Random weights make the pictures meaningless but exercise every real part: the diffusers Wan VAE, the
exact entropy path, constriction, the rate search and the payload format.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.base import RateTarget, bits_per_pixel
from codec.errors import CorruptPayloadError, ModelLoadError, ModelMismatchError, UnsupportedInputError
from codec.glvc.codec import GlvcCodec
from codec.glvc.random_model import build_random_model
from codec.modeldir import bundled_model_path
from codec.registry import create_codec

FPS = Fraction(24)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("glvc") / "model", seed=0).path


@pytest.fixture(scope="module")
def codec(model_dir: Path) -> GlvcCodec:
    return GlvcCodec(model=str(model_dir))


@pytest.fixture(scope="module")
def frames(clip: np.ndarray) -> np.ndarray:
    """7 frames of an odd size (37×45): needs spatial and temporal padding."""
    return np.ascontiguousarray(clip[:7, :45, :37])


@pytest.mark.parametrize("count", [1, 5, 7])
def test_round_trip_exact_frame_counts_and_odd_sizes(
    codec: GlvcCodec, frames: np.ndarray, count: int
) -> None:
    encoded = codec.encode(frames[:count], RateTarget("quality", 40), FPS)
    assert encoded.reconstruction.shape == (count, 45, 37, 3)
    assert encoded.params["q_index"] == 40
    decoded = codec.decode(encoded.payload, count, 37, 45)
    np.testing.assert_array_equal(decoded, encoded.reconstruction)


def test_rate_grows_with_the_quality_index(codec: GlvcCodec, frames: np.ndarray) -> None:
    sizes = [len(codec.encode(frames[:5], RateTarget("quality", q), FPS).payload) for q in (0, 21, 42, 63)]
    assert sizes == sorted(sizes) and sizes[-1] > 1.5 * sizes[0]


def test_target_bpp_is_reached_within_ten_percent(codec: GlvcCodec, frames: np.ndarray) -> None:
    low = len(codec.encode(frames, RateTarget("quality", 10), FPS).payload)
    high = len(codec.encode(frames, RateTarget("quality", 60), FPS).payload)
    target = bits_per_pixel((low + high) // 2, 37, 45, 7)
    encoded = codec.encode(frames, RateTarget("bpp", target), FPS)
    achieved = bits_per_pixel(len(encoded.payload), 37, 45, 7)
    assert encoded.params["target_reached"] is True
    assert abs(achieved - target) <= 0.10 * target
    assert 10 <= encoded.params["q_index"] <= 60 and encoded.params["evaluations"] >= 2
    kbps = achieved * 37 * 45 * 24 / 1000
    again = codec.encode(frames, RateTarget("kbps", kbps), FPS)  # warm-started from the last choice
    assert abs(len(again.payload) - len(encoded.payload)) <= 0.10 * len(encoded.payload)


def test_unreachable_low_target_reports_a_miss(codec: GlvcCodec, frames: np.ndarray) -> None:
    encoded = codec.encode(frames[:1], RateTarget("bpp", 1e-4), FPS)
    assert encoded.params["q_index"] == 0 and encoded.params["target_reached"] is False


@pytest.fixture(scope="module")
def payload(codec: GlvcCodec, frames: np.ndarray) -> bytes:
    return codec.encode(frames[:5], RateTarget("quality", 30), FPS).payload


@pytest.mark.parametrize("cut", [3, 20, 80, -1])
def test_truncated_payload_is_refused(codec: GlvcCodec, payload: bytes, cut: int) -> None:
    with pytest.raises(CorruptPayloadError, match="GLVC payload"):
        codec.decode(payload[:cut], 5, 37, 45)


def test_corrupt_payload_is_refused(codec: GlvcCodec, payload: bytes) -> None:
    damaged = bytearray(payload)
    damaged[-7] ^= 0x40
    with pytest.raises(CorruptPayloadError, match="damaged"):
        codec.decode(bytes(damaged), 5, 37, 45)
    with pytest.raises(CorruptPayloadError, match="magic"):
        codec.decode(b"XXXX" + payload[4:], 5, 37, 45)
    with pytest.raises(CorruptPayloadError, match="expected 6"):
        codec.decode(payload, 6, 37, 45)


def test_other_model_is_refused_by_name(codec: GlvcCodec, payload: bytes, tmp_path: Path) -> None:
    other = build_random_model(tmp_path / "other", seed=1, name="glvc-other", version="2")
    with pytest.raises(ModelMismatchError, match=r"glvc-random@0.*glvc-other@2"):
        GlvcCodec(model=str(other.path)).decode(payload, 5, 37, 45)


def test_same_name_other_weights_is_refused(codec: GlvcCodec, payload: bytes, tmp_path: Path) -> None:
    other = build_random_model(tmp_path / "retrained", seed=2)  # same name@version, other weights
    with pytest.raises(ModelMismatchError, match="sha256"):
        GlvcCodec(model=str(other.path)).decode(payload, 5, 37, 45)


def test_identity_ignores_unrelated_components(codec: GlvcCodec, model_dir: Path, tmp_path: Path) -> None:
    from codec.modeldir import load_model_dir, write_model_card

    copy = tmp_path / "with-flow"
    shutil.copytree(model_dir, copy)
    (copy / "flow").mkdir()
    (copy / "flow" / "config.json").write_text("{}\n")
    card = json.loads((copy / "model_card.json").read_text())
    write_model_card(copy, name=card["name"], version=card["version"], kind="bundle", config=card["config"])
    assert load_model_dir(copy).sha256 != codec.model_dir.sha256
    assert GlvcCodec(model=str(copy)).model_sha256 == codec.model_sha256


def test_bad_inputs_give_clear_errors(codec: GlvcCodec, frames: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedInputError, match="at least 32x32"):
        codec.encode(frames[:, :16, :37], RateTarget("quality", 10), FPS)
    with pytest.raises(UnsupportedInputError, match=r"0\.\.63"):
        codec.encode(frames, RateTarget("quality", 64), FPS)
    with pytest.raises(UnsupportedInputError, match="GOPs of 1\\+4k"):
        codec.check_gop_frames(8)
    codec.check_gop_frames(49)
    assert (codec.default_gop_frames(Fraction(24)) - 1) % 4 == 0
    with pytest.raises(UnsupportedInputError, match="preset"):
        GlvcCodec(model="unused", preset="fast")
    with pytest.raises(ModelLoadError, match="no such directory"):
        GlvcCodec(model=str(tmp_path / "missing"))


def test_registry_builds_glvc_and_default_model(model_dir: Path) -> None:
    built = create_codec("glvc", model=str(model_dir), device="auto")
    assert built.describe()["model_id"] == "glvc-random@0"
    if (bundled_model_path() / "model_card.json").is_file():
        assert GlvcCodec().model_id == "vidarc-tiny@4"
    else:
        with pytest.raises(ModelLoadError, match="bundled GLVC model"):
            GlvcCodec()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_encode_decodes_on_cpu(model_dir: Path, frames: np.ndarray) -> None:
    """A GPU encode (bf16 tokenizer, CUDA kernels) decodes on a CPU to the identical symbols and a close
    reconstruction."""
    gpu = GlvcCodec(model=str(model_dir), device="cuda")
    cpu = GlvcCodec(model=str(model_dir), device="cpu")
    latents = gpu.tokenizer.encode(gpu._pad(frames[:5])).to("cuda")
    f, h, w = latents.shape[2:]
    coded = gpu.latent_codec.compress(latents, 45)
    on_cpu = cpu.latent_codec.decompress(coded.data, 45, f, h, w, device="cpu")
    for a, b in zip(coded.symbols, on_cpu.symbols, strict=True):
        np.testing.assert_array_equal(a, b)
    on_gpu = gpu.latent_codec.decompress(coded.data, 45, f, h, w, device="cuda")
    torch.testing.assert_close(on_gpu.latents.cpu(), on_cpu.latents, rtol=0, atol=1e-2)
    encoded = gpu.encode(frames[:5], RateTarget("quality", 45), FPS)
    restored = cpu.decode(encoded.payload, 5, 37, 45)
    diff = np.abs(restored.astype(np.int16) - encoded.reconstruction.astype(np.int16))
    assert diff.mean() < 3.0


@pytest.mark.skipif(
    not (bundled_model_path() / "model_card.json").is_file(),
    reason="the bundled vidarc-tiny is not built yet",
)
def test_bundled_model_round_trip(clip: np.ndarray) -> None:
    bundled = GlvcCodec()
    assert bundled.model_id == "vidarc-tiny@4"
    frames = np.ascontiguousarray(clip[:5])
    encoded = bundled.encode(frames, RateTarget("bpp", 0.1), FPS)
    np.testing.assert_array_equal(bundled.decode(encoded.payload, 5, 64, 48), encoded.reconstruction)
    # A trained model reconstructs the picture, not noise: it must beat predicting each frame's mean
    # colour clearly (a random-weight model does not). The small CPU-trained bundle is far from a
    # pretrained Wan VAE, so no absolute quality is asserted here; docs/BENCHMARKS.md has its numbers.
    flat = np.broadcast_to(frames.reshape(len(frames), -1, 3).mean(1)[:, None, None, :], frames.shape)
    assert _psnr(frames, encoded.reconstruction) > _psnr(frames, flat) + 3.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_quality_target_search_runs_through_the_codec_interface(codec: GlvcCodec, frames: np.ndarray) -> None:
    """`--target-psnr` works for GLVC: the search walks its quality index (0 worst .. num_q-1 best)."""
    from pipeline.archive.quality_target import find_rate_for_quality

    assert codec.quality_range == (0, codec.num_q - 1)
    low = codec.encode(frames[:5], RateTarget("quality", 0), FPS)
    floor = float(10 * np.log10(255**2 / np.mean((frames[:5].astype(float) - low.reconstruction) ** 2)))
    result = find_rate_for_quality(codec, [frames[:5]], FPS, "psnr", floor + 0.01)
    assert result.chosen is not None and result.chosen.knob > 0  # the worst index cannot reach it
    assert result.reached == (result.chosen.score >= floor + 0.01)


def test_tokenizer_runs_once_per_gop_across_quality_indices(model_dir: Path, frames: np.ndarray) -> None:
    """A quality search codes one GOP at several indices: the tokenizer (GLVC's dominant cost) runs
    once, and the result is what a fresh codec produces."""
    codec = GlvcCodec(model=str(model_dir))
    calls = []
    original = codec.tokenizer.encode
    codec.tokenizer.encode = lambda x: calls.append(x.shape) or original(x)
    gop = frames[:5]
    payloads = [codec.encode(gop, RateTarget("quality", q), FPS).payload for q in (10, 40, 10)]
    assert len(calls) == 1
    other = gop.copy()
    other[0, 0, 0, 0] ^= 1  # one changed value is another GOP
    codec.encode(other, RateTarget("quality", 10), FPS)
    assert len(calls) == 2
    fresh = GlvcCodec(model=str(model_dir))
    assert payloads[0] == payloads[2] == fresh.encode(gop, RateTarget("quality", 10), FPS).payload
