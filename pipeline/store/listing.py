"""Listing a prefix page by page: memory bounded by one page (or one folder), never the whole listing.

`fs.find` returns every key under a prefix at once (and s3fs caches it too): ten million sources or
markers are gigabytes of dicts. Here a listing is a stream of pages:
- S3 (s3fs): `ListObjectsV2` pages of `PAGE_SIZE` keys, in S3's order (UTF-8 binary, i.e. sorted);
- local folders: one folder at a time (`os.scandir`), in the order of full paths unless `ordered=False`
  (then in directory order, holding nothing);
- any other fsspec filesystem: `fs.ls` one folder at a time, in the same order.
A caller that needs "every key" (the done-set, the shard filter) consumes the pages as they come.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.asyn import sync

from pipeline.store.storage import is_local, is_s3

PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class ListedObject:
    path: str  # as the filesystem names it (no protocol)
    size: int
    #: The object's S3 storage class as the listing reports it (None on a local folder): a listing
    #: knows which objects are cold at no extra request.
    storage_class: str | None = None


def iter_pages(
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    ordered: bool = True,
    page_size: int = PAGE_SIZE,
    start_after: str | None = None,
) -> Iterator[list[ListedObject]]:
    """Every file under `root` (recursively), as pages of at most about `page_size` objects.

    A missing root gives no pages. `ordered=False` lets a local listing skip sorting (for set builds).
    `start_after` (a path relative to `root`) is a hint for an ordered listing: objects of a flat
    folder at or before it are not listed (S3's StartAfter: paging a listing from its middle costs no
    requests for what comes before). Callers still filter.
    """
    if is_local(fs):
        yield from _local_pages(root, ordered, page_size, start_after if ordered else None)
    elif is_s3(fs):
        yield from _s3_pages(fs, root, page_size, start_after)
    else:
        yield from _walk_pages(fs, root, page_size)


def iter_objects(
    fs: fsspec.AbstractFileSystem, root: str, *, ordered: bool = True, start_after: str | None = None
) -> Iterator[ListedObject]:
    """`iter_pages`, one object at a time."""
    for page in iter_pages(fs, root, ordered=ordered, start_after=start_after):
        yield from page


def _local_pages(
    root: str, ordered: bool, page_size: int, start_after: str | None
) -> Iterator[list[ListedObject]]:
    if ordered:  # already in order: `_tree_pages` need not sort (and hold) the entries

        def sorted_folder(path: str) -> Iterator[tuple[str, str, bool, int]]:
            return _local_sorted_folder(path, start_after if path == root else None)

        yield from _tree_pages(root, sorted_folder, False, page_size)
        return

    def folder(path: str) -> Iterator[tuple[str, str, bool, int]]:
        try:
            scan = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        with scan:
            for entry in scan:
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                    if not is_dir and not entry.is_file(follow_symlinks=True):
                        continue
                    size = 0 if is_dir else entry.stat(follow_symlinks=True).st_size
                except FileNotFoundError:  # removed while listing
                    continue
                yield entry.name, entry.path, is_dir, size

    yield from _tree_pages(root, folder, ordered, page_size)


def _local_sorted_folder(path: str, start_after: str | None = None) -> Iterator[tuple[str, str, bool, int]]:
    """A local folder's entries in the order of full paths. Sorting a folder means seeing all of it:
    what is held is its sorted names only (spilled to disk past `SPILL_NAMES`), and each file's size
    is read as it is reached."""
    for name in _sorted_names(path, start_after):
        child = os.path.join(path, name.rstrip("/"))
        if name.endswith("/"):
            yield name, child, True, 0
            continue
        try:
            size = os.stat(child).st_size
        except FileNotFoundError:  # removed while listing
            continue
        yield name, child, False, size


#: Past this many names, a folder's sorted names are spilled to temporary files in sorted runs and
#: merged back: a folder of ten million markers then holds a few runs' buffers, not a gigabyte of names.
SPILL_NAMES = 100_000


def _sorted_names(path: str, start_after: str | None = None) -> Iterator[str]:
    """A folder's files and folders (these with a trailing "/"), sorted; nothing for a missing folder.
    Files at or before `start_after` are left out (folders are kept: their contents may follow it)."""
    try:
        scan = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    with contextlib.ExitStack() as spilled:
        runs: list[Iterator[str]] = []
        names: list[str] = []
        with scan:
            for entry in scan:
                try:
                    if entry.is_dir(follow_symlinks=True):
                        names.append(entry.name + "/")
                    elif entry.is_file(follow_symlinks=True) and (
                        start_after is None or entry.name > start_after
                    ):
                        names.append(entry.name)
                except FileNotFoundError:  # removed while listing
                    continue
                if len(names) >= SPILL_NAMES:
                    runs.append(_spilled_run(spilled.enter_context(tempfile.TemporaryFile()), names))
                    names = []
        names.sort()
        yield from heapq.merge(names, *runs) if runs else names


def _spilled_run(file: IO[bytes], names: list[str]) -> Iterator[str]:
    """Write `names`, sorted, to `file` (NUL-separated: no file name holds a NUL); read them back lazily."""
    names.sort()
    file.write(("\0".join(names) + "\0").encode(sys.getfilesystemencoding(), "surrogateescape"))
    file.seek(0)

    def read_back() -> Iterator[str]:
        tail = b""
        while block := file.read(1 << 20):
            *complete, tail = (tail + block).split(b"\0")
            yield from map(os.fsdecode, complete)

    return read_back()


def _tree_pages(root: str, list_folder, ordered: bool, page_size: int) -> Iterator[list[ListedObject]]:
    """Depth first over folders; with `ordered`, in the order of full paths (a folder's name sorts as
    `name/`), which is the order S3 lists keys in."""

    def entries(path: str) -> Iterator[tuple[str, str, bool, int]]:
        items = list_folder(path)
        if ordered:
            items = iter(sorted(items, key=lambda item: item[0] + ("/" if item[2] else "")))
        return items

    page: list[ListedObject] = []
    stack = [entries(root)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        _name, path, is_dir, size = item
        if is_dir:
            stack.append(entries(path))
            continue
        page.append(ListedObject(path, size))
        if len(page) >= page_size:
            yield page
            page = []
    if page:
        yield page


def _s3_pages(
    fs: fsspec.AbstractFileSystem, root: str, page_size: int, start_after: str | None
) -> Iterator[list[ListedObject]]:
    bucket, _, key = root.strip("/").partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    request: dict = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if start_after:
        request["StartAfter"] = prefix + start_after
    while True:
        reply = sync(fs.loop, fs._call_s3, "list_objects_v2", **request)
        yield [
            ListedObject(f"{bucket}/{item['Key']}", int(item.get("Size") or 0), item.get("StorageClass"))
            for item in reply.get("Contents", ())
            if not item["Key"].endswith("/")  # folder placeholders
        ]
        token = reply.get("NextContinuationToken")
        if not reply.get("IsTruncated") or not token:
            return
        request["ContinuationToken"] = token


def _walk_pages(fs: fsspec.AbstractFileSystem, root: str, page_size: int) -> Iterator[list[ListedObject]]:
    def folder(path: str) -> Iterator[tuple[str, str, bool, int]]:
        try:
            infos = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return
        for info in infos:
            name = info["name"].rstrip("/")
            if name == path.rstrip("/"):
                continue
            is_dir = info.get("type") == "directory"
            yield name.rsplit("/", 1)[-1], name, is_dir, int(info.get("size") or 0)

    yield from _tree_pages(root, folder, True, page_size)
