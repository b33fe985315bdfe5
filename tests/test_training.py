"""Training stages at toy scale, in this process (the local backend: one CPU worker, what Ray Train's
start-up would add nothing to) and through the real Ray Train path: outputs are loadable model
directories with valid cards, checkpoints resume — across backends, to the same bits — and bad data or
options are refused clearly. Ray Train runs here for the shared `fit` (the tokenizer's resume) and in
test_glvc_decoder.py for the glvc-decoder stage; test_glvc_wan.py trains glvc through the command line
with `--backend auto` (in that process), test_gvc_flow_training.py the flow model locally."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from codec.modeldir import load_model_dir
from pipeline.training.bundle import describe_source, update_bundle_card
from pipeline.training.data import ClipSampler
from pipeline.training.glvc import GlvcTraining, train_glvc
from pipeline.training.loop import latest_checkpoint, load_optimizer_state, save_checkpoint
from pipeline.training.tokenizer import TokenizerTraining, train_tokenizer
from pipeline.training.worker_context import choose_backend

TOY_VAE = {
    "base_dim": 4,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}
TOY_CODEC = {"hidden_channels": 8, "y_channels": 8, "z_channels": 8, "memory_channels": 8}


def _logged_steps(settings) -> list[int]:
    with open(f"{settings.checkpoint_dir}/train_log.jsonl") as handle:
        return [json.loads(line)["step"] for line in handle]


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    settings = TokenizerTraining(
        data="synthetic", out=str(root / "bundle"), steps=2, size=32, frames=5, batch=1,
        checkpoint_every=1, log_every=1, checkpoint_dir=str(root / "ck"), architecture=dict(TOY_VAE),
        backend="local",
    )  # fmt: skip
    directory = train_tokenizer(settings)
    return settings, directory


def test_tokenizer_stage_writes_a_loadable_tokenizer_with_measured_latent_statistics(toy_tokenizer):
    from codec.glvc.tokenizer import load_tokenizer
    from pipeline.sources.synthetic import synthetic_clip

    settings, directory = toy_tokenizer
    config = json.loads((directory / "config.json").read_text())
    assert len(config["latents_std"]) == 16 and all(s > 0 for s in config["latents_std"])
    # Measured on this model's latents, not diffusers' default Wan2.1 values.
    from diffusers import AutoencoderKLWan

    assert config["latents_mean"] != list(AutoencoderKLWan().config.latents_mean)
    tokenizer = load_tokenizer(directory)
    frames = synthetic_clip("cat", 5, 32, 32, seed=3)
    assert tokenizer.decode(tokenizer.encode(frames)).shape == frames.shape
    assert _logged_steps(settings) == [1, 2]


def test_resume_continues_from_the_newest_checkpoint_on_ray_train_and_locally_alike(
    toy_tokenizer, tmp_path, ray_address
):
    """The in-process run's checkpoint resumed on Ray Train and in this process: both continue at step 3
    and end with the same tokenizer, bit for bit (one CPU thread, the same seeds: the backend must not
    matter)."""
    from safetensors.torch import load_file

    shared, _ = toy_tokenizer
    assert latest_checkpoint(shared.checkpoint_dir).name == "step-00000002"
    assert not (Path(shared.checkpoint_dir) / "ray").exists()  # it did run in this process
    exported = {}
    for backend in ("ray", "local"):
        # on copies: the module's fixture (its bundle and checkpoints) stays what the other tests expect
        shutil.copytree(shared.checkpoint_dir, tmp_path / backend / "ck")
        settings = dataclasses.replace(
            shared, steps=3, resume=True, checkpoint_dir=str(tmp_path / backend / "ck"),
            out=str(tmp_path / backend / "bundle"), backend=backend,
        )  # fmt: skip
        directory = train_tokenizer(settings)
        assert latest_checkpoint(settings.checkpoint_dir).name == "step-00000003"
        assert _logged_steps(settings) == [1, 2, 3]  # resumed at 3, not restarted at 1
        assert (Path(settings.checkpoint_dir) / "ray").is_dir() == (backend == "ray")
        exported[backend] = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
        exported[backend + " config"] = (directory / "config.json").read_text()
    ray_run, local_run = exported["ray"], exported["local"]
    assert ray_run.keys() == local_run.keys()
    assert all(torch.equal(ray_run[k], local_run[k]) for k in ray_run)
    assert exported["ray config"] == exported["local config"]  # the measured latent statistics too


def test_the_backend_is_local_only_for_one_cpu_worker_without_a_cluster(ray_address, monkeypatch):
    import subprocess
    import sys

    assert choose_backend("auto", workers=1, use_gpu=False) == "ray"  # this session's Ray is running
    assert choose_backend("local", workers=1, use_gpu=False) == "local"
    assert choose_backend("auto", workers=2, use_gpu=False) == "ray"
    assert choose_backend("auto", workers=1, use_gpu=True) == "ray"
    for workers, use_gpu, asked in ((2, False, "--workers 2"), (1, True, "--use-gpu")):
        with pytest.raises(ValueError, match=f"{asked} needs --backend ray"):
            choose_backend("local", workers=workers, use_gpu=use_gpu)
    with pytest.raises(ValueError, match="--backend must be one of auto, ray, local, got 'cluster'"):
        choose_backend("cluster", workers=1, use_gpu=False)
    # a fresh process without Ray: local; with RAY_ADDRESS (a cluster asked for): Ray
    probe = (
        "import sys; from pipeline.training.worker_context import choose_backend; "
        "print(choose_backend('auto', workers=1, use_gpu=False), 'torch' in sys.modules)"
    )
    repo = Path(__file__).resolve().parents[1]
    for address, expected in ((None, "local"), (ray_address, "ray")):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({"PYTHONPATH": str(repo), **({"RAY_ADDRESS": address} if address else {})})
        proc = subprocess.run(
            [sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0 and proc.stdout.split() == [expected, "False"], proc.stderr


def test_glvc_stage_trains_a_latent_codec_on_the_frozen_tokenizer(toy_tokenizer, tmp_path):
    from codec.glvc.latent_codec import LatentCodec

    _, tokenizer_dir = toy_tokenizer
    settings = GlvcTraining(
        data="synthetic", tokenizer=str(tokenizer_dir), out=str(tmp_path / "bundle"), steps=2, size=32,
        frames=9, batch=1, pool=2, log_every=1, checkpoint_dir=str(tmp_path / "ck"),
        architecture=dict(TOY_CODEC), backend="local",
    )  # fmt: skip
    directory = train_glvc(settings)
    codec = LatentCodec.from_pretrained(directory)
    assert codec.config.y_channels == 8
    assert latest_checkpoint(tmp_path / "ck").name == "step-00000002"


def test_bundle_card_keeps_other_components_and_verifies(toy_tokenizer):
    _, tokenizer_dir = toy_tokenizer
    root = tokenizer_dir.parent
    update_bundle_card(root, "tokenizer", {"steps": 2}, "toy tokenizer")
    update_bundle_card(root, "flow", {"steps": 0}, "no flow yet")
    model = load_model_dir(root)
    assert model.config["tokenizer"] == {"steps": 2} and model.config["flow"] == {"steps": 0}
    assert "tokenizer/: toy tokenizer" in model.card["notes"]
    assert all(path.startswith("tokenizer/") for path in model.card["files"])


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 7, lambda d: (d / "weights.txt").write_text("w"), optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    assert load_optimizer_state(latest_checkpoint(tmp_path), fresh) == 7
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert after["param_groups"][0]["lr"] == 0.01
    for key in before["state"]:
        assert torch.equal(before["state"][key]["exp_avg"], after["state"][key]["exp_avg"])
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))


def test_a_folder_without_usable_videos_is_refused_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match=str(tmp_path)):
        ClipSampler(str(tmp_path), frames=5, size=32, seed=0)


def test_decoder_only_training_keeps_the_latent_space_bit_for_bit(toy_tokenizer, tmp_path):
    """The bundle's latent codec and flow model were trained on the encoder's latents: continuing the
    tokenizer with --trainable decoder must leave them exactly valid, while the decoder does learn."""
    from safetensors.torch import load_file

    _, start = toy_tokenizer
    settings = TokenizerTraining(
        data="synthetic", out=str(tmp_path / "bundle"), steps=2, size=32, frames=5, batch=1, lr=1e-2,
        warmup=1, log_every=1, checkpoint_dir=str(tmp_path / "ck"), init=str(start), trainable="decoder",
        backend="local",
    )  # fmt: skip
    directory = train_tokenizer(settings)
    before = load_file(str(start / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    old, new = (json.loads((d / "config.json").read_text()) for d in (start, directory))
    assert (new["latents_mean"], new["latents_std"]) == (old["latents_mean"], old["latents_std"])
    assert "_name_or_path" not in new  # the --init path is not carried into the trained model


def test_decoder_only_training_needs_a_tokenizer_to_start_from(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "tokenizer", "--out", str(tmp_path / "b"),
         "--trainable", "decoder", "--steps", "1"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--init" in lines[0], proc.stderr
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="start from"):
        train_tokenizer(TokenizerTraining(data="synthetic", out=str(tmp_path / "c"), trainable="decoder"))


def test_flow_training_refuses_an_init_that_is_not_a_flow_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "b" / "tokenizer").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "flow", "--out", str(tmp_path / "b"),
         "--init", str(tmp_path / "nothing"), "--steps", "1"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--init" in lines[0], proc.stderr
    assert not (tmp_path / "b" / "flow").exists()


def test_glvc_gop_length_follows_the_latent_codec_not_a_later_tokenizer_run(toy_tokenizer):
    """A tokenizer trained on 9-frame clips into a bundle whose latent codec learned 17-frame clips must
    not shorten GLVC's GOPs: the latent codec's recurrent memory is what the clip length limits."""
    from jobs.train import _default_glvc_gop

    _, tokenizer_dir = toy_tokenizer
    root = tokenizer_dir.parent
    update_bundle_card(root, "tokenizer", {"steps": 2}, "toy tokenizer")
    assert _default_glvc_gop(str(root), 9) == {"glvc": {"gop_frames": 9}}
    update_bundle_card(
        root, "latent_codec", {"frames": 17}, "toy codec", extra_config={"glvc": {"gop_frames": 17}}
    )
    assert _default_glvc_gop(str(root), 9) == {}
    update_bundle_card(
        root, "tokenizer", {"steps": 3}, "toy tokenizer", extra_config=_default_glvc_gop(str(root), 9)
    )
    assert load_model_dir(root).config["glvc"] == {"gop_frames": 17}


def test_training_images_that_do_not_load_are_named_not_silently_dropped(caplog):
    """A run whose data is smaller than asked (an optional package missing) must say so."""
    import logging

    from pipeline.training.data import available_images

    with caplog.at_level(logging.WARNING, logger="pipeline.training.data"):
        assert available_images(("astronaut", "no_such_picture")) == ("astronaut",)
    assert "training without 1 of 2 images" in caplog.text and "no_such_picture" in caplog.text
    with pytest.raises(ValueError, match="none of the training images loads"):
        available_images(("no_such_picture",))


def test_tokenizer_training_refuses_an_init_without_weights_in_one_line(tmp_path):
    """A wrong --init is the user's mistake: one line naming the folder, exit 2, no output, no Ray."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    init = tmp_path / "vae"
    init.mkdir()
    (init / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "tokenizer", "--out", str(tmp_path / "b"),
         "--init", str(init), "--steps", "1"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(init) in lines[0], proc.stderr
    assert not (tmp_path / "b").exists()


def test_cards_name_a_starting_point_by_bundle_and_weights_not_by_scratch_path(tmp_path):
    """`--init`/`--tokenizer` recorded in a card: a component of a carded bundle is named by the
    bundle's name, version and weights digest, which mean the same on any machine; anything else keeps
    the path it was given."""
    from codec.modeldir import write_model_card

    bundle = tmp_path / "scratch-123"
    (bundle / "flow").mkdir(parents=True)
    (bundle / "flow" / "model.safetensors").write_bytes(b"weights")
    (bundle / "flow" / "config.json").write_text("{}")
    card = write_model_card(bundle, name="vidarc-tiny", version="7", kind="bundle", config={})
    digest = card.card["files"]["flow/model.safetensors"]
    assert describe_source(str(bundle / "flow")) == f"vidarc-tiny@7/flow (sha256 {digest[:12]})"
    loose = tmp_path / "loose" / "flow"
    loose.mkdir(parents=True)
    assert describe_source(str(loose)) == str(loose)
    assert describe_source(None) is None
