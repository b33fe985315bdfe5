"""Stage 0: train a small tokenizer of the Wan2.1 VAE architecture (diffusers `AutoencoderKLWan`).

Real deployments use the pretrained Wan2.1 VAE; this stage exists so the project can build its own
small one where those weights cannot be had. Objective: L1 + `mse_weight`·MSE reconstruction (the
MSE term is what PSNR measures; L1 keeps edges and colours from washing out early), `dc_weight` times
the squared mean error of each clip per colour channel (a tint is a tiny share of the MSE but what a
viewer sees first: this term makes it a first-class error), plus a small KL term
that keeps the posterior close to a unit Gaussian (the latents then suit both the latent codec and the
flow model); the decoder sees posterior *samples*, so it learns to tolerate small latent errors such as
a latent codec's. There is no perceptual or adversarial term: no pretrained backbone is available to
build one honestly.

Schedule: linear warm-up, then a cosine to `lr_floor`·lr at `steps`; an optional curriculum grows the
crops (`loop.parse_curriculum`); an EMA of the weights is what gets exported. Checkpoints (every
`checkpoint_every` steps or `checkpoint_minutes`) hold the live weights, the EMA and the optimiser, so a
run killed at any time resumes where it stopped. Every `eval_minutes` the EMA model's PSNR and mean
colour error on a few held-out clips are logged (for watching the run, never for choosing weights).
At the end the per-channel `latents_mean`/`latents_std` are measured on training clips and stored in
the config, as Wan pipelines expect.

`trainable="decoder"` continues a trained tokenizer with its encoder frozen: the latent space, and with it
the `latents_mean`/`latents_std` kept from the starting model, stay exactly as they were, so a bundle's
latent codec and flow model (trained on those latents) stay valid while the decoder, the part that has
to invent detail, keeps learning. The encoder then runs without gradients, which also makes a step
cheaper.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from codec.weights import load_diffusers_model, weight_shards
from pipeline.training import worker_context
from pipeline.training.data import ClipSampler, to_model_input
from pipeline.training.loop import (
    EMA_NAME,
    CheckpointTimer,
    Ema,
    Stage,
    TrainingRun,
    TrainLog,
    fit,
    latest_checkpoint,
    learning_rate,
    load_optimizer_state,
    parse_curriculum,
    replace_directory,
    save_checkpoint,
    stage_at,
    unwrap,
)

COMPONENT = "tokenizer"
#: The bundled tokenizer: Wan2.1's VAE family at 4× spatial / 4× causal temporal (two down stages,
#: both temporal), widths 16-32-64, 16 latent channels. Why 4× and not Wan's 8×: see the model card.
TINY_ARCHITECTURE: dict[str, Any] = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 2, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [True, True],
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
    mse_weight: float = 10.0
    dc_weight: float = 30.0
    ema_decay: float = 0.999
    warmup: int = 200
    lr_floor: float = 0.05
    curriculum: str | None = None
    augment: bool = True
    eval_minutes: float | None = None
    trainable: str = "all"  # "all" | "decoder" (encoder frozen: the latent space does not move)
    architecture: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(TINY_ARCHITECTURE))


class _VaeObjective(torch.nn.Module):
    """Reconstruction and KL in one forward, so DDP sees a single call per step."""

    def __init__(self, vae, *, frozen_encoder: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.frozen_encoder = frozen_encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        return reconstruction, posterior.kl().mean() / x[0].numel()


TRAINABLE = ("all", "decoder")


def check_init(directory: str) -> None:
    """Load an --init tokenizer once on the driver, so a wrong folder or damaged weights is a one-line
    error before any Ray worker starts (raises `ModelLoadError`)."""
    weight_shards(Path(directory))  # a folder without weights is refused before diffusers is imported
    from diffusers import AutoencoderKLWan

    load_diffusers_model(AutoencoderKLWan, Path(directory), torch.device("cpu"), torch.float32)


def train_tokenizer(settings: TokenizerTraining) -> Path:
    """Train, then write `<out>/tokenizer/` (diffusers format, EMA weights); returns that directory."""
    if settings.trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}, got {settings.trainable!r}")
    if settings.trainable == "decoder" and not (settings.init or settings.resume):
        raise ValueError("training only the decoder needs a trained tokenizer to start from (init)")
    parse_curriculum(settings.curriculum, Stage(0, settings.size, settings.frames, settings.batch))
    config = settings.resolved()
    fit(_worker_loop, config, name="vidarc-tokenizer")
    return Path(settings.out) / COMPONENT


def _worker_loop(config: dict[str, Any]) -> None:
    from diffusers import AutoencoderKLWan

    rank = worker_context.world_rank()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    start_from = checkpoint / COMPONENT if checkpoint is not None else config["init"]
    if start_from:  # the project's loader: clear errors, and no `_name_or_path` carried into config.json
        cpu = torch.device("cpu")
        vae = load_diffusers_model(AutoencoderKLWan, Path(start_from), cpu, torch.float32).requires_grad_(
            True
        )
    else:
        vae = AutoencoderKLWan(**config["architecture"])
    if checkpoint is not None and (checkpoint / EMA_NAME).is_file():
        ema = Ema.load(vae, config["ema_decay"], checkpoint / EMA_NAME)
    else:
        ema = Ema(vae, config["ema_decay"])
    frozen_encoder = config["trainable"] == "decoder"
    if frozen_encoder:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    model = worker_context.prepare_model(_VaeObjective(vae, frozen_encoder=frozen_encoder))
    device = worker_context.device()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config["lr"], weight_decay=0.0)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    stages = parse_curriculum(
        config["curriculum"], Stage(0, config["size"], config["frames"], config["batch"])
    )
    sampler = ClipSampler(
        config["data"], frames=config["frames"], size=config["size"], seed=config["seed"] * 1000 + rank + step,
        endpoint_url=config["endpoint_url"], augment=config["augment"],
    )  # fmt: skip
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    timer = CheckpointTimer(config["checkpoint_every"], config["checkpoint_minutes"])
    eval_timer = CheckpointTimer(10**9, config["eval_minutes"])
    while step < config["steps"] and time.monotonic() < deadline:
        stage = stage_at(stages, step)
        x = to_model_input(sampler.batch(stage.batch, stage.size, stage.frames), device)
        lr = learning_rate(
            step, base=config["lr"], total=config["steps"], warmup=config["warmup"], floor=config["lr_floor"]
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        reconstruction, kl = model(x)
        error = reconstruction - x
        mse = torch.mean(error**2)
        dc = torch.mean(error.mean(dim=(2, 3, 4)) ** 2)  # each clip's mean colour error, per channel
        loss = (
            torch.mean(torch.abs(error)) + config["mse_weight"] * mse + config["dc_weight"] * dc
            + config["kl_weight"] * kl
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        ema.update(unwrap(model).vae)
        step += 1
        psnr = float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))
        log.step(step, loss=loss.item(), psnr=psnr, kl=kl.item(), dc=dc.item(), lr=lr, size=stage.size)
        if rank == 0 and timer.due(step):
            _checkpoint(config, step, unwrap(model).vae, optimizer, ema)
        if rank == 0 and config["eval_minutes"] and eval_timer.due(step):
            log.record(
                step, **heldout_scores(_ema_model(unwrap(model).vae, ema, frozen_encoder=frozen_encoder))
            )
        if step % config["log_every"] == 0:
            worker_context.report({"step": step, "loss": loss.item(), "psnr": psnr})
    if rank == 0:
        vae = unwrap(model).vae
        _checkpoint(config, step, vae, optimizer, ema)
        _export(config, _ema_model(vae, ema, frozen_encoder=frozen_encoder), sampler)


#: The weights that define the latent space: frozen, and exported bit for bit, when only the decoder trains.
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def _ema_model(vae, ema: Ema, *, frozen_encoder: bool = False):
    """The EMA weights in a copy of `vae`; a frozen encoder is taken from `vae` itself, since averaging a
    constant in float32 can still move it by an ulp, and the latent space must not move at all."""
    averaged = copy.deepcopy(vae).to("cpu")
    ema.copy_to(averaged)
    if frozen_encoder:
        live = {k: v for k, v in vae.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
        averaged.load_state_dict(live, strict=False)
    return averaged.eval()


def _checkpoint(config: dict[str, Any], step: int, vae, optimizer, ema: Ema) -> None:
    def write(directory: Path) -> None:
        vae.save_pretrained(str(directory / COMPONENT))
        ema.save(directory / EMA_NAME)

    save_checkpoint(config["checkpoint_dir"], step, write, optimizer)


@torch.no_grad()
def _export(config: dict[str, Any], vae, sampler: ClipSampler) -> None:
    """Measure latent statistics on fresh training clips, store them in the config, save. With a frozen
    encoder the starting model's statistics are kept: re-measuring them on other clips would shift the
    normalised latents that the bundle's latent codec and flow model were trained on."""
    vae = vae.to("cpu").eval()
    if config["trainable"] == "decoder":
        replace_directory(
            Path(config["out"]) / COMPONENT, lambda d: vae.save_pretrained(str(d), safe_serialization=True)
        )
        return
    latents = []
    for _ in range(24):
        x = to_model_input(sampler.batch(1, 64, 17), "cpu")
        latents.append(vae.encode(x).latent_dist.mode())
    stacked = torch.cat([z.flatten(2) for z in latents], dim=2)  # [1, C, N]
    mean = stacked.mean(dim=(0, 2)).tolist()
    std = stacked.std(dim=(0, 2)).clamp_min(1e-3).tolist()
    vae.register_to_config(latents_mean=[round(v, 6) for v in mean], latents_std=[round(v, 6) for v in std])
    replace_directory(
        Path(config["out"]) / COMPONENT, lambda d: vae.save_pretrained(str(d), safe_serialization=True)
    )


