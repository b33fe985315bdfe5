"""Fault tolerance: a driver killed with SIGKILL mid-run loses only in-flight work, and an encode
actor dying mid-run has its GOPs retried on a new actor without duplicating any row."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay

REPO = Path(__file__).resolve().parents[1]


def _collection(sample_dir: Path, root: Path, copies: int) -> Path:
    root.mkdir()
    for i in range(copies):
        shutil.copy(sample_dir / "sub" / "with-audio.mp4", root / f"clip-{i:02d}.mp4")
    return root


def _check_complete(out: Path, copies: int) -> None:
    """Every video done exactly once: one container, its 3 GOP rows once in the manifest (per-video
    parts, or the files the run's compaction merged them into), one marker."""
    videos = sorted(p.stem for p in (out / "videos").iterdir())
    gops: dict[str, list[int]] = {}
    for path in sorted((out / "manifest").glob("*.parquet")):
        for row in pq.read_table(path, columns=["video_key", "gop_index", "status"]).to_pylist():
            assert row["status"] == "ok"
            gops.setdefault(row["video_key"], []).append(row["gop_index"])
    markers = sorted(p.stem for p in (out / "markers" / "done").iterdir())
    assert len(videos) == copies and videos == sorted(gops) == markers
    assert all(sorted(indices) == [0, 1, 2] for indices in gops.values())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def _committed(done_dir: Path) -> list[Path]:
    """Done markers in place (an atomic write's `.tmp-` file is not one yet: a rerun removes it)."""
    if not done_dir.is_dir():
        return []
    return [p for p in done_dir.iterdir() if p.suffix == ".json" and ".tmp-" not in p.name]


#: The driver, paused on a committed state: after the scheduler has handled its first committed video
#: (it handles one result per step and refreshes the display after each), it says so in a file and
#: waits to be killed. The run cannot finish meanwhile, so the kill always lands mid-run.
DRIVER = r"""
import sys, time
from pathlib import Path

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay

address, src, out, paused, *skip = sys.argv[1:]


class PauseOnFirstCommit(ProgressDisplay):
    def refresh(self, force: bool = False) -> None:
        if self.counters.videos_ok >= 1:
            Path(paused).write_text("1")
            while True:
                time.sleep(60)
        super().refresh(force=force)


config = ArchiveConfig(src=src, out=out, address=address, gop_frames=16, skip_metrics=tuple(skip))
run_archive(config, display=PauseOnFirstCommit(Counters(), live=False, interval=3600))
"""


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until `path` exists (the state waited on); the process exiting first is a failure, with why."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the driver exited ({process.returncode}) before {path.name}: {log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.05)


def test_killed_driver_resumes_without_redoing_or_duplicating(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    copies = 8
    src = _collection(sample_dir, tmp_path / "src", copies)
    out = tmp_path / "out"
    paused, log = tmp_path / "paused", tmp_path / "driver.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads a pipe while the driver runs
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, ray_address, str(src), str(out), str(paused), *fast_metrics],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_for(paused, driver, log, 300)
    os.kill(driver.pid, signal.SIGKILL)  # its process gone, a rerun on this host takes its leases at once
    driver.wait(timeout=30)
    done_at_kill = len(_committed(out / "markers" / "done"))
    assert 1 <= done_at_kill < copies

    command = [sys.executable, "-m", "jobs.archive", str(src), str(out), "--address", ray_address]
    command += ["--gop-frames", "16"] + [arg for m in fast_metrics for arg in ("--skip-metric", m)]
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # a commit in flight at the kill may have landed after it: count what the rerun found
    counts = re.search(r"(\d+) ok, 0 failed, (\d+) already done", rerun.stdout)
    assert counts, rerun.stdout
    assert int(counts[2]) >= done_at_kill and int(counts[1]) + int(counts[2]) == copies
    _check_complete(out, copies)


class _PauseOnFirstGop(ProgressDisplay):
    """Stops the scheduler (in its own thread) once a GOP has come back, until the test says go."""

    def __init__(self, counters: Counters) -> None:
        super().__init__(counters, live=False, interval=60)
        self.paused, self.resume = threading.Event(), threading.Event()

    def refresh(self, *, force: bool = False) -> None:
        if self.counters.gops_done >= 1 and not self.paused.is_set():
            self.paused.set()
            self.resume.wait(timeout=300)
        super().refresh(force=force)


def test_dead_actor_gops_are_retried_on_a_new_actor(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    import ray

    copies = 4
    src = _collection(sample_dir, tmp_path / "src", copies)
    out = tmp_path / "out"
    display = _PauseOnFirstGop(Counters())
    config = ArchiveConfig(
        src=str(src), out=str(out), gop_frames=16, skip_metrics=fast_metrics, run_id="kill-actor"
    )
    results = []
    worker = threading.Thread(target=lambda: results.append(run_archive(config, display=display)))
    worker.start()
    assert display.paused.wait(timeout=300), "no GOP came back"
    # the run is stopped after one of 12 GOPs: its actor still has work to lose
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    mine = [n for n in names if n.startswith("vidarc-encode-kill-actor-")]
    assert mine
    ray.kill(ray.get_actor(mine[0]), no_restart=True)
    display.resume.set()
    worker.join(timeout=300)
    assert results
    result = results[0]
    assert result.exit_code == 0 and result.summary["actor_restarts"] >= 1
    assert result.summary["videos_ok"] == copies and result.summary["gops"] == 3 * copies
    _check_complete(out, copies)
