"""Compacting the classic reference's parts (`vidarc compact`, under `pipeline.tools.compact`'s lock).

`vidarc archive --reference x265 --reference-fraction 0.05` writes one `reference/part-<video_key>.parquet`
per video with a sampled GOP (`pipeline.archive.reference`): about a quarter of the videos, so a
million-video archive has ~235,000 of them, and every `audit` and `ls` opens each one (~3 ms of CPU a
part). Compaction merges them into `reference/compacted-<stamp>.parquet` files of about `MAX_ROWS` rows,
then deletes the parts it absorbed.

Which parts: those of videos that are done (a done marker, or a member of a committed pack) and have no
`markers/reference/<video_key>.json`. A part is written only after its video's commit, once, by the run
that committed it, or later by a run completing that marker (`References.resume`, which rewrites the
part, then deletes the marker); the marker is written before the commit and deleted after the part. So
the done keys are read *before* the markers are listed, and the parts read after: a video done then and
without a marker after has a final part. (A video redone after its done marker was deleted by hand gets
a new run id: its new part's rows sit beside the compacted ones, which no longer match any manifest row
and so are never counted: readers join reference rows to the manifest's ok rows by gop_index and run_id.)

The compacted file is in the part format (`pipeline.format.manifest_part`: page checksums, and the CRC32C
of every column's values in the key-value metadata, computed here a row group at a time), so
`ArchiveParts` reads it as a plain part, damage detection included. Rows are sorted by
(video_key, gop_index, run_id) (parts are absorbed in key order, each part sorted), in row groups of
`ROW_GROUP_ROWS`; what is held is at most a row group plus a few fetched parts.

Crash safety and readers. Every reader of reference rows goes through `pipeline.audit.costs.
_reference_rows` (audit, ls, compare), which keys rows by (video_key, gop_index, run_id) and reads the
files in name order (`pipeline.read.manifest.ArchiveParts`): compacted files (by stamp) before parts, the
last copy of a row kept. So a row in both a compacted file and a part counts once, and a part written
after the compaction wins over the compacted copy of its rows (its other rows add to them). The
compacted file is written atomically and the parts are deleted only once it is in place: a crash before
leaves everything as it was, a crash between leaves parts whose rows are also in the file (counted once),
which the next compaction absorbs again (the same rows in a newer file) and deletes. A new file's stamp
sorts after the newest compacted file listed (`compacted_name`: also where this machine's clock is behind
the one that wrote it). Compacted files are never deleted or rewritten here, so a reader that listed
`reference/` before a compaction and finds a part gone when it fetches it lists again and reads the
compacted files that appeared since (`ArchiveParts`): no row is lost during a compaction either. A
damaged compacted file is skipped and named like a damaged part (`DamagedPart`; audit and ls exit 1):
it costs its own rows, up to `MAX_ROWS`.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from crc32c import crc32c

from pipeline.format.manifest_part import (
    COLUMN_CHECKSUMS_KEY,
    WRITE_OPTIONS,
    parse_part,
    statistics_columns,
)
from pipeline.format.runinfo import iter_marker_keys
from pipeline.format.schema import REFERENCE_SCHEMA
from pipeline.read.manifest_layout import COMPACTED_PREFIX, PART_PREFIX, SUFFIX, prefetched
from pipeline.read.manifest_videos import SORTED_BY_KEY
from pipeline.store.keyset import KeySet
from pipeline.store.listing import iter_objects, iter_pages
from pipeline.store.storage import full_uri, join, open_atomic, remove_paths

#: `reference/`, and `markers/reference/` (`pipeline.archive.reference.reference_path`/`pending_path`:
#: restated here, since the tools never import the archive job).
FOLDER = "reference"
PENDING_STATE = "reference"
#: Rows per compacted file (~20,000 parts at ~5 sampled GOPs a video; ~14 MB). A reader parses a file
#: whole: measured peak RSS of reading 100,000 rows (`ArchiveParts`, 2 CPUs): in 25,000-row files 254 MB,
#: 50,000: 301 MB, one 100,000-row file 385 MB, so ~1.7 KB a row held at once; 250,000-row files would
#: add ~260 MB more for no fewer CPU-seconds (~2 s per 100,000 rows either way).
MAX_ROWS = 100_000
ROW_GROUP_ROWS = 16_384
#: Held part tables are merged this many at a time (a table per part costs ~80 KB beyond its rows).
MERGE_PARTS = 64
#: An archive run's compactions *during* the run absorb the reference parts only once this many are
#: eligible, about a file's worth (a run compacting every 10,000 videos would otherwise leave a small
#: file each time); the one at its end, and `vidarc compact`, absorb whatever is eligible.
MIN_PARTS_DURING_RUN = 20_000
SORT_KEYS = [("video_key", "ascending"), ("gop_index", "ascending"), ("run_id", "ascending")]
SORTED_BY = ",".join(name for name, _ in SORT_KEYS)


@dataclasses.dataclass
class ReferenceReport:
    """What the reference half of a compaction did (`CompactReport.reference`)."""

    parts_absorbed: int = 0
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    files_written: list[str] = dataclasses.field(default_factory=list)
    #: parts kept: their video is not done, its reference is pending, or (during a run) too few to absorb
    parts_left: int = 0

    def clause(self) -> str:
        """The reference part of `CompactReport.line()` ("" when there were no reference parts)."""
        if not (self.parts_absorbed or self.parts_left):
            return ""
        return (
            f"; reference: compacted {self.parts_absorbed} parts ({self.rows} rows) into "
            f"{len(self.files_written)} files, {self.parts_left} parts kept (videos not done or reference "
            "pending)"
        )


@dataclasses.dataclass
class Eligible:
    """The reference parts one compaction absorbs (paths in key order) and how many it leaves."""

    paths: list[str]
    kept: int
    #: a killed compaction's unfinished files (local folders: `compacted-*.tmp-*`); only a compaction
    #: writes those names, and it holds the lock, so they are dead
    temporaries: list[str] = dataclasses.field(default_factory=list)
    #: the name of the newest compacted file there is: the next one must sort after it
    latest: str | None = None


def eligible_parts(fs: Any, root: str, done: KeySet) -> Eligible:
    """The parts of done videos without a pending reference marker. `done` must have been read before
    this call: the markers are listed after it (module docstring)."""
    folder = join(root, FOLDER)
    candidates: dict[str, str] = {}  # video key -> its part
    kept = 0
    temporaries: list[str] = []
    latest: str | None = None
    for page in iter_pages(fs, folder, ordered=False):
        temporaries += [item.path for item in page if _is_compaction_temporary(item.path, folder)]
        compacted = [name for item in page if (name := _compacted_name(item.path, folder))]
        latest = max([*compacted, *([latest] if latest else [])], default=None)
        keyed = [(key, item.path) for item in page if (key := _part_key(item.path, folder)) is not None]
        if not keyed:
            continue
        hits = done.contains_many([key for key, _ in keyed]).tolist()
        for (key, path), hit in zip(keyed, hits, strict=True):
            if hit:
                candidates[key] = path
            else:
                kept += 1
    if candidates:
        for keys in iter_marker_keys(fs, root, PENDING_STATE):
            for key in keys:
                if candidates.pop(key, None) is not None:
                    kept += 1
    return Eligible([candidates[key] for key in sorted(candidates)], kept, temporaries, latest)


def has_parts(fs: Any, root: str) -> bool:
    """Whether `reference/` holds any part (one listing request on S3): for a run that wrote reference
    parts without committing a video (it completed a killed run's) to know it has something to compact."""
    folder = join(root, FOLDER)
    return any(
        _part_key(item.path, folder) is not None for item in iter_objects(fs, folder, start_after=PART_PREFIX)
    )


def _part_key(path: str, folder: str) -> str | None:
    """The video key of `<folder>/part-<key>.parquet` (not a temporary, not in a subfolder)."""
    parent, _, name = path.rpartition("/")
    if parent != folder or ".tmp-" in name or not (name.startswith(PART_PREFIX) and name.endswith(SUFFIX)):
        return None
    return name[len(PART_PREFIX) : -len(SUFFIX)]


def _is_compaction_temporary(path: str, folder: str) -> bool:
    parent, _, name = path.rpartition("/")
    return parent == folder and name.startswith(COMPACTED_PREFIX) and ".tmp-" in name


def _compacted_name(path: str, folder: str) -> str | None:
    parent, _, name = path.rpartition("/")
    if (
        parent == folder
        and name.startswith(COMPACTED_PREFIX)
        and name.endswith(SUFFIX)
        and ".tmp-" not in name
    ):
        return name
    return None


def compact_parts(
    fs: Any,
    root: str,
    eligible: Eligible,
    report: ReferenceReport,
    damaged: list[str],
    *,
    max_rows: int = MAX_ROWS,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> None:
    """Absorb `eligible`'s parts into compacted files of about `max_rows` rows, deleting each file's
    parts once it is in place. Unreadable parts are kept and named in `damaged`."""
    report.parts_left += eligible.kept
    remove_paths(fs, eligible.temporaries)
    if not eligible.paths:
        return
    stream = prefetched(fs, eligible.paths)
    latest = eligible.latest
    while True:
        name = compacted_name(after=latest)
        more = _write_file(fs, root, name, stream, report, damaged, max_rows, row_group_rows)
        latest = name
        if not more:
            break


class _Nothing(Exception):
    """No part was absorbed into the file being written: it is abandoned (never appears)."""


def _write_file(
    fs: Any,
    root: str,
    name: str,
    stream: Iterator[tuple[str, bytes | None]],
    report: ReferenceReport,
    damaged: list[str],
    max_rows: int,
    row_group_rows: int,
) -> bool:
    """One compacted file from the next parts (about `max_rows` rows), written atomically, then those
    parts deleted. False once no part is left."""
    path = join(root, FOLDER, name)
    absorbed: list[str] = []
    more = False
    try:
        with open_atomic(fs, path) as handle:
            writer: PartWriter | None = None  # made with the first rows: no file of nothing
            for part, data in stream:
                table = _absorb(fs, part, data, report, damaged)
                if table is None:
                    continue
                writer = writer or PartWriter(handle, row_group_rows)
                writer.add(table)
                absorbed.append(part)
                if writer.rows >= max_rows:
                    more = True
                    break
            if writer is None:
                raise _Nothing
            writer.close()
            report.rows += writer.rows
    except _Nothing:
        return False
    report.files_written.append(full_uri(fs, path))
    report.bytes_out += int(fs.size(path))
    report.parts_absorbed += len(absorbed)
    remove_paths(fs, absorbed)  # only now: a crash before this leaves rows twice (counted once), never none
    return more


def _absorb(
    fs: Any, part: str, data: bytes | None, report: ReferenceReport, damaged: list[str]
) -> pa.Table | None:
    """A part's rows sorted by (gop_index, run_id), or None (kept) when it is gone (removed since the
    listing), does not parse as readers parse it, or holds another video's rows."""
    if data is None:
        return None
    try:
        table = parse_part(data, REFERENCE_SCHEMA)
    except ValueError as exc:  # a damaged part stays where it is, for readers to skip and name
        damaged.append(f"{full_uri(fs, part)}: {exc}")
        report.parts_left += 1
        return None
    key = _part_key(part, part.rpartition("/")[0])
    if not pc.all(pc.fill_null(pc.equal(table.column("video_key"), key), False)).as_py():
        report.parts_left += 1  # not as the archive writes parts: left alone (the file stays key-sorted)
        return None
    report.bytes_in += len(data)
    return table.sort_by(SORT_KEYS[1:])


STAMP_FORMAT = "%Y%m%dT%H%M%S"
STAMP_CHARS = 22  # 20250102T030405678901Z


def compacted_name(after: str | None = None) -> str:
    """`compacted-<UTC stamp with microseconds>-<8 hex>.parquet`, sorting after `after` (the newest
    compacted file there is): a later file sorts later, also where this machine's clock is behind the
    one that wrote `after` (a reader keeps the last copy of a row it meets)."""
    micros = time.time_ns() // 1000
    if after is not None:
        micros = max(micros, _stamp_micros(after) + 1)
    seconds, fraction = divmod(micros, 1_000_000)
    stamp = time.strftime(STAMP_FORMAT, time.gmtime(seconds)) + f"{fraction:06d}Z"
    return f"{COMPACTED_PREFIX}{stamp}-{secrets.token_hex(4)}{SUFFIX}"


def _stamp_micros(name: str) -> int:
    """The stamp of a compacted file's name in microseconds since the epoch (0 for a name that has none,
    which then sorts as it sorts)."""
    stamp = name[len(COMPACTED_PREFIX) : len(COMPACTED_PREFIX) + STAMP_CHARS]
    try:
        seconds = calendar.timegm(time.strptime(stamp[:15], STAMP_FORMAT))
        return seconds * 1_000_000 + int(stamp[15:21])
    except ValueError:
        return 0


class PartWriter:
    """A Parquet file in the part format (`manifest_part.parquet_bytes`: zstd, page checksums, min/max
    statistics, the column checksums of `COLUMN_CHECKSUMS_KEY`), written a row group at a time from
    tables of `REFERENCE_SCHEMA` added in sorted order. The checksum of a column is the CRC32C of its
    values as one JSON list; it is continued over each row group's values, so no column is held whole."""

    def __init__(self, handle: Any, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.schema = REFERENCE_SCHEMA
        self.row_group_rows = row_group_rows
        self.writer = pq.ParquetWriter(
            handle,
            self.schema,
            **WRITE_OPTIONS,
            write_statistics=statistics_columns(self.schema),
            sorting_columns=pq.SortingColumn.from_ordering(self.schema, SORT_KEYS),
        )
        self.checksums = [_ListChecksum() for _ in self.schema.names]
        self.held: list[pa.Table] = []  # merged runs of part tables
        self.recent: list[pa.Table] = []  # part tables since the last merge
        self.held_rows = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.recent.append(table.select(self.schema.names).cast(self.schema))
        self.held_rows += table.num_rows
        self.rows += table.num_rows
        if len(self.recent) >= MERGE_PARTS:
            self.held.append(pa.concat_tables(self.recent).combine_chunks())
            self.recent = []
        if self.held_rows >= self.row_group_rows:
            self._flush(final=False)

    def close(self) -> None:
        if self.held_rows:
            self._flush(final=True)
        names = f"{crc32c(json.dumps(self.schema.names).encode()):08x}"  # as manifest_part checks them
        columns = ",".join(f"{checksum.value():08x}" for checksum in self.checksums)
        self.writer.add_key_value_metadata(
            {COLUMN_CHECKSUMS_KEY: f"{names};{columns}", SORTED_BY_KEY: SORTED_BY}
        )
        self.writer.close()

    def _flush(self, *, final: bool) -> None:
        """Write the held rows in whole row groups (all of them when `final`), keeping the rest."""
        tables = self.held + self.recent
        table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
        ready = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_rows
        chunk = table.slice(0, ready)
        self.writer.write_table(chunk, row_group_size=self.row_group_rows)
        for checksum, column in zip(self.checksums, chunk.columns, strict=True):
            checksum.update(column.to_pylist())
        rest = table.slice(ready)
        self.held, self.recent = ([rest] if rest.num_rows else []), []
        self.held_rows = rest.num_rows


class _ListChecksum:
    """CRC32C of `json.dumps(values, separators=(",", ":"), default=str, allow_nan=True)` over all the
    values given to `update`, as `manifest_part.column_checksum` computes it over the whole column."""

    def __init__(self) -> None:
        self.crc = crc32c(b"[")
        self.empty = True

    def update(self, values: Iterable[Any]) -> None:
        values = list(values)
        if not values:
            return
        text = json.dumps(values, separators=(",", ":"), default=str, allow_nan=True)[1:-1]
        self.crc = crc32c(("" if self.empty else ",").encode() + text.encode(), self.crc)
        self.empty = False

    def value(self) -> int:
        return crc32c(b"]", self.crc)
