"""What a training stage's worker loop asks of where it runs: its rank, its device, its model prepared
for data parallelism, and a place to report progress.

A loop runs either on Ray Train workers (`loop.fit` with the Ray backend) or in the calling process
(the local backend: one CPU worker and no cluster, where Ray Train's start-up would be all the cost and
buy nothing). The loops call these functions instead of `ray.train` directly; they answer from Ray Train
on a Ray Train worker and with the trivial one-worker answers inside `local_run()`: rank 0 of a world
of 1, the CPU, the model as it is (Ray Train does not wrap one worker's model in DDP either), and
reports dropped (they only feed Ray Train's result object; the losses go to the stage's `TrainLog`,
`train_log.jsonl`, on both backends).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and Ray are imported where used: choosing a backend needs neither
    import torch

BACKENDS = ("auto", "ray", "local")
_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("vidarc_local_training", default=False)


def choose_backend(backend: str, *, workers: int, use_gpu: bool) -> str:
    """ "ray" or "local" for a run's `backend` option; ValueError (one line) for one that cannot be.

    "auto" is local when the run has one CPU worker and no cluster was asked for: no RAY_ADDRESS and no
    Ray already initialised in this process (a test session's cluster, a notebook's `ray.init`). Ray
    Train's start-up (a controller, a worker actor, a placement group: about 17 s on a small machine)
    then buys nothing. "local" is refused for what only Ray Train can run (several workers, GPUs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "local" and (workers != 1 or use_gpu):
        asked = f"--workers {workers}" if workers != 1 else "--use-gpu"
        raise ValueError(
            f"--backend local trains one CPU worker in this process; {asked} needs --backend ray"
        )
    if backend != "auto":
        return backend
    ray = sys.modules.get("ray")  # not imported: certainly not initialised
    ray_running = ray is not None and ray.is_initialized()
    if workers == 1 and not use_gpu and not os.environ.get("RAY_ADDRESS") and not ray_running:
        return "local"
    return "ray"


@contextlib.contextmanager
def local_run() -> Iterator[None]:
    """Within this block the functions below answer for one local CPU worker."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def is_local() -> bool:
    return _LOCAL.get()


def world_rank() -> int:
    if is_local():
        return 0
    import ray.train

    return ray.train.get_context().get_world_rank()


def device() -> torch.device:
    if is_local():
        import torch

        return torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model on this worker's device, wrapped in DDP when there are several workers."""
    if is_local():
        return model.to(device())
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def report(metrics: dict[str, Any]) -> None:
    """Progress for Ray Train's result (nothing to do locally: the stage's log already has it)."""
    if is_local():
        return
    import ray.train

    ray.train.report(metrics)
