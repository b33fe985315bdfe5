"""`verify/last.json`: what the last verify of an archive covered and whether it passed.

Why: `vidarc archive` ends with a closing verify (`--verify-fraction`). Rerunning the same command on a
finished archive archives nothing, and verifying the same sample again told nothing new (a neural
archive: minutes of decoding, per rerun). The archive job skips the closing verify when this run
committed nothing and the record says the last verify was a *closing* one that *passed* over the *same
committed videos*, with the same settings and the same software (`pipeline/archive/closing_verify.py`).

Every verify writes the record when it ends (`run_verify`: the closing verify and `vidarc verify`), so
the record is always the latest verify's: a verify that failed, whichever command ran it, leaves a record
no rerun skips on. A record that is missing, unreadable or of another format never lets a verify be
skipped. What a closing verify covered (`covers`) is taken before it starts, so a video committed while
it runs (another shard) is not claimed.

The committed videos' identity is that of the done set (done markers and committed packs' members):
their count and the sha256 of their sorted key digests (`KeySet.identity`), so any video committed,
re-archived under a removed marker or removed since changes it. It says nothing about bytes changed
underneath (a damaged object, a compaction by hand): `vidarc verify OUT` checks those, and the skip says so.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.format.runinfo import marker_keyset, utc_now, write_json
from pipeline.store.storage import join, read_bytes

RECORD_FORMAT = 1
RECORD_NAME = "last.json"


def record_path(root: str) -> str:
    """`<out>/verify/last.json` (beside the verify parts; readers of those take `*.parquet` only)."""
    return join(root, "verify", RECORD_NAME)


def committed_state(fs: Any, root: str) -> dict[str, Any]:
    """The identity of the archive's committed videos: {"videos_done": n, "videos_digest": sha256}."""
    count, digest = marker_keyset(fs, root, "done").identity()
    return {"videos_done": count, "videos_digest": digest}


def read_record(fs: Any, root: str) -> dict[str, Any] | None:
    """The last verify's record, or None when there is none or it cannot be read as one (then no verify
    is skipped on it)."""
    try:
        record = json.loads(read_bytes(fs, record_path(root), small=True))
    except Exception:  # missing, unreadable, not JSON: as if no verify had run
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record


def write_record(
    fs: Any,
    root: str,
    *,
    verify_run_id: str,
    passed: bool,
    gops_decoded: int,
    covers: dict[str, Any] | None,
    run_id: str | None = None,
) -> None:
    """Replace the record with this verify's. `covers`: what a closing verify covered (committed state,
    settings, versions; `closing_verify.covers`), None for any other verify (never skipped on);
    `run_id`: the archive run whose closing verify it was."""
    write_json(
        fs,
        record_path(root),
        {
            "format": RECORD_FORMAT,
            "kind": "closing" if covers is not None else "verify",
            "verify_run_id": verify_run_id,
            "run_id": run_id,
            "passed": passed,
            "gops_decoded": gops_decoded,
            "finished_at": utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "covers": covers,
        },
    )
