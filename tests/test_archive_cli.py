"""`python -m jobs.archive` refuses unusable inputs with one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _archive(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.archive", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        ),
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0]


def test_missing_source_folder(tmp_path: Path) -> None:
    proc = _archive(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    _assert_one_line_error(proc, str(tmp_path / "nowhere"), "no such file")
    assert not (tmp_path / "out").exists()


def test_unreachable_endpoint_writes_nothing(tmp_path: Path, fake_credentials: tuple[str, str]) -> None:
    proc = _archive("s3://bucket/videos", str(tmp_path / "out"), "--endpoint-url", "http://127.0.0.1:9")
    _assert_one_line_error(proc, "s3://bucket/videos", "unreachable")
    assert not (tmp_path / "out").exists()
    for secret in fake_credentials:
        assert secret not in proc.stderr + proc.stdout


def test_missing_output_bucket(tmp_path: Path, s3_endpoint: str, sample_dir: Path) -> None:
    proc = _archive(str(sample_dir), "s3://no-such-bucket-here/out", "--endpoint-url", s3_endpoint)
    _assert_one_line_error(proc, "no-such-bucket-here", "does not exist")


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--target-kbps", "100", "--quality", "20"], "at most one of"),
        (["--target-bpp", "-1"], "positive"),
        (["--codec", "mpeg2"], "unknown codec"),
        (["--actors", "0"], "--actors"),
        (["--target-vmaf", "90", "--quality", "20"], "either a rate option"),
        (["--target-vmaf", "90", "--target-psnr", "35"], "at most one of --target-vmaf"),
        (["--max-kbps", "300"], "apply to a quality target"),
    ],
)
def test_bad_options(tmp_path: Path, sample_dir: Path, options: list[str], needle: str) -> None:
    proc = _archive(str(sample_dir), str(tmp_path / "out"), *options)
    _assert_one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()
