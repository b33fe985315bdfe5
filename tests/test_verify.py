"""`verify`: an intact archive passes; a flipped byte anywhere, a missing object or a quality mismatch
fails with a line naming the object (and GOP); bad usage exits 2. Real archive, Ray, PyAV, moto S3."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.format.container import PREAMBLE, TRAILER, read_index
from pipeline.format.schema import MANIFEST_SCHEMA, VERIFY_SCHEMA
from pipeline.read.manifest import parquet_bytes
from pipeline.store.storage import filesystem, range_reader
from pipeline.tools.verify import VerifyError, run_verify

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    out = tmp_path_factory.mktemp("verify") / "out"
    config = ArchiveConfig(
        src=str(sample_dir),
        out=str(out),
        codec="x264",
        gop_frames=4,
        skip_metrics=fast_metrics,
        compact=False,  # the per-video parts, which tests edit
    )
    assert run_archive(config).exit_code == 0
    return out


@pytest.fixture
def copy(archive: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(archive, target)
    return target


def _container(out: Path, name: str = "with-audio") -> Path:
    return next(p for p in (out / "videos").glob("*.vdrc") if name in p.name)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _index(path: Path):
    return read_index(range_reader(*filesystem(str(path))), path.stat().st_size, name=str(path))


def test_intact_archive_verifies_every_gop_through_ray(copy: Path) -> None:
    # default: every GOP of a small archive; 13 GOPs -> Ray tasks
    report = run_verify(str(copy), seed=1, against_source=True)

    assert report.ok, report.failures
    assert report.scan == "full" and report.containers_checked == 2
    assert len(report.rows) == report.gops_total == 13  # 37 frames -> 10 GOPs, 12 frames -> 3
    for row in report.rows:
        assert row["crc_ok"] and row["decode_ok"] and row["quality_ok"] and row["against_source"]
        assert abs(row["psnr_verify"] - row["psnr_manifest"]) <= 0.05
        assert row["decode_check"] == "exact" and row["exact_ok"] and row["recon_digest_ok"]
    assert report.checks() == {
        "exact": 13,
        "drift": 0,
        "exact-part": 0,
        "mismatch": 0,
        "unproven": 0,
        "worst_drift_db": None,
        "drift_fingerprint_identical": 0,
    }
    table = pq.read_table(copy / "verify" / f"part-{report.verify_run_id}.parquet")
    assert table.schema.equals(VERIFY_SCHEMA) and table.num_rows == 13


def test_sample_is_seeded_and_sized(copy: Path) -> None:
    first = run_verify(str(copy), count=3, seed=7, scan="index")
    again = run_verify(str(copy), count=3, seed=7, scan="index")
    other = run_verify(str(copy), fraction=0.5, seed=8, scan="index")
    picked = [(r["video_key"], r["gop_index"]) for r in first.rows]
    assert len(picked) == 3 and picked == [(r["video_key"], r["gop_index"]) for r in again.rows]
    assert len(other.rows) == 7  # ceil(0.5 × 13)


@pytest.mark.parametrize("where", ["preamble", "gop", "audio", "footer", "trailer_reserved"])
def test_a_flipped_byte_anywhere_is_caught(copy: Path, where: str) -> None:
    container = _container(copy)
    index = _index(container)
    offsets = {
        "preamble": 6,  # the reserved field: no CRC covers it, the full scan checks it
        "gop": index.gops[7].offset + index.gops[7].length // 2,
        "audio": index.attachment("audio.mka").offset + 5,
        "footer": index.size - TRAILER.size - 20,
        "trailer_reserved": index.size - 10,
    }
    _flip(container, offsets[where])

    report = run_verify(str(copy), count=1, seed=0)  # the one sampled GOP is not where the damage is

    assert not report.ok
    assert any(str(container) in line for line in report.failures), report.failures
    if where == "gop":
        assert any("GOP 7" in line and "CRC32C" in line for line in report.failures)


def test_sampled_corrupt_gop_fails_its_decode_row(copy: Path) -> None:
    container = _container(copy, "short")
    gop = _index(container).gops[1]
    _flip(container, gop.offset + 3)

    report = run_verify(str(copy), fraction=1.0, scan="index")

    failed = [r for r in report.rows if r["status"] == "failed"]
    assert [(r["gop_index"], r["crc_ok"]) for r in failed] == [(1, False)]
    assert report.failures == [failed[0]["error"]] and str(container) in failed[0]["error"]


def test_missing_container_and_quality_mismatch(copy: Path) -> None:
    short = _container(copy, "short")
    short.unlink()
    part = next(p for p in (copy / "manifest").glob("*.parquet") if "with-audio" in p.name)
    table = pq.read_table(part)
    psnr = table.column("psnr").to_pylist()
    psnr[2] += 1.0  # the manifest now claims a better GOP 2 than the bytes give
    table = table.set_column(table.schema.get_field_index("psnr"), "psnr", [psnr])
    pq.write_table(table.replace_schema_metadata(None), part)  # a deliberate edit: no column checksums

    report = run_verify(str(copy), fraction=1.0, against_source=True)

    assert any(str(short) in f and "missing" in f for f in report.failures)
    quality = [r for r in report.rows if r["quality_ok"] is False]
    assert [r["gop_index"] for r in quality] == [2] and "PSNR" in quality[0]["error"]
    # without --against-source no source is read: the decode proof alone passes these GOPs
    proof = run_verify(str(copy), fraction=1.0)
    assert all(
        r["quality_ok"] is None and r["decode_check"] == "exact"
        for r in proof.rows
        if r["gop_index"] is not None
    )


def _forge_digests(out: Path, *, exact_at: int | None = None, recon_at: int | None = None) -> None:
    """Rewrite the with-audio video's manifest part (well formed: its checksums match) so GOP `exact_at`
    records another exact part and GOP `recon_at` other pixels than the decode gives."""
    part = next(p for p in (out / "manifest").glob("*.parquet") if "with-audio" in p.name)
    rows = pq.read_table(part).to_pylist()
    if exact_at is not None:
        rows[exact_at]["exact_sha256"] = "0" * 64  # the exact part (for x264: the pixels) is another
    if recon_at is not None:
        rows[recon_at]["recon_sha256"] = "0" * 64  # only the pixel digest differs: judged by the fingerprint
    part.write_bytes(parquet_bytes(rows, MANIFEST_SCHEMA))


def test_a_decode_that_differs_from_the_encoders_is_a_mismatch_without_the_source(copy: Path) -> None:
    """The manifest's digests stand for what the encoder made: a decode that gives other frames fails."""
    _forge_digests(copy, exact_at=4, recon_at=6)

    report = run_verify(str(copy), fraction=1.0, scan="index")

    bad = [r for r in report.rows if r["decode_check"] == "mismatch"]
    assert [(r["gop_index"], r["exact_ok"], r["status"]) for r in bad] == [(4, False, "failed")]
    assert (
        report.failures == [bad[0]["error"]] and "differs from the encoder's in its pixels" in bad[0]["error"]
    )
    drift = [r for r in report.rows if r["decode_check"] == "drift"]
    assert [(r["gop_index"], r["status"], r["fingerprint_identical"]) for r in drift] == [(6, "ok", True)]


