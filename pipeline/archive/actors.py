"""The encode actor pool: start it, size its CPUs, pick the least loaded actor, replace dead ones.

Each actor builds its codec once (weights load once) and is named `vidarc-encode-<run>-<n>` so
operators can find it in `ray list actors`. Actors are created with `max_restarts=0`: a dead actor is
replaced here, and the scheduler retries the GOPs it held.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.errors import ArchiveError

log = logging.getLogger("vidarc.archive")


class EncodePool:
    """The actors of one run and how many calls each has in flight."""

    def __init__(self, cfg: ArchiveConfig, actors: list[Any], cpus: float) -> None:
        self.cfg = cfg
        self.actors = actors
        self.load = [0] * len(actors)
        self.cpus = cpus
        self.restarts = 0
        self.peak_load = 0  # most calls (GOP encodes or searches) one actor held at once

    @classmethod
    def start(cls, cfg: ArchiveConfig) -> tuple[EncodePool, dict[str, Any]]:
        """Create the pool and check the codec built; returns (pool, codec identity)."""
        import ray

        cpus = cpus_per_actor(cfg)
        actors = [_new_actor(cfg, cpus) for _ in range(cfg.actors)]
        try:
            identity = ray.get(actors[0].describe.remote(), timeout=600)
        except ray.exceptions.GetTimeoutError:
            raise ArchiveError(
                f"no encode actor started within 10 minutes (asked for {cfg.num_gpus_per_actor} GPU and {cpus} CPU "
                "per actor: does the cluster have them?)"
            ) from None
        if identity.get("error"):
            stop_actors(actors)
            raise ArchiveError(identity["error"])
        if cfg.quality_goal is not None:
            reason = ray.get(actors[0].check_metric.remote(cfg.quality_goal.metric), timeout=600)
            if reason:
                stop_actors(actors)
                raise ArchiveError(f"--target-{cfg.quality_goal.metric} cannot be measured: {reason}")
        if cfg.gop_frames is not None:
            reason = ray.get(actors[0].gop_frames.remote(cfg.gop_frames, 24, 1))
            if isinstance(reason, str):
                stop_actors(actors)
                raise ArchiveError(f"--gop-frames {cfg.gop_frames}: {reason}")
        return cls(cfg, actors, cpus), identity

    @classmethod
    def empty(cls, cfg: ArchiveConfig) -> EncodePool:
        """No actors: nothing left to do, so no cluster is needed."""
        return cls(cfg, [], 0.0)

    def __len__(self) -> int:
        return len(self.actors)

    def pick(self) -> tuple[int, Any]:
        """The least loaded actor (index, handle), counted as one more call in flight."""
        idx = min(range(len(self.actors)), key=self.load.__getitem__)
        self.load[idx] += 1
        self.peak_load = max(self.peak_load, self.load[idx])
        return idx, self.actors[idx]

    def release(self, idx: int) -> None:
        self.load[idx] -= 1

    def replace(self, idx: int, dead: Any) -> bool:
        """Replace actor `idx` if it is still the dead one (several results may report one death)."""
        if self.actors[idx] is not dead:
            return False
        self.restarts += 1
        self.actors[idx] = _new_actor(self.cfg, self.cpus)
        return True

    def utilisation(self) -> list[dict[str, Any]]:
        """Each live actor's own measure of how busy it kept its device (`EncodeWorker.utilisation`)."""
        import ray

        reports = []
        for actor in self.actors:
            with contextlib.suppress(Exception):  # a dead actor has nothing to report
                reports.append(ray.get(actor.utilisation.remote(), timeout=30))
        return reports

    def stop(self) -> None:
        stop_actors(self.actors)


def cpus_per_actor(cfg: ArchiveConfig) -> float:
    """Leave room for the decode and commit tasks: actors holding every CPU would starve them."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    wanted = cfg.cpus_per_actor if cfg.num_gpus_per_actor == 0 else min(cfg.cpus_per_actor, 1.0)
    spare = 0.5
    if cfg.actors * wanted + spare > total:
        wanted = max(0.1, (total - spare) / cfg.actors)
        log.info("reserving %.2f CPU per encode actor so decode tasks can run", wanted)
    return round(wanted, 2)


def _new_actor(cfg: ArchiveConfig, cpus: float) -> Any:
    """One encode actor, named `vidarc-encode-<run>-<n>` so operators can find it in `ray list actors`."""
    import ray

    from pipeline.archive.encode_worker import EncodeWorker

    name = f"vidarc-encode-{cfg.run_id or 'run'}-{uuid.uuid4().hex[:8]}"
    remote_cls = ray.remote(EncodeWorker)
    placed = {"resources": dict(cfg.actor_resources)} if cfg.actor_resources else {}  # e.g. GPU nodes
    # Threaded actor: its GOPs in flight run concurrently (`encode_worker`), plus one thread for the
    # driver's small calls (GOP length, utilisation) so they never wait behind the encodes.
    return remote_cls.options(
        name=name,
        num_cpus=cpus,
        num_gpus=cfg.num_gpus_per_actor,
        max_restarts=0,
        max_concurrency=cfg.gops_in_flight_per_actor + 1,
        **placed,
    ).remote(
        cfg.codec,
        cfg.model,
        cfg.device,
        cfg.codec_options,
        cfg.metrics_every,
        cfg.skip_metrics,
        cfg.metric_weights,
    )


def stop_actors(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
