"""The archive workflow on Ray: discover -> probe -> plan GOPs -> decode -> encode -> commit per video.

Why plain Ray tasks and actors rather than Ray Data: the unit of commit is a *video* (one container,
one manifest part, one done marker, written in that order), while the unit of work is a *GOP*. The
driver here keeps a small table of videos in progress, so it can
- skip done videos before reading them (resume), and rerun only failed ones (`--retry-failed`);
- hand each finished video's payloads to one writer task, exactly once, so retries never duplicate
  manifest rows;
- retry only the GOPs an actor was holding when it died, on a fresh actor, a bounded number of times;
- bound memory explicitly: at most `actors × gops_in_flight_per_actor` GOPs are decoded or being coded
  at once, and new videos are probed only a few ahead (backpressure through `ray.wait`).
Ray Data would give streaming and autoscaling pools, but per-video grouping after a per-GOP map, and
resumable commits, would have to be rebuilt on top of it.

Stages and resources:
- probe (CPU task): open the source, count frames exactly, read rate/rotation/colour/audio presence;
- decode (CPU task, one per GOP): seek + decode just that GOP's frames from the source (local path or
  ranged reads of the object); frames go to the object store, never one row per frame;
- encode (actor pool, `num_gpus=--num-gpus-per-actor`, fractional allowed): the codec is built once
  per actor; the payload goes straight to the writer, the driver only sees a small metadata dict;
- commit (CPU task, one per video): container, manifest part, done marker (`video_writer`).

Quality targets (`--target-vmaf 93` etc., `config.QualityGoal`): per video, a search task on an encode
actor measures a few sample GOPs at several codec settings (`pipeline.quality_target`) before the video's
GOPs are dispatched, so they all share the chosen setting; the sample GOPs' decoded frames are reused for
the real encode. The search is recorded in the container header and every row's `codec_params`, and
cached at `OUT/quality_search/<video>.json`, so a rerun (e.g. `--retry-failed`) does not search again.
With `--per-gop`, each GOP is searched on itself inside its encode call instead.

A broken video (corrupt, truncated, refused by the codec) becomes a failed manifest row + failed
marker with a one-line error; the run goes on and exits non-zero at the end.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from fractions import Fraction
from typing import Any

from codec.base import RateTarget
from pipeline import discovery, media
from pipeline.config import ArchiveConfig, ConfigError
from pipeline.plan import GopSpan, plan_gops
from pipeline.progress import Counters, ProgressDisplay
from pipeline.runinfo import list_markers, new_run_id, run_dir, tool_versions, write_json
from pipeline.search_cache import load_search, save_search, search_cache_key
from pipeline.storage import StorageError, check_reachable, filesystem, is_local, join, redact
from pipeline.video_writer import VideoJob, commit_video, record_failure

log = logging.getLogger("vidarc.archive")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


class ArchiveError(Exception):
    """The job cannot start or go on (bad options, unreachable storage, codec cannot load); one line."""


@dataclasses.dataclass
class ArchiveResult:
    run_id: str | None
    exit_code: int
    summary: dict[str, Any]
    message: str


@dataclasses.dataclass
class _Video:
    """A video in progress: its plan, the GOP results collected so far, its fate."""

    job: VideoJob
    target: RateTarget | None = None  # None until a quality search has chosen it
    search: dict[str, Any] | None = None  # the quality search record (per-video goals)
    search_attempts: int = 0
    sample_refs: dict[int, Any] = dataclasses.field(default_factory=dict)  # gop index -> decoded frames
    metas: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    payloads: dict[int, Any] = dataclasses.field(default_factory=dict)  # gop index -> ObjectRef[bytes]
    in_flight: int = 0
    failed: bool = False


@dataclasses.dataclass
class _GopTask:
    video_key: str
    span: GopSpan
    attempt: int = 0
    frames_ref: Any = None


def run_archive(config: ArchiveConfig, *, display: ProgressDisplay | None = None) -> ArchiveResult:
    """Run the whole job. Raises ArchiveError (exit 2, nothing written) for unusable inputs."""
    try:
        cfg = config.resolved()
    except ConfigError as exc:
        raise ArchiveError(str(exc)) from None
    src_fs, src_root = _open_store(cfg.src, cfg.endpoint_url)
    out_fs, out_root = _open_store(cfg.out, cfg.endpoint_url)
    try:
        check_reachable(src_fs, src_root, cfg.src, must_exist=is_local(src_fs))
        check_reachable(out_fs, out_root, cfg.out, must_exist=False)
        entries = discovery.list_sources(
            cfg.src,
            endpoint_url=cfg.endpoint_url,
            include=cfg.include,
            exclude=cfg.exclude,
            ignore_prefix=cfg.out,
        )
    except StorageError as exc:
        raise ArchiveError(str(exc)) from None
    except Exception as exc:  # listing errors from any fsspec backend
        raise ArchiveError(f"{cfg.src}: cannot list ({type(exc).__name__}: {redact(str(exc))})") from None
    if not entries:
        return ArchiveResult(None, EXIT_OK, {}, f"{cfg.src}: no files found; nothing to archive")

    done = list_markers(out_fs, out_root, "done")
    failed_before = list_markers(out_fs, out_root, "failed")
    todo = [e for e in entries if e.key not in done and (cfg.retry_failed or e.key not in failed_before)]
    run_id = cfg.run_id or new_run_id()
    cfg = dataclasses.replace(cfg, run_id=run_id)
    counters = Counters(videos_skipped=len(entries) - len(todo))
    display = display or ProgressDisplay(counters)
    display.counters = counters
    if is_local(out_fs):
        _remove_stale_temporaries(out_root)

    if todo:
        _start_ray(cfg)
        actors, identity = _start_actors(cfg)
    else:  # nothing left to do: no cluster, no actors, just the run records
        actors, identity = [], {"codec": cfg.codec}
    config_record = {
        "run_id": run_id,
        "config": cfg.as_record(),
        "codec": identity,
        "versions": tool_versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out_fs, join(run_dir(out_root, run_id), "config.json"), config_record)
    scheduler = _Scheduler(cfg, run_id, identity, actors, counters, display, out_fs=out_fs, out_root=out_root)
    try:
        scheduler.run(todo)
    finally:
        display.close()
    summary = scheduler.summary(
        entries_total=len(entries),
        already_done=sum(e.key in done for e in entries),
        previously_failed=sum(e.key in failed_before and e.key not in done for e in entries),
    )
    exit_code = EXIT_FAILURES if summary["videos_failed"] else EXIT_OK
    if cfg.verify_fraction:
        summary["verify"] = _verify(cfg)
        if summary["verify"].get("failures"):
            exit_code = EXIT_FAILURES
    write_json(out_fs, join(run_dir(out_root, run_id), "summary.json"), summary)
    message = (
        f"run {run_id}: {summary['videos_ok']} ok, {summary['videos_failed']} failed, "
        f"{summary['videos_skipped_done']} already done, {summary['videos_skipped_failed']} failed earlier "
        f"(not retried), {len(summary['not_videos'])} non-video files skipped"
    )
    return ArchiveResult(run_id, exit_code, summary, message)


def _open_store(uri: str, endpoint_url: str | None):
    try:
        return filesystem(uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise ArchiveError(str(exc)) from None


def _remove_stale_temporaries(out_root: str) -> None:
    """A killed run can leave `*.tmp-*` files behind (local outputs only; S3 uploads never appear
    unfinished). One archive run per OUT at a time is assumed, so any left over are stale."""
    for sub in ("videos", "manifest", "markers/done", "markers/failed", "quality_search"):
        folder = os.path.join(out_root, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if ".tmp-" in name:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))


def _start_ray(cfg: ArchiveConfig) -> None:
    """Connect to `--address` (or RAY_ADDRESS), or start an embedded local cluster."""
    import ray

    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # we handle every task error ourselves
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=cfg.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
    except Exception as exc:
        raise ArchiveError(
            f"cannot start or reach the Ray cluster {cfg.address or '(local)'}: {redact(str(exc)).splitlines()[0]}"
        ) from None


def _start_actors(cfg: ArchiveConfig) -> tuple[list[Any], dict[str, Any]]:
    """Create the encode actor pool and check the codec built; returns (actors, codec identity)."""
    import ray

    cpus = _cpus_per_actor(cfg)
    actors = [_new_actor(cfg, cpus) for _ in range(cfg.actors)]
    try:
        identity = ray.get(actors[0].describe.remote(), timeout=600)
    except ray.exceptions.GetTimeoutError:
        raise ArchiveError(
            f"no encode actor started within 10 minutes (asked for {cfg.num_gpus_per_actor} GPU and {cpus} CPU "
            "per actor: does the cluster have them?)"
        ) from None
    if identity.get("error"):
        _stop(actors)
        raise ArchiveError(identity["error"])
    if cfg.quality_goal is not None:
        reason = ray.get(actors[0].check_metric.remote(cfg.quality_goal.metric), timeout=600)
        if reason:
            _stop(actors)
            raise ArchiveError(f"--target-{cfg.quality_goal.metric} cannot be measured: {reason}")
    if cfg.gop_frames is not None:
        reason = ray.get(actors[0].gop_frames.remote(cfg.gop_frames, 24, 1))
        if isinstance(reason, str):
            _stop(actors)
            raise ArchiveError(f"--gop-frames {cfg.gop_frames}: {reason}")
    return actors, identity


def _cpus_per_actor(cfg: ArchiveConfig) -> float:
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

    from pipeline.encode_worker import EncodeWorker

    name = f"vidarc-encode-{cfg.run_id or 'run'}-{uuid.uuid4().hex[:8]}"
    remote_cls = ray.remote(EncodeWorker)
    return remote_cls.options(
        name=name, num_cpus=cpus, num_gpus=cfg.num_gpus_per_actor, max_restarts=0
    ).remote(
        cfg.codec,
        cfg.model,
        cfg.device,
        cfg.codec_options,
        cfg.metrics_every,
        cfg.skip_metrics,
        cfg.metric_weights,
    )


def _stop(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)


def _probe_remote(entry: discovery.SourceEntry, endpoint_url: str | None) -> discovery.ProbeOutcome:
    return discovery.probe_entry(entry, endpoint_url=endpoint_url)


def _decode_remote(uri: str, span: GopSpan, endpoint_url: str | None):
    return media.decode_frames(
        uri, span.first_frame, span.frame_count, expected_pts=span.pts, endpoint_url=endpoint_url
    )


def _commit_remote(job: VideoJob, metas: list[dict[str, Any]], *payloads: bytes) -> dict[str, Any]:
    return commit_video(job, metas, list(payloads))


class _Scheduler:
    """The driver loop: keeps probes, GOPs and commits in flight within bounds, reacts to results."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        run_id: str,
        identity: dict[str, Any],
        actors: list[Any],
        counters: Counters,
        display: ProgressDisplay,
        *,
        out_fs: Any,
        out_root: str,
    ) -> None:
        import ray

        self.ray = ray
        self.cfg = cfg
        self.out_fs, self.out_root = out_fs, out_root
        self.run_id = run_id
        self.identity = identity
        self.actors = actors
        self.actor_load = [0] * len(actors)
        self.cpus = _cpus_per_actor(cfg)
        self.counters = counters
        self.display = display
        self.probe = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False)(_probe_remote)
        self.decode = ray.remote(num_cpus=0.5, max_retries=2, retry_exceptions=False)(_decode_remote)
        self.commit = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False)(_commit_remote)
        self.videos: dict[str, _Video] = {}
        self.ready: collections.deque[str] = collections.deque()  # planned videos awaiting GOP slots
        self.queue: collections.deque[_GopTask] = collections.deque()
        self.probing: dict[Any, discovery.SourceEntry] = {}
        self.encoding: dict[
            Any, tuple[_GopTask, int, Any, Any]
        ] = {}  # meta ref -> task, actor idx/handle, payload
        self.committing: dict[Any, str] = {}
        self.search_queue: collections.deque[str] = collections.deque()  # videos awaiting a search
        self.searching: dict[Any, tuple[str, int, Any]] = {}  # result ref -> video key, actor idx/handle
        self.targets_missed: list[dict[str, Any]] = []
        self.gop_cache: dict[Fraction, int | str] = {}
        self.failures: list[dict[str, str]] = []
        self.not_videos: list[str] = []
        self.gop_stats: list[dict[str, Any]] = []
        self.videos_started = 0
        self.actor_restarts = 0
        self.source_bytes_ok = 0
        self.archive_bytes = 0

    # ---- main loop -------------------------------------------------------------------------------
    def run(self, todo: list[discovery.SourceEntry]) -> None:
        pending = collections.deque(todo)
        self.counters.videos_total = len(todo)
        limit = self.cfg.limit
        while self._busy(pending):
            while pending and self._videos_ahead() < self._probe_ahead():
                if limit is not None and self.videos_started + len(self.probing) >= limit:
                    if self.videos_started >= limit:  # non-videos do not count against --limit
                        self.counters.videos_total -= len(pending)
                        pending.clear()
                    break
                entry = pending.popleft()
                self.probing[self.probe.remote(entry, self.cfg.endpoint_url)] = entry
            self._fill_gop_slots()
            waiting = [*self.probing, *self.searching, *self.encoding, *self.committing]
            if not waiting:
                continue
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.probing:
                    self._on_probe(ref)
                elif ref in self.searching:
                    self._on_searched(ref)
                elif ref in self.encoding:
                    self._on_encoded(ref)
                elif ref in self.committing:
                    self._on_committed(ref)
            self.display.refresh()
        _stop(self.actors)

    def _busy(self, pending: collections.deque) -> bool:
        return bool(
            pending
            or self.probing
            or self.search_queue
            or self.searching
            or self.ready
            or self.queue
            or self.encoding
            or self.committing
        )

    def _probe_ahead(self) -> int:
        """How many videos may wait ahead of the encoders. A per-video quality search keeps its sample
        GOPs' decoded frames until the video is dispatched (they are reused for the real encode), so
        then only one video per actor, plus one, may wait: decoded frames stay bounded by the actors."""
        goal = self.cfg.quality_goal
        if goal is not None and not goal.per_gop:
            return min(self.cfg.probe_ahead, len(self.actors) + 1)
        return self.cfg.probe_ahead

    def _videos_ahead(self) -> int:
        """Videos probed or probing but not yet dispatched (bounded by `probe_ahead`)."""
        return len(self.probing) + len(self.search_queue) + len(self.searching) + len(self.ready)

    def _fill_gop_slots(self) -> None:
        """Keep every actor busy: searches first (they unblock whole videos), then GOPs in video order."""
        capacity = len(self.actors) * self.cfg.gops_in_flight_per_actor
        while len(self.encoding) + len(self.searching) < capacity:
            if self.search_queue:
                self._submit_search(self.search_queue.popleft())
                continue
            if not self.queue:
                if not self.ready:
                    return
                video = self.videos[self.ready.popleft()]
                self.queue.extend(
                    _GopTask(video.job.video_key, span, frames_ref=video.sample_refs.pop(span.index, None))
                    for span in video.job.spans
                )
            task = self.queue.popleft()
            video = self.videos.get(task.video_key)
            if video is None or video.failed:
                continue
            self._submit(task, video)

    def _submit(self, task: _GopTask, video: _Video) -> None:
        if task.frames_ref is None:
            task.frames_ref = self.decode.remote(video.job.source_uri, task.span, self.cfg.endpoint_url)
        idx = min(range(len(self.actors)), key=self.actor_load.__getitem__)
        actor = self.actors[idx]
        header = video.job.header
        label = f"{video.job.source_uri} GOP {task.span.index} (frames {task.span.first_frame}+{task.span.frame_count})"
        goal = self.cfg.quality_goal if self.cfg.quality_goal and self.cfg.quality_goal.per_gop else None
        meta_ref, payload_ref = actor.encode.options(num_returns=2).remote(
            task.frames_ref, video.target, header["fps_num"], header["fps_den"], task.span.index, label, goal
        )
        self.encoding[meta_ref] = (task, idx, actor, payload_ref)
        self.actor_load[idx] += 1
        video.in_flight += 1

    # ---- results ---------------------------------------------------------------------------------
    def _on_probe(self, ref: Any) -> None:
        entry = self.probing.pop(ref)
        try:
            outcome: discovery.ProbeOutcome = self.ray.get(ref)
        except Exception as exc:
            outcome = discovery.ProbeOutcome(entry, "failed", reason=_one_line(entry.uri, exc))
        if outcome.kind == "skip":
            self.not_videos.append(outcome.reason or entry.uri)
            self.counters.videos_total -= 1
            self.display.log(f"skipped: {outcome.reason}")
            return
        self.videos_started += 1
        if outcome.kind == "failed":
            self._fail(entry.key, entry.uri, entry.size, outcome.reason or "unreadable")
            return
        info = outcome.info
        assert info is not None
        gop_frames = self._gop_frames(info.fps)
        if isinstance(gop_frames, str):
            self._fail(entry.key, entry.uri, entry.size, f"{entry.uri}: {gop_frames}")
            return
        spans = tuple(plan_gops(info.frame_count, gop_frames, info.frame_pts))
        header = dict(
            info.header_fields(),
            **{k: self.identity.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            target=self._target_record(),
            gop_frames=gop_frames,
            run_id=self.run_id,
        )
        job = VideoJob(
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            out=self.cfg.out,
            run_id=self.run_id,
            endpoint_url=self.cfg.endpoint_url,
            header=header,
            spans=spans,
            has_audio=info.has_audio,
        )
        self.counters.frames_total += info.frame_count
        goal = self.cfg.quality_goal
        if goal is not None:
            job = dataclasses.replace(job, header=dict(job.header, quality_goal=goal.as_record()))
        video = _Video(job, target=self.cfg.target)
        self.videos[entry.key] = video
        if goal is None or goal.per_gop:
            self.ready.append(entry.key)
            return
        cached = load_search(self.out_fs, self.out_root, entry.key, self._search_key(video))
        if cached is not None:
            self.display.log(f"{entry.uri}: quality search reused from an earlier run")
            self._searched(video, cached)
        else:
            self.search_queue.append(entry.key)

    # ---- quality search (per-video goals) ------------------------------------------------------------
    def _target_record(self) -> dict[str, Any]:
        """What the user asked for, as stored in headers and rows: a rate target or the quality goal."""
        goal = self.cfg.quality_goal
        if goal is not None:
            return {"kind": goal.metric, "value": goal.target}
        assert self.cfg.target is not None
        return {"kind": self.cfg.target.kind, "value": self.cfg.target.value}

    def _sample_spans(self, video: _Video) -> list[GopSpan]:
        """`sample_gops` GOPs spread evenly over the video (first and last included)."""
        spans = video.job.spans
        count = min(len(spans), self.cfg.quality_goal.sample_gops)  # type: ignore[union-attr]
        if count == 1:
            return [spans[len(spans) // 2]]
        picks = sorted({round(i * (len(spans) - 1) / (count - 1)) for i in range(count)})
        return [spans[i] for i in picks]

    def _search_key(self, video: _Video) -> dict[str, Any]:
        return search_cache_key(
            video.job, self.identity, self.cfg.codec_options, self.cfg.quality_goal, self._sample_spans(video)
        )

    def _submit_search(self, key: str) -> None:
        video = self.videos.get(key)
        if video is None or video.failed:
            return
        header = video.job.header
        refs = []
        for span in self._sample_spans(video):
            if span.index not in video.sample_refs:
                video.sample_refs[span.index] = self.decode.remote(
                    video.job.source_uri, span, self.cfg.endpoint_url
                )
            refs.append(video.sample_refs[span.index])
        idx = min(range(len(self.actors)), key=self.actor_load.__getitem__)
        actor = self.actors[idx]
        ref = actor.search_quality.remote(
            self.cfg.quality_goal, header["fps_num"], header["fps_den"], video.job.source_uri, *refs
        )
        self.searching[ref] = (key, idx, actor)
        self.actor_load[idx] += 1
        self.display.log(f"{video.job.source_uri}: searching the setting for {self._goal_text()}")

    def _goal_text(self) -> str:
        goal = self.cfg.quality_goal
        assert goal is not None
        cap = f" under {goal.max_kbps:g} kbps" if goal.max_kbps is not None else ""
        return f"{goal.metric} {'≤' if goal.metric == 'dists' else '≥'} {goal.target:g}{cap}"

    def _on_searched(self, ref: Any) -> None:
        key, idx, actor = self.searching.pop(ref)
        self.actor_load[idx] -= 1
        video = self.videos[key]
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._replace_actor(idx, actor)
            video.search_attempts += 1
            if video.search_attempts > self.cfg.max_gop_retries:
                self._fail_video(
                    video, f"{video.job.source_uri}: encode actor died during the quality search"
                )
            else:
                self.search_queue.appendleft(key)
            return
        except Exception as exc:
            self._fail_video(video, _one_line(video.job.source_uri, exc))
            return
        if "error" in outcome:
            self._fail_video(video, outcome["error"])
            return
        try:
            save_search(self.out_fs, self.out_root, key, self._search_key(video), outcome)
        except Exception as exc:  # the cache only saves time; the archive does not depend on it
            self.display.log(f"could not cache the quality search of {video.job.source_uri}: {exc}")
        self._searched(video, outcome)

    def _searched(self, video: _Video, outcome: dict[str, Any]) -> None:
        """Apply a search result: the video's setting, its record in the header, then dispatch it."""
        record = outcome["record"]
        video.target = RateTarget("quality", float(outcome["knob"]))
        video.search = record
        video.job = dataclasses.replace(video.job, header=dict(video.job.header, quality_search=record))
        if not record["reached"]:
            self.targets_missed.append({"video_key": video.job.video_key, "note": record["note"]})
            self.display.log(f"{video.job.source_uri}: {record['note']}")
        self.ready.append(video.job.video_key)

    def _gop_frames(self, fps: Fraction) -> int | str:
        if fps not in self.gop_cache:
            self.gop_cache[fps] = self.ray.get(
                self.actors[0].gop_frames.remote(self.cfg.gop_frames, fps.numerator, fps.denominator)
            )
        return self.gop_cache[fps]

    def _on_encoded(self, ref: Any) -> None:
        task, idx, actor, payload_ref = self.encoding.pop(ref)
        self.actor_load[idx] -= 1
        video = self.videos[task.video_key]
        video.in_flight -= 1
        if video.failed and video.in_flight == 0:
            self.videos.pop(task.video_key, None)
        try:
            meta = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._replace_actor(idx, actor)
            if video.failed:
                return
            if task.attempt >= self.cfg.max_gop_retries:
                self._fail_video(video, f"{video.job.source_uri}: encode actor died {task.attempt + 1} times")
                return
            self.queue.appendleft(dataclasses.replace(task, attempt=task.attempt + 1))
            return
        except Exception as exc:
            if not video.failed:
                self._fail_video(video, _one_line(video.job.source_uri, exc))
            return
        if video.failed:
            return
        if "error" in meta:
            self._fail_video(video, meta["error"])
            return
        if video.search is not None:
            meta["params"] = {**meta["params"], "quality_search": video.search}
        elif not meta["params"].get("quality_search", {}).get("reached", True):
            note = meta["params"]["quality_search"]["note"]
            self.targets_missed.append(
                {"video_key": video.job.video_key, "gop_index": task.span.index, "note": note}
            )
        video.metas[task.span.index] = meta
        video.payloads[task.span.index] = payload_ref
        self.counters.gops_done += 1
        self.counters.frames_done += task.span.frame_count
        if len(video.metas) == len(video.job.spans):
            order = range(len(video.job.spans))
            commit_ref = self.commit.remote(
                video.job, [video.metas[i] for i in order], *[video.payloads[i] for i in order]
            )
            self.committing[commit_ref] = video.job.video_key

    def _replace_actor(self, idx: int, dead: Any) -> None:
        if self.actors[idx] is dead:
            self.display.log(f"encode actor {idx} died; retrying its GOPs on a new actor")
            self.actor_restarts += 1
            self.actors[idx] = _new_actor(self.cfg, self.cpus)

    def _on_committed(self, ref: Any) -> None:
        key = self.committing.pop(ref)
        video = self.videos.pop(key)
        try:
            result = self.ray.get(ref)
        except Exception as exc:
            self._fail(
                key, video.job.source_uri, video.job.source_bytes, _one_line(video.job.source_uri, exc)
            )
            return
        self.counters.videos_ok += 1
        self.counters.bytes_in += video.job.source_bytes
        self.counters.bytes_out += result["archive_bytes"]
        self.source_bytes_ok += video.job.source_bytes
        self.archive_bytes += result["archive_bytes"]
        self.gop_stats.extend(result["gops"])

    # ---- failures --------------------------------------------------------------------------------
    def _fail_video(self, video: _Video, reason: str) -> None:
        """Stop a video's remaining GOPs (queued ones are dropped, running ones ignored) and record it."""
        video.failed = True
        video.payloads.clear()
        video.sample_refs.clear()
        if video.in_flight == 0:
            self.videos.pop(video.job.video_key, None)
        self._fail(video.job.video_key, video.job.source_uri, video.job.source_bytes, reason)

    def _fail(self, key: str, uri: str, size: int, reason: str) -> None:
        reason = redact(reason.splitlines()[0])
        self.failures.append({"video_key": key, "source_uri": uri, "error": reason})
        self.counters.videos_failed += 1
        self.display.log(f"failed: {reason}")
        try:
            record_failure(
                out=self.cfg.out,
                endpoint_url=self.cfg.endpoint_url,
                run_id=self.run_id,
                video_key=key,
                source_uri=uri,
                source_bytes=size,
                error=reason,
                identity=self.identity,
            )
        except Exception as exc:  # the run goes on; the summary still lists the failure
            self.display.log(f"could not record the failure of {uri}: {_one_line(uri, exc)}")

    # ---- summary ---------------------------------------------------------------------------------
    def summary(self, *, entries_total: int, already_done: int, previously_failed: int) -> dict[str, Any]:
        c = self.counters
        frames = sum(g["frame_count"] for g in self.gop_stats)
        return {
            "run_id": self.run_id,
            "codec": self.identity,
            "target": self._target_record(),
            "quality_goal": self.cfg.quality_goal.as_record() if self.cfg.quality_goal else None,
            "quality_targets_missed": self.targets_missed,
            "files_listed": entries_total,
            "videos_ok": c.videos_ok,
            "videos_failed": c.videos_failed,
            "videos_skipped_done": already_done,
            "videos_skipped_failed": 0 if self.cfg.retry_failed else previously_failed,
            "not_videos": self.not_videos,
            "gops": len(self.gop_stats),
            "frames": frames,
            "source_bytes": self.source_bytes_ok,
            "archive_bytes": self.archive_bytes,
            "compression_ratio": (self.source_bytes_ok / self.archive_bytes) if self.archive_bytes else None,
            "bpp": _stats(
                [g["bpp"] for g in self.gop_stats], weights=[g["frame_count"] for g in self.gop_stats]
            ),
            "kbps": _stats(
                [g["kbps"] for g in self.gop_stats], weights=[g["frame_count"] for g in self.gop_stats]
            ),
            "quality": {
                name: _percentiles([g[name] for g in self.gop_stats if g.get(name) is not None])
                for name in ("psnr", "ms_ssim", "lpips", "dists", "vmaf")
            },
            "failures": self.failures,
            "actor_restarts": self.actor_restarts,
            "wall_seconds": c.elapsed,
            "frames_per_second": frames / c.elapsed,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _stats(values: list[float], *, weights: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {
        "mean_per_frame": float(np.average(v, weights=np.asarray(weights, dtype=float))),
        **_percentiles(values),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    import numpy as np

    p5, p50, p95 = np.percentile(np.asarray(values, dtype=float), [5, 50, 95])
    return {"p5": float(p5), "p50": float(p50), "p95": float(p95), "count": len(values)}


def _one_line(uri: str, exc: BaseException) -> str:
    """A user-facing line for a task error: the original exception's own message, never a traceback."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, (media.SourceError, ConfigError)) or text.startswith(uri):
        return redact(text)
    return redact(f"{uri}: {type(cause).__name__}: {text}")


def _verify(cfg: ArchiveConfig) -> dict[str, Any]:
    """Decode a sample of the archive (pipeline.verify) and report failures."""
    try:
        from pipeline.verify import run_verify
    except ImportError:
        return {"failures": ["verify unavailable: pipeline.verify is not installed"], "rows": 0}
    report = run_verify(
        cfg.out,
        fraction=cfg.verify_fraction,
        count=None,
        seed=0,
        device=cfg.device,
        endpoint_url=cfg.endpoint_url,
    )
    failures = [str(f) for f in report.failures]
    rows = report.rows
    return {"failures": failures, "rows": len(rows) if hasattr(rows, "__len__") else rows}
