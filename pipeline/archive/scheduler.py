"""The driver loop: keeps probes, GOPs and commits in flight within bounds, and reacts to results.

The loop is all it does. What happens around it is kept by collaborators that share the run's
services (`run_context.RunContext`) and never hold the scheduler: the videos in progress and the GOP
queue (`video_state.VideoBook`), which decode task gives a GOP its frames (`decodes`), the container
header and job of a probed video (`video_setup`), quality searches (`searches`), the classic reference
(`reference`), the quality floor and its fallback (`fallback`), commits (`commits`) and packs
(`packing`), leases (`lease_keeper`), failure records (`failures`) and the run's totals (`summary`). A
collaborator that needs the loop to act (fail a video, code one again) gets a callback for that act.

Memory is bounded explicitly: at most `actors × gops_in_flight_per_actor` GOPs are decoded or being
coded at once, and new videos are probed only a few ahead (backpressure through `ray.wait`). The loop
never blocks on an actor: GOP lengths come from the codec's class, results are read only when
`ray.wait` reports them ready, and an actor that finishes nothing for `stall_seconds` is killed (its
GOPs are retried like a dead actor's). A video's lease is taken before it is probed and given up once
it is committed or failed; a video whose lease another live run holds is left to that run.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from pipeline.archive import accounting, discovery
from pipeline.archive.actors import EncodePool
from pipeline.archive.commits import Commits, forget_coded
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.decodes import GopDecodes
from pipeline.archive.errors import one_line
from pipeline.archive.failures import FailureLog
from pipeline.archive.fallback import FloorKeeper
from pipeline.archive.gop_result import GopResult
from pipeline.archive.lease_keeper import ELSEWHERE, UNREACHABLE, LeaseKeeper
from pipeline.archive.leases import Leases
from pipeline.archive.packing import Packer
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.reference import References
from pipeline.archive.run_context import RunContext
from pipeline.archive.searches import QualitySearches
from pipeline.archive.summary import RunTally, build_summary
from pipeline.archive.tasks import RemoteTasks
from pipeline.archive.video_setup import JobBuilder
from pipeline.archive.video_state import GopTask, Video, VideoBook
from pipeline.archive.worklist import Listing, WorkCounts, WorkList
from pipeline.store.storage import describe, is_transient


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

        self.ray, self.cfg = ray, cfg
        self.pool, self.counters, self.display = pool, counters, display
        self.tally = RunTally()
        ctx = RunContext(
            cfg,
            run_id,
            identity,
            pool,
            counters,
            display,
            self.tally,
            out_fs,
            out_root,
            ray,
            RemoteTasks(cfg),
        )
        self.ctx = ctx
        self.book = VideoBook()
        self.decodes = GopDecodes(cfg, ctx.tasks)
        self.leases = LeaseKeeper(ctx, leases)
        self.failures = FailureLog(cfg, run_id, identity, counters, display, on_recorded=self.leases.release)
        self.compute = accounting.ComputeTally()
        self.references = References(
            ctx, backfill=reference_backfill, on_cpu_seconds=self.compute.add_reference
        )
        self.searches = QualitySearches(
            ctx, self.book, self.decodes, fail=self.fail_video, replace_actor=self.replace_actor
        )
        self.floor = FloorKeeper(ctx, fail=self.fail_video, code_again=self._code_again)
        self.commits = Commits(
            ctx, self.book, self.failures, self.compute, on_committed=self.references.on_committed,
            on_dropped=self.references.discard, release=self.leases.release,
        )  # fmt: skip
        self.packer = Packer(ctx, self.book, self.commits)
        self.jobs = JobBuilder(ctx, self.floor.header_record())
        self.metrics_sample = cfg.metrics_sample_spec()
        self.probing: dict[Any, discovery.SourceEntry] = {}
        self.probing_keys: set[str] = set()
        self.encoding: dict[Any, tuple[GopTask, int, Any, Any]] = {}  # meta ref -> task, actor, payload
        self.videos_started = 0
        self.duplicates = 0
        self.listing = Listing(iter(()), cfg.src, display)  # `run` opens the work's
        self.listing.close()
        self.storage_stop: str | None = None  # why the loop stopped early (`stop_for_storage`)
        self.utilisation: list[dict[str, Any]] = []  # the encode actors' busy measures, at the end

    # ---- main loop -------------------------------------------------------------------------------
    def run(self, work: WorkList) -> None:
        """Archive the videos `work` streams (listing goes on while earlier videos encode)."""
        self.listing = Listing(work.entries(), self.cfg.src, self.display)
        self.packer.had_failed = work.failed
        self.references.resume(work.done, self.cfg.shard)
        limit = self.cfg.limit
        searching = self.searches.running
        while self._busy():
            while self._videos_ahead() < self._probe_ahead():
                if limit is not None and self.videos_started + len(self.probing) >= limit:
                    if self.videos_started >= limit:  # non-videos do not count against --limit
                        self.listing.close()
                    break
                entry = self.listing.take()
                if entry is None:
                    break
                self._start(entry)
            self._fill_gop_slots()
            self.packer.close_if_last(self._more_coming())
            self._keep_alive()
            references = self.references.running
            waiting = [
                *self.probing, *searching, *self.encoding, *self.commits.running, *self.packer.running,
                *references,
            ]  # fmt: skip
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
                elif ref in self.commits.running:
                    self.commits.on_done(ref)
                elif ref in self.packer.running:
                    self.packer.on_done(ref)
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
        in_flight = len(self.book.videos) + len(self.probing)
        self.storage_stop = f"{describe(exc, self.cfg.out)} ({in_flight} videos in flight left for a rerun)"
        self.display.log(f"storage: run stopped: {self.storage_stop}")

    def _keep_alive(self) -> None:
        """Renew our leases; kill encode actors that stopped making progress (their GOPs are retried)."""
        self.leases.renew()
        for idx in self.pool.kill_stalled():
            self.display.log(
                f"encode actor {idx} finished nothing for {self.cfg.stall_seconds:.0f} s; killed, its GOPs retried"
            )

    def _start(self, entry: discovery.SourceEntry) -> None:
        """Probe one listed video (or fail it at once when its list row is unusable)."""
        self.counters.videos_total += 1
        if entry.key in self.book.videos or entry.key in self.probing_keys:
            self.counters.videos_total -= 1
            self.duplicates += 1  # an input list naming a video twice: archived once
            return
        lease, fault = self.leases.take(entry)
        if lease == ELSEWHERE:
            return
        if lease == UNREACHABLE:  # the store is down: the video is not started, a rerun does it
            assert fault is not None
            self.videos_started += 1
            self.failures.record(
                entry.key, entry.uri, entry.size or 0, one_line(entry.uri, fault), transient=True
            )
            return
        if entry.error or (entry.target is not None and self.cfg.quality_goal is not None):
            self.videos_started += 1
            reason = (
                entry.error
                or f"{entry.uri}: a per-video rate target cannot be combined with a quality target"
            )
            self.failures.record(entry.key, entry.uri, entry.size or 0, reason)
            return
        self.probing[self.ctx.tasks.probe.remote(entry, self.cfg.endpoint_url, self.cfg.max_pixels)] = entry
        self.probing_keys.add(entry.key)

    def _more_coming(self) -> bool:
        """Whether more videos may still finish coding (the last pack waits for them)."""
        book = self.book
        return bool(
            self.listing.open or self.probing or self.searches or book.ready or book.queue or self.encoding
        )

    def _busy(self) -> bool:
        return bool(self._more_coming() or self.commits or self.references or self.packer)

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
        return len(self.probing) + len(self.searches) + len(self.book.ready)

    def _fill_gop_slots(self) -> None:
        """Keep every actor busy: searches first (they unblock whole videos), then GOPs in video order."""
        capacity = len(self.pool) * self.cfg.gops_in_flight_per_actor
        book = self.book
        while len(self.encoding) + len(self.searches.running) < capacity:
            if self.searches.queue:
                self.searches.submit(self.searches.queue.popleft())
                continue
            if not book.queue and not book.queue_next_video():
                return
            task = book.queue.popleft()
            video = book.videos.get(task.video_key)
            if video is None or video.failed:
                continue
            self._submit(task, video)
        self._decode_ahead()

    def _decode_ahead(self) -> None:
        """Start the decodes of the next queued GOPs while the actors code: as many GOPs as the actors
        hold in flight, so an actor that finishes a GOP finds the next one decoded instead of waiting
        for its decode (which would leave it idle for a decode's time on every GOP)."""
        ahead = len(self.pool) * self.cfg.gops_in_flight_per_actor
        book = self.book
        while len(book.queue) < ahead and book.queue_next_video():
            pass
        for task in itertools.islice(book.queue, ahead):
            video = book.videos.get(task.video_key)
            if video is not None and not video.failed:
                self.decodes.give_frames(task, video)

    def pool_of(self, video: Video) -> EncodePool:
        """The pool coding `video`'s GOPs: the fallback's once the video fell under the floor."""
        if video.fallback:
            assert self.floor.pool is not None
            return self.floor.pool
        return self.pool

    def _submit(self, task: GopTask, video: Video) -> None:
        self.decodes.give_frames(task, video)
        idx, actor = self.pool_of(video).pick()
        header = video.job.header
        label = f"{video.job.source_uri} GOP {task.span.index} (frames {task.span.first_frame}+{task.span.frame_count})"
        goal = self.cfg.quality_goal if self.cfg.quality_goal and self.cfg.quality_goal.per_gop else None
        if video.fallback:
            goal = None  # the fallback codes at its rate target (`floor.fallback_target`)
        meta_ref, payload_ref = actor.encode.options(num_returns=2).remote(
            task.frames_ref, video.target, header.fps_num, header.fps_den, task.span.index, label, goal,
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
            self.leases.release(entry.key)
            return
        self.videos_started += 1
        if outcome.kind == "failed":
            reason = outcome.reason or "unreadable"
            self.failures.record(entry.key, entry.uri, entry.size or 0, reason, transient=outcome.transient)
            return
        job = self.jobs.build(outcome, probe_seconds)
        if isinstance(job, str):
            self.failures.record(entry.key, entry.uri, entry.size, job)
            return
        self.counters.frames_total += sum(span.frame_count for span in job.spans)
        video = Video(job, target=entry.target or self.cfg.target)
        self.book.videos[entry.key] = video
        self.references.plan(video)
        goal = self.cfg.quality_goal
        if goal is None or goal.per_gop:
            self.book.ready.append(entry.key)
            return
        self.searches.add(video)

    def _on_encoded(self, ref: Any) -> None:
        task, idx, actor, payload_ref = self.encoding.pop(ref)
        video = self.book.videos[task.video_key]
        pool = self.pool_of(video)
        pool.release(idx)
        video.in_flight -= 1
        if video.failed and video.in_flight == 0:
            self.book.videos.pop(task.video_key, None)
        try:
            result: GopResult = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.replace_actor(idx, actor, pool)
            if video.failed:
                return
            if task.attempt >= self.cfg.max_gop_retries:
                self.fail_video(video, f"{video.job.source_uri}: encode actor died {task.attempt + 1} times")
                return
            self.book.queue.appendleft(dataclasses.replace(task, attempt=task.attempt + 1))
            return
        except Exception as exc:
            if not video.failed:
                self.fail_video(video, one_line(video.job.source_uri, exc), transient=is_transient(exc))
            return
        if video.failed:
            return
        if result.error is not None:
            self.fail_video(video, result.error)
            return
        if video.search is not None and not video.fallback:
            result = dataclasses.replace(result, params={**result.params, "quality_search": video.search})
        elif not result.params.get("quality_search", {}).get("reached", True):
            note = result.params["quality_search"]["note"]
            self.searches.missed(video.job.video_key, note, gop_index=task.span.index)
        video.metas[task.span.index] = result
        video.payloads[task.span.index] = payload_ref
        self.references.on_encoded(video, task, result)
        self.counters.gops_done += 1
        self.counters.frames_done += task.span.frame_count
        if len(video.metas) == len(video.job.spans):
            if self.floor.holds(video):  # under the quality floor: failed, or queued for the fallback
                return
            self.references.before_commit(video)
            if self.cfg.pack_mb:
                self.packer.add(video)
            else:
                self.commits.submit(video)

    def replace_actor(self, idx: int, dead: Any, pool: EncodePool | None = None) -> None:
        if (pool or self.pool).replace(idx, dead):
            self.display.log(f"encode actor {idx} died; retrying its GOPs on a new actor")

    def fail_video(self, video: Video, reason: str, *, transient: bool = False) -> None:
        """Stop a video's remaining GOPs (queued ones are dropped, running ones ignored) and record it."""
        video.failed = True
        video.payloads.clear()
        video.sample_refs.clear()
        if video.in_flight == 0:
            self.book.videos.pop(video.job.video_key, None)
        self.references.discard(video.job.video_key)
        self.failures.record(
            video.job.video_key, video.job.source_uri, video.job.source_bytes, reason, transient=transient
        )

    def _code_again(self, video: Video) -> None:
        """Code every GOP of `video` again, first in the queue (its fallback): the coded GOPs and any
        reference sample of them are dropped (they are not the ones stored)."""
        self.references.discard(video.job.video_key)
        forget_coded(self.ctx, video)
        self.book.queue_again_first(video)

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
            run_id=self.ctx.run_id,
            identity=self.ctx.identity,
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
        if self.listing.error:
            summary["listing_error"] = self.listing.error
        if self.leases.error:
            summary["lease_error"] = self.leases.error
        if self.storage_stop:
            summary["storage_stop"] = self.storage_stop
        summary["encode_actors"] = self.utilisation
        summary["quality_floor"] = self.floor.summary()
        return summary
