"""Stage 2 of GLVC: sharpen the pixel decoder on what the latent codec actually delivers.

Stage 1 (`glvc`) trains the latent codec for rate + latent MSE; the tokenizer's decoder then sees
quantised latents it was never trained on, and latent MSE favours blur. GLVC's second stage fine-tunes a
small pixel-space reconstruction head with perceptual and adversarial losses. Here:

- input: clips -> frozen tokenizer encoder -> frozen latent codec (`forward_train`: hard-rounded
  latents at a random quality index, exactly what the entropy decoder returns) -> the VAE decoder;
- trained: the decoder's last up-block + output norm and conv (`trainable="head"`, default) or the
  whole decoder (`"decoder"`); the encoder is untouched, so archives' latents do not change meaning;
- loss: L1 + `perceptual_weight` · LPIPS or DISTS + `adversarial_weight` · hinge GAN loss against a small
  patch discriminator (0 = off). The perceptual network is built only from the sha256-verified
  official backbone weights (`pipeline.metrics.perceptual`: torch hub cache or `metric_weights`);
  without them the stage refuses to start. `injected_backbones` (a safetensors file of backbone
  `features` tensors) exists for plumbing tests only and is never reachable from the command line.

The result replaces `<out>/tokenizer/` (the whole VAE, its encoder bit-identical), so the model card
is re-hashed and the model's identity changes, as it must: old archives name the old decoder.
Generator and discriminator share one optimizer (two parameter groups); each update touches only the
group whose gradients are set (AdamW skips parameters without one), so checkpoints and resume work as in the other stages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch

from pipeline.training import worker_context
from pipeline.training.data import ClipSampler, to_model_input
from pipeline.training.loop import (
    TrainingRun,
    TrainLog,
    fit,
    latest_checkpoint,
    load_optimizer_state,
    replace_directory,
    save_checkpoint,
)

COMPONENT = "tokenizer"
METRICS = ("lpips", "lpips_vgg", "dists")
TRAINABLE = ("head", "decoder")
DISCRIMINATOR_FILE = "discriminator.safetensors"


@dataclasses.dataclass
class DecoderTraining(TrainingRun):
    COMPONENT: ClassVar[str] = "decoder"
    PATHS: ClassVar[tuple[str, ...]] = (*TrainingRun.PATHS, "metric_weights", "injected_backbones")

    steps: int = 1000
    lr: float = 2e-5
    metric: str = "lpips"
    metric_weights: str | None = None
    perceptual_weight: float = 1.0
    adversarial_weight: float = 0.0
    trainable: str = "head"
    injected_backbones: str | None = None  # plumbing tests only

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"--trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}")
        if self.perceptual_weight < 0 or self.adversarial_weight < 0:
            raise ValueError("loss weights must be non-negative")


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN on single frames: real/fake logits per 4×-downsampled patch."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 4, 2, 1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(width, 2 * width, 4, 2, 1),
            torch.nn.GroupNorm(8, 2 * width),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * width, 1, 3, 1, 1),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


def trainable_parameters(vae: torch.nn.Module, trainable: str) -> list[torch.nn.Parameter]:
    """The decoder parameters stage 2 updates; everything else is frozen."""
    vae.requires_grad_(False)
    decoder = vae.decoder
    parts = (
        [decoder] if trainable == "decoder" else [decoder.up_blocks[-1], decoder.norm_out, decoder.conv_out]
    )
    params = [p for part in parts for p in part.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def perceptual_network(metric: str, weights_dir: str | None, device: str, injected: str | None = None):
    """The metric's network from verified official weights (or injected tensors, tests only); raises
    `WeightsUnavailable` with the reason when the official weights are not there."""
    from pipeline.metrics.perceptual import _BACKBONE_OF, backbone_override, get_model

    if injected is None:
        return get_model(metric, device, weights_dir)
    from safetensors.torch import load_file

    tensors = load_file(injected)
    arch = _BACKBONE_OF[metric]
    states = {arch: {k.removeprefix(f"{arch}."): v for k, v in tensors.items() if k.startswith(f"{arch}.")}}
    with backbone_override(states):
        return get_model(metric, device, weights_dir)


def perceptual_loss(network: torch.nn.Module, metric: str, recon: torch.Tensor, target: torch.Tensor):
    """Mean perceptual distance of frame batches [N, 3, H, W] in [-1, 1], differentiable in `recon`."""
    if metric == "dists":
        return network((recon + 1) / 2, (target + 1) / 2, require_grad=True, batch_average=True)
    return network(recon, target, normalize=False).mean()


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B·T, 3, H, W]."""
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def decoder_step(
    vae: torch.nn.Module,
    codec: torch.nn.Module,
    mean: torch.Tensor,
    std: torch.Tensor,
    clips: torch.Tensor,
    q_index: torch.Tensor,
    *,
    network: torch.nn.Module | None,
    metric: str,
    perceptual_weight: float,
    discriminator: torch.nn.Module | None,
    adversarial_weight: float,
) -> dict[str, torch.Tensor]:
    """Losses for one batch of clips [B, 3, T, H, W] in [-1, 1]: the generator's total, its parts, and
    (with a discriminator) the discriminator's hinge loss on detached reconstructions."""
    with torch.no_grad():
        latents = (vae.encode(clips).latent_dist.mode().float() - mean) / std
        latents_hat = codec.forward_train(latents, q_index)["latents_hat"]
    recon = vae.decode(latents_hat * std + mean).sample.float().clamp(-1, 1)
    fake, real = frames_of(recon), frames_of(clips)
    out = {"l1": (fake - real).abs().mean()}
    total = out["l1"]
    if network is not None and perceptual_weight > 0:
        out["perceptual"] = perceptual_loss(network, metric, fake, real)
        total = total + perceptual_weight * out["perceptual"]
    if discriminator is not None and adversarial_weight > 0:
        out["adversarial"] = -discriminator(fake).mean()
        total = total + adversarial_weight * out["adversarial"]
        out["discriminator"] = (
            torch.relu(1 - discriminator(real)).mean() + torch.relu(1 + discriminator(fake.detach())).mean()
        )
    out["loss"] = total
    return out


