"""Fixity without downloads (`vidarc verify --scan checksums`): what the store says of every archive
object, against what the manifest recorded when it was written.

Every video and pack object is written with its SHA-256 as an S3 additional checksum
(`storage.put_checked`); the manifest keeps it (`object_checksum`) with the object's own sha256
(`object_sha256`) and size. On S3 a fixity pass is one HEAD per object (`ChecksumMode=ENABLED`): no GET,
so objects in GLACIER or DEEP_ARCHIVE are checked as they are, without a thaw and without retrieval
fees. A local folder has no store checksum: each file is read and hashed against `object_sha256`.

Each object ends in one state:
- "ok": the store's checksum (or the file's sha256) and size are the recorded ones;
- "changed": they differ (overwritten, truncated, replaced);
- "missing": the object is gone;
- "unreadable": the store refused the HEAD (access denied, …), with the reason;
- "unrecorded": no checksum on record (archived before checksums were kept) or none kept by the store:
  only the size could be compared (a size that differs is "changed").
The first three are failures. The manifest is streamed (projected columns, `status == 'ok'` pushed
down) and HEADs run `REQUEST_WORKERS` at a time in bounded batches, so memory does not grow with the
archive. The objects whose state is not "ok" are written to `verify/fixity-<scan id>.parquet`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.audit.reader import AuditError, iter_batches, open_manifest
from pipeline.read.manifest_layout import container_location
from pipeline.store.storage import (
    StorageError,
    describe,
    filesystem,
    full_uri,
    head_object,
    is_local,
    join,
    retrying,
    same_checksum,
    store_checksum,
    write_bytes,
)

REQUEST_WORKERS = 16
#: Objects checked per batch: bounds memory and paces progress lines.
BATCH_OBJECTS = 2_000
#: Failures named in the report before "... and N more" (every one is in the Parquet file).
NAMED = 20
FAILED_STATES = ("changed", "missing", "unreadable")
_COLUMNS = [
    "video_key", "status", "archive_uri", "member_offset", "member_length", "archive_bytes",
    "storage_class", "object_sha256", "object_checksum",
]  # fmt: skip

FIXITY_SCHEMA = pa.schema(
    [
        ("scan_id", pa.string()),
        ("archive_uri", pa.string()),
        ("video_key", pa.string()),  # the first video the manifest places in it
        ("state", pa.string()),  # ok | changed | missing | unreadable | unrecorded
        ("recorded_bytes", pa.int64()),
        ("reported_bytes", pa.int64()),
        ("recorded_checksum", pa.string()),
        ("reported_checksum", pa.string()),
        ("storage_class", pa.string()),  # as the store reports it
        ("detail", pa.string()),
        ("checked_at", pa.timestamp("us", tz="UTC")),
    ]
)


class FixityError(Exception):
    """The scan cannot run (no manifest, unreachable store): one line, exit 2."""


@dataclasses.dataclass(frozen=True)
class RecordedObject:
    """One archive object as the manifest recorded it."""

    path: str
    uri: str
    video_key: str
    size: int | None  # None: a pack (rows hold its members' lengths, not its size)
    sha256: str | None
    checksum: str | None


@dataclasses.dataclass
class FixityReport:
    scan_id: str
    objects: int = 0
    by_state: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    failures_total: int = 0
    requests: int = 0  # HEADs (S3) or files hashed (local)
    bytes_hashed: int = 0
    output_uri: str | None = None
    damaged_parts: list[str] = dataclasses.field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures_total and not self.damaged_parts

    def to_json(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "ok": self.ok,
            "objects": self.objects,
            "by_state": dict(sorted(self.by_state.items())),
            "failures": self.failures,
            "failures_total": self.failures_total,
            "damaged_manifest_parts": self.damaged_parts,
            "store_requests": self.requests,
            "bytes_hashed": self.bytes_hashed,
            "rows_uri": self.output_uri,
            "wall_seconds": round(self.wall_seconds, 3),
        }


def scan_checksums(
    out: str,
    *,
    endpoint_url: str | None = None,
    progress: Callable[[str], None] | None = None,
    scan_id: str | None = None,
) -> FixityReport:
    """Check every archive object of `out` against its recorded checksum and size (module docstring)."""
    started = time.monotonic()
    scan_id = scan_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    try:
        fs, root = filesystem(out, endpoint_url=endpoint_url)
        manifest = open_manifest(out, endpoint_url=endpoint_url)
    except (AuditError, StorageError) as exc:
        raise FixityError(str(exc).splitlines()[0]) from None
    report = FixityReport(scan_id)
    problems: list[dict[str, Any]] = []
    local = is_local(fs)
    with ThreadPoolExecutor(REQUEST_WORKERS) as pool:
        try:
            for batch in _batches(_recorded_objects(fs, root, manifest), BATCH_OBJECTS):
                for record, row in zip(batch, pool.map(lambda r: _check(fs, r, local), batch), strict=True):
                    report.objects += 1
                    report.requests += 1
                    report.bytes_hashed += row.pop("_hashed", 0)
                    report.by_state[row["state"]] = report.by_state.get(row["state"], 0) + 1
                    if row["state"] != "ok":
                        problems.append(dict(row, scan_id=scan_id, checked_at=_now()))
                    if row["state"] in FAILED_STATES:
                        report.failures_total += 1
                        if len(report.failures) < NAMED:
                            report.failures.append(f"{record.uri}: {row['state']} ({row['detail']})")
                if progress is not None:
                    progress(f"fixity: {report.objects} objects checked, {report.failures_total} failed")
        except AuditError as exc:
            raise FixityError(str(exc).splitlines()[0]) from None
    report.damaged_parts = [part.line() for part in manifest.damaged]
    if problems:
        path = join(root, "verify", f"fixity-{scan_id}.parquet")
        try:
            table = pa.Table.from_pylist(problems, schema=FIXITY_SCHEMA)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            write_bytes(fs, path, sink.getvalue().to_pybytes())
            report.output_uri = full_uri(fs, path)
        except Exception as exc:  # the findings stand; their record could not be stored
            report.failures.append(f"fixity rows not written: {describe(exc, full_uri(fs, path))}")
            report.failures_total += 1
    report.wall_seconds = time.monotonic() - started
    return report


def _recorded_objects(fs: Any, root: str, manifest: Any) -> Iterator[RecordedObject]:
    """Each archived object once, in manifest order. A single-video object's rows come together; a
    pack's members may be spread over a key-sorted file, so pack paths are remembered (packs are few:
    each holds many videos)."""
    last_path: str | None = None
    packs_seen: set[str] = set()
    for batch in iter_batches(manifest, _COLUMNS, pc.field("status") == "ok"):
        for row in batch.to_pylist():
            path, member = container_location(fs, root, row)
            if path == last_path or path in packs_seen:
                continue
            last_path = path
            if member is not None:
                packs_seen.add(path)
            yield RecordedObject(
                path=path,
                uri=full_uri(fs, path),
                video_key=row["video_key"],
                size=None if member is not None else row.get("archive_bytes"),
                sha256=row.get("object_sha256"),
                checksum=row.get("object_checksum"),
            )


def _batches(items: Iterator[RecordedObject], size: int) -> Iterator[list[RecordedObject]]:
    batch: list[RecordedObject] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check(fs: Any, record: RecordedObject, local: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "archive_uri": record.uri,
        "video_key": record.video_key,
        "recorded_bytes": record.size,
        "recorded_checksum": record.checksum or (f"sha256:{record.sha256}" if record.sha256 else None),
    }
    try:
        if local:
            return _check_file(record, row)
        head = head_object(fs, record.path)
    except Exception as exc:
        return dict(row, state="unreadable", detail=describe(exc, record.uri))
    if head is None:
        return dict(row, state="missing", detail="no such object")
    reported = store_checksum(head)
    size = int(head.get("ContentLength") or 0)
    row.update(
        reported_bytes=size, reported_checksum=reported, storage_class=head.get("StorageClass") or "STANDARD"
    )
    if record.size is not None and size != record.size:
        return dict(row, state="changed", detail=f"{size} bytes, the manifest records {record.size}")
    if record.checksum is None or reported is None:
        why = "no checksum on record" if record.checksum is None else "the store reports no SHA-256"
        return dict(row, state="unrecorded", detail=f"{why}; size checked only")
    if not same_checksum(record.checksum, reported):
        return dict(
            row, state="changed", detail=f"store checksum {reported}, the manifest records {record.checksum}"
        )
    return dict(row, state="ok", detail=None)


def _check_file(record: RecordedObject, row: dict[str, Any]) -> dict[str, Any]:
    """A local object: its size and its sha256, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(record.path, "rb") as handle:
            while block := retrying(record.uri, lambda: handle.read(8 << 20)):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        return dict(row, state="missing", detail="no such file")
    row.update(reported_bytes=size, reported_checksum=f"sha256:{digest.hexdigest()}", _hashed=size)
    if record.size is not None and size != record.size:
        return dict(row, state="changed", detail=f"{size} bytes, the manifest records {record.size}")
    if record.sha256 is None:
        return dict(row, state="unrecorded", detail="no sha256 on record; size checked only")
    if digest.hexdigest() != record.sha256:
        return dict(row, state="changed", detail="its sha256 differs from the manifest's")
    return dict(row, state="ok", detail=None)


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)
