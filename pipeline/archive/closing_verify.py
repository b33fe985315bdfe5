"""The archive job's closing verify (`--verify-fraction`): visible, timed, and not repeated for nothing.

After the last commit (and the closing compaction) the driver decodes a seeded sample of the whole
archive (`pipeline.tools.verify.run_verify`) with the run's `--model` and `--device`. Three things make that
step honest to the person watching:

- it speaks: progress lines on stderr like the rest of the run ("verify: 3/12 GOPs decoded (0:41, ETA
  1:58)"; `pipeline.tools.verify_progress`), since a neural sample on a CPU decodes for minutes;
- its time is its own: `summary.json`'s `verify.wall_seconds` is measured around it (the run's
  `wall_seconds` covers the whole run, verify included; `archive_wall_seconds` the work before it);
- it is not repeated for nothing: when this run committed nothing (no video archived or failed) and
  the last verify of the archive was a closing verify that passed over the same committed videos with
  the same fraction, seed, device, model and software (`pipeline.tools.verify_record`), it is skipped with
  one line saying so and how to check again. A failed last verify, any video committed since (by any
  run), or other settings run it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipeline.archive.config import ArchiveConfig
from pipeline.format.runinfo import tool_versions
from pipeline.store.storage import describe, filesystem, redact
from pipeline.tools.verify_record import committed_state, read_record

#: The closing verify's sample seed (`vidarc verify --seed`'s default): reruns draw the same sample.
SEED = 0


def closing_verify(
    cfg: ArchiveConfig, run_id: str, *, committed_nothing: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run (or skip) the closing verify of `cfg.out`; its record for summary.json. `say` shows a line
    (the run's progress display: stderr). Never raises: a verify that cannot run is a failure line."""
    started = time.monotonic()
    covers = _covers(cfg)
    last = _same_as_last(cfg, covers) if committed_nothing and covers is not None else None
    if last is not None:
        result = _skipped(last, covers)
        say(f"verify: {result['skip_reason']}, skipped; run `vidarc verify {redact(cfg.out)}` to check again")
    else:
        result = _run(cfg, run_id, covers, say)
    result["wall_seconds"] = round(time.monotonic() - started, 3)
    return result


def _covers(cfg: ArchiveConfig) -> dict[str, Any] | None:
    """What this closing verify covers: the committed videos now (before it starts), its settings and
    the software; None when the done markers cannot be listed (then it runs and is never skipped on)."""
    try:
        fs, root = filesystem(cfg.out, endpoint_url=cfg.endpoint_url)
        state = committed_state(fs, root)
    except Exception:
        return None
    return {
        **state,
        "fraction": cfg.verify_fraction,
        "seed": SEED,
        "device": cfg.device,
        "model": cfg.model,
        "versions": tool_versions(),
    }


def _same_as_last(cfg: ArchiveConfig, covers: dict[str, Any]) -> dict[str, Any] | None:
    """The last verify's record when this verify may be skipped for it, else None: it must be a closing
    verify that passed and covered exactly `covers` (the same videos, settings and software)."""
    fs, root = filesystem(cfg.out, endpoint_url=cfg.endpoint_url)
    record = read_record(fs, root)
    if record is None or record.get("kind") != "closing" or record.get("passed") is not True:
        return None
    return record if record.get("covers") == covers else None


def _skipped(last: dict[str, Any], covers: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `verify` for a skipped closing verify: why, and which verify it relies on."""
    reason = (
        f"nothing archived since the last verify (run {last.get('run_id')}, {last.get('finished_at')}: "
        f"{last.get('gops_decoded')} GOPs of {covers['videos_done']} videos, passed)"
    )
    return {
        "skipped": True,
        "skip_reason": reason,
        "last_verify_run_id": last.get("verify_run_id"),
        "failures": [],
        "notes": [],
        "rows": 0,
        "gops_decoded": 0,
        "checks": {},
    }


def _run(cfg: ArchiveConfig, run_id: str, covers: dict[str, Any] | None, say: Callable[[str], None]) -> dict:
    """Decode a sample of the archive (pipeline.tools.verify) where the codec's device is: GPU Ray tasks when
    the run used GPUs (the encode actors are gone by now, so their GPUs are free), else CPU; with no
    GPU reachable it decodes on CPU and says so in `notes`, never failing for a CPU-only head."""
    from pipeline.tools.verify import VerifyError, run_verify

    try:
        report = run_verify(
            cfg.out, fraction=cfg.verify_fraction, count=None, seed=SEED, device=cfg.device,
            endpoint_url=cfg.endpoint_url, model=cfg.model, progress=say, covers=covers,
            archive_run_id=run_id, readable_only=True,  # a GLACIER/DEEP_ARCHIVE object cannot be read back
        )  # fmt: skip
    except Exception as exc:  # e.g. the store went away: the run reports it, one line
        reason = redact(str(exc).splitlines()[0]) if isinstance(exc, VerifyError) else describe(exc, cfg.out)
        return {
            "skipped": False,
            "failures": [f"closing verify could not run: {reason}"],
            "rows": 0,
            "gops_decoded": 0,
            "notes": [],
            "checks": {},
        }
    return {**report.to_json(), "skipped": False, "rows": len(report.rows)}
