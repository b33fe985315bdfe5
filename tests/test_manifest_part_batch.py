"""The fast paths of reading many parts give what the reference definitions give: `value_texts` writes
`column_checksum`'s canonical JSON byte for byte (randomized, every type of the manifest schema and a
few more), and `parse_parts` (and `parse_part`, one part at a time) returns, part by part, what
`parse_part` returned before batches, or the same reason it is damaged: whole, flipped, truncated,
from an earlier release, with other types, hostile."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
import struct
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.format.manifest_part import (
    column_checksum,
    parquet_bytes,
    parse_part,
    parse_parts,
    texts_checksum,
    value_texts,
)
from pipeline.format.schema import MANIFEST_SCHEMA, REFERENCE_SCHEMA, VERIFY_SCHEMA

SPECIAL_FLOATS = [
    0.0,
    -0.0,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    1e16,
    1e-7,
    5e-324,
    1.7976931348623157e308,
]
SPECIAL_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
ALPHABET = [
    "a",
    "Z",
    "0",
    " ",
    '"',
    "\\",
    "/",
    "\n",
    "\t",
    "\x00",
    "\x1f",
    "\x7f",
    "é",
    "€",
    "😀",
    "\u2028",
    "中",
]


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))


def _float(rng: random.Random) -> float:
    if rng.random() < 0.3:
        return rng.choice(SPECIAL_FLOATS)
    bits = rng.getrandbits(64)
    value = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)


def _value(type_: pa.DataType, rng: random.Random) -> Any:
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return _string(rng)
    if pa.types.is_boolean(type_):
        return rng.random() < 0.5
    if pa.types.is_integer(type_):
        bits = type_.bit_width
        low, high = (
            (0, 2**bits - 1)
            if pa.types.is_unsigned_integer(type_)
            else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        special = [v for v in SPECIAL_INTS if low <= v <= high]
        return rng.choice(special) if rng.random() < 0.3 else rng.randint(low, high)
    if pa.types.is_floating(type_):
        value = _float(rng)
        return (
            struct.unpack("<f", struct.pack("<f", value))[0]
            if type_.bit_width == 32 and math.isfinite(value) and abs(value) < 3e38
            else value
        )
    if pa.types.is_timestamp(type_):
        micros = rng.choice([0, rng.randrange(10**6)])
        return dt.datetime(
            rng.randrange(1, 9999),
            rng.randrange(1, 13),
            rng.randrange(1, 29),
            microsecond=micros,
            tzinfo=dt.timezone.utc if type_.tz else None,
        )
    if pa.types.is_date(type_):
        return dt.date(rng.randrange(1, 9999), rng.randrange(1, 13), rng.randrange(1, 29))
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return rng.randbytes(rng.randrange(0, 10))
    if pa.types.is_list(type_):
        return [
            _value(type_.value_type, rng) if rng.random() > 0.2 else None for _ in range(rng.randrange(0, 4))
        ]
    if pa.types.is_struct(type_):
        return {field.name: _value(field.type, rng) for field in type_}
    raise AssertionError(type_)


EXTRA_TYPES = [
    pa.int8(), pa.uint8(), pa.uint64(), pa.float32(), pa.large_string(), pa.large_binary(), pa.date32(),
    pa.timestamp("us"), pa.timestamp("ms", tz="UTC"), pa.list_(pa.string()), pa.list_(pa.float64()),
    pa.struct([("a", pa.int64()), ("b", pa.string())]),
]  # fmt: skip


def _all_types() -> list[pa.DataType]:
    types = {str(t): t for schema in (MANIFEST_SCHEMA, VERIFY_SCHEMA, REFERENCE_SCHEMA) for t in schema.types}
    types.update({str(t): t for t in EXTRA_TYPES})
    return list(types.values())


@pytest.mark.parametrize("type_", _all_types(), ids=str)
def test_value_texts_write_the_checksums_json_byte_for_byte(type_: pa.DataType) -> None:
    rng = random.Random(str(type_))
    for _ in range(60):
        nulls = rng.random() < 0.5
        values = [
            None if nulls and rng.random() < 0.3 else _value(type_, rng) for _ in range(rng.randrange(0, 20))
        ]
        column = pa.array(values, type=type_)
        texts = value_texts(column.to_pylist(), column.type, column.null_count > 0)
        assert texts_checksum(texts) == column_checksum(column), values
        cut = rng.randrange(0, len(values) + 1)  # a slice's checksum is the slice's texts'
        assert texts_checksum(texts[:cut]) == column_checksum(column.slice(0, cut))


@pytest.mark.parametrize("type_", _all_types(), ids=str)
def test_a_value_of_an_unexpected_python_type_is_written_right_or_raises(type_: pa.DataType) -> None:
    """A writer given what its type never converts to (a None where no nulls were counted, a number
    where a string was expected, a bool where an int was) writes the JSON of it or raises TypeError
    (the caller then checks the slow way): never other text."""
    for value in (None, 1, True, 1.5, "s", b"b", dt.date(2020, 1, 2), [1], {"a": 1}):
        try:
            texts = value_texts([value], type_, has_nulls=False)
        except TypeError:
            continue
        assert texts_checksum(texts) == column_checksum_of_pylist([value])


def column_checksum_of_pylist(values: list[Any]) -> int:
    import json

    from crc32c import crc32c

    return crc32c(json.dumps(values, separators=(",", ":"), default=str, allow_nan=True).encode())


def _rows(rng: random.Random, key: str) -> list[dict[str, Any]]:
    rows = []
    for gop in range(rng.randrange(0, 6)):
        row: dict[str, Any] = {
            "video_key": key,
            "gop_index": gop,
            "status": rng.choice(["ok", "failed", None]),
        }
        for field in MANIFEST_SCHEMA:
            if field.name not in row and rng.random() < 0.5:
                row[field.name] = _value(field.type, rng)
        rows.append(row)
    return rows


def _old_part(rows: list[dict[str, Any]]) -> bytes:
    """An earlier release's part: no checksums, fewer columns, a narrower type."""
    table = pa.Table.from_pylist([{"video_key": r["video_key"], "gop_index": r["gop_index"]} for r in rows])
    buffer = io.BytesIO()
    pq.write_table(table.cast(pa.schema([("video_key", pa.string()), ("gop_index", pa.int64())])), buffer)
    return buffer.getvalue()


