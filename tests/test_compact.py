"""`vidarc compact`: every reader sees each manifest row exactly once before, during and after a
compaction; a crash mid-compaction loses nothing; a second run changes nothing; a video redone after
compaction wins over its compacted copy (local store and the moto S3 server, no Ray)."""

from __future__ import annotations

import collections
import io
import itertools
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline.tools.compact as compaction
from pipeline.audit.summary import audit_archive
from pipeline.audit.videos import list_archive
from pipeline.format.runinfo import manifest_path, marker_path, write_json
from pipeline.format.schema import MANIFEST_SCHEMA, rows_to_table
from pipeline.read.manifest_layout import iter_tables, plan_manifest
from pipeline.read.manifest_videos import is_sorted_by_key
from pipeline.store.storage import filesystem, write_bytes
from pipeline.tools.compact import CompactError, compact

REPO = Path(__file__).resolve().parents[1]
FAILED = {f"clip-{i:03d}" for i in range(7, 30, 10)}


def _part(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows, MANIFEST_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def _video(fs, root: str, key: str, gops: int, *, status: str = "ok", run: str = "r1") -> None:
    rows = [
        {"run_id": run, "video_key": key, "gop_index": i, "status": status, "payload_bytes": 100 + i}
        for i in range(gops if status == "ok" else 1)
    ]
    write_bytes(fs, manifest_path(root, key), _part(rows))
    write_json(fs, marker_path(root, "done" if status == "ok" else "failed", key), {"video_key": key})


def _rows(fs, root: str, plan=None) -> collections.Counter:
    plan = plan or plan_manifest(fs, root)
    counted: collections.Counter = collections.Counter()
    for table in iter_tables(plan, ["video_key", "gop_index", "run_id"]):
        for row in table.to_pylist():
            counted[(row["video_key"], row["gop_index"], row["run_id"])] += 1
    return counted


def _archive(fs, root: str, videos: int = 30) -> collections.Counter:
    for i in range(videos):
        _video(fs, root, f"clip-{i:03d}", 1 + i % 4, status="failed" if i % 10 == 7 else "ok")
    expected = _rows(fs, root)
    assert expected and max(expected.values()) == 1
    return expected


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_compaction_keeps_every_row_exactly_once(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path / "out"))
    expected = _archive(fs, root)
    listed_before = plan_manifest(fs, root)  # a reader that listed before the compaction ...

    report = compact(str(tmp_path / "out"), target_bytes=8 * 1024)
    assert report.parts_absorbed == 27 and report.parts_left == 3 and len(report.files_written) >= 2
    names = _names(tmp_path / "out" / "manifest")
    assert [n for n in names if n.startswith("part-")] == [
        "part-clip-007.parquet",
        "part-clip-017.parquet",
        "part-clip-027.parquet",
    ]
    assert _rows(fs, root) == expected
    assert _rows(fs, root, listed_before) == expected  # ... and read after it: moved rows are found
    again = compact(str(tmp_path / "out"), target_bytes=8 * 1024)  # idempotent
    assert again.parts_absorbed == 0 and again.files_written == [] and _rows(fs, root) == expected


