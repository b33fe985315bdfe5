"""Cold objects: where each stands, asking S3 for readable copies, and waiting for them.

GLACIER and DEEP_ARCHIVE objects refuse every GET until a restore request has made a temporary copy
(hours: Standard tier 3–5 h for GLACIER, up to 12 h for DEEP_ARCHIVE; Bulk up to 12 h / 48 h). The
read commands (restore, export, verify) check the objects they are about to read, say in one line
which are not readable yet, and with `--wait` poll until the copies are there; `vidarc thaw` asks for
them. A HEAD tells the state (`x-amz-restore`), so nothing here reads a payload.

Read side: imports storage only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import fsspec

from pipeline.store.storage import (
    StorageError,
    describe,
    full_uri,
    head_object,
    is_local,
    retrying,
)
from pipeline.store.storage_class import ThawState, thaw_state

#: HEAD and restore requests in flight at once (S3 serves thousands per second per prefix).
REQUEST_WORKERS = 16
#: How often `--wait` asks again; a thaw takes hours. `VIDARC_THAW_POLL_S` overrides it.
POLL_SECONDS = 300.0
#: How long `--wait` waits at most: DEEP_ARCHIVE's Bulk tier promises 48 hours.
WAIT_LIMIT_SECONDS = 49 * 3600.0
#: Objects named in a one-line message before "... and N more".
NAMED = 3


class ObjectsNotReadable(StorageError):
    """Some objects a read needs are in cold storage without a readable copy (yet): one line."""

    def __init__(self, states: dict[str, ThawState], hint: str) -> None:
        self.states = states
        frozen = sorted(uri for uri, s in states.items() if s.state == "frozen")
        thawing = sorted(uri for uri, s in states.items() if s.state == "thawing")
        missing = sorted(uri for uri, s in states.items() if s.state == "missing")
        counts = ", ".join(
            f"{len(group)} {name}"
            for name, group in (("frozen", frozen), ("thawing", thawing), ("missing", missing))
            if group
        )
        named = [f"{uri} ({states[uri].state})" for uri in (frozen + thawing + missing)[:NAMED]]
        more = len(states) - len(named)
        listed = ", ".join(named) + (f" and {more} more" if more > 0 else "")
        super().__init__(f"{len(states)} archive object(s) not readable yet ({counts}): {listed}; {hint}")


def thaw_hint(out: str) -> str:
    return (
        f"`vidarc thaw {out} --days N` asks for readable copies, `vidarc thaw {out} --status` says when they "
        "are ready, and --wait waits for copies already asked for"
    )


def object_state(fs: fsspec.AbstractFileSystem, path: str) -> ThawState:
    """One object's state from one HEAD (a local file is always warm)."""
    if is_local(fs):
        return ThawState("warm" if os.path.exists(path) else "missing", None)
    head = head_object(fs, path)
    return ThawState("missing", None) if head is None else thaw_state(head)


def object_states(fs: fsspec.AbstractFileSystem, paths: Iterable[str]) -> dict[str, ThawState]:
    """path -> state, one HEAD per object, `REQUEST_WORKERS` at a time."""
    unique = sorted(set(paths))
    if is_local(fs) or len(unique) <= 1:
        return {path: object_state(fs, path) for path in unique}
    with ThreadPoolExecutor(REQUEST_WORKERS) as pool:
        return dict(zip(unique, pool.map(lambda p: object_state(fs, p), unique), strict=True))


def unreadable(fs: fsspec.AbstractFileSystem, paths: Iterable[str]) -> dict[str, ThawState]:
    """URI -> state of the objects among `paths` that a GET would refuse (frozen, thawing, missing)."""
    return {full_uri(fs, p): s for p, s in object_states(fs, paths).items() if not s.readable}


def require_readable(
    fs: fsspec.AbstractFileSystem,
    paths: Iterable[str],
    *,
    out: str,
    wait: bool = False,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return when every object of `paths` can be read; else raise ObjectsNotReadable (one line).

    `wait`: poll until the copies asked for are ready (each `POLL_SECONDS`); an object nobody asked to
    thaw would never become readable, so a frozen one is refused at once, waiting or not."""
    paths = sorted(set(paths))
    if is_local(fs) or not paths:
        return
    pending = unreadable(fs, paths)
    started = clock()
    poll = float(os.environ.get("VIDARC_THAW_POLL_S") or POLL_SECONDS)
    while pending:
        frozen_or_missing = {u: s for u, s in pending.items() if s.state != "thawing"}
        if not wait or frozen_or_missing:
            raise ObjectsNotReadable(frozen_or_missing or pending, thaw_hint(out))
        if clock() - started > WAIT_LIMIT_SECONDS:
            raise ObjectsNotReadable(pending, "waited longer than any restore tier promises; ask again")
        if progress is not None:
            progress(
                f"waiting for {len(pending)} of {len(paths)} objects to thaw (asking again in {poll:g} s)"
            )
        time.sleep(poll)
        by_uri = {full_uri(fs, p): p for p in paths}
        pending = unreadable(fs, [by_uri[u] for u in pending])


def request_thaw(fs: fsspec.AbstractFileSystem, path: str, *, days: int, tier: str) -> ThawState:
    """Ask S3 for a readable copy of one object for `days` days; returns its state after the request:
    "thawing" (asked now, or already in progress), "thawed" (a copy exists; its expiry is extended),
    "warm" (not in a cold class: nothing to thaw) or "missing"."""
    if is_local(fs):
        return object_state(fs, path)
    bucket, key, _ = fs.split_path(path)
    request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}

    def attempt() -> ThawState:
        try:
            reply = fs.call_s3("restore_object", Bucket=bucket, Key=key, RestoreRequest=request)
        except FileNotFoundError:
            return ThawState("missing", None)
        except Exception as exc:
            code = _error_code(exc)
            if code == "RestoreAlreadyInProgress":
                return ThawState("thawing", None)
            if code == "InvalidObjectState":  # not in GLACIER or DEEP_ARCHIVE: readable as it is
                return object_state(fs, path)
            raise
        status = reply.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return object_state(fs, path) if status == 200 else ThawState("thawing", None)

    try:
        return retrying(full_uri(fs, path), attempt)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(describe(exc, full_uri(fs, path))) from None


def request_thaws(
    fs: fsspec.AbstractFileSystem, paths: Iterable[str], *, days: int, tier: str
) -> dict[str, ThawState]:
    """`request_thaw` of every object, `REQUEST_WORKERS` at a time; path -> state."""
    unique = sorted(set(paths))
    with ThreadPoolExecutor(REQUEST_WORKERS) as pool:
        states = pool.map(lambda p: request_thaw(fs, p, days=days, tier=tier), unique)
        return dict(zip(unique, states, strict=True))


def _error_code(exc: BaseException) -> str | None:
    error: BaseException | None = exc
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        error = error.__cause__
    return None


def summarise(states: dict[str, ThawState]) -> dict[str, Any]:
    """Counts by state, and the earliest expiry of the thawed copies (when the first goes cold again)."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.state] = counts.get(state.state, 0) + 1
    expiries = sorted(
        (parsedate_to_datetime(s.expires), s.expires)
        for s in states.values()
        if s.expires and _is_date(s.expires)
    )
    return {"objects": len(states), "by_state": counts, "first_expiry": expiries[0][1] if expiries else None}


def _is_date(text: str) -> bool:
    try:
        parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return False
    return True
