"""Reading an archive's manifest, verify and reference parts for the audit, part by part (local or S3).

The manifest is resolved by `pipeline.read.manifest_layout` (per-video parts, packs and compacted files,
each row once, also while a compaction runs).

Parts are read through `pipeline.read.manifest.ArchiveParts` (the reader ls, restore and verify share):
each part on its own, with page and column checksums verified, so a damaged part costs only its own
rows and is reported by name (`parts.damaged`). A local folder and `s3://bucket/prefix` (with
`--endpoint-url` for S3-compatible servers) behave alike. The manifest schema is imposed on read:
parts written before a column was appended read it as null.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.read.manifest import ArchiveParts, PartsError
from pipeline.store import storage


class AuditError(Exception):
    """The archive cannot be audited (missing manifest, unreachable store, bad filter): one line."""


def _parts(out: str, folder: str, endpoint_url: str | None, required: bool) -> ArchiveParts | None:
    fs, root = storage.filesystem(out, endpoint_url=endpoint_url)
    try:
        storage.check_reachable(fs, root, out, must_exist=True)
        parts = ArchiveParts(out, folder, endpoint_url=endpoint_url)
    except (storage.StorageError, PartsError) as exc:
        raise AuditError(str(exc)) from None
    if not len(parts):
        if required:
            raise AuditError(
                f"{out}: no {folder} parts (expected {folder}/*.parquet); is this a vidarc archive?"
            )
        return None
    return parts


def open_manifest(out: str, *, endpoint_url: str | None = None) -> ArchiveParts:
    """The manifest parts of archive `out` (AuditError when there are none)."""
    parts = _parts(out, "manifest", endpoint_url, required=True)
    assert parts is not None
    return parts


def open_verify(out: str, *, endpoint_url: str | None = None) -> ArchiveParts | None:
    """Verify results of archive `out`, or None when it was never verified."""
    return _parts(out, "verify", endpoint_url, required=False)


def open_reference(out: str, *, endpoint_url: str | None = None) -> ArchiveParts | None:
    """The classic reference's sampled rows of archive `out`, or None when it has none."""
    return _parts(out, "reference", endpoint_url, required=False)


def iter_batches(
    parts: ArchiveParts,
    columns: Sequence[str],
    filter_expression: ds.Expression | None = None,
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` matching the filter, part by part (damaged parts are skipped and
    collected in `parts.damaged`); memory stays bounded by a few parts."""
    try:
        for table in parts.tables(columns, filter_expression):
            for batch in table.to_batches(max_chunksize=batch_size):
                if batch.num_rows:
                    yield batch
    except PartsError as exc:
        raise AuditError(f"cannot read the manifest: {exc}") from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:  # e.g. a filter
        raise AuditError(f"cannot filter the manifest ({type(exc).__name__}: {exc})") from None
