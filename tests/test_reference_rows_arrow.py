"""The classic reference's rows held as one Arrow table (`costs._reference_rows`) give exactly what one
dict per row gave: the same rows in the same order (the last copy of a key at the place of the first),
each group's rows in the order the manifest met them, and the same figures to the last bit. The dict
reduction the audit and `ls` used before is kept here as the oracle, run on random archives with rows
repeated across compacted files and parts."""

from __future__ import annotations

import collections
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.archive.reference import reference_path
from pipeline.audit.costs import (
    COST_COLUMNS,
    REFERENCE_COST_COLUMNS,
    REFERENCE_ROWS_SCHEMA,
    _by_reference,
    _last_copies,
    _reference_rows,
    collect,
    equal_quality_ratio,
    figures,
    payback,
    statement,
)
from pipeline.audit.prices import load_prices
from pipeline.audit.reader import iter_batches, open_manifest, open_reference
from pipeline.audit.videos import _VideoReferences
from pipeline.format.manifest_part import parquet_bytes
from pipeline.format.runinfo import manifest_path
from pipeline.format.schema import MANIFEST_SCHEMA, REFERENCE_SCHEMA
from pipeline.store.storage import filesystem, write_bytes

Key = tuple[str, int, str]


# ---- the oracle: the dict-per-row code this replaced ------------------------------------------------
def _oracle_rows(out: str) -> dict[Key, dict[str, Any]]:
    """The reference rows as a dict by key: files in name order, the last copy wins."""
    rows: dict[Key, dict[str, Any]] = {}
    dataset = open_reference(out)
    assert dataset is not None
    for batch in iter_batches(dataset, list(REFERENCE_COST_COLUMNS)):
        for row in pa.Table.from_batches([batch]).to_pylist():
            rows[(row["video_key"], row["gop_index"], row["run_id"])] = row
    return rows


