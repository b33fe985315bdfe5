"""The archive workflow with SRC and OUT on S3 (a real moto server over HTTP), driven by the CLI
against the session's Ray cluster; and no credential ever reaches the output or the logs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.format.container import read_index
from pipeline.store.storage import filesystem, range_reader

REPO = Path(__file__).resolve().parents[1]


def test_s3_end_to_end_without_credential_leaks(
    sample_dir: Path,
    s3_endpoint: str,
    s3_bucket: str,
    ray_address: str,
    fake_credentials: tuple[str, str],
    fast_metrics: tuple[str, ...],
) -> None:
    fs, _ = filesystem(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    fs.put(str(sample_dir / "sub" / "with-audio.mp4"), f"{s3_bucket}/src/cams/with-audio.mp4")
    fs.put(str(sample_dir / "short.mkv"), f"{s3_bucket}/src/short.mkv")
    fs.put(str(sample_dir / "notes.txt"), f"{s3_bucket}/src/notes.txt")
    data = (sample_dir / "sub" / "with-audio.mp4").read_bytes()
    fs.pipe_file(f"{s3_bucket}/src/broken.mp4", data[: len(data) // 2])
    out = f"s3://{s3_bucket}/archive"
    args = [sys.executable, "-m", "jobs.archive", f"s3://{s3_bucket}/src", out, "--endpoint-url", s3_endpoint]
    args += ["--address", ray_address, "--gop-frames", "16"]
    for metric in fast_metrics:
        args += ["--skip-metric", metric]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ))

    assert proc.returncode == 1, proc.stderr  # broken.mp4 failed, the rest is archived
    assert "Traceback" not in proc.stderr
    assert f"s3://{s3_bucket}/src/broken.mp4" in proc.stderr
    fs.invalidate_cache()
    keys = fs.find(f"{s3_bucket}/archive")
    videos = [k for k in keys if k.endswith(".vdrc")]
    parts = [k for k in keys if "/manifest/" in k]
    # the run compacted its two done videos' parts into one file; the failed video's part stays
    assert len(videos) == 2 and sorted(k.rsplit("/", 1)[-1].split("-")[0] for k in parts) == [
        "compacted",
        "part",
    ]
    assert "manifest compacted 2 parts" in proc.stderr
    rows = [row for part in parts for row in pq.read_table(part, filesystem=fs).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["source_uri"].rsplit("/", 1)[-1] for r in rows if r["status"] == "failed") == [
        "broken.mp4"
    ]
    frames = {}
    for row in ok:
        assert row["archive_uri"].startswith(f"s3://{s3_bucket}/archive/videos/")
        path = row["archive_uri"].removeprefix("s3://")
        index = read_index(range_reader(fs, path), fs.size(path), name=row["archive_uri"])
        entry = index.gops[row["gop_index"]]
        assert (row["offset"], row["length"], row["crc32c"]) == (entry.offset, entry.length, entry.crc32c)
        frames[row["source_uri"].rsplit("/", 1)[-1]] = index.frame_count
        # Hashed while the probe demuxed the object (one read of the source), yet of every byte:
        source = fs.cat_file(row["source_uri"].removeprefix("s3://"))
        assert index.header.source_sha256 == hashlib.sha256(source).hexdigest()
    assert frames == {"with-audio.mp4": 37, "short.mkv": 12}

    key_id, secret = fake_credentials
    for text in (proc.stdout, proc.stderr):
        assert key_id not in text and secret not in text
    for key in keys:
        blob = fs.cat_file(key)
        assert key_id.encode() not in blob and secret.encode() not in blob, key
