"""`ray job submit --working-dir . -- python -m jobs.archive ...` against a real running Ray head.

The test starts its own head (`ray start --head --block`, with the dashboard's job server) in a
private temp dir, submits the archive job with the repository as working dir and the runtime env from
`infra/runtime_env.yaml` (which keeps `.venv/` and `.git/` out of the upload), waits for it, and
checks the archive the job wrote. The head is stopped by killing the `ray start --block` process
group it runs in — only this test's cluster, never other Ray instances on the machine (which a bare
`ray stop` would kill).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_job_server(url: str, head: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited with {head.returncode}: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/api/version", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(1.0)
    raise AssertionError(f"the job server at {url} did not come up in {timeout:.0f} s")


#: Answers of a job server that is not ready yet: no job was created, so submitting again is safe
#: (and were one created, the archive job is idempotent: a second run skips what the first did).
_NOT_READY = ("No available agent", "Connection aborted", "RemoteDisconnected", "Connection refused")


def _submit(cmd: list[str], env: dict[str, str], patience: float = 90.0) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head is not ready to take it: the job server answers before
    the dashboard agent registers (Ray then refuses the submission and says to retry), and on a loaded
    machine the job server can drop the upload's connection while it starts."""
    deadline = time.monotonic() + patience
    while True:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
        if proc.returncode == 0 or not any(text in proc.stdout + proc.stderr for text in _NOT_READY):
            return proc
        if time.monotonic() > deadline:
            return proc
        time.sleep(2.0)


def _head_report(head: subprocess.Popen, temp_dir: str) -> str:
    """What a failed submission needs to be understood: whether the head still runs, and the tails of
    its logs (the temp dir is removed at teardown)."""
    lines = [f"head: {'running' if head.poll() is None else f'exited {head.returncode}'}"]
    logs = Path(temp_dir) / "session_latest" / "logs"
    for name in ("ray-start.log", "gcs_server.out", "raylet.out", "dashboard.log", "dashboard_agent.log"):
        path = Path(temp_dir) / name if name == "ray-start.log" else logs / name
        with contextlib.suppress(OSError):
            lines.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(lines)


@pytest.fixture
def ray_head():
    """A local Ray head with the job server; yields (dashboard URL, env, report of the head's state and
    logs); always torn down."""
    temp_dir = tempfile.mkdtemp(prefix="vrj", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = _free_port(), _free_port()
    # Every port the head opens is chosen free: the agents' defaults (52365, 8085, …) would clash with
    # any other Ray instance on the machine, and a head whose agent cannot bind accepts no jobs.
    agent_ports = [
        f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
    ]  # fmt: skip
    # The cluster's `python` is this environment's (as the image's is on a real cluster): the job's
    # entrypoint runs through a shell that resolves `python` on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PATH=path)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        RAY, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", *agent_ports,
    ]  # fmt: skip
    log = Path(temp_dir) / "ray-start.log"
    with open(log, "w") as sink:  # a file, not a pipe: nobody drains a pipe while the head runs
        head = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_job_server(url, head, log)
        yield url, env, lambda: _head_report(head, temp_dir)
    finally:
        # The job has finished and its archive is checked: nothing of this throw-away cluster needs a
        # graceful stop (which spends ~30 s in Ray's shutdown waits), so its process group is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submitted_archive_job_completes(ray_head, sample_dir: Path, tmp_path: Path) -> None:
    url, env, head_report = ray_head
    out = tmp_path / "out"
    submit = [
        RAY, "job", "submit", "--address", url, "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "infra" / "runtime_env.yaml"), "--",
        "python", "-m", "jobs.archive", str(sample_dir), str(out), "--codec", "x264", "--gop-frames", "16",
        "--address", "auto", "--skip-metric", "lpips", "--skip-metric", "dists", "--skip-metric", "vmaf",
    ]  # fmt: skip
    proc = _submit(submit, env)
    log = proc.stdout + proc.stderr

    assert proc.returncode == 0, log[-3000:] + "\n" + head_report()
    assert "succeeded" in log and "2 ok, 0 failed" in log, log[-3000:]
    assert "Uploading package" in log or "Pushing file package" in log or "gcs://" in log, log[-3000:]
    rows = [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert {Path(r["source_uri"]).name for r in rows} == {"with-audio.mp4", "short.mkv"}
    assert all(r["status"] == "ok" for r in rows) and sum(r["frame_count"] for r in rows) == 37 + 12
    keys = {r["video_key"] for r in rows}
    assert {p.stem for p in (out / "videos").glob("*.vdrc")} == keys
    assert {p.stem for p in (out / "markers" / "done").glob("*.json")} == keys
