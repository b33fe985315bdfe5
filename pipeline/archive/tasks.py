"""The Ray tasks of an archive run, as plain functions: probe a source, decode GOPs (one, or a run of
GOPs that continue each other), commit a video or a pack, and warm the task workers up. The scheduler
wraps them with `ray.remote` (`RemoteTasks`); nothing here knows the scheduler."""

from __future__ import annotations

from typing import Any

from pipeline.archive import accounting, discovery
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.gop_result import GopResult
from pipeline.archive.pack_writer import commit_pack
from pipeline.archive.plan import GopSpan
from pipeline.archive.video_writer import VideoJob, commit_video
from pipeline.sources import media


def _probe_remote(
    entry: discovery.SourceEntry, endpoint_url: str | None, max_pixels: int | None
) -> tuple[discovery.ProbeOutcome, float]:
    """(outcome, CPU-seconds spent probing)."""
    with accounting.stopwatch() as wall:
        if entry.parent is not None:  # a migration: the parent's container, not the source
            from pipeline.archive.migration import probe_parent

            outcome = probe_parent(entry, endpoint_url=endpoint_url, max_pixels=max_pixels)
        else:
            outcome = discovery.probe_entry(entry, endpoint_url=endpoint_url, max_pixels=max_pixels)
    return outcome, accounting.held("cpu").charge(wall[0])


def _decode_remote(uri: str, span: GopSpan, endpoint_url: str | None, options: dict[str, Any] | None = None):
    """(frames, CPU-seconds spent decoding): two object refs (`num_returns=2`). `options`: the checks
    and depth of `Scheduler.decode_gop` (size, pixel budget, RGB48)."""
    return _decode_group_remote(uri, [span], endpoint_url, options)


def _decode_group_remote(
    uri: str, spans: list[GopSpan], endpoint_url: str | None, options: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    """Consecutive GOPs of one video decoded in one pass (`media.decode_spans`): frames and
    CPU-seconds for each, flat (`num_returns=2·len(spans)`); the seconds are split by frame count.
    A migrated video's (`options["parent"]`) are decoded from its parent's GOPs (`archived_source`)."""
    options = dict(options or {})
    parent = options.pop("parent", None)
    with accounting.stopwatch() as wall:
        if parent is not None:
            from pipeline.read import archived_source

            decoded = archived_source.decode_spans(
                parent,
                [(s.first_frame, s.frame_count) for s in spans],
                endpoint_url=endpoint_url,
                size=options.get("size"),
                high_bit_depth=bool(options.get("high_bit_depth")),
            )
        else:
            decoded = media.decode_spans(
                uri,
                [(s.first_frame, s.frame_count, s.pts) for s in spans],
                endpoint_url=endpoint_url,
                **options,
            )
    seconds = accounting.held("cpu").charge(wall[0])
    frames_total = sum(s.frame_count for s in spans)
    out: list[Any] = []
    for span, frames in zip(spans, decoded, strict=True):
        out += [frames, seconds * span.frame_count / frames_total]
    return tuple(out)


def _warm_up_remote() -> None:
    """Nothing but the imports the probe, decode and commit tasks need: started beside the encode
    actors' start-up, so that the first probes find a worker ready instead of starting one."""
    import av  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def warm_up_task_workers(cfg: ArchiveConfig) -> list[Any]:
    """One warm-up task per CPU of the cluster (refs; nobody needs to wait for them)."""
    import ray

    placed = {"resources": dict(cfg.task_resources)} if cfg.task_resources else {}
    task = ray.remote(num_cpus=0.25, max_retries=0, **placed)(_warm_up_remote)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return [task.remote() for _ in range(max(1, min(cpus, 8)))]


def _commit_remote(job: VideoJob, metas: list[GopResult], *payloads: bytes) -> dict[str, Any]:
    if job.source_check is not None:  # a migration: PSNR against the original source first
        from pipeline.archive.source_quality import measure

        metas = measure(job, metas, list(payloads))
    return commit_video(job, metas, list(payloads))


def _commit_pack_remote(
    pack_id: str,
    jobs: list[VideoJob],
    metas: list[list[GopResult]],
    had_failed: list[bool],
    *payloads: bytes,
) -> dict[str, Any]:
    """`commit_pack`, with a migration's source PSNR measured first (as `_commit_remote`)."""
    if any(job.source_check is not None for job in jobs):
        from pipeline.archive.source_quality import measure

        position, measured = 0, []
        for job, job_metas in zip(jobs, metas, strict=True):
            own = list(payloads[position : position + len(job.spans)])
            position += len(job.spans)
            measured.append(measure(job, job_metas, own) if job.source_check is not None else job_metas)
        metas = measured
    return commit_pack(pack_id, jobs, metas, had_failed, *payloads)


class RemoteTasks:
    """The run's tasks as Ray remote functions, placed where `--task-resources` says CPU work runs."""

    def __init__(self, cfg: ArchiveConfig) -> None:
        import ray

        placed = {"resources": dict(cfg.task_resources)} if cfg.task_resources else {}  # e.g. CPU-only nodes
        once = {"max_retries": 2, "retry_exceptions": False, **placed}
        self.probe = ray.remote(num_cpus=0.25, **once)(_probe_remote)
        self.decode = ray.remote(num_cpus=0.5, num_returns=2, **once)(_decode_remote)
        self.decode_group = ray.remote(num_cpus=0.5, **once)(_decode_group_remote)
        self.commit = ray.remote(num_cpus=0.25, **once)(_commit_remote)
        self.commit_pack = ray.remote(num_cpus=0.25, **once)(_commit_pack_remote)
