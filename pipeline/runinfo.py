"""Run records and per-video state markers: what makes a run resumable and auditable.

Layout under OUT (DESIGN.md "Archive layout", plus the markers):

    videos/<video_key>.vdrc        one archive object per source video (`container_path`)
    manifest/part-<video_key>.parquet  its manifest rows (`manifest_path`)
    runs/<run_id>/config.json      resolved configuration, tool and codec versions (no credentials)
    runs/<run_id>/summary.json     counts, bytes, rates, quality percentiles, failures, wall time
    markers/done/<video_key>.json  written LAST, after the container and its manifest part
    markers/failed/<video_key>.json  a video that failed (with the reason); --retry-failed reruns it

Markers live outside `runs/<run_id>/` because they describe the archive, not one run: a rerun with a
new run id must see what earlier runs finished. A video counts as done only when its done marker
exists, and the marker is written after the container and manifest part are both in place, so a run
killed at any point leaves either a finished video or one the next run redoes (overwriting the same
names, since `video_key` is deterministic).
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import sys
from typing import Any

import fsspec

from pipeline.storage import join, redact, write_bytes

MARKERS_DIR = "markers"
CONTAINER_SUFFIX = ".vdrc"


def new_run_id() -> str:
    """Sortable and unique enough for concurrent submissions: UTC time + 6 random hex digits."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def container_path(out_root: str, video_key: str) -> str:
    return join(out_root, "videos", video_key + CONTAINER_SUFFIX)


def manifest_path(out_root: str, video_key: str) -> str:
    return join(out_root, "manifest", f"part-{video_key}.parquet")


def run_dir(out_root: str, run_id: str) -> str:
    return join(out_root, "runs", run_id)


def marker_path(out_root: str, state: str, video_key: str) -> str:
    if state not in ("done", "failed"):
        raise ValueError(f"marker state must be done or failed, got {state!r}")
    return join(out_root, MARKERS_DIR, state, f"{video_key}.json")


def list_markers(fs: fsspec.AbstractFileSystem, out_root: str, state: str) -> set[str]:
    """Video keys with a `state` marker (one listing, not one request per video)."""
    folder = join(out_root, MARKERS_DIR, state)
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return set()
    return {n.rsplit("/", 1)[-1][: -len(".json")] for n in names if n.endswith(".json")}


def read_marker(fs: fsspec.AbstractFileSystem, out_root: str, state: str, video_key: str) -> dict[str, Any]:
    return json.loads(fs.cat_file(marker_path(out_root, state, video_key)))


def write_json(fs: fsspec.AbstractFileSystem, path: str, record: dict[str, Any]) -> None:
    """Atomic JSON write; the text passes through `redact` so no credential can be stored."""
    text = redact(json.dumps(record, indent=2, sort_keys=True, default=str)) + "\n"
    write_bytes(fs, path, text.encode())


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
