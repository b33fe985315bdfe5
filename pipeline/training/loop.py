"""Training plumbing shared by the stages: run, checkpoint, resume, log.

Each stage supplies a per-worker loop; `fit` runs it on a `TorchTrainer` (DDP across GPU workers) or,
for one CPU worker with no cluster in sight, in this process (`backend`: "auto", "ray" or "local"; the
loops reach their rank, device and DDP wrapper through `worker_context`, so the same loop runs on
both). Checkpoints are ordinary vidarc model directories — config + safetensors +
model card with hashes — plus `trainer_state.json` and `optimizer.safetensors`, so a checkpoint can be
loaded as a model, inspected, or resumed from, and nothing is ever pickled.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from pipeline.format.runinfo import json_text
from pipeline.training import worker_context

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
EMA_NAME = "ema.safetensors"
LOG_NAME = "train_log.jsonl"


@dataclasses.dataclass
class TrainingRun:
    """Options every stage shares; a stage subclasses it with its own (`COMPONENT` names its output)."""

    COMPONENT: ClassVar[str] = ""
    #: Option names holding local paths, made absolute for the workers.
    PATHS: ClassVar[tuple[str, ...]] = ("out", "checkpoint_dir", "init", "data")

    data: str
    out: str
    steps: int = 2000
    minutes: float | None = None
    size: int = 64
    frames: int = 17
    batch: int = 4
    lr: float = 5e-4
    workers: int = 1
    use_gpu: bool = False
    threads: int = 1
    seed: int = 0
    checkpoint_every: int = 200
    #: Also checkpoint when this many minutes passed since the last one (long niced runs on shared CPUs).
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    resume: bool = False
    init: str | None = None
    checkpoint_dir: str | None = None
    endpoint_url: str | None = None
    #: Where the loop runs: "ray" (Ray Train workers), "local" (this process; one CPU worker) or "auto"
    #: (local for one CPU worker when no cluster was asked for, else Ray): `worker_context.choose_backend`.
    backend: str = "auto"

    def resolved(self) -> dict[str, Any]:
        """Options as a plain dict for the workers, with local paths made absolute: Ray Train workers
        run in their own working directory, where a relative path would point elsewhere."""
        config = dataclasses.asdict(self)
        config["checkpoint_dir"] = (
            self.checkpoint_dir or f"{self.out.rstrip('/')}.checkpoints/{self.COMPONENT}"
        )
        for key in self.PATHS:
            config[key] = absolute_local(config[key])
        return config


def replace_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Write a component beside `target`, then swap it in, so a crash never leaves half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def free_local_port() -> int:
    """A TCP port nothing listens on now, for this run's own Ray dashboard.

    Ray Train's placement-group cleaner asks the state API whether the run's controller is alive.
    Without a dashboard that API is "127.0.0.1:8265" regardless: it fails every second (log spam) or,
    worse, reaches another Ray cluster's dashboard on this machine, which does not know the controller,
    and the cleaner then removes the placement group and kills the training run (seen with two runs on
    one machine). So a local run gets a dashboard of its own on a free port, and its workers are told
    that address (`RAY_API_SERVER_ADDRESS`), since with several local clusters they cannot guess it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fit(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str) -> str:
    """Run `loop(config)` on Ray Train workers or in this process (`config["backend"]`, see
    `worker_context.choose_backend`); raise RuntimeError with the worker's error if it fails. Returns
    the backend used ("ray" or "local").

    Both backends give the loop the same config (a copy) and the same answers a single CPU worker gets
    from Ray Train, so checkpoints, logs and outputs do not depend on the backend; a local run leaves
    this process's torch thread count and random state as they were.
    """
    workers, use_gpu = config["workers"], config["use_gpu"]
    backend = worker_context.choose_backend(config.get("backend", "auto"), workers=workers, use_gpu=use_gpu)
    if backend == "local":
        _fit_locally(loop, config, name=name)
    else:
        _fit_on_ray(loop, config, name=name)
    return backend


