"""One Parquet part of an archive (a manifest part, verify results, classic-reference rows): how it is
written and how it is parsed, on its own, with its checksums checked. `pipeline.read.manifest` reads many
of them (`ArchiveParts`); `pipeline.read.manifest_layout` resolves which files hold which rows; both use this.

Parts are written with Parquet page checksums (`parquet_bytes`) and read with them verified. Page
checksums do not cover the Parquet footer, where a flipped byte can silently turn a column's values into
nulls, so each part also carries a CRC32C of its column names and of every column's values (canonical
JSON) in its key-value metadata (`COLUMN_CHECKSUMS_KEY`), recomputed on read for the columns a reader
asks for (verify reads them all). A part that does not parse — truncated, a page or column checksum
mismatch, not Parquet at all, a column whose values do not fit the schema's type, a value no reader can
represent — is *damaged* (`DamagedPart`). Parts of earlier releases have neither checksum and read as
before. The schema is imposed on read: a column a part lacks reads as null. `parse_parts` parses many
parts in one pass, each with the outcome `parse_part` gives it alone, sharing what they have in common.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from crc32c import crc32c

from pipeline.format.schema import (
    MANIFEST_SCHEMA,
    PROOF_COLUMNS,
    REFERENCE_SCHEMA,
    VERIFY_SCHEMA,
    rows_to_table,
)

COLUMN_CHECKSUMS_KEY = "vidarc.column_crc32c"
#: Parquet options every part is written with: page checksums, so damage is caught on read.
WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}
SCHEMAS = {"manifest": MANIFEST_SCHEMA, "verify": VERIFY_SCHEMA, "reference": REFERENCE_SCHEMA}


class PartsError(Exception):
    """The parts cannot be listed or fetched (storage), or there are none: one line."""


@dataclasses.dataclass(frozen=True)
class DamagedPart:
    """A part that does not parse; `video_key` for a manifest part named `part-<video_key>.parquet`."""

    uri: str
    folder: str
    reason: str
    #: a committed pack's manifest part: the videos its pack marker lists (their rows are all in it)
    members: tuple[str, ...] = ()

    @property
    def video_key(self) -> str | None:
        name = self.uri.rsplit("/", 1)[-1]
        if self.folder != "manifest" or not (name.startswith("part-") and name.endswith(".parquet")):
            return None
        return name[len("part-") : -len(".parquet")]

    @property
    def video_keys(self) -> tuple[str, ...]:
        """Every video whose rows this part holds: its own, or a pack's members."""
        return (self.video_key,) if self.video_key else self.members

    def line(self) -> str:
        owner = ""
        if self.video_key:
            owner = f"; the rows of video {self.video_key} are unreadable"
        elif self.members:
            listed = ", ".join(self.members[:5]) + (", ..." if len(self.members) > 5 else "")
            owner = f"; the rows of its {len(self.members)} packed videos ({listed}) are unreadable"
        elif self.folder == "reference":
            owner = "; its rows are left out of the reference figures"
        return f"{self.uri}: damaged {self.folder} part ({self.reason}){owner}"

    def as_record(self) -> dict[str, Any]:
        return {"uri": self.uri, "folder": self.folder, "video_key": self.video_key, "reason": self.reason}


def parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """One part as Parquet bytes with page checksums and a checksum of every column's values (`rows`:
    dicts; missing keys become null)."""
    table = rows_to_table(rows, schema)
    names = f"{_names_checksum(table.column_names):08x}"
    checksums = ",".join(f"{column_checksum(column):08x}" for column in table.columns)
    table = table.replace_schema_metadata({COLUMN_CHECKSUMS_KEY: f"{names};{checksums}"})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **WRITE_OPTIONS, write_statistics=statistics_columns(schema))
    return buffer.getvalue()


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns written with min/max statistics: all but the decode proof's (`PROOF_COLUMNS`), whose
    digests and fingerprints nobody filters on by range and whose statistics would store each value
    twice more in the footer (+4.4 KB per GOP instead of +0.7 KB)."""
    return [name for name in schema.names if name not in PROOF_COLUMNS]


def column_checksum(column: pa.ChunkedArray | pa.Array) -> int:
    """CRC32C of a column's values as canonical JSON (also proves every value converts: a date no
    reader can represent raises). The definition; `value_texts` writes the same text faster."""
    text = json.dumps(column.to_pylist(), separators=(",", ":"), default=str, allow_nan=True)
    return crc32c(text.encode())


def texts_checksum(texts: Sequence[str]) -> int:
    """`column_checksum` of the values whose `value_texts` these are: a list's JSON is its items'
    JSON, comma-separated, in brackets."""
    return crc32c(("[" + ",".join(texts) + "]").encode())


def value_texts(values: list[Any], type_: pa.DataType, has_nulls: bool = True) -> list[str]:
    """Each of `values` (a column of `type_` as Python values) as `column_checksum`'s JSON writes it
    inside the column's list, byte for byte: numbers, strings and booleans the way `json`'s C encoder
    does (`int.__repr__`, `float.__repr__` but NaN/Infinity, `encode_basestring_ascii`), dates, times
    and bytes as the JSON string of `str(value)` (`default=str`), anything else by `json.dumps` itself.
    Several times faster than `json.dumps` of the list, which is most of a small part's check."""
    if pa.types.is_floating(type_):
        return _float_texts(values, has_nulls)
    write = _writer(type_)
    if not has_nulls:
        return list(map(write, values))
    return [_NULL if value is None else write(value) for value in values]


