"""Which decode task gives a GOP its frames: a run of GOPs that continue each other decoded in one pass
(`DECODE_RUN_BYTES` of frames at most), a GOP alone, or frames a quality search already decoded.

A GOP that starts between keyframes (`GopSpan.continues`) would make a decode of its own seek back to
the keyframe and decode again what the GOP before it decoded; decoding such GOPs in one pass with the
GOP before them reads each frame once. The later GOPs' refs wait in `video.sample_refs` for their turn.
"""

from __future__ import annotations

from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.archive.plan import GopSpan
from pipeline.archive.tasks import RemoteTasks
from pipeline.archive.video_state import GopTask, Video

#: Frames one decode task may hold for the GOPs after its own: enough for a few 640×360 GOPs, one
#: 1080p GOP (then each GOP decodes alone, seeking as before).
DECODE_RUN_BYTES = 128 * 2**20


class GopDecodes:
    def __init__(self, cfg: ArchiveConfig, tasks: RemoteTasks) -> None:
        self.cfg, self.tasks = cfg, tasks

    def give_frames(self, task: GopTask, video: Video) -> None:
        """Give `task` its frames: those an earlier decode run left for it, else a decode run of its own."""
        if task.frames_ref is None:
            task.frames_ref, task.decode_seconds_ref = video.sample_refs.pop(task.span.index, (None, None))
        if task.frames_ref is None:
            task.frames_ref, task.decode_seconds_ref = self.decode_run(video, task.span)

    def decode_run(self, video: Video, span: GopSpan) -> tuple[Any, Any]:
        """(frames, seconds) refs of `span`, decoded in one pass with the GOPs after it that continue it,
        up to `DECODE_RUN_BYTES` of frames."""
        if self.cfg.quality_goal is not None:  # a search decoded some GOPs already: keep it simple
            return self.decode_gop(video, span)
        spans = video.job.spans
        header = video.job.header
        frame_bytes = header.width * header.height * 3 * (2 if (header.coded_bit_depth or 8) > 8 else 1)
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
        refs = self.tasks.decode_group.options(num_returns=2 * len(run)).remote(
            video.job.source_uri, run, self.cfg.endpoint_url, self.options(video)
        )
        for position, later in enumerate(run[1:], start=1):
            video.sample_refs[later.index] = (refs[2 * position], refs[2 * position + 1])
        return refs[0], refs[1]

    def decode_gop(self, video: Video, span: GopSpan) -> Any:
        """A decode task for one GOP, as (frames, decode seconds) refs: the probed frame size and the
        pixel budget are enforced on the decoded frames, and a source deeper than 8 bits decodes to
        RGB48 when the codec keeps it."""
        return self.tasks.decode.remote(
            video.job.source_uri, span, self.cfg.endpoint_url, self.options(video)
        )

    def options(self, video: Video) -> dict[str, Any]:
        header = video.job.header
        options: dict[str, Any] = {
            "size": (header.width, header.height),
            "max_pixels": self.cfg.max_pixels,
            "high_bit_depth": (header.coded_bit_depth or 8) > 8,
        }
        if video.job.parent is not None:
            options["parent"] = video.job.parent
        return options