def _fit_locally(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str) -> None:
    print(
        f"{name}: training in this process (one CPU worker; --backend ray runs it on Ray Train)", flush=True
    )
    threads = torch.get_num_threads()
    try:
        with worker_context.local_run(), torch.random.fork_rng(devices=[]):
            loop(copy.deepcopy(config))  # as Ray Train's workers get it: a copy, never the caller's dict
    except Exception as exc:
        raise RuntimeError(f"{name} training failed: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)


def _fit_on_ray(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers, use_gpu, threads = config["workers"], config["use_gpu"], config["threads"]
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # a running cluster: it has its own resources
            ray.init(log_to_driver=True)
        else:
            port = free_local_port()
            ray.init(
                num_cpus=max(2, workers * threads),
                include_dashboard=True,
                dashboard_port=port,
                runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
                log_to_driver=True,
            )
    storage = Path(config["checkpoint_dir"]).resolve() / "ray"
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": threads}
        ),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"{name} training failed: {result.error}")


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint (its state file is written last), or None."""
    root = Path(checkpoint_dir)
    done = sorted(p.parent for p in root.glob(f"step-*/{STATE_NAME}"))
    return done[-1] if done else None


def save_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    step: int,
    write_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write step-N/ atomically (temporary name, then rename) and prune all but the last `keep`."""
    root = Path(checkpoint_dir)
    final = root / f"step-{step:08d}"
    staging = root / f".step-{step:08d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_model(staging)
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, str(staging / OPTIMIZER_NAME))
    state = {"step": step, "param_groups": groups, "saved_at": time.time(), **(extra or {})}
    (staging / STATE_NAME).write_text(json_text(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_optimizer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> int:
    """Restore the optimizer saved by `save_checkpoint`; returns the step to continue from."""
    state = json.loads((checkpoint / STATE_NAME).read_text())
    tensors = load_file(str(checkpoint / OPTIMIZER_NAME))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return int(state["step"])


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


class TrainLog:
    """Losses as JSON lines (for plots and audits) and a short line on stdout every `every` steps."""

    def __init__(self, path: str | os.PathLike[str], every: int) -> None:
        self.path, self.every, self.started = Path(path), every, time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, step: int, **metrics: float) -> None:
        if step % self.every == 0:
            self.record(step, **metrics)

    def record(self, step: int, **metrics: float) -> None:
        """Log `metrics` at `step` whatever `every` says (evaluations, end-of-run figures)."""
        record = {"step": step, "seconds": round(time.monotonic() - self.started, 1), **metrics}
        with open(self.path, "a") as handle:
            handle.write(json_text(record) + "\n")  # a NaN loss is logged as null: strict JSON
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"step {step} ({record['seconds']:.0f}s) {shown}", flush=True)


def absolute_local(path: str | None) -> str | None:
    """An absolute path for a local path; URLs and special names ("synthetic") pass through."""
    if path is None or "://" in path or path == "synthetic":
        return path
    return os.path.abspath(os.path.expanduser(path))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (what we save), or the model itself."""
    return getattr(model, "module", model)


class Ema:
    """Exponential moving average of a model's floating-point weights (what gets exported).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0) -> None:
        self.decay, self.updates = decay, updates
        self.shadow = {
            k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into `model` (the other buffers are kept)."""
        state = model.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        model.load_state_dict(state)

    def save(self, path: Path) -> None:
        save_file(
            {k: v.contiguous() for k, v in self.shadow.items()},
            str(path),
            metadata={"updates": str(self.updates)},
        )

    @classmethod
    def load(cls, model: torch.nn.Module, decay: float, path: Path) -> Ema:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            updates = int((handle.metadata() or {}).get("updates", 0))
        ema = cls(model, decay, updates)
        for key, value in load_file(str(path)).items():
            if key in ema.shadow:
                ema.shadow[key] = value.float()
        return ema


def learning_rate(step: int, *, base: float, total: int, warmup: int = 200, floor: float = 0.05) -> float:
    """Linear warm-up, then a cosine from `base` down to `floor`·base at step `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage: from step `start`, clips of `size`×`size`×`frames`, `batch` per step."""

    start: int
    size: int
    frames: int
    batch: int


def parse_curriculum(text: str | None, default: Stage) -> list[Stage]:
    """ "0:32x5x8,4000:64x9x3" -> stages sorted by start step; None or "" -> [default].

    Each entry is START:SIZExFRAMESxBATCH. Crops grow as training goes on: small crops give many cheap
    steps early, large ones teach what only larger contexts show (the VAE's middle attention, long pans).
    """
    if not text:
        return [default]
    stages = []
    for part in text.split(","):
        try:
            start, shape = part.strip().split(":")
            size, frames, batch = (int(v) for v in shape.lower().split("x"))
            stages.append(Stage(int(start), size, frames, batch))
        except ValueError:
            raise ValueError(f"curriculum entry {part!r} is not START:SIZExFRAMESxBATCH") from None
    stages.sort(key=lambda s: s.start)
    if stages[0].start != 0:
        raise ValueError("the curriculum must start at step 0")
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    return [s for s in stages if s.start <= step][-1]


class CheckpointTimer:
    """True every `every` steps or after `minutes` of wall time since the last checkpoint."""

    def __init__(self, every: int, minutes: float | None) -> None:
        self.every, self.seconds = every, 60.0 * minutes if minutes else None
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if step % self.every == 0 or (
            self.seconds is not None and time.monotonic() - self.last >= self.seconds
        ):
            self.last = time.monotonic()
            return True
        return False
