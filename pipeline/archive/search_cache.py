"""Quality searches cached next to the archive, at `OUT/quality_search/<video_key>.json`.

A search encodes a video's sample GOPs several times and measures each, which can cost more than
archiving the video once; a rerun of a failed video (`--retry-failed`) or an interrupted run should
not pay it again. A cached search is reused only when everything that decided it is unchanged: the
source object (URI and size), the codec identity (name, version, model hash, codec options), the goal
(metric, target, cap, sample count) and the sample GOPs themselves. Anything else is a cache miss.
The file also serves as the human-readable record of the search (every point it measured).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from pipeline.archive.config import QualityGoal
from pipeline.archive.plan import GopSpan
from pipeline.format.runinfo import write_json
from pipeline.store.storage import StorageError, join, read_bytes


def search_cache_path(out_root: str, video_key: str) -> str:
    return join(out_root, "quality_search", video_key + ".json")


def search_cache_key(
    job: Any,
    identity: dict[str, Any],
    codec_options: dict[str, Any],
    goal: QualityGoal | None,
    sample_spans: list[GopSpan],
) -> dict[str, Any]:
    """Everything a search result depends on, as plain JSON-comparable data."""
    return {
        "source_uri": job.source_uri,
        "source_bytes": job.source_bytes,
        "codec": {k: identity.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
        "codec_options": {k: str(v) for k, v in sorted(codec_options.items())},
        "goal": goal.as_record() if goal else None,
        "samples": [[s.first_frame, s.frame_count] for s in sample_spans],
    }


def load_search(
    fs: fsspec.AbstractFileSystem, out_root: str, video_key: str, key: dict[str, Any]
) -> dict[str, Any] | None:
    """The cached {"knob", "record"} if one exists for exactly this `key`; None otherwise (or unreadable)."""
    path = search_cache_path(out_root, video_key)
    try:
        cached = json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, StorageError):
        return None  # an unreadable or damaged cache file is a miss, and is overwritten after the new search
    if not isinstance(cached, dict) or cached.get("key") != _canonical(key):
        return None
    outcome = cached.get("outcome")
    if not isinstance(outcome, dict) or "knob" not in outcome or "record" not in outcome:
        return None
    return outcome


def save_search(
    fs: fsspec.AbstractFileSystem, out_root: str, video_key: str, key: dict[str, Any], outcome: dict[str, Any]
) -> None:
    write_json(fs, search_cache_path(out_root, video_key), {"key": _canonical(key), "outcome": outcome})


def _canonical(value: Any) -> Any:
    """JSON round trip, so a key built now compares equal to one read back from disk."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