def _hostile_part(rng: random.Random, key: str, kind: int | None = None) -> bytes:
    """Parts no reader can take whole: a date past what Python represents (its conversion fails), an
    integer wider than 64 bits (its cast fails), or a gop_index that does not fit an int32."""
    buffer = io.BytesIO()
    kind = rng.randrange(3) if kind is None else kind
    if kind == 0:
        column = pa.array([2**62, 0], pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table({"video_key": [key, key], "created_at": column}), buffer)
    elif kind == 1:
        pq.write_table(
            pa.table({"video_key": [key], "gop_index": pa.array([2**70], pa.decimal256(70, 0))}), buffer
        )
    else:
        pq.write_table(pa.table({"video_key": [key], "gop_index": pa.array([2**40], pa.int64())}), buffer)
    return buffer.getvalue()


def _parts(rng: random.Random, count: int) -> list[bytes]:
    parts = []
    for i in range(count):
        data = parquet_bytes(_rows(rng, f"k{i:03d}"), MANIFEST_SCHEMA)
        roll = rng.random()
        if roll < 0.04:
            data = _hostile_part(rng, f"k{i:03d}")
        elif roll < 0.15:
            flipped = bytearray(data)
            flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        elif roll < 0.2:
            data = data[: rng.randrange(len(data))]
        elif roll < 0.25:
            data = _old_part(_rows(rng, f"k{i:03d}"))
        parts.append(data)
    return parts


def _text(results: list[Any]) -> str:
    import json

    return json.dumps(results, default=repr, allow_nan=True)


def _one_by_one(parts: list[bytes], columns: list[str] | None, parse: Any = parse_part) -> list[Any]:
    results = []
    for data in parts:
        try:
            results.append(parse(data, MANIFEST_SCHEMA, columns).to_pylist())
        except ValueError as exc:
            results.append(str(exc))
    return results


