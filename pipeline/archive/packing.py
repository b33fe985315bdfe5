"""Packs (`--pack N_MB`): finished videos wait in the open pack until it holds N MB of payload (or
`MAX_PACK_MEMBERS` videos), then one task writes them as one object (`pack_writer`); the last pack goes
out however small once no more work is coming. Each member's outcome is reported to `Commits`."""

from __future__ import annotations

from typing import Any

from pipeline.archive.commits import Commits
from pipeline.archive.run_context import RunContext
from pipeline.archive.video_state import Video, VideoBook

#: A pack closes at N MB of payload or at this many videos, whichever comes first.
MAX_PACK_MEMBERS = 100_000


class Packer:
    def __init__(self, ctx: RunContext, book: VideoBook, commits: Commits) -> None:
        self.ctx, self.book, self.commits = ctx, book, commits
        self.open: list[str] = []  # finished videos waiting for the open pack to fill
        self.bytes = 0
        self.running: dict[Any, list[str]] = {}  # result ref -> the pack's video keys
        self.started = 0
        self.had_failed: Any = None  # keys with a failed marker at the start (KeySet; packs clear them)

    def __bool__(self) -> bool:
        return bool(self.open or self.running)

    def add(self, video: Video) -> None:
        """Add a finished video to the open pack; commit the pack once it holds N MB of payload."""
        self.open.append(video.job.video_key)
        self.bytes += sum(result.payload_bytes for result in video.metas.values())
        pack_mb = self.ctx.cfg.pack_mb or 0
        if self.bytes >= pack_mb * 1e6 or len(self.open) >= MAX_PACK_MEMBERS:
            self.commit()

    def commit(self) -> None:
        if not self.open:
            return
        self.started += 1
        pack_id = f"{self.ctx.run_id}-{self.started:06d}"
        videos = [self.book.videos[key] for key in self.open]
        order = [range(len(v.job.spans)) for v in videos]
        ref = self.ctx.tasks.commit_pack.remote(
            pack_id,
            [v.job for v in videos],
            [[v.metas[i] for i in o] for v, o in zip(videos, order, strict=True)],
            [bool(self.had_failed and v.job.video_key in self.had_failed) for v in videos],
            *[v.payloads[i] for v, o in zip(videos, order, strict=True) for i in o],
        )
        self.running[ref] = list(self.open)
        self.open, self.bytes = [], 0

    def close_if_last(self, more_coming: bool) -> None:
        """At the end of the work, the last pack goes out however small it is."""
        if self.open and not more_coming:
            self.commit()

    def on_done(self, ref: Any) -> None:
        keys = self.running.pop(ref)
        try:
            result = self.ctx.ray.get(ref)
        except Exception as exc:
            for key in keys:
                self.commits.failed(key, exc)
            return
        for key in keys:
            member = result["members"].get(key)
            if member is None:
                video = self.book.videos[key]
                self.commits.drop(
                    key, result["failed"].get(key) or f"{video.job.source_uri}: not in its pack"
                )
                continue
            self.commits.committed(self.book.videos.pop(key), member)
