"""The manifest one video at a time, in key order, in memory that does not grow with the archive.

`ls` lists millions of videos; holding every row (or every video) in memory does not scale. The files
`pipeline.read.manifest_layout` resolves are each in key order or cheap to put in it:

- per-video parts (`part-<key>.parquet`): one video each, read in key order (fetched a few at a
  time, parsed a chunk at a time, in worker processes when there are many: `manifest_layout.part_tables`);
- pack parts: one pack's videos, sorted in memory (a pack is small);
- compacted files: written sorted by key (`vidarc.sorted_by` in their metadata) and read by row group,
  whole videos at a time; an older, unsorted compacted file is read whole and sorted (bounded by the
  compacted file size).

`iter_video_tables` merges these sources by key (`heapq.merge`), so its memory is one batch per
source. Every table it yields holds whole videos only (rows of one video never split across tables),
which lets callers aggregate per video with Arrow. `after` skips keys up to and including a key
(pagination): parts by name without reading them, sorted compacted files by their row groups'
`video_key` statistics.

Rows of parts that a concurrent compaction moved while this read ran (`ManifestPlan.recover`) come
last, after the merged stream: that race is rare and costs only the order of those videos.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.read.manifest_layout import (
    PARTS_PER_TABLE,
    SOURCE_PART,
    CompactedFile,
    ManifestPlan,
    conform_to,
    parse_or_error,
    part_key,
    part_tables,
    prefetched,
)

SORTED_BY_KEY = b"vidarc.sorted_by"
Damage = Callable[[str, str], None]


def iter_videos(
    plan: ManifestPlan,
    columns: list[str],
    per_table: Callable[[pa.Table], Iterator[tuple[str, Any]]],
    *,
    on_damage: Damage,
    after: str | None = None,
) -> Iterator[Any]:
    """`per_table(table)` -> (video key, record) items in key order, over every table of whole videos
    with `columns` (+ video_key) of every manifest file, merged into one stream in key order."""
    from pipeline.format.schema import MANIFEST_SCHEMA

    wanted = list(dict.fromkeys(["video_key", *columns]))
    schema = pa.schema([MANIFEST_SCHEMA.field(n) for n in wanted])
    singles = sorted(
        (part_key(p.rsplit("/", 1)[-1]), p) for p, _ in plan.parts if part_key(p.rsplit("/", 1)[-1])
    )
    others = [p for p, _ in plan.parts if part_key(p.rsplit("/", 1)[-1]) is None]
    missing: list[str] = []
    for path, reason in plan.damaged:
        on_damage(path, reason)
    sources = [_singles(plan, singles, wanted, schema, on_damage, after, missing)]
    sources += [_whole_file(plan, p, wanted, schema, on_damage, after) for p in others]
    sources += [_compacted(plan, c, wanted, schema, on_damage, after) for c in plan.compacted]
    streams = [(item for table in source for item in per_table(table)) for source in sources]
    for _, record in heapq.merge(*streams, key=lambda item: item[0]):
        yield record
    if missing:  # parts a concurrent compaction moved: their rows, from the new compacted file
        for path, names in plan.recover(missing):
            wanted_sources = pa.array(sorted(names), type=pa.string())
            for table in _compacted_batches(plan, path, wanted, on_damage, None):
                table = table.filter(pc.is_in(table.column(SOURCE_PART), value_set=wanted_sources))
                if table.num_rows:
                    for _, record in per_table(conform_to(table, schema)):
                        yield record


def _sorted(table: pa.Table) -> pa.Table:
    """`table` in (video_key, gop_index) order. A part is usually in that order already (its writer
    commits GOPs in order), so order is checked before paying for a sort."""
    names = table.column_names
    order = ["video_key", "gop_index"] if "gop_index" in names else ["video_key"]
    if _is_ordered(table, order):
        return table
    return table.sort_by([(name, "ascending") for name in order])


def _is_ordered(table: pa.Table, order: list[str]) -> bool:
    """Whether a one-video table (a part) is already in `order`; any other table: False (sorted)."""
    if table.num_rows < 2:
        return True
    keys = table.column(order[0])
    if keys.null_count or not pc.all(pc.equal(keys, keys[0])).as_py():
        return False
    if len(order) < 2:
        return True
    gops = table.column(order[1])
    if gops.null_count:
        return False
    values = gops.to_pylist()
    return all(a <= b for a, b in itertools.pairwise(values))


def _after(table: pa.Table, after: str | None) -> pa.Table:
    return table if after is None else table.filter(pc.greater(table.column("video_key"), after))


def _singles(
    plan: ManifestPlan,
    singles: list[tuple[str, str]],
    wanted: list[str],
    schema: pa.Schema,
    on_damage: Damage,
    after: str | None,
    missing: list[str],
) -> Iterator[pa.Table]:
    """Per-video parts in key order, parsed a chunk at a time, yielded a few hundred videos at a time
    (per-table work has a fixed cost that one small part would pay alone), each part in key order."""
    paths = [path for key, path in singles if after is None or key > after]
    yield from part_tables(
        plan, paths, wanted, schema, on_damage=on_damage, missing=missing, skip_empty=True, arrange=_arranged
    )


SINGLES_PER_TABLE = PARTS_PER_TABLE


def _arranged(table: pa.Table, sizes: list[int]) -> pa.Table:
    """Consecutive parts (`sizes`: the rows of each), each in (video_key, gop_index) order, as `_sorted`
    puts one part. Parts nearly always are (one video each, GOPs written in order): that is checked for
    all of them at once, and only when one is not is each part sorted on its own."""
    if _parts_ordered(table, sizes):
        return table
    starts = itertools.accumulate(sizes, initial=0)
    return pa.concat_tables(
        [_sorted(table.slice(start, rows)) for start, rows in zip(starts, sizes, strict=False)]
    )


def _parts_ordered(table: pa.Table, sizes: list[int]) -> bool:
    """Whether each part, the rows of `sizes` in turn, is what `_is_ordered` calls ordered: within a
    part, every key equal (none null) and, when `gop_index` is read, GOPs non-decreasing (none null)."""
    rows = table.num_rows
    if rows < 2:
        return True
    within = np.ones(rows - 1, dtype=bool)  # pair (i, i + 1) lies in one part
    starts = np.cumsum(sizes[:-1], dtype=np.int64)
    within[starts[(starts > 0) & (starts < rows)] - 1] = False
    checks = [("video_key", pc.equal)]
    if "gop_index" in table.column_names:
        checks.append(("gop_index", pc.greater_equal))
    for name, compare in checks:
        column = table.column(name)
        pairs = pc.fill_null(compare(column.slice(1), column.slice(0, rows - 1)), False)
        if not np.all(pairs.to_numpy()[within]):
            return False
    return True


def _whole_file(
    plan: ManifestPlan, path: str, wanted: list[str], schema: pa.Schema, on_damage: Damage, after: str | None
) -> Iterator[pa.Table]:
    """A pack part (or an earlier layout's part): many videos, sorted in memory, one video per table."""
    for _, parsed in prefetched(plan.fs, [path], transform=parse_or_error(wanted)):
        if parsed is None:
            return
        if isinstance(parsed, Exception):
            on_damage(path, str(parsed))
            return
        parsed = plan.without_dropped(path, parsed)
        yield from _split_by_video(_sorted(conform_to(_after(parsed, after), schema)))


def _split_by_video(table: pa.Table, rows: int = 65_536) -> Iterator[pa.Table]:
    """A key-sorted table in slices of about `rows` rows that never split a video."""
    start = 0
    keys = table.column("video_key")
    while start < table.num_rows:
        stop = min(start + rows, table.num_rows)
        if stop < table.num_rows:
            last = keys[stop - 1]
            while stop < table.num_rows and keys[stop] == last:
                stop += 1
        yield table.slice(start, stop - start)
        start = stop


def is_sorted_by_key(metadata: dict[bytes, bytes] | None) -> bool:
    """Whether a compacted file's key-value metadata says its rows are sorted by (video_key,
    gop_index) (`pipeline.tools.compact` writes it). Files of earlier releases are not; a reader may rely
    on order only when this is True."""
    return (metadata or {}).get(SORTED_BY_KEY) == b"video_key,gop_index"


def _compacted(
    plan: ManifestPlan,
    item: CompactedFile,
    wanted: list[str],
    schema: pa.Schema,
    on_damage: Damage,
    after: str | None,
) -> Iterator[pa.Table]:
    drop = pa.array(sorted(item.drop_keys), type=pa.string())
    for table in _compacted_batches(plan, item.path, wanted, on_damage, after):
        if len(drop):
            table = table.filter(pc.invert(pc.is_in(table.column("video_key"), value_set=drop)))
        table = _after(table, after)
        if table.num_rows:
            yield conform_to(table, schema)


def _compacted_batches(
    plan: ManifestPlan,
    path: str,
    wanted: list[str],
    on_damage: Damage,
    after: str | None,
    batch_rows: int = 65_536,
) -> Iterator[pa.Table]:
    """A compacted file's rows as tables of whole videos in key order. A sorted file is read by row
    group (those wholly at or before `after` skipped by their statistics), carrying the last video of
    each batch into the next; an unsorted one is read whole and sorted."""
    try:
        with plan.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            names = parquet.schema_arrow.names
            present = [n for n in {*wanted, "video_key", SOURCE_PART} if n in names]
            if not is_sorted_by_key(parquet.metadata.metadata):
                table = parquet.read(columns=present, use_threads=False)
                yield from _split_by_video(_sorted(table), batch_rows)
                return
            groups = _row_groups_after(parquet, after)
            carry: pa.Table | None = None
            for batch in parquet.iter_batches(row_groups=groups, columns=present, batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                if carry is not None:
                    table = pa.concat_tables([carry, table])
                last = table.column("video_key")[-1]
                tail = pc.equal(table.column("video_key"), last)
                carry = table.filter(tail)
                head = table.filter(pc.invert(tail))
                if head.num_rows:
                    yield head
            if carry is not None and carry.num_rows:
                yield carry
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged compacted file: the videos before the damage were yielded
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        on_damage(path, f"{type(exc).__name__}: {text}"[:300])


def _row_groups_after(parquet: pq.ParquetFile, after: str | None) -> list[int]:
    """Row groups that may hold keys after `after` (all when a group has no statistics)."""
    groups = list(range(parquet.metadata.num_row_groups))
    if after is None:
        return groups
    column = parquet.schema_arrow.get_field_index("video_key")
    kept = []
    for group in groups:
        stats = parquet.metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max or stats.max > after:
            kept.append(group)
    return kept


def rows_of_videos(plan: ManifestPlan, keys: set[str], columns: list[str], *, on_damage: Damage) -> pa.Table:
    """Every row of the videos `keys`, reading only the files and row groups that can hold them: a
    video's own part by name, the packs that list it, and in key-sorted compacted files the row groups
    whose `video_key` statistics span it (an older, unsorted compacted file is scanned, projected)."""
    from pipeline.format.schema import MANIFEST_SCHEMA

    wanted = list(dict.fromkeys(["video_key", *columns]))
    schema = pa.schema([MANIFEST_SCHEMA.field(n) for n in wanted])
    value_set = pa.array(sorted(keys), type=pa.string())
    tables: list[pa.Table] = []
    by_name = {p.rsplit("/", 1)[-1]: p for p, _ in plan.parts}
    paths = [by_name[f"part-{key}.parquet"] for key in sorted(keys) if f"part-{key}.parquet" in by_name]
    for pack, members in plan.pack_members.items():
        if keys.intersection(members) and f"pack-{pack}.parquet" in by_name:
            paths.append(by_name[f"pack-{pack}.parquet"])
    paths += [p for name, p in by_name.items() if part_key(name) is None and not name.startswith("pack-")]
    for path, parsed in prefetched(plan.fs, paths, transform=parse_or_error(wanted)):
        if isinstance(parsed, Exception):
            on_damage(path, str(parsed))
        elif parsed is not None:
            parsed = plan.without_dropped(path, parsed)
            tables.append(
                conform_to(parsed.filter(pc.is_in(parsed.column("video_key"), value_set=value_set)), schema)
            )
    for item in plan.compacted:
        dropped = keys & item.drop_keys
        wanted_here = pa.array(sorted(keys - dropped), type=pa.string())
        if len(wanted_here):
            tables += [
                conform_to(t, schema)
                for t in _compacted_rows(plan, item.path, wanted, wanted_here, on_damage)
            ]
    if not tables:
        return schema.empty_table()
    return _sorted(pa.concat_tables(tables))


def _compacted_rows(
    plan: ManifestPlan, path: str, wanted: list[str], keys: pa.Array, on_damage: Damage
) -> list[pa.Table]:
    """The rows of `keys` in one compacted file (row groups pruned by statistics when it is sorted)."""
    found = []
    try:
        with plan.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            present = [n for n in wanted if n in parquet.schema_arrow.names]
            groups = list(range(parquet.metadata.num_row_groups))
            if is_sorted_by_key(parquet.metadata.metadata):
                column = parquet.schema_arrow.get_field_index("video_key")
                wanted_keys = keys.to_pylist()
                kept = []
                for group in groups:
                    stats = parquet.metadata.row_group(group).column(column).statistics
                    if (
                        stats is None
                        or not stats.has_min_max
                        or any(stats.min <= key <= stats.max for key in wanted_keys)
                    ):
                        kept.append(group)
                groups = kept
            for group in groups:
                table = parquet.read_row_group(group, columns=present, use_threads=False)
                table = table.filter(pc.is_in(table.column("video_key"), value_set=keys))
                if table.num_rows:
                    found.append(table)
    except FileNotFoundError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        on_damage(path, f"{type(exc).__name__}: {text}"[:300])
    return found
