"""`vidarc compact OUT`: merge the per-video manifest parts of finished videos into large Parquet files.

A ten-million-video archive has ten million `manifest/part-*.parquet` objects; every `ls`, `audit` and
`verify` opens each one. Compaction writes their rows into `manifest/compacted-<stamp>.parquet` files
of about `target_bytes` (128 MB), then deletes the parts it absorbed. Readers resolve what to read with
`pipeline.manifest_layout`, so each row is seen exactly once before, during and after a compaction:

- Only parts of *done* videos (a done marker, or a committed pack) are absorbed: those are never
  rewritten by an archive run. Failed and in-progress videos keep their parts.
- Each compacted file is written atomically (it appears whole or not at all) and records, per row,
  which part it came from and the sha256 of that part's bytes. Parts are deleted only after it is in
  place; a crash in between leaves parts that readers recognise as covered (same name, same bytes)
  and skip, and the next compaction deletes them. A crash before leaves everything as it was.
- A part rewritten after being compacted (its video redone) wins over the compacted copy; absorbing
  it later records, in the new file's metadata, which keys it `replaces` in the older file.
- Idempotent: a second run finds nothing new to absorb (it only removes leftovers).
- One compaction at a time per archive: `manifest/_compaction.lock` (refused while a fresh one exists).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.keyset import KeySet
from pipeline.manifest import parse_part, statistics_columns
from pipeline.manifest_layout import (
    COMPACTED_PREFIX,
    COMPACTION_KEY,
    SOURCE_PART,
    SOURCE_SHA256,
    ManifestPlan,
    pack_id,
    part_key,
    plan_manifest,
    prefetched,
    sha256_hex,
)
from pipeline.runinfo import marker_keyset, pack_path
from pipeline.schema import MANIFEST_SCHEMA
from pipeline.storage import StorageError, check_reachable, filesystem, full_uri, join, open_atomic, redact

TARGET_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 65_536
LOCK_NAME = "_compaction.lock"
LOCK_STALE_SECONDS = 6 * 3600
COMPACTED_SCHEMA = pa.schema(
    [*MANIFEST_SCHEMA, pa.field(SOURCE_PART, pa.string()), pa.field(SOURCE_SHA256, pa.string())]
)


class CompactError(Exception):
    """The archive cannot be compacted (unreachable, not an archive, locked): one line, exit 2."""


@dataclasses.dataclass
class CompactReport:
    files_written: list[str] = dataclasses.field(default_factory=list)
    parts_absorbed: int = 0
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    leftovers_removed: int = 0  # parts a crashed compaction had absorbed but not deleted
    parts_left: int = 0  # failed, in-progress or unreadable videos' parts, kept as they are
    orphan_packs_removed: int = 0
    damaged: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"compacted {self.parts_absorbed} parts ({self.rows} rows, {self.bytes_in} B) into "
            f"{len(self.files_written)} files ({self.bytes_out} B); {self.leftovers_removed} leftover parts "
            f"removed; {self.parts_left} parts kept (videos not done); {self.seconds:.1f} s"
        )


def compact(
    out: str,
    *,
    endpoint_url: str | None = None,
    target_bytes: int = TARGET_BYTES,
    orphan_hours: float = 24.0,
    force: bool = False,
) -> CompactReport:
    """Compact archive `out`'s manifest (see the module docstring); returns what was done."""
    started = time.perf_counter()
    try:
        fs, root = filesystem(out, endpoint_url=endpoint_url)
        check_reachable(fs, root, out, must_exist=True)
    except StorageError as exc:
        raise CompactError(str(exc)) from None
    if not fs.exists(join(root, "manifest")):
        raise CompactError(f"{out}: no manifest/ folder; is this a vidarc archive?")
    report = CompactReport()
    with _lock(fs, root, out, force):
        plan = plan_manifest(fs, root)
        report.damaged += [f"{full_uri(fs, path)}: {reason}" for path, reason in plan.damaged]
        _remove(fs, plan.covered)
        report.leftovers_removed = len(plan.covered)
        done = marker_keyset(fs, root, "done")
        eligible, kept = _eligible(plan, done)
        report.parts_left = kept
        replaces = _replaced_keys(fs, plan, eligible)
        keys_of = {path: keys for path, _, keys in eligible}
        parts = prefetched(fs, [path for path, _, _ in eligible])  # a few in flight, never all
        while _write_file(fs, root, plan, parts, keys_of, replaces, report, target_bytes):
            pass
        report.orphan_packs_removed = _remove_orphans(fs, root, plan, orphan_hours)
    report.seconds = time.perf_counter() - started
    return report


