"""Storage faults through a fault-injecting proxy in front of the moto server (`faulty_proxy`): transient
errors (503, dropped connections, slow replies) are retried with backoff, permanent ones (403) are
reported as such at once, and an archive run that loses its store mid-way prints its summary line,
exits 3, marks nothing failed, and a rerun finishes it."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.store.storage import (
    RetryPolicy,
    StorageError,
    StorageUnavailable,
    check_reachable,
    describe,
    filesystem,
    range_reader,
    read_bytes,
    retrying,
    write_bytes,
)
from tests.faulty_proxy import FaultyProxy, Rule

FAST = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.01)


def _flaky(errors: list[BaseException]):
    calls = []

    def operation() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return operation, calls


def test_transient_errors_are_retried_and_permanent_ones_are_not() -> None:
    operation, calls = _flaky([ConnectionResetError(), OSError(errno.EBUSY, "SlowDown")])
    assert retrying("s3://b/k", operation, policy=FAST) == "done" and len(calls) == 3
    operation, calls = _flaky([PermissionError("Access Denied")])
    with pytest.raises(PermissionError):
        retrying("s3://b/k", operation, policy=FAST)
    assert len(calls) == 1
    operation, calls = _flaky([TimeoutError("read timed out")] * 10)
    with pytest.raises(StorageUnavailable) as info:
        retrying("s3://b/k", operation, policy=FAST)
    assert len(calls) == 4 and str(info.value).startswith("s3://b/k: storage unreachable after 4 attempts")


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    import random

    policy = RetryPolicy(attempts=8, base_seconds=0.5, cap_seconds=15.0)
    rng = random.Random(0)
    delays = [policy.delay(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(15.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert 20 < sum(d for d in delays[:-1]) < 50  # a 20-second outage is ridden out


@pytest.fixture
def proxy(s3_endpoint: str):
    with FaultyProxy(s3_endpoint) as running:
        yield running


def test_writes_and_reads_ride_out_503s_drops_and_slow_replies(proxy: FaultyProxy, s3_bucket: str) -> None:
    fs, root = filesystem(f"s3://{s3_bucket}/arch", endpoint_url=proxy.url)
    path = f"{root}/manifest/part-a.parquet"
    proxy.add(Rule("503", pattern=r"/manifest/", method="PUT", count=3))
    data = bytes(range(256)) * 40
    write_bytes(fs, path, data)
    assert len(proxy.outcomes("503")) == 3
    proxy.add(Rule("drop", pattern=r"/manifest/", method="GET", count=2))
    proxy.add(Rule("slow", pattern=r"/manifest/", method="GET", count=2, delay=0.3))
    assert read_bytes(fs, path) == data
    assert range_reader(fs, path)(100, 50) == data[100:150]
    assert len(proxy.outcomes("drop")) == 2 and len(proxy.outcomes("slow")) == 2


def test_access_denied_is_reported_at_once_and_not_as_unreachable(proxy: FaultyProxy, s3_bucket: str) -> None:
    fs, root = filesystem(f"s3://{s3_bucket}/arch", endpoint_url=proxy.url)
    proxy.add(Rule("403", method="PUT", count=None))
    with pytest.raises(PermissionError) as info:
        write_bytes(fs, f"{root}/x.json", b"{}")
    assert len(proxy.outcomes("403")) == 1  # not retried
    message = describe(info.value, f"s3://{s3_bucket}/arch/x.json")
    assert "access denied" in message and "unreachable" not in message
    proxy.add(Rule("403", count=None))
    with pytest.raises(StorageError) as refused:
        check_reachable(fs, root, f"s3://{s3_bucket}/arch", must_exist=False)
    assert "access denied" in str(refused.value) and "unreachable" not in str(refused.value)


def test_a_run_that_loses_its_store_prints_its_summary_exits_3_and_a_rerun_finishes(
    proxy: FaultyProxy,
    s3_bucket: str,
    sample_dir: Path,
    tmp_path: Path,
    ray_address: str,
    fast_metrics: tuple[str, ...],
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_dir / "short.mkv", src)  # one small video: the faults, not the coding, matter here
    out = f"s3://{s3_bucket}/archive"
    command = ["archive", str(src), out, "--endpoint-url", proxy.url, "--gop-frames", "12"]
    command += [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    # the store stops accepting done markers and the run's summary: an outage past every retry
    outage = proxy.add(Rule("503", pattern=r"/markers/done/|/summary\.json", method="PUT", count=None))
    runner = CliRunner()
    lost = runner.invoke(app, command)
    assert lost.exit_code == 3, lost.output
    assert "Traceback" not in lost.output
    assert "run " in lost.stdout and "1 failed" in lost.stdout and "rerun the same command" in lost.stdout
    assert "summary not written" in lost.stderr and "storage unreachable" in lost.stderr
    assert outage.hits == 2 * RetryPolicy.default().attempts  # the marker and the summary, each retried
    fs, root = filesystem(out, endpoint_url=proxy.url)
    assert not fs.exists(f"{root}/markers/failed")  # a storage fault is not the videos' failure
    # the store comes back, still flaky: 503s, dropped connections and slow replies, all retried
    proxy.clear()
    faults = [
        proxy.add(Rule("503", pattern=r"/manifest/", method="PUT", count=2)),
        proxy.add(Rule("drop", pattern=r"/videos/", method="PUT", count=2)),
        proxy.add(Rule("slow", pattern=r"/markers/", count=2, delay=0.2)),
    ]
    rerun = runner.invoke(app, command)
    assert rerun.exit_code == 0, rerun.output
    assert "1 ok, 0 failed" in rerun.stdout
    assert [rule.hits for rule in faults] == [2, 2, 2]
    verify = runner.invoke(app, ["verify", out, "--endpoint-url", proxy.url])
    assert verify.exit_code == 0, verify.output


def test_a_pack_lost_to_the_store_is_not_a_failure_of_its_videos(
    proxy: FaultyProxy,
    s3_bucket: str,
    sample_dir: Path,
    tmp_path: Path,
    ray_address: str,
    fast_metrics: tuple[str, ...],
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_dir / "short.mkv", src / "a.mkv")
    shutil.copy(sample_dir / "short.mkv", src / "b.mkv")
    out = f"s3://{s3_bucket}/packed"
    command = ["archive", str(src), out, "--endpoint-url", proxy.url, "--gop-frames", "12", "--pack", "64"]
    command += [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    proxy.add(Rule("503", pattern=r"/markers/packs/", method="PUT", count=None))  # past every retry
    runner = CliRunner()
    lost = runner.invoke(app, command)
    assert lost.exit_code == 3 and "2 failed" in lost.stdout, lost.output
    fs, root = filesystem(out, endpoint_url=proxy.url)
    assert not fs.exists(f"{root}/markers/failed")  # both members stay to be retried
    proxy.clear()
    rerun = runner.invoke(app, command)
    assert rerun.exit_code == 0 and "2 ok, 0 failed" in rerun.stdout, rerun.output


def test_a_store_that_dies_mid_run_gives_exit_3_its_summary_line_and_no_failed_marker(
    s3_endpoint: str,
    s3_bucket: str,
    sample_dir: Path,
    tmp_path: Path,
    ray_address: str,
    fast_metrics: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store dies (like a killed server: connections refused) at the first container upload, and
    stays dead: the commit, the lease renewals (every turn of the loop here) and the lease release
    all meet it, and every one of them ends as the documented exit 3, never a traceback."""
    monkeypatch.setenv("VIDARC_LEASE_TTL_S", "0.001")  # renew on every turn: the renewal meets the outage
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_dir / "short.mkv", src)
    out = f"s3://{s3_bucket}/dies"
    skips = [arg for metric in fast_metrics for arg in ("--skip-metric", metric)]
    runner = CliRunner()
    with FaultyProxy(s3_endpoint) as dying:
        dying.add(Rule("down", pattern=r"/videos/", method="PUT"))
        lost = runner.invoke(
            app, ["archive", str(src), out, "--endpoint-url", dying.url, "--gop-frames", "12", *skips]
        )
        assert dying.outcomes("down"), "the store never went down"
    assert lost.exit_code == 3, lost.output
    assert "Traceback" not in lost.output and isinstance(lost.exception, SystemExit)
    assert "run " in lost.stdout and "rerun the same command" in lost.stdout
    assert not re.search(r"^\s*failed: ", lost.stderr, re.M)  # a storage fault is not the video's failure
    assert "not written" in lost.stderr
    fs, root = filesystem(out, endpoint_url=s3_endpoint)  # the store itself, past the dead endpoint
    assert not fs.exists(f"{root}/markers/failed")
    rerun = runner.invoke(
        app, ["archive", str(src), out, "--endpoint-url", s3_endpoint, "--gop-frames", "12", *skips]
    )
    assert rerun.exit_code == 0 and "1 ok, 0 failed" in rerun.stdout, rerun.output


def test_a_dropped_connection_in_the_io_loop_prints_no_traceback(s3_endpoint: str) -> None:
    """aiohttp's body-writing task fails with the connection a store dropped; that request failed and
    was retried or worded already, so asyncio must not report the task's traceback later. Any other
    error in that loop is still reported (asyncio reports through its logger)."""
    import asyncio
    import gc
    import logging

    import fsspec.asyn
    from aiohttp import ClientOSError

    filesystem("s3://any-bucket/x", endpoint_url=s3_endpoint)  # sets the loop's handler up
    loop = fsspec.asyn.get_loop()
    reported: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reported.append(record.getMessage() + str(record.exc_info and record.exc_info[1]))

    async def fails(error: Exception) -> None:
        raise error

    async def orphan(error: Exception) -> None:
        task = asyncio.ensure_future(fails(error))
        await asyncio.sleep(0.01)
        del task
        gc.collect()

    handler = Collect()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        dropped = ClientOSError(32, "Cannot write to closing transport")
        asyncio.run_coroutine_threadsafe(orphan(dropped), loop).result()
        assert reported == []
        asyncio.run_coroutine_threadsafe(orphan(ValueError("a bug, not a connection")), loop).result()
        assert any("a bug, not a connection" in line for line in reported)
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