def _refuse(token: str) -> None:
    raise AssertionError(f"not strict JSON: {token}")


def test_an_identical_fingerprint_is_said_in_words_and_stored_as_null_never_inf(copy: Path) -> None:
    """Pixels that differ from the encoder's while the luma fingerprint agrees cell for cell have an
    infinite fingerprint PSNR: no output may carry it (Parquet, JSON) or print it ("inf dB")."""
    _forge_digests(copy, recon_at=6)

    report = run_verify(str(copy), fraction=1.0, scan="index")

    assert report.ok, report.failures
    checks = report.checks()
    assert checks["drift"] == 1 and checks["drift_fingerprint_identical"] == 1
    assert checks["worst_drift_db"] is None
    table = pq.read_table(copy / "verify" / f"part-{report.verify_run_id}.parquet")
    drift = [r for r in table.to_pylist() if r["decode_check"] == "drift"]
    assert [(r["gop_index"], r["fingerprint_psnr"], r["fingerprint_identical"]) for r in drift] == [
        (6, None, True)
    ]
    psnr = [v for v in table.column("fingerprint_psnr").to_pylist() if v is not None]
    assert all(math.isfinite(v) for v in psnr)

    human = _cli(str(copy), "--fraction", "1", "--scan", "index")
    assert human.returncode == 0, human.stderr
    assert "1 drift (fingerprint identical; pixels differ)" in human.stdout
    assert "inf" not in human.stdout.lower()
    as_json = _cli(str(copy), "--fraction", "1", "--scan", "index", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout, parse_constant=_refuse)
    assert document["checks"]["drift_fingerprint_identical"] == 1
    assert document["checks"]["worst_drift_db"] is None


