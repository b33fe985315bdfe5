"""One writer per video (pipeline/archive/leases.py): conditional creates locally and on the moto S3
server, takeover of dead owners' leases, and a second archive run that leaves the videos another live
run holds to it, while runs over disjoint videos share an OUT and keep each other's temporaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.archive import run_archive
from pipeline.archive.actors import EncodePool
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.leases import Leases, lease_path
from pipeline.store.storage import filesystem, write_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def out_root(request, tmp_path: Path) -> tuple:
    if request.param == "local":
        return filesystem(str(tmp_path / "out"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return filesystem(f"s3://{bucket}/out", endpoint_url=endpoint)


def test_a_lease_has_one_holder_until_released(out_root) -> None:
    fs, root = out_root
    clock = Clock()
    first = Leases(fs, root, "run-a", clock=clock)
    second = Leases(fs, root, "run-b", clock=clock)
    assert first.acquire("video1") is None
    holder = second.acquire("video1")
    assert holder is not None and holder.run_id == "run-a" and "run run-a" in holder.describe(clock())
    assert set(second.live_foreign()) == {"video1"} and first.live_foreign() == {}
    assert second.acquire("video2") is None  # disjoint videos: both runs work
    first.release("video1")
    assert second.acquire("video1") is None and set(first.live_foreign()) == {"video1", "video2"}


def _forge(fs, root: str, key: str, **fields) -> None:
    record = {"run_id": "dead", "host": "elsewhere", "pid": 1, "pid_started": 0.0, "nonce": "n"}
    record.update(fields)
    write_bytes(fs, lease_path(root, key), json.dumps(record).encode())


def test_dead_owners_leases_are_taken_over(out_root) -> None:
    fs, root = out_root
    clock = Clock()
    mine = Leases(fs, root, "run-new", clock=clock)
    # another host's lease: alive until it expires
    _forge(fs, root, "remote", expires_at=clock() + 60)
    assert mine.acquire("remote") is not None
    clock.now += 61
    assert mine.acquire("remote") is None
    # this host, a process that is gone (a driver killed with SIGKILL): taken at once
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    _forge(fs, root, "local", host=mine.host, pid=int(gone.stdout), expires_at=clock() + 600)
    assert mine.acquire("local") is None
    assert json.loads(fs.cat_file(lease_path(root, "local")))["run_id"] == "run-new"
    # a run starting up removes dead runs' leases it will never take over (e.g. of done videos)
    _forge(fs, root, "done-video", host=mine.host, pid=int(gone.stdout), expires_at=clock() + 600)
    other = Leases(fs, root, "run-other", clock=clock)
    assert set(other.live_foreign(remove_dead=True)) == {"remote", "local"}
    assert not fs.exists(lease_path(root, "done-video"))


def test_leases_are_renewed_while_held_and_expire_otherwise(out_root) -> None:
    fs, root = out_root
    clock = Clock()
    owner = Leases(fs, root, "run-a", ttl=100, clock=clock)
    other = Leases(fs, root, "run-b", ttl=100, clock=clock)
    other.host = "another-host"  # judge run-a's lease by its expiry, as a run on another machine does
    owner.acquire("v")
    clock.now += 90
    owner.renew()  # due (every ttl/4)
    clock.now += 90
    assert other.acquire("v") is not None  # renewed 90 s ago: still alive
    clock.now += 101
    assert other.acquire("v") is None


def test_a_stalled_actor_is_killed_once_and_progress_resets_its_clock() -> None:
    clock = Clock()
    pool = EncodePool(
        ArchiveConfig(src="s", out="o", stall_seconds=10), [object(), object()], 1.0, clock=clock
    )
    idx, _ = pool.pick()
    clock.now += 9
    assert pool.stalled() == []
    other, _ = pool.pick()
    clock.now += 2
    assert pool.stalled() == [idx]  # busy 11 s without finishing anything; the other only 2 s
    pool.release(idx)  # finishing a call is progress
    assert pool.stalled() == []
    clock.now += 9
    assert pool.kill_stalled() == [other] and pool.stalled() == []  # killed once: its clock restarts
    no_limit = EncodePool(ArchiveConfig(src="s", out="o", stall_seconds=None), [object()], 1.0, clock=clock)
    no_limit.pick()
    clock.now += 1e6
    assert no_limit.stalled() == []


def test_a_second_writer_leaves_held_videos_alone_and_disjoint_runs_share_an_out(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics
) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_dir, src)
    out = tmp_path / "out"
    fs, root = filesystem(str(out))
    from pipeline.archive.discovery import list_sources

    keys = {e.relative: e.key for e in list_sources(str(src))}
    busy_key = keys["sub/with-audio.mp4"]
    other_run = Leases(fs, root, "run-elsewhere")  # alive: this very process holds it
    assert other_run.acquire(busy_key) is None
    (out / "videos").mkdir(parents=True)
    theirs = out / "videos" / f"{busy_key}.vdrc.tmp-0123456789ab"
    stale = out / "videos" / "gone-0000.vdrc.tmp-ba9876543210"
    (out / "packs").mkdir()
    unnamed = out / "packs" / "p-0001.vdrc.tmp-00aa11bb22cc"  # no lease names a pack: a live run may own it
    for path in (theirs, stale, unnamed):
        path.write_bytes(b"in flight, or left by a dead run")

    def config(**kw) -> ArchiveConfig:
        return ArchiveConfig(src=str(src), out=str(out), skip_metrics=fast_metrics, gop_frames=6, **kw)

    result = run_archive(config(include=("short.mkv",)))  # a disjoint part of SRC: fine

    assert result.exit_code == 0 and result.summary["videos_ok"] == 1
    assert theirs.exists() and unnamed.exists() and not stale.exists()  # only a dead run's video temporary
    assert not list((out / "leases").glob(f"{keys['short.mkv']}*"))  # released once committed

    second = run_archive(config())  # over every video, the held one included

    assert second.exit_code == 1 and "left to another run" in second.message
    assert second.summary["videos_leased_elsewhere_total"] == 1
    assert "with-audio.mp4" in second.summary["videos_leased_elsewhere"][0]
    assert "run-elsewhere" in second.summary["videos_leased_elsewhere"][0]
    assert second.summary["videos_failed"] == second.summary["videos_ok"] == 0  # short.mkv: done before
    assert not (out / "markers" / "done" / f"{busy_key}.json").exists()  # never touched
    assert fs.exists(lease_path(root, busy_key))  # the other run's lease untouched
    other_run.release(busy_key)
    assert run_archive(config()).summary["videos_ok"] == 1  # once it is free, a rerun does it
    assert not unnamed.exists()  # no live run any more: the pack temporary was stale
