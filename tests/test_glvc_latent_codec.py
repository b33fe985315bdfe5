"""The GLVC latent codec: exact fixed-point path, training contract, persistence, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codec.entropy import EntropyCodingError
from codec.glvc.fixed_point import ACT_SCALE, ExactOps, FixedConv2d, TrainOps
from codec.glvc.latent_codec import LatentCodec, LatentCodecConfig
from codec.glvc.random_model import ANALYSIS_GAIN, TINY_LATENT_CODEC

FLOAT_PARTS = ("context_up", "analysis", "synthesis", "hyper_analysis")


@pytest.fixture(scope="module")
def model() -> LatentCodec:
    torch.manual_seed(0)
    codec = LatentCodec(LatentCodecConfig.from_dict(TINY_LATENT_CODEC)).eval()
    with torch.no_grad():
        codec.analysis_out.weight.mul_(ANALYSIS_GAIN)
    return codec


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(1))


def test_exact_conv_is_the_integer_convolution() -> None:
    torch.manual_seed(0)
    layer = FixedConv2d(6, 5)
    a = torch.randint(-3000, 3000, (2, 6, 7, 9)).double()
    w = torch.round(layer.weight.detach().double() * 256)
    b = torch.round(layer.bias.detach().double() * 256) * 256
    reference = torch.round((F.conv2d(a, w, padding=1) + b[None, :, None, None]) / 256)
    torch.testing.assert_close(layer.exact(a), reference, rtol=0, atol=0)


def test_exact_path_matches_fake_quantised_training_path() -> None:
    """What training optimises is what inference computes (up to float32 ties)."""
    torch.manual_seed(0)
    layer = FixedConv2d(8, 8)
    x = torch.round(torch.randn(1, 8, 10, 10) * 3 * ACT_SCALE) / ACT_SCALE
    train = TrainOps.lrelu(TrainOps.conv(layer, x)).detach().double() * ACT_SCALE
    exact = ExactOps.lrelu(ExactOps.conv(layer, ExactOps.from_real(x)))
    agree = (train == exact).double().mean().item()
    assert agree > 0.99
    assert (train - exact).abs().max().item() <= 1


def test_forward_train_contract(model: LatentCodec, latents: torch.Tensor) -> None:
    q = torch.tensor([3, 60])
    batch = latents.repeat(2, 1, 1, 1, 1)
    out = model.forward_train(batch, q)
    assert out["bits"].shape == (2,) and out["mse"].shape == (2,)
    assert out["latents_hat"].shape == batch.shape
    assert out["bits"][1] > out["bits"][0]  # higher quality index: larger gain, more bits
    loss = (out["bits"] / 1e4 + model.lmbda(q) * out["mse"]).sum()
    loss.backward()
    assert model.params_anchor.weight.grad is not None and model.params_anchor.weight.grad.abs().sum() > 0
    assert model.memory_gate.weight.grad is not None
    model.zero_grad()
    lam = model.lmbda(torch.arange(64))
    assert lam[0] == pytest.approx(model.config.lambda_min) and lam[-1] == pytest.approx(
        model.config.lambda_max
    )
    assert torch.all(lam[1:] > lam[:-1])


def test_round_trip_and_persistence(model: LatentCodec, latents: torch.Tensor, tmp_path) -> None:
    coded = model.compress(latents, 40)
    model.save_pretrained(tmp_path / "lc")
    loaded = LatentCodec.from_pretrained(tmp_path / "lc")
    assert loaded.config == model.config
    decoded = loaded.decompress(coded.data, 40, 3, 8, 12)
    for a, b in zip(coded.symbols, decoded.symbols, strict=True):
        np.testing.assert_array_equal(a, b)
    assert decoded.latents.shape == latents.shape


def test_decode_ignores_float_drift_and_thread_count(model: LatentCodec, latents: torch.Tensor) -> None:
    """Float noise in the non-exact parts (as another device would have) and another thread count leave
    the decoded symbols bit-identical: table selection runs in exact integer arithmetic."""
    coded = model.compress(latents, 25)
    drifted = LatentCodec(model.config)
    drifted.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in drifted.named_parameters():
            if name.startswith(FLOAT_PARTS):
                param.add_(torch.randn(param.shape, generator=gen) * 1e-4 * param.abs().mean())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        decoded = drifted.eval().decompress(coded.data, 25, 3, 8, 12)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(coded.symbols, decoded.symbols, strict=True):
        np.testing.assert_array_equal(a, b)
    reference = model.decompress(coded.data, 25, 3, 8, 12).latents
    torch.testing.assert_close(decoded.latents, reference, rtol=0, atol=1e-2)


def test_wrong_weights_decode_other_symbols(model: LatentCodec, latents: torch.Tensor) -> None:
    """Why the bitstream names its model: other exact-path weights decode garbage (or fail)."""
    coded = model.compress(latents, 50)
    other = LatentCodec(model.config)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.params_anchor.bias[model.config.y_channels :] += 3.0
    try:
        decoded = other.eval().decompress(coded.data, 50, 3, 8, 12)
    except EntropyCodingError:
        return
    assert not all(np.array_equal(a, b) for a, b in zip(coded.symbols, decoded.symbols, strict=True))


def test_config_round_trip_refuses_unknown_keys() -> None:
    config = LatentCodecConfig(hidden_channels=24)
    assert LatentCodecConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        LatentCodecConfig.from_dict({"hiden_channels": 3})


def test_latent_size_must_fit_the_stride(model: LatentCodec) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        model.compress(torch.zeros(1, 16, 1, 6, 8), 10)


def _variant(model: LatentCodec, **switches) -> LatentCodec:
    """The same weights under an ablation switch (what `bench/glvc_ablation.py` trains separately)."""
    import dataclasses

    other = LatentCodec(dataclasses.replace(model.config, **switches))
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.mark.parametrize(
    "switches", [{"temporal_context": "none"}, {"temporal_context": "previous"}, {"spatial_context": False}]
)
def test_ablation_variants_round_trip_and_change_the_coding(model, latents, switches) -> None:
    variant = _variant(model, **switches)
    coded = variant.compress(latents, 40)
    decoded = variant.decompress(coded.data, 40, 3, 8, 12)
    for a, b in zip(coded.symbols, decoded.symbols, strict=True):
        np.testing.assert_array_equal(a, b)
    assert coded.data != model.compress(latents, 40).data


def test_intra_only_codes_every_latent_frame_alone(model) -> None:
    """With temporal_context="none", a GOP of one repeated latent frame codes each copy identically,
    while the full model (recurrent memory) codes later copies differently."""
    frame = torch.randn(1, 16, 1, 8, 12, generator=torch.Generator().manual_seed(2))
    still = frame.repeat(1, 1, 3, 1, 1)
    intra = _variant(model, temporal_context="none").compress(still, 40).symbols
    for part in range(3):  # z, anchors, non-anchors of frames 0, 1, 2
        np.testing.assert_array_equal(intra[part], intra[3 + part])
        np.testing.assert_array_equal(intra[part], intra[6 + part])
    full = model.compress(still, 40).symbols
    assert not all(np.array_equal(full[p], full[3 + p]) for p in range(3))


def test_without_spatial_context_the_context_layer_is_unused(model, latents) -> None:
    variant = _variant(model, spatial_context=False)
    coded = variant.compress(latents, 30)
    with torch.no_grad():
        variant.context.weight.add_(1.0)
    assert variant.compress(latents, 30).data == coded.data


def test_ablation_switches_are_validated() -> None:
    with pytest.raises(ValueError, match="temporal_context"):
        LatentCodecConfig(temporal_context="future")