def _parse_part_as_it_was(data: bytes, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """`parse_part` before parts were parsed in batches (the reference the damage tests were written
    against): the faster one must give the same rows and the same reasons."""
    import json

    from crc32c import crc32c

    from pipeline.format.manifest_part import COLUMN_CHECKSUMS_KEY

    wanted = list(columns) if columns is not None else schema.names
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        names = parquet.schema_arrow.names
        present = [name for name in wanted if name in names]
        table = parquet.read(columns=present, use_threads=False)
        if table.num_rows != parquet.metadata.num_rows:
            raise ValueError(f"{table.num_rows} rows read, the footer says {parquet.metadata.num_rows}")
        stored = (parquet.metadata.metadata or {}).get(COLUMN_CHECKSUMS_KEY.encode())
        checksums = None
        if stored is not None:
            names_crc, _, listed = stored.decode(errors="replace").partition(";")
            checksums = listed.split(",")
            if names_crc != f"{crc32c(json.dumps(list(names)).encode()):08x}" or len(checksums) != len(names):
                raise ValueError("the column names do not match their checksum")
        for name in present:
            actual = column_checksum(table.column(name))
            if checksums is not None and checksums[names.index(name)] != f"{actual:08x}":
                raise ValueError(f"column {name!r} does not match its checksum")
        arrays = []
        for name in wanted:
            field = schema.field(name)
            if name in present:
                column = table.column(name)
                arrays.append(column if column.type == field.type else column.cast(field.type, safe=True))
            else:
                arrays.append(pa.nulls(table.num_rows, field.type))
        return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in wanted]))
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{type(exc).__name__}: {text}"[:300]) from None


@pytest.mark.parametrize(
    "columns", [None, ["video_key", "gop_index", "psnr", "status", "created_at", "fingerprint"]]
)
def test_parse_parts_gives_what_parse_part_gives_for_each_part(columns: list[str] | None) -> None:
    rng = random.Random(7)
    parts = _parts(rng, 120)
    for kind in range(3):  # each kind of hostile part at least once, among readable ones
        parts.insert(rng.randrange(len(parts)), _hostile_part(rng, f"h{kind}", kind))
    table, outcomes = parse_parts(parts, MANIFEST_SCHEMA, columns)
    expected = _one_by_one(parts, columns, _parse_part_as_it_was)
    assert _text(_one_by_one(parts, columns)) == _text(expected)
    rows = iter(table.to_pylist())
    got = [o if isinstance(o, str) else [next(rows) for _ in range(o)] for o in outcomes]
    assert next(rows, None) is None
    assert _text(got) == _text(expected)  # as text: NaN equals itself
    assert any(isinstance(o, str) for o in outcomes) and any(isinstance(o, int) and o for o in outcomes)
    wanted = columns or MANIFEST_SCHEMA.names
    assert table.schema == pa.schema([MANIFEST_SCHEMA.field(n) for n in wanted])


def test_a_flipped_bit_in_any_part_of_a_batch_is_caught_as_alone() -> None:
    rng = random.Random(11)
    good = [parquet_bytes(_rows(random.Random(i), f"k{i}"), MANIFEST_SCHEMA) for i in range(6)]
    for _ in range(120):
        parts = list(good)
        k = rng.randrange(len(parts))
        flipped = bytearray(parts[k])
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        parts[k] = bytes(flipped)
        _, outcomes = parse_parts(parts, MANIFEST_SCHEMA, ["video_key", "psnr", "codec", "created_at"])
        assert outcomes == [  # reasons equal, row counts equal
            o if isinstance(o, str) else len(o)
            for o in _one_by_one(parts, ["video_key", "psnr", "codec", "created_at"])
        ]


def test_parse_parts_of_nothing_and_of_junk() -> None:
    table, outcomes = parse_parts([], MANIFEST_SCHEMA, ["video_key"])
    assert table.num_rows == 0 and outcomes == []
    table, outcomes = parse_parts([b"", b"PAR1"], MANIFEST_SCHEMA, ["video_key"])
    assert table.num_rows == 0 and all(isinstance(o, str) for o in outcomes)


BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _other_layout(rng: random.Random, key: str) -> bytes:
    """A readable part of another footer schema than the usual one: some columns in another order, a
    nested column (read through `ParquetFile`, not by leaf index), a column the schema lacks next to a
    narrower type, or an earlier release's part."""
    rows = [{**row, "gop_index": g} for g, row in enumerate(_rows(rng, key) or [{"video_key": key}])]
    buffer = io.BytesIO()
    kind = rng.randrange(4)
    if kind == 0:
        names = rng.sample(MANIFEST_SCHEMA.names, rng.randrange(1, 8))
        names = [*names, "video_key"] if "video_key" not in names else names
        subset = pa.schema([MANIFEST_SCHEMA.field(n) for n in names])
        return parquet_bytes([{k: v for k, v in r.items() if k in names} for r in rows], subset)
    if kind == 1:
        nested = [{"a": i, "b": "x"} for i in range(len(rows))]  # two leaves before the wanted columns
        psnr = [rng.choice([None, 31.5]) for _ in rows]
        pq.write_table(pa.table({"nested": nested, "video_key": [key] * len(rows), "psnr": psnr}), buffer)
    elif kind == 2:
        psnr = pa.array([rng.choice([None, 31.5]) for _ in rows], pa.float32())
        pq.write_table(
            pa.table({"video_key": [key] * len(rows), "psnr": psnr, "extra": ["x"] * len(rows)}), buffer
        )
    else:
        return _old_part(rows)
    return buffer.getvalue()


def _footer_damage(rng: random.Random, data: bytes) -> bytes:
    """A byte of the footer changed: in the stored Arrow schema (a base64 letter for another, so the
    footer still parses), near the end, or the part cut short there."""
    damaged = bytearray(data)
    roll = rng.random()
    at = data.find(b"ARROW:schema")
    if roll < 0.4 and at >= 0:
        position = rng.randrange(at + 16, min(len(data) - 16, at + 600))
        if damaged[position] in BASE64:
            damaged[position] = rng.choice([c for c in BASE64 if c != damaged[position]])
    elif roll < 0.8:
        damaged[len(data) - 1 - rng.randrange(min(len(data), 400))] ^= 1 << rng.randrange(8)
    else:
        del damaged[len(data) - 1 - rng.randrange(min(len(data) - 1, 200)) :]
    return bytes(damaged)


@pytest.mark.parametrize("columns", [None, ["psnr", "video_key", "gop_index"]])
def test_parts_of_other_layouts_and_damaged_footers_in_any_split(columns: list[str] | None) -> None:
    """Parts of several footer schemas side by side (the layout of the last one is reused only for
    the same schema) and footers damaged after a readable part of the same schema: whatever the
    batches, each part's rows or reason are those of the reference."""
    rng = random.Random(23)
    parts = []
    for i in range(90):
        key = f"k{i:03d}"
        data = (
            _other_layout(rng, key) if rng.random() < 0.4 else parquet_bytes(_rows(rng, key), MANIFEST_SCHEMA)
        )
        parts.append(_footer_damage(rng, data) if rng.random() < 0.3 else data)
    expected = _text(_one_by_one(parts, columns, _parse_part_as_it_was))
    for _ in range(4):
        cuts = sorted(rng.sample(range(1, len(parts)), rng.randrange(0, 12)))
        got: list[Any] = []
        for start, end in zip([0, *cuts], [*cuts, len(parts)], strict=True):
            table, outcomes = parse_parts(parts[start:end], MANIFEST_SCHEMA, columns)
            rows = iter(table.to_pylist())
            got += [o if isinstance(o, str) else [next(rows) for _ in range(o)] for o in outcomes]
            assert next(rows, None) is None
        assert _text(got) == expected, cuts
    outcomes = json.loads(expected)
    assert (
        sum(isinstance(o, str) for o in outcomes) >= 10 and sum(isinstance(o, list) for o in outcomes) >= 50
    )
