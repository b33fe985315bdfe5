"""Finding one video of an archive in a bounded number of storage requests, whatever the archive holds.

An archive is written once and read for years, so a read of one video must cost what it touches, not
what the archive holds. The name of every object a restore needs follows from the video key:

    markers/done/<key>.json              a single-video object is done: `videos/<key>.vdrc`
    markers/failed/<key>.json            the video failed (its reason)
    index/keys/<key>.json                a pack member: its pack and byte range (`pipeline.format.pack`);
                                         confirmed by the pack's marker, which lists it
    index/names/<name_hash>/<key>.json   the source's URI, under the hash of its file name, so a
                                         video named by its source (URI, trailing path or file name)
                                         is one listing of a small folder away
    index/FORMAT.json                    {"version": 1, "complete": true}: every video of the archive
                                         has its entries, so a name not in the index is not archived

Entries are written at commit, before the done (or pack) marker, so every done video has them; an
entry without a marker is a video that is not (yet) done — the markers stay the truth. An archive
written before these entries existed (no `FORMAT.json`, or `complete: false`) is still read: a name the
index does not know is looked up by a projected scan of the manifest with a warning, and
`vidarc compact` writes the missing entries (`write_index_entries` for each video, then `FORMAT.json`).

Requests for a restore by key: one GET of the done marker (a pack member: + the key entry + the pack
marker); by file name: + one LIST of `index/names/<hash>/` + one GET per candidate (videos sharing the
file name). Neither grows with the archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from typing import Any

import fsspec

from pipeline.format.runinfo import (
    container_path,
    marker_path,
    pack_marker_path,
    pack_path,
    write_json,
)
from pipeline.store.storage import full_uri, join, read_bytes

INDEX_DIR = "index"
INDEX_VERSION = 1
FORMAT_NAME = "FORMAT.json"
#: `<slug>-<12 hex>` (`pipeline.format.keys.video_key`): only such names are tried as keys first
_KEY_SHAPE = re.compile(r"^[a-z0-9._-]*-[0-9a-f]{12}$")


class IndexWarning(UserWarning):
    """A lookup fell back to scanning the manifest (an archive written before the index)."""


@dataclasses.dataclass(frozen=True)
class ArchivedVideo:
    """One video of an archive: where its object is and whether it is done."""

    video_key: str
    source_uri: str | None
    archive_uri: str
    status: str  # ok | failed | incomplete
    member: tuple[int, int] | None = None  # its range in a pack object (`pipeline.format.pack`), else None
    error: str | None = None


def name_hash(name: str) -> str:
    """The index folder of a source file name (its last path component)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def key_entry_path(root: str, video_key: str) -> str:
    return join(root, INDEX_DIR, "keys", f"{video_key}.json")


def name_entry_path(root: str, source_uri: str, video_key: str) -> str:
    return join(root, INDEX_DIR, "names", name_hash(source_uri), f"{video_key}.json")


def format_path(root: str) -> str:
    return join(root, INDEX_DIR, FORMAT_NAME)


def write_index_entries(
    fs: fsspec.AbstractFileSystem,
    root: str,
    video_key: str,
    source_uri: str,
    pack: tuple[str, int, int] | None = None,
) -> None:
    """The entries of one video, written at commit before its marker. `pack`: (pack id, member
    offset, member length) of a packed video."""
    write_json(
        fs, name_entry_path(root, source_uri, video_key), {"video_key": video_key, "source_uri": source_uri}
    )
    if pack is not None:
        pack_id, offset, length = pack
        entry = {
            "video_key": video_key,
            "source_uri": source_uri,
            "pack_id": pack_id,
            "member_offset": int(offset),
            "member_length": int(length),
        }
        write_json(fs, key_entry_path(root, video_key), entry)


def write_many_index_entries(
    fs: fsspec.AbstractFileSystem,
    root: str,
    entries: list[tuple[str, str, tuple[str, int, int] | None]],
) -> None:
    """`write_index_entries` for each (video key, source URI, pack) — a pack's members — a few at a
    time (object-store latency)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(write_index_entries, fs, root, *entry) for entry in entries]:
            done.result()


def index_complete(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """True when every video of the archive has its entries (`FORMAT.json` says so)."""
    record = _get_json(fs, format_path(root))
    return bool(record and record.get("version") == INDEX_VERSION and record.get("complete"))


def mark_index(fs: fsspec.AbstractFileSystem, root: str, *, complete: bool) -> None:
    write_json(fs, format_path(root), {"version": INDEX_VERSION, "complete": complete})


def claim_new_archive(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """Called when a run starts: an archive with no manifest and no markers yet will have entries for
    every video it ever holds, so it is marked complete now. Returns whether the index is complete."""
    if index_complete(fs, root):
        return True
    if _has_any(fs, join(root, "manifest")) or _has_any(fs, join(root, "markers")):
        return False
    mark_index(fs, root, complete=True)
    return True


def _has_any(fs: fsspec.AbstractFileSystem, folder: str) -> bool:
    from pipeline.store.listing import iter_pages

    return any(page for page in iter_pages(fs, folder, ordered=False, page_size=1))


def _get_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A small JSON object, or None when it does not exist (or is not a JSON object)."""
    try:
        data = read_bytes(fs, path, small=True)
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def looks_like_key(name: str) -> bool:
    return bool(_KEY_SHAPE.match(name))


