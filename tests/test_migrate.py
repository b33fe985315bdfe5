"""`vidarc migrate OUT NEW_OUT`: archived videos coded again from their decode, with lineage and quality.

Real parts throughout: small archives made by the archive job on the session's local Ray cluster (x264
from real PyAV files, GLVC with the bundled model), migrated by the same job, read back with the read
side. The quality columns are checked against an independent decode of both archives, the lineage
against the parent's bytes, and a migration killed with SIGKILL against its rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig, MigrationSpec
from pipeline.format.container import AUDIO_ATTACHMENT
from pipeline.metrics.fidelity import psnr_rgb
from pipeline.read.reader import ArchiveReader
from pipeline.sources.synthetic import synthetic_clip

REPO = Path(__file__).resolve().parents[1]
SKIP = ("lpips", "dists", "vmaf", "temporal")


def _rows(out: Path) -> list[dict]:
    """Every manifest row of an archive (parts and compacted files), sorted by key and GOP."""
    rows = [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return sorted(rows, key=lambda r: (r["video_key"], r["gop_index"] or 0))


def _frames(uri: str) -> np.ndarray:
    reader = ArchiveReader(uri)
    decoder = reader.decoder_for()
    return np.concatenate([reader.decode(g.index, decoder) for g in reader.index().gops])


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path.removeprefix("file://")).read_bytes()).hexdigest()


def _migrate(parent: Path, new: Path, codec: str, **options) -> object:
    spec = MigrationSpec(
        where=options.pop("where", None),
        source_fraction=options.pop("source_fraction", 1.0),
        keys=options.pop("keys", ()),
    )
    config = ArchiveConfig(
        src=str(parent), out=str(new), codec=codec, skip_metrics=SKIP, migration=spec, **options
    )
    return run_archive(config)


@pytest.fixture(scope="module")
def x264_archive(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, ray_address: str) -> Path:
    """The sample collection (two videos, one with audio) archived with x264 in GOPs of 16 frames."""
    root = tmp_path_factory.mktemp("x264")
    src = root / "src"
    shutil.copytree(sample_dir, src)
    out = root / "out"
    result = run_archive(ArchiveConfig(src=str(src), out=str(out), gop_frames=16, skip_metrics=SKIP))
    assert result.exit_code == 0 and result.summary["videos_ok"] == 2, result.summary.get("failures")
    return out


def test_x264_to_x265_keeps_lineage_and_measures_against_old_decode_and_source(
    x264_archive: Path, tmp_path: Path
) -> None:
    new = tmp_path / "x265"

    result = _migrate(x264_archive, new, "x265", gop_frames=8, verify_fraction=1.0)

    assert result.exit_code == 0 and result.summary["videos_ok"] == 2, result.summary.get("failures")
    assert result.summary["verify"]["checks"]["mismatch"] == 0
    assert result.summary["migration"]["matched_videos"] == 2
    parents = {r["video_key"]: r for r in _rows(x264_archive)}
    rows = _rows(new)
    assert len(rows) == 5 + 2  # 37 frames in GOPs of 8, 12 frames in GOPs of 8
    for row in rows:
        parent = parents[row["video_key"]]  # the parent's key: resume, leases and shards as usual
        assert row["codec"] == "x265" and row["status"] == "ok"
        assert row["generation"] == 2 and parent["generation"] == 1
        assert row["parent_video_key"] == row["video_key"]
        assert row["parent_archive_uri"] == parent["archive_uri"]
        assert row["parent_object_sha256"] == parent["object_sha256"] == _sha256(parent["archive_uri"])
        assert row["source_uri"] == parent["source_uri"]  # the original source, for the lineage
    for key in parents:
        parent_frames = _frames(parents[key]["archive_uri"])
        new_uri = next(r["archive_uri"] for r in rows if r["video_key"] == key)
        new_frames = _frames(new_uri)
        assert new_frames.shape == parent_frames.shape
        source = _decoded(Path(parents[key]["source_uri"].removeprefix("file://")))
        for row in (r for r in rows if r["video_key"] == key):
            span = slice(row["first_frame"], row["first_frame"] + row["frame_count"])
            # psnr: the new encode against the frames it was given, the parent's decode
            assert row["psnr"] == pytest.approx(psnr_rgb(parent_frames[span], new_frames[span]), abs=1e-6)
            # source_psnr: against the original source (still there, unchanged; every GOP sampled)
            assert row["source_psnr"] == pytest.approx(psnr_rgb(source[span], new_frames[span]), abs=1e-6)
            assert row["source_psnr"] < row["psnr"] + 10  # a real measurement, not a copy of psnr
        header = ArchiveReader(new_uri).header
        assert header.extra["lineage"]["generation"] == 2 and header.source_sha256
    with_audio = next(k for k in parents if "with-audio" in parents[k]["source_uri"])
    old_audio = ArchiveReader(parents[with_audio]["archive_uri"]).attachment(AUDIO_ATTACHMENT)
    new_uri = next(r["archive_uri"] for r in rows if r["video_key"] == with_audio)
    assert old_audio and ArchiveReader(new_uri).attachment(AUDIO_ATTACHMENT) == old_audio

    # a third generation, one video chosen by --where, its source gone, packed: lineage to the x265 object
    short_uri = next(r["source_uri"] for r in rows if "short" in r["source_uri"])
    short_source = Path(short_uri.removeprefix("file://"))
    moved = short_source.with_suffix(".moved")
    short_source.rename(moved)
    try:
        third = tmp_path / "x264-again"
        result = _migrate(new, third, "x264", where=f"source_uri == '{short_uri}'", gop_frames=8, pack_mb=1)
    finally:
        moved.rename(short_source)
    assert result.exit_code == 0 and result.summary["videos_ok"] == 1, result.summary.get("failures")
    third_rows = _rows(third)
    second = {(r["video_key"], r["gop_index"]): r for r in rows}
    assert [r["generation"] for r in third_rows] == [3, 3]
    assert all(r["member_offset"] is not None and "/packs/" in r["archive_uri"] for r in third_rows)
    for row in third_rows:
        assert row["parent_object_sha256"] == second[row["video_key"], 0]["object_sha256"]
        assert row["parent_archive_uri"] == second[row["video_key"], 0]["archive_uri"]
        assert row["psnr"] is not None and row["source_psnr"] is None
        assert (
            "source_psnr: the original source" in row["metrics_note"]
            and "no longer exists" in row["metrics_note"]
        )


def test_glvc_archive_migrates_to_av1(tmp_path: Path, ray_address: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    clip = synthetic_clip("astronaut", 9, 32, 32, seed=5)
    path = src / "tiny.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        for image in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    parent = tmp_path / "glvc"
    made = run_archive(
        ArchiveConfig(src=str(src), out=str(parent), codec="glvc", target=None, skip_metrics=SKIP, min_psnr=0)
    )
    assert made.exit_code == 0, made.summary.get("failures")
    new = tmp_path / "av1"

    result = _migrate(parent, new, "av1", where="codec == 'glvc'", source_fraction=0.5, gop_frames=4)

    assert result.exit_code == 0 and result.summary["videos_ok"] == 1, result.summary.get("failures")
    (parent_row, *_), rows = _rows(parent), _rows(new)
    assert {r["codec"] for r in rows} == {"av1"} and sum(r["frame_count"] for r in rows) == 9
    assert all(
        r["generation"] == 2 and r["parent_object_sha256"] == _sha256(parent_row["archive_uri"]) for r in rows
    )
    old, fresh = _frames(parent_row["archive_uri"]), _frames(rows[0]["archive_uri"])
    for row in rows:
        span = slice(row["first_frame"], row["first_frame"] + row["frame_count"])
        assert row["psnr"] == pytest.approx(psnr_rgb(old[span], fresh[span]), abs=1e-6)
    source = _decoded(path)
    measured = [r for r in rows if r["source_psnr"] is not None]
    assert len(measured) == max(1, round(0.5 * len(rows)))  # the seeded sample, at least one GOP
    for row in measured:
        span = slice(row["first_frame"], row["first_frame"] + row["frame_count"])
        assert row["source_psnr"] == pytest.approx(psnr_rgb(source[span], fresh[span]), abs=1e-6)
    for row in rows:
        if row["source_psnr"] is None:
            assert "GOP not in the source sample" in row["metrics_note"]


#: A migration driver paused on a committed state: once the scheduler has handled its first committed
#: video it says so in a file and waits to be killed, so the kill always lands mid-run (as in
#: tests/test_archive_resume.py).
DRIVER = r"""
import sys, time
from pathlib import Path

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig, MigrationSpec
from pipeline.archive.progress import Counters, ProgressDisplay

