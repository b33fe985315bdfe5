"""Train the bundled GVC flow model: a small Wan transformer, rectified flow on the tokenizer's latents.

Data: augmented camera clips of `pipeline.synthetic.TRAIN_IMAGES` (`pipeline.training.data`: scale,
motion and colour augmentation; never the held-out EVAL_IMAGES), encoded once by the bundle's frozen
tokenizer. Objective: rectified flow, x_t = (1−t)·x0 + t·ε, regress the
velocity ε − x0, with t drawn logit-normal (Esser et al. 2024, SD3: more weight on mid-range t where
the velocity is hardest) — the same interpolant GVC's sampler integrates. One network serves all three
GVC modes: each sample gets a random condition — none (t2v), the first frame (i2v) or first + last
frames (flf2v) — as a 4-channel mask plus the latent of the conditioning video (see
`codec.gvc.conditioning`), like Wan I2V without CLIP. The text input is a fixed null embedding stored
with the weights.

Runs as a Ray Train `TorchTrainer` job (one CPU worker by default: at this scale data parallelism on
two shared cores only adds communication); the worker stops at `minutes` of wall time or `max_steps`.
Learning rate: warm-up, then a cosine to 5% at `max_steps` (or constant when `max_steps` is open-ended);
the exported weights are an EMA of the trained ones. `init` continues from an existing flow model.
The result is written to `<bundle>/flow/` and the bundle's card is re-hashed, keeping its fields.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from codec.gvc.backbone import load_tokenizer_dir, save_flow, tiny_flow_config
from codec.gvc.conditioning import build_condition
from pipeline.synthetic import TRAIN_IMAGES
from pipeline.training.bundle import update_bundle_card
from pipeline.training.data import SYNTHETIC, ClipSampler
from pipeline.training.loop import Ema, learning_rate

MODES = ("t2v", "i2v", "flf2v")
#: GVC sampler defaults written into the bundle's card: fewer steps and atoms than the paper's
#: (20 steps, K = 16384) so the tiny model codes a 256×144 GOP on a CPU in under a minute.
BUNDLE_SAMPLER_DEFAULTS = {"steps": 12, "ode_tail": 2, "shift": 3.0, "g_scale": 3.0, "num_atoms": 256}
NULL_TEXT_TOKENS = 4


def make_latent_dataset(
    tokenizer, *, clips_per_image: int, frames: int, size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Latents x0 [N, C, F, h, w] and, per mode, the condition y [N, 4 + C, F, h, w] for each clip."""
    x0, conds = [], {m: [] for m in MODES}
    sampler = ClipSampler(SYNTHETIC, frames=frames, size=size, seed=seed)
    for _ in range(len(sampler.images)):
        for _ in range(clips_per_image):
            video = sampler.clip()
            latent = tokenizer.encode(video).to(torch.float32).cpu()
            x0.append(latent)
            for mode in MODES:
                conds[mode].append(
                    build_condition(
                        mode, video[0], video[-1], frames, tuple(latent.shape), tokenizer.encode
                    ).cpu()
                )
    out = {"x0": torch.stack(x0)}
    out.update({m: torch.stack(v) for m, v in conds.items()})
    return out