_NULL = "null"
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _int_text(value: int) -> str:
    if value.__class__ is int:
        return int.__repr__(value)
    return _any_text(value)  # a bool is an int too, and JSON writes it as one


def _float_texts(values: list[Any], has_nulls: bool) -> list[str]:
    """Floats as JSON writes them: `float.__repr__`, but NaN and the infinities by their JSON names
    (`float.__repr__` raises on anything not a float: the caller then checks the slow way)."""
    write = float.__repr__
    if has_nulls:
        texts = [_NULL if value is None else write(value) for value in values]
    else:
        texts = list(map(write, values))
    if not _NON_FINITE.keys().isdisjoint(texts):
        texts = [_NON_FINITE.get(text, text) for text in texts]
    return texts


def _bool_text(value: bool) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise TypeError(f"not a bool: {value!r}")


def _str_text(value: Any) -> str:
    """A date, time or bytes value: not a type JSON writes natively, so `default=str` writes it."""
    if value is None or isinstance(value, (str, int, float, list, tuple, dict)):
        return _any_text(value)  # JSON's own types are not given to `default`
    return encode_basestring_ascii(str(value))


def _any_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, allow_nan=True)


def _writer(type_: pa.DataType) -> Callable[[Any], str]:
    """How `value_texts` writes one non-null value of `type_`. Each writer raises TypeError on a value
    of another Python type than the one it is for (the caller then checks the slow way)."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return encode_basestring_ascii
    if pa.types.is_integer(type_):
        return _int_text
    if pa.types.is_boolean(type_):
        return _bool_text
    if (
        pa.types.is_timestamp(type_)
        or pa.types.is_date(type_)
        or pa.types.is_binary(type_)
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
    ):
        return _str_text
    return _any_text


def _names_checksum(names: Sequence[str]) -> int:
    return crc32c(json.dumps(list(names)).encode())


def parse_part(data: bytes, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """A part's rows as a table of `columns` (default: all) with `schema`'s types. Page checksums are
    verified, and the checksum of every column read (when the part has them), so a flipped byte in
    the footer cannot silently change values. Raises ValueError with a one-line reason when the bytes
    are not a readable part."""
    table, outcomes = parse_parts([data], schema, columns)
    if isinstance(outcomes[0], str):
        raise ValueError(outcomes[0])
    return table


def parse_parts(
    parts: Sequence[bytes], schema: pa.Schema, columns: Sequence[str] | None = None
) -> tuple[pa.Table, list[int | str]]:
    """Many parts parsed as `parse_part` parses each, in one pass: (the rows of the readable ones, in
    order, one table; per part the number of its rows there, or the one-line reason it is damaged)."""
    parser = PartsParser(schema, columns)
    return parser.finish([parser.open(data) for data in parts])


class PartsParser:
    """`parse_parts` in two steps: `open` each part (its footer, names and pages: mostly pyarrow work),
    as it arrives from storage, then `finish` a batch of them (their column checksums, their rows in
    one table).

    Reading many small parts is mostly fixed cost per part, so what can be is shared: parts with one
    footer schema share its column names and their checksum (`_Layouts`), and parts read with one
    schema have their column checksums computed over their concatenated columns (each column converted
    to Python once, `value_texts`). A part that fails there is checked on its own, as `parse_part`
    always did (`_checked`): the outcome and the reason of every part are those `parse_part` gives."""

    def __init__(self, schema: pa.Schema, columns: Sequence[str] | None = None) -> None:
        self.schema = schema
        self.wanted = list(columns) if columns is not None else schema.names
        self.target = pa.schema([schema.field(name) for name in self.wanted])
        self._layouts = _Layouts(self.wanted)

    def open(self, data: bytes) -> Any:
        """A part read, its columns not yet checked (or the reason it cannot be read): for `finish`."""
        try:
            return _open(data, self._layouts)
        except Exception as exc:  # any parse failure of these bytes is damage, not a crash
            return _reason(exc)

    def finish(self, opened: Sequence[Any]) -> tuple[pa.Table, list[int | str]]:
        """(the readable parts' rows in order, each part's row count or reason), of `open`'s results."""
        checked: dict[int, pa.Table | str] = {}
        for group in _same_schema(opened):
            suspects = _batch_suspects([opened[i] for i in group])
            for k, i in enumerate(group):
                part = opened[i]
                if k in suspects:
                    checked[i] = _or_reason(_checked, part, self.schema, self.wanted)
                elif not part.fits(self.target):  # an earlier release's: other types, fewer columns
                    checked[i] = _or_reason(_conformed, part, self.schema, self.wanted)
        return _assemble(opened, checked, self.target)


