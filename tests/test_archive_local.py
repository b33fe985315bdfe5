"""The archive workflow end to end on local folders: real PyAV files, a real local Ray cluster, x264."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from codec.registry import create_codec
from pipeline.archive import ArchiveError, run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.format.container import read_attachment, read_gop, read_index
from pipeline.metrics import UNSAMPLED_NOTE, MetricsSample, psnr_rgb
from pipeline.sources.media import decode_frames, probe
from pipeline.store.storage import filesystem, range_reader


def _manifest(out: Path) -> list[dict]:
    """Every manifest row, from per-video parts and the files a run's compaction merged them into."""
    rows = []
    for path in sorted((out / "manifest").glob("*.parquet")):
        table = pq.read_table(path)
        rows.extend(
            table.drop_columns(sorted({"source_part", "source_sha256"} & set(table.column_names))).to_pylist()
        )
    return rows


def _restore(archive: Path) -> tuple[dict, np.ndarray]:
    """Decode every GOP of a container (what restore does), checking CRCs on the way."""
    fs, path = filesystem(str(archive))
    read = range_reader(fs, path)
    index = read_index(read, archive.stat().st_size, name=str(archive))
    codec = create_codec(index.header.codec)
    w, h = index.header.width, index.header.height
    frames = [codec.decode(read_gop(read, g, name=str(archive)), g.frame_count, w, h) for g in index.gops]
    return index.header, np.concatenate(frames)


def _config(src: Path, out: Path, fast_metrics: tuple[str, ...], **kw) -> ArchiveConfig:
    return ArchiveConfig(src=str(src), out=str(out), codec="x264", skip_metrics=fast_metrics, **kw)