def train_glvc_decoder(settings: DecoderTraining) -> Path:
    """Fine-tune `<out>/tokenizer/`'s decoder against `<out>/latent_codec/`; returns the tokenizer dir."""
    fit(_worker_loop, settings.resolved(), name="vidarc-glvc-decoder")
    return Path(settings.out) / COMPONENT


def _worker_loop(config: dict[str, Any]) -> None:
    import time

    from safetensors.torch import load_file, save_file

    from codec.glvc.latent_codec import LatentCodec
    from codec.glvc.tokenizer import load_tokenizer

    rank = worker_context.world_rank()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    device = worker_context.device()
    out = Path(config["out"])
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    tokenizer = load_tokenizer((checkpoint or out) / COMPONENT, device=device)
    vae = tokenizer.vae.float().train()
    codec = LatentCodec.from_pretrained(out / "latent_codec").to(device).eval().requires_grad_(False)
    params = trainable_parameters(vae, config["trainable"])
    discriminator = None
    groups = [{"params": params, "lr": config["lr"]}]
    if config["adversarial_weight"] > 0:
        discriminator = PatchDiscriminator().to(device)
        if checkpoint is not None and (checkpoint / DISCRIMINATOR_FILE).is_file():
            discriminator.load_state_dict(load_file(str(checkpoint / DISCRIMINATOR_FILE)))
        groups.append({"params": list(discriminator.parameters()), "lr": config["lr"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    network = None
    if config["perceptual_weight"] > 0:
        network = perceptual_network(
            config["metric"], config["metric_weights"], str(device), config["injected_backbones"]
        )
        network.requires_grad_(False)
    sampler = ClipSampler(
        config["data"], frames=config["frames"], size=config["size"], seed=config["seed"] * 1000 + rank + step,
        endpoint_url=config["endpoint_url"],
    )  # fmt: skip
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    generator = torch.Generator().manual_seed(config["seed"] + rank)
    mean, std = tokenizer.mean.float(), tokenizer.std.float()

    def write(directory: Path) -> None:
        vae.save_pretrained(str(directory / COMPONENT), safe_serialization=True)
        if discriminator is not None:
            save_file(discriminator.state_dict(), str(directory / DISCRIMINATOR_FILE))

    while step < config["steps"] and time.monotonic() < deadline:
        clips = to_model_input(sampler.batch(config["batch"]), device)
        q = torch.randint(codec.config.num_q, (config["batch"],), generator=generator).to(device)
        losses = decoder_step(
            vae, codec, mean, std, clips, q, network=network, metric=config["metric"],
            perceptual_weight=config["perceptual_weight"], discriminator=discriminator,
            adversarial_weight=config["adversarial_weight"],
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if discriminator is not None:
            for p in discriminator.parameters():
                p.grad = None  # the generator's step must not move the discriminator
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if discriminator is not None:  # then the discriminator, on detached reconstructions
            optimizer.zero_grad(set_to_none=True)
            losses["discriminator"].backward()
            optimizer.step()  # only the discriminator has gradients now
        step += 1
        log.step(step, **{k: v.item() for k, v in losses.items()})
        if rank == 0 and step % config["checkpoint_every"] == 0:
            save_checkpoint(config["checkpoint_dir"], step, write, optimizer)
    if rank == 0:
        save_checkpoint(config["checkpoint_dir"], step, write, optimizer)
        replace_directory(
            out / COMPONENT, lambda d: vae.to("cpu").save_pretrained(str(d), safe_serialization=True)
        )
