"""The Ray cluster `vidarc archive` starts itself keeps its idle task workers (`LOCAL_RAY_SYSTEM_CONFIG`),
and a cluster that is already running is joined as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.archive.driver import LOCAL_RAY_SYSTEM_CONFIG

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys
import ray
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.driver import LOCAL_RAY_SYSTEM_CONFIG, _start_ray

_start_ray(ArchiveConfig(src=".", out=".", address=sys.argv[1] or None))
config = ray._private.state.state.get_system_config()
assert list(LOCAL_RAY_SYSTEM_CONFIG) == ["idle_worker_killing_time_threshold_ms"], LOCAL_RAY_SYSTEM_CONFIG
print(json.dumps({key: config.get(key) for key in LOCAL_RAY_SYSTEM_CONFIG}))
ray.shutdown()
"""


def _cluster_settings(address: str, tmp_path: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, address],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_an_embedded_cluster_keeps_idle_workers_and_a_running_one_is_joined_as_is(
    ray_address: str, tmp_path: Path
) -> None:
    assert LOCAL_RAY_SYSTEM_CONFIG["idle_worker_killing_time_threshold_ms"] >= 10_000
    assert _cluster_settings("", tmp_path) == LOCAL_RAY_SYSTEM_CONFIG  # and not changed by Ray
    import ray

    running = ray._private.state.state.get_system_config()  # the session's cluster: its own settings
    own = {key: running.get(key) for key in LOCAL_RAY_SYSTEM_CONFIG}
    assert own != LOCAL_RAY_SYSTEM_CONFIG  # (else the next check could not tell them apart)
    joined = _cluster_settings(ray_address, tmp_path)  # refused settings: joined without them
    assert joined == own
