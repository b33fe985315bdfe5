"""`vidarc bench pipeline --against ffmpeg`: one real run on tiny clips (both sides, the same frames, the
ratio as defined, every stage's device-seconds), and the one-line errors. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app


def test_against_ffmpeg_runs_both_sides_on_the_same_files(tmp_path: Path, ray_address: str) -> None:
    from pipeline.benchmarks.throughput import make_clips
    from pipeline.format.schema import COMPUTE_STAGES

    folder = tmp_path / "videos"
    folder.mkdir()
    make_clips(folder, videos=2, frames=12, width=96, height=64)
    (folder / "notes.txt").write_text("not a video\n")  # skipped on both sides

    argv = ["bench", "pipeline", "--against", "ffmpeg", "--codec", "x264", "--quality", "30"]
    result = CliRunner().invoke(app, [*argv, "--files", str(folder), "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    record = json.loads(result.stdout)

    assert record["files"] == 2 and record["frames"] == 24
    assert record["encoder"] == "libx264" and record["preset"] == "medium" and record["quality"] == 30
    assert "-c:v libx264 -preset medium -crf 30 -g 48" in record["ffmpeg_command"]
    assert record["ffmpeg_fps"] > 0 and record["vidarc_fps"] > 0
    assert record["ffmpeg_fps"] == pytest.approx(24 / record["ffmpeg_wall_seconds"])
    assert record["vidarc_fps"] == pytest.approx(24 / record["vidarc_wall_seconds"])
    assert record["ratio"] == pytest.approx(record["vidarc_fps"] / record["ffmpeg_fps"])
    assert len(record["ffmpeg_runs_seconds"]) == 2 and 0 <= record["ffmpeg_drift"] < 1
    assert record["ray_startup_seconds"] is None  # the session's cluster was already running
    assert 0 <= record["vidarc_startup_seconds"] <= record["vidarc_wall_seconds"]
    assert record["ffmpeg_bytes"] > 0 and record["vidarc_archive_bytes"] > 0

    stages = record["stage_device_seconds"]
    assert set(COMPUTE_STAGES) <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
    assert stages["encode"] > 0 and stages["metrics"] > 0  # default metrics: measured, not skipped
    assert record["metrics_to_encode"] == pytest.approx(stages["metrics"] / stages["encode"])
    assert "psnr" in record["metrics_measured"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--files", "{missing}"], "no such file or folder"),
        (["--files", "{text}"], "not a video"),
        (["--codec", "glvc"], "classic codecs"),
        (["--codec", "x264", "--quality", "80"], "CRF"),
        (["--against", "handbrake"], "--against 'handbrake'"),
    ],
)
def test_against_ffmpeg_refuses_bad_options_in_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    paths = {"missing": str(tmp_path / "nowhere.mp4"), "text": str(text)}
    argv = ["bench", "pipeline", "--against", "ffmpeg", *(a.format(**paths) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output
    if "{missing}" in args:
        assert paths["missing"] in lines[0]


def test_files_without_against_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "pipeline", "--files", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --files needs --against ffmpeg"


def test_the_bench_works_in_the_same_folder_every_run_and_one_at_a_time(tmp_path: Path) -> None:
    """Video keys hash the source path and the expensive metrics' sample is keyed by them: the same
    folder on every run measures the same GOPs. A second bench on that folder at once is refused."""
    from pipeline.benchmarks.ffmpeg_loop import _stable_workdir

    with _stable_workdir(tmp_path, "bench") as first:
        (first / "left-over").write_text("x")
        with (
            pytest.raises(RuntimeError, match="another bench is running"),
            _stable_workdir(tmp_path, "bench"),
        ):
            pass
    assert not first.exists()
    with _stable_workdir(tmp_path, "bench") as second:
        assert second == first and list(second.iterdir()) == []
