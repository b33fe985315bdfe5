"""The driver loop: keeps probes, GOPs and commits in flight within bounds, and reacts to results.

It owns the table of videos in progress and the queue of GOPs; quality searches (`searches`), failure
records (`failures`), the run's totals (`summary`), the actor pool (`actors`) and the per-video leases
(`leases`) are kept by their own classes. Memory is bounded explicitly: at most
`actors × gops_in_flight_per_actor` GOPs are decoded or being coded at once, and new videos are probed
only a few ahead (backpressure through `ray.wait`).

The loop never blocks on an actor: GOP lengths come from the codec's class, results are read only when
`ray.wait` reports them ready, and an actor that finishes nothing for `stall_seconds` is killed (its
GOPs are retried like a dead actor's). A video's lease is taken before it is probed and given up once it
is committed or failed; a video whose lease another live run holds is left to that run.
"""

from __future__ import annotations

import collections
import dataclasses
from fractions import Fraction
from typing import Any

from codec.base import RateTarget
from codec.errors import CodecError
from codec.registry import codec_class
from pipeline import sources
from pipeline.archive import accounting, discovery
from pipeline.archive.actors import EncodePool
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.errors import one_line
from pipeline.archive.failures import FailureLog
from pipeline.archive.leases import Leases
from pipeline.archive.plan import GopSpan, plan_gops
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.reference import References
from pipeline.archive.searches import QualitySearches
from pipeline.archive.summary import RunTally, build_summary
from pipeline.archive.video_writer import VideoJob, commit_video


@dataclasses.dataclass
class Video:
    """A video in progress: its plan, the GOP results collected so far, its fate."""

    job: VideoJob
    target: RateTarget | None = None  # None until a quality search has chosen it
    search: dict[str, Any] | None = None  # the quality search record (per-video goals)
    search_attempts: int = 0
    #: gop index -> (decoded frames, decode CPU-seconds) refs of the quality search's sample GOPs
    sample_refs: dict[int, Any] = dataclasses.field(default_factory=dict)
    metas: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    payloads: dict[int, Any] = dataclasses.field(default_factory=dict)  # gop index -> ObjectRef[bytes]
    in_flight: int = 0
    failed: bool = False


@dataclasses.dataclass
class GopTask:
    video_key: str
    span: GopSpan
    attempt: int = 0
    frames_ref: Any = None
    decode_seconds_ref: Any = None  # CPU-seconds the decode task measured (for the compute columns)


def _probe_remote(
    entry: discovery.SourceEntry, endpoint_url: str | None
) -> tuple[discovery.ProbeOutcome, float]:
    """(outcome, CPU-seconds spent probing)."""
    with accounting.stopwatch() as wall:
        outcome = discovery.probe_entry(entry, endpoint_url=endpoint_url)
    return outcome, accounting.held("cpu").charge(wall[0])


def _decode_remote(uri: str, span: GopSpan, endpoint_url: str | None):
    """(frames, CPU-seconds spent decoding): two object refs (`num_returns=2`)."""
    with accounting.stopwatch() as wall:
        frames = sources.decode_frames(
            uri, span.first_frame, span.frame_count, expected_pts=span.pts, endpoint_url=endpoint_url
        )
    return frames, accounting.held("cpu").charge(wall[0])


def _commit_remote(job: VideoJob, metas: list[dict[str, Any]], *payloads: bytes) -> dict[str, Any]:
    return commit_video(job, metas, list(payloads))


