"""Committing finished videos and what follows a commit: the totals of a committed video, a video whose
coded payloads were lost with a node coded again, a failed commit recorded. Packs (`packing`) report
their members' outcomes here too, so a video ends the same way alone or packed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.archive import accounting
from pipeline.archive.errors import one_line
from pipeline.archive.failures import FailureLog
from pipeline.archive.run_context import RunContext
from pipeline.archive.video_state import Video, VideoBook
from pipeline.store.storage import is_transient


class Commits:
    """Commits in flight (`running`: result ref -> video key) and the end of every committed video."""

    def __init__(
        self,
        ctx: RunContext,
        book: VideoBook,
        failures: FailureLog,
        compute: accounting.ComputeTally,
        *,
        on_committed: Callable[[str], None],
        on_dropped: Callable[[str], None],
        release: Callable[[str], None],
    ) -> None:
        self.ctx, self.book, self.failures, self.compute = ctx, book, failures, compute
        self.on_committed, self.on_dropped, self.release = on_committed, on_dropped, release
        self.running: dict[Any, str] = {}

    def __len__(self) -> int:
        return len(self.running)

    def submit(self, video: Video) -> None:
        """Commit one video (container, manifest part, done marker) in a task."""
        order = range(len(video.job.spans))
        ref = self.ctx.tasks.commit.remote(
            video.job, [video.metas[i] for i in order], *[video.payloads[i] for i in order]
        )
        self.running[ref] = video.job.video_key

    def on_done(self, ref: Any) -> None:
        key = self.running.pop(ref)
        try:
            result = self.ctx.ray.get(ref)
        except Exception as exc:
            self.failed(key, exc)
            return
        self.committed(self.book.videos.pop(key), result)

    def committed(self, video: Video, result: dict[str, Any]) -> None:
        """A video is in the archive: its totals, its reference rows, its lease given up."""
        key = video.job.video_key
        counters = self.ctx.counters
        counters.videos_ok += 1
        counters.bytes_in += video.job.source_bytes
        counters.bytes_out += result["archive_bytes"]
        self.ctx.tally.committed(video.job.source_bytes, result)
        self.compute.add_rows(key, result.get("compute_rows", []), result.get("commit_device_seconds"))
        self.on_committed(key)
        self.release(key)

    def failed(self, key: str, exc: Exception) -> None:
        """A video's commit (alone or in a pack) raised: payloads lost with a node are encoded again (up
        to `max_gop_retries` times); anything else fails the video, transient storage errors without a
        failed marker so that a rerun retries it."""
        video = self.book.videos[key]
        if isinstance(exc, self.ctx.ray.exceptions.ObjectLostError):
            if not self.recode(video):
                self.drop(key, f"{video.job.source_uri}: payloads lost {video.recodes} times")
            return
        self.drop(key, one_line(video.job.source_uri, exc), transient=is_transient(exc))

    def drop(self, key: str, reason: str, *, transient: bool = False) -> None:
        """A finished video that cannot be committed: recorded as failed."""
        video = self.book.videos.pop(key)
        self.on_dropped(key)
        self.failures.record(key, video.job.source_uri, video.job.source_bytes, reason, transient=transient)

    def recode(self, video: Video) -> bool:
        """Queue all of a finished video's GOPs again (its coded payloads were lost with a node before
        they were written); False once it has been recoded `max_gop_retries` times."""
        if video.recodes >= self.ctx.cfg.max_gop_retries:
            return False
        video.recodes += 1
        forget_coded(self.ctx, video)
        self.book.queue_again_first(video)
        self.ctx.display.log(f"{video.job.source_uri}: coded GOPs lost with a node; encoding the video again")
        return True


def forget_coded(ctx: RunContext, video: Video) -> None:
    """Drop a video's coded GOPs (to code them again), and take them off the progress counters."""
    video.metas.clear()
    video.payloads.clear()
    ctx.counters.gops_done -= len(video.job.spans)
    ctx.counters.frames_done -= sum(span.frame_count for span in video.job.spans)
