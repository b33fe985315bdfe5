"""GLVC stage 2: the pixel decoder fine-tuned on the latent codec's output with a perceptual loss.

The perceptual networks are the real LPIPS/DISTS code with *injected* random backbone tensors (the
official ImageNet weights cannot be downloaded here): this tests the plumbing — which parameters move,
that gradients reach the decoder through the metric, the Ray Train path, the refusal without official
weights — never the quality of the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from codec.glvc.codec import GlvcCodec
from codec.glvc.latent_codec import LatentCodec
from codec.glvc.random_model import build_random_model
from codec.glvc.tokenizer import load_tokenizer
from codec.modeldir import load_model_dir
from pipeline.sources.synthetic import TRAIN_IMAGES, synthetic_clip
from pipeline.training.bundle import update_bundle_card
from pipeline.training.data import to_model_input
from pipeline.training.glvc_decoder import (
    DecoderTraining,
    PatchDiscriminator,
    decoder_step,
    perceptual_network,
    train_glvc_decoder,
    trainable_parameters,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def injected(tmp_path_factory) -> str:
    """Random AlexNet and VGG16 `features` tensors (the backbones' shapes, not their weights)."""
    import torchvision

    torch.manual_seed(0)
    tensors = {f"alexnet.{k}": v for k, v in torchvision.models.AlexNet().features.state_dict().items()}
    vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False)
    tensors.update({f"vgg16.{k}": v for k, v in vgg.state_dict().items()})
    path = tmp_path_factory.mktemp("backbones") / "injected.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


@pytest.fixture
def glvc_model(tmp_path) -> Path:
    return build_random_model(tmp_path / "glvc").path


@pytest.mark.parametrize("metric", ["lpips", "dists"])
def test_the_perceptual_loss_trains_only_the_decoder_head(glvc_model, injected, metric):
    tokenizer = load_tokenizer(glvc_model / "tokenizer")
    vae = tokenizer.vae.float().train()
    codec = LatentCodec.from_pretrained(glvc_model / "latent_codec").eval().requires_grad_(False)
    params = trainable_parameters(vae, "head")
    network = perceptual_network(metric, None, "cpu", injected).requires_grad_(False)
    discriminator = PatchDiscriminator()
    clips = to_model_input(synthetic_clip(TRAIN_IMAGES[0], 5, 32, 32, seed=1)[None], "cpu")
    losses = decoder_step(
        vae, codec, tokenizer.mean, tokenizer.std, clips, torch.tensor([20]), network=network, metric=metric,
        perceptual_weight=1.0, discriminator=discriminator, adversarial_weight=0.1,
    )  # fmt: skip
    assert {"l1", "perceptual", "adversarial", "discriminator", "loss"} <= set(losses)
    losses["loss"].backward()
    head = {id(p) for p in params}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in vae.parameters() if id(p) not in head)  # encoder, early decoder
    assert all(p.grad is None for p in codec.parameters())
    # The perceptual term alone reaches the head too (not just through L1).
    vae.zero_grad(set_to_none=True)
    losses = decoder_step(
        vae, codec, tokenizer.mean, tokenizer.std, clips, torch.tensor([20]), network=network, metric=metric,
        perceptual_weight=1.0, discriminator=None, adversarial_weight=0.0,
    )  # fmt: skip
    losses["perceptual"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_stage_two_on_ray_train_replaces_the_decoder_and_keeps_the_encoder(glvc_model, injected, ray_address):
    before = load_file(str(glvc_model / "tokenizer" / "diffusion_pytorch_model.safetensors"))
    old_sha = load_model_dir(glvc_model).sha256
    settings = DecoderTraining(
        data="synthetic", out=str(glvc_model), steps=2, size=32, frames=5, batch=1, lr=1e-3, log_every=1,
        adversarial_weight=0.1, injected_backbones=injected,
    )  # fmt: skip
    directory = train_glvc_decoder(settings)
    after = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("decoder.") for k in moved)
    assert any(k.startswith("decoder.conv_out") for k in moved)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    model = update_bundle_card(glvc_model, "decoder_finetune", {"steps": 2}, "stage 2 (test)")
    assert model.sha256 != old_sha
    codec = GlvcCodec(model=str(glvc_model))  # loads and codes with the new decoder
    assert codec.model_sha256 == model.components_digest(["tokenizer", "latent_codec"])


def test_stage_two_refuses_to_start_without_the_official_weights(glvc_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "glvc-decoder", "--out", str(glvc_model), "--steps", "1",
         "--size", "32", "--frames", "5", "--batch", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch-home")},
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "alexnet" in lines[0] and "--metric-weights" in lines[0] and "Traceback" not in proc.stderr
    assert not (glvc_model.parent / "glvc.checkpoints").exists()
