"""`vidarc compact` and the classic reference's parts (`pipeline.tools.compact_reference`): the parts of
done videos whose reference is complete become `reference/compacted-*.parquet` files, audit and ls say
exactly what they said before (also after a crash between writing and deleting), a pending reference
keeps its part, damage is named, and a second run changes nothing (local store and moto S3, no Ray)."""

from __future__ import annotations

import datetime
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

import pipeline.tools.compact_reference as compact_reference
from jobs.audit import app as audit_app
from jobs.inspect_archive import register as register_inspect
from pipeline.archive.reference import pending_path, reference_path
from pipeline.audit import costs
from pipeline.audit.costs import REFERENCE_COST_COLUMNS
from pipeline.audit.reader import open_reference
from pipeline.format.manifest_part import COLUMN_CHECKSUMS_KEY, column_checksum, parquet_bytes, parse_part
from pipeline.format.runinfo import (
    manifest_path,
    marker_path,
    pack_manifest_path,
    pack_marker_path,
    write_json,
)
from pipeline.format.schema import MANIFEST_SCHEMA, REFERENCE_SCHEMA
from pipeline.store.storage import filesystem, write_bytes
from pipeline.tools.compact import compact

VIDEOS = [f"clip-{i:02d}" for i in range(10)]
SAMPLED = VIDEOS[:8]  # videos with a reference part
PENDING = "clip-05"  # its reference marker is still there: a resuming run may rewrite its part
NOT_DONE = "clip-06"  # committed by nobody yet (no done marker): its run may still be writing
PACKED = "clip-07"  # done as a member of a committed pack (no done marker of its own)
GOPS = 4


def _manifest_rows(key: str) -> list[dict]:
    return [
        {"run_id": "r1", "video_key": key, "source_uri": f"/src/{key}.mp4", "gop_index": g, "status": "ok", "codec": "x264",
         "target_kind": "crf", "target_value": 23.0, "payload_bytes": 1000 + 10 * g, "frame_count": 8,
         "width": 64, "height": 48, "source_bytes": 50_000, "compute_device": "cpu",
         "encode_device_seconds": 0.5 + g / 10, "decode_device_seconds": 0.1}
        for g in range(GOPS)
    ]  # fmt: skip


def _reference_rows(out: str, endpoint_url: str | None) -> dict[tuple[str, int, str], dict]:
    """The reference rows audit and ls hold (`costs._reference_rows`, one Arrow table) by their key."""
    table = costs._reference_rows(out, endpoint_url)
    keyed = {(r["video_key"], r["gop_index"], r["run_id"]): r for r in table.to_pylist()}
    assert len(keyed) == table.num_rows  # one row per key
    return keyed


def _reference_rows_of(key: str, *, ratio: float = 0.1) -> list[dict]:
    """Rows as `References._maybe_write` writes them (sorted by GOP), for GOPs 0 and 2."""
    created = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
    return [
        {"run_id": "r1", "video_key": key, "source_uri": f"/src/{key}.mp4", "gop_index": g, "first_frame": 8 * g,
         "frame_count": 8, "width": 64, "height": 48, "fps": 24.0, "archive_codec": "x264", "target_kind": "crf",
         "target_value": 23.0, "archive_bytes": 1000 + 10 * g, "metric": "psnr",
         "metric_note": "vmaf unavailable (switched off by --skip-metric vmaf): reference matched on psnr",
         "archive_score": 33.5 + g, "reference_codec": "x265", "reference_codec_version": "3.5",
         "reference_preset": None, "reference_bytes": (1000 + 10 * g) / math.exp(ratio + g / 100),
         "log_ratio": ratio + g / 100, "low_quality": 29.0, "low_score": 33.0 + g, "low_bytes": 900,
         "high_quality": 28.0, "high_score": 34.0 + g, "high_bytes": 1100,
         "search": json.dumps([{"quality": 28, "score": 34.0, "bytes": 1100}]), "cpu_seconds": 2.5 + g,
         "encode_cpu_seconds": 0.25, "status": "ok", "error": None,
         "created_at": created + datetime.timedelta(seconds=g)}
        for g in (0, 2)
    ]  # fmt: skip


