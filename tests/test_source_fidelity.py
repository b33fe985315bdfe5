"""Nothing lost silently from the source, and memory bounded before decoding (issue 11): a truncated source
is archived with a warning and its declared frame count on record; bit depth and chroma format are in
the header and manifest; the classic codecs keep a 10-bit source at 10 bits (and restore gives them
back), neural codecs record the reduction to 8; a source over the pixel budget fails at probe time,
and encode actors hold no more GOPs than configured."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from codec.base import RateTarget, to_8bit
from codec.registry import create_codec
from jobs.cli import app
from pipeline.archive.video_setup import precision
from pipeline.sources import media

FIRST_LEVEL = 480


def ramp(frames: int = 12, width: int = 64, height: int = 48) -> np.ndarray:
    """uint16 RGB48 grey ramp with one 10-bit code value per column: 8 bits cannot tell them apart."""
    levels = ((FIRST_LEVEL + np.arange(width)) * 64).astype(np.uint16)
    image = np.repeat(levels[None, :, None], height, 0).repeat(3, 2)
    return np.ascontiguousarray(np.stack([image] * frames))


def ten_bit_levels(frames: np.ndarray) -> int:
    return len(np.unique(frames[0, frames.shape[1] // 2, :, 1].astype(np.int64) // 64))


def write_10bit(path: Path, frames: np.ndarray) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p10le"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb48le")))
        container.mux(stream.encode())
    return path


def write_truncated(path: Path, clip: np.ndarray) -> Path:
    """A 30-frame H.264/Matroska file cut to its first 40%: the container still declares 30 frames."""
    import av

    whole = path.with_suffix(".whole.mkv")
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for image in np.concatenate([clip, clip[::-1]])[:30]:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) * 2 // 5])
    return path


@pytest.mark.parametrize("name", ["x264", "x265", "av1"])
def test_classic_codecs_keep_ten_bits(name: str) -> None:
    frames = ramp(frames=4)
    codec = create_codec(name, preset="ultrafast" if name != "av1" else "12")
    encoded = codec.encode(frames, RateTarget("quality", 4 if name != "av1" else 8), Fraction(24))
    decoded = codec.decode(encoded.payload, 4, 64, 48)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, encoded.reconstruction)
    assert ten_bit_levels(decoded) >= 48  # 64 columns, one 10-bit level each; 8 bits hold 16 of them
    assert ten_bit_levels(to_8bit(decoded).astype(np.uint16) * 257) <= 17


def test_probe_records_depth_chroma_and_the_declared_frame_count(tmp_path: Path, clip: np.ndarray) -> None:
    deep = media.probe(str(write_10bit(tmp_path / "ten.mkv", ramp())))
    assert (deep.bit_depth, deep.chroma, deep.frame_count, deep.truncated) == (10, "4:2:0", 12, False)
    cut = media.probe(str(write_truncated(tmp_path / "cut.mkv", clip)))
    assert cut.declared_frames == 30 and cut.frame_count < 30 and cut.truncated
    assert f"{cut.frame_count} of 30 declared frames" in (cut.source_note() or "")


def test_precision_the_codec_does_not_keep_is_recorded() -> None:
    info = SimpleNamespace(bit_depth=10, chroma="4:4:4", source_note=lambda: None)
    neural = precision({"codec": "glvc", "max_bit_depth": 8}, info)
    assert neural["coded_bit_depth"] == 8 and "10-bit source coded at 8 bits (glvc)" in neural["source_note"]
    classic = precision({"codec": "x265", "max_bit_depth": 10, "coded_chroma": "4:2:0"}, info)
    assert classic["coded_bit_depth"] == 10 and classic["source_note"] == "4:4:4 source coded as 4:2:0"


def test_a_source_over_the_pixel_budget_fails_before_decoding(tmp_path: Path) -> None:
    """A 52 KB file that declares 16000×16000 frames once drove a job past 21 GB."""
    hostile = tmp_path / "huge.y4m"
    hostile.write_bytes(b"YUV4MPEG2 W16000 H16000 F24:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 52_000)
    with pytest.raises(media.SourceError, match="over the pixel budget of 33177600"):
        media.probe(str(hostile), max_pixels=media.DEFAULT_MAX_PIXELS)


def test_decoded_frames_must_match_the_declared_size_and_budget(tmp_path: Path, clip: np.ndarray) -> None:
    from tests.conftest import write_odd_video

    path = write_odd_video(tmp_path / "v.mkv", clip[:4])
    info = media.probe(str(path))
    with pytest.raises(media.SourceError, match="decodes to 64x48, the stream declares 32x32"):
        media.decode_frames(str(path), 0, 4, expected_pts=info.frame_pts, size=(32, 32))
    with pytest.raises(media.SourceError, match="over the pixel budget of 1000"):
        media.decode_frames(str(path), 0, 4, expected_pts=info.frame_pts, max_pixels=1000)


def test_archive_keeps_ten_bits_warns_on_truncation_and_bounds_gops_per_actor(
    tmp_path: Path, clip: np.ndarray, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_10bit(src / "ten.mkv", ramp())
    write_truncated(src / "cut.mkv", clip)
    hostile = src / "huge.y4m"
    hostile.write_bytes(b"YUV4MPEG2 W16000 H16000 F24:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 52_000)
    out = tmp_path / "out"
    command = ["archive", str(src), str(out), "--codec", "x265", "--preset", "ultrafast", "--quality", "4"]
    command += ["--gop-frames", "4", "--gops-per-actor", "1"]
    command += [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output  # the over-budget source fails, the others are archived
    assert "Traceback" not in result.output
    assert "warning: " in result.stderr and "cut.mkv" in result.stderr and "declared frames" in result.stderr
    assert "over the pixel budget" in result.stderr
    summary = json.loads(next((out / "runs").glob("*/summary.json")).read_text())
    assert summary["peak_gops_in_flight_per_actor"] == 1
    assert [w["source_uri"] for w in summary["warnings"]] == [str(src / "cut.mkv")]
    rows = {}
    for part in (out / "manifest").glob("*.parquet"):
        for row in pq.read_table(part).to_pylist():
            rows.setdefault(Path(row["source_uri"]).name, row)
    assert (rows["ten.mkv"]["source_bit_depth"], rows["ten.mkv"]["coded_bit_depth"]) == (10, 10)
    assert rows["ten.mkv"]["source_chroma"] == "4:2:0" and rows["ten.mkv"]["source_note"] is None
    assert rows["cut.mkv"]["source_frames_declared"] == 30 and "truncated" in rows["cut.mkv"]["source_note"]
    assert rows["huge.y4m"]["status"] == "failed"

    restored = tmp_path / "ten-restored.mkv"
    done = CliRunner().invoke(app, ["restore", str(out), "ten.mkv", str(restored)])
    assert done.exit_code == 0, done.output
    import av

    with av.open(str(restored)) as container:
        frame = next(container.decode(video=0))
        assert frame.format.name == "gbrp16le"
        assert ten_bit_levels(frame.to_ndarray(format="rgb48le")[None]) >= 48
    verify = CliRunner().invoke(app, ["verify", str(out)])
    assert verify.exit_code == 0, verify.output


def write_cut_mp4(path: Path, clip: np.ndarray, frames: int = 72, keep: float = 0.6) -> Path:
    """An H.264 (with B-frames) MP4 whose index is at the front (`faststart`, as streaming sites write
    them), cut to its first `keep` of bytes: the index still declares every frame, and the last
    packet left is partial (the demuxer flags it corrupt)."""
    import av

    whole = path.with_suffix(".whole.mp4")
    moving = np.concatenate([clip, clip[::-1]] * (frames // (2 * len(clip)) + 1))[:frames]
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for image in moving:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("keep", [0.3, 0.45, 0.6, 0.84, 0.96])
def test_every_frame_probe_counts_in_a_cut_mp4_decodes(tmp_path: Path, clip: np.ndarray, keep: float) -> None:
    """The partial last packet is no frame, and the frames the decoder still holds when it is reached
    (B-frames) come out: probe's count is what the GOP decodes give (it once counted the partial
    packet, and the decode lost the held frames: "decoded 11 of frames 16+14")."""
    from pipeline.archive.plan import plan_gops

    cut = str(write_cut_mp4(tmp_path / "cut.mp4", clip, keep=keep))
    info = media.probe(cut)
    assert info.declared_frames == 72 and info.truncated
    decoded = [
        len(media.decode_frames(cut, span.first_frame, span.frame_count, expected_pts=span.pts))
        for span in plan_gops(info.frame_count, 16, info.frame_pts)
    ]
    assert sum(decoded) == info.frame_count


def test_a_cut_mp4_is_archived_with_a_warning_and_its_declared_frame_count(
    tmp_path: Path, clip: np.ndarray, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_cut_mp4(src / "cut.mp4", clip)
    out = tmp_path / "out"
    command = ["archive", str(src), str(out), "--gop-frames", "16"]
    command += [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "1 ok, 0 failed" in result.stdout and "of 72 declared frames" in result.stderr
    assert not (out / "markers" / "failed").exists()
    rows = [r for part in (out / "manifest").glob("*.parquet") for r in pq.read_table(part).to_pylist()]
    assert {r["status"] for r in rows} == {"ok"} and {r["source_frames_declared"] for r in rows} == {72}
    archived = sum(r["frame_count"] for r in rows)
    restored = tmp_path / "back.mkv"
    assert CliRunner().invoke(app, ["restore", str(out), "cut.mp4", str(restored)]).exit_code == 0
    import av

    with av.open(str(restored)) as container:
        assert sum(1 for _ in container.decode(video=0)) == archived < 72
