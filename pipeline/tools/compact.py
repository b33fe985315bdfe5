"""`vidarc compact OUT`: merge the per-video manifest parts of finished videos into large Parquet files.

A ten-million-video archive has ten million `manifest/part-*.parquet` objects; every `ls`, `audit` and
`verify` opens each one. Compaction writes their rows into `manifest/compacted-<stamp>.parquet` files
of about `target_bytes` (128 MB), then deletes the parts it absorbed. Readers resolve what to read with
`pipeline.read.manifest_layout`, so each row is seen exactly once before, during and after a compaction:

- Only parts of *done* videos (a done marker, or a committed pack) are absorbed: those are never
  rewritten by an archive run. Failed and in-progress videos keep their parts.
- Each compacted file is written atomically (it appears whole or not at all) and records, per row,
  which part it came from and the sha256 of that part's bytes. Parts are deleted only after it is in
  place; a crash in between leaves parts that readers recognise as covered (same name, same bytes)
  and skip, and the next compaction deletes them. A crash before leaves everything as it was.
- A part rewritten after being compacted (its video redone) wins over the compacted copy; absorbing
  it later records, in the new file's metadata, which keys it `replaces` in the older file.
- Idempotent: a second run finds nothing new to absorb (it only removes leftovers).
- One compaction at a time per archive: `manifest/_compaction.lock` (refused while a fresh one exists).
- The classic reference's parts (`reference/part-<video_key>.parquet`) of done videos whose reference
  is complete are compacted too, into `reference/compacted-<stamp>.parquet` (`compact_reference`).

Layout of a compacted file, for readers that prune by statistics (one key costs one footer and one row
group, not a scan):

- Rows are sorted by `(video_key, gop_index)` across the whole file, and a video's rows are never split
  between files; the key-value metadata says so (`vidarc.sorted_by: video_key,gop_index`, and Parquet's
  own `sorting_columns`). Files written before this layout lack the key and are unsorted: readers must
  not assume order without it (`manifest_videos.is_sorted_by_key`).
- Row groups of `ROW_GROUP_ROWS` (16,384) rows with min/max statistics on `video_key` and the
  filterable columns; being sorted, their key ranges do not overlap, so a lookup reads one. Measured on
  100,000 ten-GOP rows of bench/scale_compact.py's parts, per row group: about 6.9 KB of footer
  (statistics and offsets of ~37 columns) and 710 KB of Parquet. A 128 MB file then has a ~1.1 MB
  footer (1%) and a one-key lookup reads footer + one group, ~1.8 MB; 8,192 rows: 2.0 MB + 0.4 MB;
  32,768: 0.6 + 1.2 MB; 65,536 (before): 0.35 + 2.3 MB. 16,384 ties 32,768 on a first lookup and
  decodes half as much once the footer is cached (docs/BENCHMARKS.md).
- Sorting never holds the manifest: parts are absorbed in key order (a video's part sorts by its key,
  a pack's part by its smallest member key), so rows below the next part's first key are final and
  are written as whole row groups; what is held is at most about two row groups (and one pack part).
  A file whose held rows pass `MAX_HELD_ROW_GROUPS` row groups (packs whose key ranges interleave) is
  closed early: it stays sorted, and the next file takes the remaining parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.format.runinfo import marker_keyset, pack_path
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.manifest import parse_part, statistics_columns
from pipeline.read.manifest_layout import (
    COMPACTED_PREFIX,
    COMPACTION_KEY,
    SOURCE_PART,
    SOURCE_SHA256,
    ManifestPlan,
    pack_id,
    part_key,
    plan_manifest,
    prefetched,
    sha256_hex,
)
from pipeline.read.manifest_videos import SORTED_BY_KEY
from pipeline.store.keyset import KeySet
from pipeline.store.storage import (
    StorageError,
    check_reachable,
    filesystem,
    full_uri,
    is_local,
    join,
    open_atomic,
    redact,
    remove_paths,
)
from pipeline.tools import compact_merge, compact_reference

TARGET_BYTES = 128 * 1024 * 1024
#: Rows per row group: small enough that a key lookup decodes little, large enough that the footer
#: (statistics of every column per row group) stays small (module docstring; docs/BENCHMARKS.md).
ROW_GROUP_ROWS = 16_384
#: A file is closed early once this many row groups' rows are held, not yet final (bounds memory).
MAX_HELD_ROW_GROUPS = 4
#: Held parts are merged into one table this many at a time: a table per part costs about 80 KB of
#: schema and array objects beyond its rows (measured: 1,642 ten-row parts held as tables, +130 MB RSS
#: for 16 MB of Arrow data): the earlier 665 MB peak RSS at 10,000 parts was mostly its 65,536-row
#: groups held as ~6,500 part tables.
MERGE_PARTS = 64
LOCK_NAME = "_compaction.lock"
LOCK_STALE_SECONDS = 6 * 3600
COMPACTED_SCHEMA = pa.schema(
    [*MANIFEST_SCHEMA, pa.field(SOURCE_PART, pa.string()), pa.field(SOURCE_SHA256, pa.string())]
)
SORT_KEYS = [("video_key", "ascending"), ("gop_index", "ascending")]
#: Key-value metadata of a compacted file whose rows are sorted by these columns (the whole file).
SORTED_BY = ",".join(name for name, _ in SORT_KEYS)
#: min/max statistics: the manifest's filterable columns and `source_part`; not the random digests.
STATISTICS = [name for name in statistics_columns(COMPACTED_SCHEMA) if name != SOURCE_SHA256]


class CompactError(Exception):
    """The archive cannot be compacted (unreachable, not an archive, locked): one line, exit 2."""


class CompactionLocked(CompactError):
    """Another compaction holds `manifest/_compaction.lock` (an archive run skips its own then)."""


@dataclasses.dataclass
class CompactReport:
    files_written: list[str] = dataclasses.field(default_factory=list)
    parts_absorbed: int = 0
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    leftovers_removed: int = 0  # parts a crashed compaction had absorbed but not deleted
    parts_left: int = 0  # failed, in-progress or unreadable videos' parts, kept as they are
    orphan_packs_removed: int = 0
    damaged: list[str] = dataclasses.field(default_factory=list)
    #: the most parts whose rows were held in memory at once (waiting to be sorted into row groups)
    peak_parts_held: int = 0
    #: small compacted files merged into bigger ones (`compact_merge`), the files that made, and
    #: merged-away files deleted after their grace period
    files_merged: int = 0
    merged_files_written: list[str] = dataclasses.field(default_factory=list)
    superseded_removed: int = 0
    #: the classic reference's parts (`compact_reference`)
    reference: compact_reference.ReferenceReport = dataclasses.field(
        default_factory=compact_reference.ReferenceReport
    )
    seconds: float = 0.0

    def line(self) -> str:
        merged = (
            f"; merged {self.files_merged} small compacted files into {len(self.merged_files_written)}"
            if self.files_merged
            else ""
        )
        return (
            f"compacted {self.parts_absorbed} parts ({self.rows} rows, {self.bytes_in} B) into "
            f"{len(self.files_written)} files ({self.bytes_out} B); {self.leftovers_removed} leftover parts "
            f"removed; {self.parts_left} parts kept (videos not done){merged}{self.reference.clause()}; "
            f"{self.seconds:.1f} s"
        )


def compact(
    out: str,
    *,
    endpoint_url: str | None = None,
    target_bytes: int = TARGET_BYTES,
    orphan_hours: float = 24.0,
    force: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
    merge_min_files: int = compact_merge.MERGE_MIN_FILES,
    merged_grace_seconds: float = compact_merge.GRACE_SECONDS,
    reference_min_parts: int = 0,
    reference_max_rows: int = compact_reference.MAX_ROWS,
) -> CompactReport:
    """Compact archive `out`'s manifest (see the module docstring); returns what was done. Raises
    CompactError (CompactionLocked while another compaction runs) before touching anything. Then
    small compacted files are merged (`compact_merge`: `merge_min_files` of them at least), and files
    merged away more than `merged_grace_seconds` ago are deleted. The reference parts are compacted
    into files of about `reference_max_rows` rows when at least `reference_min_parts` are eligible."""
    started = time.perf_counter()
    try:
        fs, root = filesystem(out, endpoint_url=endpoint_url)
        check_reachable(fs, root, out, must_exist=True)
    except StorageError as exc:
        raise CompactError(str(exc)) from None
    if not fs.exists(join(root, "manifest")):
        raise CompactError(f"{out}: no manifest/ folder; is this a vidarc archive?")
    report = CompactReport()
    with _lock(fs, root, out, force):
        plan = plan_manifest(fs, root)
        report.damaged += [f"{full_uri(fs, path)}: {reason}" for path, reason in plan.damaged]
        remove_paths(fs, plan.covered)
        report.leftovers_removed = len(plan.covered)
        done = marker_keyset(fs, root, "done")
        units, kept = _eligible(plan, done)
        references = compact_reference.eligible_parts(fs, root, done)  # lists its markers after `done`
        del done
        report.parts_left = kept
        replaces = _replaced_keys(fs, plan, units)
        stream = _stream(fs, units)
        while _write_file(fs, root, plan, stream, replaces, report, target_bytes, row_group_rows):
            pass
        if len(references.paths) < reference_min_parts:  # too few for a file of their own yet
            references = dataclasses.replace(
                references, paths=[], kept=references.kept + len(references.paths)
            )
        compact_reference.compact_parts(
            fs, root, references, report.reference, report.damaged, max_rows=reference_max_rows
        )
        report.orphan_packs_removed = _remove_orphans(fs, root, plan, orphan_hours)
        _merge(fs, root, report, target_bytes, row_group_rows, merge_min_files, merged_grace_seconds)
    report.seconds = time.perf_counter() - started
    return report


def _merge(
    fs: Any,
    root: str,
    report: CompactReport,
    target_bytes: int,
    row_group_rows: int,
    min_files: int,
    grace_seconds: float,
) -> None:
    """Delete merged-away files past their grace, then merge small compacted files (a fresh plan:
    what this compaction wrote counts)."""
    merged = compact_merge.MergeReport()
    plan = plan_manifest(fs, root)
    compact_merge.remove_superseded(fs, plan, grace_seconds, merged)
    for group in compact_merge.merge_groups(plan, fs, target_bytes, min_files):
        compact_merge.merge_files(
            fs, root, group, COMPACTED_SCHEMA, row_group_rows=row_group_rows, statistics=STATISTICS,
            sort_keys=SORT_KEYS, report=merged,
        )  # fmt: skip
    report.files_merged += merged.files_merged
    report.merged_files_written += merged.files_written
    report.superseded_removed += merged.superseded_removed
    report.damaged += merged.damaged


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One manifest file to absorb: a done video's part, or a committed pack's part."""

    first_key: str  # no row in it sorts before this key: units are absorbed in this order
    path: str
    keys: tuple[str, ...]


