"""Compute accounting, measured where the work happens: device-seconds per stage and device kind.

A stage measures its own wall time inside the Ray task or actor that runs it and multiplies it by the
devices Ray reserved there (`held`): CPUs for tasks and CPU actors, GPUs for GPU actors (a GPU-hour
price is taken to cover its host's CPUs, so a GPU actor's CPUs are not charged again). The definitions
of the manifest's compute columns are in `pipeline.format.schema` (`COMPUTE_STAGES`); this module measures,
apportions per-video stages to a video's GOP rows, and adds them up for `summary.json`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any

from pipeline.format.schema import COMPUTE_STAGES, CPU_DEVICE, CPU_STAGES, compute_column

#: Stages measured once per video (apportioned to its rows by frame count).
PER_VIDEO_STAGES: tuple[str, ...] = ("probe", "search", "commit")


@dataclasses.dataclass(frozen=True)
class Held:
    """The device kind a stage runs on and how many of it Ray reserved for the stage."""

    kind: str
    count: float

    def charge(self, wall_seconds: float) -> float:
        return wall_seconds * self.count


def held(device: str = "cpu") -> Held:
    """What the current Ray task or actor holds on `device` ("cpu" or a torch CUDA device).

    Outside Ray (a codec used in-process) one whole device is assumed.
    """
    resources: dict[str, float] = {}
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            resources = dict(ray.get_runtime_context().get_assigned_resources())
    if str(device).startswith("cuda"):
        return Held(gpu_name(device), float(resources.get("GPU") or 1.0))
    return Held(CPU_DEVICE, float(resources.get("CPU") or 1.0))


@functools.lru_cache(maxsize=8)
def gpu_name(device: str) -> str:
    """The GPU's model name as the driver reports it (the key prices are looked up by)."""
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # no CUDA here: still a GPU, of unknown model
        return "gpu"


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` leaves the wall seconds in `t[0]`."""
    box = [0.0]
    started = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - started


def row_columns(gop: dict[str, Any], per_video: dict[str, Any], share: float) -> dict[str, Any]:
    """A manifest row's compute columns: the GOP's own stages plus `share` of the video's.

    `gop`: {"device": kind, "decode"/"encode"/"metrics"/"search": device-seconds} from the encode
    actor; `per_video`: {"probe"/"search"/"commit": device-seconds, "search_device": kind}.
    """
    columns: dict[str, Any] = {"compute_device": gop.get("device")}
    for stage in COMPUTE_STAGES:
        value = gop.get(stage)
        if stage in PER_VIDEO_STAGES and per_video.get(stage) is not None:
            value = (value or 0.0) + float(per_video[stage]) * share
        columns[compute_column(stage)] = None if value is None else float(value)
    if columns["compute_device"] is None and per_video.get("search_device"):
        columns["compute_device"] = per_video["search_device"]
    return columns


def add_per_video(per_video: dict[str, Any], stage: str, seconds: float, kind: str | None = None) -> dict:
    """A copy of a video's per-video compute with `seconds` more of `stage`."""
    updated = dict(per_video)
    updated[stage] = float(updated.get(stage) or 0.0) + float(seconds)
    if kind is not None and stage == "search":
        updated["search_device"] = kind
    return updated


def stage_kind(stage: str, device: str | None) -> str:
    """The device kind a stage's device-seconds are counted on."""
    return CPU_DEVICE if stage in CPU_STAGES or not device else device


MAX_VIDEOS_LISTED = 1000


@dataclasses.dataclass
class ComputeTally:
    """A run's device-seconds: per stage and device kind, per video, plus the reference's."""

    by_stage: dict[str, dict[str, float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(float))
    )
    #: per video, for the first `MAX_VIDEOS_LISTED` committed (a run's memory must not grow with its size;
    #: every video's figures are in its manifest rows)
    videos: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    videos_total: int = 0
    actor_kinds: set[str] = dataclasses.field(default_factory=set)  # device kinds the actors reported

    def add_rows(self, video_key: str, rows: list[dict[str, Any]], commit_seconds: float | None) -> None:
        """Add one committed video: its rows' columns, with the whole commit (`commit_seconds`, measured
        after the manifest and marker were written) in place of the rows' partial commit time."""
        per_video: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float)
        )
        for row in rows:
            if row.get("compute_device"):
                self.actor_kinds.add(row["compute_device"])
            for stage in COMPUTE_STAGES:
                if stage == "commit" and commit_seconds is not None:
                    continue
                value = row.get(compute_column(stage))
                if value is not None:
                    per_video[stage][stage_kind(stage, row.get("compute_device"))] += float(value)
        if commit_seconds is not None:
            per_video["commit"][CPU_DEVICE] += float(commit_seconds)
        for stage, kinds in per_video.items():
            for kind, seconds in kinds.items():
                self.by_stage[stage][kind] += seconds
        self.videos_total += 1
        if len(self.videos) < MAX_VIDEOS_LISTED:
            self.videos[video_key] = {stage: dict(kinds) for stage, kinds in per_video.items()}

    def add_reference(self, cpu_seconds: float) -> None:
        self.by_stage["reference"][CPU_DEVICE] += float(cpu_seconds)

    def record(self, held_seconds: dict[str, float] | None = None) -> dict[str, Any]:
        """The `compute` section of summary.json."""
        by_device: dict[str, float] = collections.defaultdict(float)
        archive_by_device: dict[str, float] = collections.defaultdict(float)
        for stage, kinds in self.by_stage.items():
            for kind, seconds in kinds.items():
                by_device[kind] += seconds
                if stage != "reference":
                    archive_by_device[kind] += seconds
        return {
            "unit": "device-seconds (wall seconds x devices reserved; see pipeline/format/schema.py COMPUTE_STAGES)",
            "by_stage": {stage: dict(kinds) for stage, kinds in sorted(self.by_stage.items())},
            "by_device": dict(by_device),
            "archive_by_device": dict(archive_by_device),
            "actors_reserved": held_seconds or {},
            "videos": self.videos,
            "videos_total": self.videos_total,  # `videos` lists the first MAX_VIDEOS_LISTED of them
        }
