"""Finding the videos under SRC: list every object, filter by globs, then probe each one.

A file is a video if PyAV opens it and finds a video stream, whatever its name: collections hold
`.MOV`, extension-less exports and mislabelled files. Listing is streamed page by page
(`pipeline.store.listing`: ListObjectsV2 pages on S3, one folder at a time elsewhere), so the driver never
holds the whole collection; SRC may also be an input list (`source_list`: Parquet/CSV/JSON lines of
URIs with optional caption/license/split and per-video targets). Probing reads each object's container header and packet table and runs in Ray tasks,
not in the driver. Files that are not videos are skipped and listed in the summary, not failures;
files that look like videos but cannot be read are failures (see `media.probe`).

`--include`/`--exclude` globs match the path relative to SRC; a pattern without '/' also matches the
file name alone, so `--include '*.mp4'` works at any depth. Exclusion wins over inclusion.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Iterator
from typing import Any

from codec.base import RateTarget
from pipeline.archive.source_list import SourceList, list_format
from pipeline.format.keys import list_video_key, video_key
from pipeline.read.archived_source import ParentRef
from pipeline.sources import media
from pipeline.store.listing import ListedObject, iter_pages
from pipeline.store.storage import describe, filesystem, full_uri, is_local, is_transient, retrying

HEAD_BYTES = 512


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    """One object under SRC (or one row of an input list)."""

    uri: str
    relative: str
    size: int | None  # None: an input list without sizes (the probe reads it)
    key: str
    #: caption / license / split from an input list, carried into the manifest and header.
    metadata: dict[str, str] | None = None
    #: a per-video rate target from an input list (else the job's).
    target: RateTarget | None = None
    #: a problem with the list row itself: the video fails without being read.
    error: str | None = None
    #: a migration (`archive/migration.py`): the archived video whose decode is coded again; `uri` is
    #: then the original source (lineage), which is never read for the encode.
    parent: ParentRef | None = None


@dataclasses.dataclass(frozen=True)
class ProbeOutcome:
    """A probed source: a video with its info, a skipped non-video, or a failed (broken) video."""

    entry: SourceEntry
    kind: str  # "video" | "skip" | "failed"
    info: media.VideoInfo | None = None
    reason: str | None = None
    #: The failure was the storage's (outage, throttling), not the video's: a rerun should retry it.
    transient: bool = False
    #: A migrated video's lineage columns (`VideoJob.lineage`) and the header fields it keeps from its
    #: parent's header (the original source's checksum, depth, chroma...).
    lineage: dict[str, Any] | None = None
    inherited: dict[str, Any] | None = None


@dataclasses.dataclass
class ListingStats:
    """What a listing has seen so far (updated while it streams)."""

    files: int = 0
    rows_without_uri: int = 0


def list_sources(
    src: str,
    *,
    endpoint_url: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    ignore_prefix: str | None = None,
) -> list[SourceEntry]:
    """Every object under `src`, as a list (small collections; the archive job streams `iter_sources`)."""
    return list(
        iter_sources(
            src, endpoint_url=endpoint_url, include=include, exclude=exclude, ignore_prefix=ignore_prefix
        )
    )


def iter_sources(
    src: str,
    *,
    endpoint_url: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    ignore_prefix: str | None = None,
    stats: ListingStats | None = None,
) -> Iterator[SourceEntry]:
    """Every object under `src` (a folder, prefix, single file, or input list), filtered by the globs.

    Streamed page by page (`pipeline.store.listing`): a folder or prefix comes in path order, a list in its
    row order; memory holds one page. `ignore_prefix` (the archive's OUT, when it lies inside SRC) is
    never listed, so a rerun does not try to archive its own output. The caller has checked that `src`
    exists.
    """
    fs, root = filesystem(src, endpoint_url=endpoint_url)
    include, exclude = tuple(include), tuple(exclude)
    stats = stats if stats is not None else ListingStats()
    if list_format(src) is not None and fs.isfile(root):
        yield from _list_entries(src, endpoint_url, include, exclude, stats)
        return
    if fs.isfile(root):
        pages: Iterator[list[ListedObject]] = iter([[ListedObject(root, int(fs.size(root) or 0))]])
        base = root.rsplit("/", 1)[0]
    else:
        pages = iter_pages(fs, root)
        base = root
    ignore = None
    if ignore_prefix:
        ignore_fs, ignore_root = filesystem(ignore_prefix, endpoint_url=endpoint_url)
        if type(ignore_fs) is type(fs):
            ignore = ignore_root.rstrip("/") + "/"
    for page in pages:
        for item in page:
            path = item.path
            if ignore and (path + "/").startswith(ignore):
                continue
            relative = path[len(base) :].lstrip("/") if path.startswith(base) else path.rsplit("/", 1)[-1]
            name = relative.rsplit("/", 1)[-1]
            if ".tmp-" in name or (is_local(fs) and name.startswith(".")):
                continue
            if include and not _matches(relative, include):
                continue
            if exclude and _matches(relative, exclude):
                continue
            stats.files += 1
            uri = full_uri(fs, path)
            yield SourceEntry(
                uri=uri, relative=relative, size=item.size, key=video_key(uri, item.size, relative)
            )


def _list_entries(
    src: str,
    endpoint_url: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    stats: ListingStats,
) -> Iterator[SourceEntry]:
    source_list = SourceList(src, endpoint_url=endpoint_url)
    for row in source_list.rows():
        stats.rows_without_uri = source_list.stats.rows_without_uri
        relative = row.uri.split("://", 1)[-1]
        if include and not _matches(relative, include):
            continue
        if exclude and _matches(relative, exclude):
            continue
        stats.files += 1
        yield SourceEntry(
            uri=row.uri,
            relative=relative,
            size=row.size,
            key=list_video_key(row.uri, row.size),
            metadata=row.metadata or None,
            target=row.target,
            error=row.error,
        )
    stats.rows_without_uri = source_list.stats.rows_without_uri


def _matches(relative: str, patterns: tuple[str, ...]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(relative, p) or ("/" not in p and fnmatch.fnmatchcase(name, p)) for p in patterns
    )


def probe_entry(
    entry: SourceEntry, *, endpoint_url: str | None = None, max_pixels: int | None = None
) -> ProbeOutcome:
    """Classify one object as a video (with its info), a non-video to skip, or a broken video.

    An entry from a list without sizes gets its size here (the outcome's `entry` carries it)."""
    if entry.size is None:
        try:
            fs, path = filesystem(entry.uri, endpoint_url=endpoint_url)
            entry = dataclasses.replace(entry, size=int(retrying(entry.uri, lambda: fs.size(path))))
        except FileNotFoundError:
            return ProbeOutcome(
                dataclasses.replace(entry, size=0), "failed", reason=f"{entry.uri}: no such file"
            )
        except Exception as exc:
            return ProbeOutcome(
                dataclasses.replace(entry, size=0),
                "failed",
                reason=describe(exc, entry.uri),
                transient=is_transient(exc),
            )
    if entry.size == 0:
        return ProbeOutcome(entry, "skip", reason=f"{entry.uri}: empty file")
    try:
        fs, path = filesystem(entry.uri, endpoint_url=endpoint_url)
        head = retrying(entry.uri, lambda: fs.cat_file(path, start=0, end=min(HEAD_BYTES, entry.size)))
        return ProbeOutcome(
            entry,
            "video",
            info=media.probe(
                entry.uri, endpoint_url=endpoint_url, head=head, sha256=True, max_pixels=max_pixels
            ),
        )
    except media.NotAVideo as exc:
        return ProbeOutcome(entry, "skip", reason=str(exc))
    except media.SourceError as exc:
        return ProbeOutcome(entry, "failed", reason=str(exc))
    except Exception as exc:  # storage errors while reading one object must not stop the run
        if is_transient(exc):
            return ProbeOutcome(entry, "failed", reason=describe(exc, entry.uri), transient=True)
        return ProbeOutcome(entry, "failed", reason=f"{entry.uri}: cannot read ({type(exc).__name__}: {exc})")
