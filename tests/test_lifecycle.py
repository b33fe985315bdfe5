"""The archival lifecycle on a real local S3 server (moto over HTTP): objects written to a cold storage
class with their SHA-256 as the store's checksum; reads that refuse frozen objects in one line; `vidarc
thaw` and `--status`; fixity from HEAD requests alone (counted through a logging proxy), local folders
from the recorded sha256; and the bad input of these commands."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from tests.faulty_proxy import FaultyProxy

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, endpoint: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return _finish(_start(*args, endpoint=endpoint), timeout)


def _start(*args: str, endpoint: str | None = None) -> subprocess.Popen:
    """`vidarc ARGS` started, not waited for: commands that do not depend on each other run side by
    side (each is mostly its own start-up), and `_finish` collects each."""
    command = [sys.executable, "-m", "jobs.cli", *args]
    if endpoint:
        command += ["--endpoint-url", endpoint]
    env = dict(os.environ, PYTHONPATH=str(REPO), VIDARC_THAW_POLL_S="0.2")
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(command, cwd=REPO, env=env, **pipes)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"vidarc-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _archive(src: Path, out: str, endpoint: str | None, fast_metrics, **options) -> None:
    config = ArchiveConfig(
        src=str(src), out=out, codec="x264", gop_frames=8, endpoint_url=endpoint,
        skip_metrics=fast_metrics, verify_fraction=None, **options,
    )  # fmt: skip
    assert run_archive(config).exit_code == 0


def _rows(fs, out_path: str) -> list[dict]:
    fs.invalidate_cache()
    parts = [p for p in fs.find(f"{out_path}/manifest") if p.endswith(".parquet")]
    return [row for p in parts for row in pq.read_table(p, filesystem=fs).to_pylist()]


def _keys(rows: list[dict]) -> dict[str, str]:
    return {r["source_uri"].rsplit("/", 1)[-1]: r["video_key"] for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="module")
def cold_archive(sample_dir: Path, s3_endpoint: str, ray_address: str, fast_metrics) -> dict:
    """Two videos archived to DEEP_ARCHIVE (nothing thawed yet)."""
    from pipeline.store.storage import filesystem

    bucket = _bucket(s3_endpoint)
    out = f"s3://{bucket}/cold"
    _archive(sample_dir, out, s3_endpoint, fast_metrics, storage_class="DEEP_ARCHIVE")
    fs, path = filesystem(out, endpoint_url=s3_endpoint)
    rows = _rows(fs, path)
    return {"out": out, "bucket": bucket, "fs": fs, "rows": rows, "keys": _keys(rows)}


def test_cold_objects_hold_their_class_and_checksum_and_the_records_stay_standard(
    cold_archive: dict, s3_endpoint: str
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = cold_archive["bucket"]
    ok = [r for r in cold_archive["rows"] if r["status"] == "ok"]
    assert ok and {r["storage_class"] for r in ok} == {"DEEP_ARCHIVE"}
    for row in ok:
        key = row["archive_uri"].removeprefix(f"s3://{bucket}/")
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["StorageClass"] == "DEEP_ARCHIVE"
        # the store's checksum is the SHA-256 of the bytes, as recorded in the manifest
        assert row["object_checksum"] == "SHA256:" + head["ChecksumSHA256"]
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == row["object_sha256"]
        assert head["ContentLength"] == row["archive_bytes"] and row["generation"] == 1
    listing = client.list_objects_v2(Bucket=bucket, Prefix="cold/")["Contents"]
    classes = {item["Key"].split("/")[1]: set() for item in listing}
    for item in listing:
        classes[item["Key"].split("/")[1]].add(item.get("StorageClass", "STANDARD"))
    assert classes.pop("videos") == {"DEEP_ARCHIVE"}
    assert all(found == {"STANDARD"} for found in classes.values()), classes  # manifest, markers, index
    done = json.loads(cold_archive["fs"].cat_file(next(p for p in cold_archive["fs"].find(
        cold_archive["out"].removeprefix("s3://") + "/markers/done"))))  # fmt: skip
    assert done["storage_class"] == "DEEP_ARCHIVE" and len(done["object_sha256"]) == 64


def test_frozen_reads_refuse_in_one_line_then_thaw_makes_them_readable(
    cold_archive: dict, s3_endpoint: str, tmp_path: Path
) -> None:
    out, keys = cold_archive["out"], cold_archive["keys"]
    key = keys["short.mkv"]
    dest = tmp_path / "short.mkv"
    # everything before the thaw request only reads: side by side
    refused, waiting, verify, export, status = map(_finish, [
        _start("restore", out, key, str(dest), endpoint=s3_endpoint),
        _start("restore", out, key, str(tmp_path / "waited.mkv"), "--wait", endpoint=s3_endpoint),
        _start("verify", out, endpoint=s3_endpoint),
        _start("export", out, str(tmp_path / "exported"), "--where", f"video_key == '{key}'",
               endpoint=s3_endpoint),
        _start("thaw", out, "--status", "--json", endpoint=s3_endpoint),
    ])  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"videos/{key}.vdrc (frozen)" in refused.stderr and "vidarc thaw" in refused.stderr
    assert not dest.exists()
    assert waiting.returncode == 2 and "frozen" in waiting.stderr  # nobody asked: waiting would never end
    assert not (tmp_path / "waited.mkv").exists()

    assert verify.returncode == 2 and "not readable yet (2 frozen)" in verify.stderr, verify.stderr
    assert export.returncode == 2 and "frozen" in export.stderr and "Traceback" not in export.stderr
    assert not (tmp_path / "exported").exists() or not any((tmp_path / "exported").iterdir())

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["by_state"] == {"frozen": 2}

    asked = _cli("thaw", out, "short.mkv", "--days", "2", "--tier", "bulk", endpoint=s3_endpoint)
    assert asked.returncode == 0, asked.stderr
    assert "thaw asked for 1 objects" in asked.stdout
    # moto makes the copy at once (S3 takes hours): the object is now readable for two days
    after = json.loads(_cli("thaw", out, "--status", "--json", endpoint=s3_endpoint).stdout)
    states = {d["video_keys"][0]: d["state"] for d in after["objects_detail"]}
    assert states == {key: "thawed", keys["with-audio.mp4"]: "frozen"}
    assert after["first_expiry"]

    restored, partial = map(_finish, [
        _start("restore", out, key, str(dest), "--wait", endpoint=s3_endpoint),
        _start("verify", out, "--readable-only", "--json", endpoint=s3_endpoint),
    ])  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    import av

    with av.open(str(dest)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12

    report = json.loads(partial.stdout)
    assert partial.returncode == 0, partial.stderr
    assert report["containers_checked"] == 1 and report["gops_decoded"] >= 1
    assert any("left out (--readable-only" in note for note in report["notes"])


def test_fixity_scan_names_changed_and_missing_objects_without_a_get(
    sample_dir: Path, s3_endpoint: str, ray_address: str, fast_metrics
) -> None:
    import boto3

    bucket = _bucket(s3_endpoint)
    out = f"s3://{bucket}/fix"
    _archive(sample_dir, out, s3_endpoint, fast_metrics, storage_class="GLACIER")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    from pipeline.store.storage import filesystem

    fs, path = filesystem(out, endpoint_url=s3_endpoint)
    keys = _keys(_rows(fs, path))
    with FaultyProxy(s3_endpoint) as proxy:
        clean = _cli("verify", out, "--scan", "checksums", "--json", endpoint=proxy.url)
        assert clean.returncode == 0, clean.stderr
        assert json.loads(clean.stdout)["by_state"] == {"ok": 2}
        # behind the archive's back: one object rewritten (same size, other bytes), one deleted
        changed, gone = f"fix/videos/{keys['with-audio.mp4']}.vdrc", f"fix/videos/{keys['short.mkv']}.vdrc"
        size = client.head_object(Bucket=bucket, Key=changed)["ContentLength"]
        client.put_object(
            Bucket=bucket, Key=changed, Body=b"\0" * size, StorageClass="GLACIER", ChecksumAlgorithm="SHA256"
        )
        client.delete_object(Bucket=bucket, Key=gone)
        proxy.log.clear()
        scanned = _cli("verify", out, "--scan", "checksums", "--json", endpoint=proxy.url)
        requests = list(proxy.log)
    report = json.loads(scanned.stdout)
    assert scanned.returncode == 1 and "Traceback" not in scanned.stderr
    assert report["by_state"] == {"changed": 1, "missing": 1}
    assert any(changed in f and "changed" in f for f in report["failures"])
    assert any(gone in f and "missing" in f for f in report["failures"])
    on_objects = [(method, p) for method, p, _ in requests if "/videos/" in p]
    assert sorted(method for method, _ in on_objects) == ["HEAD", "HEAD"]  # one HEAD each, no GET
    assert report["store_requests"] == 2 and report["rows_uri"].endswith(".parquet")


def test_local_fixity_hashes_against_the_recorded_sha256(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics
) -> None:
    out = tmp_path / "local"
    _archive(sample_dir, str(out), None, fast_metrics)
    clean = _cli("verify", str(out), "--scan", "checksums")
    assert clean.returncode == 0 and "2 ok" in clean.stdout, clean.stdout + clean.stderr
    victim = sorted((out / "videos").rglob("*.vdrc"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped: same size, other content
    victim.write_bytes(bytes(data))
    flipped = _cli("verify", str(out), "--scan", "checksums")
    assert flipped.returncode == 1 and f"{victim.name}: changed" in flipped.stderr


def test_bad_lifecycle_input_is_one_line_and_writes_nothing(
    cold_archive: dict, s3_endpoint: str, tmp_path: Path, sample_dir: Path
) -> None:
    out = cold_archive["out"]
    unknown, local_cold, status = map(_finish, [  # side by side: none of them changes anything
        _start("archive", str(sample_dir), str(tmp_path / "a"), "--storage-class", "FROZEN"),
        _start("archive", str(sample_dir), str(tmp_path / "b"), "--storage-class", "glacier"),
        _start("thaw", out, "--status", "--json", endpoint=s3_endpoint),
    ])  # fmt: skip
    for result, words in ((unknown, "unknown storage class 'FROZEN'"), (local_cold, "needs an s3:// OUT")):
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    before = json.loads(status.stdout)
    cases = (
        (("--days", "0"), "--days must be at least 1"),
        (("nope.mp4",), "no archived video named 'nope.mp4'"),
        (("--tier", "fast"), "unknown thaw tier 'fast'"),
        (("--tier", "Expedited"), "DEEP_ARCHIVE has no Expedited tier"),
        (("--where", "psnr >"), "--where: the expression ends too early"),
    )
    started = [_start("thaw", out, *args, endpoint=s3_endpoint) for args, _ in cases]
    for (args, words), result in zip(cases, map(_finish, started), strict=True):
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    after = json.loads(_cli("thaw", out, "--status", "--json", endpoint=s3_endpoint).stdout)
    assert after["by_state"] == before["by_state"]  # no restore request went out


def test_a_cold_pack_is_one_object_with_one_checksum(
    sample_dir: Path, s3_endpoint: str, ray_address: str, fast_metrics
) -> None:
    import boto3

    from pipeline.store.storage import filesystem

    bucket = _bucket(s3_endpoint)
    out = f"s3://{bucket}/packed"
    _archive(sample_dir, out, s3_endpoint, fast_metrics, storage_class="DEEP_ARCHIVE", pack_mb=64)
    fs, path = filesystem(out, endpoint_url=s3_endpoint)
    ok = [r for r in _rows(fs, path) if r["status"] == "ok"]
    assert len({r["video_key"] for r in ok}) == 2 and len({r["archive_uri"] for r in ok}) == 1
    pack_key = ok[0]["archive_uri"].removeprefix(f"s3://{bucket}/")
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(
        Bucket=bucket, Key=pack_key, ChecksumMode="ENABLED"
    )
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    assert {(r["storage_class"], r["object_checksum"]) for r in ok} == {
        ("DEEP_ARCHIVE", "SHA256:" + head["ChecksumSHA256"])
    }
    scan = _cli("verify", out, "--scan", "checksums", "--json", endpoint=s3_endpoint)
    assert scan.returncode == 0 and json.loads(scan.stdout)["by_state"] == {"ok": 1}, scan.stderr
    asked = json.loads(_cli("thaw", out, "--json", endpoint=s3_endpoint).stdout)
    assert asked["objects"] == 1 and len(asked["objects_detail"][0]["video_keys"]) == 2


def test_a_store_without_additional_checksums_still_archives_and_says_so(
    sample_dir: Path, s3_endpoint: str, ray_address: str, fast_metrics
) -> None:
    from pipeline.store.storage import filesystem
    from tests.faulty_proxy import Rule

    bucket = _bucket(s3_endpoint)
    out = f"s3://{bucket}/plain"
    with FaultyProxy(s3_endpoint) as proxy:  # a store that refuses x-amz-checksum-sha256 on PUT
        refused = proxy.add(
            Rule("400", pattern="/videos/", method="PUT", header="x-amz-checksum-sha256", count=None)
        )
        _archive(sample_dir, out, proxy.url, fast_metrics)
        assert refused.hits >= 1
        scan = _cli("verify", out, "--scan", "checksums", "--json", endpoint=proxy.url)
    fs, path = filesystem(out, endpoint_url=s3_endpoint)
    ok = [r for r in _rows(fs, path) if r["status"] == "ok"]
    assert ok and all(r["object_checksum"] is None and len(r["object_sha256"]) == 64 for r in ok)
    report = json.loads(scan.stdout)
    assert scan.returncode == 0 and report["by_state"] == {"unrecorded": 2}, scan.stderr
