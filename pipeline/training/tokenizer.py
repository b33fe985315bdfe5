"""Stage 0: train a small tokenizer of the Wan2.1 VAE architecture (diffusers `AutoencoderKLWan`).

Real deployments use the pretrained Wan2.1 VAE; this stage exists so the project can build its own
small one where those weights cannot be had. Objective: L1 + MSE reconstruction plus a small KL term
that keeps the posterior close to a unit Gaussian (the latents then suit both the latent codec and the
flow model). There is no perceptual or adversarial term: no pretrained backbone is available to build
one honestly. At the end the per-channel `latents_mean`/`latents_std` are measured on training clips and
stored in the config, as Wan pipelines expect.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.training.data import ClipSampler, to_model_input
from pipeline.training.loop import (
    TrainingRun,
    TrainLog,
    fit,
    latest_checkpoint,
    load_optimizer_state,
    replace_directory,
    save_checkpoint,
    unwrap,
)

COMPONENT = "tokenizer"
TINY_ARCHITECTURE: dict[str, Any] = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}


@dataclasses.dataclass
class TokenizerTraining(TrainingRun):
    COMPONENT: ClassVar[str] = COMPONENT

    steps: int = 2000
    size: int = 48
    frames: int = 5
    batch: int = 6
    lr: float = 1e-3
    kl_weight: float = 1e-4
    architecture: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(TINY_ARCHITECTURE))


class _VaeObjective(torch.nn.Module):
    """Reconstruction and KL in one forward, so DDP sees a single call per step."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        return reconstruction, posterior.kl().mean() / x[0].numel()


def train_tokenizer(settings: TokenizerTraining) -> Path:
    """Train, then write `<out>/tokenizer/` (diffusers format); returns that directory."""
    config = settings.resolved()
    fit(_worker_loop, config, name="vidarc-tokenizer")
    return Path(settings.out) / COMPONENT


def _worker_loop(config: dict[str, Any]) -> None:
    import time

    import ray.train
    import ray.train.torch
    from diffusers import AutoencoderKLWan

    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    if checkpoint is not None:
        vae = AutoencoderKLWan.from_pretrained(str(checkpoint / COMPONENT), use_safetensors=True)
    elif config["init"]:
        vae = AutoencoderKLWan.from_pretrained(config["init"], use_safetensors=True)
    else:
        vae = AutoencoderKLWan(**config["architecture"])
    model = ray.train.torch.prepare_model(_VaeObjective(vae))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    sampler = ClipSampler(
        config["data"], frames=config["frames"], size=config["size"], seed=config["seed"] * 1000 + rank + step,
        endpoint_url=config["endpoint_url"],
    )  # fmt: skip
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    while step < config["steps"] and time.monotonic() < deadline:
        x = to_model_input(sampler.batch(config["batch"]), device)
        reconstruction, kl = model(x)
        mse = torch.mean((reconstruction - x) ** 2)
        loss = torch.mean(torch.abs(reconstruction - x)) + mse + config["kl_weight"] * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        psnr = float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))
        log.step(step, loss=loss.item(), psnr=psnr, kl=kl.item())
        if rank == 0 and step % config["checkpoint_every"] == 0:
            _checkpoint(config, step, unwrap(model).vae, optimizer)
        if step % config["log_every"] == 0:
            ray.train.report({"step": step, "loss": loss.item(), "psnr": psnr})
    if rank == 0:
        vae = unwrap(model).vae
        _checkpoint(config, step, vae, optimizer)
        _export(config, vae, sampler)


def _checkpoint(config: dict[str, Any], step: int, vae, optimizer) -> None:
    save_checkpoint(
        config["checkpoint_dir"], step, lambda d: vae.save_pretrained(str(d / COMPONENT)), optimizer
    )


@torch.no_grad()
def _export(config: dict[str, Any], vae, sampler: ClipSampler) -> None:
    """Measure latent statistics on fresh training clips, store them in the config, save."""
    vae = vae.to("cpu").eval()
    latents = []
    for _ in range(16):
        x = to_model_input(sampler.batch(1), "cpu")
        latents.append(vae.encode(x).latent_dist.mode())
    stacked = torch.cat([z.flatten(2) for z in latents], dim=2)  # [1, C, N]
    mean = stacked.mean(dim=(0, 2)).tolist()
    std = stacked.std(dim=(0, 2)).clamp_min(1e-3).tolist()
    vae.register_to_config(latents_mean=[round(v, 6) for v in mean], latents_std=[round(v, 6) for v in std])
    replace_directory(
        Path(config["out"]) / COMPONENT, lambda d: vae.save_pretrained(str(d), safe_serialization=True)
    )


def reconstruction_psnr(
    tokenizer_dir: str, images: tuple[str, ...], *, frames: int = 17, size: int = 64
) -> float:
    """Mean RGB PSNR of tokenizer encode->decode over clips of `images` (for model cards and checks)."""
    from codec.glvc.tokenizer import load_tokenizer
    from pipeline.metrics import psnr_rgb
    from pipeline.synthetic import synthetic_clip

    tokenizer = load_tokenizer(tokenizer_dir)
    values = []
    for i, image in enumerate(images):
        clip = synthetic_clip(image, frames, size, size, seed=100 + i)
        values.append(psnr_rgb(clip, tokenizer.decode(tokenizer.encode(clip))))
    return float(np.mean(values))
