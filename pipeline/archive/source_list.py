"""Input lists: `vidarc archive LIST OUT` with LIST a Parquet, CSV or JSON-lines file of source URIs.

This is how ML datasets are published (WebVid, Panda-70M: a table of URLs with captions). The list is
read in batches (never whole), so ten million rows cost one batch of memory. Columns, by name:

    uri                 the source (also accepted: source_uri, url, path). Required. A relative path
                        is taken relative to the list's own folder (local or s3://).
    size                bytes (optional). With it, the video key is the same hash of (URI, size) a
                        folder listing uses; without it, the URI alone names the video and the probe
                        reads the size.
    caption, license, split
                        optional text, carried into every manifest row of the video and its container
                        header (`source_metadata`).
    target_kbps, target_bpp, quality
                        optional per-video rate target (at most one per row; an empty cell means the
                        job's target). A row whose target is invalid becomes a failed video.

Other columns are ignored. A row without a URI is skipped and counted (`rows_without_uri`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from codec.base import RateTarget
from pipeline.store.storage import filesystem, full_uri

LIST_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json"}
URI_COLUMNS = ("uri", "source_uri", "url", "path")
METADATA_COLUMNS = ("caption", "license", "split")
TARGET_COLUMNS = {"target_kbps": "kbps", "target_bpp": "bpp", "quality": "quality"}
BATCH_ROWS = 8192
COLUMN_TYPES: dict[str, pa.DataType] = {
    **{name: pa.string() for name in (*URI_COLUMNS, *METADATA_COLUMNS)},
    "size": pa.int64(),
    **{name: pa.float64() for name in TARGET_COLUMNS},
}


class SourceListError(ValueError):
    """The list cannot be used (unknown format, no URI column, unreadable): one line."""


@dataclasses.dataclass(frozen=True)
class ListedSource:
    """One row of an input list."""

    uri: str
    size: int | None
    metadata: dict[str, str]
    target: RateTarget | None
    error: str | None  # a problem with this row (e.g. an invalid target): the video fails


def list_format(uri: str) -> str | None:
    """'parquet', 'csv' or 'json' when `uri` names an input list (by its suffix), else None."""
    name = uri.rsplit("/", 1)[-1].lower()
    for suffix, kind in LIST_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


@dataclasses.dataclass
class ListStats:
    rows: int = 0
    rows_without_uri: int = 0


class SourceList:
    """An opened list: `columns` checked up front, rows streamed by `rows()`."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None) -> None:
        self.uri = uri
        self.kind = list_format(uri)
        if self.kind is None:
            raise SourceListError(f"{uri}: not an input list (expected .parquet, .csv or .jsonl)")
        self.endpoint_url = endpoint_url
        self.fs, self.path = filesystem(uri, endpoint_url=endpoint_url)
        self.base = full_uri(self.fs, self.path.rsplit("/", 1)[0])
        self.stats = ListStats()
        self.columns = self._columns()
        self.uri_column = next((c for c in URI_COLUMNS if c in self.columns), None)
        if self.uri_column is None:
            raise SourceListError(
                f"{uri}: no URI column (expected one of {', '.join(URI_COLUMNS)}; found {', '.join(self.columns)})"
            )

    @property
    def has_targets(self) -> bool:
        return any(name in self.columns for name in TARGET_COLUMNS)

    def _columns(self) -> list[str]:
        try:
            batches = self._batches()
            first = next(batches, None)
            if first is None:
                return []
            return list(first.schema.names)
        except SourceListError:
            raise
        except Exception as exc:
            raise SourceListError(f"{self.uri}: cannot read the list ({type(exc).__name__}: {exc})") from None

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """The list's record batches (`BATCH_ROWS` rows or one block each), columns typed as
        `COLUMN_TYPES` says for the ones we use."""
        handle = self.fs.open(self.path, "rb")
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(handle)
                wanted = [n for n in parquet.schema_arrow.names if n in COLUMN_TYPES]
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                    yield _typed(batch)
            elif self.kind == "csv":
                import pyarrow.csv as csv

                header = csv.open_csv(handle, read_options=csv.ReadOptions(block_size=1 << 16)).schema.names
                handle.seek(0)
                reader = csv.open_csv(
                    handle,
                    read_options=csv.ReadOptions(block_size=1 << 20),
                    convert_options=csv.ConvertOptions(
                        column_types={n: t for n, t in COLUMN_TYPES.items() if n in header},
                        include_columns=[n for n in header if n in COLUMN_TYPES],
                        strings_can_be_null=True,
                    ),
                )
                for batch in reader:
                    yield batch
            else:
                import pyarrow.json as pajson

                reader = pajson.open_json(
                    handle,
                    read_options=pajson.ReadOptions(block_size=1 << 20),
                    parse_options=pajson.ParseOptions(
                        explicit_schema=pa.schema(list(COLUMN_TYPES.items())),
                        unexpected_field_behavior="ignore",
                    ),
                )
                for batch in reader:
                    yield _present(batch)
        finally:
            handle.close()

    def rows(self) -> Iterator[ListedSource]:
        """Every row with a URI, in list order."""
        try:
            for batch in self._batches():
                yield from self._rows(batch)
        except SourceListError:
            raise
        except Exception as exc:
            raise SourceListError(
                f"{self.uri}: cannot read the list after row {self.stats.rows} ({type(exc).__name__}: {exc})"
            ) from None

    def _rows(self, batch: pa.RecordBatch) -> Iterator[ListedSource]:
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        uris = columns.get(self.uri_column) or [None] * batch.num_rows
        for i, raw in enumerate(uris):
            self.stats.rows += 1
            text = (raw or "").strip()
            if not text:
                self.stats.rows_without_uri += 1
                continue
            metadata = {
                n: str(columns[n][i]) for n in METADATA_COLUMNS if n in columns and columns[n][i] is not None
            }
            size = columns["size"][i] if "size" in columns else None
            target, error = _target({n: columns[n][i] for n in TARGET_COLUMNS if n in columns})
            if size is not None and size < 0:
                size, error = None, error or f"size {size} is negative"
            uri = self._resolve(text)
            if error:
                error = f"{uri}: {self.uri} row {self.stats.rows}: {error}"
            yield ListedSource(uri=uri, size=size, metadata=metadata, target=target, error=error)

    def _resolve(self, text: str) -> str:
        if "://" in text or text.startswith("/"):
            return text
        return f"{self.base.rstrip('/')}/{text}"


def _typed(batch: pa.RecordBatch) -> pa.RecordBatch:
    arrays, names = [], []
    for name in batch.schema.names:
        column = batch.column(name)
        wanted = COLUMN_TYPES.get(name)
        if wanted is None:
            continue
        arrays.append(column if column.type == wanted else column.cast(wanted))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _present(batch: pa.RecordBatch) -> pa.RecordBatch:
    """JSON batches carry every schema column; keep the ones some row had (not all null)."""
    keep = [n for n in batch.schema.names if batch.column(n).null_count < batch.num_rows]
    return batch.select(keep)


def _target(values: dict[str, Any]) -> tuple[RateTarget | None, str | None]:
    given = [(TARGET_COLUMNS[n], v) for n, v in values.items() if v is not None and not _nan(v)]
    if not given:
        return None, None
    if len(given) > 1:
        return None, f"give at most one of {', '.join(TARGET_COLUMNS)} per row"
    kind, value = given[0]
    try:
        return RateTarget(kind, float(value)), None  # type: ignore[arg-type]
    except ValueError as exc:
        return None, str(exc)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
