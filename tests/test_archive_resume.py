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


def test_killed_driver_resumes_without_redoing_or_duplicating(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    copies = 8
    src = _collection(sample_dir, tmp_path / "src", copies)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.archive", str(src), str(out), "--address", ray_address]
    command += ["--gop-frames", "16"] + [arg for m in fast_metrics for arg in ("--skip-metric", m)]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / "markers" / "done"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if _committed(done_dir):
            break
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    done_at_kill = len(_committed(done_dir))
    if done_at_kill >= copies:
        pytest.fail("the run finished before it could be killed; make the collection larger")
    assert done_at_kill >= 1

    time.sleep(1.0)  # let the cluster reap the dead driver's workers
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # a commit in flight at the kill may have landed after it: count what the rerun found
    counts = re.search(r"(\d+) ok, 0 failed, (\d+) already done", rerun.stdout)
    assert counts, rerun.stdout
    assert int(counts[2]) >= done_at_kill and int(counts[1]) + int(counts[2]) == copies
    _check_complete(out, copies)


def test_dead_actor_gops_are_retried_on_a_new_actor(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    import ray

    copies = 4
    src = _collection(sample_dir, tmp_path / "src", copies)
    out = tmp_path / "out"
    counters = Counters()
    display = ProgressDisplay(counters, live=False, interval=60)
    config = ArchiveConfig(
        src=str(src), out=str(out), gop_frames=16, skip_metrics=fast_metrics, run_id="kill-actor"
    )
    results = []
    worker = threading.Thread(target=lambda: results.append(run_archive(config, display=display)))
    worker.start()
    killed = False
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline and not killed:
        if display.counters.gops_done >= 1:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
            mine = [n for n in names if n.startswith("vidarc-encode-kill-actor-")]
            if mine:
                ray.kill(ray.get_actor(mine[0]), no_restart=True)
                killed = True
        time.sleep(0.01)
    worker.join(timeout=300)
    assert killed and results
    result = results[0]
    assert result.exit_code == 0 and result.summary["actor_restarts"] >= 1
    assert result.summary["videos_ok"] == copies and result.summary["gops"] == 3 * copies
    _check_complete(out, copies)
