"""GvcCodec end to end: exact replay, rate control on real bytes, clear errors on bad input.

Most tests drive the codec with the exact posterior-mean flow and a pooling tokenizer (fast, behaviour
known); one loads a tiny random Wan VAE + Wan transformer from a model directory with a card, the path
real users take.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from codec.base import RateTarget, bits_per_pixel
from codec.errors import CorruptPayloadError, ModelMismatchError, UnsupportedInputError
from codec.gvc.bitstream import GvcPayload
from codec.gvc.codec import GvcCodec
from codec.gvc.oracle import OracleBackbone
from codec.registry import create_codec
from pipeline.sources.synthetic import TRAIN_IMAGES, synthetic_clip

FPS = Fraction(24)
W, H, T = 64, 48, 9
SHA = "ab" * 32


@pytest.fixture(scope="module")
def clips():
    return [synthetic_clip(TRAIN_IMAGES[i], T, W, H, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def backbone(clips):
    return OracleBackbone(clips, sigma=0.0)


def _codec(backbone, mode="t2v", **kw):
    opts = dict(steps=10, ode_tail=2, atoms=256, model_id="oracle@1", model_sha256=SHA)
    opts.update(kw)
    return create_codec("gvc", backbone=backbone, mode=mode, **opts)


@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_round_trip_decodes_to_the_encoders_reconstruction(backbone, clips, mode):
    codec = _codec(backbone, mode)
    enc = codec.encode(clips[1], RateTarget("bpp", 0.3), FPS)
    assert enc.params["mode"] == mode and enc.params["M"] >= 1
    assert np.array_equal(codec.decode(enc.payload, T, W, H), enc.reconstruction)
    # The oracle knows clip 1: the output is its tokenizer reconstruction, not some other clip.
    own = backbone.tokenizer.decode(backbone.tokenizer.encode(clips[1]))
    other = backbone.tokenizer.decode(backbone.tokenizer.encode(clips[0]))
    err_own = np.abs(enc.reconstruction[1:-1].astype(int) - own[1:-1]).mean()
    err_other = np.abs(enc.reconstruction[1:-1].astype(int) - other[1:-1]).mean()
    assert err_own < 1.0 < err_other
    refs = {"t2v": 0, "i2v": 1, "flf2v": 2}[mode]
    assert (enc.params["reference_bytes"] > 0) == (refs > 0)
    assert sum(s.kind != "tail" for s in GvcPayload.from_bytes(enc.payload).sections) == refs


def test_bits_target_picks_m_before_encoding_and_is_met_from_real_bytes(backbone, clips):
    codec = _codec(backbone, "t2v")
    achieved = []
    for bpp in (0.05, 0.2, 0.6):
        enc = codec.encode(clips[2], RateTarget("bpp", bpp), FPS)
        real = bits_per_pixel(len(enc.payload), W, H, T)
        assert real <= bpp and enc.params["target_reached"]
        achieved.append((enc.params["M"], real))
    assert [m for m, _ in achieved] == sorted(m for m, _ in achieved) and achieved[0][0] < achieved[-1][0]
    # kbps targets go through the same planner
    enc = codec.encode(clips[2], RateTarget("kbps", 20.0), FPS)
    assert 8 * len(enc.payload) / (T / 24) / 1000 <= 20.0


def test_quality_is_atoms_per_step_and_payload_size_is_exact(backbone, clips):
    codec = _codec(backbone, "t2v")
    small = codec.encode(clips[0], RateTarget("quality", 2), FPS)
    large = codec.encode(clips[0], RateTarget("quality", 20), FPS)
    assert (small.params["M"], large.params["M"]) == (2, 20)
    for enc in (small, large):
        assert len(enc.payload) == enc.params["header_bytes"] + enc.params["codebook_bytes"]
    with pytest.raises(UnsupportedInputError):
        codec.encode(clips[0], RateTarget("quality", 0), FPS)


def test_unreachable_target_is_reported_not_hidden(backbone, clips):
    enc = _codec(backbone, "flf2v").encode(clips[0], RateTarget("bpp", 0.001), FPS)
    assert enc.params["M"] == 1 and not enc.params["target_reached"]


def test_corrupt_and_truncated_payloads_give_clear_errors(backbone, clips):
    codec = _codec(backbone, "i2v")
    payload = codec.encode(clips[0], RateTarget("bpp", 0.3), FPS).payload
    flipped = bytearray(payload)
    flipped[len(payload) // 2] ^= 0x10
    for bad in (payload[:-7], payload[:10], bytes(flipped), b"", b"xx" + payload[2:]):
        with pytest.raises(CorruptPayloadError):
            codec.decode(bad, T, W, H)
    with pytest.raises(CorruptPayloadError, match="expected"):
        codec.decode(payload, T, W + 16, H)


def test_other_weights_refuse_to_decode(backbone, clips):
    payload = _codec(backbone, "t2v").encode(clips[0], RateTarget("quality", 4), FPS).payload
    with pytest.raises(ModelMismatchError, match="oracle@1"):
        _codec(backbone, "t2v", model_sha256="cd" * 32).decode(payload, T, W, H)


def test_unsupported_input_is_refused(backbone):
    codec = _codec(backbone, "t2v")
    with pytest.raises(UnsupportedInputError):
        codec.encode(np.zeros((5, 8, 8, 3), np.uint8), RateTarget("bpp", 0.1), FPS)
    with pytest.raises(UnsupportedInputError):
        codec.encode(np.zeros((5, 32, 32), np.uint8), RateTarget("bpp", 0.1), FPS)
    with pytest.raises(UnsupportedInputError, match="mode"):
        _codec(backbone, "v2v")
    with pytest.raises(UnsupportedInputError, match="ode_tail"):
        _codec(backbone, "t2v", steps=2, ode_tail=3)


def test_odd_geometry_and_frame_count_are_padded_and_cropped(clips):
    video = synthetic_clip(TRAIN_IMAGES[0], 7, 50, 40, seed=4)  # 7 frames: padded to 9, sizes to 64×48
    backbone = OracleBackbone([np.pad(video, ((0, 2), (0, 8), (0, 14), (0, 0)), mode="edge")])
    codec = _codec(backbone, "t2v")
    enc = codec.encode(video, RateTarget("quality", 2), FPS)
    assert enc.reconstruction.shape == video.shape
    assert np.array_equal(codec.decode(enc.payload, 7, 50, 40), enc.reconstruction)


@pytest.fixture(scope="module")
def tiny_wan_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from codec.gvc.backbone import save_flow, tiny_flow_config
    from codec.modeldir import write_model_card

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-wan")
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    vae.save_pretrained(str(root / "tokenizer"), safe_serialization=True)
    flow = WanTransformer3DModel(**tiny_flow_config(latent_channels=4, text_dim=8, width=32, layers=1))
    save_flow(flow, torch.randn(1, 4, 8), root / "flow")
    write_model_card(root, name="tiny-test", version="0", kind="bundle", config={})
    return root


def test_tiny_wan_model_directory_round_trip(tiny_wan_dir):
    torch.set_num_threads(2)
    video = synthetic_clip(TRAIN_IMAGES[1], 5, 32, 32, seed=1)
    codec = GvcCodec(model=str(tiny_wan_dir), mode="i2v", steps=4, ode_tail=1, atoms=64)
    assert codec.model_id == "tiny-test@0"
    enc = codec.encode(video, RateTarget("quality", 3), FPS)
    assert enc.reconstruction.shape == video.shape
    assert np.array_equal(codec.decode(enc.payload, 5, 32, 32), enc.reconstruction)
    assert set(codec.last_timing) >= {"transformer", "search", "vae"}


def test_wrong_weights_in_a_model_directory_are_a_clear_load_error(tiny_wan_dir, tmp_path):
    import shutil

    from diffusers import WanTransformer3DModel

    from codec.errors import ModelLoadError
    from codec.gvc.backbone import save_flow, tiny_flow_config
    from codec.modeldir import write_model_card

    bad = tmp_path / "bad"
    shutil.copytree(tiny_wan_dir, bad)
    other = WanTransformer3DModel(**tiny_flow_config(latent_channels=4, text_dim=8, width=64, layers=1))
    save_flow(other, torch.zeros(1, 4, 8), bad / "other")
    shutil.copy(bad / "other" / "diffusion_pytorch_model.safetensors", bad / "flow")
    shutil.rmtree(bad / "other")
    with pytest.raises(ModelLoadError, match="sha256"):
        GvcCodec(model=str(bad))  # the card no longer matches the weights
    write_model_card(bad, name="tiny-test", version="0", kind="bundle", config={})
    with pytest.raises(ModelLoadError, match="WanTransformer3DModel"):
        GvcCodec(model=str(bad))  # hashes fine, but the weights do not fit the config


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_encode_decodes_on_cpu(backbone, clips):
    gpu = _codec(backbone, "t2v", device="cuda")
    cpu = _codec(backbone, "t2v", device="cpu")
    enc = gpu.encode(clips[1], RateTarget("quality", 8), FPS)
    cpu_frames = cpu.decode(enc.payload, T, W, H)
    assert np.abs(cpu_frames.astype(int) - enc.reconstruction).max() <= 1


def test_hostile_header_with_valid_checksum_is_refused(backbone, clips):
    import dataclasses

    codec = _codec(backbone, "t2v")
    parsed = GvcPayload.from_bytes(codec.encode(clips[0], RateTarget("quality", 2), FPS).payload)
    for change in ({"num_atoms": 2**32 - 1, "atoms_per_step": 65535}, {"atoms_per_step": 3}, {"steps": 0}):
        hostile = dataclasses.replace(parsed, **change).to_bytes()
        with pytest.raises(CorruptPayloadError):
            codec.decode(hostile, T, W, H)


def test_reference_stills_choose_between_av1_and_glvc_intra(tmp_path):
    from diffusers import WanTransformer3DModel

    from codec.glvc.random_model import build_random_model
    from codec.gvc.backbone import save_flow, tiny_flow_config
    from codec.modeldir import load_model_dir, write_model_card

    card = build_random_model(tmp_path).card
    flow = WanTransformer3DModel(**tiny_flow_config(latent_channels=16, text_dim=8, width=32, layers=1))
    save_flow(flow, torch.randn(1, 4, 8), tmp_path / "flow")
    write_model_card(
        tmp_path, name=card["name"], version=card["version"], kind="bundle", config=card["config"]
    )
    codec = GvcCodec(model=str(tmp_path), mode="flf2v", steps=3, ode_tail=1, atoms=32)
    assert codec.stills.names == ("av1", "glvc")
    # GVC's identity covers only what it runs; the GLVC stills carry their own model check.
    assert codec.model_sha256 == load_model_dir(tmp_path).components_digest(["tokenizer", "flow"])
    video = synthetic_clip(TRAIN_IMAGES[2], 5, 64, 64, seed=2)
    enc = codec.encode(video, RateTarget("bpp", 0.5), FPS)
    coders = [s.codec for s in GvcPayload.from_bytes(enc.payload).sections]
    assert len(coders) == 2 and set(coders) <= {"av1", "glvc"}
    assert np.array_equal(codec.decode(enc.payload, 5, 64, 64), enc.reconstruction)


def test_quality_range_is_atoms_per_step(backbone):
    """Quality-target searches walk M from 1 (worst) to K/2 (best)."""
    assert _codec(backbone).quality_range == (1, 128)
