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
before. The schema is imposed on read: a column a part lacks reads as null.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
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
    reader can represent raises)."""
    text = json.dumps(column.to_pylist(), separators=(",", ":"), default=str, allow_nan=True)
    return crc32c(text.encode())


def _names_checksum(names: Sequence[str]) -> int:
    return crc32c(json.dumps(list(names)).encode())


def parse_part(data: bytes, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """A part's rows as a table of `columns` (default: all) with `schema`'s types. Page checksums are
    verified, and the checksum of every column read (when the part has them), so a flipped byte in
    the footer cannot silently change values. Raises ValueError with a one-line reason when the bytes
    are not a readable part."""
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
        if stored is not None:  # "<crc of the column names>;<crc of column 0>,<crc of column 1>,..."
            names_crc, _, listed = stored.decode(errors="replace").partition(";")
            checksums = listed.split(",")
            if names_crc != f"{_names_checksum(names):08x}" or len(checksums) != len(names):
                raise ValueError("the column names do not match their checksum")
        for name in present:
            actual = column_checksum(table.column(name))  # converts every value, checksum or not
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
    except Exception as exc:  # any parse failure of these bytes is damage, not a crash
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{type(exc).__name__}: {text}"[:300]) from None


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
