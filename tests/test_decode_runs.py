"""GOPs that share a keyframe interval are decoded in one pass, with exactly the frames of a GOP-by-GOP
decode: the probe finds the keyframes, the plan marks the GOPs that continue the one before, and
`decode_spans` hands each decoded frame to its GOP."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.archive.plan import plan_gops
from pipeline.sources import media
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def _write(path: Path, frames: np.ndarray, keyint: int) -> Path:
    """An H.264 file with a keyframe every `keyint` frames (and B-frames, so decode order differs)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "crf": "18",
            "g": str(keyint),
            "keyint_min": str(keyint),
            "sc_threshold": "0",
            "bf": "2",
        }
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(EVAL_IMAGES[2], 40, 96, 64, seed=1)


@pytest.mark.parametrize(
    ("keyint", "continuing"),
    [(250, [False, True, True, True, True]), (16, [False, True, False, True, False])],
)
def test_the_plan_marks_gops_that_start_between_keyframes(tmp_path, clip, keyint, continuing):
    info = media.probe(str(_write(tmp_path / "v.mp4", clip, keyint)))
    assert info.keyframe_pts is not None and info.keyframe_pts[0] == info.frame_pts[0]
    assert len(info.keyframe_pts) == -(-40 // keyint)
    spans = plan_gops(info.frame_count, 8, info.frame_pts, info.keyframe_pts)
    assert [s.continues for s in spans] == continuing


def test_without_timestamps_every_later_gop_continues():
    spans = plan_gops(20, 8)
    assert [s.continues for s in spans] == [False, True, True]


@pytest.mark.parametrize("keyint", [250, 16])
def test_one_pass_over_several_gops_gives_each_gop_its_own_frames(tmp_path, clip, keyint):
    path = str(_write(tmp_path / "v.mp4", clip, keyint))
    info = media.probe(path)
    spans = plan_gops(info.frame_count, 8, info.frame_pts, info.keyframe_pts)
    one_by_one = [media.decode_frames(path, s.first_frame, s.frame_count, expected_pts=s.pts) for s in spans]
    for start in (0, 1, 3):  # a run from the first GOP, and runs that begin mid-video (a seek)
        run = spans[start:]
        together = media.decode_spans(path, [(s.first_frame, s.frame_count, s.pts) for s in run])
        assert len(together) == len(run)
        for span, frames in zip(run, together, strict=True):
            np.testing.assert_array_equal(frames, one_by_one[span.index])


def test_a_run_past_the_end_of_a_cut_source_fails_naming_the_missing_frames(tmp_path, clip):
    path = str(_write(tmp_path / "v.mp4", clip, 250))
    info = media.probe(path)
    spans = plan_gops(info.frame_count, 8, info.frame_pts, info.keyframe_pts)
    beyond = (spans[-1].first_frame + 8, 8, tuple(p + 10**6 for p in spans[-1].pts))
    with pytest.raises(media.SourceError, match=r"decoded 0 of frames 40\+8"):
        media.decode_spans(path, [(s.first_frame, s.frame_count, s.pts) for s in spans[-2:]] + [beyond])