def _reason(exc: BaseException) -> str:
    """The one line a damaged part is reported with."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


@dataclasses.dataclass
class _Layout:
    """What a footer schema decides: the part's column names, the wanted columns it has and where, and
    the checksum its stored names must match."""

    names: list[str]
    present: list[str]
    positions: list[int]  # of `present` in `names` (where their checksums are listed)
    flat: bool  # one leaf column per field, unique names: `positions` are also the leaf indices
    names_crc: str

    @classmethod
    def of(cls, reader: Any, wanted: list[str]) -> _Layout:
        names = reader.schema_arrow.names
        present = [name for name in wanted if name in names]
        flat = len(set(names)) == len(names) and reader.column_paths == [[name] for name in names]
        positions = [names.index(name) for name in present]
        return cls(names, present, positions, flat, f"{_names_checksum(names):08x}")


class _Layouts:
    """The layout of the last footer schema met: an archive's parts nearly all share one, and working
    it out (the Arrow schema, the names' checksum) costs more than comparing two Parquet schemas. The
    names come from the Parquet schema alone (a stored Arrow schema changes types, never names), and
    the names of the columns read are checked against the layout (`_read`)."""

    def __init__(self, wanted: list[str]) -> None:
        self.wanted = wanted
        self._last: tuple[Any, _Layout] | None = None

    def of(self, reader: Any, metadata: Any) -> _Layout:
        last = self._last
        if last is not None and metadata.schema.equals(last[0]):
            return last[1]
        layout = _Layout.of(reader, self.wanted)
        self._last = (metadata.schema, layout)
        return layout


@dataclasses.dataclass
class _Opened:
    """A part read (page checksums verified, rows counted, names checked), its columns not yet checked."""

    table: pa.Table  # the wanted columns it has, as stored
    layout: _Layout
    checksums: list[str] | None  # listed per stored column; None: an earlier release's part

    def fits(self, target: pa.Schema) -> bool:
        """Whether it has every wanted column, with the schema's types (the parts of this release)."""
        return self.table.schema.equals(target)

    def stored_checksum(self, position: int) -> str | None:
        return None if self.checksums is None else self.checksums[self.layout.positions[position]]


def _open(data: bytes, layouts: _Layouts) -> _Opened:
    reader = pq.ParquetReader()
    reader.open(
        pa.BufferReader(data), pre_buffer=True, page_checksum_verification=True, arrow_extensions_enabled=True
    )  # as `pq.ParquetFile` opens it, without building its nested-column index
    metadata = reader.metadata
    layout = layouts.of(reader, metadata)
    table = _read(data, reader, layout)
    if table.column_names != layout.present:  # not the layout it was taken for: work it out anew
        layout = _Layout.of(reader, layouts.wanted)
        table = _read(data, reader, layout)
    if table.num_rows != metadata.num_rows:
        raise ValueError(f"{table.num_rows} rows read, the footer says {metadata.num_rows}")
    stored = (metadata.metadata or {}).get(COLUMN_CHECKSUMS_KEY.encode())
    checksums = None
    if stored is not None:  # "<crc of the column names>;<crc of column 0>,<crc of column 1>,..."
        names_crc, _, listed = stored.decode(errors="replace").partition(";")
        checksums = listed.split(",")
        if names_crc != layout.names_crc or len(checksums) != len(layout.names):
            raise ValueError("the column names do not match their checksum")
    return _Opened(table, layout, checksums)


def _read(data: bytes, reader: Any, layout: _Layout) -> pa.Table:
    """The wanted columns the part has, as `pq.ParquetFile.read` reads them: of a flat schema, by
    their leaf indices (what `ParquetFile` would look up); of another, through `ParquetFile` itself."""
    if layout.flat:
        return reader.read_all(column_indices=layout.positions, use_threads=False)
    parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
    return parquet.read(columns=layout.present, use_threads=False)


def _same_schema(opened: Sequence[Any]) -> list[list[int]]:
    """The readable parts (`_Opened`) by the schema they were read with: nearly always one group."""
    groups: list[tuple[pa.Schema, list[int]]] = []
    for i, part in enumerate(opened):
        if not isinstance(part, _Opened):
            continue
        schema = part.table.schema
        for other, members in groups:
            if schema.equals(other):  # their stored metadata aside
                members.append(i)
                break
        else:
            groups.append((schema, [i]))
    return [members for _, members in groups]


def _batch_suspects(parts: list[_Opened]) -> set[int]:
    """Which of `parts` (read with one schema) may fail a column check: each column's values
    converted once for all of them, each part's slice checksummed. All of them when a conversion fails
    (`_checked` then finds which part and says why)."""
    table = pa.concat_tables([part.table for part in parts])
    bounds = list(itertools.accumulate((part.table.num_rows for part in parts), initial=0))
    listed = [(k, part.checksums, part.layout.positions) for k, part in enumerate(parts) if part.checksums]
    suspects: set[int] = set()
    try:
        for position, name in enumerate(parts[0].layout.present):
            column = table.column(name)
            texts = value_texts(column.to_pylist(), column.type, column.null_count > 0)
            for k, checksums, positions in listed:  # texts_checksum of each part's slice, inlined
                text = "[" + ",".join(texts[bounds[k] : bounds[k + 1]]) + "]"
                if checksums[positions[position]] != f"{crc32c(text.encode()):08x}":
                    suspects.add(k)
    except Exception:
        return set(range(len(parts)))
    return suspects


def _or_reason(step: Callable[..., pa.Table], *args: Any) -> pa.Table | str:
    try:
        return step(*args)
    except Exception as exc:  # any parse failure of these bytes is damage, not a crash
        return _reason(exc)


def _checked(part: _Opened, schema: pa.Schema, wanted: list[str]) -> pa.Table:
    """One part's columns checked against their checksums (every value converted, checksum or not),
    then `_conformed`."""
    table = part.table
    for position, name in enumerate(part.layout.present):
        actual = column_checksum(table.column(name))
        stored = part.stored_checksum(position)
        if stored is not None and stored != f"{actual:08x}":
            raise ValueError(f"column {name!r} does not match its checksum")
    return _conformed(part, schema, wanted)


def _conformed(part: _Opened, schema: pa.Schema, wanted: list[str]) -> pa.Table:
    """A part's `wanted` columns with the schema's types; a column it lacks reads as null."""
    table = part.table
    arrays = []
    for name in wanted:
        field = schema.field(name)
        if name in part.layout.present:
            column = table.column(name)
            arrays.append(column if column.type == field.type else column.cast(field.type, safe=True))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in wanted]))


def _assemble(
    opened: Sequence[_Opened | str], checked: dict[int, pa.Table | str], target: pa.Schema
) -> tuple[pa.Table, list[int | str]]:
    """The readable parts' rows in order, in one table, and each part's outcome."""
    tables: list[pa.Table] = []
    outcomes: list[int | str] = []
    for i, part in enumerate(opened):
        result = checked.get(i, part.table if isinstance(part, _Opened) else part)
        if isinstance(result, str):
            outcomes.append(result)
            continue
        tables.append(result)
        outcomes.append(result.num_rows)
    if not tables:
        return target.empty_table(), outcomes
    table = pa.concat_tables(tables)  # one schema (the stored metadata of each part aside)
    return pa.Table.from_arrays(table.combine_chunks().columns, schema=target), outcomes


def referenced_columns(expression: Any, schema: pa.Schema) -> list[str]:
    """The schema's columns a pyarrow filter expression names (from its text: pyarrow has no public
    way to list an expression's field references; a name that only appears in a string literal merely
    reads one column more)."""
    import re

    text = str(expression)
    return [
        name
        for name in schema.names
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    ]