def test_archive_end_to_end_then_resume_and_retry(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    good = samples / "sub" / "with-audio.mp4"
    (samples / "broken.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out"

    result = run_archive(_config(samples, out, fast_metrics, gop_frames=16, metrics_sample=0.5))

    assert result.exit_code == 1  # the truncated source failed; everything else went on
    summary = result.summary
    assert (summary["videos_ok"], summary["videos_failed"]) == (2, 1)
    assert [n.split(":")[0] for n in summary["not_videos"]] == [str(samples / "notes.txt")]
    assert str(samples / "broken.mp4") in summary["failures"][0]["error"]
    rows = _manifest(out)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["source_uri"] == str(samples / "broken.mp4")
    assert "\n" not in failed[0]["error"] and "broken.mp4" in failed[0]["error"]
    assert not list((out / "videos").glob(f"{failed[0]['video_key']}*"))
    assert (out / "markers" / "failed" / f"{failed[0]['video_key']}.json").exists()

    by_source = {}
    for row in ok_rows:
        by_source.setdefault(Path(row["source_uri"]).name, []).append(row)
    assert sorted(by_source) == ["short.mkv", "with-audio.mp4"]
    assert [r["frame_count"] for r in sorted(by_source["with-audio.mp4"], key=lambda r: r["gop_index"])] == [
        16,
        16,
        5,
    ]
    short = by_source["short.mkv"]
    assert [r["frame_count"] for r in short] == [12] and (short[0]["fps_num"], short[0]["fps_den"]) == (
        30000,
        1001,
    )

    for name, video_rows in by_source.items():
        archive = Path(video_rows[0]["archive_uri"])
        assert archive.parent == out / "videos" and archive.exists()
        index = read_index(range_reader(*filesystem(str(archive))), archive.stat().st_size, name=str(archive))
        for row in video_rows:
            entry = index.gops[row["gop_index"]]
            assert (row["offset"], row["length"], row["crc32c"]) == (entry.offset, entry.length, entry.crc32c)
            assert row["payload_bytes"] == entry.length
            assert row["bpp"] == pytest.approx(8 * entry.length / (64 * 48 * row["frame_count"]))
            assert row["psnr"] is not None and row["lpips"] is None and row["vmaf"] is None
            # the expensive metrics (here MS-SSIM: null at 64x48 anyway) follow the seeded sample
            sampled = MetricsSample(0.5).selects(row["video_key"], row["gop_index"])
            assert (UNSAMPLED_NOTE in row["metrics_note"]) is not sampled
            assert (row["target_kind"], row["target_value"]) == ("quality", 23.0)
        header, frames = _restore(archive)
        source = samples / ("sub/with-audio.mp4" if name == "with-audio.mp4" else name)
        info = probe(str(source))
        assert frames.shape == (info.frame_count, 48, 64, 3) == (header.frame_count, 48, 64, 3)
        original = decode_frames(str(source), 0, info.frame_count, expected_pts=info.frame_pts)
        for row in video_rows:  # the manifest's quality is that of the frames a restore gives back
            span = slice(row["first_frame"], row["first_frame"] + row["frame_count"])
            assert psnr_rgb(original[span], frames[span]) == pytest.approx(row["psnr"], abs=1e-6)
            assert row["psnr"] > 25
        assert header.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
        assert header.decoder_options == {}  # x264 needs none; the key is always written

    run_dir = out / "runs" / result.run_id
    config = json.loads((run_dir / "config.json").read_text())
    assert config["versions"]["av"] == av.__version__ and config["codec"]["codec"] == "x264"
    stored_summary = json.loads((run_dir / "summary.json").read_text())
    assert stored_summary["gops"] == 4
    in_sample = sum(MetricsSample(0.5).selects(r["video_key"], r["gop_index"]) for r in ok_rows)
    assert stored_summary["quality_sample"]["fraction"] == 0.5
    assert (
        stored_summary["quality_sample"]["gops_measured"],
        stored_summary["quality_sample"]["gops_sampled"],
    ) == (
        4,
        in_sample,
    )
    # the run compacted the parts of its done videos; the failed video's part stays for a retry
    assert summary["compaction"]["parts_absorbed"] == 2 and summary["compaction"]["files_written"] == 1
    assert sorted(p.name.split("-")[0] for p in (out / "manifest").iterdir()) == ["compacted", "part"]

    # Rerun: done videos are skipped, the failed one is not retried, nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_archive(_config(samples, out, fast_metrics, gop_frames=16))
    assert again.exit_code == 0
    assert (again.summary["videos_skipped_done"], again.summary["videos_skipped_failed"]) == (2, 1)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # --retry-failed reruns only the failed video; its manifest part still has exactly one row.
    retried = run_archive(_config(samples, out, fast_metrics, gop_frames=16, retry_failed=True))
    assert retried.exit_code == 1 and retried.summary["videos_failed"] == 1
    assert retried.summary["videos_skipped_done"] == 2
    assert len(_manifest(out)) == len(rows)


def test_audio_is_copied_losslessly_into_the_archive(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    source = sample_dir / "sub" / "with-audio.mp4"
    out = tmp_path / "out"
    assert run_archive(_config(source, out, fast_metrics)).exit_code == 0
    (archive,) = (out / "videos").glob("*.vdrc")
    fs, path = filesystem(str(archive))
    index = read_index(range_reader(fs, path), archive.stat().st_size, name=path)
    attachment = index.attachment("audio.mka")
    assert attachment is not None and attachment.info["codec"] == "aac"
    blob = read_attachment(range_reader(fs, path), attachment, name=path)
    with av.open(io.BytesIO(blob)) as copied, av.open(str(source)) as original:
        copied_packets = [bytes(p) for p in copied.demux(copied.streams.audio[0]) if p.size]
        original_packets = [bytes(p) for p in original.demux(original.streams.audio[0]) if p.size]
        assert copied.streams.audio[0].codec_context.sample_rate == 48000
    assert copied_packets == original_packets  # stream copy: bit-identical packets


def test_odd_sizes_and_single_frame_videos(
    tmp_path: Path, clip: np.ndarray, ray_address: str, odd_video_writer, fast_metrics: tuple[str, ...]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    wide = np.pad(clip[:37, :38], ((0, 0), (0, 0), (0, 2), (0, 0)), mode="edge")  # 66×38
    odd_video_writer(src / "even-odd-multiple.mkv", np.ascontiguousarray(wide))
    odd_video_writer(src / "tiny-odd.mkv", np.ascontiguousarray(clip[:5, :17, :33]))
    odd_video_writer(src / "one-frame.mkv", np.ascontiguousarray(clip[:1]))
    out = tmp_path / "out"
    result = run_archive(_config(src, out, fast_metrics, gop_frames=16))

    rows = {Path(r["source_uri"]).name: r for r in _manifest(out)}
    for name, (frames, height, width) in {
        "even-odd-multiple.mkv": (37, 38, 66),
        "one-frame.mkv": (1, 48, 64),
    }.items():
        assert rows[name]["status"] == "ok"
        _, restored = _restore(Path(rows[name]["archive_uri"]))
        assert restored.shape == (frames, height, width, 3)
    tiny = rows["tiny-odd.mkv"]
    if tiny["status"] == "ok":  # a codec may pad odd sizes ...
        assert _restore(Path(tiny["archive_uri"]))[1].shape == (5, 17, 33, 3)
        assert result.exit_code == 0
    else:  # ... or refuse them, with the reason and the object named
        assert "tiny-odd.mkv" in tiny["error"] and "33x17" in tiny["error"]
        assert result.exit_code == 1


def test_globs_single_file_and_limit(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    only_mkv = run_archive(_config(samples, tmp_path / "a", fast_metrics, include=("*.mkv",)))
    assert only_mkv.summary["videos_ok"] == 1 and only_mkv.summary["files_listed"] == 1
    no_sub = run_archive(_config(samples, tmp_path / "b", fast_metrics, exclude=("sub/*", "*.txt")))
    assert [Path(r["source_uri"]).name for r in _manifest(tmp_path / "b")] == ["short.mkv"]
    assert no_sub.summary["not_videos"] == []
    single = run_archive(_config(samples / "short.mkv", tmp_path / "c", fast_metrics))
    assert single.exit_code == 0 and single.summary["videos_ok"] == 1
    limited = run_archive(_config(samples, tmp_path / "d", fast_metrics, limit=1))
    assert limited.summary["videos_ok"] == 1 and len(list((tmp_path / "d" / "videos").iterdir())) == 1


def test_empty_folder_is_nothing_to_do_and_missing_src_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_archive(ArchiveConfig(src=str(empty), out=str(tmp_path / "out")))
    assert result.exit_code == 0 and "nothing to archive" in result.message
    assert not (tmp_path / "out").exists()
    with pytest.raises(ArchiveError, match="no such file or prefix") as info:
        run_archive(ArchiveConfig(src=str(tmp_path / "missing"), out=str(tmp_path / "out")))
    assert str(tmp_path / "missing") in str(info.value)
    assert not (tmp_path / "out").exists()


def test_vfr_timestamps_and_rotation_reach_the_archive(
    tmp_path: Path, clip: np.ndarray, ray_address: str, vfr_writer, fast_metrics: tuple[str, ...]
) -> None:
    source = vfr_writer(tmp_path / "phone.mkv", np.ascontiguousarray(clip[:10]), rotation=90)
    out = tmp_path / "out"
    assert run_archive(_config(source, out, fast_metrics, gop_frames=4)).exit_code == 0
    (archive,) = (out / "videos").glob("*.vdrc")
    fs, path = filesystem(str(archive))
    index = read_index(range_reader(fs, path), archive.stat().st_size, name=path)
    header = index.header
    assert (header.rotation, header.vfr, header.frame_count) == (90, True, 10)
    assert (header.fps_num, header.fps_den) == (450, 37)
    stamps = index.attachment("frame_pts.i64")
    assert stamps is not None and stamps.info["time_base"] == "1/1000"
    pts = np.frombuffer(read_attachment(range_reader(fs, path), stamps, name=path), dtype="<i8")
    assert pts.tolist() == [0, 40, 80, 200, 240, 400, 440, 480, 700, 740]
    assert [g.frame_count for g in index.gops] == [4, 4, 2]