address, parent, new, paused, *skip = sys.argv[1:]


class PauseOnFirstCommit(ProgressDisplay):
    def refresh(self, force: bool = False) -> None:
        if self.counters.videos_ok >= 1:
            Path(paused).write_text("1")
            while True:
                time.sleep(60)
        super().refresh(force=force)


config = ArchiveConfig(
    src=parent, out=new, address=address, codec="x265", gop_frames=8, skip_metrics=tuple(skip),
    migration=MigrationSpec(source_fraction=0),
)
run_archive(config, display=PauseOnFirstCommit(Counters(), live=False, interval=3600))
"""


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the driver exited ({process.returncode}) before {path.name}: {log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.05)


def _migrate_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.migrate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_killed_migration_resumes_with_every_video_once(
    tmp_path: Path, sample_dir: Path, ray_address: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    videos = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".mp4", ".mkv"))
    for copy in range(3):  # six videos
        for video in videos:
            shutil.copy(video, src / f"{copy}-{video.name}")
    parent = tmp_path / "parent"
    made = run_archive(ArchiveConfig(src=str(src), out=str(parent), gop_frames=16, skip_metrics=SKIP))
    assert made.exit_code == 0 and made.summary["videos_ok"] == 6
    new = tmp_path / "new"
    paused, log = tmp_path / "paused", tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, ray_address, str(parent), str(new), str(paused), *SKIP],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_for(paused, driver, log, 300)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    done_at_kill = len([p for p in (new / "markers" / "done").glob("*.json") if ".tmp-" not in p.name])
    assert 1 <= done_at_kill < 6

    skips = [arg for m in SKIP for arg in ("--skip-metric", m)]
    rerun = _migrate_cli(str(parent), str(new), "--codec", "x265", "--gop-frames", "8", "--address", ray_address,
                         "--source-fraction", "0", *skips)  # fmt: skip

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = re.search(r"(\d+) ok, 0 failed, (\d+) already done", rerun.stdout)
    assert counts and int(counts[2]) >= done_at_kill and int(counts[1]) + int(counts[2]) == 6, rerun.stdout
    rows = _rows(new)
    parents = {r["video_key"] for r in _rows(parent)}
    gops: dict[str, list[int]] = {}
    for row in rows:
        assert row["status"] == "ok" and row["generation"] == 2 and row["codec"] == "x265"
        assert row["source_psnr"] is None and "--source-fraction 0" in row["metrics_note"]
        gops.setdefault(row["video_key"], []).append(row["gop_index"])
    assert set(gops) == parents  # every video once, each GOP once
    assert all(sorted(g) == list(range(len(g))) for g in gops.values())
    assert sorted(len(g) for g in gops.values()) == [2, 2, 2, 5, 5, 5]
    markers = sorted(p.stem for p in (new / "markers" / "done").glob("*.json"))
    assert markers == sorted(parents) and not list((new / "leases").glob("*.json"))
    summary = json.loads(
        max((new / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text()
    )
    assert summary["migration"]["matched_videos"] == 6


@pytest.mark.parametrize(
    "case, args, needle",
    [
        ("missing", ["{tmp}/nowhere", "{tmp}/new"], "nowhere"),
        ("not an archive", ["{tmp}/plain", "{tmp}/new"], "not a vidarc archive"),
        ("same", ["{out}", "{out}/"], "OUT itself"),
        ("inside", ["{out}", "{out}/migrated"], "inside OUT"),
        ("codec", ["{out}", "{tmp}/new", "--codec", "h266"], "unknown codec"),
        ("where syntax", ["{out}", "{tmp}/new", "--where", "psnr >"], "--where"),
        ("where column", ["{out}", "{tmp}/new", "--where", "nonsense > 1"], "unknown column"),
        ("where nothing", ["{out}", "{tmp}/new", "--where", "psnr > 1000"], "matches no archived video"),
        ("target", ["{out}", "{tmp}/new", "--target-bpp", "-1"], "positive"),
        ("two targets", ["{out}", "{tmp}/new", "--quality", "20", "--target-kbps", "9"], "at most one"),
        ("fraction", ["{out}", "{tmp}/new", "--source-fraction", "2"], "--source-fraction"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    x264_archive: Path, tmp_path: Path, case: str, args: list[str], needle: str
) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("not an archive")
    before = sorted(str(p) for p in x264_archive.rglob("*"))
    argv = [a.format(tmp=tmp_path, out=x264_archive) for a in args]

    proc = _migrate_cli(*argv, timeout=120)

    assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (case, proc.stderr)
    assert not (tmp_path / "new").exists() and not (x264_archive / "migrated").exists()
    assert sorted(str(p) for p in x264_archive.rglob("*")) == before


def test_frozen_parent_fails_its_video_with_a_thaw_hint(
    tmp_path: Path, sample_dir: Path, s3_endpoint: str, s3_bucket: str, ray_address: str
) -> None:
    parent = f"s3://{s3_bucket}/cold"
    made = run_archive(
        ArchiveConfig(
            src=str(sample_dir / "short.mkv"),
            out=parent,
            endpoint_url=s3_endpoint,
            skip_metrics=SKIP,
            storage_class="GLACIER",
        )
    )
    assert made.exit_code == 0 and made.summary["videos_ok"] == 1, made.summary.get("failures")
    new = tmp_path / "new"

    result = run_archive(
        ArchiveConfig(
            src=parent, out=str(new), endpoint_url=s3_endpoint, codec="x265", skip_metrics=SKIP,
            migration=MigrationSpec(),
        )
    )  # fmt: skip

    assert result.exit_code == 1 and result.summary["videos_failed"] == 1
    (failure,) = result.summary["failures"]
    assert "cold storage" in failure["error"] and "vidarc thaw" in failure["error"]
    assert "\n" not in failure["error"] and not list((new / "videos").glob("*.vdrc"))
