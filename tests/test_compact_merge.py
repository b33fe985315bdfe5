"""Small compacted files are merged into few large key-sorted ones (`pipeline.tools.compact_merge`): every
row reads exactly once before, during and after a merge (also for a reader that planned before it),
rows readers drop stay dropped (a video redone after its compaction, a later file's `replaces`), the
merged-away files stay until the grace period ends, and a crash mid-merge leaves everything as it was.
No Ray; a local store and the moto S3 server."""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import pipeline.tools.compact_merge as compact_merge
from pipeline.format.runinfo import marker_path
from pipeline.read.manifest_layout import plan_manifest
from pipeline.read.manifest_videos import is_sorted_by_key
from pipeline.store.storage import filesystem
from pipeline.tools.compact import compact
from tests.test_compact import _rows, _video

NO_MERGE = 10_000  # merge_min_files that never merges


def _runs(fs, root: str, out: str, runs: int, per_run: int = 3, **options) -> collections.Counter:
    """An archive compacted after each of `runs` runs of `per_run` videos: one small file per run."""
    for run in range(runs):
        for i in range(per_run):
            number = run * per_run + i
            _video(fs, root, f"clip-{(number * 37) % 1000:03d}", 1 + number % 4)  # keys interleave
        compact(out, merge_min_files=NO_MERGE, **options)
    return _rows(fs, root)


def _compacted(folder: Path) -> list[Path]:
    return sorted(folder.glob("compacted-*.parquet"))


def test_small_files_merge_into_one_sorted_file_and_every_row_reads_once(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    expected = _runs(fs, root, out, runs=10)
    assert len(_compacted(tmp_path / "out" / "manifest")) == 10 and max(expected.values()) == 1
    planned_before = plan_manifest(fs, root)  # a reader that listed before the merge ...

    report = compact(out, merge_min_files=4)
    assert report.files_merged == 10 and len(report.merged_files_written) == 1
    plan = plan_manifest(fs, root)
    assert len(plan.compacted) == 1 and len(plan.superseded) == 10  # kept for the grace period
    assert _rows(fs, root) == expected
    assert _rows(fs, root, planned_before) == expected  # ... reads its files, still there
    merged = Path(plan.compacted[0].path)
    parquet = pq.ParquetFile(merged)
    assert is_sorted_by_key(parquet.metadata.metadata)
    keys = parquet.read(columns=["video_key", "gop_index"]).to_pylist()
    assert keys == sorted(keys, key=lambda r: (r["video_key"], r["gop_index"]))

    again = compact(out, merge_min_files=4)  # within the grace: nothing to merge, nothing removed
    assert again.files_merged == 0 and again.superseded_removed == 0
    late = compact(out, merge_min_files=4, merged_grace_seconds=0)
    assert late.superseded_removed == 10 and _compacted(tmp_path / "out" / "manifest") == [merged]
    assert _rows(fs, root) == expected


def test_rows_readers_drop_stay_dropped_through_a_merge(s3_endpoint: str, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/archive"
    fs, root = filesystem(out, endpoint_url=s3_endpoint)
    _runs(fs, root, out, runs=5, endpoint_url=s3_endpoint)
    first = "clip-000"  # compacted in the first run's file
    _video(fs, root, first, 2, run="r2")  # redone after its compaction ...
    compact(out, endpoint_url=s3_endpoint, merge_min_files=NO_MERGE)  # ... absorbed: `replaces`
    failed = "clip-037"
    fs.rm_file(marker_path(root, "done", failed))  # its done marker deleted to redo it ...
    _video(fs, root, failed, 1, status="failed", run="r3")  # ... and it failed: its part stays
    expected = _rows(fs, root)
    assert {k for k in expected if k[0] == first} == {(first, 0, "r2"), (first, 1, "r2")}
    assert {k for k in expected if k[0] == failed} == {(failed, 0, "r3")}

    report = compact(out, endpoint_url=s3_endpoint, merge_min_files=4)
    assert report.files_merged == 6
    assert _rows(fs, root) == expected
    compact(out, endpoint_url=s3_endpoint, merge_min_files=4, merged_grace_seconds=0)
    assert _rows(fs, root) == expected  # with the merged-away files gone too


def test_a_crash_mid_merge_leaves_the_files_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    expected = _runs(fs, root, out, runs=6)
    before = _compacted(tmp_path / "out" / "manifest")
    real = compact_merge._merged

    def crash(inputs, sort_keys):
        for number, table in enumerate(real(inputs, sort_keys)):
            if number == 1:
                raise KeyboardInterrupt("killed mid-merge")
            yield table

    monkeypatch.setattr(compact_merge, "_merged", crash)
    monkeypatch.setattr(compact_merge, "MERGE_BATCH_ROWS", 2)  # several output tables
    with pytest.raises(KeyboardInterrupt):
        compact(out, merge_min_files=4)
    monkeypatch.undo()
    assert _compacted(tmp_path / "out" / "manifest") == before  # no partial merged file
    assert _rows(fs, root) == expected
    report = compact(out, merge_min_files=4, force=True)  # the killed run's lock is taken over
    assert report.files_merged == 6 and _rows(fs, root) == expected


def test_few_small_files_are_left_alone(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    expected = _runs(fs, root, out, runs=3)
    report = compact(out)  # the default threshold: three small files are cheap to read
    assert report.files_merged == 0 and len(_compacted(tmp_path / "out" / "manifest")) == 3
    assert _rows(fs, root) == expected


def test_reads_of_many_uncompacted_parts_say_how_to_speed_them_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import pipeline.read.manifest
    from jobs.cli import app

    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    for i in range(5):
        _video(fs, root, f"clip-{i:03d}", 2)
    monkeypatch.setattr(pipeline.read.manifest, "UNCOMPACTED_NOTE", 5)  # instead of 10,000
    runner = CliRunner()
    for command in (["ls", out, "--json"], ["audit", out, "--json"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "note: " in result.stderr and "5 manifest parts are not compacted" in result.stderr
        assert f"vidarc compact {out}" in result.stderr and result.stderr.count("note: ") == 1
    compact(out, merge_min_files=NO_MERGE)
    quiet = runner.invoke(app, ["ls", out, "--json"])
    assert quiet.exit_code == 0 and "note: " not in quiet.stderr
