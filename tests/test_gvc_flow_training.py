"""`train_flow` runs as a real Ray Train job, writes a loadable flow model and re-hashes the card."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from codec.base import RateTarget
from codec.gvc.codec import GvcCodec
from codec.modeldir import load_model_dir, write_model_card


@pytest.mark.slow
def test_train_flow_writes_a_bundle_component_that_gvc_loads(tmp_path, monkeypatch, ray_address):
    from diffusers import AutoencoderKLWan

    from pipeline.synthetic import synthetic_clip
    from pipeline.training.flow import train_flow

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    vae.save_pretrained(str(tmp_path / "tokenizer"), safe_serialization=True)
    write_model_card(
        tmp_path, name="tiny-test", version="3", kind="bundle", config={"tokenizer": {"z": 4}}, notes="tok"
    )
    summary = train_flow(
        tmp_path, max_steps=3, minutes=2, frames=5, size=32, clips_per_image=1, batch_size=2,
        width=32, layers=1, text_dim=8, log_every=1,
    )  # fmt: skip
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss_ema"])
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert (card["name"], card["version"], card["kind"]) == ("tiny-test", "3", "bundle")
    assert card["config"]["tokenizer"] == {"z": 4} and "flow" in card["config"]
    assert "tok" in card["notes"] and "trained with the rectified-flow objective on CPU" in card["notes"]
    assert any(name.startswith("flow/") for name in card["files"])
    load_model_dir(tmp_path)  # every hash verifies
    assert GvcCodec(model=str(tmp_path)).sampler["num_atoms"] == card["config"]["gvc"]["num_atoms"]
    codec = GvcCodec(model=str(tmp_path), mode="flf2v", steps=3, ode_tail=1, atoms=32)
    video = synthetic_clip("coffee", 5, 32, 32, seed=3)
    enc = codec.encode(video, RateTarget("quality", 2), Fraction(24))
    assert np.array_equal(codec.decode(enc.payload, 5, 32, 32), enc.reconstruction)
