"""Manifests that survive damage: parts carry Parquet page checksums and column checksums, each part
is read on its own, and one damaged part costs only its own video — named by ls, audit, restore and
verify, while the other videos list, audit, restore and verify normally."""

from __future__ import annotations

import datetime as dt
import io
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.manifest import COLUMN_CHECKSUMS_KEY, ArchiveParts, parquet_bytes, parse_part

ROWS = [
    {
        "run_id": "r1",
        "video_key": "k",
        "source_uri": "s3://b/v.mp4",
        "gop_index": i,
        "codec": "x264",
        "codec_version": "libx264 core 165",
        "status": "ok",
        "psnr": 30.0 + i,
        "payload_bytes": 1000 + i,
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    }
    for i in range(3)
]


def test_a_flipped_bit_anywhere_in_a_part_is_caught_or_changes_nothing() -> None:
    """Page checksums cover the pages, the column checksums the rest (the footer): no silent change."""
    data = parquet_bytes(ROWS, MANIFEST_SCHEMA)
    original = parse_part(data, MANIFEST_SCHEMA).to_pylist()
    rng = random.Random(5)
    caught = 0
    for offset in rng.sample(range(len(data)), 150):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << rng.randrange(8)
        try:
            rows = parse_part(bytes(damaged), MANIFEST_SCHEMA).to_pylist()
        except ValueError as exc:
            assert "\n" not in str(exc)
            caught += 1
            continue
        assert rows == original, f"a flip at byte {offset} changed the rows silently"
    assert caught > 60


def test_parts_of_earlier_releases_and_hostile_parts() -> None:
    old = io.BytesIO()  # no page checksums, no column checksums, fewer columns: reads, new columns null
    pq.write_table(pa.Table.from_pylist(ROWS).drop_columns(["created_at"]), old)
    table = parse_part(old.getvalue(), MANIFEST_SCHEMA, ["video_key", "psnr", "created_at"])
    assert table.column("psnr").to_pylist() == [30.0, 31.0, 32.0]
    assert table.column("created_at").null_count == 3
    wide = io.BytesIO()  # integers wider than 64 bits (the audit once crashed on them)
    huge = pa.array([2**70], pa.decimal256(70, 0))
    pq.write_table(pa.table({"video_key": ["k"], "gop_index": huge}), wide)
    with pytest.raises(ValueError):
        parse_part(wide.getvalue(), MANIFEST_SCHEMA)
    far = io.BytesIO()  # a date no reader can represent
    pq.write_table(pa.table({"created_at": pa.array([2**62], pa.timestamp("us", tz="UTC"))}), far)
    with pytest.raises(ValueError):
        parse_part(far.getvalue(), MANIFEST_SCHEMA)
    for junk in (b"", b"PAR1", b"not parquet at all" * 10):
        with pytest.raises(ValueError):
            parse_part(junk, MANIFEST_SCHEMA)


def test_written_parts_carry_both_checksums() -> None:
    parquet = pq.ParquetFile(io.BytesIO(parquet_bytes(ROWS, MANIFEST_SCHEMA)))
    assert COLUMN_CHECKSUMS_KEY.encode() in parquet.metadata.metadata
    flipped = bytearray(parquet_bytes(ROWS, MANIFEST_SCHEMA))
    page = parquet.metadata.row_group(0).column(MANIFEST_SCHEMA.get_field_index("psnr"))
    start = page.dictionary_page_offset or page.data_page_offset
    flipped[start + page.total_compressed_size - 2] ^= 0x01  # inside psnr's last data page
    with pytest.raises(ValueError, match=r"(?i)checksum|crc"):
        parse_part(bytes(flipped), MANIFEST_SCHEMA)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    out = tmp_path_factory.mktemp("damage") / "out"
    config = ArchiveConfig(
        src=str(sample_dir),
        out=str(out),
        codec="x264",
        gop_frames=12,
        skip_metrics=fast_metrics,
        compact=False,  # the per-video parts, one of which each test damages
    )
    assert run_archive(config).exit_code == 0
    return out


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_one_damaged_part_costs_only_its_own_video(archive: Path, tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(archive, out)
    part = next((out / "manifest").glob("*with-audio*.parquet"))
    key = part.name.removeprefix("part-").removesuffix(".parquet")
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * len(data))
    other = next(p for p in (out / "manifest").glob("*.parquet") if p != part)
    other_key = other.name.removeprefix("part-").removesuffix(".parquet")
    assert ArchiveParts(str(out)).read(["video_key"]).num_rows > 0

    runner = CliRunner()
    listing = runner.invoke(app, ["ls", str(out), "--json"])
    assert listing.exit_code == 1 and "Traceback" not in listing.output
    import json

    statuses = {v["video_key"]: v["status"] for v in json.loads(listing.stdout)}
    assert statuses == {key: "damaged", other_key: "ok"}
    assert str(part) in listing.stderr

    audit = runner.invoke(app, ["audit", str(out), "--json"])
    assert audit.exit_code == 1 and str(part) in audit.stderr
    report = json.loads(audit.stdout)
    assert report["rows"] > 0 and [d["video_key"] for d in report["damaged_parts"]] == [key]

    restored = runner.invoke(app, ["restore", str(out), "short.mkv", str(tmp_path / "short.mkv")])
    assert restored.exit_code == 0, restored.output
    refused = runner.invoke(app, ["restore", str(out), key, str(tmp_path / "audio.mkv")])
    assert refused.exit_code == 2 and str(part) in refused.stderr and "Traceback" not in refused.output
    assert not (tmp_path / "audio.mkv").exists()

    verify = runner.invoke(app, ["verify", str(out)])
    assert verify.exit_code == 1 and str(part) in verify.stderr
    failed_lines = [line for line in verify.stderr.splitlines() if "FAILED" in line]
    assert len(failed_lines) == 1  # the part, once; the other video verifies clean
