"""Per-video quality searches (`--target-vmaf 93` etc. without `--per-gop`): their bookkeeping.

Before a video's GOPs are dispatched, one search task on an encode actor codes a few sample GOPs at
several settings (`quality_target`) and picks the cheapest that meets the goal; the video's GOPs then
all share it. The samples' decoded frames are kept and reused for the real encode. A search is cached
at `OUT/quality_search/<video>.json` (`search_cache`), so a rerun does not pay for it again; its record
goes into the container header and every row's `codec_params`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from codec.base import RateTarget
from pipeline.archive.accounting import add_per_video
from pipeline.archive.decodes import GopDecodes
from pipeline.archive.errors import one_line
from pipeline.archive.plan import GopSpan
from pipeline.archive.run_context import RunContext
from pipeline.archive.search_cache import load_search, save_search, search_cache_key
from pipeline.archive.video_state import Video, VideoBook
from pipeline.store.storage import is_transient

#: `fail(video, reason, transient=...)`: the loop stops the video's work and records it as failed.
FailVideo = Callable[..., None]


class QualitySearches:
    """Searches waiting for an actor (`queue`) and running (`running`: result ref -> key, actor)."""

    def __init__(
        self,
        ctx: RunContext,
        book: VideoBook,
        decodes: GopDecodes,
        *,
        fail: FailVideo,
        replace_actor: Callable[[int, Any], None],
    ) -> None:
        self.ctx, self.book, self.decodes = ctx, book, decodes
        self.fail, self.replace_actor = fail, replace_actor
        self.cfg = ctx.cfg
        self.queue: collections.deque[str] = collections.deque()  # videos awaiting a search
        self.running: dict[Any, tuple[str, int, Any]] = {}  # result ref -> video key, actor idx/handle
        self.targets_missed: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.queue) + len(self.running)

    def add(self, video: Video) -> None:
        """A planned video with a per-video goal: reuse a cached search, or queue one."""
        ctx = self.ctx
        cached = load_search(ctx.out_fs, ctx.out_root, video.job.video_key, self._key(video))
        if cached is not None:
            ctx.display.log(f"{video.job.source_uri}: quality search reused from an earlier run")
            self._apply(video, cached)
        else:
            self.queue.append(video.job.video_key)

    def submit(self, key: str) -> None:
        """Start the search of video `key` on the least loaded actor (its sample GOPs decode first)."""
        ctx = self.ctx
        video = self.book.videos.get(key)
        if video is None or video.failed:
            return
        header = video.job.header
        refs = []
        for span in self.sample_spans(video):
            if span.index not in video.sample_refs:  # (frames, decode seconds) refs
                video.sample_refs[span.index] = self.decodes.decode_gop(video, span)
            refs.append(video.sample_refs[span.index][0])
        idx, actor = ctx.pool.pick()
        ref = actor.search_quality.remote(
            self.cfg.quality_goal, header.fps_num, header.fps_den, video.job.source_uri, *refs
        )
        self.running[ref] = (key, idx, actor)
        ctx.display.log(f"{video.job.source_uri}: searching the setting for {self._goal_text()}")

    def on_done(self, ref: Any) -> None:
        """A search finished: apply (and cache) its result, retry it after an actor death, or fail."""
        ctx = self.ctx
        key, idx, actor = self.running.pop(ref)
        ctx.pool.release(idx)
        video = self.book.videos[key]
        try:
            outcome = ctx.ray.get(ref)
        except ctx.ray.exceptions.RayActorError:
            self.replace_actor(idx, actor)
            video.search_attempts += 1
            if video.search_attempts > self.cfg.max_gop_retries:
                self.fail(video, f"{video.job.source_uri}: encode actor died during the quality search")
            else:
                self.queue.appendleft(key)
            return
        except Exception as exc:
            self.fail(video, one_line(video.job.source_uri, exc), transient=is_transient(exc))
            return
        if "error" in outcome:
            self.fail(video, outcome["error"])
            return
        compute = outcome.pop("compute", None)  # this run's cost: not part of the cached search
        if compute:
            per_video = add_per_video(video.job.compute, "search", compute["search"], compute["device"])
            video.job = dataclasses.replace(video.job, compute=per_video)
        try:
            save_search(ctx.out_fs, ctx.out_root, key, self._key(video), outcome)
        except Exception as exc:  # the cache only saves time; the archive does not depend on it
            ctx.display.log(f"could not cache the quality search of {video.job.source_uri}: {exc}")
        self._apply(video, outcome)

    def missed(self, video_key: str, note: str, gop_index: int | None = None) -> None:
        """Record a goal not reached (per video, or per GOP with `--per-gop`)."""
        entry: dict[str, Any] = {"video_key": video_key}
        if gop_index is not None:
            entry["gop_index"] = gop_index
        self.targets_missed.append({**entry, "note": note})

    def sample_spans(self, video: Video) -> list[GopSpan]:
        """`sample_gops` GOPs spread evenly over the video (first and last included)."""
        spans = video.job.spans
        count = min(len(spans), self.cfg.quality_goal.sample_gops)  # type: ignore[union-attr]
        if count == 1:
            return [spans[len(spans) // 2]]
        picks = sorted({round(i * (len(spans) - 1) / (count - 1)) for i in range(count)})
        return [spans[i] for i in picks]

    def _key(self, video: Video) -> dict[str, Any]:
        return search_cache_key(
            video.job,
            self.ctx.identity,
            self.cfg.codec_options,
            self.cfg.quality_goal,
            self.sample_spans(video),
        )

    def _apply(self, video: Video, outcome: dict[str, Any]) -> None:
        """Apply a search result: the video's setting, its record in the header, then dispatch it."""
        record = outcome["record"]
        video.target = RateTarget("quality", float(outcome["knob"]))
        video.search = record
        video.job = dataclasses.replace(video.job, header=video.job.header.updated(quality_search=record))
        if not record["reached"]:
            self.missed(video.job.video_key, record["note"])
            self.ctx.display.log(f"{video.job.source_uri}: {record['note']}")
        self.book.ready.append(video.job.video_key)

    def _goal_text(self) -> str:
        goal = self.cfg.quality_goal
        assert goal is not None
        cap = f" under {goal.max_kbps:g} kbps" if goal.max_kbps is not None else ""
        return f"{goal.metric} {'≤' if goal.metric == 'dists' else '≥'} {goal.target:g}{cap}"