def _eligible(plan: ManifestPlan, done: KeySet) -> tuple[list[_Unit], int]:
    """The parts to absorb (done videos' parts and committed packs), in key order, and how many
    parts are kept as they are."""
    singles = [(path, part_key(path.rsplit("/", 1)[-1])) for path, _ in plan.parts]
    keys = [key for _, key in singles if key is not None]
    hits = done.contains_many(keys).tolist() if keys else []
    is_done = {key for key, hit in zip(keys, hits, strict=True) if hit}
    units: list[_Unit] = []
    kept = 0
    for path, key in singles:
        name = path.rsplit("/", 1)[-1]
        if key is not None:
            if key in is_done:
                units.append(_Unit(key, path, (key,)))
            else:
                kept += 1
        elif pack_id(name) in plan.pack_members:
            members = tuple(plan.pack_members[pack_id(name)])
            units.append(_Unit(min(members, default=""), path, members))
        else:
            kept += 1  # a file of an earlier layout: left alone
    units.sort(key=lambda unit: (unit.first_key, unit.path))
    return units, kept


def _replaced_keys(fs: Any, plan: ManifestPlan, units: list[_Unit]) -> dict[str, dict[str, list[str]]]:
    """video key -> {older compacted file: [key]} for the keys about to be absorbed that older
    compacted files hold. Reads only their `video_key` column, and of key-sorted files only the row
    groups whose key range can hold one of them."""
    if not plan.compacted or not units:
        return {}
    ordered = sorted({key for unit in units for key in unit.keys})
    wanted = pa.array(ordered, pa.string())
    found: dict[str, dict[str, list[str]]] = {}
    for compacted in plan.compacted:
        with fs.open(compacted.path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            groups = _row_groups_in_range(parquet, ordered)
            if not groups:
                continue
            for batch in parquet.iter_batches(columns=["video_key"], row_groups=groups, batch_size=65536):
                column = batch.column(0)
                for key in pc.unique(column.filter(pc.is_in(column, value_set=wanted))).to_pylist():
                    found.setdefault(key, {}).setdefault(compacted.name, [key])
    return found


def _row_groups_in_range(parquet: pq.ParquetFile, ordered: list[str]) -> list[int]:
    """Row groups of `parquet` whose video_key min/max range holds one of `ordered` (sorted); every
    row group when statistics are missing."""
    import bisect

    metadata = parquet.metadata
    column = parquet.schema_arrow.get_field_index("video_key")
    groups = []
    for index in range(metadata.num_row_groups):
        stats = metadata.row_group(index).column(column).statistics if column >= 0 else None
        if stats is None or not stats.has_min_max:
            groups.append(index)
            continue
        first = bisect.bisect_left(ordered, stats.min)
        if first < len(ordered) and ordered[first] <= stats.max:
            groups.append(index)
    return groups


def _stream(fs: Any, units: list[_Unit]) -> Iterator[tuple[_Unit, bytes | None, str | None]]:
    """(unit, its bytes or None when gone, the next unit's first key or None at the end), fetched a
    few ahead (`prefetched`: never all parts in memory)."""
    fetched = prefetched(fs, [unit.path for unit in units])
    for index, (unit, (_, data)) in enumerate(zip(units, fetched, strict=True)):
        following = units[index + 1].first_key if index + 1 < len(units) else None
        yield unit, data, following


class _HeldRows:
    """Absorbed rows waiting for their row group. Units arrive in first-key order, so the rows whose
    key sorts before the next unit's first key are final: `ready` sorts what is held and hands those
    out in whole row groups, keeping the rest (less than a row group, plus rows of a pack part whose
    keys reach further)."""

    def __init__(self, row_group_rows: int) -> None:
        self.row_group_rows = row_group_rows
        self.tables: list[pa.Table] = []  # merged runs of parts (and the rest of the last `ready`)
        self.recent: list[pa.Table] = []  # parts added since the last merge, one table each
        self.rows = 0
        self.nbytes = 0  # of the Arrow tables: more than their Parquet will take
        self.parts = 0  # parts with rows held here
        self._settled = 0  # rows held after the last `ready` (not ready then)

    def add(self, table: pa.Table) -> None:
        self.recent.append(table)
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        self.parts += 1
        if len(self.recent) >= MERGE_PARTS:  # one part's table costs ~80 KB beyond its rows' bytes
            self.tables.append(pa.concat_tables(self.recent).combine_chunks())
            self.recent = []

    def ready(self, below: str | None) -> pa.Table | None:
        """Whole row groups of sorted rows with keys before `below` (all rows when None), or None.
        Sorts only once a row group's worth arrived since the last call (sorting is per row group,
        not per part)."""
        if below is not None and self.rows - self._settled < self.row_group_rows:
            return None
        table = self._sorted()
        final = table.num_rows
        if below is not None:
            final = int(pc.sum(pc.less(table.column("video_key"), below)).as_py() or 0)
            final -= final % self.row_group_rows
        rest = table.slice(final)
        self.tables, self.recent = ([rest] if rest.num_rows else []), []
        self.rows = self._settled = rest.num_rows
        self.nbytes = rest.nbytes
        self.parts = _count_distinct(rest.column(SOURCE_PART)) if rest.num_rows else 0
        return table.slice(0, final) if final else None

    def _sorted(self) -> pa.Table:
        tables = self.tables + self.recent
        table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
        return table.sort_by(SORT_KEYS)


def _count_distinct(column: pa.ChunkedArray) -> int:
    return int(pc.count_distinct(column).as_py())


def _write_file(
    fs: Any,
    root: str,
    plan: ManifestPlan,
    stream: Iterator[tuple[_Unit, bytes | None, str | None]],
    replaces: dict[str, dict[str, list[str]]],
    report: CompactReport,
    target_bytes: int,
    row_group_rows: int,
) -> bool:
    """One key-sorted compacted file of about `target_bytes` from the next parts, written atomically;
    then those parts are deleted. False once no part is left."""
    path = join(root, "manifest", compacted_name())
    absorbed: list[str] = []
    held = _HeldRows(row_group_rows)
    metadata: dict[str, list[str]] = {}
    rows = 0
    exhausted = True
    with open_atomic(fs, path) as handle:
        writer = compacted_writer(handle)
        for unit, data, following in stream:
            if data is None:  # replaced since the listing (a failed video redone): not ours
                continue
            table = _absorb(fs, plan, unit.path, data, report)
            if table is None:
                continue
            for key in unit.keys:
                for older, listed in replaces.get(key, {}).items():
                    metadata.setdefault(older, []).extend(listed)
            held.add(table)
            report.peak_parts_held = max(report.peak_parts_held, held.parts)
            rows += table.num_rows
            absorbed.append(unit.path)
            report.bytes_in += len(data)
            ready = held.ready(following)
            if ready is not None:
                writer.write_table(ready, row_group_size=row_group_rows)
            if following is not None and (
                handle.tell() + held.nbytes >= target_bytes
                or held.rows >= MAX_HELD_ROW_GROUPS * row_group_rows
            ):
                exhausted = False  # the rest goes to the next file (this one stays sorted)
                break
        rest = held.ready(None) if held.rows else None
        if rest is not None:
            writer.write_table(rest, row_group_size=row_group_rows)
        writer.add_key_value_metadata(compacted_metadata(metadata))
        writer.close()
    if not absorbed:
        remove_paths(fs, [path])
        return not exhausted
    report.files_written.append(full_uri(fs, path))
    report.bytes_out += int(fs.size(path))
    report.parts_absorbed += len(absorbed)
    report.rows += rows
    remove_paths(fs, absorbed)  # only now: a crash before this leaves covered parts, never lost rows
    return not exhausted


def compacted_name(stamp: str | None = None, token: str | None = None) -> str:
    """A compacted file's name: `compacted-<UTC stamp>-<8 hex>.parquet` (now and random by default)."""
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{COMPACTED_PREFIX}{stamp}-{token or secrets.token_hex(4)}.parquet"


def compacted_writer(handle: Any) -> pq.ParquetWriter:
    """The Parquet writer of every compacted file `compact` writes: `COMPACTED_SCHEMA`, zstd, page
    checksums, min/max statistics on `STATISTICS`, Parquet's `sorting_columns` = `SORT_KEYS`."""
    return pq.ParquetWriter(
        handle,
        COMPACTED_SCHEMA,
        compression="zstd",
        write_page_checksum=True,
        write_statistics=STATISTICS,
        sorting_columns=pq.SortingColumn.from_ordering(COMPACTED_SCHEMA, SORT_KEYS),
    )


def compacted_metadata(replaces: dict[str, list[str]] | None = None) -> dict[str, str]:
    """A compacted file's key-value metadata: `vidarc.compaction` ({"replaces": older compacted file
    name -> keys this file supersedes there}) and `vidarc.sorted_by` (its rows are key-sorted)."""
    return {COMPACTION_KEY: json.dumps({"replaces": replaces or {}}), SORTED_BY_KEY: SORTED_BY}


def write_compacted_table(
    fs: Any, root: str, table: pa.Table, *, name: str | None = None, row_group_rows: int = ROW_GROUP_ROWS
) -> str:
    """Write `table` (rows of `COMPACTED_SCHEMA`: the manifest's columns plus `source_part` and
    `source_sha256`, every row of a video in this table) as one compacted file `manifest/<name>` of
    archive `root`, exactly as `compact` lays one out: sorted by `SORT_KEYS` (sorted here), row groups
    of `row_group_rows` with statistics, `compacted_metadata()` (replacing nothing), written atomically
    (`open_atomic`: the file appears whole or not at all). Returns its path. Nothing else changes: no
    part is read or deleted, no lock taken; the caller makes sure no other file holds these videos.

    For writers that make the rows themselves rather than absorbing parts (the synthetic archives of
    bench/scale_reads.py, `bench/synthetic_archive.build_compacted_direct`); `compact` uses the same
    `compacted_writer` and `compacted_metadata`."""
    path = join(root, "manifest", name or compacted_name())
    table = table.select(COMPACTED_SCHEMA.names).cast(COMPACTED_SCHEMA).sort_by(SORT_KEYS)
    with open_atomic(fs, path) as handle:
        writer = compacted_writer(handle)
        if table.num_rows:
            writer.write_table(table, row_group_size=row_group_rows)
        writer.add_key_value_metadata(compacted_metadata())
        writer.close()
    return path


def _absorb(
    fs: Any, plan: ManifestPlan, part_path: str, data: bytes, report: CompactReport
) -> pa.Table | None:
    """A part's rows in the compacted schema (with where they came from), or None if unreadable.
    Checked as readers check it (`manifest.parse_part`: page and column checksums), so damage that
    readers would name is never absorbed (and its part deleted) as if it were good rows."""
    try:
        table = parse_part(data, MANIFEST_SCHEMA)
    except ValueError as exc:  # a damaged part stays where it is, for readers to name
        report.damaged.append(f"{full_uri(fs, part_path)}: {exc}")
        return None
    drop = plan.part_drops.get(part_path)
    if drop:  # rows readers leave out (a video packed twice counts in its latest pack)
        keep = pc.invert(pc.is_in(table.column("video_key"), value_set=pa.array(sorted(drop))))
        table = table.filter(keep)
    source = part_path.rsplit("/", 1)[-1]
    table = table.append_column(SOURCE_PART, pa.array([source] * table.num_rows, pa.string()))
    return table.append_column(SOURCE_SHA256, pa.array([sha256_hex(data)] * table.num_rows, pa.string()))


def _remove_orphans(fs: Any, root: str, plan: ManifestPlan, hours: float) -> int:
    """Pack parts and objects of pack commits that never wrote their marker, older than `hours`."""
    removed = 0
    now = time.time()
    for part in plan.orphan_packs:
        ident = pack_id(part.rsplit("/", 1)[-1])
        if ident is None or compact_merge.age_seconds(fs, part, now) < hours * 3600:
            continue
        for path in (part, pack_path(root, ident)):
            if fs.exists(path):
                fs.rm_file(path)
        removed += 1
    return removed


def lock_holder(fs: Any, root: str) -> dict[str, Any] | None:
    """The fresh compaction lock's record (host, pid, started, token, age), or None when there is no
    lock or it is stale: older than `LOCK_STALE_SECONDS`, or its process on this machine is gone (its
    compaction died). A lock that does not parse (being written, or its writer died mid-write) is aged
    by its object's time."""
    path = join(root, "manifest", LOCK_NAME)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        held = json.loads(raw)
        age = time.time() - float(held["started"])
    except (ValueError, TypeError, KeyError):
        try:
            held, age = {}, compact_merge.age_seconds(fs, path, time.time())
        except FileNotFoundError:
            return None
    if age >= LOCK_STALE_SECONDS or _died_here(held):
        return None
    return {**held, "age": age}


def _died_here(held: dict[str, Any]) -> bool:
    """Whether the lock's compaction ran on this machine in a process that is gone (a killed run):
    its lock need not wait out `LOCK_STALE_SECONDS`."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


class _lock:
    """`manifest/_compaction.lock` for the duration of a compaction (stale after 6 h, or `force`).

    Created exclusively (O_EXCL on a local folder, `If-None-Match: *` on S3), then read back: of two
    compactions starting at once, one gets the lock and the other is refused. Two at once would both
    absorb the same parts into two files, and readers would count those rows twice."""

    def __init__(self, fs: Any, root: str, out: str, force: bool) -> None:
        self.fs, self.root, self.out, self.force = fs, root, out, force
        self.path = join(root, "manifest", LOCK_NAME)
        self.token = secrets.token_hex(8)

    def __enter__(self) -> _lock:
        if self.fs.exists(self.path):
            held = lock_holder(self.fs, self.root)
            if held is not None and not self.force:
                raise self._refused(held)
            with contextlib.suppress(FileNotFoundError):  # stale (its compaction died), or forced
                self.fs.rm_file(self.path)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "token": self.token,
        }
        try:
            _create_exclusive(self.fs, self.path, json.dumps(record).encode())
        except FileExistsError:
            raise self._refused(lock_holder(self.fs, self.root) or {}) from None
        held = lock_holder(self.fs, self.root) or {}
        if held.get("token") != self.token:  # a store that ignored the condition: another write won
            raise self._refused(held)
        return self

    def _refused(self, held: dict[str, Any]) -> CompactionLocked:
        return CompactionLocked(
            f"{self.out}: another compaction holds manifest/{LOCK_NAME} (started "
            f"{float(held.get('age', 0)):.0f} s ago on {redact(str(held.get('host')))}); wait for it, "
            "or pass --force if it died"
        )

    def __exit__(self, *exc: object) -> None:
        try:
            if json.loads(self.fs.cat_file(self.path)).get("token") == self.token:
                self.fs.rm_file(self.path)
        except (FileNotFoundError, ValueError):
            pass


def _create_exclusive(fs: Any, path: str, data: bytes) -> None:
    """Write `path` only if it does not exist (FileExistsError otherwise), atomically where the store
    can: O_EXCL locally, a conditional PUT on S3; other stores check first (not atomic)."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return
    fs.pipe_file(path, data, mode="create")
