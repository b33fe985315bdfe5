"""Bad outputs and odd names get one line and the right exit code (issue 11): OUT an existing file or
not writable, a missing S3 prefix, a failing file with a newline in its name, and the temporary files a
killed run leaves behind."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.discovery import SourceEntry, probe_entry
from pipeline.archive.driver import _remove_stale_temporaries, _temporaries
from pipeline.archive.failures import FailureLog
from pipeline.archive.progress import Counters, ProgressDisplay


def _one_line_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_out_that_is_an_existing_file_is_refused_and_left_alone(tmp_path: Path, sample_dir: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    result = CliRunner().invoke(app, ["archive", str(sample_dir), str(out)])
    _one_line_exit_2(result, str(out), "existing file")
    assert out.read_text() == "keep me\n"
    nested = CliRunner().invoke(app, ["archive", str(sample_dir), str(out / "archive")])
    _one_line_exit_2(nested, "is a file")


def test_out_that_is_not_writable_is_refused_with_nothing_written(tmp_path: Path, sample_dir: Path) -> None:
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new files even to root
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("no read-only location to write to as root")
        out = Path("/sys/kernel") / f"vidarc-{uuid.uuid4().hex[:8]}" / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "out"
    result = CliRunner().invoke(app, ["archive", str(sample_dir), str(out)])
    _one_line_exit_2(result, str(out), "not writable")
    assert not out.exists()


def test_a_missing_s3_prefix_is_refused_like_a_missing_folder(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        ["archive", f"s3://{s3_bucket}/no/such/prefix", str(tmp_path / "out"), "--endpoint-url", s3_endpoint],
    )
    _one_line_exit_2(result, f"s3://{s3_bucket}/no/such/prefix", "no such file or prefix")
    assert not (tmp_path / "out").exists()


def test_a_failing_file_with_a_newline_in_its_name_keeps_its_reason(tmp_path: Path, sample_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    broken = src / "bad\nname.mp4"
    good = (sample_dir / "sub" / "with-audio.mp4").read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    entry = SourceEntry(uri=str(broken), relative=broken.name, size=broken.stat().st_size, key="k")
    outcome = probe_entry(entry)
    assert outcome.kind == "failed"
    out = tmp_path / "out"
    counters = Counters()
    log = FailureLog(
        ArchiveConfig(src=str(src), out=str(out)),
        "run",
        {"codec": "x264"},
        counters,
        ProgressDisplay(counters),
    )
    log.record(entry.key, entry.uri, entry.size, outcome.reason or "")
    reason = log.records[0]["error"]
    assert "\n" not in reason and "bad\\nname.mp4" in reason and "truncated or corrupt" in reason
    marker = json.loads((out / "markers" / "failed" / "k.json").read_text())
    assert marker["error"] == reason


def test_a_killed_runs_leftover_temporaries_are_removed(tmp_path: Path) -> None:
    """kill -9 during `runs/<id>/config.json`'s atomic write leaves its temporary file; the next run
    removes it like every other stale temporary (videos, manifest, markers, verify)."""
    out = tmp_path / "out"
    leftovers = [
        out / "runs" / "20260101T000000Z-abcdef" / "config.json.tmp-0123456789ab",
        out / "manifest" / "part-k.parquet.tmp-0123456789ab",
        out / "verify" / "part-v.parquet.tmp-0123456789ab",
    ]
    kept = out / "runs" / "20260101T000000Z-abcdef" / "summary.json"
    for path in [*leftovers, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    _remove_stale_temporaries(_temporaries(str(out)), busy={})  # no live run holds a lease
    assert not [p for p in leftovers if p.exists()] and kept.exists()