def _eligible(plan: ManifestPlan, done: KeySet) -> tuple[list[tuple[str, int, list[str]]], int]:
    """(path, size, video keys) of the parts to absorb: done videos' parts and committed packs."""
    singles = [(path, size, part_key(path.rsplit("/", 1)[-1])) for path, size in plan.parts]
    keys = [key for _, _, key in singles if key is not None]
    is_done = dict(zip(keys, done.contains_many(keys).tolist(), strict=True)) if keys else {}
    eligible, kept = [], 0
    for path, size, key in singles:
        name = path.rsplit("/", 1)[-1]
        if key is not None:
            if is_done.get(key):
                eligible.append((path, size, [key]))
            else:
                kept += 1
        elif pack_id(name) in plan.pack_members:
            eligible.append((path, size, plan.pack_members[pack_id(name)]))
        else:
            kept += 1  # a file of an earlier layout: left alone
    return eligible, kept


def _replaced_keys(
    fs: Any, plan: ManifestPlan, eligible: list[tuple[str, int, list[str]]]
) -> dict[str, dict[str, list[str]]]:
    """video key -> {older compacted file: [key]} for eligible keys that older compacted files hold."""
    if not plan.compacted or not eligible:
        return {}
    wanted = KeySet.of(k for _, _, keys in eligible for k in keys)
    found: dict[str, dict[str, list[str]]] = {}
    for compacted in plan.compacted:
        with fs.open(compacted.path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["video_key"], batch_size=65536):
                keys = batch.column(0).to_pylist()
                for key, hit in zip(keys, wanted.contains_many(keys), strict=True):
                    if hit:
                        found.setdefault(key, {}).setdefault(compacted.name, [key])
    return found


def _write_file(
    fs: Any,
    root: str,
    plan: ManifestPlan,
    parts: Iterator[tuple[str, bytes | None]],
    keys_of: dict[str, list[str]],
    replaces: dict[str, dict[str, list[str]]],
    report: CompactReport,
    target_bytes: int,
) -> bool:
    """One compacted file of about `target_bytes` from the next parts, written atomically; then those
    parts are deleted. False once no part is left."""
    name = (
        f"{COMPACTED_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}.parquet"
    )
    path = join(root, "manifest", name)
    absorbed: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = pending_bytes = 0
    metadata: dict[str, list[str]] = {}
    rows = 0
    exhausted = True
    with open_atomic(fs, path) as handle:
        writer = pq.ParquetWriter(
            handle,
            COMPACTED_SCHEMA,
            compression="zstd",
            write_page_checksum=True,
            write_statistics=statistics_columns(COMPACTED_SCHEMA),
        )
        for part_path, data in parts:
            if data is None:  # replaced since the listing (a failed video redone): not ours
                continue
            table = _absorb(fs, plan, part_path, data, report)
            if table is None:
                continue
            for key in keys_of.get(part_path, ()):
                for older, listed in replaces.get(key, {}).items():
                    metadata.setdefault(older, []).extend(listed)
            pending.append(table)
            pending_rows += table.num_rows  # running totals: summing over `pending` is quadratic
            pending_bytes += table.get_total_buffer_size()
            rows += table.num_rows
            absorbed.append(part_path)
            report.bytes_in += len(data)
            if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= target_bytes:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                pending, pending_rows, pending_bytes = [], 0, 0
                if handle.tell() >= target_bytes:  # within one row group of the target
                    exhausted = False
                    break
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
        writer.add_key_value_metadata({COMPACTION_KEY: json.dumps({"replaces": metadata})})
        writer.close()
    if not absorbed:
        _remove(fs, [path])
        return not exhausted
    report.files_written.append(full_uri(fs, path))
    report.bytes_out += int(fs.size(path))
    report.parts_absorbed += len(absorbed)
    report.rows += rows
    _remove(fs, absorbed)  # only now: a crash before this leaves covered parts, never lost rows
    return not exhausted


