"""Reading an archive's manifest and verify results as streamed Parquet datasets (local or S3).

Everything goes through pyarrow datasets over the fsspec filesystem from `pipeline.storage`, so a
local folder and `s3://bucket/prefix` (with `--endpoint-url` for S3-compatible servers) behave alike.
The manifest schema is imposed on read: parts written before a column was appended read it as null.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline import storage
from pipeline.schema import MANIFEST_SCHEMA, REFERENCE_SCHEMA, VERIFY_SCHEMA


class AuditError(Exception):
    """The archive cannot be audited (missing manifest, unreachable store, bad filter): one line."""


def _dataset(
    out: str, folder: str, schema: pa.Schema, endpoint_url: str | None, required: bool
) -> ds.Dataset | None:
    fs, root = storage.filesystem(out, endpoint_url=endpoint_url)
    try:
        storage.check_reachable(fs, root, out, must_exist=True)
    except storage.StorageError as exc:
        raise AuditError(str(exc)) from None
    path = storage.join(root, folder)
    try:
        files = [f for f in fs.find(path) if f.endswith(".parquet")] if fs.exists(path) else []
    except Exception as exc:
        raise AuditError(
            f"{out}: cannot list {folder}/ ({type(exc).__name__}: {storage.redact(str(exc))})"
        ) from None
    if not files:
        if required:
            raise AuditError(
                f"{out}: no {folder} parts (expected {folder}/*.parquet); is this a vidarc archive?"
            )
        return None
    try:
        return ds.dataset(sorted(files), schema=schema, format="parquet", filesystem=fs)
    except Exception as exc:
        raise AuditError(
            f"{out}: cannot read {folder} ({type(exc).__name__}: {storage.redact(str(exc))})"
        ) from None


def open_manifest(out: str, *, endpoint_url: str | None = None) -> ds.Dataset:
    """The manifest of archive `out` (AuditError when there is none)."""
    return _dataset(out, "manifest", MANIFEST_SCHEMA, endpoint_url, required=True)


def open_verify(out: str, *, endpoint_url: str | None = None) -> ds.Dataset | None:
    """Verify results of archive `out`, or None when it was never verified."""
    return _dataset(out, "verify", VERIFY_SCHEMA, endpoint_url, required=False)


def open_reference(out: str, *, endpoint_url: str | None = None) -> ds.Dataset | None:
    """The classic reference's sampled rows of archive `out`, or None when it has none."""
    return _dataset(out, "reference", REFERENCE_SCHEMA, endpoint_url, required=False)


def iter_batches(
    dataset: ds.Dataset,
    columns: Sequence[str],
    filter_expression: ds.Expression | None = None,
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` matching the filter; memory stays bounded by the batch size."""
    try:
        scanner = dataset.scanner(columns=list(columns), filter=filter_expression, batch_size=batch_size)
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch
    except (OSError, pa.ArrowInvalid) as exc:
        raise AuditError(
            f"cannot read the manifest ({type(exc).__name__}: {storage.redact(str(exc))})"
        ) from None
