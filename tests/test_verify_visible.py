"""The archive's closing verify is visible, timed and not repeated for nothing; verify's progress lines.

- progress: rate-limited lines with counts and an ETA; a verify's decode always says when it starts
  and how long it took; Ray tasks count their GOPs one by one (a task may hold the whole sample);
- the closing verify: its lines on the run's progress stream, its real wall time in summary.json, and a
  rerun that archived nothing skips it (one line, summary says why) only while the last verify passed
  over the same committed videos with the same settings.
Real x264 archives, real local Ray, real files.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.audit.summary import summarise_verify
from pipeline.format.container import read_index
from pipeline.store.keyset import KeySet
from pipeline.store.storage import filesystem, range_reader
from pipeline.tools.verify import _gop_counter, _verify_batch_counted, run_verify
from pipeline.tools.verify_progress import VerifyProgress


class _Clock:
    """A clock the test moves by hand (the progress reporter takes its clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_rate_limited_with_counts_and_eta() -> None:
    lines: list[str] = []
    clock = _Clock()
    progress = VerifyProgress(lines.append, interval=10, clock=clock)

    progress.start("GOPs decoded", 12, line="decoding 12 GOPs on cpu")
    for _ in range(12):
        clock.now += 4
        progress.advance()
    progress.finish()

    assert lines == [
        "verify: decoding 12 GOPs on cpu",
        "verify: 3/12 GOPs decoded (0:12, ETA 0:36)",
        "verify: 6/12 GOPs decoded (0:24, ETA 0:24)",
        "verify: 9/12 GOPs decoded (0:36, ETA 0:12)",
        "verify: 12/12 GOPs decoded in 0:48",
    ]


def test_progress_without_a_total_and_without_movement() -> None:
    lines: list[str] = []
    clock = _Clock()
    progress = VerifyProgress(lines.append, interval=10, clock=clock)
    progress.start("manifest rows read")  # no line at the start: phases before the decode speak when slow
    clock.now += 30
    progress.update(0)  # nothing moved: nothing to say
    progress.advance(65536)
    assert lines == ["verify: 65536 manifest rows read (0:30)"]
    VerifyProgress(None).finish()  # no emitter: silent


def test_keyset_identity_is_the_set_whatever_the_order_or_repeats() -> None:
    one = KeySet.of(["b", "a", "c", "a"]).identity()
    assert one == KeySet.of(["c", "b", "a"]).identity() and one[0] == 3
    assert KeySet.of(["a", "b"]).identity() != one
    assert KeySet().freeze().identity()[0] == 0


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> Path:
    out = tmp_path_factory.mktemp("visible") / "out"
    config = ArchiveConfig(
        src=str(sample_dir), out=str(out), codec="x264", gop_frames=4, skip_metrics=fast_metrics
    )
    assert run_archive(config).exit_code == 0
    return out


@pytest.mark.parametrize(
    "device, where",
    [("cpu", "on cpu"), ("cuda", "on cuda as Ray GPU tasks")],  # the test cluster declares a GPU
)
def test_verify_on_ray_tasks_reports_its_decode(archive: Path, device: str, where: str) -> None:
    """13 GOPs with Ray up decode as Ray tasks: the progress starts, moves forward, and ends with all."""
    lines: list[str] = []

    report = run_verify(str(archive), fraction=1.0, device=device, progress=lines.append, progress_interval=0)

    assert report.ok, report.failures
    decode = lines[lines.index(f"verify: decoding 13 GOPs {where}") :]
    assert decode[-1].startswith("verify: 13/13 GOPs decoded in ")
    counts = [int(line.split()[1].split("/")[0]) for line in decode[1:]]
    assert counts == sorted(counts) and all(0 < n <= 13 for n in counts)


def test_a_ray_task_counts_each_gop_it_verifies(ray_address: str, tmp_path: Path) -> None:
    """One task holding a whole batch still reports GOP by GOP (its count is complete when it returns):
    the GOPs here are read from a missing object, so each fails at once but counts."""
    import ray

    gone = str(tmp_path / "videos" / "gone.vdrc")
    row = dict(
        run_id="r", video_key="k", archive_uri=gone, frame_count=4, codec="x264", psnr=None, member=None
    )
    batch = [(dict(row, gop_index=i, first_frame=4 * i), 1000) for i in range(5)]
    context = dict(device="cpu", endpoint_url=None, model=None, verify_run_id="v", against_source=False)
    counter = _gop_counter()
    try:
        rows = ray.get(ray.remote(num_cpus=1)(_verify_batch_counted).remote(batch, context, counter))
        assert [r["status"] for r in rows] == ["failed"] * 5
        assert ray.get(counter.value.remote()) == 5
    finally:
        ray.kill(counter)


def _run(config: ArchiveConfig):
    """run_archive with its progress stream captured (plain lines, as in a log)."""
    stream = io.StringIO()
    result = run_archive(config, display=ProgressDisplay(Counters(), stream=stream, live=False))
    return result, stream.getvalue()


def _summary_file(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "summary.json").read_text())


