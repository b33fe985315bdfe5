"""The encode actor pool: start it, size its CPUs, pick the least loaded actor, replace dead ones.

Each actor builds its codec once (weights load once) and is named `vidarc-encode-<run>-<n>` so
operators can find it in `ray list actors`. Actors are created with `max_restarts=0`: a dead actor is
replaced here, and the scheduler retries the GOPs it held.

The driver never blocks on an actor: the calls at start (`describe`, `check_metric`) have timeouts and
a death there is a one-line error; in the loop, results are only read once `ray.wait` says they are
ready. An actor that holds calls but finishes none for `stall_seconds` (hung in a driver call, a wedged
GPU) is killed by `kill_stalled`, so its calls fail like a death's and their GOPs are retried.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.errors import ArchiveError

log = logging.getLogger("vidarc.archive")


class EncodePool:
    """The actors of one run and how many calls each has in flight."""

    def __init__(
        self, cfg: ArchiveConfig, actors: list[Any], cpus: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.actors = actors
        self.load = [0] * len(actors)
        self.cpus = cpus
        self.restarts = 0
        self.clock = clock
        self.progress = [clock()] * len(actors)  # when each actor last finished a call (or got busy)
        self.peak_load = 0  # most calls (GOP encodes or searches) one actor held at once

    @classmethod
    def start(cls, cfg: ArchiveConfig) -> tuple[EncodePool, dict[str, Any]]:
        """Create the pool and check the codec built; returns (pool, codec identity)."""

        cpus = cpus_per_actor(cfg)
        actors = [_new_actor(cfg, cpus) for _ in range(cfg.actors)]
        identity = _ask(actors, lambda: actors[0].describe.remote(), cfg, cpus)
        if identity.get("error"):
            stop_actors(actors)
            raise ArchiveError(identity["error"])
        if cfg.quality_goal is not None:
            reason = _ask(actors, lambda: actors[0].check_metric.remote(cfg.quality_goal.metric), cfg, cpus)
            if reason:
                stop_actors(actors)
                raise ArchiveError(f"--target-{cfg.quality_goal.metric} cannot be measured: {reason}")
        if cfg.min_vmaf:
            reason = _ask(actors, lambda: actors[0].check_metric.remote("vmaf"), cfg, cpus)
            if reason:
                stop_actors(actors)
                raise ArchiveError(f"--min-vmaf cannot be measured: {reason}")
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
        if self.load[idx] == 0:
            self.progress[idx] = self.clock()  # an idle actor's stall clock starts with its work
        self.load[idx] += 1
        self.peak_load = max(self.peak_load, self.load[idx])
        return idx, self.actors[idx]

    def release(self, idx: int) -> None:
        """One call of actor `idx` finished (or failed): that is progress."""
        self.load[idx] -= 1
        self.progress[idx] = self.clock()

    def replace(self, idx: int, dead: Any) -> bool:
        """Replace actor `idx` if it is still the dead one (several results may report one death)."""
        if self.actors[idx] is not dead:
            return False
        self.restarts += 1
        self.actors[idx] = _new_actor(self.cfg, self.cpus)
        self.progress[idx] = self.clock()
        return True

    def stalled(self) -> list[int]:
        """Actors holding calls that finished none for `stall_seconds` (none when that is unset)."""
        limit = self.cfg.stall_seconds
        if not limit:
            return []
        now = self.clock()
        return [i for i, load in enumerate(self.load) if load > 0 and now - self.progress[i] > limit]

    def kill_stalled(self) -> list[int]:
        """Kill stalled actors: their calls then fail as an actor death does (and are retried on a
        replacement). Returns their indices; each is killed once (its clock restarts)."""
        idle = self.stalled()
        for idx in idle:
            log.warning(
                "encode actor %d finished nothing for %.0f s; killing it", idx, self.cfg.stall_seconds
            )
            stop_actors([self.actors[idx]])
            self.progress[idx] = self.clock()
        return idle

    def utilisation(self) -> list[dict[str, Any]]:
        """Each live actor's own measure of how busy it kept its device (`EncodeWorker.utilisation`).
        All asked at once and waited for together, at most `UTILISATION_TIMEOUT_S` in all: a dead or hung
        actor has nothing to report and never holds the driver longer."""
        import ray

        refs = []
        for actor in self.actors:
            with contextlib.suppress(Exception):
                refs.append(actor.utilisation.remote())
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=UTILISATION_TIMEOUT_S)
        reports = []
        for ref in refs:  # in actor order
            if ref in ready:
                with contextlib.suppress(Exception):  # a dead actor's call fails
                    reports.append(ray.get(ref))
        return reports

    def stop(self) -> None:
        stop_actors(self.actors)


def _ask(actors: list[Any], call: Callable[[], Any], cfg: ArchiveConfig, cpus: float) -> Any:
    """One start-up question to the first actor: with a timeout, and an actor death as one line."""
    import ray

    try:
        return ray.get(call(), timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        stop_actors(actors)
        raise ArchiveError(
            f"no encode actor started within {START_TIMEOUT_S // 60} minutes (asked for "
            f"{cfg.num_gpus_per_actor} GPU and {cpus} CPU per actor: does the cluster have them?)"
        ) from None
    except ray.exceptions.RayActorError as exc:
        stop_actors(actors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"the encode actor died while starting ({reason})") from None


START_TIMEOUT_S = 600
#: The end-of-run utilisation reports of all actors, waited for together (seconds).
UTILISATION_TIMEOUT_S = 30


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
        cfg.fingerprint_every,
        cfg.always_measured(),
    )


def stop_actors(actors: list[Any]) -> None:
    import ray

    if not ray.is_initialized():  # nothing to stop (and ray.kill would start a cluster)
        return
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
