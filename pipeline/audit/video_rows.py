"""Per-video state of a streaming audit held as Arrow rows, not Python dicts.

A manifest of a million videos streams by batch after batch; what the audit keeps per video (its
source bytes, its object's size, its object and storage class) is appended as Arrow rows and reduced
to one row per video: "last" is the latest row's value, "sum" adds the rows up, and the videos keep
the order in which they were first met, as a dict's keys would. A million videos cost tens of MB
here, against hundreds as Python dicts of str and int objects.

Reductions are lazy and geometric: rows are only reduced when read, or when they have doubled since
the last reduction, so the work stays linear however the batches come (a parts archive gives many
small ones); small tables are first combined into one chunk, each table having a fixed cost. Tables
in key order (a key-sorted manifest: each batch's keys at or above the previous one's) are reduced
without a hash table of every key: only a video split between two batches has two rows to merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY = "video_key"
#: (column, hash aggregation, its options or None), e.g. ("source", "last", None).
Aggregation = tuple[str, str, pc.FunctionOptions | None]
#: "last"/"first" counting a null as a value: two columns reduced to the same row's pair.
OF_THE_ROW = pc.ScalarAggregateOptions(skip_nulls=False)

_SMALL_ROWS = 4096  # tables smaller than this wait to be combined with others into one chunk
_SMALL_TABLES = 64
_MIN_ROWS_TO_REDUCE = 1 << 20
_AT = "__first_at"


class VideoRows:
    """Rows keyed by `video_key`, appended with `add` and read one row per video with `table`."""

    def __init__(self, schema: pa.Schema, aggregations: Sequence[Aggregation]) -> None:
        if schema.names != [KEY, *(column for column, _, _ in aggregations)]:
            raise ValueError(f"VideoRows: the schema must be {KEY} and the aggregated columns, in order")
        self.schema = schema
        self.aggregations = tuple(aggregations)
        self._reduced: pa.Table | None = None  # one row per video (None: none yet; an `ls` of a million
        # videos makes two of these per video and never adds to them, and an empty table costs ~60 µs)
        self._chunks: list[pa.Table] = []  # rows added since
        self._small: list[pa.Table] = []
        self._small_rows = 0
        self._rows = 0

    def add(self, rows: pa.Table) -> None:
        """Append `rows` (the schema's columns, any number of rows per video)."""
        if not rows.num_rows:
            return
        rows = rows.select(self.schema.names).cast(self.schema)
        self._rows += rows.num_rows
        if rows.num_rows >= _SMALL_ROWS:
            self._combine_small()  # the smaller tables added before it come before it
            self._chunks.append(rows)
        else:
            self._small.append(rows)
            self._small_rows += rows.num_rows
            if len(self._small) >= _SMALL_TABLES or self._small_rows >= _SMALL_ROWS:
                self._combine_small()
        if self._rows >= max(_MIN_ROWS_TO_REDUCE, 2 * self._reduced_rows()):
            self.table()

    def table(self) -> pa.Table:
        """One row per video, in the order first met (an empty table of the schema if none)."""
        self._combine_small()
        if self._reduced is None:
            self._reduced = self.schema.empty_table()
        if self._chunks:
            reduced = _appended_in_key_order(self._reduced, self._chunks, self.aggregations)
            if reduced is None:  # keys out of order: hash them all
                reduced = reduce_rows(pa.concat_tables([self._reduced, *self._chunks]), self.aggregations)
            self._reduced, self._chunks = reduced, []
            self._rows = reduced.num_rows
        return self._reduced

    def _reduced_rows(self) -> int:
        return 0 if self._reduced is None else self._reduced.num_rows

    def _combine_small(self) -> None:
        if self._small:
            self._chunks.append(pa.concat_tables(self._small).combine_chunks())
            self._small, self._small_rows = [], 0


def reduce_rows(rows: pa.Table, aggregations: Sequence[Aggregation]) -> pa.Table:
    """One row per `video_key`, in the order first met: the group-by keeps the rows' order within a
    video (`use_threads=False`), but numbers new keys a block of rows at a time, so the videos are
    put back in the order of their first row."""
    at = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    specs = [
        (column, function, options) if options else (column, function)
        for column, function, options in aggregations
    ]
    grouped = rows.append_column(_AT, at).group_by(KEY, use_threads=False).aggregate([*specs, (_AT, "min")])
    columns = {KEY: grouped.column(KEY)}
    columns.update({column: grouped.column(f"{column}_{function}") for column, function, _ in aggregations})
    return pa.table(columns).take(pc.sort_indices(grouped.column(f"{_AT}_min"))).cast(rows.schema)


def _appended_in_key_order(
    reduced: pa.Table, tables: list[pa.Table], aggregations: Sequence[Aggregation]
) -> pa.Table | None:
    """`reduced` (one row per video) then `tables`, reduced, when no table holds a key below the keys
    before it: then a video in two of them is the greatest key of the one and the least of the next,
    merged into its first row. None when the keys fall somewhere (the caller hashes every key)."""
    held = [reduced] if reduced.num_rows else []
    high = pc.max(reduced.column(KEY)).as_py() if held else None
    for table in tables:
        keys = table.column(KEY)
        if not len(keys):
            continue
        if keys.null_count:
            return None
        bounds = pc.min_max(keys)
        low, top = bounds["min"].as_py(), bounds["max"].as_py()
        if high is not None and low < high:
            return None
        if pc.count_distinct(keys).as_py() < len(keys):  # e.g. a video under two labels of a batch
            table = reduce_rows(table, aggregations)
        if low == high:
            rest = _merge_into(held, table, low, aggregations)
            if rest is None:
                return None
            table = rest
        if table.num_rows:
            held.append(table)
        high = top
    return pa.concat_tables(held) if held else reduced


def _merge_into(
    held: list[pa.Table], table: pa.Table, key: str, aggregations: Sequence[Aggregation]
) -> pa.Table | None:
    """Merge `key`'s row of `table` into its row among `held` (the last that has it), in place, as
    slices (no copy); return `table` without it (None if `held` has no such row)."""
    at = pc.index(table.column(KEY), key).as_py()
    for i in range(len(held) - 1, -1, -1):
        found = pc.index(held[i].column(KEY), key).as_py()
        if found >= 0:
            earlier = held[i]
            both = reduce_rows(pa.concat_tables([earlier.slice(found, 1), table.slice(at, 1)]), aggregations)
            pieces = [earlier.slice(0, found), both, earlier.slice(found + 1)]
            held[i : i + 1] = [piece for piece in pieces if piece.num_rows]
            return pa.concat_tables([table.slice(0, at), table.slice(at + 1)])
    return None
