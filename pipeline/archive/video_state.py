"""What the driver knows of a video in progress (`Video`) and of one GOP to code (`GopTask`): plain
state, shared by the scheduler's loop and its collaborators (searches, references, the floor, packs),
none of which holds the scheduler itself."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from codec.base import RateTarget
from pipeline.archive.gop_result import GopResult
from pipeline.archive.plan import GopSpan
from pipeline.archive.video_writer import VideoJob


@dataclasses.dataclass
class Video:
    """A video in progress: its plan, the GOP results collected so far, its fate."""

    job: VideoJob
    target: RateTarget | None = None  # None until a quality search has chosen it
    search: dict[str, Any] | None = None  # the quality search record (per-video goals)
    search_attempts: int = 0
    #: gop index -> (decoded frames, decode CPU-seconds) refs of the quality search's sample GOPs
    sample_refs: dict[int, Any] = dataclasses.field(default_factory=dict)
    metas: dict[int, GopResult] = dataclasses.field(default_factory=dict)  # gop index -> its result
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


class VideoBook:
    """The videos in progress (`videos`), those planned and waiting for GOP slots (`ready`), and the
    GOPs queued for the encoders (`queue`)."""

    def __init__(self) -> None:
        self.videos: dict[str, Video] = {}
        self.ready: collections.deque[str] = collections.deque()
        self.queue: collections.deque[GopTask] = collections.deque()

    def gop_task(self, video: Video, span: GopSpan) -> GopTask:
        """A GOP to code, with the decoded frames a quality search already holds for it (if any)."""
        frames_ref, seconds_ref = video.sample_refs.pop(span.index, (None, None))
        return GopTask(video.job.video_key, span, 0, frames_ref, seconds_ref)

    def queue_next_video(self) -> bool:
        """Queue every GOP of the next ready video; False when none is ready."""
        if not self.ready:
            return False
        video = self.videos[self.ready.popleft()]
        self.queue.extend(self.gop_task(video, span) for span in video.job.spans)
        return True

    def queue_again_first(self, video: Video) -> None:
        """Every GOP of `video` again, ahead of the queue (a fallback, or payloads lost with a node)."""
        self.queue.extendleft(self.gop_task(video, span) for span in reversed(video.job.spans))