def by_key(fs: fsspec.AbstractFileSystem, root: str, video_key: str) -> ArchivedVideo | None:
    """The video `video_key` from its markers and entries (1 to 4 small reads), or None when the
    archive has no marker or entry for it."""
    done = _get_json(fs, marker_path(root, "done", video_key))
    if done is not None:
        return ArchivedVideo(
            video_key, _text(done.get("source_uri")), full_uri(fs, container_path(root, video_key)), "ok"
        )
    entry = _get_json(fs, key_entry_path(root, video_key))
    if entry is not None and isinstance(entry.get("pack_id"), str):
        pack_marker = _get_json(fs, pack_marker_path(root, entry["pack_id"]))
        members = pack_marker.get("members") if pack_marker else None
        if isinstance(members, list) and video_key in members:
            member = (int(entry["member_offset"]), int(entry["member_length"]))
            uri = full_uri(fs, pack_path(root, entry["pack_id"]))
            return ArchivedVideo(video_key, _text(entry.get("source_uri")), uri, "ok", member)
    failed = _get_json(fs, marker_path(root, "failed", video_key))
    if failed is not None:
        uri = full_uri(fs, container_path(root, video_key))
        return ArchivedVideo(
            video_key, _text(failed.get("source_uri")), uri, "failed", None, _text(failed.get("error"))
        )
    if entry is not None:  # entries written, marker not: a commit that did not finish
        return ArchivedVideo(
            video_key,
            _text(entry.get("source_uri")),
            full_uri(fs, container_path(root, video_key)),
            "incomplete",
        )
    return None


def by_name(fs: fsspec.AbstractFileSystem, root: str, name: str) -> list[tuple[str, str]]:
    """(video key, source URI) of every indexed video whose source URI is `name` or ends with it as a
    path (`a/b.mp4` matches `s3://bucket/x/a/b.mp4`): one listing of the file name's folder."""
    from pipeline.store.listing import iter_objects

    wanted = name.strip("/")
    if not wanted:
        return []
    folder = join(root, INDEX_DIR, "names", name_hash(wanted))
    found = []
    for item in iter_objects(fs, folder):
        entry = _get_json(fs, item.path)
        if entry is None:
            continue
        uri, key = _text(entry.get("source_uri")), _text(entry.get("video_key"))
        if uri is not None and key is not None and (uri == name or path_ends_with(uri, wanted)):
            found.append((key, uri))
    return sorted(found)


def path_ends_with(uri: str, tail: str) -> bool:
    parts, wanted = uri.rstrip("/").split("/"), tail.split("/")
    return parts[-len(wanted) :] == wanted


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---- the fallback: archives written before the index ---------------------------------------------------
def scan_manifest(
    out: str, name: str, *, endpoint_url: str | None = None
) -> tuple[list[dict[str, Any]], list[Any]]:
    """(rows, damaged parts): the manifest rows (video_key, source_uri, status, archive_uri, member range)
    that name `name` as a key, a source URI or a trailing path of one, found by a projected scan of the
    manifest with the match pushed into it; warns that the archive has no complete index. Raises
    `pipeline.read.manifest.PartsError` when the manifest cannot be read."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.read.manifest import ArchiveParts

    warnings.warn(
        f"{out}: written before the video index (index/{FORMAT_NAME}); finding {name!r} scans the whole "
        "manifest; run `vidarc compact` on it once to index it",
        IndexWarning,
        stacklevel=2,
    )
    wanted = name.strip("/")
    uri = ds.field("source_uri")
    predicate = (ds.field("video_key") == name) | (uri == name)
    if wanted:
        predicate = predicate | pc.ends_with(uri, "/" + wanted) | (uri == wanted)
    columns = ["video_key", "source_uri", "status", "archive_uri", "member_offset", "member_length"]
    parts = ArchiveParts(out, "manifest", endpoint_url=endpoint_url)
    rows = [row for table in parts.tables(columns, predicate) for row in table.to_pylist()]
    return rows, parts.damaged


def backfill_index(out: str, *, endpoint_url: str | None = None) -> int:
    """Index an archive written before the video index: an entry for every video its manifest names
    (one projected pass, in key order), then `FORMAT.json` complete. Returns the videos indexed. Safe
    to repeat and beside running archive jobs (which write their own entries)."""
    import pyarrow.compute as pc

    from pipeline.read.manifest import ArchiveParts
    from pipeline.read.manifest_videos import iter_videos
    from pipeline.store.storage import filesystem

    fs, root = filesystem(out, endpoint_url=endpoint_url)
    if index_complete(fs, root):
        return 0
    parts = ArchiveParts(out, "manifest", endpoint_url=endpoint_url)
    plan = parts.plan
    packs = {key: pack for pack, members in plan.pack_members.items() for key in members}

    def per_table(table: Any) -> Any:
        firsts = table.group_by("video_key", use_threads=False).aggregate(
            [("source_uri", "first"), ("member_offset", "first"), ("member_length", "first")]
        )
        firsts = firsts.filter(pc.is_valid(firsts.column("source_uri_first")))
        for row in firsts.to_pylist():
            yield row["video_key"], row

    entries = []
    count = 0
    for row in iter_videos(
        plan, ["source_uri", "member_offset", "member_length"], per_table, on_damage=parts._damage
    ):
        key = row["video_key"]
        pack = None
        if key in packs and row["member_offset_first"] is not None:
            pack = (packs[key], row["member_offset_first"], row["member_length_first"])
        entries.append((key, row["source_uri_first"], pack))
        if len(entries) >= 1000:
            write_many_index_entries(fs, root, entries)
            count += len(entries)
            entries = []
    write_many_index_entries(fs, root, entries)
    count += len(entries)
    if not parts.damaged:  # a damaged file's videos could not be indexed: the index stays incomplete
        mark_index(fs, root, complete=True)
    return count
