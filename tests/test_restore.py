"""`restore`: only the needed GOPs are read, frames and rate come back exactly, audio is muxed back,
and bad requests give one line and no DEST (real archive from a real Ray run, real PyAV files)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from codec.registry import create_codec
from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.format.container import read_attachment, read_gop, read_index
from pipeline.metrics import psnr_rgb
from pipeline.read.restore import RestoreError, find_video, parse_frame_range, restore_video
from pipeline.store.storage import filesystem, range_reader

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    """The sample collection plus a second `short.mkv` in another folder, archived with 4-frame GOPs."""
    src = tmp_path_factory.mktemp("restore") / "src"
    shutil.copytree(sample_dir, src)
    (src / "other").mkdir()
    shutil.copy(src / "short.mkv", src / "other" / "short.mkv")
    out = src.parent / "out"
    config = ArchiveConfig(src=str(src), out=str(out), codec="x264", gop_frames=4, skip_metrics=fast_metrics)
    assert run_archive(config).exit_code == 0
    return out


def _decode_archive(container: Path) -> tuple[dict, np.ndarray]:
    fs, path = filesystem(str(container))
    read = range_reader(fs, path)
    index = read_index(read, container.stat().st_size, name=str(container))
    codec = create_codec(index.header.codec)
    w, h = index.header.width, index.header.height
    frames = [codec.decode(read_gop(read, g, name="x"), g.frame_count, w, h) for g in index.gops]
    return index, np.concatenate(frames)


def _read_file(path: Path) -> tuple[np.ndarray, object, int]:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = (
            [p for p in container.demux(*container.streams.audio) if p.size]
            if container.streams.audio
            else []
        )
    return frames, rate, len(audio)


def test_whole_video_to_mkv_is_exact_with_audio(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "restored.mkv"
    result = restore_video(str(archive), "with-audio.mp4", str(dest))

    index, expected = _decode_archive(Path(result.archive_uri))
    frames, rate, audio_packets = _read_file(dest)
    assert frames.shape == expected.shape == (37, 48, 64, 3)
    assert np.array_equal(frames, expected)  # lossless: the archive's frames, bit for bit
    assert rate == 24 and result.fps == Fraction(24)
    blob = read_attachment(
        range_reader(*filesystem(result.archive_uri)), index.attachment("audio.mka"), name="a"
    )
    with av.open(io.BytesIO(blob)) as stored:
        stored_packets = [p for p in stored.demux(stored.streams.audio[0]) if p.size]
    assert result.audio and audio_packets == len(stored_packets) > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "restored.mkv"]  # no temporaries left
    again = tmp_path / "again" / "restored.mkv"
    again.parent.mkdir()
    restore_video(str(archive), "with-audio.mp4", str(again))
    assert again.read_bytes() == dest.read_bytes()  # the same bytes each time (no random segment UID)


def test_frame_range_decodes_only_covering_gops(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "range.mkv"
    result = restore_video(str(archive), "sub/with-audio.mp4", str(dest), frames=parse_frame_range("5:11"))

    assert (result.first_frame, result.frame_count, result.gops_decoded) == (5, 6, 2)  # GOPs 4-7, 8-11
    _, expected = _decode_archive(Path(result.archive_uri))
    frames, _, audio_packets = _read_file(dest)
    assert np.array_equal(frames, expected[5:11])
    # 6 frames at 24 fps = 0.25 s of 48 kHz AAC (1024-sample packets): about 12, whole packets kept
    assert 11 <= audio_packets <= 14


def test_mp4_keeps_the_rational_rate(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "short.mp4"
    result = restore_video(str(archive), "other/short.mkv", str(dest))

    frames, rate, _ = _read_file(dest)
    _, expected = _decode_archive(Path(result.archive_uri))
    assert rate == Fraction(30000, 1001) and frames.shape == expected.shape == (12, 48, 64, 3)
    assert psnr_rgb(expected, frames) > 38  # CRF 10: visually transparent, not lossless
    assert not result.audio


def test_ambiguous_and_unknown_names(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(RestoreError, match=r"ambiguous; candidates: .*short\.mkv.*short\.mkv"):
        find_video(str(archive), "short.mkv")
    with pytest.raises(RestoreError, match=r"no archived video named .nope\.mp4."):
        restore_video(str(archive), "nope.mp4", str(tmp_path / "x.mp4"))
    with pytest.raises(RestoreError, match=r"frames 30:50 are outside 0:37"):
        restore_video(str(archive), "with-audio.mp4", str(tmp_path / "x.mp4"), frames=(30, 50))
    with pytest.raises(RestoreError, match=r"must end in \.mp4 or \.mkv"):
        restore_video(str(archive), "with-audio.mp4", str(tmp_path / "x.avi"))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_gop_fails_cleanly_without_dest(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(archive, out)
    key = find_video(str(out), "with-audio.mp4").video_key
    container = out / "videos" / f"{key}.vdrc"
    index, _ = _decode_archive(container)
    data = bytearray(container.read_bytes())
    data[index.gops[3].offset + 10] ^= 0xFF
    container.write_bytes(bytes(data))
    dest = tmp_path / "dest" / "x.mkv"
    dest.parent.mkdir()

    with pytest.raises(RestoreError, match=rf"{container}: GOP 3 .*CRC32C"):
        restore_video(str(out), key, str(dest))
    assert list(dest.parent.iterdir()) == []


def test_cli_one_line_errors_and_success(archive: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "jobs.restore", *args]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    bad = run(str(archive), "short.mkv", str(tmp_path / "a.mp4"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "ambiguous" in bad.stderr
    ok = run(str(archive), "with-audio.mp4", str(tmp_path / "a.mp4"), "--frames", "0:8")
    assert ok.returncode == 0, ok.stderr
    assert _read_file(tmp_path / "a.mp4")[0].shape[0] == 8


def test_vfr_and_rotated_source_restores_its_timestamps_and_rotation(
    tmp_path: Path, clip: np.ndarray, ray_address: str, vfr_writer, fast_metrics
) -> None:
    """A phone-style source (variable frame rate, display rotation 90°) comes back with the same
    frame timestamps and rotation, whole or as a frame range (timestamps then start at 0)."""
    from pipeline.sources.media import probe

    pts = [0, 40, 80, 200, 240, 400, 440, 480, 700, 740]
    (tmp_path / "src").mkdir()
    source = vfr_writer(tmp_path / "src" / "phone.mkv", np.ascontiguousarray(clip[:10]), pts=pts, rotation=90)
    out = tmp_path / "out"
    config = ArchiveConfig(
        src=str(source), out=str(out), codec="x264", gop_frames=4, skip_metrics=fast_metrics
    )
    assert run_archive(config).exit_code == 0
    (container,) = (out / "videos").glob("*.vdrc")
    _, archived = _decode_archive(container)

    def stamps_ms(path: Path) -> list[int]:
        with av.open(str(path)) as handle:
            stream = handle.streams.video[0]
            return [round(float(f.pts * stream.time_base) * 1000) for f in handle.decode(stream)]

    for suffix in (".mkv", ".mp4"):
        whole = tmp_path / f"whole{suffix}"
        restore_video(str(out), "phone.mkv", str(whole))
        assert stamps_ms(whole) == pts, suffix
        info = probe(str(whole))
        assert (info.rotation, info.frame_count) == (90, 10), suffix
        frames, _, _ = _read_file(whole)
        assert psnr_rgb(archived, frames) > 40  # the archived pictures, not resampled or re-timed

    part = tmp_path / "part.mkv"
    restore_video(str(out), "phone.mkv", str(part), frames=(3, 7))
    assert stamps_ms(part) == [p - 200 for p in pts[3:7]]
    assert probe(str(part)).rotation == 90


def test_restore_to_s3_uploads_the_same_file(archive: Path, tmp_path: Path, s3_endpoint: str, s3_bucket: str):
    """DEST on S3 (moto server): muxed locally (mp4 seeks back), then uploaded atomically."""
    import fsspec

    local = tmp_path / "local.mp4"
    restore_video(str(archive), "with-audio.mp4", str(local))
    remote = f"s3://{s3_bucket}/restored/with-audio.mp4"
    result = restore_video(str(archive), "with-audio.mp4", remote, endpoint_url=s3_endpoint)
    assert result.dest == remote
    s3 = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    fetched = tmp_path / "fetched.mp4"
    fetched.write_bytes(s3.cat_file(remote.removeprefix("s3://")))
    remote_frames, remote_rate, remote_audio = _read_file(fetched)
    local_frames, local_rate, local_audio = _read_file(local)
    assert np.array_equal(remote_frames, local_frames)
    assert (remote_rate, remote_audio) == (local_rate, local_audio)
    assert not list(Path(tempfile.gettempdir()).glob("vidarc-restore-*"))  # the staging file is gone
