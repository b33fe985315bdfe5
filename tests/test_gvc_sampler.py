"""The GVC sampler against a flow model whose velocity is exact for a known set of latent clips."""

from __future__ import annotations

import pytest
import torch

from codec.gvc.oracle import PosteriorMeanFlow
from codec.gvc.sampler import SamplerConfig, run_sampler, time_grid

SHAPE = (4, 3, 4, 4)  # C, F_lat, h, w


def _encode(flow, target, m, seed, k=64, steps=12):
    cfg = SamplerConfig(steps=steps, ode_tail=2, shift=3.0, num_atoms=k, atoms_per_step=m, seed=seed)
    x, entries = run_sampler(flow, SHAPE, cfg, target=target)
    return cfg, x, entries


def test_shifted_time_grid_matches_wan_sampling_sigmas():
    grid = time_grid(20, 5.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    expected = [0.990, 0.978, 0.966, 0.952, 0.938, 0.921, 0.903, 0.882, 0.859, 0.833, 0.804, 0.769]
    assert [round(t, 3) for t in grid[1:13]] == expected
    assert round(grid[19], 3) == 0.208


def test_clip_from_the_set_is_recovered_exactly_with_few_bits():
    gen = torch.Generator().manual_seed(0)
    clips = 0.5 * torch.randn(16, *SHAPE, generator=gen)
    flow = PosteriorMeanFlow(clips)
    for k in range(0, 16, 3):
        cfg, x, entries = _encode(flow, clips[k], m=1, seed=k)
        # 10 coded steps × 3 frames × (6 index bits + 1 sign bit) = 210 bits for 16·4·3·16 values.
        assert sum(len(e[0]) for step in entries for e in step) == cfg.coded_steps * SHAPE[1]
        assert torch.allclose(x, clips[k], atol=1e-5)
    # Without guidance (another seed's choices replayed), the sampler lands on some clip, usually not k.
    wrong = [
        run_sampler(
            flow, SHAPE, _encode(flow, clips[k], 1, k)[0], entries=_encode(flow, clips[(k + 1) % 16], 1, k)[2]
        )[0]
        for k in range(4)
    ]
    assert not all(torch.allclose(w, clips[k], atol=1e-3) for k, w in enumerate(wrong))


def test_error_falls_as_atoms_per_step_grow():
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(4, *SHAPE, generator=gen)
    flow = PosteriorMeanFlow(clips, sigma=0.7)
    targets = [clips[i % 4] + 0.7 * torch.randn(SHAPE, generator=gen) for i in range(3)]

    def mean_error(m):
        errs = [
            float((_encode(flow, t, m, seed=i, k=512)[1] - t).square().mean()) for i, t in enumerate(targets)
        ]
        return sum(errs) / len(errs)

    errors = [mean_error(m) for m in (1, 8, 64)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.5 * errors[0]
    assert errors[0] < 0.5  # far better than an unguided sample (≈ 2σ² ≈ 0.98)


@pytest.mark.parametrize("m", [1, 7])
def test_decoder_replays_the_encoder_exactly(m):
    gen = torch.Generator().manual_seed(2)
    clips = torch.randn(3, *SHAPE, generator=gen)
    flow = PosteriorMeanFlow(clips, sigma=0.5)
    target = clips[0] + 0.5 * torch.randn(SHAPE, generator=gen)
    cfg, x_enc, entries = _encode(flow, target, m=m, seed=5, k=128)
    x_dec, replayed = run_sampler(flow, SHAPE, cfg, entries=entries)
    assert torch.equal(x_enc, x_dec)
    assert replayed == entries


def test_sampler_config_rejects_impossible_settings():
    with pytest.raises(ValueError):
        SamplerConfig(num_atoms=16, atoms_per_step=17)
    with pytest.raises(ValueError):
        SamplerConfig(steps=4, ode_tail=5)
    assert SamplerConfig(steps=5, ode_tail=0).coded_steps == 4  # the step reaching t = 0 is never coded
