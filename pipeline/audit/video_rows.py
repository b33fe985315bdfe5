"""Per-video state of a streaming audit held as Arrow rows, not Python dicts.

A manifest of a million videos streams by batch after batch; what the audit keeps per video (its
source bytes, its object's size, its object and storage class) is appended as Arrow rows and reduced
to one row per video by an ordered group-by: "last" is the latest batch's value, "sum" adds the
batches up, and the videos keep the order in which they were first met, as a dict's keys would. A
million videos cost tens of MB here, against hundreds as Python dicts of str and int objects.

Reductions are lazy and geometric: rows are only reduced when read, or when they have doubled since
the last reduction, so the work stays linear however the batches come (a parts archive gives many
small ones); small tables are first combined into one chunk, each table having a fixed cost. Rows
whose keys already rise strictly (a key-sorted manifest) are not reduced at all.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class VideoRows:
    """Rows keyed by `video_key`, appended with `add` and read one row per video with `table`."""

    def __init__(self, schema: pa.Schema, aggregations: Sequence[Aggregation]) -> None:
        if schema.names != [KEY, *(column for column, _, _ in aggregations)]:
            raise ValueError(f"VideoRows: the schema must be {KEY} and the aggregated columns, in order")
        self.schema = schema
        self.aggregations = tuple(aggregations)
        self._chunks: list[pa.Table] = []
        self._small: list[pa.Table] = []
        self._small_rows = 0
        self._rows = 0
        self._reduced_rows = 0
        self._reduced = True

    def add(self, rows: pa.Table) -> None:
        """Append `rows` (the schema's columns, any number of rows per video)."""
        if not rows.num_rows:
            return
        rows = rows.select(self.schema.names).cast(self.schema)
        self._rows += rows.num_rows
        self._reduced = False
        if rows.num_rows >= _SMALL_ROWS:
            self._chunks.append(rows)
        else:
            self._small.append(rows)
            self._small_rows += rows.num_rows
            if len(self._small) >= _SMALL_TABLES or self._small_rows >= _SMALL_ROWS:
                self._combine_small()
        if self._rows >= max(_MIN_ROWS_TO_REDUCE, 2 * self._reduced_rows):
            self.table()

    def table(self) -> pa.Table:
        """One row per video, in the order first met (an empty table of the schema if none)."""
        if not self._reduced:
            self._combine_small()
            held = pa.concat_tables(self._chunks)
            self._chunks = [held if _rising(self._chunks) else reduce_rows(held, self.aggregations)]
            self._rows = self._reduced_rows = self._chunks[0].num_rows
            self._reduced = True
        return self._chunks[0] if self._chunks else self.schema.empty_table()

    def _combine_small(self) -> None:
        if self._small:
            self._chunks.append(pa.concat_tables(self._small).combine_chunks())
            self._small, self._small_rows = [], 0


def _rising(tables: list[pa.Table]) -> bool:
    """Whether the keys rise strictly from row to row across `tables`: then each video is held once, in
    the order met, and the rows are their own reduction (a key-sorted manifest: no hash table of a
    million keys to build)."""
    last: str | None = None
    for table in tables:
        keys = table.column(KEY)
        if not len(keys):
            continue
        if keys.null_count or (last is not None and not last < keys[0].as_py()):
            return False
        if len(keys) > 1 and not pc.all(pc.less(keys[:-1], keys[1:])).as_py():
            return False
        last = keys[-1].as_py()
    return True


def reduce_rows(rows: pa.Table, aggregations: Sequence[Aggregation]) -> pa.Table:
    """One row per `video_key` in the order first met (`use_threads=False` keeps the group-by ordered)."""
    grouped = rows.group_by(KEY, use_threads=False).aggregate(
        [
            (column, function, options) if options else (column, function)
            for column, function, options in aggregations
        ]
    )
    columns = {KEY: grouped.column(KEY)}
    columns.update({column: grouped.column(f"{column}_{function}") for column, function, _ in aggregations})
    return pa.table(columns).cast(rows.schema)