def _archive(fs, root: str) -> None:
    """Ten videos, eight with a reference part: one pending, one not done, one done through its pack."""
    for key in VIDEOS:
        if key == PACKED:
            write_bytes(
                fs, pack_manifest_path(root, "r1-000001"), parquet_bytes(_manifest_rows(key), MANIFEST_SCHEMA)
            )
            write_json(fs, pack_marker_path(root, "r1-000001"), {"pack_id": "r1-000001", "members": [key]})
        else:
            write_bytes(fs, manifest_path(root, key), parquet_bytes(_manifest_rows(key), MANIFEST_SCHEMA))
        if key not in (NOT_DONE, PACKED):
            write_json(fs, marker_path(root, "done", key), {"video_key": key})
        if key in SAMPLED:
            write_part(fs, root, key, _reference_rows_of(key))
    write_json(fs, pending_path(root, PENDING), {"video_key": PENDING, "reference_codec": "x265", "gops": []})


def write_part(fs, root: str, key: str, rows: list[dict]) -> None:
    """A reference part, as the archive writes it (`reference.py`: `parquet_bytes` at `reference_path`)."""
    write_bytes(fs, reference_path(root, key), parquet_bytes(rows, REFERENCE_SCHEMA))


def _cli(out: str, endpoint_url: str | None = None) -> tuple[str, str, str]:
    """(audit --json, ls --json, compare --json of the archive with itself) with a CPU price (so the
    reference's figures are in all three), as sorted JSON."""
    runner = CliRunner()
    extra = ["--endpoint-url", endpoint_url] if endpoint_url else []
    audit = runner.invoke(audit_app, ["audit", out, "--json", "--cpu-hour", "0.04", *extra])
    assert audit.exit_code == 0, audit.output
    app = typer.Typer()
    register_inspect(app)
    listing = runner.invoke(app, ["ls", out, "--json", "--cpu-hour", "0.04", *extra])
    assert listing.exit_code == 0, listing.output
    compared = runner.invoke(audit_app, ["compare", out, out, "--json", "--cpu-hour", "0.04", *extra])
    assert compared.exit_code == 0, compared.output
    audited, listed, comparison = (json.loads(r.stdout) for r in (audit, listing, compared))
    (reference,) = audited["costs"]["total"]["references"]  # the figures this test is about are there
    assert reference["gops_sampled"] == 2 * len(SAMPLED)
    assert sum(bool(v["costs"]["references"]) for v in listed) == len(SAMPLED)
    (reference,) = comparison["costs_a"]["total"]["references"]
    assert reference["gops_sampled"] == 2 * len(SAMPLED)
    return tuple(json.dumps(x, sort_keys=True) for x in (audited, listed, comparison))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_compaction_keeps_audit_and_ls_identical_and_is_idempotent(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    before = _cli(out)
    rows = _reference_rows(out, None)
    killed = tmp_path / "out" / "reference" / "compacted-20250101T000000000000Z-0badc0de.parquet.tmp-0123"
    killed.write_bytes(b"half a file")  # a killed compaction's (local) temporary: removed
    writing = tmp_path / "out" / "reference" / f"part-{NOT_DONE}.parquet.tmp-4567"
    writing.write_bytes(b"half a part")  # a run's write in progress: left alone

    report = compact(out, reference_max_rows=3)  # several files: a file closes once it has 3 rows
    assert report.reference.parts_absorbed == 6 and report.reference.rows == 12
    assert report.reference.parts_left == 2 and len(report.reference.files_written) == 3
    assert "reference: compacted 6 parts (12 rows) into 3 files, 2 parts kept" in report.line()
    assert not killed.exists() and writing.exists()
    writing.unlink()
    names = _names(tmp_path / "out" / "reference")
    assert [n for n in names if not n.startswith("compacted-")] == [
        f"part-{PENDING}.parquet",
        f"part-{NOT_DONE}.parquet",
    ]
    assert _cli(out) == before and _reference_rows(out, None) == rows

    # Each file is a part (page and column checksums) of sorted rows; together they hold every row once.
    held = []
    for name in (n for n in names if n.startswith("compacted-")):
        data = (tmp_path / "out" / "reference" / name).read_bytes()
        assert COLUMN_CHECKSUMS_KEY.encode() in pq.ParquetFile(io.BytesIO(data)).metadata.metadata
        table = parse_part(data, REFERENCE_SCHEMA)
        order = [(r["video_key"], r["gop_index"], r["run_id"]) for r in table.to_pylist()]
        assert order == sorted(order) and table.num_rows == 4
        held += order
    assert held == sorted(held) and len(held) == len(set(held)) == 12  # files follow each other in key order

    again = compact(out)  # idempotent: nothing new to absorb
    assert again.reference.parts_absorbed == 0 and again.reference.files_written == []
    assert _names(tmp_path / "out" / "reference") == names and _cli(out) == before

    # Once the pending reference is complete (a resuming run rewrote the part and removed the marker)
    # and the other video is done, their parts are absorbed too.
    fs.rm_file(pending_path(root, PENDING))
    write_json(fs, marker_path(root, "done", NOT_DONE), {"video_key": NOT_DONE})
    last = compact(out)
    assert last.reference.parts_absorbed == 2 and last.reference.parts_left == 0
    assert all(n.startswith("compacted-") for n in _names(tmp_path / "out" / "reference"))
    assert _reference_rows(out, None) == rows


def test_a_crash_between_writing_and_deleting_loses_and_double_counts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    before = _cli(out)
    rows = _reference_rows(out, None)

    def killed_on_close(self) -> None:
        self.writer.close()
        raise KeyboardInterrupt("killed before the compacted file was in place")

    monkeypatch.setattr(compact_reference.PartWriter, "close", killed_on_close)
    with pytest.raises(KeyboardInterrupt):  # a crash before the file is in place leaves nothing behind
        compact(out)
    monkeypatch.undo()
    assert not any(n.startswith("compacted-") for n in _names(tmp_path / "out" / "reference"))

    def killed_on_delete(_fs, paths: list[str]) -> None:
        if paths:  # the absorbed parts' deletion: the compacted file is in place by now
            raise KeyboardInterrupt("killed after the compacted file was written")

    monkeypatch.setattr(compact_reference, "remove_paths", killed_on_delete)
    with pytest.raises(KeyboardInterrupt):
        compact(out, force=True)
    monkeypatch.undo()
    names = _names(tmp_path / "out" / "reference")
    assert (
        sum(n.startswith("compacted-") for n in names) == 1 and sum(n.startswith("part-") for n in names) == 8
    )
    assert _cli(out) == before and _reference_rows(out, None) == rows  # rows in both are counted once

    report = compact(out, force=True)  # the next compaction absorbs the leftovers again and deletes them
    assert report.reference.parts_absorbed == 6
    assert sum(n.startswith("part-") for n in _names(tmp_path / "out" / "reference")) == 2
    assert _cli(out) == before and _reference_rows(out, None) == rows


def test_a_part_written_after_its_compaction_wins(tmp_path: Path) -> None:
    """A part rewritten once its rows were compacted (a video redone by hand, or rows completed again)
    is read after the compacted files: its rows win, its new rows add; compacting it keeps that."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    compact(out)
    rewritten = _reference_rows_of("clip-01", ratio=0.5)
    write_part(fs, root, "clip-01", [*rewritten, dict(rewritten[0], gop_index=3, log_ratio=0.7)])
    expected = _reference_rows(out, None)
    assert (
        expected[("clip-01", 0, "r1")]["log_ratio"] == 0.5
        and expected[("clip-01", 3, "r1")]["log_ratio"] == 0.7
    )
    assert len(expected) == 2 * len(SAMPLED) + 1
    report = compact(out)
    assert report.reference.parts_absorbed == 1
    assert _reference_rows(out, None) == expected  # the newer compacted file sorts after the older one


def test_a_read_under_way_during_a_compaction_loses_no_row(tmp_path: Path) -> None:
    """A reader that listed `reference/` before a compaction finds the absorbed parts gone when it
    fetches them: it lists again and reads the compacted file that appeared meanwhile."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    rows = _reference_rows(out, None)
    parts = open_reference(out)  # listed now: eight parts
    assert parts is not None and len(parts) == len(SAMPLED)
    assert compact(out).reference.parts_absorbed == 6  # deletes six of them
    tables = [t.select(list(REFERENCE_COST_COLUMNS)) for t in parts.tables()]
    read = {(r["video_key"], r["gop_index"], r["run_id"]): r for t in tables for r in t.to_pylist()}
    assert read == rows and not parts.damaged


def test_a_file_written_under_a_slower_clock_still_sorts_last(tmp_path: Path) -> None:
    """The next compacted file sorts after the newest one there is, whatever this machine's clock says:
    a part rewritten after its rows were compacted by a machine whose clock was ahead still wins."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    compact(out)
    (first,) = (tmp_path / "out" / "reference").glob("compacted-*.parquet")
    ahead = first.with_name("compacted-20991231T235959999999Z-00000000.parquet")
    first.rename(ahead)  # as a compaction on a machine whose clock is far ahead names it
    write_part(fs, root, "clip-01", _reference_rows_of("clip-01", ratio=0.5))
    expected = _reference_rows(out, None)
    assert expected[("clip-01", 0, "r1")]["log_ratio"] == 0.5  # the part, read after the compacted file
    assert compact(out).reference.parts_absorbed == 1
    names = sorted(p.name for p in (tmp_path / "out" / "reference").glob("compacted-*.parquet"))
    assert len(names) == 2 and names[0] == ahead.name and names[1].startswith("compacted-21000101T000000")
    assert _reference_rows(out, None) == expected
    assert compact_reference.compacted_name(after="compacted-not-a-stamp.parquet") > "compacted-2025"


def test_damage_is_named_in_one_line_never_a_crash(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root)
    write_bytes(fs, reference_path(root, "clip-08"), b"PAR1 not a part")  # done, sampled, damaged
    write_json(fs, marker_path(root, "done", "clip-08"), {"video_key": "clip-08"})
    report = compact(out)
    (line,) = report.damaged  # a damaged part is kept, named, never absorbed
    assert "part-clip-08.parquet" in line and "\n" not in line and fs.exists(reference_path(root, "clip-08"))
    assert report.reference.parts_absorbed == 6 and report.reference.parts_left == 3

    (compacted,) = (tmp_path / "out" / "reference").glob("compacted-*.parquet")
    good = pq.read_table(compacted)
    checksums = pq.ParquetFile(compacted).metadata.metadata[COLUMN_CHECKSUMS_KEY.encode()]
    changed = good.set_column(
        good.column_names.index("log_ratio"), "log_ratio", pa.array([9.0] * good.num_rows, pa.float64())
    ).replace_schema_metadata({COLUMN_CHECKSUMS_KEY: checksums})  # values changed, their checksums not
    pq.write_table(changed, compacted, compression="zstd")
    parts = open_reference(out)
    assert parts is not None
    assert sum(t.num_rows for t in parts.tables()) == 4  # the kept parts' rows; the damaged files are skipped
    lines = sorted(d.line() for d in parts.damaged)
    assert len(lines) == 2 and all("\n" not in x and "damaged reference part" in x for x in lines)
    assert "log_ratio" in lines[0] and "does not match its checksum" in lines[0]
    # audit and ls figure the rest and name both files (exit 1: damage is a finding), never a traceback
    runner = CliRunner()
    audit = runner.invoke(audit_app, ["audit", out, "--json", "--cpu-hour", "0.04"])
    assert audit.exit_code == 1 and "Traceback" not in audit.output
    audited = json.loads(audit.stdout)
    assert sorted((d["folder"], d["uri"].rsplit("/", 1)[-1]) for d in audited["damaged_parts"]) == [
        ("reference", compacted.name),
        ("reference", "part-clip-08.parquet"),
    ]
    assert audited["costs"]["total"]["references"][0]["gops_sampled"] == 4  # the kept parts' rows
    named = [line for line in audit.stderr.splitlines() if line.startswith("damaged: ")]
    assert len(named) == 2 and compacted.name in "".join(named) and "part-clip-08.parquet" in "".join(named)
    app = typer.Typer()
    register_inspect(app)
    listing = runner.invoke(app, ["ls", out, "--json", "--cpu-hour", "0.04"])
    assert listing.exit_code == 1 and "Traceback" not in listing.output
    assert len(json.loads(listing.stdout)) == len(VIDEOS)  # every video is listed
    named = [line for line in listing.stderr.splitlines() if line.startswith("damaged: ")]
    assert len(named) == 2 and all("left out of the reference figures" in line for line in named)
    assert compacted.name in "".join(named)
    compared = runner.invoke(audit_app, ["compare", out, out, "--json", "--cpu-hour", "0.04"])
    assert compared.exit_code == 1 and "Traceback" not in compared.output  # compare: the same finding
    assert json.loads(compared.stdout)["matched_videos"] == len(VIDEOS)
    named = [line for line in compared.stderr.splitlines() if line.startswith("damaged: ")]
    assert compacted.name in "".join(named) and "part-clip-08.parquet" in "".join(named)


def test_compaction_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/archive"
    fs, root = filesystem(out, endpoint_url=s3_endpoint)
    _archive(fs, root)
    before = _cli(out, s3_endpoint)
    report = compact(out, endpoint_url=s3_endpoint)
    assert report.reference.parts_absorbed == 6 and len(report.reference.files_written) == 1
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/reference", refresh=True))
    assert names[0].startswith("compacted-") and names[1:] == [
        f"part-{PENDING}.parquet",
        f"part-{NOT_DONE}.parquet",
    ]
    assert _cli(out, s3_endpoint) == before
    assert compact(out, endpoint_url=s3_endpoint).reference.parts_absorbed == 0


def test_the_writer_checksums_columns_a_row_group_at_a_time(tmp_path: Path) -> None:
    """The column checksums, continued over row groups, are those of the whole column (nulls, NaN,
    timestamps, non-ASCII text): `parse_part` accepts the file and each column's checksum matches."""
    rows = [dict(r, video_key=f"v{i:02d}", error="é\u2013" if i % 3 else None, archive_score=math.nan if i == 4 else 1.5)
            for i, r in enumerate(_reference_rows_of("x") * 5)]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=REFERENCE_SCHEMA)
    buffer = io.BytesIO()
    writer = compact_reference.PartWriter(buffer, row_group_rows=3)
    for start in range(0, len(rows), 2):
        writer.add(table.slice(start, 2))
    writer.close()
    data = buffer.getvalue()
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 4
    parsed = parse_part(data, REFERENCE_SCHEMA).to_pylist()
    as_part = parse_part(parquet_bytes(rows, REFERENCE_SCHEMA), REFERENCE_SCHEMA).to_pylist()
    assert json.dumps(parsed, default=str) == json.dumps(as_part, default=str)  # as text: NaN != NaN
    stored = pq.ParquetFile(io.BytesIO(data)).metadata.metadata[COLUMN_CHECKSUMS_KEY.encode()].decode()
    assert stored.split(";")[1].split(",") == [f"{column_checksum(c):08x}" for c in table.columns]


