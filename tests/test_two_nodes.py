"""More than one node: a two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` with its own resource) archiving into the moto S3 server. Decode tasks run on
the head (only it has `vidarc_cpu`), encode actors on the second node (only it has `vidarc_encode`).

The second node is killed mid-run at a deterministic point: the driver pauses itself once its first
GOP has come back from the encoder (a committed state of the run, reached before any video of this run
can be complete) and waits for the test. A replacement node then joins (as an autoscaler would bring
one), and the run must still finish every video exactly once.

Only processes this test started are stopped (each `ray start --block` and its descendants); the
cluster lives in its own temporary folder and on ports picked free, so other Ray clusters on the
machine are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

DRIVER = r"""
import json, sys, time
from pathlib import Path

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay

address, src, out, endpoint, control, limit = sys.argv[1:7]
control = Path(control)


class PauseOnFirstGop(ProgressDisplay):
    # The scheduler calls refresh() after handling results: pausing here stops the driver on a state.
    paused = False

    def refresh(self, force: bool = False) -> None:
        if control.name != "none" and not self.paused and self.counters.gops_done >= 1:
            self.paused = True
            (control / "paused").write_text("1")
            while not (control / "resume").exists():
                time.sleep(0.05)
        super().refresh(force=force)


config = ArchiveConfig(
    src=src, out=out, endpoint_url=endpoint, address=address, gop_frames=4,
    skip_metrics=("lpips", "dists", "vmaf"), limit=int(limit) if limit != "none" else None,
    actor_resources={"vidarc_encode": 1}, task_resources={"vidarc_cpu": 0.01},
)
result = run_archive(config, display=PauseOnFirstGop(Counters(), live=False, interval=3600))
print(json.dumps({"exit": result.exit_code, "summary": result.summary}, default=str))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports() -> list[str]:
    """Every port a node would otherwise take from a fixed default, picked free."""
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [arg for name in names for arg in (name, str(_free_port()))]


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in reversed(_descendants(process.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


def _wait_for(path: Path, driver: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if driver.poll() is not None:
            out, err = driver.communicate()
            pytest.fail(f"the driver ended before {path.name}: {out[-2000:]} {err[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} after {seconds} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_node_cluster_survives_losing_the_encoder_node(
    sample_dir: Path, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_dir / "short.mkv", src / "a.mkv")  # 12 frames: 3 GOPs of 4
    shutil.copy(sample_dir / "short.mkv", src / "b.mkv")
    out = f"s3://{s3_bucket}/archive"
    temp = Path(tempfile.mkdtemp(prefix="vr2n-", dir="/tmp"))  # short: Ray's socket paths must fit
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        RAY_AUTH_MODE="disabled",
        RAY_TMPDIR=str(temp),
        RAY_health_check_period_ms="500",  # notice the lost node in seconds, not half a minute
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    started: list[subprocess.Popen] = []

    def node(*args: str) -> subprocess.Popen:
        command = [RAY, "start", "--block", "--disable-usage-stats", "--num-cpus", "2", *_ports(), *args]
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(process)
        return process

    def driver(limit: str, control: Path) -> subprocess.Popen:
        args = [sys.executable, "-c", DRIVER, address, str(src), out, s3_endpoint, str(control), limit]
        return subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(process: subprocess.Popen) -> dict:
        stdout, stderr = process.communicate(timeout=400)
        assert process.returncode == 0, stderr[-4000:]
        return json.loads(stdout.strip().splitlines()[-1])

    try:
        node(
            "--head",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--ray-client-server-port",
            str(_free_port()),
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(temp),
            "--resources",
            '{"vidarc_cpu": 100}',
        )
        # Each node on its own loopback address: the driver attaches to the head's raylet (127.0.0.1).
        encoder_node = node(
            "--address", address, "--node-ip-address", "127.0.0.2", "--resources", '{"vidarc_encode": 4}'
        )

        # Run 1 commits one video across the two nodes (decode on the head, encode on the second node).
        first = finish(driver("1", tmp_path / "none"))
        assert first["exit"] == 0 and first["summary"]["videos_ok"] == 1

        # Run 2: the driver pauses after its first encoded GOP; the encoder node is killed, a new one joins.
        control = tmp_path / "control"
        control.mkdir()
        second = driver("none", control)
        _wait_for(control / "paused", second, 300)
        _kill_tree(encoder_node)
        node("--address", address, "--node-ip-address", "127.0.0.3", "--resources", '{"vidarc_encode": 4}')
        (control / "resume").write_text("1")
        result = finish(second)
    finally:
        for process in reversed(started):
            _kill_tree(process)
        shutil.rmtree(temp, ignore_errors=True)

    summary = result["summary"]
    assert result["exit"] == 0, summary["failures"]
    assert summary["videos_ok"] == 1 and summary["videos_skipped_done"] == 1
    assert summary["actor_restarts"] >= 1  # the encoder really lived on the killed node

    import pyarrow.parquet as pq

    from pipeline.store.storage import filesystem
    from pipeline.tools.verify import run_verify

    fs, root = filesystem(out, endpoint_url=s3_endpoint)
    containers = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/videos"))
    parts = sorted(p for p in fs.find(f"{root}/manifest"))
    markers = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{root}/markers/done"))
    assert len(containers) == len(parts) == len(markers) == 2
    assert [c.removesuffix(".vdrc") for c in containers] == [m.removesuffix(".json") for m in markers]
    for part in parts:
        with fs.open(part, "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
        assert sorted(r["gop_index"] for r in rows) == [0, 1, 2] and {r["status"] for r in rows} == {"ok"}
    report = run_verify(out, endpoint_url=s3_endpoint)
    assert report.ok and report.gops_total == 6
