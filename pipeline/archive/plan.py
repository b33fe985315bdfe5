"""GOP planning: how one video is cut into independently coded GOPs.

GOPs are consecutive and tile the video exactly: `gop_frames` each, the last one shorter when the
frame count is not a multiple (codecs handle a short last GOP; latent codecs pad and crop
internally), so the restored video has exactly the source's frame count.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GopSpan:
    """One GOP of a source video: its frames and, when known, their presentation timestamps."""

    index: int
    first_frame: int
    frame_count: int
    pts: tuple[int, ...] | None
    #: Its decode would start at a keyframe before its first frame (inside an earlier GOP): decoding
    #: it right after the GOP before it, in one pass, saves decoding those frames again.
    continues: bool = False


def plan_gops(
    frame_count: int,
    gop_frames: int,
    frame_pts: tuple[int, ...] | None = None,
    keyframe_pts: tuple[int, ...] | None = None,
) -> list[GopSpan]:
    """Cut `frame_count` frames into GOPs of `gop_frames` (the last may be shorter). With the source's
    keyframes, a GOP that does not start on one `continues` the GOP before it (see `GopSpan`); without
    timestamps every GOP after the first does (its decode reads from the start)."""
    if frame_count < 1:
        raise ValueError(f"a video needs at least one frame, got {frame_count}")
    if gop_frames < 1:
        raise ValueError(f"GOP length must be positive, got {gop_frames}")
    if frame_pts is not None and len(frame_pts) != frame_count:
        raise ValueError(f"{len(frame_pts)} timestamps for {frame_count} frames")
    spans = []
    keyframe_set = frozenset(keyframe_pts or ())
    for index, first in enumerate(range(0, frame_count, gop_frames)):
        count = min(gop_frames, frame_count - first)
        pts = tuple(frame_pts[first : first + count]) if frame_pts is not None else None
        if index == 0:
            continues = False
        elif pts is None:
            continues = True
        else:
            continues = keyframe_pts is not None and pts[0] not in keyframe_set
        spans.append(GopSpan(index, first, count, pts, continues))
    return spans
