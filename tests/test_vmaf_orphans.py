"""A process killed with SIGKILL while VMAF runs leaves no ffmpeg behind, and the next VMAF removes the
temporary folder it left. The process is a real one (a Python child computing a real VMAF with the
imageio-ffmpeg binary); it is killed at a known point: ffmpeg started, the distorted frames streamed,
the reference frames not yet (their feeder waits, as when the caller stalls mid-stream)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.metrics.vmaf import TEMP_PREFIX, ffmpeg_with_vmaf, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, threading
from pathlib import Path
import numpy as np
import pipeline.metrics.vmaf

module = sys.modules["pipeline.metrics.vmaf"]

ready = Path(sys.argv[1])
source = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
recon = source.copy()
feed = module._feed


def paused_feed(target, frames, errors):
    if frames is source:  # the reference: stall here, after ffmpeg started
        ready.write_text("ready")
        threading.Event().wait()
    feed(target, frames, errors)


module._feed = paused_feed
module.vmaf(source, recon)
"""


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented child may wait to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(condition, what: str, deadline_s: float = 60.0):
    """Poll `condition` until it is truthy; fail naming `what` after a generous deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting: {what}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_caller_leaves_no_ffmpeg_and_its_folder_is_swept(tmp_path: Path) -> None:
    exe, reason = ffmpeg_with_vmaf()
    if exe is None:
        pytest.skip(reason)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ready)], env=env, cwd=REPO)
    try:
        started = _wait_for(
            lambda: ready.exists() or child.poll() is not None, "the child to start ffmpeg and stall its feed"
        )
        assert started and child.poll() is None, "the child ended before it stalled"
        ffmpeg = _wait_for(
            lambda: [p for p in _children(child.pid) if "ffmpeg" in Path(f"/proc/{p}/cmdline").read_text()],
            "ffmpeg to be running",
        )
        folders = [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
        assert len(folders) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    _wait_for(lambda: not any(_running(pid) for pid in ffmpeg), "ffmpeg to die with its parent")
    assert folders[0].exists()  # killed: nothing cleaned up after itself
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-live"
    live.mkdir()  # a live process's folder is left alone
    assert remove_stale_temporaries(str(tmp_path)) == [str(folders[0])]
    assert not folders[0].exists() and live.exists()
