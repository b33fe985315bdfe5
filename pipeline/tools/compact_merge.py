"""Merging small compacted files (`vidarc compact`, and the archive job's compactions): the manifest of
an archive that grows by many runs stays a few large key-sorted files, not one small file per run.

Each compaction writes new compacted files from the parts it absorbed. A long-lived archive compacted
after every run (and every `compact_every` videos during one) would collect thousands of small files,
and every whole-archive read (`ls`, `audit`, `verify`, `export --where`) would open each one. When
`MERGE_MIN_FILES` or more compacted files are under half the target size, they are merged, oldest
first, into files of about the target size: a streaming k-way merge by `(video_key, gop_index)` of
key-sorted inputs, read `MERGE_BATCH_ROWS` rows at a time (memory: a batch per input), so the output
is key-sorted too and no video's rows are split between files.

What readers see (`pipeline.read.manifest_layout`, rule 5): the merged file records the files it holds
(`merges`), and a file some readable compacted file merges is not read. The merge drops what readers
drop from its inputs (rows superseded by newer parts or by a later file's `replaces`), keeps each
row's `source_part`/`source_sha256` (so parts a crash left behind stay recognised as covered), and
carries the inputs' `replaces` of files outside the merge. The inputs are deleted only once the merged
file is older than `GRACE_SECONDS`, by a later compaction, so a reader that planned before the merge
still finds them. A crash mid-merge leaves no merged file (it is written atomically) and the inputs as
they were; an input that turns out damaged stops its merge and is named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.read.manifest_layout import COMPACTED_PREFIX, COMPACTION_KEY, CompactedFile, ManifestPlan
from pipeline.read.manifest_videos import SORTED_BY_KEY, is_sorted_by_key
from pipeline.store.storage import full_uri, join, open_atomic

#: Small compacted files it takes before they are merged (a few files cost readers little).
MERGE_MIN_FILES = 8
#: A compacted file under this share of the target size is small.
SMALL_SHARE = 0.5
#: Rows read from each input at a time.
MERGE_BATCH_ROWS = 2048
#: Merged-away files are deleted once the file that merged them is this old (readers that planned
#: with them have long finished).
GRACE_SECONDS = 3600.0


@dataclasses.dataclass
class MergeReport:
    files_merged: int = 0
    files_written: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0
    superseded_removed: int = 0
    damaged: list[str] = dataclasses.field(default_factory=list)


def merge_groups(plan: ManifestPlan, fs: Any, target_bytes: int, min_files: int) -> list[list[CompactedFile]]:
    """Groups of small key-sorted compacted files to merge, oldest first, each about `target_bytes`
    of inputs; none unless `min_files` small files exist."""
    small = [c for c in plan.compacted if c.size < target_bytes * SMALL_SHARE and _sorted(fs, c.path)]
    if len(small) < min_files:
        return []
    groups: list[list[CompactedFile]] = [[]]
    total = 0
    for item in sorted(small, key=lambda c: c.name):
        if groups[-1] and total + item.size > target_bytes:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += item.size
    return [g for g in groups if len(g) >= 2]


def _sorted(fs: Any, path: str) -> bool:
    with fs.open(path, "rb") as handle:
        return is_sorted_by_key(pq.ParquetFile(handle).metadata.metadata)


def merge_files(
    fs: Any,
    root: str,
    group: list[CompactedFile],
    schema: pa.Schema,
    *,
    row_group_rows: int,
    statistics: list[str],
    sort_keys: list[tuple[str, str]],
    report: MergeReport,
) -> None:
    """One merged file from `group` (written atomically; the inputs stay until `remove_superseded`)."""
    names = {c.name for c in group}
    carried: dict[str, list[str]] = {}
    for item in group:
        for older, keys in item.replaces.items():
            if older not in names:
                carried.setdefault(older, []).extend(keys)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = join(root, "manifest", f"{COMPACTED_PREFIX}{stamp}-{secrets.token_hex(4)}.parquet")
    rows = 0
    try:
        with open_atomic(fs, path) as handle, contextlib.ExitStack() as stack:
            inputs = [_Input(stack.enter_context(fs.open(c.path, "rb")), c, schema) for c in group]
            writer = stack.enter_context(  # closed on the way out, also when the merge stops
                pq.ParquetWriter(
                    handle,
                    schema,
                    compression="zstd",
                    write_page_checksum=True,
                    write_statistics=statistics,
                    sorting_columns=pq.SortingColumn.from_ordering(schema, sort_keys),
                )
            )
            pending: list[pa.Table] = []
            pending_rows = 0
            for table in _merged(inputs, sort_keys):
                pending.append(table)
                pending_rows += table.num_rows
                rows += table.num_rows
                if pending_rows >= row_group_rows:
                    whole = pa.concat_tables(pending).combine_chunks()
                    cut = pending_rows - pending_rows % row_group_rows
                    writer.write_table(whole.slice(0, cut), row_group_size=row_group_rows)
                    pending, pending_rows = [whole.slice(cut)], pending_rows - cut
            if pending_rows:
                writer.write_table(pa.concat_tables(pending).combine_chunks(), row_group_size=row_group_rows)
            record = {"replaces": carried, "merges": sorted(names)}
            sorted_by = ",".join(name for name, _ in sort_keys)
            writer.add_key_value_metadata({COMPACTION_KEY: json.dumps(record), SORTED_BY_KEY: sorted_by})
    except _Damaged as exc:
        report.damaged.append(str(exc))
        return
    report.files_merged += len(group)
    report.files_written.append(full_uri(fs, path))
    report.rows += rows


def remove_superseded(fs: Any, plan: ManifestPlan, grace_seconds: float, report: MergeReport) -> None:
    """Delete merged-away files whose merged file is older than `grace_seconds`."""
    now = time.time()
    for path, merged_by in sorted(plan.superseded.items()):
        try:
            if age_seconds(fs, merged_by, now) < grace_seconds:
                continue
            fs.rm_file(path)
        except FileNotFoundError:
            continue
        report.superseded_removed += 1


class _Damaged(Exception):
    """An input of a merge does not read (one line naming it)."""


class _Input:
    """One key-sorted input, read a batch at a time, less the rows readers drop from it."""

    def __init__(self, handle: Any, item: CompactedFile, schema: pa.Schema) -> None:
        self.item, self.schema = item, schema
        self.uri = item.path
        parquet = pq.ParquetFile(handle, page_checksum_verification=True)
        present = [name for name in schema.names if name in parquet.schema_arrow.names]
        self.batches: Iterator[pa.RecordBatch] = parquet.iter_batches(
            batch_size=MERGE_BATCH_ROWS, columns=present
        )
        self.held: pa.Table | None = None
        self.done = False
        self.drop = pa.array(sorted(item.drop_keys), pa.string()) if item.drop_keys else None

    def pull(self) -> None:
        """The next batch appended to what is held (`done` at the end)."""
        try:
            batch = next(self.batches, None)
        except (OSError, pa.ArrowException) as exc:
            raise _Damaged(
                f"{self.uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        if batch is None:
            self.done = True
            return
        table = _conform(pa.Table.from_batches([batch]), self.schema)
        if self.drop is not None:
            table = table.filter(pc.invert(pc.is_in(table.column("video_key"), value_set=self.drop)))
        self.held = table if self.held is None else pa.concat_tables([self.held, table])

    @property
    def rows(self) -> int:
        return 0 if self.held is None else self.held.num_rows

    def last_key(self) -> str:
        assert self.held is not None
        return self.held.column("video_key")[-1].as_py()

    def take_below(self, frontier: str | None) -> pa.Table | None:
        """Held rows whose key sorts before `frontier` (all when None); the rest stay held."""
        if self.held is None or not self.held.num_rows:
            return None
        if frontier is None:
            taken, self.held = self.held, None
            return taken
        count = int(pc.sum(pc.less(self.held.column("video_key"), frontier)).as_py() or 0)
        taken, self.held = self.held.slice(0, count), self.held.slice(count)
        return taken if count else None


def _merged(inputs: list[_Input], sort_keys: list[tuple[str, str]]) -> Iterator[pa.Table]:
    """Sorted tables, in increasing key order, of every input's rows. Rows below the frontier (the
    smallest last-held key of the inputs not yet exhausted) are final: no input can bring a smaller
    key later. A video's rows may continue into an input's next batch, so the frontier key itself
    waits for that input's next batch."""
    while True:
        for item in inputs:
            while not item.done and item.rows == 0:
                item.pull()
        live = [item for item in inputs if not item.done]
        frontier = min(item.last_key() for item in live) if live else None
        taken = [t for item in inputs if (t := item.take_below(frontier)) is not None]
        if taken:
            yield pa.concat_tables(taken).sort_by(sort_keys)
        if not live:
            return
        for item in live:
            if item.rows and item.last_key() == frontier:
                item.pull()  # its frontier video may go on: read further


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`: columns of a file written before a column existed read as null."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def age_seconds(fs: Any, path: str, now: float) -> float:
    """Seconds since `path` was last written (0 when the store says nothing)."""
    info = fs.info(path)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if stamp is None:
        return 0.0
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    return now - float(stamp)