class Scheduler:
    """Schedules one run's videos over the encode pool; `run(todo)`, then `summary(...)`."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        run_id: str,
        identity: dict[str, Any],
        pool: EncodePool,
        counters: Counters,
        display: ProgressDisplay,
        *,
        out_fs: Any,
        out_root: str,
        leases: Leases | None = None,
    ) -> None:
        import ray

        self.ray = ray
        self.cfg = cfg
        self.out_fs, self.out_root = out_fs, out_root
        self.run_id = run_id
        self.identity = identity
        self.pool = pool
        self.counters = counters
        self.display = display
        self.leases = leases
        self.probe = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False)(_probe_remote)
        self.decode = ray.remote(num_cpus=0.5, num_returns=2, max_retries=2, retry_exceptions=False)(
            _decode_remote
        )
        self.commit = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False)(_commit_remote)
        self.videos: dict[str, Video] = {}
        self.ready: collections.deque[str] = collections.deque()  # planned videos awaiting GOP slots
        self.queue: collections.deque[GopTask] = collections.deque()
        self.probing: dict[Any, discovery.SourceEntry] = {}
        self.encoding: dict[
            Any, tuple[GopTask, int, Any, Any]
        ] = {}  # meta ref -> task, actor idx/handle, payload
        self.committing: dict[Any, str] = {}
        self.searches = QualitySearches(self)
        self.failures = FailureLog(cfg, run_id, identity, counters, display)
        self.tally = RunTally()
        self.compute = accounting.ComputeTally()
        self.references = References(self)
        self.gop_cache: dict[Fraction, int | str] = {}
        self.codec_class = codec_class(cfg.codec)
        self.videos_started = 0
        self.utilisation: list[dict[str, Any]] = []  # the encode actors' busy measures, at the end

    # ---- main loop -------------------------------------------------------------------------------
    def run(self, todo: list[discovery.SourceEntry]) -> None:
        pending = collections.deque(todo)
        self.counters.videos_total = len(todo)
        limit = self.cfg.limit
        searching = self.searches.running
        while self._busy(pending):
            while pending and self._videos_ahead() < self._probe_ahead():
                if limit is not None and self.videos_started + len(self.probing) >= limit:
                    if self.videos_started >= limit:  # non-videos do not count against --limit
                        self.counters.videos_total -= len(pending)
                        pending.clear()
                    break
                entry = pending.popleft()
                if self._leased_elsewhere(entry):
                    continue
                self.probing[self.probe.remote(entry, self.cfg.endpoint_url)] = entry
            self._fill_gop_slots()
            self._keep_alive()
            references = self.references.running
            waiting = [*self.probing, *searching, *self.encoding, *self.committing, *references]
            if not waiting:
                continue
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.probing:
                    self._on_probe(ref)
                elif ref in searching:
                    self.searches.on_done(ref)
                elif ref in self.encoding:
                    self._on_encoded(ref)
                elif ref in self.committing:
                    self._on_committed(ref)
                elif ref in references:
                    self.references.on_done(ref)
            self.display.refresh()
        self.utilisation = self.pool.utilisation()
        self.pool.stop()

    def _leased_elsewhere(self, entry: discovery.SourceEntry) -> bool:
        """Take the video's lease; False if taken, True (and the video left alone) if another live run
        holds it (a run that started at the same time as this one: the driver refused the others)."""
        if self.leases is None:
            return False
        holder = self.leases.acquire(entry.key)
        if holder is None:
            return False
        reason = f"{entry.uri}: being archived by {holder.describe(self.leases.clock())}"
        self.tally.leased_elsewhere.append(reason)
        self.counters.videos_total -= 1
        self.display.log(f"left to another run: {reason}")
        return True

    def _release(self, key: str) -> None:
        if self.leases is not None:
            self.leases.release(key)

    def _keep_alive(self) -> None:
        """Renew our leases; kill encode actors that stopped making progress (their GOPs are retried)."""
        if self.leases is not None:
            self.leases.renew()
        for idx in self.pool.kill_stalled():
            self.display.log(
                f"encode actor {idx} finished nothing for {self.cfg.stall_seconds:.0f} s; killed, its GOPs retried"
            )

    def _busy(self, pending: collections.deque) -> bool:
        return bool(
            pending
            or self.probing
            or self.searches
            or self.ready
            or self.queue
            or self.encoding
            or self.committing
            or self.references
        )

    def _probe_ahead(self) -> int:
        """How many videos may wait ahead of the encoders. A per-video quality search keeps its sample
        GOPs' decoded frames until the video is dispatched (they are reused for the real encode), so
        then only one video per actor, plus one, may wait: decoded frames stay bounded by the actors."""
        goal = self.cfg.quality_goal
        if goal is not None and not goal.per_gop:
            return min(self.cfg.probe_ahead, len(self.pool) + 1)
        return self.cfg.probe_ahead

    def _videos_ahead(self) -> int:
        """Videos probed or probing but not yet dispatched (bounded by `probe_ahead`)."""
        return len(self.probing) + len(self.searches) + len(self.ready)

    def _fill_gop_slots(self) -> None:
        """Keep every actor busy: searches first (they unblock whole videos), then GOPs in video order."""
        capacity = len(self.pool) * self.cfg.gops_in_flight_per_actor
        while len(self.encoding) + len(self.searches.running) < capacity:
            if self.searches.queue:
                self.searches.submit(self.searches.queue.popleft())
                continue
            if not self.queue:
                if not self.ready:
                    return
                video = self.videos[self.ready.popleft()]
                for span in video.job.spans:
                    frames_ref, seconds_ref = video.sample_refs.pop(span.index, (None, None))
                    self.queue.append(GopTask(video.job.video_key, span, 0, frames_ref, seconds_ref))
            task = self.queue.popleft()
            video = self.videos.get(task.video_key)
            if video is None or video.failed:
                continue
            self._submit(task, video)

    def _submit(self, task: GopTask, video: Video) -> None:
        if task.frames_ref is None:
            task.frames_ref, task.decode_seconds_ref = self.decode.remote(
                video.job.source_uri, task.span, self.cfg.endpoint_url
            )
        idx, actor = self.pool.pick()
        header = video.job.header
        label = f"{video.job.source_uri} GOP {task.span.index} (frames {task.span.first_frame}+{task.span.frame_count})"
        goal = self.cfg.quality_goal if self.cfg.quality_goal and self.cfg.quality_goal.per_gop else None
        meta_ref, payload_ref = actor.encode.options(num_returns=2).remote(
            task.frames_ref, video.target, header["fps_num"], header["fps_den"], task.span.index, label, goal,
            task.decode_seconds_ref,
        )  # fmt: skip
        self.encoding[meta_ref] = (task, idx, actor, payload_ref)
        video.in_flight += 1

    # ---- results ---------------------------------------------------------------------------------
    def _on_probe(self, ref: Any) -> None:
        entry = self.probing.pop(ref)
        probe_seconds = 0.0
        try:
            outcome, probe_seconds = self.ray.get(ref)
        except Exception as exc:
            outcome = discovery.ProbeOutcome(entry, "failed", reason=one_line(entry.uri, exc))
        if outcome.kind == "skip":
            self.tally.not_videos.append(outcome.reason or entry.uri)
            self.counters.videos_total -= 1
            self.display.log(f"skipped: {outcome.reason}")
            self._release(entry.key)
            return
        self.videos_started += 1
        if outcome.kind == "failed":
            self.failures.record(entry.key, entry.uri, entry.size, outcome.reason or "unreadable")
            self._release(entry.key)
            return
        info = outcome.info
        assert info is not None
        gop_frames = self._gop_frames(info.fps)
        if isinstance(gop_frames, str):
            self.failures.record(entry.key, entry.uri, entry.size, f"{entry.uri}: {gop_frames}")
            self._release(entry.key)
            return
        spans = tuple(plan_gops(info.frame_count, gop_frames, info.frame_pts))
        header = dict(
            info.header_fields(),
            **{k: self.identity.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
            decoder_options=self.identity.get("decoder_options") or {},
            entropy_coder=self.identity.get("entropy_coder"),
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            target=self.cfg.target_record(),
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
            compute={"probe": probe_seconds},
        )
        self.counters.frames_total += info.frame_count
        goal = self.cfg.quality_goal
        if goal is not None:
            job = dataclasses.replace(job, header=dict(job.header, quality_goal=goal.as_record()))
        video = Video(job, target=self.cfg.target)
        self.videos[entry.key] = video
        self.references.plan(video)
        if goal is None or goal.per_gop:
            self.ready.append(entry.key)
            return
        self.searches.add(video)

    def _gop_frames(self, fps: Fraction) -> int | str:
        """The GOP length for a video at `fps`, or a one-line reason it cannot be used. Computed here
        from the codec's class: the driver never waits on an actor (behind its queued encodes)."""
        if fps not in self.gop_cache:
            try:
                self.gop_cache[fps] = self.codec_class.gop_frames_for(self.cfg.gop_frames, fps)
            except CodecError as exc:
                self.gop_cache[fps] = str(exc)
        return self.gop_cache[fps]

    def _on_encoded(self, ref: Any) -> None:
        task, idx, actor, payload_ref = self.encoding.pop(ref)
        self.pool.release(idx)
        video = self.videos[task.video_key]
        video.in_flight -= 1
        if video.failed and video.in_flight == 0:
            self.videos.pop(task.video_key, None)
        try:
            meta = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.replace_actor(idx, actor)
            if video.failed:
                return
            if task.attempt >= self.cfg.max_gop_retries:
                self.fail_video(video, f"{video.job.source_uri}: encode actor died {task.attempt + 1} times")
                return
            self.queue.appendleft(dataclasses.replace(task, attempt=task.attempt + 1))
            return
        except Exception as exc:
            if not video.failed:
                self.fail_video(video, one_line(video.job.source_uri, exc))
            return
        if video.failed:
            return
        if "error" in meta:
            self.fail_video(video, meta["error"])
            return
        if video.search is not None:
            meta["params"] = {**meta["params"], "quality_search": video.search}
        elif not meta["params"].get("quality_search", {}).get("reached", True):
            note = meta["params"]["quality_search"]["note"]
            self.searches.missed(video.job.video_key, note, gop_index=task.span.index)
        video.metas[task.span.index] = meta
        video.payloads[task.span.index] = payload_ref
        self.references.on_encoded(video, task, meta)
        self.counters.gops_done += 1
        self.counters.frames_done += task.span.frame_count
        if len(video.metas) == len(video.job.spans):
            order = range(len(video.job.spans))
            commit_ref = self.commit.remote(
                video.job, [video.metas[i] for i in order], *[video.payloads[i] for i in order]
            )
            self.committing[commit_ref] = video.job.video_key

    def replace_actor(self, idx: int, dead: Any) -> None:
        if self.pool.replace(idx, dead):
            self.display.log(f"encode actor {idx} died; retrying its GOPs on a new actor")

    def _on_committed(self, ref: Any) -> None:
        key = self.committing.pop(ref)
        video = self.videos.pop(key)
        try:
            result = self.ray.get(ref)
        except Exception as exc:
            self.references.discard(key)
            self.failures.record(
                key, video.job.source_uri, video.job.source_bytes, one_line(video.job.source_uri, exc)
            )
            self._release(key)
            return
        self._release(key)
        self.counters.videos_ok += 1
        self.counters.bytes_in += video.job.source_bytes
        self.counters.bytes_out += result["archive_bytes"]
        self.tally.committed(video.job.source_bytes, result)
        self.compute.add_rows(key, result.get("compute_rows", []), result.get("commit_device_seconds"))
        self.references.on_committed(key)

    def tally_reference(self, cpu_seconds: float) -> None:
        """Reference rows were written: count their CPU-seconds (stage "reference")."""
        self.compute.add_reference(cpu_seconds)

    def fail_video(self, video: Video, reason: str) -> None:
        """Stop a video's remaining GOPs (queued ones are dropped, running ones ignored) and record it."""
        video.failed = True
        video.payloads.clear()
        video.sample_refs.clear()
        if video.in_flight == 0:
            self.videos.pop(video.job.video_key, None)
        self.references.discard(video.job.video_key)
        self.failures.record(video.job.video_key, video.job.source_uri, video.job.source_bytes, reason)
        self._release(video.job.video_key)

    # ---- summary ---------------------------------------------------------------------------------
    def _reserved(self) -> dict[str, float]:
        """Device-seconds the encode actors held over the run (busy or idle): the bill of a pool kept
        for the whole run, against which the stages' busy device-seconds show the utilisation."""
        if not len(self.pool):
            return {}
        gpus = self.cfg.num_gpus_per_actor
        devices = self.compute.actor_kinds or {"cpu" if gpus == 0 else "gpu"}
        kind = sorted(devices)[0]
        per_actor = gpus if gpus > 0 else self.pool.cpus
        return {kind: self.counters.elapsed * len(self.pool) * per_actor}

    def summary(self, *, entries_total: int, already_done: int, previously_failed: int) -> dict[str, Any]:
        summary = build_summary(
            cfg=self.cfg,
            run_id=self.run_id,
            identity=self.identity,
            counters=self.counters,
            tally=self.tally,
            failures=self.failures.records,
            targets_missed=self.searches.targets_missed,
            actor_restarts=self.pool.restarts,
            compute=self.compute.record(self._reserved()),
            reference=self.references.summary(),
            entries_total=entries_total,
            already_done=already_done,
            previously_failed=previously_failed,
        )
        summary["encode_actors"] = self.utilisation
        return summary
