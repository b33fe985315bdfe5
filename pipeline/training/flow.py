"""Train the bundled GVC flow model: a small Wan transformer, rectified flow on the tokenizer's latents.

Data: augmented camera clips of `pipeline.sources.synthetic.TRAIN_IMAGES` (`pipeline.training.data`: scale,
motion and colour augmentation; never the held-out EVAL_IMAGES) or clips of a video folder (`data`),
encoded once by the bundle's frozen tokenizer. Objective: rectified flow, x_t = (1−t)·x0 + t·ε, regress the
velocity ε − x0, with t drawn logit-normal (Esser et al. 2024, SD3: more weight on mid-range t where
the velocity is hardest) — the same interpolant GVC's sampler integrates. One network serves all three
GVC modes: each sample gets a random condition — none (t2v), the first frame (i2v) or first + last
frames (flf2v) — as a 4-channel mask plus the latent of the conditioning video (see
`codec.gvc.conditioning`), like Wan I2V without CLIP. The text input is a fixed null embedding stored
with the weights.

Runs on the shared training plumbing (`pipeline.training.loop`): one CPU worker by default (at this
scale data parallelism on two shared cores only adds communication; without a cluster it trains in this
process), DDP across `--workers` GPUs with `--use-gpu` on Ray Train. Checkpoints (weights, their EMA,
the optimizer) every `checkpoint_every` steps or `checkpoint_minutes`, so a long niced run loses
minutes, not hours, and `--resume` continues from the newest one. The worker stops at `minutes` of wall
time or `steps`. Learning rate: warm-up, then a cosine to 5% at `steps` (constant after the warm-up when
`steps` is open-ended); the exported weights are an EMA of the trained ones. `init` continues from an
existing flow model.

The training clips — `clips_per_source` per photograph or video, at most `MAX_CLIPS` — are encoded once
by the frozen tokenizer on the driver and cached beside the checkpoints (`latents.pt`, reused by a
resumed run whose tokenizer and clip settings match), so a step costs the transformer only. The
checkpoint directory must be visible to the workers (one machine, or shared storage).
The result is written to `<bundle>/flow/` and the bundle's card is re-hashed, keeping its fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from codec.gvc.backbone import load_tokenizer_dir, save_flow, tiny_flow_config
from codec.gvc.conditioning import build_condition
from pipeline.training import worker_context
from pipeline.training.bundle import describe_source, update_bundle_card
from pipeline.training.data import SYNTHETIC, ClipSampler
from pipeline.training.loop import (
    EMA_NAME,
    STATE_NAME,
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

COMPONENT = "flow"
MODES = ("t2v", "i2v", "flf2v")
#: GVC sampler defaults written into the bundle's card: fewer steps and atoms than the paper's
#: (20 steps, K = 16384) so the tiny model codes a 256×144 GOP on a CPU in under a minute.
BUNDLE_SAMPLER_DEFAULTS = {"steps": 12, "ode_tail": 2, "shift": 3.0, "g_scale": 3.0, "num_atoms": 256}
NULL_TEXT_TOKENS = 4
#: Cached clips at most: each costs about 0.4 MB of latents and conditions at 64×64×17.
MAX_CLIPS = 4096
#: Steps at or above this are "until `minutes` run out": constant learning rate after the warm-up.
OPEN_ENDED = 1_000_000
LATENTS_NAME = "latents.pt"


@dataclasses.dataclass
class FlowTraining(TrainingRun):
    """Options of the flow stage; `out` is the bundle (its `tokenizer/` is read, `flow/` written)."""

    COMPONENT: ClassVar[str] = COMPONENT

    steps: int = OPEN_ENDED
    minutes: float | None = 20.0
    batch: int = 8
    clips_per_source: int = 24
    width: int = 128
    layers: int = 4
    text_dim: int = 32
    ema_decay: float = 0.999
    log_every: int = 50
    augment: bool = True

    def __post_init__(self) -> None:
        if self.clips_per_source < 1:
            raise ValueError(f"clips per photograph or video must be at least 1, got {self.clips_per_source}")


def make_latent_dataset(tokenizer, sampler: ClipSampler, clips: int) -> dict[str, torch.Tensor]:
    """Latents x0 [N, C, F, h, w] and, per mode, the condition y [N, 4 + C, F, h, w] for `clips` clips."""
    x0, conds = [], {m: [] for m in MODES}
    for _ in range(clips):
        video = sampler.clip()
        latent = tokenizer.encode(video).to(torch.float32).cpu()
        x0.append(latent)
        for mode in MODES:
            conds[mode].append(
                build_condition(
                    mode, video[0], video[-1], sampler.frames, tuple(latent.shape), tokenizer.encode
                ).cpu()
            )
    out = {"x0": torch.stack(x0)}
    out.update({m: torch.stack(v) for m, v in conds.items()})
    return out


def _train_loop(config: dict[str, Any]) -> None:
    """The worker (Ray Train's, or this process): loads the cached latents, trains, checkpoints, writes
    `<out>/flow/`."""
    from diffusers import WanTransformer3DModel

    rank = worker_context.world_rank()
    torch.set_num_threads(config["threads"])
    device = worker_context.device()
    data = torch.load(config["latents"], weights_only=True)
    checkpoint = latest_checkpoint(config["checkpoint_dir"]) if config["resume"] else None
    start_from = checkpoint / COMPONENT if checkpoint is not None else config["init"]
    if start_from is not None:
        model, text = _load_flow(Path(start_from))
    else:
        model = WanTransformer3DModel(
            **tiny_flow_config(data["x0"].shape[1], config["text_dim"], config["width"], config["layers"])
        )
        text = torch.randn(
            1, NULL_TEXT_TOKENS, config["text_dim"], generator=torch.Generator().manual_seed(7)
        )
    model.train()
    if checkpoint is not None and (checkpoint / EMA_NAME).is_file():
        ema = Ema.load(model, config["ema_decay"], checkpoint / EMA_NAME)
    else:
        ema = Ema(model, config["ema_decay"])
    model = worker_context.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    step = load_optimizer_state(checkpoint, optimizer) if checkpoint is not None else 0
    loss_ema = json.loads((checkpoint / STATE_NAME).read_text()).get("loss_ema") if checkpoint else None
    text = text.to(device)
    n = data["x0"].shape[0]
    # seeded by rank and step: workers draw different batches, a resumed run does not replay old ones
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + rank + step)
    log = TrainLog(Path(config["checkpoint_dir"]) / "train_log.jsonl", config["log_every"])
    deadline = time.monotonic() + 60 * config["minutes"] if config["minutes"] else float("inf")
    timer = CheckpointTimer(config["checkpoint_every"], config["checkpoint_minutes"])
    while step < config["steps"] and time.monotonic() < deadline:
        lr = (
            config["lr"] * min(1.0, (step + 1) / 200)
            if config["steps"] >= OPEN_ENDED
            else learning_rate(step, base=config["lr"], total=config["steps"])
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(n, (config["batch"],), generator=gen)
        mode_ids = torch.randint(len(MODES), (len(idx),), generator=gen)
        x0 = data["x0"][idx].to(device)
        cond = torch.stack([data[MODES[int(m)]][i] for m, i in zip(mode_ids, idx, strict=True)]).to(device)
        t = torch.sigmoid(torch.randn(len(idx), generator=gen)).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        tb = t.view(-1, 1, 1, 1, 1)
        pred = model(
            hidden_states=torch.cat([(1 - tb) * x0 + tb * eps, cond], dim=1),
            timestep=t * 1000.0,
            encoder_hidden_states=text.expand(len(idx), -1, -1),
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(unwrap(model))
        step += 1
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        log.step(step, loss=value, loss_ema=loss_ema, lr=lr)
        if rank == 0 and timer.due(step):
            _checkpoint(config, step, unwrap(model), text, optimizer, ema, loss_ema)
        if step % config["log_every"] == 0:
            worker_context.report({"step": step, "loss": loss_ema})
    if rank == 0:
        trained = unwrap(model)
        _checkpoint(config, step, trained, text, optimizer, ema, loss_ema)
        averaged = WanTransformer3DModel(**trained.config)
        averaged.load_state_dict(trained.state_dict())
        ema.copy_to(averaged)
        replace_directory(
            Path(config["out"]) / COMPONENT, lambda directory: save_flow(averaged.cpu(), text, directory)
        )


def _load_flow(directory: Path):
    """A flow model directory's transformer (trainable, float32, CPU) and its null text embedding."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    from codec.gvc.backbone import NULL_TEXT_FILE, load_diffusers_model

    model = load_diffusers_model(WanTransformer3DModel, directory, torch.device("cpu"), torch.float32)
    text = load_file(str(directory / NULL_TEXT_FILE))["embedding"]
    return model.requires_grad_(True), text  # loaded for inference (no grad); training needs gradients


def _checkpoint(config, step, model, text, optimizer, ema: Ema, loss_ema: float | None) -> None:
    def write(directory: Path) -> None:
        save_flow(model, text, directory / COMPONENT)
        ema.save(directory / EMA_NAME)

    save_checkpoint(config["checkpoint_dir"], step, write, optimizer, extra={"loss_ema": loss_ema})


def train_flow(settings: FlowTraining) -> dict[str, Any]:
    """Train `<out>/flow/` on latents of `<out>/tokenizer/` and re-hash the bundle's card.

    Returns a summary (steps, final loss, parameters, wall seconds of this run). On Ray Train it needs a
    running Ray or starts a local one; the local backend needs neither.
    """
    root = Path(settings.out)
    config = settings.resolved()
    started = time.monotonic()
    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer_dir(root / "tokenizer", torch.device("cpu"), torch.float32)
    sampler = ClipSampler(
        settings.data, frames=settings.frames, size=settings.size, seed=settings.seed,
        endpoint_url=settings.endpoint_url, augment=settings.augment,
    )  # fmt: skip
    sources = len(sampler.images) if settings.data == SYNTHETIC else sampler.video_count
    clips = min(MAX_CLIPS, settings.clips_per_source * sources)
    config["latents"] = str(_cached_latents(config, root / "tokenizer", tokenizer, sampler, clips))
    fit(_train_loop, config, name="vidarc-flow")
    checkpoint = latest_checkpoint(config["checkpoint_dir"])
    state = json.loads((checkpoint / STATE_NAME).read_text())
    target = root / COMPONENT
    summary = {
        "steps": state["step"],
        "final_loss_ema": state.get("loss_ema"),
        "parameters": _parameter_count(target),
        "wall_seconds_last_run": round(time.monotonic() - started, 1),
        "clips": clips,
        "data": settings.data,
        "images": list(sampler.images) if settings.data == SYNTHETIC else None,
        "init": describe_source(settings.init),
        "resume": settings.resume,
        "device": "gpu" if settings.use_gpu else _cpu_name(settings.threads),
        "workers": settings.workers,
        "frames": settings.frames,
        "size": settings.size,
        "batch_size": settings.batch,
        "lr": settings.lr,
        "architecture": json.loads((target / "config.json").read_text()),
    }
    _rewrite_card(root, summary)
    return summary


def _cached_latents(config: dict[str, Any], tokenizer_dir: Path, tokenizer, sampler, clips: int) -> Path:
    """Encode the training clips once; a resumed run with the same tokenizer and clips reuses them."""
    key = _latents_key(config, tokenizer_dir, clips)
    root = Path(config["checkpoint_dir"])
    path, tag = root / LATENTS_NAME, root / f"{LATENTS_NAME}.key"
    if path.is_file() and tag.is_file() and tag.read_text() == key:
        return path
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{LATENTS_NAME}.tmp"
    torch.save(make_latent_dataset(tokenizer, sampler, clips), staging)
    staging.replace(path)
    tag.write_text(key)
    return path


def _latents_key(config: dict[str, Any], tokenizer_dir: Path, clips: int) -> str:
    digest = hashlib.sha256()
    for weights in sorted(tokenizer_dir.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    fields = {k: config[k] for k in ("data", "frames", "size", "seed", "augment")}
    return json.dumps({"tokenizer": digest.hexdigest(), "clips": clips, **fields}, sort_keys=True)


def _cpu_name(threads: int) -> str:
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread(s))"


def _parameter_count(directory: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(str(directory / "diffusion_pytorch_model.safetensors"))
    return sum(t.numel() for t in weights.values())


def _rewrite_card(root: Path, summary: dict[str, Any]) -> None:
    """Re-hash the bundle, keeping name/version/kind and the other components' config and notes."""
    note = (
        f"WanTransformer3DModel ({summary['parameters']:,} parameters) trained with the rectified-flow "
        f"objective on {summary['device']} at small scale ({summary['steps']} steps, batch {summary['batch_size']}, "
        f"{summary['size']}x{summary['size']}x{summary['frames']} augmented clips of {summary['data']}, "
        f"{summary['wall_seconds_last_run']:.0f} s in the last run); conditioning dropout over t2v/i2v/flf2v; fixed null text embedding."
    )
    # GVC codes GOPs as long as the flow model's training clips (a small model is only good that far).
    gvc = {**BUNDLE_SAMPLER_DEFAULTS, "gop_frames": summary["frames"]}
    update_bundle_card(root, "flow", summary, note, extra_config={"gvc": gvc})