def _oracle_groups(out: str, references: dict[Key, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each group's reference rows, one per OK manifest row with one, in the order the batches came."""
    from pipeline.audit.groups import group_label

    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for batch in iter_batches(open_manifest(out), COST_COLUMNS):
        for row in batch.to_pylist():
            reference = references.get((row["video_key"], row["gop_index"], row["run_id"]))
            if row["status"] == "ok" and reference is not None:
                label = group_label(row["codec"], row["target_kind"], row["target_value"])
                groups[label].append(reference)
    return groups


def _oracle_figures(
    codec: str, metric: str, rows: list[dict[str, Any]], acc: Any, group: dict[str, Any], prices: Any
) -> dict[str, Any]:
    """`_reference_figures` as it was, over dicts (the break-even at the interval's ends left out)."""
    ok = [r for r in rows if r["status"] == "ok" and r["log_ratio"] is not None]
    ratio = equal_quality_ratio(
        [r["log_ratio"] for r in ok], [r["frame_count"] for r in ok], [r["video_key"] for r in ok]
    )
    notes = sorted({r["metric_note"] for r in rows if r.get("metric_note")})
    entry: dict[str, Any] = {
        "codec": codec,
        "metric": metric,
        "metric_note": "; ".join(notes) or None,
        "gops_sampled": len(rows),
        "gops_by_status": dict(collections.Counter(r["status"] for r in rows)),
        "ratio": ratio,
        "statement": statement(ratio, codec, metric),
        "measurement_cost": sum(r["cpu_seconds"] or 0.0 for r in rows) / 3600.0 * prices.cpu_hour.value,
    }
    if ratio is None:
        return entry
    sampled_pixels = sum(r["width"] * r["height"] * r["frame_count"] for r in ok) or 1
    encode_seconds = sum(r["encode_cpu_seconds"] or 0.0 for r in ok)
    reference_cost = encode_seconds / sampled_pixels * acc.pixels / 3600.0 * prices.cpu_hour.value
    extra = group["codec_compute_cost"] - reference_cost
    reference_bytes = acc.payload_bytes * math.exp(-ratio["mean_log_ratio"])
    entry.update(
        reference_bytes_estimate=reference_bytes,
        reference_compute_cost_estimate=reference_cost,
        codec_compute_cost=group["codec_compute_cost"],
        vs_reference=payback(extra, reference_bytes - acc.payload_bytes, prices, group["storage"]),
    )
    return entry


def _oracle_by_reference(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        grouped[(row["reference_codec"], row["metric"])].append(row)
    return grouped


# ---- random archives -------------------------------------------------------------------------------
def _reference_row(rng: random.Random, key: str, gop: int, run: str) -> dict[str, Any]:
    status = rng.choice(["ok", "ok", "ok", "ok", "unreachable", "failed"])
    return {
        "run_id": run, "video_key": key, "gop_index": gop, "frame_count": rng.choice([8, 9, 16]),
        "width": 64, "height": rng.choice([48, 36]), "metric": rng.choice(["psnr", "psnr", "vmaf"]),
        "metric_note": rng.choice([None, "", "vmaf unavailable", "other note"]),
        "reference_codec": rng.choice(["x265", "x265", "av1"]), "status": status,
        "log_ratio": rng.uniform(-0.8, 0.4) if status == "ok" and rng.random() < 0.95 else None,
        "cpu_seconds": rng.choice([None, 0.0, rng.uniform(0.5, 40.0)]),
        "encode_cpu_seconds": rng.choice([None, rng.uniform(0.05, 5.0)]),
    }  # fmt: skip


def _archive(out: Path, seed: int) -> None:
    """30 videos in 3 groups, 1-5 GOPs each (some rows failed, some of another run); reference rows for
    most GOPs spread over two compacted files and per-video parts, many keys in two or three of them."""
    rng = random.Random(seed)
    fs, root = filesystem(str(out))
    videos = [f"v{rng.randrange(16**6):06x}-{i:02d}" for i in range(30)]
    keys: list[Key] = []
    for key in videos:
        target = rng.choice([23.0, 28.0, 33.0])
        rows = [
            {"run_id": rng.choice(["r1", "r1", "r1", "r0"]), "video_key": key, "source_uri": f"/src/{key}.mp4",
             "gop_index": g, "status": "ok" if rng.random() < 0.9 else "failed", "codec": "x264",
             "target_kind": "crf", "target_value": target, "payload_bytes": rng.randrange(500, 5000),
             "frame_count": 8, "width": 64, "height": 48, "source_bytes": 90_000, "compute_device": "cpu",
             "encode_device_seconds": rng.uniform(0.1, 2.0), "decode_device_seconds": 0.1}
            for g in range(rng.randint(1, 5))
        ]  # fmt: skip
        rng.shuffle(rows)
        write_bytes(fs, manifest_path(root, key), parquet_bytes(rows, MANIFEST_SCHEMA))
        keys += [(key, r["gop_index"], r["run_id"]) for r in rows if rng.random() < 0.8]
    keys += [(key, gop, "older") for key, gop, _ in rng.sample(keys, 10)]  # an earlier encoding: never met
    compacted: list[list[dict[str, Any]]] = [[], []]
    parts: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for key, gop, run in keys:
        for _ in range(rng.choice([1, 1, 2, 3])):  # copies with differing values: the last one read wins
            where = rng.choice(["a", "b", "part"])
            row = _reference_row(rng, key, gop, run)
            (parts[key] if where == "part" else compacted[where == "b"]).append(row)
    for name, rows in zip(
        ("compacted-20250101T0000Z-aa", "compacted-20250102T0000Z-bb"), compacted, strict=True
    ):
        rng.shuffle(rows)
        write_bytes(fs, f"{root}/reference/{name}.parquet", parquet_bytes(rows, REFERENCE_SCHEMA))
    for key, rows in parts.items():
        write_bytes(fs, reference_path(root, key), parquet_bytes(rows, REFERENCE_SCHEMA))


@pytest.fixture
def prices(tmp_path: Path) -> Any:
    path = tmp_path / "prices.toml"
    path.write_text("cpu_hour = 0.04\n")
    return load_prices(path)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_arrow_rows_give_what_a_dict_per_row_gave(tmp_path: Path, prices: Any, seed: int) -> None:
    out = tmp_path / "out"
    _archive(out, seed)
    oracle = _oracle_rows(str(out))
    held = _reference_rows(str(out), None)
    assert held.schema == REFERENCE_ROWS_SCHEMA
    assert held.to_pylist() == list(oracle.values())  # the dict's values, in its order
    read = sum(batch.num_rows for batch in iter_batches(open_reference(str(out)), ["run_id"]))
    assert read > held.num_rows  # keys were repeated across files

    # audit (and compare): each group's rows in the order the manifest met them, the same figures
    collector = collect(str(out))
    expected = _oracle_groups(str(out), oracle)
    met = {label: acc.reference.to_pylist() for label, acc in collector.groups.items()}
    assert {label: rows for label, rows in met.items() if rows} == expected
    compared = 0
    for acc in collector.groups.values():
        group = figures(acc, prices, None)
        old = [
            _oracle_figures(codec, metric, rows, acc, group, prices)
            for (codec, metric), rows in sorted(_oracle_by_reference(acc.reference.to_pylist()).items())
        ]
        new = [{k: v for k, v in entry.items() if k != "vs_reference_ci"} for entry in group["references"]]
        assert new == old  # exact: the same floats summed in the same order, the same bootstrap
        compared += len(new)
    assert compared >= 6

    # ls: one video's rows of the GOPs it holds, in the order read
    by_video = _VideoReferences(held)
    for key in sorted({key for key, _, _ in oracle}):
        runs = frozenset((gop, run) for video, gop, run in oracle if video == key and run != "older")
        listed = [row for (video, gop, run), row in oracle.items() if video == key and (gop, run) in runs]
        assert by_video.of(key, runs).to_pylist() == listed
    assert by_video.of("no-such-video", frozenset({(0, "r1")})).num_rows == 0


def test_reference_figures_take_the_rows_of_one_codec_and_metric_in_their_order(prices: Any) -> None:
    """`_by_reference` splits the rows by (codec, metric) keeping each part's order."""
    rng = random.Random(7)
    rows = [_reference_row(rng, f"k{i % 9}", i, "r1") for i in range(200)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([REFERENCE_SCHEMA.field(c) for c in rows[0]]))
    split = _by_reference(table)
    assert sorted(split) == sorted(_oracle_by_reference(rows))
    for pair, part in split.items():
        assert part.to_pylist() == _oracle_by_reference(rows)[pair]


@pytest.mark.parametrize("seed", range(5))
def test_last_copies_keep_a_dicts_values_and_order(seed: int) -> None:
    """Duplicates anywhere, null keys included: the last copy's values at the place of the first."""
    rng = random.Random(seed)
    rows = [
        {"video_key": rng.choice(["a", "b", "c", None]), "gop_index": rng.choice([0, 1, None]),
         "run_id": rng.choice(["r1", "r2"]), "log_ratio": float(i)}
        for i in range(300)
    ]  # fmt: skip
    oracle: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        oracle[(row["video_key"], row["gop_index"], row["run_id"])] = row
    schema = pa.schema([REFERENCE_SCHEMA.field(c) for c in rows[0]])
    chunks = [pa.Table.from_pylist(rows[i : i + 70], schema=schema) for i in range(0, 300, 70)]
    assert _last_copies(pa.concat_tables(chunks)).to_pylist() == list(oracle.values())
    unique = [row for row in oracle.values()]
    assert _last_copies(pa.Table.from_pylist(unique, schema=schema)).to_pylist() == unique
