"""Finding the videos under SRC: list every object, filter by globs, then probe each one.

A file is a video if PyAV opens it and finds a video stream, whatever its name: collections hold
`.MOV`, extension-less exports and mislabelled files. Listing is one recursive `find` (a paginated
LIST on S3); probing reads each object's container header and packet table and runs in Ray tasks,
not in the driver. Files that are not videos are skipped and listed in the summary, not failures;
files that look like videos but cannot be read are failures (see `sources.probe`).

`--include`/`--exclude` globs match the path relative to SRC; a pattern without '/' also matches the
file name alone, so `--include '*.mp4'` works at any depth. Exclusion wins over inclusion.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

from pipeline import sources
from pipeline.keys import video_key
from pipeline.storage import describe, filesystem, full_uri, is_local, is_transient, retrying

HEAD_BYTES = 512


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    """One object under SRC."""

    uri: str
    relative: str
    size: int
    key: str


@dataclasses.dataclass(frozen=True)
class ProbeOutcome:
    """A probed source: a video with its info, a skipped non-video, or a failed (broken) video."""

    entry: SourceEntry
    kind: str  # "video" | "skip" | "failed"
    info: sources.VideoInfo | None = None
    reason: str | None = None
    #: The failure was the storage's (outage, throttling), not the video's: a rerun should retry it.
    transient: bool = False


def list_sources(
    src: str,
    *,
    endpoint_url: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    ignore_prefix: str | None = None,
) -> list[SourceEntry]:
    """Every object under `src` (a folder, prefix or single file), sorted, filtered by the globs.

    `ignore_prefix` (the archive's OUT, when it lies inside SRC) is never listed, so a rerun does not
    try to archive its own output. The caller has checked that `src` exists.
    """
    fs, root = filesystem(src, endpoint_url=endpoint_url)
    include, exclude = tuple(include), tuple(exclude)
    if fs.isfile(root):
        details = {root: fs.info(root)}
        base = root.rsplit("/", 1)[0]
    else:
        details = fs.find(root, detail=True)
        base = root
    ignore = None
    if ignore_prefix:
        ignore_fs, ignore_root = filesystem(ignore_prefix, endpoint_url=endpoint_url)
        if type(ignore_fs) is type(fs):
            ignore = ignore_root.rstrip("/") + "/"
    entries = []
    for path, info in sorted(details.items()):
        if info.get("type", "file") != "file":
            continue
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
        uri = full_uri(fs, path)
        size = int(info.get("size") or 0)
        entries.append(SourceEntry(uri=uri, relative=relative, size=size, key=video_key(uri, size, relative)))
    return entries


def _matches(relative: str, patterns: tuple[str, ...]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(relative, p) or ("/" not in p and fnmatch.fnmatchcase(name, p)) for p in patterns
    )


def probe_entry(
    entry: SourceEntry, *, endpoint_url: str | None = None, max_pixels: int | None = None
) -> ProbeOutcome:
    """Classify one object as a video (with its info), a non-video to skip, or a broken video."""
    if entry.size == 0:
        return ProbeOutcome(entry, "skip", reason=f"{entry.uri}: empty file")
    try:
        fs, path = filesystem(entry.uri, endpoint_url=endpoint_url)
        head = retrying(entry.uri, lambda: fs.cat_file(path, start=0, end=min(HEAD_BYTES, entry.size)))
        return ProbeOutcome(
            entry,
            "video",
            info=sources.probe(
                entry.uri, endpoint_url=endpoint_url, head=head, sha256=True, max_pixels=max_pixels
            ),
        )
    except sources.NotAVideo as exc:
        return ProbeOutcome(entry, "skip", reason=str(exc))
    except sources.SourceError as exc:
        return ProbeOutcome(entry, "failed", reason=str(exc))
    except Exception as exc:  # storage errors while reading one object must not stop the run
        if is_transient(exc):
            return ProbeOutcome(entry, "failed", reason=describe(exc, entry.uri), transient=True)
        return ProbeOutcome(entry, "failed", reason=f"{entry.uri}: cannot read ({type(exc).__name__}: {exc})")