def test_a_crash_between_writing_and_deleting_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = filesystem(str(tmp_path / "out"))
    expected = _archive(fs, root, videos=12)

    def crash(_fs, paths: list[str]) -> None:
        if paths:  # the absorbed parts' deletion: the compacted file is in place by now
            raise KeyboardInterrupt("killed after the compacted file was written")

    monkeypatch.setattr(compaction, "remove_paths", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(str(tmp_path / "out"), force=True)
    monkeypatch.undo()
    names = _names(tmp_path / "out" / "manifest")
    assert (
        sum(n.startswith("compacted-") for n in names) == 1
        and sum(n.startswith("part-") for n in names) == 12
    )
    plan = plan_manifest(fs, root)
    assert len(plan.covered) == 11  # the parts already inside the compacted file, skipped by readers
    assert _rows(fs, root) == expected
    # the commands see it the same way: audit counts each GOP once, ls each video's GOPs once
    assert audit_archive(str(tmp_path / "out")).rows == sum(expected.values())
    gops = {v.video_key: v.gops for v in list_archive(str(tmp_path / "out")) if v.status == "ok"}
    assert gops == {
        k: n for k, n in collections.Counter(k for k, _, _ in expected).items() if k not in FAILED
    }
    report = compact(str(tmp_path / "out"), force=True)  # the lock of the killed run is taken over
    assert report.leftovers_removed == 11 and report.parts_absorbed == 0 and _rows(fs, root) == expected


def test_a_video_redone_after_compaction_replaces_its_compacted_rows(
    s3_endpoint: str, s3_bucket: str
) -> None:
    out = f"s3://{s3_bucket}/archive"
    fs, root = filesystem(out, endpoint_url=s3_endpoint)
    expected = _archive(fs, root, videos=8)
    compact(out, endpoint_url=s3_endpoint)
    _video(fs, root, "clip-002", 2, run="r2")  # redone: two GOPs now, another run
    rows = _rows(fs, root)
    assert {k for k in rows if k[0] == "clip-002"} == {("clip-002", 0, "r2"), ("clip-002", 1, "r2")}
    assert max(rows.values()) == 1 and sum(rows.values()) == sum(expected.values()) - 3 + 2
    report = compact(out, endpoint_url=s3_endpoint)
    assert report.parts_absorbed == 1
    assert _rows(fs, root) == rows  # the older compacted file's clip-002 rows stay replaced


def test_compact_cli_refuses_a_held_lock_and_a_non_archive(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path / "out"))
    _archive(fs, root, videos=3)
    command = [sys.executable, "-m", "jobs.compact"]
    with compaction._lock(fs, root, "out", force=False):
        held = subprocess.run([*command, str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert (
        held.returncode == 2 and "another compaction holds" in held.stderr and "Traceback" not in held.stderr
    )
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([*command, str(tmp_path / "empty")], cwd=REPO, capture_output=True, text=True)
    assert empty.returncode == 2 and "no manifest/" in empty.stderr
    done = subprocess.run([*command, str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "compacted 3 parts" in done.stdout
    with pytest.raises(CompactError):
        compact(str(tmp_path / "nowhere"))


def test_a_video_packed_twice_counts_once(tmp_path: Path) -> None:
    """Two jobs that archived the same videos at once into packs: each video counts in its latest pack
    only, for readers and for compaction."""
    from pipeline.format.runinfo import pack_manifest_path, pack_marker_path

    fs, root = filesystem(str(tmp_path / "out"))
    for pack, run in (("runA-000001", "rA"), ("runB-000001", "rB")):
        rows = [{"run_id": run, "video_key": k, "gop_index": 0, "status": "ok"} for k in ("x", "y")]
        write_bytes(fs, pack_manifest_path(root, pack), _part(rows))
        write_json(fs, pack_marker_path(root, pack), {"pack_id": pack, "members": ["x", "y"]})
    write_bytes(fs, pack_manifest_path(root, "runC-000001"), _part([{"video_key": "z", "gop_index": 0}]))
    expected = collections.Counter({("x", 0, "rB"): 1, ("y", 0, "rB"): 1})  # runC: no marker, not counted
    assert _rows(fs, root) == expected
    compact(str(tmp_path / "out"))
    assert _rows(fs, root) == expected and plan_manifest(fs, root).orphan_packs


def test_a_damaged_part_is_kept_and_named_never_absorbed(tmp_path: Path) -> None:
    """A done video's part whose values no longer match their checksum (as readers check it) stays
    where it is, named by the report, instead of being merged as good rows and deleted."""
    import pyarrow as pa

    from pipeline.read.manifest import COLUMN_CHECKSUMS_KEY, parquet_bytes

    fs, root = filesystem(str(tmp_path / "out"))
    for key in ("clip-000", "clip-001"):
        rows = [{"run_id": "r1", "video_key": key, "gop_index": i, "status": "ok"} for i in range(2)]
        write_bytes(fs, manifest_path(root, key), parquet_bytes(rows, MANIFEST_SCHEMA))
        write_json(fs, marker_path(root, "done", key), {"video_key": key})
    good = pq.read_table(io.BytesIO(fs.cat_file(manifest_path(root, "clip-001"))))
    assert COLUMN_CHECKSUMS_KEY.encode() in good.schema.metadata
    changed = good.set_column(
        good.column_names.index("gop_index"),
        "gop_index",
        pa.array([5, 6], good.schema.field("gop_index").type),
    )  # the values change, the checksums recorded with them do not
    buffer = io.BytesIO()
    pq.write_table(changed, buffer, compression="zstd")
    write_bytes(fs, manifest_path(root, "clip-001"), buffer.getvalue())

    report = compact(str(tmp_path / "out"))
    assert report.parts_absorbed == 1 and len(report.damaged) == 1 and "clip-001" in report.damaged[0]
    assert fs.exists(manifest_path(root, "clip-001"))
    damaged: list[str] = []
    tables = iter_tables(
        plan_manifest(fs, root), ["video_key", "gop_index"], on_damage=lambda p, _: damaged.append(p)
    )
    assert sorted((r["video_key"], r["gop_index"]) for t in tables for r in t.to_pylist()) == [
        ("clip-000", 0),
        ("clip-000", 1),
    ]
    assert damaged == [manifest_path(root, "clip-001")]  # readers still name it


def test_a_damaged_compacted_file_is_named_and_the_rest_reads(tmp_path: Path) -> None:
    """A compacted file whose footer does not parse costs only its own rows: audit and ls read every
    other file and name it; a later compaction goes on and names it too."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root, videos=6)
    compact(out)
    (compacted,) = (tmp_path / "out" / "manifest").glob("compacted-*.parquet")
    compacted.write_bytes(compacted.read_bytes()[:-40])  # the footer cut off
    _video(fs, root, "clip-100", 2, run="r2")  # written after the compaction

    result = audit_archive(out)
    assert result.rows == 2  # clip-100's GOPs; nothing raised
    assert [d["uri"] for d in result.damaged_parts] == [str(compacted)]
    assert {v.video_key: v.gops for v in list_archive(out) if v.gops} == {"clip-100": 2}
    report = compact(out)
    assert report.parts_absorbed == 1 and report.damaged and str(compacted) in report.damaged[0]


def test_an_archive_whose_only_manifest_file_is_damaged_says_so(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    _archive(fs, root, videos=3)
    compact(out)
    (compacted,) = (tmp_path / "out" / "manifest").glob("compacted-*.parquet")
    compacted.write_bytes(b"not parquet")
    result = audit_archive(out)  # not "no manifest parts; is this a vidarc archive?"
    assert result.rows == 0 and [d["uri"] for d in result.damaged_parts] == [str(compacted)]


def _scrambled_archive(fs, root: str) -> collections.Counter:
    """Done videos whose part names sort differently from their keys ("a" < "a-b" but
    "part-a-b.parquet" < "part-a.parquet"), written in no particular order, and two committed packs
    whose key ranges interleave."""
    from pipeline.format.runinfo import pack_manifest_path, pack_marker_path

    keys = [f"{stem}{suffix}" for stem in ("k", "m", "q", "a", "z", "c") for suffix in ("", "-b", ".x", "0")]
    for i, key in enumerate(keys):
        _video(fs, root, key, 1 + i % 5)
    for pack, members in (("r1-000001", ["b1", "n1", "y1"]), ("r1-000002", ["b2", "n2"])):
        rows = [
            {"run_id": "r1", "video_key": k, "gop_index": g, "status": "ok"} for k in members for g in (1, 0)
        ]
        write_bytes(fs, pack_manifest_path(root, pack), _part(rows))
        write_json(fs, pack_marker_path(root, pack), {"pack_id": pack, "members": members})
    return _rows(fs, root)


def test_compacted_files_are_key_sorted_in_row_groups_whose_key_ranges_do_not_overlap(
    tmp_path: Path,
) -> None:
    """What readers prune by: every compacted file says it is sorted by (video_key, gop_index) and is;
    several row groups each, with video_key min/max that follow each other; a video's rows in one file."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    expected = _scrambled_archive(fs, root)
    report = compact(out, target_bytes=24 * 1024, row_group_rows=8)
    assert report.parts_absorbed == 26 and len(report.files_written) >= 2
    assert _rows(fs, root) == expected
    files_of: dict[str, set[str]] = collections.defaultdict(set)
    for path in sorted((tmp_path / "out" / "manifest").glob("compacted-*.parquet")):
        parquet = pq.ParquetFile(path)
        assert is_sorted_by_key(parquet.metadata.metadata)
        table = parquet.read(columns=["video_key", "gop_index"])
        pairs = list(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
        assert pairs == sorted(pairs)
        ranges = []
        for index in range(parquet.metadata.num_row_groups):
            group = parquet.metadata.row_group(index)
            stats = group.column(parquet.schema_arrow.get_field_index("video_key")).statistics
            assert stats is not None and stats.has_min_max and group.num_rows <= 8
            ranges.append((stats.min, stats.max))
        assert all(high <= low for (_, high), (low, _) in itertools.pairwise(ranges))
        for key, _ in pairs:
            files_of[key].add(path.name)
    assert all(len(names) == 1 for names in files_of.values())  # a video's rows never split
    assert (
        sum(pq.ParquetFile(p).metadata.num_row_groups for p in (tmp_path / "out" / "manifest").glob("c*")) > 3
    )


def test_compaction_holds_a_few_parts_at_once_not_the_manifest(tmp_path: Path) -> None:
    """Memory is bounded by the row group, not the manifest: of 300 three-row parts compacted into
    200-row groups, no more than two row groups' worth of parts wait in memory at any time (merged into
    one table every `MERGE_PARTS`)."""
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    for i in range(300):
        _video(fs, root, f"clip-{i:03d}", 3)
    expected = _rows(fs, root)
    report = compact(out, row_group_rows=200)
    assert report.parts_absorbed == 300 and len(report.files_written) == 1
    assert compaction.MERGE_PARTS < report.peak_parts_held <= 2 * 200 // 3 + 1
    assert _rows(fs, root) == expected
    (written,) = (tmp_path / "out" / "manifest").glob("compacted-*")
    assert [group.num_rows for group in _row_groups(written)] == [200] * 4 + [100]


def _row_groups(path: Path) -> list:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i) for i in range(metadata.num_row_groups)]


def test_an_older_unsorted_compacted_file_still_reads_and_is_replaced_by_a_redo(tmp_path: Path) -> None:
    """Compacted files of an earlier release (rows in part order, no `vidarc.sorted_by`): readers and
    a later compaction treat them as before; a video redone since replaces its rows there."""
    import pyarrow as pa

    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    expected = _archive(fs, root, videos=10)
    compact(out)
    (path,) = (tmp_path / "out" / "manifest").glob("compacted-*.parquet")
    parquet = pq.ParquetFile(path)
    metadata = {k: v for k, v in (parquet.metadata.metadata or {}).items() if k != compaction.SORTED_BY_KEY}
    table = parquet.read()
    old = table.take(pa.array(list(range(table.num_rows))[::-1])).replace_schema_metadata(metadata)
    pq.write_table(old, path, row_group_size=3)  # as an earlier release wrote them: unsorted
    assert not is_sorted_by_key(pq.ParquetFile(path).metadata.metadata)
    assert _rows(fs, root) == expected
    _video(fs, root, "clip-004", 2, run="r2")
    report = compact(out)
    assert report.parts_absorbed == 1
    rows = _rows(fs, root)
    assert {k for k in rows if k[0] == "clip-004"} == {("clip-004", 0, "r2"), ("clip-004", 1, "r2")}
    assert sum(rows.values()) == sum(expected.values()) - 1 + 2 and max(rows.values()) == 1


@pytest.mark.parametrize("store", ["local", "s3"])
def test_the_lock_is_taken_by_one_compaction_only(tmp_path: Path, store: str, request) -> None:
    """The lock is created exclusively (O_EXCL, S3's conditional PUT): of two compactions that both
    found no lock, the second to create it is refused instead of absorbing the same parts twice."""
    if store == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        fs, root = filesystem(f"s3://{bucket}/archive", endpoint_url=endpoint)
    else:
        fs, root = filesystem(str(tmp_path / "out"))
    path = f"{root}/manifest/{compaction.LOCK_NAME}"
    compaction._create_exclusive(fs, path, b'{"started": 0}')
    with pytest.raises(FileExistsError):
        compaction._create_exclusive(fs, path, b"{}")
    fs.rm_file(path)
    with compaction._lock(fs, root, "out", force=False):
        assert compaction.lock_holder(fs, root) is not None
        with pytest.raises(compaction.CompactionLocked, match="another compaction holds"):
            compaction._lock(fs, root, "out", force=False).__enter__()
    assert compaction.lock_holder(fs, root) is None and not fs.exists(path)


def _archive_config(src: Path, out: Path, fast_metrics: tuple[str, ...], **kw):
    from pipeline.archive.config import ArchiveConfig

    return ArchiveConfig(
        src=str(src), out=str(out), codec="x264", gop_frames=16, skip_metrics=fast_metrics, **kw
    )


def _manifest_names(out: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (out / "manifest").iterdir())


def test_an_archive_run_compacts_what_it_committed_unless_told_not_to(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    """The job compacts without being asked (here also during the run: every committed video), records
    it in summary.json and prints one line; `compact=False` (`--no-compact`) leaves the parts."""
    import io as text_io
    import json

    from pipeline.archive import run_archive
    from pipeline.archive.progress import Counters, ProgressDisplay

    stream = text_io.StringIO()
    out = tmp_path / "out"
    display = ProgressDisplay(Counters(), stream=stream, live=False)
    result = run_archive(_archive_config(samples, out, fast_metrics, compact_every=1), display=display)
    assert result.exit_code == 0 and result.summary["videos_ok"] == 2
    record = result.summary["compaction"]
    assert record["parts_absorbed"] == 2 and record["compactions"] >= 1 and not record["warnings"]
    assert _manifest_names(out) == ["compacted"] * record["files_written"]
    assert "manifest compacted" in stream.getvalue()
    stored = json.loads((out / "runs" / result.run_id / "summary.json").read_text())
    assert stored["compaction"]["parts_absorbed"] == 2
    fs, root = filesystem(str(out))
    assert {k for k, _, _ in _rows(fs, root)} == {p.stem for p in (out / "videos").iterdir()}

    plain = tmp_path / "plain"
    kept = run_archive(_archive_config(samples, plain, fast_metrics, compact=False))
    assert kept.exit_code == 0 and kept.summary["compaction"] is None
    assert _manifest_names(plain) == ["part", "part"]


def test_a_run_while_another_compaction_holds_the_lock_succeeds_and_says_so(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    from pipeline.archive import run_archive

    out = tmp_path / "out"
    fs, root = filesystem(str(out))
    with compaction._lock(fs, root, str(out), force=False):  # another shard's run, compacting
        result = run_archive(_archive_config(samples, out, fast_metrics))
    assert result.exit_code == 0 and result.summary["videos_ok"] == 2
    (note,) = result.summary["compaction"]["notes"]
    assert "another compaction holds" in note and not result.summary["compaction"]["warnings"]
    assert _manifest_names(out) == ["part", "part"]
    assert compact(str(out)).parts_absorbed == 2  # the next compaction takes them


def test_a_compaction_that_fails_is_a_warning_of_the_run_never_an_error(tmp_path: Path) -> None:
    """After the videos are committed, a compaction the store refuses (here the lock's name is taken by
    a folder) is a warning in the run's record; the trigger counts committed videos."""
    from pipeline.archive.compaction import RunCompaction
    from pipeline.archive.config import ArchiveConfig
    from pipeline.archive.progress import Counters

    out = tmp_path / "out"
    fs, root = filesystem(str(out))
    _archive(fs, root, videos=3)
    counters = Counters()
    said: list[str] = []
    run = RunCompaction(
        ArchiveConfig(src=str(tmp_path), out=str(out), compact_every=2), counters, said.append
    )
    counters.videos_ok = 1
    assert not run.due()
    counters.videos_ok = 2
    assert run.due()
    (out / "manifest" / compaction.LOCK_NAME).mkdir()
    record = run.finish()
    assert record is not None and record["compactions"] == 0 and record["parts_absorbed"] == 0
    (warning,) = record["warnings"]
    assert (
        warning.startswith("compaction stopped") and "\n" not in warning and said == [f"warning: {warning}"]
    )
    assert _manifest_names(out) == ["_compaction.lock", *["part"] * 3]
