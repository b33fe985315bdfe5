"""The archive workflow's pieces alone: keys, GOP plans, discovery and the PyAV probe/decode."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.archive.discovery import list_sources, probe_entry
from pipeline.archive.plan import plan_gops
from pipeline.format.keys import slugify, video_key
from pipeline.sources import media

VFR_PTS = (0, 40, 80, 200, 240, 400, 440, 480, 700, 740)  # the pts `vfr_writer` uses


def test_video_key_is_deterministic_readable_and_distinct() -> None:
    key = video_key("s3://bucket/cams/Day 1/A.MP4", 1234, "cams/Day 1/A.MP4")
    assert key == video_key("s3://bucket/cams/Day 1/A.MP4", 1234, "cams/Day 1/A.MP4")
    assert key.startswith("cams_day_1_a.mp4-") and len(key.rsplit("-", 1)[1]) == 12
    assert key != video_key("s3://bucket/cams/Day 1/A.MP4", 1235, "cams/Day 1/A.MP4")
    assert video_key("/x/a/b.mp4", 1, "a/b.mp4") != video_key("/x/a_b.mp4", 1, "a_b.mp4")
    assert slugify("../../") == "video" and len(slugify("x" * 500)) <= 80


def test_gop_plan_tiles_the_video_exactly() -> None:
    spans = plan_gops(37, 16, tuple(range(0, 370, 10)))
    assert [(s.first_frame, s.frame_count) for s in spans] == [(0, 16), (16, 16), (32, 5)]
    assert spans[2].pts == (320, 330, 340, 350, 360)
    assert [(s.first_frame, s.frame_count) for s in plan_gops(1, 17)] == [(0, 1)]
    with pytest.raises(ValueError):
        plan_gops(0, 16)


def test_gop_lengths_come_from_the_codec_class_without_loading_a_model() -> None:
    """The driver plans GOPs from the codec's class (it never asks an encode actor)."""
    from codec.registry import codec_class
    from pipeline.archive.config import ArchiveConfig, ConfigError

    glvc = codec_class("glvc")
    assert glvc.gop_frames_for(None, Fraction(24)) == 49 and glvc.gop_frames_for(9, Fraction(24)) == 9
    assert codec_class("gvc").gop_frames_for(None, Fraction(30000, 1001)) == 33
    assert codec_class("x264").gop_frames_for(None, Fraction(25)) == 50
    with pytest.raises(ConfigError, match=r"--gop-frames 8: glvc needs GOPs of 1\+4k frames"):
        ArchiveConfig(src="s", out="o", codec="glvc", gop_frames=8).resolved()


def test_seeking_decode_matches_a_sequential_decode(sample_dir: Path) -> None:
    source = str(sample_dir / "sub" / "with-audio.mp4")
    info = media.probe(source)
    assert (info.frame_count, info.width, info.height, info.fps, info.has_audio) == (37, 64, 48, 24, True)
    seeked = media.decode_frames(source, 16, 16, expected_pts=info.frame_pts[16:32])
    sequential = media.decode_frames(source, 16, 16, expected_pts=None)
    assert np.array_equal(seeked, sequential)
    assert not np.array_equal(seeked, media.decode_frames(source, 0, 16, expected_pts=info.frame_pts[:16]))


def test_vfr_and_rotation_are_recorded(tmp_path: Path, clip: np.ndarray, vfr_writer) -> None:
    info = media.probe(str(vfr_writer(tmp_path / "vfr.mkv", clip[:10], rotation=90)))
    assert info.vfr and info.frame_count == 10 and info.frame_pts == VFR_PTS
    assert info.fps == Fraction(9 * 1000, 740)  # measured average, not the muxer's nominal 24
    assert info.rotation == 90 and (info.width, info.height) == (64, 48)  # decoded as stored
    frames = media.decode_frames(str(tmp_path / "vfr.mkv"), 5, 5, expected_pts=VFR_PTS[5:])
    assert frames.shape == (5, 48, 64, 3)