@torch.no_grad()
def heldout_scores(vae, *, frames: int = 9, size: int = 96) -> dict[str, float]:
    """RGB PSNR and mean |per-channel mean error| (levels) of encode->decode on held-out clips."""
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

    psnrs, colour = [], []
    for i, image in enumerate(EVAL_IMAGES):
        clip = synthetic_clip(image, frames, size, size, seed=100 + i)
        x = to_model_input(clip[None], "cpu")
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        restored = ((out + 1) * 127.5).round()[0].permute(1, 2, 3, 0).numpy()
        diff = restored - clip.astype(np.float64)
        psnrs.append(float(10 * np.log10(255.0**2 / max(np.mean(diff**2), 1e-10))))
        colour.append(float(np.abs(diff.reshape(-1, 3).mean(0)).max()))
    return {"heldout_psnr": float(np.mean(psnrs)), "heldout_colour_error": float(np.mean(colour))}


def tokenizer_summary(bundle: str, directory: Path, run: dict[str, Any], psnr: float) -> dict[str, Any]:
    """The card's tokenizer entry: architecture and size of what was written, the training images, and
    every run so far (`history`, kept from the card while the architecture stays the same)."""
    import json

    from codec.modeldir import CARD_NAME
    from pipeline.sources.synthetic import TRAIN_IMAGES
    from pipeline.training.data import SYNTHETIC, available_images

    config = json.loads((directory / "config.json").read_text())
    architecture = {k: config[k] for k in TINY_ARCHITECTURE if k in config}
    card_path = Path(bundle) / CARD_NAME
    previous = (
        json.loads(card_path.read_text()).get("config", {}).get(COMPONENT, {}) if card_path.is_file() else {}
    )
    history = previous.get("history", []) if previous.get("architecture") == architecture else []
    if not isinstance(history, list):  # the first bundle's card held a sentence here
        history = []
    from safetensors.torch import load_file

    weights = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
    parameters = sum(t.numel() for t in weights.values())
    return {
        "architecture": architecture,
        "parameters": parameters,
        "steps": run["steps"],
        "wall_seconds": sum(r["wall_seconds"] for r in history) + run["wall_seconds"],
        "images": list(available_images(TRAIN_IMAGES)) if run["data"] == SYNTHETIC else None,
        "heldout_psnr_db": round(psnr, 2),
        "history": [*history, run],
    }


def reconstruction_psnr(
    tokenizer_dir: str, images: tuple[str, ...], *, frames: int = 17, size: int = 64
) -> float:
    """Mean RGB PSNR of tokenizer encode->decode over clips of `images` (for model cards and checks)."""
    from codec.glvc.tokenizer import load_tokenizer
    from pipeline.metrics import psnr_rgb
    from pipeline.sources.synthetic import synthetic_clip

    tokenizer = load_tokenizer(tokenizer_dir)
    values = []
    for i, image in enumerate(images):
        clip = synthetic_clip(image, frames, size, size, seed=100 + i)
        values.append(psnr_rgb(clip, tokenizer.decode(tokenizer.encode(clip))))
    return float(np.mean(values))
