"""Reads that cost what they touch, not what the archive holds: the storage requests of a restore are
counted on a real local S3 server (every request through a logging proxy) and must not change when the
manifest grows by 100,000 rows; an archive written before the video index still restores (by a scan,
with a warning); a packed video is found from its key entry and its pack's marker."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.manifest import parquet_bytes
from tests.faulty_proxy import FaultyProxy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    src = tmp_path_factory.mktemp("scale-reads") / "src"
    shutil.copytree(sample_dir, src)
    out = src.parent / "out"
    config = ArchiveConfig(
        src=str(src),
        out=str(out),
        codec="x264",
        gop_frames=8,
        skip_metrics=fast_metrics,
        verify_fraction=None,
        compact=False,  # the per-video parts layout; tests compact copies of it
    )
    assert run_archive(config).exit_code == 0
    return out


def _keys(out: Path) -> dict[str, str]:
    """file name of the source -> video key, from the done markers."""
    import json

    keys = {}
    for marker in (out / "markers" / "done").glob("*.json"):
        record = json.loads(marker.read_text())
        keys[record["source_uri"].rsplit("/", 1)[-1]] = record["video_key"]
    return keys


def _synthetic_rows(parts: int, rows_per_part: int) -> list[tuple[str, bytes]]:
    """`parts` manifest files of `rows_per_part` rows of other videos each (as many rows as a large
    archive's manifest holds; their objects need not exist: a bounded read never opens them)."""
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    files = []
    for p in range(parts):
        rows = [
            {
                "run_id": "r",
                "video_key": f"synthetic-{p:03d}-{i:05d}-{p * rows_per_part + i:012x}",
                "source_uri": f"s3://elsewhere/clip-{p}-{i}.mp4",
                "gop_index": 0,
                "first_frame": 0,
                "frame_count": 8,
                "width": 64,
                "height": 48,
                "codec": "x264",
                "status": "ok",
                "payload_bytes": 1000,
                "psnr": 40.0,
                "created_at": created,
            }
            for i in range(rows_per_part)
        ]
        files.append((f"part-synthetic-{p:03d}.parquet", parquet_bytes(rows, MANIFEST_SCHEMA)))
    return files


def _restore(endpoint: str, out: str, video: str, dest: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "jobs.restore", out, video, str(dest), "--endpoint-url", endpoint]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _requests(proxy: FaultyProxy) -> list[tuple[str, str]]:
    with proxy.lock:
        requests = [(method, path) for method, path, _ in proxy.log]
        proxy.log.clear()
    return requests


def test_restore_requests_do_not_grow_with_the_manifest(
    local_archive: Path, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(local_archive) + "/", f"{s3_bucket}/out/", recursive=True)
    out = f"s3://{s3_bucket}/out"
    key = _keys(local_archive)["with-audio.mp4"]
    with FaultyProxy(s3_endpoint) as proxy:
        measured = {}
        for label in ("small", "grown"):
            if label == "grown":  # 100,000 more manifest rows
                for name, data in _synthetic_rows(20, 5000):
                    fs.pipe(f"{s3_bucket}/out/manifest/{name}", data)
            for video in (key, "with-audio.mp4"):
                result = _restore(proxy.url, out, video, tmp_path / f"{label}.mkv")
                assert result.returncode == 0, result.stderr
                measured[(label, video)] = _requests(proxy)
    for video in (key, "with-audio.mp4"):
        small, grown = measured[("small", video)], measured[("grown", video)]
        assert len(grown) == len(small), (small, grown)  # the same requests, whatever the manifest holds
        outside = [(m, p) for m, p in grown if "/videos/" not in p]
        assert not [p for _, p in outside if "manifest/" in p and key not in p], outside  # no other rows
        assert len(outside) <= 6, outside  # markers, index entries, the video's own part
    by_key = [p for _, p in measured[("grown", key)] if "/videos/" not in p]
    assert not [p for p in by_key if "index/names" in p]  # a key needs no name lookup


def test_archive_written_before_the_index_still_restores(local_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(local_archive, out)
    shutil.rmtree(out / "index")  # as an earlier release left it
    key = _keys(out)["with-audio.mp4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    by_name = subprocess.run(
        [sys.executable, "-m", "jobs.restore", str(out), "with-audio.mp4", str(tmp_path / "a.mkv")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert by_name.returncode == 0, by_name.stderr
    assert "written before the video index" in by_name.stderr and "Traceback" not in by_name.stderr
    by_key = subprocess.run(
        [sys.executable, "-m", "jobs.restore", str(out), key, str(tmp_path / "b.mkv")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert by_key.returncode == 0 and "warning" not in by_key.stderr  # the done marker names the object
    missing = subprocess.run(
        [sys.executable, "-m", "jobs.restore", str(out), "nope.mp4", str(tmp_path / "c.mkv")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "no archived video named 'nope.mp4'" in missing.stderr
    assert not (tmp_path / "c.mkv").exists()

    from pipeline.read.locate import backfill_index, by_name, index_complete
    from pipeline.store.storage import filesystem

    assert backfill_index(str(out)) == len(_keys(out))  # what `vidarc compact` does to such an archive
    fs, root = filesystem(str(out))
    assert index_complete(fs, root) and [k for k, _ in by_name(fs, root, "with-audio.mp4")] == [key]
    indexed = subprocess.run(
        [sys.executable, "-m", "jobs.restore", str(out), "with-audio.mp4", str(tmp_path / "d.mkv")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert indexed.returncode == 0 and "warning" not in indexed.stderr


def test_packed_video_is_found_from_its_key_entry(
    tmp_path: Path, sample_dir: Path, ray_address: str, fast_metrics
) -> None:
    from pipeline.read.locate import by_key, index_complete
    from pipeline.read.restore import find_video
    from pipeline.store.storage import filesystem

    out = tmp_path / "packed"
    config = ArchiveConfig(
        src=str(sample_dir), out=str(out), codec="x264", gop_frames=8, skip_metrics=fast_metrics,
        verify_fraction=None, pack_mb=64,
    )  # fmt: skip
    assert run_archive(config).exit_code == 0
    fs, root = filesystem(str(out))
    assert index_complete(fs, root)
    entries = list((out / "index" / "keys").glob("*.json"))
    assert entries and not list((out / "markers" / "done").glob("*.json"))  # pack members only
    key = entries[0].name.removesuffix(".json")
    found = find_video(str(out), key)
    assert found.member is not None and "/packs/" in found.archive_uri
    assert find_video(str(out), found.source_uri.rsplit("/", 1)[-1]) == found
    # an entry whose pack never committed (no marker) names nothing
    for marker in (out / "markers" / "packs").glob("*.json"):
        marker.unlink()
    assert by_key(fs, root, key) is None or by_key(fs, root, key).status != "ok"


def _ls_lines(out: Path, *args: str) -> list[dict]:
    import json

    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, ["ls", str(out), "--jsonl", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_ls_streams_in_key_order_and_pages(local_archive: Path, tmp_path: Path, monkeypatch) -> None:
    from pipeline.read import manifest_layout
    from pipeline.tools.compact import compact

    everything = _ls_lines(local_archive)
    keys = [v["video_key"] for v in everything]
    assert len(keys) >= 2 and keys == sorted(keys) and all(v["status"] == "ok" for v in everything)
    first = _ls_lines(local_archive, "--limit", "1")
    rest = _ls_lines(local_archive, "--after", first[-1]["video_key"])
    assert first + rest == everything  # pages join into the whole listing
    compacted = tmp_path / "compacted"
    shutil.copytree(local_archive, compacted)
    compact(str(compacted))
    assert not list((compacted / "manifest").glob("part-*.parquet"))
    assert _ls_lines(compacted) == everything  # the same videos, whatever the layout
    assert _ls_lines(compacted, "--after", keys[0], "--limit", "1") == everything[1:2]
    monkeypatch.setattr(manifest_layout, "PROCESS_THRESHOLD", 1)  # parts parsed in worker processes
    assert _ls_lines(local_archive) == everything


def test_verify_of_a_large_archive_checks_a_seeded_sample(
    local_archive: Path, tmp_path: Path, monkeypatch
) -> None:
    from pipeline.tools import verify
    from pipeline.tools.compact import compact

    monkeypatch.setattr(verify, "IN_MEMORY_ROWS", 2)  # this archive counts as large
    out = tmp_path / "large"
    shutil.copytree(local_archive, out)
    report = verify.run_verify(str(out), count=3, seed=7)
    assert report.ok, report.failures
    assert report.scan == "sample" and 1 <= report.containers_checked <= 3
    decoded = [(r["video_key"], r["gop_index"]) for r in report.rows if r["gop_index"] is not None]
    assert len(decoded) == 3 and all(r["decode_check"] == "exact" for r in report.rows)
    assert any("more than 2" in w for w in report.warnings)
    compact(str(out))
    again = verify.run_verify(str(out), count=3, seed=7)
    assert (
        again.ok
        and [(r["video_key"], r["gop_index"]) for r in again.rows if r["gop_index"] is not None] == decoded
    )
    # a damaged byte in a sampled video's object is found by the sample's object check
    key = decoded[0][0]
    container = out / "videos" / f"{key}.vdrc"
    data = bytearray(container.read_bytes())
    data[-20] ^= 0xFF  # inside the index footer
    container.write_bytes(bytes(data))
    damaged = verify.run_verify(str(out), count=3, seed=7)
    assert not damaged.ok and any(key in line for line in damaged.failures)


def test_inspect_one_video_of_an_archive_by_name(local_archive: Path) -> None:
    from pipeline.read.inspect import InspectError, inspect_object

    key = _keys(local_archive)["with-audio.mp4"]
    report = inspect_object(str(local_archive), video="with-audio.mp4")
    assert report["uri"].endswith(f"videos/{key}.vdrc") and report["totals"]["gops"] >= 1
    with pytest.raises(InspectError, match=r"no archived video named 'nope\.mp4'"):
        inspect_object(str(local_archive), video="nope.mp4")


def test_a_parse_worker_ends_with_the_reader_that_started_it() -> None:
    """`ls`/`audit` parse a large parts layout in worker processes (children of a forkserver, not of
    the reader). A reader killed outright runs no clean-up; its workers must not wait forever."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pipeline.read.manifest_layout import _exit_with\n"
            f"_exit_with({reader.pid})\n"
            "print('watching', flush=True)\n"
            "time.sleep(600)\n",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "watching"
        assert worker.poll() is None  # alive while its reader is
        reader.kill()
        reader.wait()
        assert worker.wait(timeout=120) == 1  # it ended itself: nothing here killed it
    finally:
        for process in (reader, worker):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_verify_checks_each_small_object_with_one_request(
    local_archive: Path, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The full integrity scan of a small archive on S3 reads each object once (it was one ranged GET
    per GOP, attachment, preamble and trailer: 8 for a 14 KB object), and still finds a flipped byte."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(local_archive) + "/", f"{s3_bucket}/verify/", recursive=True)
    out = f"s3://{s3_bucket}/verify"
    objects = sorted(p.name for p in (local_archive / "videos").iterdir())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "jobs.cli", "verify", out, "--count", "1", "--scan", "full"]
    with FaultyProxy(s3_endpoint) as proxy:
        result = subprocess.run(
            [*command, "--endpoint-url", proxy.url], capture_output=True, text=True, env=env, cwd=REPO
        )
        requests = _requests(proxy)
    assert result.returncode == 0, result.stderr
    reads = [path for method, path in requests if method == "GET" and "/videos/" in path]
    per_object = {name: sum(name in path for path in reads) for name in objects}
    # one whole read each for the scan; the sampled GOP's object also gets its decode's index + payload
    assert sorted(per_object.values()) == [1] * (len(objects) - 1) + [3], per_object

    damaged = bytearray(fs.cat(f"{s3_bucket}/verify/videos/{objects[0]}"))
    damaged[len(damaged) // 3] ^= 0x40  # inside a GOP's payload
    fs.pipe(f"{s3_bucket}/verify/videos/{objects[0]}", bytes(damaged))
    result = subprocess.run(
        [*command, "--endpoint-url", s3_endpoint], capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and objects[0] in result.stdout + result.stderr, result.stdout
    assert "Traceback" not in result.stderr
