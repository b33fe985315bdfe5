"""The seeded sample `verify` draws from a large archive: one vectorised hash per row, a sample that
does not depend on how the rows are batched, and the rows a count or a fraction names."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.tools.verify_sample import SeededSample, row_hashes


def _rows(n: int, seed: int = 3) -> pa.Table:
    rng = random.Random(seed)
    alphabet = "abcxyz_-.0123456789éü日本"
    keys, gops = [], []
    for i in range(n):
        if i % 3 == 0:  # three GOPs a video, one after the other
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) + f"-{i}"
        keys.append(key)
        gops.append(None if i % 97 == 0 else i % 3)
    return pa.table(
        {
            "video_key": pa.array(keys, pa.string()),
            "gop_index": pa.array(gops, pa.int32()),
            "payload": pa.array(range(n), pa.int64()),
        }
    )


def _sample(table: pa.Table, cuts: list[int], **options) -> list[tuple[str, int | None]]:
    sample = SeededSample(options.get("fraction"), options.get("count"), options.get("seed", 0), 50)
    for start, end in zip([0, *cuts], [*cuts, table.num_rows], strict=True):
        sample.offer(table.slice(start, end - start))
    return [(r["video_key"], r["gop_index"]) for r in sample.rows()]


def test_a_rows_hash_does_not_depend_on_its_batch_or_string_layout() -> None:
    table = _rows(3000)
    whole = row_hashes(table.column("video_key"), table.column("gop_index"), seed=5)
    assert len(set(whole.tolist())) == table.num_rows  # every (key, GOP) apart
    part = table.slice(1234, 500)
    assert np.array_equal(row_hashes(part.column("video_key"), part.column("gop_index"), 5), whole[1234:1734])
    large = part.column("video_key").cast(pa.large_string())
    chunked = pa.chunked_array(
        [part.column("gop_index").chunk(0).slice(0, 200), part.column("gop_index").chunk(0).slice(200)]
    )
    assert np.array_equal(row_hashes(large, chunked, 5), whole[1234:1734])
    assert not np.array_equal(
        row_hashes(part.column("video_key"), part.column("gop_index"), 6), whole[1234:1734]
    )


def test_one_byte_or_one_gop_apart_hash_apart() -> None:
    keys = pa.array(["clip-a", "clip-b", "clip-a", "clip-", "", None, "clip-a\0"])
    gops = pa.array([0, 0, 1, 0, 0, 0, 0], pa.int32())
    hashes = row_hashes(keys, gops, seed=0).tolist()
    assert len(set(hashes)) == len(hashes) - 1  # only "" and a null key (read as "") coincide
    assert hashes[4] == hashes[5]


@pytest.mark.parametrize("count", [1, 7, 60])
def test_a_count_sample_is_the_smallest_hashes_whatever_the_batches(count: int) -> None:
    table = _rows(4000)
    hashes = row_hashes(table.column("video_key"), table.column("gop_index"), seed=11)
    smallest = sorted(np.argsort(hashes, kind="stable")[:count].tolist())
    rows = table.take(pa.array(smallest)).to_pylist()
    expected = sorted(((r["video_key"], r["gop_index"]) for r in rows), key=_order)
    for cuts in ([], [1], [17, 18, 2000], list(range(100, 4000, 333))):
        assert _sample(table, cuts, count=count, seed=11) == expected


def _order(row: tuple[str, int | None]) -> tuple[str, int]:
    return row[0], -1 if row[1] is None else row[1]


def test_a_fraction_sample_keeps_about_that_share_and_is_batch_independent() -> None:
    table = _rows(20_000)
    tenth = _sample(table, [], fraction=0.1, seed=2)
    assert 1600 <= len(tenth) <= 2400
    assert _sample(table, [5, 9000, 9001], fraction=0.1, seed=2) == tenth
    assert _sample(table, [], fraction=0.1, seed=3) != tenth
    assert len(_sample(table, [7000], fraction=1.0)) == table.num_rows
    assert _sample(table, [7000], fraction=0.0) == []


def test_the_default_size_applies_when_neither_count_nor_fraction_is_given() -> None:
    assert len(_sample(_rows(500), [123])) == 50