def test_discovery_classifies_videos_non_videos_and_broken_files(tmp_path: Path, sample_dir: Path) -> None:
    import imageio.v3 as iio

    root = tmp_path / "src"
    root.mkdir()
    (root / "clip").write_bytes((sample_dir / "short.mkv").read_bytes())  # no extension: still a video
    data = (sample_dir / "sub" / "with-audio.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 3])
    (root / "readme.md").write_text("# hello\n")
    iio.imwrite(root / "still.png", np.zeros((8, 8, 3), np.uint8))
    (root / "empty.mov").write_bytes(b"")
    outcomes = {e.relative: probe_entry(e) for e in list_sources(str(root))}
    assert outcomes["clip"].kind == "video" and outcomes["clip"].info.frame_count == 12
    assert outcomes["cut.mp4"].kind == "failed" and str(root / "cut.mp4") in outcomes["cut.mp4"].reason
    assert {outcomes[n].kind for n in ("readme.md", "still.png", "empty.mov")} == {"skip"}
    assert "still image" in outcomes["still.png"].reason


def test_rerun_with_nothing_left_to_do_needs_no_cluster(tmp_path: Path, clip: np.ndarray) -> None:
    """Every video already done: the rerun starts no Ray, exits 0 and still writes its run records."""
    import json
    import os
    import subprocess
    import sys

    from pipeline.format.runinfo import marker_path, write_json
    from pipeline.sources.synthetic import write_video
    from pipeline.store.storage import filesystem

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_video(src / "a.mp4", clip[:6], fps=24)
    fs, root = filesystem(str(out))
    for entry in list_sources(str(src)):
        write_json(fs, marker_path(root, "done", entry.key), {"video_key": entry.key})
    script = (
        "import sys, ray; from pipeline.archive import run_archive; from pipeline.archive.config import ArchiveConfig\n"
        f"r = run_archive(ArchiveConfig(src={str(src)!r}, out={str(out)!r}))\n"
        "print(r.exit_code, r.summary['videos_skipped_done'], ray.is_initialized())"
    )
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["0", "1", "False"]
    (run,) = (out / "runs").iterdir()
    assert (
        json.loads((run / "summary.json").read_text())["videos_ok"] == 0 and (run / "config.json").is_file()
    )


def test_neural_gop_length_defaults_to_what_the_model_card_declares(tmp_path: Path) -> None:
    """A model trained on 17-frame clips is coded in 17-frame GOPs unless --gop-frames says otherwise;
    the card is read without loading the model. A card declaring no GOP leaves the codec's default."""
    import json
    import shutil

    from codec.modeldir import bundled_model_path
    from pipeline.archive.config import ArchiveConfig, ConfigError

    def resolved(**kw):
        return ArchiveConfig(src="src", out="out", codec="glvc", **kw).resolved()

    bundled = json.loads((bundled_model_path() / "model_card.json").read_text())
    assert resolved().gop_frames == bundled["config"]["glvc"]["gop_frames"]
    assert resolved(gop_frames=9).gop_frames == 9  # the user's choice wins
    model = tmp_path / "model"
    model.mkdir()
    card = {"name": "m", "version": "1", "config": {"glvc": {"gop_frames": 33}}, "files": {}}
    (model / "model_card.json").write_text(json.dumps(card))
    assert resolved(model=str(model)).gop_frames == 33
    card["config"]["glvc"]["gop_frames"] = 16  # not 1+4k: refused in one line, naming the card
    (model / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=r"model card's glvc\.gop_frames 16"):
        resolved(model=str(model))
    shutil.rmtree(model)
    assert resolved(model=str(model)).gop_frames is None  # no card here: the codec's own default
    assert ArchiveConfig(src="s", out="o", codec="x264").resolved().gop_frames is None


def test_a_rate_target_has_one_record_form_both_ways() -> None:
    from codec.base import RateTarget

    for target in (RateTarget("kbps", 800.0), RateTarget("bpp", 0.05), RateTarget("quality", 28.0)):
        record = target.to_record()
        assert record == {"kind": target.kind, "value": target.value}
        assert RateTarget.from_record(record) == target
    with pytest.raises(ValueError):
        RateTarget.from_record({"kind": "kbps", "value": -1})
    with pytest.raises(ValueError):
        RateTarget.from_record({"kind": "speed", "value": 1})
