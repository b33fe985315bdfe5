"""Stage 1 of GLVC: train the latent codec in the frozen tokenizer's latent space.

Loss per GOP = bits per pixel + λ(q) · MSE(latent), with a random quality index q per sample so one
model learns all 64 rates (λ log-uniform over q, `LatentCodec.lmbda`). As in the paper, distortion is
plain MSE in latent space (a Gaussian-likelihood distortion is unstable for tiny variances). Samples are
whole GOPs of several latent frames so the recurrent memory learns to carry information forward. The
tokenizer is frozen; its latents of a pool of clips are cached and refreshed slowly, because the
tokenizer's encoder dominates the cost of a step.

Schedule and export as the tokenizer stage: linear warm-up then a cosine to `lr_floor`·lr, an EMA of the
weights is what gets written, checkpoints every `checkpoint_every` steps or `checkpoint_minutes`. The
latent pool is filled from augmented clips (`pipeline.training.data`). `architecture` sets the
`LatentCodecConfig` of a fresh model, including the ablation switches `bench/glvc_ablation.py` compares.

The output is a complete model directory: `prepare_model_dir` copies the tokenizer — the Wan2.1 VAE of
an official download (`<wan>/vae/` or the folder itself) or any AutoencoderKLWan folder — into
`<out>/tokenizer/` before training, so the model card pins the tokenizer's weights with the latent
codec's, and a swapped VAE is refused at load and at decode. Stage 2 (the pixel decoder sharpened with
a perceptual loss) is `pipeline.training.glvc_decoder`.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, ClassVar

import torch

from pipeline.training import worker_context
from pipeline.training.data import ClipSampler
from pipeline.training.loop import (
    EMA_NAME,
    CheckpointTimer,
    Ema,
    TrainingRun,
    TrainLog,
    fit,
    latest_checkpoint,
    learning_rate,
    load_optimizer_state,
    replace_directory,
    save_checkpoint,
    unwrap,
)

COMPONENT = "latent_codec"


@dataclasses.dataclass
class GlvcTraining(TrainingRun):
    COMPONENT: ClassVar[str] = COMPONENT
    PATHS: ClassVar[tuple[str, ...]] = (*TrainingRun.PATHS, "tokenizer")

    tokenizer: str | None = None  # default: the bundle's own <out>/tokenizer
    steps: int = 3000
    pool: int = 96
    refresh_every: int = 8
    ema_decay: float = 0.999
    warmup: int = 200
    lr_floor: float = 0.05
    augment: bool = True
    architecture: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer or f"{self.out.rstrip('/')}/tokenizer"


class _CodecObjective(torch.nn.Module):
    def __init__(self, codec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, latents: torch.Tensor, q_index: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.codec.forward_train(latents, q_index)


def prepare_model_dir(tokenizer: str | None, out: str) -> Path:
    """Make `<out>/tokenizer/` a copy of the VAE named by `tokenizer` (a VAE folder, or a Wan or vidarc
    model folder holding one; local or an fsspec URL) and return it. Without `tokenizer`, `<out>` must
    already hold one. Refuses to overwrite a different tokenizer in `<out>`: the latent codec there was
    trained on it. Raises ModelLoadError (one line) for anything unusable."""
    from codec.errors import ModelLoadError
    from codec.modeldir import HashCache, model_files, open_model_dir
    from codec.wan import find_vae

    target = Path(out) / "tokenizer"
    if tokenizer is None or Path(tokenizer).resolve() == target.resolve():
        return find_vae(target) if target.is_dir() else _missing(out)
    source = find_vae(open_model_dir(tokenizer).path)
    if not list(source.glob("*.safetensors")):
        raise ModelLoadError(f"--tokenizer {tokenizer}: {source} holds no safetensors weights")
    files = [rel for rel in model_files(source) if "/" not in rel]
    hashes = HashCache()
    if target.is_dir():
        ours = {rel: hashes.digest(target / rel) for rel in model_files(target)}
        theirs = {rel: hashes.digest(source / rel) for rel in files}
        if ours != theirs:
            raise ModelLoadError(
                f"{target} holds another tokenizer than {source}; the latent codec in {out} was trained on "
                "it — use a new --out"
            )
        return target
    staging = target.with_name(".tokenizer.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for rel in files:
        shutil.copyfile(source / rel, staging / rel)  # follows hub-cache symlinks: real bytes in <out>
    staging.rename(target)
    return target


def _missing(out: str) -> Path:
    from codec.errors import ModelLoadError

    raise ModelLoadError(f"{out} has no tokenizer/; pass --tokenizer (a Wan2.1 folder or its vae/)")


def train_glvc(settings: GlvcTraining) -> Path:
    """Copy the tokenizer into `<out>` (`prepare_model_dir`), train, then write `<out>/latent_codec/`;
    returns that directory."""
    settings.tokenizer = str(prepare_model_dir(settings.tokenizer, settings.out))
    fit(_worker_loop, settings.resolved(), name="vidarc-glvc")
    return Path(settings.out) / COMPONENT


def _worker_loop(config: dict[str, Any]) -> None:
    import time

    from codec.glvc.latent_codec import LatentCodec, LatentCodecConfig
    from codec.glvc.tokenizer import load_tokenizer

    rank = worker_context.world_rank()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    device = worker_context.device()
    tokenizer = load_tokenizer(config["tokenizer"], device=device)
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    if checkpoint is not None:
        codec = LatentCodec.from_pretrained(checkpoint / COMPONENT)
    elif config["init"]:
        codec = LatentCodec.from_pretrained(config["init"])
    else:
        codec = LatentCodec(LatentCodecConfig.from_dict(config["architecture"]))
    if checkpoint is not None and (checkpoint / EMA_NAME).is_file():
        ema = Ema.load(codec, config["ema_decay"], checkpoint / EMA_NAME)
    else:
        ema = Ema(codec, config["ema_decay"])
    model = worker_context.prepare_model(_CodecObjective(codec))
    optimizer = torch.optim.AdamW(parameter_groups(model), lr=config["lr"], weight_decay=0.0)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    sampler = ClipSampler(
        config["data"], frames=config["frames"], size=config["size"], seed=config["seed"] * 1000 + rank + step,
        endpoint_url=config["endpoint_url"], augment=config["augment"],
    )  # fmt: skip
    pool = [tokenizer.encode(sampler.clip()) for _ in range(config["pool"])]
    num_q = unwrap(model).codec.config.num_q
    pixels_per_latent = tokenizer.spatial_factor**2
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    generator = torch.Generator().manual_seed(config["seed"] + rank)
    timer = CheckpointTimer(config["checkpoint_every"], config["checkpoint_minutes"])
    while step < config["steps"] and time.monotonic() < deadline:
        lr = learning_rate(
            step, base=config["lr"], total=config["steps"], warmup=config["warmup"], floor=config["lr_floor"]
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if step % config["refresh_every"] == 0:
            pool[int(torch.randint(len(pool), (1,), generator=generator))] = tokenizer.encode(sampler.clip())
        picks = torch.randint(len(pool), (config["batch"],), generator=generator)
        latents = torch.cat([pool[int(i)] for i in picks]).to(device)
        q = torch.randint(num_q, (config["batch"],), generator=generator).to(device)
        out = model(latents, q)
        _, _, frames, h, w = latents.shape
        pixels = pixels_per_latent * h * w * (1 + tokenizer.temporal_factor * (frames - 1))
        bpp = out["bits"] / pixels
        lmbda = unwrap(model).codec.lmbda(q).to(device)
        loss = torch.mean(bpp + lmbda * out["mse"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(unwrap(model).codec)
        step += 1
        log.step(step, loss=loss.item(), bpp=bpp.mean().item(), mse=out["mse"].mean().item(), lr=lr)
        if rank == 0 and timer.due(step):
            _checkpoint(config, step, unwrap(model).codec, optimizer, ema)
        if step % config["log_every"] == 0:
            worker_context.report({"step": step, "loss": loss.item()})
    if rank == 0:
        codec = unwrap(model).codec
        _checkpoint(config, step, codec, optimizer, ema)
        averaged = LatentCodec(codec.config)
        averaged.load_state_dict(codec.state_dict())
        ema.copy_to(averaged)
        replace_directory(Path(config["out"]) / COMPONENT, averaged.to("cpu").save_pretrained)


#: Parameters that live in scale-index units (0..scale_levels-1) rather than as weights, and their
#: learning-rate multipliers: Adam moves a parameter by about lr per step, so at lr 5e-4 the hyperprior's
#: per-quality scale indices would need ~50k steps to travel the ~25 indices from their initial scale to
#: what a low rate needs, and the rate floor stays high (measured: 0.096 bpp at q=0 after 800 steps).
INDEX_PARAMETERS = {"z_scale_index": 100.0, "params_anchor.bias": 10.0, "params_nonanchor.bias": 10.0}


def parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The optimiser's groups: index-unit parameters with their multiplier (`lr_scale`), the rest at 1."""
    scaled: dict[float, list] = {}
    rest = []
    for name, parameter in model.named_parameters():
        factor = next((f for key, f in INDEX_PARAMETERS.items() if name.endswith(key)), None)
        (scaled.setdefault(factor, []) if factor else rest).append(parameter)
    return [{"params": rest, "lr_scale": 1.0}] + [
        {"params": params, "lr_scale": factor} for factor, params in sorted(scaled.items())
    ]


def _checkpoint(config: dict[str, Any], step: int, codec, optimizer, ema: Ema) -> None:
    def write(directory: Path) -> None:
        codec.save_pretrained(directory / COMPONENT)
        ema.save(directory / EMA_NAME)

    save_checkpoint(config["checkpoint_dir"], step, write, optimizer)