def test_source_gone_is_a_note_not_a_failure(tmp_path: Path, sample_dir: Path, archive: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    out = tmp_path / "out"
    config = ArchiveConfig(src=str(src), out=str(out), codec="x264", skip_metrics=("lpips", "dists", "vmaf"))
    assert run_archive(config).exit_code == 0
    shutil.rmtree(src)

    report = run_verify(str(out), against_source=True)

    assert report.ok and report.rows
    assert all(
        r["decode_ok"] and r["quality_ok"] is None and r["decode_check"] == "exact" for r in report.rows
    )
    assert any("source no longer exists" in w for w in report.warnings)


def test_cuda_verify_on_a_cpu_only_cluster_decodes_on_cpu_with_a_note(copy: Path, ray_address: str) -> None:
    """A KubeRay RayJob's head has no CUDA: verify must not fail for it (it says where it decoded)."""
    report = run_verify(str(copy), count=2, device="cuda", scan="index")

    assert report.ok, report.failures
    assert [r["device"] for r in report.rows] == ["cpu", "cpu"]
    assert any("decoded on CPU instead" in w for w in report.warnings), report.warnings


def test_bad_usage_raises() -> None:
    with pytest.raises(VerifyError, match="not both"):
        run_verify("/nowhere", fraction=0.5, count=3)
    with pytest.raises(VerifyError, match="no such file"):
        run_verify("/nowhere/at/all")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "jobs.verify", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_exit_codes(copy: Path, s3_endpoint: str) -> None:
    ok = _cli(str(copy), "--count", "2", "--scan", "index")
    assert ok.returncode == 0, ok.stderr
    _flip(_container(copy), PREAMBLE.size + 1)
    bad = _cli(str(copy), "--count", "1")
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "Traceback" not in bad.stderr
    usage = _cli(str(copy), "--fraction", "2")
    assert usage.returncode == 2 and usage.stderr.startswith("error: --fraction")
    gone = _cli("s3://no-such-bucket-vidarc/out", "--endpoint-url", s3_endpoint)
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1 and "no-such-bucket-vidarc" in gone.stderr


def test_cli_json_is_the_whole_stdout_with_the_same_exit_codes(copy: Path) -> None:
    """`--json`: stdout is one strict JSON document (scripts parse it whole); progress and failures go
    to stderr; exit codes as without it."""
    ok = _cli(str(copy), "--count", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout, parse_constant=_refuse)
    assert report["ok"] is True and report["exit_code"] == 0 and report["failures"] == []
    assert report["gops_decoded"] == 3 and report["gops_total"] == 13 and report["containers_checked"] == 2
    assert report["checks"]["exact"] == 3 and report["scan"] == "full"
    assert report["rows_uri"].endswith(f"part-{report['verify_run_id']}.parquet")
    assert "verify: decoding 3 GOPs on cpu" in ok.stderr and "verify: 3/3 GOPs decoded in" in ok.stderr

    _flip(_container(copy), PREAMBLE.size + 1)
    bad = _cli(str(copy), "--count", "1", "--json")
    assert bad.returncode == 1, bad.stderr
    failed = json.loads(bad.stdout, parse_constant=_refuse)
    assert failed["ok"] is False and failed["exit_code"] == 1
    assert failed["failures"] and all(str(_container(copy)) in line for line in failed["failures"])
    assert failed["failed_rows"][0]["crc_ok"] is False and "FAILED" in bad.stderr

    usage = _cli(str(copy), "--fraction", "2", "--json")
    assert usage.returncode == 2 and usage.stdout == "" and usage.stderr.startswith("error: --fraction")


def test_verify_on_s3(archive: Path, s3_endpoint: str, s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(archive), f"{s3_bucket}/arch", recursive=True)
    # the manifest's archive_uri still names the local folder: verify reads the objects under OUT

    report = run_verify(f"s3://{s3_bucket}/arch", count=4, endpoint_url=s3_endpoint)

    assert report.ok, report.failures
    assert len(report.rows) == 4 and all(r["archive_uri"].startswith("s3://") for r in report.rows)
    assert fs.exists(f"{s3_bucket}/arch/verify/part-{report.verify_run_id}.parquet")


def test_archive_verify_fraction_runs_verify_at_the_end(
    tmp_path: Path, sample_dir: Path, ray_address: str
) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(
        src=str(sample_dir),
        out=str(out),
        codec="x264",
        skip_metrics=("lpips", "dists", "vmaf"),
        verify_fraction=1.0,
    )
    result = run_archive(config)

    assert result.exit_code == 0 and result.summary["verify"]["failures"] == []
    assert result.summary["verify"]["rows"] == 2
    rows = pq.read_table(next((out / "verify").glob("part-*.parquet"))).to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ok" and r["decode_check"] == "exact" for r in rows)