def test_an_archive_run_compacts_its_references_at_its_end(tmp_path: Path) -> None:
    """`RunCompaction`: during the run only once enough reference parts are eligible, at its end all of
    them, also after a run that only completed a killed run's reference parts (committed nothing)."""
    from pipeline.archive.compaction import RunCompaction
    from pipeline.archive.config import ArchiveConfig
    from pipeline.archive.progress import Counters

    out = tmp_path / "out"
    fs, root = filesystem(str(out))
    _archive(fs, root)
    counters = Counters()
    said: list[str] = []
    run = RunCompaction(
        ArchiveConfig(src=str(tmp_path), out=str(out), reference="x265"), counters, said.append
    )
    run.compact_now()  # during the run: 6 eligible parts are too few for a file
    assert run.parts_absorbed == 9 and run.reference_parts_absorbed == 0
    record = run.finish()  # nothing committed since, but reference parts wait
    assert (
        record is not None
        and record["reference_parts_absorbed"] == 6
        and record["reference_files_written"] == 1
    )
    assert record["reference_rows"] == 12 and not record["warnings"]
    assert any("reference: compacted 6 parts" in line for line in said)


def test_the_layout_is_the_archive_writers() -> None:
    """The tools never import the archive job: the names they restate are the ones it writes."""
    assert reference_path("/o", "k") == f"/o/{compact_reference.FOLDER}/part-k.parquet"
    assert pending_path("/o", "k") == f"/o/markers/{compact_reference.PENDING_STATE}/k.json"
