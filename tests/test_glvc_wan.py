"""GLVC on the stock Wan2.1 VAE: `vidarc train glvc --tokenizer <wan folder>` writes a self-contained
model whose card pins the VAE too, a swapped VAE is refused at load and at decode, and bad options
are one line with exit code 2. Stage 2 (`train glvc-decoder`) lives in test_glvc_decoder.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from wan_layouts import write_vae

from codec.base import RateTarget
from codec.errors import ModelLoadError, ModelMismatchError
from codec.glvc.codec import GlvcCodec
from codec.modeldir import load_model_dir, sha256_file, write_model_card
from pipeline.sources.synthetic import TRAIN_IMAGES, synthetic_clip

REPO = Path(__file__).resolve().parents[1]
TOY = ["--steps", "2", "--size", "32", "--frames", "5", "--batch", "1"]


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", *args], cwd=REPO, capture_output=True, text=True,
        timeout=600, env=env,
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def glvc_on_wan(wan_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("glvc") / "glvc-wan"
    # --backend auto with one CPU worker and no cluster asked for (no RAY_ADDRESS): in that process
    proc = _train("glvc", "--tokenizer", str(wan_dirs["t2v"]), "--out", str(out), "--name", "glvc-wan",
                  "--version", "2", "--pool", "2", *TOY)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vidarc-glvc: training in this process (one CPU worker" in proc.stdout
    assert not (out.parent / "glvc-wan.checkpoints" / "latent_codec" / "ray").exists()
    return out


def test_train_glvc_on_the_stock_vae_writes_a_self_contained_pinned_model(wan_dirs, glvc_on_wan):
    model = load_model_dir(glvc_on_wan)
    assert model.model_id == "glvc-wan@2" and model.pinned
    vae = wan_dirs["t2v"] / "vae" / "diffusion_pytorch_model.safetensors"
    assert model.card["files"]["tokenizer/diffusion_pytorch_model.safetensors"] == sha256_file(vae)
    assert any(rel.startswith("latent_codec/") for rel in model.card["files"])
    assert model.config["latent_codec"]["tokenizer_from"] == str(wan_dirs["t2v"])
    clip = synthetic_clip(TRAIN_IMAGES[1], 5, 64, 64, seed=2)
    codec = GlvcCodec(model=str(glvc_on_wan))
    enc = codec.encode(clip, RateTarget("quality", 40), Fraction(24))
    assert np.array_equal(codec.decode(enc.payload, 5, 64, 64), enc.reconstruction)


def test_a_swapped_vae_is_refused_at_load_and_at_decode(glvc_on_wan, tmp_path):
    clip = synthetic_clip(TRAIN_IMAGES[2], 5, 64, 64, seed=3)
    enc = GlvcCodec(model=str(glvc_on_wan)).encode(clip, RateTarget("quality", 30), Fraction(24))
    swapped = tmp_path / "swapped"
    shutil.copytree(glvc_on_wan, swapped)
    shutil.rmtree(swapped / "tokenizer")
    write_vae(swapped / "tokenizer", seed=11)
    with pytest.raises(ModelLoadError, match=r"tokenizer/diffusion_pytorch_model.safetensors has sha256"):
        GlvcCodec(model=str(swapped))
    card = json.loads((swapped / "model_card.json").read_text())
    write_model_card(
        swapped, name=card["name"], version=card["version"], kind=card["kind"], config=card["config"]
    )
    with pytest.raises(ModelMismatchError, match="was made with model glvc-wan@2"):
        GlvcCodec(model=str(swapped)).decode(enc.payload, 5, 64, 64)  # same name, other weights


def test_another_tokenizer_into_an_existing_model_is_refused(glvc_on_wan, wan_dirs, tmp_path):
    other = tmp_path / "vae"
    write_vae(other, seed=5)
    _one_line_error(
        _train("glvc", "--tokenizer", str(other), "--out", str(glvc_on_wan), *TOY), "another tokenizer"
    )


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--tokenizer", "{tmp}/nowhere"], "no such directory"),
        (["--tokenizer", "{tmp}/not-a-vae"], "no Wan VAE"),
        (["--frames", "6"], "--frames must be 1+4k"),
        (["--size", "40"], "--size must be a positive multiple of 32"),
        (["--data", "{tmp}/no-videos"], "no-videos"),
        (["--backend", "cluster"], "--backend must be one of auto, ray, local"),
    ],
)
def test_bad_train_options_are_one_line_with_exit_2(wan_dirs, tmp_path, options, needle):
    (tmp_path / "not-a-vae").mkdir()
    (tmp_path / "not-a-vae" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "no-videos").mkdir()
    (tmp_path / "no-videos" / "notes.txt").write_text("text")
    args = [a.replace("{tmp}", str(tmp_path)) for a in options]
    if "--tokenizer" not in args:
        args += ["--tokenizer", str(wan_dirs["t2v"])]
    proc = _train("glvc", "--out", str(tmp_path / "out"), *TOY, *args)
    _one_line_error(proc, needle)
    assert not (tmp_path / "out" / "latent_codec").exists()
