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
import itertools
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
from pipeline.archive.fallback import FloorKeeper
from pipeline.archive.leases import Leases
from pipeline.archive.pack_writer import commit_pack
from pipeline.archive.plan import GopSpan, plan_gops
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.reference import References
from pipeline.archive.searches import QualitySearches
from pipeline.archive.summary import RunTally, build_summary
from pipeline.archive.video_writer import VideoJob, commit_video
from pipeline.archive.worklist import WorkCounts, WorkList
from pipeline.storage import StorageError, describe, is_transient


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
    recodes: int = 0  # times its coded GOPs were lost with a node before the commit
    fallback: bool = False  # under the quality floor: its GOPs go to the fallback codec (`fallback`)


@dataclasses.dataclass
class GopTask:
    video_key: str
    span: GopSpan
    attempt: int = 0
    frames_ref: Any = None
    decode_seconds_ref: Any = None  # CPU-seconds the decode task measured (for the compute columns)


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
    """Consecutive GOPs of one video decoded in one pass (`sources.decode_spans`): frames and
    CPU-seconds for each, flat (`num_returns=2·len(spans)`); the seconds are split by frame count.
    A migrated video's (`options["parent"]`) are decoded from its parent's GOPs (`archived_source`)."""
    options = dict(options or {})
    parent = options.pop("parent", None)
    with accounting.stopwatch() as wall:
        if parent is not None:
            from pipeline import archived_source

            decoded = archived_source.decode_spans(
                parent,
                [(s.first_frame, s.frame_count) for s in spans],
                endpoint_url=endpoint_url,
                size=options.get("size"),
                high_bit_depth=bool(options.get("high_bit_depth")),
            )
        else:
            decoded = sources.decode_spans(
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


def _commit_remote(job: VideoJob, metas: list[dict[str, Any]], *payloads: bytes) -> dict[str, Any]:
    if job.source_check is not None:  # a migration: PSNR against the original source first
        from pipeline.archive.source_quality import measure

        metas = measure(job, metas, list(payloads))
    return commit_video(job, metas, list(payloads))


def _commit_pack_remote(
    pack_id: str,
    jobs: list[VideoJob],
    metas: list[list[dict[str, Any]]],
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


#: Frames one decode task may hold for the GOPs after its own (`Scheduler.decode_run`): enough for a
#: few 640×360 GOPs, one 1080p GOP (then each GOP decodes alone, seeking as before).
DECODE_RUN_BYTES = 128 * 2**20


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
        reference_backfill: bool = False,
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
        placed = {"resources": dict(cfg.task_resources)} if cfg.task_resources else {}  # e.g. CPU-only nodes
        self.probe = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False, **placed)(_probe_remote)
        self.decode = ray.remote(
            num_cpus=0.5, num_returns=2, max_retries=2, retry_exceptions=False, **placed
        )(_decode_remote)
        self.decode_group = ray.remote(num_cpus=0.5, max_retries=2, retry_exceptions=False, **placed)(
            _decode_group_remote
        )
        self.commit = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False, **placed)(
            _commit_remote
        )
        self.videos: dict[str, Video] = {}
        self.ready: collections.deque[str] = collections.deque()  # planned videos awaiting GOP slots
        self.queue: collections.deque[GopTask] = collections.deque()
        self.probing: dict[Any, discovery.SourceEntry] = {}
        self.encoding: dict[
            Any, tuple[GopTask, int, Any, Any]
        ] = {}  # meta ref -> task, actor idx/handle, payload
        self.committing: dict[Any, str] = {}
        self.searches = QualitySearches(self)
        self.failures = FailureLog(cfg, run_id, identity, counters, display, on_recorded=self._release)
        self.tally = RunTally()
        self.compute = accounting.ComputeTally()
        self.reference_backfill = reference_backfill  # no video to do, but reference parts to complete
        self.references = References(self)
        self.metrics_sample = cfg.metrics_sample_spec()
        self.gop_cache: dict[Fraction, int | str] = {}
        self.codec_class = codec_class(cfg.codec)
        self.videos_started = 0
        self.probing_keys: set[str] = set()
        self.duplicates = 0
        self.listing_error: str | None = None
        self.lease_error: str | None = None  # the first lease the store refused to read or write
        self.storage_stop: str | None = None  # why the loop stopped early (`stop_for_storage`)
        self._listing_open = False
        self.pack_open: list[str] = []  # finished videos waiting for the open pack to fill
        self.pack_bytes = 0
        self.pack_commits: dict[Any, list[str]] = {}
        self.packs_started = 0
        self.had_failed: Any = None  # keys with a failed marker at the start (KeySet; packs clear them)
        self.commit_pack = ray.remote(num_cpus=0.25, max_retries=2, retry_exceptions=False, **placed)(
            _commit_pack_remote
        )
        self.utilisation: list[dict[str, Any]] = []  # the encode actors' busy measures, at the end
        self.floor = FloorKeeper(self)

    # ---- main loop -------------------------------------------------------------------------------
    def run(self, work: WorkList) -> None:
        """Archive the videos `work` streams (listing goes on while earlier videos encode)."""
        self._entries = work.entries()
        self.had_failed = work.failed
        self.references.resume(work.done, self.cfg.shard)
        self._next: discovery.SourceEntry | None = None
        self._listing_open = True
        limit = self.cfg.limit
        searching = self.searches.running
        while self._busy():
            while self._videos_ahead() < self._probe_ahead():
                if limit is not None and self.videos_started + len(self.probing) >= limit:
                    if self.videos_started >= limit:  # non-videos do not count against --limit
                        self._close_listing()
                    break
                entry = self._take()
                if entry is None:
                    break
                self._start(entry)
            self._fill_gop_slots()
            self._maybe_close_pack()
            self._keep_alive()
            references = self.references.running
            waiting = [
                *self.probing,
                *searching,
                *self.encoding,
                *self.committing,
                *self.pack_commits,
                *references,
            ]
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
                elif ref in self.pack_commits:
                    self._on_pack_committed(ref)
                elif ref in references:
                    self.references.on_done(ref)
            self.display.refresh()
        self.utilisation = self.pool.utilisation()
        self.pool.stop()
        self.floor.stop()

    def stop_for_storage(self, exc: Exception) -> None:
        """The loop met a storage fault it does not handle where it happened: stop the encoders and
        note it; the videos still in flight are neither done nor failed, so a rerun does them."""
        self.pool.stop()
        self.floor.stop()
        in_flight = len(self.videos) + len(self.probing)
        self.storage_stop = f"{describe(exc, self.cfg.out)} ({in_flight} videos in flight left for a rerun)"
        self.display.log(f"storage: run stopped: {self.storage_stop}")

    def _leased_elsewhere(self, entry: discovery.SourceEntry) -> bool:
        """Take the video's lease; False if taken, True (and the video left alone) if another live run
        holds it (a run that started at the same time as this one: the driver refused the others)."""
        if self.leases is None:
            return False
        try:
            holder = self.leases.acquire(entry.key)
        except Exception as exc:  # the store is down: the video is not started, a rerun does it
            self._lease_fault(exc)
            self.videos_started += 1
            self.failures.record(
                entry.key, entry.uri, entry.size or 0, one_line(entry.uri, exc), transient=True
            )
            return True
        if holder is None:
            return False
        reason = f"{entry.uri}: being archived by {holder.describe(self.leases.clock())}"
        self.tally.leased(reason)
        self.counters.videos_total -= 1
        self.display.log(f"left to another run: {reason}")
        return True

    def _release(self, key: str) -> None:
        """Give up a video's lease, best effort: once the store has refused a lease operation, leases
        are left to expire (harmless: a rerun on this host takes them over at once, another host after
        their ttl) rather than each costing the driver a full round of storage retries."""
        if self.leases is None:
            return
        if self.lease_error is not None:
            self.leases.held.pop(key, None)
            return
        try:
            self.leases.release(key)
        except Exception as exc:
            self._lease_fault(exc)

    def _lease_fault(self, exc: Exception) -> None:
        """Note a lease the store refused (the run then exits 3: storage failed); anything that is not
        a storage error is a bug and is raised."""
        if not (is_transient(exc) or isinstance(exc, (StorageError, OSError))):
            raise exc
        if self.lease_error is None:
            self.lease_error = describe(exc, f"{self.cfg.out}/leases")
            self.display.log(f"storage: leases cannot be written ({self.lease_error})")

    def _keep_alive(self) -> None:
        """Renew our leases; kill encode actors that stopped making progress (their GOPs are retried)."""
        if self.leases is not None:
            try:
                self.leases.renew()
            except Exception as exc:  # the store is down: the run goes on, its writes say what is lost
                self._lease_fault(exc)
        for idx in self.pool.kill_stalled():
            self.display.log(
                f"encode actor {idx} finished nothing for {self.cfg.stall_seconds:.0f} s; killed, its GOPs retried"
            )

    def _take(self) -> discovery.SourceEntry | None:
        """The next entry of the listing (None at its end, or when it failed: the run then finishes what
        it started and reports the listing error)."""
        if self._next is None and self._listing_open:
            try:
                self._next = next(self._entries, None)
            except Exception as exc:  # a page that cannot be listed after the storage retries
                self.listing_error = one_line(self.cfg.src, exc)
                self.display.log(f"listing stopped: {self.listing_error}")
            if self._next is None:
                self._close_listing()
        entry, self._next = self._next, None
        return entry

    def _close_listing(self) -> None:
        self._listing_open = False
        self._next = None

    def _start(self, entry: discovery.SourceEntry) -> None:
        """Probe one listed video (or fail it at once when its list row is unusable)."""
        self.counters.videos_total += 1
        if entry.key in self.videos or entry.key in self.probing_keys:
            self.counters.videos_total -= 1
            self.duplicates += 1  # an input list naming a video twice: archived once
            return
        if self._leased_elsewhere(entry):
            return
        if entry.error or (entry.target is not None and self.cfg.quality_goal is not None):
            self.videos_started += 1
            reason = (
                entry.error
                or f"{entry.uri}: a per-video rate target cannot be combined with a quality target"
            )
            self.failures.record(entry.key, entry.uri, entry.size or 0, reason)
            return
        self.probing[self.probe.remote(entry, self.cfg.endpoint_url, self.cfg.max_pixels)] = entry
        self.probing_keys.add(entry.key)

    def _busy(self) -> bool:
        return bool(
            self._listing_open
            or self.probing
            or self.searches
            or self.ready
            or self.queue
            or self.encoding
            or self.committing
            or self.references
            or self.pack_open
            or self.pack_commits
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
                self.queue.extend(self.gop_task(video, span) for span in video.job.spans)
            task = self.queue.popleft()
            video = self.videos.get(task.video_key)
            if video is None or video.failed:
                continue
            self._submit(task, video)
        self._decode_ahead()

    def _decode_ahead(self) -> None:
        """Start the decodes of the next queued GOPs while the actors code: as many GOPs as the actors
        hold in flight, so an actor that finishes a GOP finds the next one decoded instead of waiting
        for its decode (which would leave it idle for a decode's time on every GOP)."""
        ahead = len(self.pool) * self.cfg.gops_in_flight_per_actor
        while len(self.queue) < ahead and self.ready:
            video = self.videos[self.ready.popleft()]
            self.queue.extend(self.gop_task(video, span) for span in video.job.spans)
        for task in itertools.islice(self.queue, ahead):
            video = self.videos.get(task.video_key)
            if video is not None and not video.failed:
                self._decode_for(task, video)

    def _decode_for(self, task: GopTask, video: Video) -> None:
        """Give `task` its frames: those an earlier decode run left for it, else a decode run of its own."""
        if task.frames_ref is None:
            task.frames_ref, task.decode_seconds_ref = video.sample_refs.pop(task.span.index, (None, None))
        if task.frames_ref is None:
            task.frames_ref, task.decode_seconds_ref = self.decode_run(video, task.span)

    def gop_task(self, video: Video, span: GopSpan) -> GopTask:
        """A GOP to code, with the decoded frames a quality search already holds for it (if any)."""
        frames_ref, seconds_ref = video.sample_refs.pop(span.index, (None, None))
        return GopTask(video.job.video_key, span, 0, frames_ref, seconds_ref)

    def pool_of(self, video: Video) -> EncodePool:
        """The pool coding `video`'s GOPs: the fallback's once the video fell under the floor."""
        if video.fallback:
            assert self.floor.pool is not None
            return self.floor.pool
        return self.pool

    def _submit(self, task: GopTask, video: Video) -> None:
        self._decode_for(task, video)
        idx, actor = self.pool_of(video).pick()
        header = video.job.header
        label = f"{video.job.source_uri} GOP {task.span.index} (frames {task.span.first_frame}+{task.span.frame_count})"
        goal = self.cfg.quality_goal if self.cfg.quality_goal and self.cfg.quality_goal.per_gop else None
        if video.fallback:
            goal = None  # the fallback codes at its rate target (`floor.fallback_target`)
        meta_ref, payload_ref = actor.encode.options(num_returns=2).remote(
            task.frames_ref, video.target, header["fps_num"], header["fps_den"], task.span.index, label, goal,
            task.decode_seconds_ref, self.expensive_metrics_on(video, task.span.index),
        )  # fmt: skip
        self.encoding[meta_ref] = (task, idx, actor, payload_ref)
        video.in_flight += 1

    def expensive_metrics_on(self, video: Video, gop_index: int) -> bool:
        """Whether the GOP's expensive metrics are measured: it is in the run's seeded sample, or the
        classic reference compares at its measured quality (which needs its metric)."""
        key = video.job.video_key
        return self.metrics_sample.selects(key, gop_index) or gop_index in self.references.planned.get(
            key, ()
        )

    def decode_run(self, video: Video, span: GopSpan) -> tuple[Any, Any]:
        """(frames, seconds) refs of `span`, decoded in one pass with the GOPs after it that continue it
        (they start between keyframes: `GopSpan.continues`), up to `DECODE_RUN_BYTES` of frames; the
        later GOPs' refs wait in `video.sample_refs` for their turn."""
        if self.cfg.quality_goal is not None:  # a search decoded some GOPs already: keep it simple
            return self.decode_gop(video, span)
        spans = video.job.spans
        header = video.job.header
        frame_bytes = (
            header["width"] * header["height"] * 3 * (2 if header.get("coded_bit_depth", 8) > 8 else 1)
        )
        run = [span]
        budget = DECODE_RUN_BYTES - span.frame_count * frame_bytes
        for following in spans[span.index + 1 :]:
            cost = following.frame_count * frame_bytes
            if not following.continues or cost > budget or following.index in video.sample_refs:
                break
            run.append(following)
            budget -= cost
        if len(run) == 1:
            return self.decode_gop(video, span)
        refs = self.decode_group.options(num_returns=2 * len(run)).remote(
            video.job.source_uri, run, self.cfg.endpoint_url, self._decode_options(video)
        )
        for position, later in enumerate(run[1:], start=1):
            video.sample_refs[later.index] = (refs[2 * position], refs[2 * position + 1])
        return refs[0], refs[1]

    def decode_gop(self, video: Video, span: GopSpan) -> Any:
        """A decode task for one GOP, as (frames, decode seconds) refs: the probed frame size and the
        pixel budget are enforced on the decoded frames, and a source deeper than 8 bits decodes to
        RGB48 when the codec keeps it."""
        return self.decode.remote(
            video.job.source_uri, span, self.cfg.endpoint_url, self._decode_options(video)
        )

    def _decode_options(self, video: Video) -> dict[str, Any]:
        header = video.job.header
        options: dict[str, Any] = {
            "size": (header["width"], header["height"]),
            "max_pixels": self.cfg.max_pixels,
            "high_bit_depth": header.get("coded_bit_depth", 8) > 8,
        }
        if video.job.parent is not None:
            options["parent"] = video.job.parent
        return options

    # ---- results ---------------------------------------------------------------------------------
    def _on_probe(self, ref: Any) -> None:
        entry = self.probing.pop(ref)
        self.probing_keys.discard(entry.key)
        probe_seconds = 0.0
        try:
            outcome, probe_seconds = self.ray.get(ref)
        except Exception as exc:
            outcome = discovery.ProbeOutcome(entry, "failed", reason=one_line(entry.uri, exc))
        entry = outcome.entry  # with its size, when an input list had none
        if outcome.kind == "skip":
            self.tally.not_video(outcome.reason or entry.uri)
            self.counters.videos_total -= 1
            self.display.log(f"skipped: {outcome.reason}")
            self._release(entry.key)
            return
        self.videos_started += 1
        if outcome.kind == "failed":
            self.failures.record(
                entry.key,
                entry.uri,
                entry.size or 0,
                outcome.reason or "unreadable",
                transient=outcome.transient,
            )
            return
        info = outcome.info
        assert info is not None
        gop_frames = self._gop_frames(info.fps)
        if isinstance(gop_frames, str):
            self.failures.record(entry.key, entry.uri, entry.size, f"{entry.uri}: {gop_frames}")
            return
        spans = tuple(plan_gops(info.frame_count, gop_frames, info.frame_pts, info.keyframe_pts))
        header = dict(
            info.header_fields(),
            **{k: self.identity.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
            decoder_options=self.identity.get("decoder_options") or {},
            entropy_coder=self.identity.get("entropy_coder"),
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            target=_target_record(entry.target) if entry.target else self.cfg.target_record(),
            gop_frames=gop_frames,
            run_id=self.run_id,
            **self._precision(info),
        )
        if entry.metadata:
            header["source_metadata"] = dict(entry.metadata)
        if outcome.lineage is not None:  # a migration: what is known of the source, and the parent
            header.update(outcome.inherited or {}, lineage=outcome.lineage)
        if header.get("source_note"):
            self.tally.warning(
                {"video_key": entry.key, "source_uri": entry.uri, "warning": header["source_note"]}
            )
            self.display.log(f"warning: {entry.uri}: {header['source_note']}")
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
            metadata=entry.metadata,
            compute={"probe": probe_seconds},
            storage_class=self.cfg.storage_class,
            lineage=outcome.lineage,
            parent=entry.parent,
            source_check=self._source_check() if entry.parent is not None else None,
        )
        self.counters.frames_total += info.frame_count
        goal = self.cfg.quality_goal
        if goal is not None:
            job = dataclasses.replace(job, header=dict(job.header, quality_goal=goal.as_record()))
        if self.floor.floor is not None:
            job = dataclasses.replace(job, header=dict(job.header, quality_floor=self.floor.header_record()))
        video = Video(job, target=entry.target or self.cfg.target)
        self.videos[entry.key] = video
        self.references.plan(video)
        if goal is None or goal.per_gop:
            self.ready.append(entry.key)
            return
        self.searches.add(video)

    def _source_check(self) -> dict[str, Any]:
        """A migrated video's `source_psnr` settings (`source_quality`)."""
        spec = self.cfg.migration
        return {"fraction": spec.source_fraction if spec else 0.0, "model": self.cfg.model}

    def _precision(self, info: sources.VideoInfo) -> dict[str, Any]:
        """What the archive keeps of the source's precision (`coded_bit_depth`, `coded_chroma`), and a note of
        anything it does not keep: a truncated source, bits or chroma the codec cannot store."""
        kept = int(self.identity.get("max_bit_depth") or 8)
        coded = min(info.bit_depth, kept) if info.bit_depth > 8 else 8
        chroma = self.identity.get("coded_chroma")
        notes = [info.source_note()] if info.source_note() else []
        if coded < info.bit_depth:
            notes.append(f"{info.bit_depth}-bit source coded at {coded} bits ({self.identity.get('codec')})")
        if chroma and info.chroma in ("4:4:4", "4:2:2", "rgb", "4:4:0") and chroma != info.chroma:
            notes.append(f"{info.chroma} source coded as {chroma}")
        return {"coded_bit_depth": coded, "coded_chroma": chroma, "source_note": "; ".join(notes) or None}

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
        video = self.videos[task.video_key]
        pool = self.pool_of(video)
        pool.release(idx)
        video.in_flight -= 1
        if video.failed and video.in_flight == 0:
            self.videos.pop(task.video_key, None)
        try:
            meta = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.replace_actor(idx, actor, pool)
            if video.failed:
                return
            if task.attempt >= self.cfg.max_gop_retries:
                self.fail_video(video, f"{video.job.source_uri}: encode actor died {task.attempt + 1} times")
                return
            self.queue.appendleft(dataclasses.replace(task, attempt=task.attempt + 1))
            return
        except Exception as exc:
            if not video.failed:
                self.fail_video(video, one_line(video.job.source_uri, exc), transient=is_transient(exc))
            return
        if video.failed:
            return
        if "error" in meta:
            self.fail_video(video, meta["error"])
            return
        if video.search is not None and not video.fallback:
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
            if self.floor.holds(video):  # under the quality floor: failed, or queued for the fallback
                return
            order = range(len(video.job.spans))
            self.references.before_commit(video)
            if self.cfg.pack_mb:
                self._pack(video)
                return
            commit_ref = self.commit.remote(
                video.job, [video.metas[i] for i in order], *[video.payloads[i] for i in order]
            )
            self.committing[commit_ref] = video.job.video_key

    # ---- packs (`--pack N_MB`) ---------------------------------------------------------------------
    def _pack(self, video: Video) -> None:
        """Add a finished video to the open pack; commit the pack once it holds N MB of payload."""
        self.pack_open.append(video.job.video_key)
        self.pack_bytes += sum(int(m.get("payload_bytes") or 0) for m in video.metas.values())
        if self.pack_bytes >= self.cfg.pack_mb * 1e6 or len(self.pack_open) >= MAX_PACK_MEMBERS:
            self._commit_pack()

    def _commit_pack(self) -> None:
        if not self.pack_open:
            return
        self.packs_started += 1
        pack_id = f"{self.run_id}-{self.packs_started:06d}"
        videos = [self.videos[key] for key in self.pack_open]
        order = [range(len(v.job.spans)) for v in videos]
        ref = self.commit_pack.remote(
            pack_id,
            [v.job for v in videos],
            [[v.metas[i] for i in o] for v, o in zip(videos, order, strict=True)],
            [bool(self.had_failed and v.job.video_key in self.had_failed) for v in videos],
            *[v.payloads[i] for v, o in zip(videos, order, strict=True) for i in o],
        )
        self.pack_commits[ref] = list(self.pack_open)
        self.pack_open, self.pack_bytes = [], 0

    def _maybe_close_pack(self) -> None:
        """At the end of the work, the last pack goes out however small it is."""
        if self.pack_open and not (
            self._listing_open or self.probing or self.searches or self.ready or self.queue or self.encoding
        ):
            self._commit_pack()

    def _on_pack_committed(self, ref: Any) -> None:
        keys = self.pack_commits.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as exc:
            for key in keys:
                self._commit_failed(key, exc)
            return
        for key in keys:
            member = result["members"].get(key)
            if member is None:
                video = self.videos[key]
                reason = result["failed"].get(key) or f"{video.job.source_uri}: not in its pack"
                self._drop_failed(key, reason)
                continue
            self._committed(self.videos.pop(key), member)

    def replace_actor(self, idx: int, dead: Any, pool: EncodePool | None = None) -> None:
        if (pool or self.pool).replace(idx, dead):
            self.display.log(f"encode actor {idx} died; retrying its GOPs on a new actor")

    def _on_committed(self, ref: Any) -> None:
        key = self.committing.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as exc:
            self._commit_failed(key, exc)
            return
        self._committed(self.videos.pop(key), result)

    def _commit_failed(self, key: str, exc: Exception) -> None:
        """A video's commit (alone or in a pack) raised: payloads lost with a node are encoded again (up
        to `max_gop_retries` times); anything else fails the video, transient storage errors without a
        failed marker so that a rerun retries it."""
        video = self.videos[key]
        if isinstance(exc, self.ray.exceptions.ObjectLostError):
            if not self._recode(video):
                self._drop_failed(key, f"{video.job.source_uri}: payloads lost {video.recodes} times")
            return
        self._drop_failed(key, one_line(video.job.source_uri, exc), transient=is_transient(exc))

    def _drop_failed(self, key: str, reason: str, *, transient: bool = False) -> None:
        video = self.videos.pop(key)
        self.references.discard(key)
        self.failures.record(key, video.job.source_uri, video.job.source_bytes, reason, transient=transient)

    def _recode(self, video: Video) -> bool:
        """Queue all of a finished video's GOPs again (its coded payloads were lost with a node before
        they were written); False once it has been recoded `max_gop_retries` times."""
        if video.recodes >= self.cfg.max_gop_retries:
            return False
        video.recodes += 1
        video.metas.clear()
        video.payloads.clear()
        self.counters.gops_done -= len(video.job.spans)
        self.counters.frames_done -= sum(span.frame_count for span in video.job.spans)
        self.queue.extendleft(GopTask(video.job.video_key, span) for span in reversed(video.job.spans))
        self.display.log(f"{video.job.source_uri}: coded GOPs lost with a node; encoding the video again")
        return True

    def _committed(self, video: Video, result: dict[str, Any]) -> None:
        key = video.job.video_key
        self.counters.videos_ok += 1
        self.counters.bytes_in += video.job.source_bytes
        self.counters.bytes_out += result["archive_bytes"]
        self.tally.committed(video.job.source_bytes, result)
        self.compute.add_rows(key, result.get("compute_rows", []), result.get("commit_device_seconds"))
        self.references.on_committed(key)
        self._release(key)

    def tally_reference(self, cpu_seconds: float) -> None:
        """Reference rows were written: count their CPU-seconds (stage "reference")."""
        self.compute.add_reference(cpu_seconds)

    def fail_video(self, video: Video, reason: str, *, transient: bool = False) -> None:
        """Stop a video's remaining GOPs (queued ones are dropped, running ones ignored) and record it."""
        video.failed = True
        video.payloads.clear()
        video.sample_refs.clear()
        if video.in_flight == 0:
            self.videos.pop(video.job.video_key, None)
        self.references.discard(video.job.video_key)
        self.failures.record(
            video.job.video_key, video.job.source_uri, video.job.source_bytes, reason, transient=transient
        )

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

    def summary(self, counts: WorkCounts) -> dict[str, Any]:
        summary = build_summary(
            cfg=self.cfg,
            run_id=self.run_id,
            identity=self.identity,
            counters=self.counters,
            tally=self.tally,
            failures=self.failures.records,
            targets_missed=self.searches.targets_missed,
            actor_restarts=self.pool.restarts,
            peak_gops_per_actor=self.pool.peak_load,
            compute=self.compute.record(self._reserved()),
            reference=self.references.summary(),
            entries_total=counts.files_listed,
            already_done=counts.already_done,
            previously_failed=counts.previously_failed,
        )
        summary["files_in_other_shards"] = counts.other_shards
        summary["list_rows_without_uri"] = counts.rows_without_uri
        summary["duplicate_sources"] = self.duplicates
        summary["failures_total"] = self.failures.total
        summary["failures_transient"] = self.failures.transient_total
        if self.listing_error:
            summary["listing_error"] = self.listing_error
        if self.lease_error:
            summary["lease_error"] = self.lease_error
        if self.storage_stop:
            summary["storage_stop"] = self.storage_stop
        summary["encode_actors"] = self.utilisation
        summary["quality_floor"] = self.floor.summary()
        return summary


#: A pack closes at N MB of payload or at this many videos, whichever comes first.
MAX_PACK_MEMBERS = 100_000


def _target_record(target: RateTarget) -> dict[str, Any]:
    return {"kind": target.kind, "value": target.value}
