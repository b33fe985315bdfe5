"""Parts read a chunk at a time (`manifest_layout.part_tables`) give the tables a part-by-part reading
gave: the same rows, in the same tables (the same boundaries), the same damaged parts named in the same
order, the same gone parts — with parts out of order, empty, damaged, gone or less dropped videos, and
chunk and table sizes that do not divide each other."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pytest

from pipeline.format.manifest_part import parquet_bytes, parse_part
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read import manifest_layout
from pipeline.read.manifest_layout import ManifestPlan, conform_to, part_tables
from pipeline.read.manifest_videos import _arranged, _sorted

COLUMNS = ["video_key", "gop_index", "psnr", "status"]
SCHEMA = pa.schema([MANIFEST_SCHEMA.field(n) for n in COLUMNS])


def _rows(rng: random.Random, key: str) -> list[dict[str, Any]]:
    gops = list(range(rng.choice([0, 1, 1, 2, 3, 5])))
    if rng.random() < 0.2:
        rng.shuffle(gops)  # written out of order
    rows = [
        {"video_key": key, "gop_index": g, "psnr": rng.choice([None, 30.0 + g]), "status": "ok"} for g in gops
    ]
    if rows and rng.random() < 0.1:
        rows[-1]["gop_index"] = None
    if len(rows) > 1 and rng.random() < 0.1:
        rows[0]["video_key"] = key + "-other"  # rows of another video in a part
    return rows


def _archive(tmp_path: Path, count: int, seed: int) -> tuple[ManifestPlan, list[str]]:
    rng = random.Random(seed)
    folder = tmp_path / "manifest"
    folder.mkdir()
    paths, drops = [], {}
    for i in range(count):
        key = f"k{i:04d}"
        path = folder / f"part-{key}.parquet"
        roll = rng.random()
        if roll < 0.08:
            path.write_bytes(b"not parquet" * rng.randrange(3))
        elif roll < 0.12:
            pass  # listed, gone since
        else:
            data = parquet_bytes(_rows(rng, key), MANIFEST_SCHEMA)
            if roll < 0.16:
                flipped = bytearray(data)
                flipped[rng.randrange(len(data))] ^= 0x10
                data = bytes(flipped)
            path.write_bytes(data)
            if rng.random() < 0.1:
                drops[str(path)] = {key}
        paths.append(str(path))
    plan = ManifestPlan(
        fs=fsspec.filesystem("file"), root=str(tmp_path), parts=[(p, 0) for p in paths], compacted=[],
        covered=[], orphan_packs=[], pack_members={}, part_drops=drops,
    )  # fmt: skip
    return plan, paths


def _part_by_part(
    plan: ManifestPlan, paths: list[str], per_table: int, singles: bool
) -> tuple[list, list, list]:
    """What iter_tables / manifest_videos did before chunks: each part parsed, conformed, gathered."""
    tables, damaged, missing, pending = [], [], [], []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            missing.append(path)
            continue
        try:
            table = parse_part(data, MANIFEST_SCHEMA, COLUMNS)
        except ValueError as exc:
            damaged.append((path, str(exc)))
            continue
        table = conform_to(plan.without_dropped(path, table), SCHEMA)
        if singles:
            if not table.num_rows:
                continue
            table = _sorted(table)
        pending.append(table)
        if len(pending) >= per_table:
            tables.append(pa.concat_tables(pending).combine_chunks())
            pending = []
    if pending:
        tables.append(pa.concat_tables(pending).combine_chunks())
    return tables, damaged, missing


@pytest.mark.parametrize("threshold", [10**9, 1], ids=["in-process", "worker-processes"])
@pytest.mark.parametrize(
    ("chunk", "per_table", "singles"), [(4, 3, False), (5, 5, True), (3, 7, True), (64, 2, False)]
)
def test_part_tables_give_the_part_by_part_tables(
    tmp_path: Path, monkeypatch, threshold: int, chunk: int, per_table: int, singles: bool
) -> None:
    monkeypatch.setattr(manifest_layout, "CHUNK_PARTS", chunk)
    monkeypatch.setattr(manifest_layout, "PARTS_PER_TABLE", per_table)
    monkeypatch.setattr(manifest_layout, "PROCESS_THRESHOLD", threshold)
    plan, paths = _archive(tmp_path, 60, seed=chunk * 100 + per_table)
    damaged: list[tuple[str, str]] = []
    missing: list[str] = []
    got = list(
        part_tables(
            plan, paths, COLUMNS, SCHEMA, on_damage=lambda p, r: damaged.append((p, r)), missing=missing,
            skip_empty=singles, arrange=_arranged if singles else None,
        )
    )  # fmt: skip
    tables, expected_damaged, expected_missing = _part_by_part(plan, paths, per_table, singles)
    assert [t.to_pydict() for t in got] == [t.to_pydict() for t in tables]
    assert all(t.schema == SCHEMA for t in got)
    assert damaged == expected_damaged and missing == expected_missing
    assert damaged and missing and plan.part_drops  # the seeds make every case happen


def test_arranged_sorts_each_part_on_its_own_and_only_when_out_of_order() -> None:
    table = pa.table({"video_key": ["b", "b", "a", "a"], "gop_index": pa.array([1, 0, 0, 1], pa.int32())})
    each = _arranged(table, [2, 2])
    assert each.column("video_key").to_pylist() == ["b", "b", "a", "a"]
    assert each.column("gop_index").to_pylist() == [0, 1, 0, 1]
    whole = _arranged(table, [4])
    assert whole.column("video_key").to_pylist() == ["a", "a", "b", "b"]
    ordered = table.slice(2, 2)
    assert _arranged(ordered, [2]) is ordered


def test_parts_ordered_agrees_with_is_ordered_part_by_part() -> None:
    """The check of a whole run of parts at once says ordered exactly when each part alone is
    (`_is_ordered`): null keys or GOPs, another video's row, GOPs back or equal, one-row parts, runs
    whose parts differ in key from their neighbours (never compared across a boundary)."""
    from pipeline.read.manifest_videos import _is_ordered, _parts_ordered

    rng = random.Random(3)
    for _ in range(400):
        sizes = [rng.choice([1, 1, 2, 3, 5]) for _ in range(rng.randrange(1, 6))]
        keys: list[Any] = []
        gops: list[Any] = []
        for p, size in enumerate(sizes):
            key = f"k{rng.randrange(3)}-{p}"
            for g in range(size):
                roll = rng.random()
                keys.append(None if roll < 0.03 else key + "x" if roll < 0.06 else key)
                gops.append(None if rng.random() < 0.03 else g - (rng.random() < 0.08) * rng.randrange(2, 4))
        table = pa.table({"video_key": keys, "gop_index": pa.array(gops, pa.int32())})
        for names in (["video_key", "gop_index"], ["video_key"]):
            part = table.select(names)
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            each = all(_is_ordered(part.slice(s, n), names) for s, n in zip(starts, sizes, strict=True))
            assert _parts_ordered(part, sizes) == each, (keys, gops, sizes)
