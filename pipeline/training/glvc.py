"""Stage 1 of GLVC: train the latent codec in the frozen tokenizer's latent space.

Loss per GOP = bits per pixel + λ(q) · MSE(latent), with a random quality index q per sample so one
model learns all 64 rates (λ log-uniform over q, `LatentCodec.lmbda`). As in the paper, distortion is
plain MSE in latent space (a Gaussian-likelihood distortion is unstable for tiny variances). Samples are
whole GOPs of several latent frames so the recurrent memory learns to carry information forward. The
tokenizer is frozen; its latents of a pool of clips are cached and refreshed slowly, because the
tokenizer's encoder dominates the cost of a step.

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

from pipeline.training.data import ClipSampler
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

COMPONENT = "latent_codec"


@dataclasses.dataclass
class GlvcTraining(TrainingRun):
    COMPONENT: ClassVar[str] = COMPONENT
    PATHS: ClassVar[tuple[str, ...]] = (*TrainingRun.PATHS, "tokenizer")

    tokenizer: str | None = None  # default: the bundle's own <out>/tokenizer
    steps: int = 3000
    pool: int = 96
    refresh_every: int = 8
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

    import ray.train
    import ray.train.torch

    from codec.glvc.latent_codec import LatentCodec, LatentCodecConfig
    from codec.glvc.tokenizer import load_tokenizer

    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()
    tokenizer = load_tokenizer(config["tokenizer"], device=device)
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    if checkpoint is not None:
        codec = LatentCodec.from_pretrained(checkpoint / COMPONENT)
    elif config["init"]:
        codec = LatentCodec.from_pretrained(config["init"])
    else:
        codec = LatentCodec(LatentCodecConfig.from_dict(config["architecture"]))
    model = ray.train.torch.prepare_model(_CodecObjective(codec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    sampler = ClipSampler(
        config["data"], frames=config["frames"], size=config["size"], seed=config["seed"] * 1000 + rank + step,
        endpoint_url=config["endpoint_url"],
    )  # fmt: skip
    pool = [tokenizer.encode(sampler.clip()) for _ in range(config["pool"])]
    num_q = unwrap(model).codec.config.num_q
    pixels_per_latent = tokenizer.spatial_factor**2
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    generator = torch.Generator().manual_seed(config["seed"] + rank)
    while step < config["steps"] and time.monotonic() < deadline:
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
        step += 1
        log.step(step, loss=loss.item(), bpp=bpp.mean().item(), mse=out["mse"].mean().item())
        if rank == 0 and step % config["checkpoint_every"] == 0:
            _checkpoint(config, step, unwrap(model).codec, optimizer)
        if step % config["log_every"] == 0:
            ray.train.report({"step": step, "loss": loss.item()})
    if rank == 0:
        codec = unwrap(model).codec
        _checkpoint(config, step, codec, optimizer)
        replace_directory(Path(config["out"]) / COMPONENT, codec.to("cpu").save_pretrained)


def _checkpoint(config: dict[str, Any], step: int, codec, optimizer) -> None:
    save_checkpoint(config["checkpoint_dir"], step, lambda d: codec.save_pretrained(d / COMPONENT), optimizer)
