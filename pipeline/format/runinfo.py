"""Run records and per-video state markers: what makes a run resumable and auditable.

Layout under OUT (DESIGN.md "Archive layout", plus the markers):

    videos/<video_key>.vdrc        one archive object per source video (`container_path`)
    manifest/part-<video_key>.parquet  its manifest rows (`manifest_path`)
    runs/<run_id>/config.json      resolved configuration, tool and codec versions (no credentials)
    runs/<run_id>/summary.json     counts, bytes, rates, quality percentiles, failures, wall time
    markers/done/<video_key>.json  written LAST, after the container and its manifest part
    markers/failed/<video_key>.json  a video that failed (with the reason); --retry-failed reruns it
    markers/reference/<video_key>.json  --reference: sampled GOPs whose reference part is still to
                                   write (`pipeline.archive.reference`)

With `--pack N_MB`, many videos share one object instead (`pipeline.format.pack`):

    packs/<pack_id>.vdrc           the videos' containers back to back, plus a pack index
    manifest/pack-<pack_id>.parquet  the rows of every video in the pack
    markers/packs/<pack_id>.json   written LAST; lists the pack's videos (they are done)

A pack's part and object count only once its marker exists: a run killed before it leaves an orphan
pack (never read; `vidarc compact` removes it) and its videos are redone into another pack.

Markers live outside `runs/<run_id>/` because they describe the archive, not one run: a rerun with a
new run id must see what earlier runs finished. A video counts as done only when its done marker
exists, and the marker is written after the container and manifest part are both in place, so a run
killed at any point leaves either a finished video or one the next run redoes (overwriting the same
names, since `video_key` is deterministic).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import secrets
import sys
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from pipeline.store.keyset import KeySet
from pipeline.store.listing import iter_pages
from pipeline.store.storage import join, list_names, read_bytes, redact, write_bytes

MARKERS_DIR = "markers"
CONTAINER_SUFFIX = ".vdrc"


def new_run_id() -> str:
    """Sortable and unique enough for concurrent submissions: UTC time + 6 random hex digits."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def container_path(out_root: str, video_key: str) -> str:
    return join(out_root, "videos", video_key + CONTAINER_SUFFIX)


def manifest_path(out_root: str, video_key: str) -> str:
    return join(out_root, "manifest", f"part-{video_key}.parquet")


def pack_path(out_root: str, pack_id: str) -> str:
    """A pack object (`pipeline.format.pack`): many videos in one object."""
    return join(out_root, "packs", pack_id + CONTAINER_SUFFIX)


def pack_manifest_path(out_root: str, pack_id: str) -> str:
    """The manifest rows of every video in a pack (one part per pack)."""
    return join(out_root, "manifest", f"pack-{pack_id}.parquet")


def pack_marker_path(out_root: str, pack_id: str) -> str:
    """Written last: the pack's videos are done (the marker lists them)."""
    return join(out_root, MARKERS_DIR, "packs", f"{pack_id}.json")


def run_dir(out_root: str, run_id: str) -> str:
    return join(out_root, "runs", run_id)


def marker_path(out_root: str, state: str, video_key: str) -> str:
    if state not in ("done", "failed"):
        raise ValueError(f"marker state must be done or failed, got {state!r}")
    return join(out_root, MARKERS_DIR, state, f"{video_key}.json")


def list_markers(fs: fsspec.AbstractFileSystem, out_root: str, state: str) -> set[str]:
    """Video keys with a `state` marker (one listing, not one request per video)."""
    names = list_names(fs, join(out_root, MARKERS_DIR, state))
    return {n.rsplit("/", 1)[-1][: -len(".json")] for n in names if n.endswith(".json")}


def iter_marker_keys(fs: fsspec.AbstractFileSystem, out_root: str, state: str) -> Iterator[list[str]]:
    """Pages of video keys with a `state` marker, listed page by page (never the whole folder at once)."""
    folder = join(out_root, MARKERS_DIR, state)
    for page in iter_pages(fs, folder, ordered=False):
        keys = []
        for item in page:
            name = item.path.rsplit("/", 1)[-1]
            if name.endswith(".json") and ".tmp-" not in name:
                keys.append(name[: -len(".json")])
        if keys:
            yield keys


def marker_keyset(fs: fsspec.AbstractFileSystem, out_root: str, state: str) -> KeySet:
    """The keys with a `state` marker as a compact `KeySet` (16 bytes per video; for resuming huge runs).
    Done includes every video of a committed pack."""
    keys = KeySet()
    for page in iter_marker_keys(fs, out_root, state):
        keys.add(page)
    if state == "done":
        for marker in iter_pack_markers(fs, out_root):
            keys.add(marker["members"])
    return keys.freeze()


def iter_pack_markers(fs: fsspec.AbstractFileSystem, out_root: str) -> Iterator[dict[str, Any]]:
    """Every committed pack's marker (`pack_id`, `archive_uri`, `members`: its video keys)."""
    folder = join(out_root, MARKERS_DIR, "packs")
    for page in iter_pages(fs, folder):
        for item in page:
            name = item.path.rsplit("/", 1)[-1]
            if not name.endswith(".json") or ".tmp-" in name:
                continue
            try:
                marker = json.loads(read_bytes(fs, item.path, small=True))
            except FileNotFoundError:
                continue
            if isinstance(marker, dict) and isinstance(marker.get("members"), list):
                yield marker


def read_marker(fs: fsspec.AbstractFileSystem, out_root: str, state: str, video_key: str) -> dict[str, Any]:
    return json.loads(read_bytes(fs, marker_path(out_root, state, video_key), small=True))


def write_json(fs: fsspec.AbstractFileSystem, path: str, record: dict[str, Any]) -> None:
    """Atomic JSON write; the text passes through `redact` so no credential can be stored."""
    text = redact(json_text(record, indent=2, sort_keys=True)) + "\n"
    write_bytes(fs, path, text.encode())


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±Infinity, numpy's too) replaced by None: a number
    that is not one is no measurement (null, never a made-up value), and strict JSON parsers refuse
    the `NaN`/`Infinity` tokens `json.dumps` would write."""
    if isinstance(value, float) or getattr(getattr(value, "dtype", None), "kind", None) == "f":
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def json_text(value: Any, *, default: Callable[[Any], Any] | None = str, **options: Any) -> str:
    """`json.dumps` for everything the project writes: strict JSON (non-finite floats as null, via
    `finite`, also in what `default` returns), so `json.loads(..., parse_constant=refuse)` reads it."""
    wrapped = (lambda item: finite(default(item))) if default is not None else None

    def fast_default(item: Any) -> Any:
        if getattr(getattr(item, "dtype", None), "kind", None) == "f":  # numpy floats: numbers
            return finite(item)
        if wrapped is None:
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")
        return wrapped(item)

    try:  # most values hold no NaN: encode once, without copying the value through `finite` first
        return json.dumps(value, default=fast_default, allow_nan=False, **options)
    except (ValueError, TypeError):  # a non-finite float somewhere (or an error the slow path repeats)
        return json.dumps(finite(value), default=wrapped, allow_nan=False, **options)


def tool_versions() -> dict[str, str | None]:
    """Versions recorded with every run (imported lazily: the driver may not need torch otherwise)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("vidarc", "torch", "ray", "av", "diffusers", "pyarrow", "numpy", "constriction"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)