def _absorb(
    fs: Any, plan: ManifestPlan, part_path: str, data: bytes, report: CompactReport
) -> pa.Table | None:
    """A part's rows in the compacted schema (with where they came from), or None if unreadable.
    Checked as readers check it (`manifest.parse_part`: page and column checksums), so damage that
    readers would name is never absorbed (and its part deleted) as if it were good rows."""
    try:
        table = parse_part(data, MANIFEST_SCHEMA)
    except ValueError as exc:  # a damaged part stays where it is, for readers to name
        report.damaged.append(f"{full_uri(fs, part_path)}: {exc}")
        return None
    drop = plan.part_drops.get(part_path)
    if drop:  # rows readers leave out (a video packed twice counts in its latest pack)
        keep = pc.invert(pc.is_in(table.column("video_key"), value_set=pa.array(sorted(drop))))
        table = table.filter(keep)
    source = part_path.rsplit("/", 1)[-1]
    table = table.append_column(SOURCE_PART, pa.array([source] * table.num_rows, pa.string()))
    return table.append_column(SOURCE_SHA256, pa.array([sha256_hex(data)] * table.num_rows, pa.string()))


def _remove(fs: Any, paths: list[str]) -> None:
    if not paths:
        return
    for start in range(0, len(paths), 1000):  # S3 deletes up to 1000 keys per request
        chunk = paths[start : start + 1000]
        try:
            fs.rm(chunk)
        except FileNotFoundError:
            for path in chunk:
                if fs.exists(path):
                    fs.rm_file(path)


def _remove_orphans(fs: Any, root: str, plan: ManifestPlan, hours: float) -> int:
    """Pack parts and objects of pack commits that never wrote their marker, older than `hours`."""
    removed = 0
    now = time.time()
    for part in plan.orphan_packs:
        ident = pack_id(part.rsplit("/", 1)[-1])
        if ident is None or _age_seconds(fs, part, now) < hours * 3600:
            continue
        for path in (part, pack_path(root, ident)):
            if fs.exists(path):
                fs.rm_file(path)
        removed += 1
    return removed


def _age_seconds(fs: Any, path: str, now: float) -> float:
    info = fs.info(path)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if stamp is None:
        return 0.0
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    return now - float(stamp)


class _lock:
    """`manifest/_compaction.lock` for the duration of a compaction (stale after 6 h, or `force`)."""

    def __init__(self, fs: Any, root: str, out: str, force: bool) -> None:
        self.fs, self.path, self.out, self.force = fs, join(root, "manifest", LOCK_NAME), out, force
        self.token = secrets.token_hex(8)

    def __enter__(self) -> _lock:
        if self.fs.exists(self.path) and not self.force:
            try:
                held = json.loads(self.fs.cat_file(self.path))
                age = time.time() - float(held.get("started", 0))
            except (ValueError, TypeError, FileNotFoundError):
                held, age = {}, LOCK_STALE_SECONDS
            if age < LOCK_STALE_SECONDS:
                raise CompactError(
                    f"{self.out}: another compaction holds manifest/{LOCK_NAME} (started {age:.0f} s ago on "
                    f"{redact(str(held.get('host')))}); wait for it, or pass --force if it died"
                )
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "token": self.token,
        }
        with open_atomic(self.fs, self.path) as handle:
            handle.write(json.dumps(record).encode())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if json.loads(self.fs.cat_file(self.path)).get("token") == self.token:
                self.fs.rm_file(self.path)
        except (FileNotFoundError, ValueError):
            pass
