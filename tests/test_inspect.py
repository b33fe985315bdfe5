"""`inspect` shows one object's header, index and rates from its tail; `ls` lists an archive's videos
with status, rate and quality. Real archive (Ray, PyAV), a truncated source for a failed video."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.audit.videos import list_archive
from pipeline.read.inspect import InspectError, inspect_object

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    src = tmp_path_factory.mktemp("inspect") / "src"
    shutil.copytree(sample_dir, src)
    good = src / "sub" / "with-audio.mp4"
    (src / "broken.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out = src.parent / "out"
    config = ArchiveConfig(src=str(src), out=str(out), codec="x264", gop_frames=16, skip_metrics=fast_metrics)
    assert run_archive(config).exit_code == 1  # the broken source fails, the others are archived
    return out


def _manifest(out: Path) -> list[dict]:
    return [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_inspect_object_matches_manifest(archive: Path) -> None:
    container = next((archive / "videos").glob("sub_with-audio*.vdrc"))
    report = inspect_object(str(container))

    rows = sorted(
        (r for r in _manifest(archive) if r["archive_uri"] == str(container)), key=lambda r: r["gop_index"]
    )
    assert report["header"]["frame_count"] == 37 and report["header"]["codec"] == "x264"
    assert [g["frame_count"] for g in report["gops"]] == [16, 16, 5]
    assert [(g["offset"], g["length"]) for g in report["gops"]] == [(r["offset"], r["length"]) for r in rows]
    assert [g["bpp"] for g in report["gops"]] == pytest.approx([r["bpp"] for r in rows])
    payload = sum(r["payload_bytes"] for r in rows)
    assert report["totals"]["bpp"] == pytest.approx(8 * payload / (64 * 48 * 37))  # never divided by 3
    assert report["totals"]["kbps"] == pytest.approx(8 * payload / (37 / 24) / 1000)
    assert [a["name"] for a in report["attachments"]] == ["audio.mka"]


def test_inspect_refuses_non_archives(tmp_path: Path, sample_dir: Path) -> None:
    with pytest.raises(InspectError, match=r"not a vidarc archive|no \.vdrc trailer"):
        inspect_object(str(sample_dir / "short.mkv"))
    with pytest.raises(InspectError, match="no such object"):
        inspect_object(str(tmp_path / "missing.vdrc"))


def test_ls_lists_status_rates_and_quality(archive: Path) -> None:
    videos = {Path(v.source_uri).name: v for v in list_archive(str(archive))}

    assert {name: v.status for name, v in videos.items()} == {
        "broken.mp4": "failed",
        "short.mkv": "ok",
        "with-audio.mp4": "ok",
    }
    assert "broken.mp4" in videos["broken.mp4"].error
    ok = videos["with-audio.mp4"]
    rows = [r for r in _manifest(archive) if r["video_key"] == ok.video_key]
    assert (ok.frames, ok.gops) == (37, 3) and ok.payload_bytes == sum(r["payload_bytes"] for r in rows)
    assert ok.bpp == pytest.approx(8 * ok.payload_bytes / (64 * 48 * 37))
    expected_psnr = sum(r["psnr"] * r["frame_count"] for r in rows) / 37
    assert ok.psnr == pytest.approx(expected_psnr) and ok.ms_ssim is None  # 64×48 is below MS-SSIM's size


def test_ls_marks_rows_without_done_marker_incomplete(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(archive, out)
    marker = next((out / "markers" / "done").glob("short*.json"))
    marker.unlink()  # as if the run died between the manifest part and the marker
    statuses = {Path(v.source_uri).name: v.status for v in list_archive(str(out))}
    assert statuses["short.mkv"] == "incomplete" and statuses["with-audio.mp4"] == "ok"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    cmd = [sys.executable, "-m", "jobs.inspect_archive", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_json_tables_and_errors(archive: Path, tmp_path: Path) -> None:
    container = next((archive / "videos").glob("short*.vdrc"))
    as_json = _cli(str(container), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["totals"]["frames"] == 12
    table = _cli("inspect", str(container))
    assert table.returncode == 0 and "GOP index" in table.stdout
    listing = _cli("ls", str(archive), "--json")
    assert sorted(v["status"] for v in json.loads(listing.stdout)) == ["failed", "ok", "ok"]
    bad = tmp_path / "bad.vdrc"
    bad.write_bytes(container.read_bytes()[:-5])
    broken = _cli(str(bad))
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and str(bad) in broken.stderr
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize("name", ["v2/glvc.vdrc", "v2/gvc-flf2v.vdrc"])
def test_inspect_tells_self_checked_gops_apart_by_their_own_crc(name: str) -> None:
    """A GLVC (format 2) or GVC payload ends with its own CRC-32C, so the index's CRC of it is the
    CRC-32C residue, identical for every GOP; inspect shows the payload's own CRC beside it."""
    from pipeline.format.container import crc32c
    from pipeline.read.reader import ArchiveReader

    path = REPO / "tests" / "golden" / name
    report = inspect_object(str(path))
    reader = ArchiveReader(str(path))
    assert {g["crc32c"] for g in report["gops"]} == {"48674bc7"}  # the index's field, unchanged
    own = [g["payload_crc32c"] for g in report["gops"]]
    assert own == [f"{crc32c(reader.gop(g['index'])[:-4]):08x}" for g in report["gops"]]
    assert len(set(own)) == len(own)
    listed = subprocess.run(
        [sys.executable, "-m", "jobs.inspect_archive", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert listed.returncode == 0 and all(f"{crc}*" in listed.stdout for crc in own), listed.stdout


def test_inspect_shows_no_payload_crc_where_the_index_crc_identifies_gops() -> None:
    report = inspect_object(str(REPO / "tests" / "golden" / "v1" / "x264.vdrc"))
    assert all(g["payload_crc32c"] is None for g in report["gops"])