def _train_loop(config: dict[str, Any]) -> None:
    """The Ray Train worker: loads the cached latents, trains, saves the model into config['out']."""
    import ray.train

    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    data = torch.load(config["data"], weights_only=True)
    from diffusers import WanTransformer3DModel

    channels = data["x0"].shape[1]
    if config["init"]:
        from safetensors.torch import load_file

        from codec.gvc.backbone import NULL_TEXT_FILE, load_diffusers_model

        model = load_diffusers_model(
            WanTransformer3DModel, Path(config["init"]), torch.device("cpu"), torch.float32
        ).requires_grad_(True)  # loaded for inference (no grad); training needs them trainable
        text = load_file(str(Path(config["init"]) / NULL_TEXT_FILE))["embedding"]
    else:
        model = WanTransformer3DModel(
            **tiny_flow_config(channels, config["text_dim"], config["width"], config["layers"])
        )
        text = torch.randn(
            1, NULL_TEXT_TOKENS, config["text_dim"], generator=torch.Generator().manual_seed(7)
        )
    model.train()
    weights_ema = Ema(model, config["ema_decay"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    schedule_total = config["max_steps"] if config["max_steps"] < 1_000_000 else None
    n = data["x0"].shape[0]
    gen = torch.Generator().manual_seed(config["seed"])
    deadline = time.monotonic() + 60.0 * config["minutes"]
    step, ema = 0, None
    while step < config["max_steps"] and time.monotonic() < deadline:
        idx = torch.randint(n, (config["batch_size"],), generator=gen)
        x0 = data["x0"][idx]
        mode_ids = torch.randint(len(MODES), (len(idx),), generator=gen)
        cond = torch.stack([data[MODES[int(m)]][i] for m, i in zip(mode_ids, idx, strict=True)])
        t = torch.sigmoid(torch.randn(len(idx), generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        tb = t.view(-1, 1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * eps
        pred = model(
            hidden_states=torch.cat([xt, cond], dim=1),
            timestep=t * 1000.0,
            encoder_hidden_states=text.expand(len(idx), -1, -1),
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:  # warm-up, then a cosine, or constant for time-capped runs
            group["lr"] = (
                learning_rate(step, base=config["lr"], total=schedule_total)
                if schedule_total
                else config["lr"] * min(1.0, (step + 1) / 200)
            )
        opt.step()
        weights_ema.update(model)
        step += 1
        value = loss.item()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % config["log_every"] == 0:
            ray.train.report({"step": step, "loss": ema})
    if ray.train.get_context().get_world_rank() == 0:
        weights_ema.copy_to(model)
        save_flow(model, text, Path(config["out"]))
        Path(config["out"], "training.json").write_text(json.dumps({"steps": step, "final_loss_ema": ema}))
    ray.train.report({"step": step, "loss": ema if ema is not None else float("nan"), "done": 1})


def train_flow(
    bundle: str | os.PathLike[str],
    *,
    minutes: float = 20.0,
    max_steps: int = 1_000_000,
    frames: int = 17,
    size: int = 64,
    clips_per_image: int = 24,
    batch_size: int = 8,
    lr: float = 5e-4,
    width: int = 128,
    layers: int = 4,
    text_dim: int = 32,
    threads: int = 1,
    seed: int = 0,
    log_every: int = 50,
    ema_decay: float = 0.999,
    init: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train `<bundle>/flow/` on latents of `<bundle>/tokenizer/` and re-hash the bundle's card.

    Returns a summary (steps, final loss, parameters, wall seconds). Needs a running Ray or starts a
    local one.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    root = Path(bundle)
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer_dir(root / "tokenizer", torch.device("cpu"), torch.float32)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vidarc-flow-") as work:
        data_path = Path(work) / "latents.pt"
        torch.save(
            make_latent_dataset(
                tokenizer, clips_per_image=clips_per_image, frames=frames, size=size, seed=seed
            ),
            data_path,
        )
        out = Path(work) / "flow"
        config = dict(
            data=str(data_path), out=str(out), minutes=minutes, max_steps=max_steps, batch_size=batch_size,
            lr=lr, width=width, layers=layers, text_dim=text_dim, threads=threads, seed=seed,
            log_every=log_every, ema_decay=ema_decay, init=str(Path(init).resolve()) if init else None,
        )  # fmt: skip
        if not ray.is_initialized():
            ray.init(num_cpus=max(2, threads), include_dashboard=False)
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name="vidarc-flow", storage_path=str(Path(work) / "ray")),
        )
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"flow training failed: {result.error}")
        stats = json.loads((out / "training.json").read_text())
        (out / "training.json").unlink()
        target = root / "flow"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out, target)
    params = _parameter_count(target)
    summary = {
        "steps": stats["steps"],
        "final_loss_ema": stats["final_loss_ema"],
        "parameters": params,
        "wall_seconds": round(time.monotonic() - started, 1),
        "clips": clips_per_image * len(ClipSampler(SYNTHETIC, frames=frames, size=size, seed=0).images),
        "images": list(TRAIN_IMAGES),
        "init": str(init) if init else None,
        "device": _cpu_name(threads),
        "frames": frames,
        "size": size,
        "batch_size": batch_size,
        "lr": lr,
        "architecture": tiny_flow_config(int(tokenizer.channels), text_dim, width, layers),
    }
    _rewrite_card(root, summary)
    return summary


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
        f"objective on CPU at small scale ({summary['steps']} steps, batch {summary['batch_size']}, "
        f"{summary['size']}x{summary['size']}x{summary['frames']} augmented clips of TRAIN_IMAGES, "
        f"{summary['wall_seconds']:.0f} s); conditioning dropout over t2v/i2v/flf2v; fixed null text embedding."
    )
    # GVC codes GOPs as long as the flow model's training clips (a small model is only good that far).
    gvc = {**BUNDLE_SAMPLER_DEFAULTS, "gop_frames": summary["frames"]}
    update_bundle_card(root, "flow", summary, note, extra_config={"gvc": gvc})
