"""`train_flow` writes a loadable flow model, re-hashes the card, and checkpoints so an interrupted run
resumes instead of starting over. In this process (the local backend, one CPU worker): the shared
Ray Train path, and a resume across backends, are tested in test_training.py."""

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
def test_train_flow_writes_a_bundle_component_that_gvc_loads(tmp_path):
    from diffusers import AutoencoderKLWan

    from pipeline.sources.synthetic import synthetic_clip
    from pipeline.training.flow import FlowTraining, train_flow
    from pipeline.training.loop import STATE_NAME, latest_checkpoint

    bundle, ck = tmp_path / "bundle", tmp_path / "ck"  # checkpoints outside the bundle its card hashes
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    vae.save_pretrained(str(bundle / "tokenizer"), safe_serialization=True)
    write_model_card(
        bundle, name="tiny-test", version="3", kind="bundle", config={"tokenizer": {"z": 4}}, notes="tok"
    )

    def settings(steps: int, resume: bool) -> FlowTraining:
        return FlowTraining(
            data="synthetic", out=str(bundle), steps=steps, minutes=2, frames=5, size=32, clips_per_source=1, batch=2,
            width=32, layers=1, text_dim=8, log_every=1, checkpoint_every=2, resume=resume,
            checkpoint_dir=str(ck), backend="local",
        )  # fmt: skip

    summary = train_flow(settings(3, resume=False))
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss_ema"])
    first = latest_checkpoint(ck)
    assert json.loads((first / STATE_NAME).read_text())["step"] == 3 and (first / "flow").is_dir()
    latents = (ck / "latents.pt").stat().st_mtime_ns
    resumed = train_flow(settings(5, resume=True))
    assert not (ck / "ray").exists()  # it did run in this process
    assert resumed["steps"] == 5 and resumed["resume"]
    assert (ck / "latents.pt").stat().st_mtime_ns == latents  # the cached clips were reused
    logged = [json.loads(line)["step"] for line in (ck / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]  # continued from step 3, not from 0
    card = json.loads((bundle / "model_card.json").read_text())
    assert (card["name"], card["version"], card["kind"]) == ("tiny-test", "3", "bundle")
    assert card["config"]["tokenizer"] == {"z": 4} and "flow" in card["config"]
    assert "tok" in card["notes"] and "trained with the rectified-flow objective on CPU" in card["notes"]
    assert card["config"]["flow"]["steps"] == 5
    assert any(name.startswith("flow/") for name in card["files"])
    load_model_dir(bundle)  # every hash verifies
    assert GvcCodec(model=str(bundle)).sampler["num_atoms"] == card["config"]["gvc"]["num_atoms"]
    codec = GvcCodec(model=str(bundle), mode="flf2v", steps=3, ode_tail=1, atoms=32)
    video = synthetic_clip("coffee", 5, 32, 32, seed=3)
    enc = codec.encode(video, RateTarget("quality", 2), Fraction(24))
    assert np.array_equal(codec.decode(enc.payload, 5, 32, 32), enc.reconstruction)
