"""The audit's per-video Arrow state against the plain-Python reductions it replaced: `VideoRows`
(one row per video, in the order first met, "last"/"sum"/"max" per column) for keys in order, split
between batches, repeated in a batch and out of order, and `storage_costs_of` against `storage_costs`
to the last bit. Random inputs with fixed seeds; no archive needed."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.audit.class_costs import storage_costs, storage_costs_of
from pipeline.audit.prices import load_prices
from pipeline.audit.video_rows import KEY, OF_THE_ROW, VideoRows, reduce_rows

SCHEMA = pa.schema([(KEY, pa.string()), ("last", pa.string()), ("sum", pa.int64()), ("max", pa.float64())])
AGGREGATIONS = (("last", "last", OF_THE_ROW), ("sum", "sum", None), ("max", "max", None))


def _expected(batches: list[list[tuple[str, Any, int, float | None]]]) -> list[dict[str, Any]]:
    """What a dict keyed by video gives: first-met order, latest value (null counts), sum, max."""
    rows: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for key, last, total, top in batch:
            row = rows.setdefault(key, {KEY: key, "last": None, "sum": 0, "max": None})
            row["last"] = last
            row["sum"] += total
            if top is not None:
                row["max"] = top if row["max"] is None else max(row["max"], top)
    return list(rows.values())


def _table(batch: list[tuple[str, Any, int, float | None]]) -> pa.Table:
    columns = list(zip(*batch, strict=True)) if batch else [[], [], [], []]
    return pa.table([pa.array(c, t) for c, t in zip(columns, SCHEMA.types, strict=True)], schema=SCHEMA)


def _random_batches(rng: random.Random, *, in_order: bool, videos: int) -> list[list[tuple]]:
    keys = [f"v{i:06d}" for i in range(videos)]
    if not in_order:
        rng.shuffle(keys)
    rows = []
    for key in keys:  # each video a run of rows (its GOPs); sometimes met again later, out of order
        for _ in range(rng.randint(1, 4)):
            last = rng.choice([None, "a", "b", f"x{rng.randint(0, 9)}"])
            rows.append((key, last, rng.randint(0, 1000), rng.choice([None, rng.random()])))
    if not in_order:
        rows += [(rng.choice(keys), "late", 1, 2.0) for _ in range(videos // 5)]
    batches, at = [], 0
    while at < len(rows):  # batch sizes from 1 row to thousands: splits land inside videos
        size = rng.choice([1, 2, 7, 100, 5000])
        batches.append(rows[at : at + size])
        at += size
    return batches


@pytest.mark.parametrize("in_order", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_video_rows_match_a_dict_reduction(seed: int, in_order: bool, monkeypatch) -> None:
    import pipeline.audit.video_rows as video_rows

    monkeypatch.setattr(video_rows, "_MIN_ROWS_TO_REDUCE", 64)  # reduce often, as a long audit does
    rng = random.Random(seed)
    batches = _random_batches(rng, in_order=in_order, videos=3000)
    held = VideoRows(SCHEMA, AGGREGATIONS)
    for batch in batches:
        held.add(_table(batch))
    assert held.table().to_pylist() == _expected(batches)
    held.add(_table([("v000000", "again", 5, 9.0)]))  # a table read, then more rows: still right
    assert held.table().to_pylist() == _expected([*batches, [("v000000", "again", 5, 9.0)]])


def test_video_rows_empty_and_a_single_video_split_everywhere() -> None:
    held = VideoRows(SCHEMA, AGGREGATIONS)
    assert held.table().num_rows == 0 and held.table().schema == SCHEMA
    batches = [[("k", str(i), i, float(i % 3))] for i in range(50)]
    for batch in batches:
        held.add(_table(batch))
    assert held.table().to_pylist() == _expected(batches)


def test_video_rows_refuse_a_schema_that_does_not_match_the_aggregations() -> None:
    with pytest.raises(ValueError, match="schema"):
        VideoRows(pa.schema([(KEY, pa.string()), ("sum", pa.int64())]), AGGREGATIONS)


def test_reduce_rows_keeps_the_order_first_met_across_group_by_blocks() -> None:
    keys = [f"k{(i * 7919) % 50_000}" for i in range(50_000)] * 2  # more keys than one hash block
    table = pa.table({KEY: keys, "sum": [1] * len(keys)})
    reduced = reduce_rows(table, (("sum", "sum", None),))
    assert reduced.column(KEY).to_pylist() == keys[:50_000]
    assert set(reduced.column("sum").to_pylist()) == {2}


@pytest.mark.parametrize("assumed", [None, "DEEP_ARCHIVE"])
def test_storage_costs_of_columns_equal_the_per_object_loop_to_the_bit(assumed: str | None) -> None:
    prices = load_prices(storage_class=assumed)
    rng = np.random.default_rng(3)
    n = 200_000  # more than one block of objects
    recorded = rng.choice(np.array(["STANDARD", "GLACIER", "STANDARD_IA", "", "nonsense"], dtype=object), n)
    recorded = [None if i % 97 == 0 else str(value) for i, value in enumerate(recorded)]
    whole = rng.integers(0, 5_000_000, n).astype(np.float64)
    size = np.where(rng.random(n) < 0.3, whole * rng.random(n), whole)  # some pack members: a share
    looped = storage_costs(zip(recorded, size.tolist(), whole.tolist(), strict=True), prices)
    columns = storage_costs_of(pa.array(recorded, pa.string()), size, whole, prices)
    assert columns == looped
    nulls = storage_costs_of(pa.array([None] * 10, pa.string()), size[:10], whole[:10], prices)
    unrecorded = zip([None] * 10, size[:10].tolist(), whole[:10].tolist(), strict=True)
    assert nulls == storage_costs(unrecorded, prices)