def _verify_parts(out: Path) -> int:
    return len(list((out / "verify").glob("part-*.parquet")))


def _last(out: Path) -> dict:
    return json.loads((out / "verify" / "last.json").read_text())


def _flip_gop(out: Path) -> tuple[Path, int]:
    """Flip one byte inside a GOP payload of one container; returns (path, offset) to flip it back."""
    path = next((out / "videos").glob("*.vdrc"))
    index = read_index(range_reader(*filesystem(str(path))), path.stat().st_size, name=str(path))
    offset = index.gops[0].offset + index.gops[0].length // 2
    _flip(path, offset)
    return path, offset


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_closing_verify_is_visible_timed_and_skipped_only_when_nothing_changed(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics
) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(
        src=str(samples), out=str(out), codec="x264", skip_metrics=fast_metrics, verify_fraction=1.0
    )

    # 1. archived and verified: the verify speaks, and its time is its own
    first, log = _run(config)
    verify = first.summary["verify"]
    assert first.exit_code == 0 and verify["skipped"] is False and verify["failures"] == []
    assert verify["gops_decoded"] == 2 and verify["checks"]["exact"] == 2
    assert "verify: decoding 2 GOPs on cpu" in log and "verify: 2/2 GOPs decoded in " in log
    recorded = _summary_file(out, first.run_id)
    assert recorded["verify"]["wall_seconds"] == verify["wall_seconds"] > 0
    assert recorded["wall_seconds"] >= recorded["archive_wall_seconds"] + verify["wall_seconds"]
    assert "closing verify: 2 GOPs decoded, 0 failures" in first.message
    last = _last(out)
    assert last["kind"] == "closing" and last["passed"] is True and last["run_id"] == first.run_id
    assert last["covers"]["videos_done"] == 2 and last["covers"]["fraction"] == 1.0
    parts = _verify_parts(out)

    # 2. nothing archived since: skipped, in one line that says how to check again
    again, log = _run(config)
    verify = again.summary["verify"]
    assert again.exit_code == 0 and again.summary["videos_ok"] == 0
    assert verify["skipped"] is True and "nothing archived since the last verify" in verify["skip_reason"]
    assert verify["last_verify_run_id"] == first.summary["verify"]["verify_run_id"]
    skip_lines = [line for line in log.splitlines() if line.startswith("verify: ")]
    assert len(skip_lines) == 1 and f"run `vidarc verify {out}` to check again" in skip_lines[0]
    assert first.run_id in skip_lines[0]
    assert _verify_parts(out) == parts and _last(out)["run_id"] == first.run_id
    assert _summary_file(out, again.run_id)["verify"]["skipped"] is True
    assert "closing verify skipped" in again.message

    # 3. a new video committed: verified again, the record now covers it
    shutil.copy(samples / "short.mkv", samples / "short-copy.mkv")
    third, log = _run(config)
    assert third.summary["videos_ok"] == 1 and third.summary["verify"]["skipped"] is False
    assert third.summary["verify"]["gops_decoded"] == 3 and "verify: decoding 3 GOPs" in log
    assert _last(out)["covers"]["videos_done"] == 3

    # 4. other settings (another fraction): verified again
    half = ArchiveConfig(
        src=str(samples), out=str(out), codec="x264", skip_metrics=fast_metrics, verify_fraction=0.5
    )
    fourth, _ = _run(half)
    assert fourth.summary["verify"]["skipped"] is False and fourth.summary["verify"]["gops_decoded"] == 2

    # 5. the last verify failed (here `vidarc verify`, on a damaged byte since repaired): never skipped
    path, offset = _flip_gop(out)
    assert not run_verify(str(out)).ok
    assert _last(out)["passed"] is False and _last(out)["kind"] == "verify"
    _flip(path, offset)
    fifth, log = _run(half)
    assert fifth.summary["verify"]["skipped"] is False and fifth.summary["verify"]["failures"] == []
    assert "verify: decoding 2 GOPs" in log

    # 6. and once it passed again, the next rerun skips it
    sixth, _ = _run(half)
    assert sixth.summary["verify"]["skipped"] is True and sixth.exit_code == 0

    # the record beside the verify parts is no part: the audit reads the parts as before
    audited = summarise_verify(str(out))
    assert audited is not None and audited["damaged_parts"] == []
    assert len(audited["runs"]) == _verify_parts(out)

    # 7. damage found by `vidarc verify` and left in place: the rerun verifies, fails, and the closing
    # verify that failed is not skipped either on the next rerun
    _flip_gop(out)
    assert not run_verify(str(out)).ok
    seventh, _ = _run(config)  # every GOP: the damaged one is in the sample
    assert seventh.summary["verify"]["skipped"] is False and seventh.exit_code == 1
    assert seventh.summary["verify"]["failures"]
    assert _last(out)["kind"] == "closing" and _last(out)["passed"] is False
    eighth, _ = _run(config)  # same settings, nothing new: skipped only after a passed verify
    assert eighth.summary["verify"]["skipped"] is False and eighth.exit_code == 1
