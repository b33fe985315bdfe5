"""Proving an archive: decode a seeded sample of GOPs from the stored bytes and check them.

Two layers, both reading the objects afresh (ranged GETs, no cache):

1. Integrity of every container (cheap, no decoding). By default (`scan="auto"`) every byte of every
   container is checked (one ranged read per GOP) when the archive is small (≤ `FULL_SCAN_BYTES` in all): preamble, every GOP
   CRC32C, every attachment CRC, the footer CRC, the reserved fields, and that GOPs, attachments and
   footer tile the object with no unchecked gap — so a corrupted byte anywhere is caught. Larger
   archives check each container's footer (index) CRC and its attachments' CRCs (the audio is small
   next to the video, and restore refuses a damaged one) — one ranged read per video, plus one per
   attachment — unless
   `scan="full"`; `scan="index"` forces the cheap check. The index must also agree with the manifest
   (offset, length, CRC per GOP), and every done marker must have its container and manifest rows.
2. The sample: for each sampled GOP, one ranged read of the container's index and one of the payload
   (CRC-checked), a decode with the decoder the header asks for (`codec.registry.decoder_for`: its
   codec, `decoder_options` and weights; built once per such key; other weights are refused), and the
   **decode proof** against what the encoder recorded (`pipeline/format/digests.py`), with no source needed:

   - *exact*: the decoded frames' sha256 equals the manifest's `recon_sha256`;
   - *drift*: the exact part (`Codec.exact_digest`: GLVC's latent symbols, GVC's codebook entries and
     stills) equals `exact_sha256` but the pixels do not — a neural pixel decode on another device
     class or vector unit — and the worst frame's luma-fingerprint PSNR is at least
     `DRIFT_LIMIT_DB`; the row records that PSNR (or `fingerprint_identical`, PSNR null, when the
     fingerprints agree cell for cell: pixels that differ by less than a cell mean shows);
   - *exact-part*: the exact part equals `exact_sha256`, and the encoder recorded no pixels for this
     GOP (archived with `--fingerprint-every N`: it skipped the neural pixel decode of the other GOPs),
     so the pixels cannot be judged; by default every GOP has its fingerprint;
   - *mismatch* (a failure): the exact part differs, or the fingerprint PSNR is below the limit.

   Archives made before these digests existed get `decode_check` null (CRC and decoding only).
   With `against_source`, the PSNR of the decoded frames against the source is also measured when the
   source is still readable and unchanged in size, and must match the manifest's within
   `TOLERANCE_DB` (0.05 dB), or `CROSS_DEVICE_TOLERANCE_DB` (0.5 dB) when a neural codec decodes on
   another device class than it encoded on.

Where decoding runs: on `device`. "cuda" decodes as Ray tasks on GPU workers when a cluster with GPUs is
up (the head needs no CUDA: a KubeRay RayJob's head is CPU-only), in-process when this machine has
CUDA, else on CPU with a note (a neural pixel decode may then drift, which the proof reports). "auto"
picks cuda where it exists. On CPU, more than `RAY_MIN_GOPS` sampled GOPs decode as Ray tasks when Ray
is initialised (batches grouped by container, so each task reads an index once).

The default sample (neither fraction nor count): every GOP of an archive up to `DEFAULT_ALL_GOPS` GOPs,
else a seeded sample of that many.

A caller may ask for progress lines (`progress`; `pipeline/tools/verify_progress.py`): manifest rows read and
containers checked when slow, the decode GOP by GOP (Ray tasks count theirs on a small actor). Every
verify ends by replacing `verify/last.json` with its outcome (`pipeline/tools/verify_record.py`), which the
archive's closing verify reads to skip a verify that could tell nothing new.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from codec.errors import CodecError
from pipeline.format.container import (
    PREAMBLE,
    TRAILER,
    ContainerError,
    ContainerIndex,
    read_attachment,
    read_gop,
    read_index,
)
from pipeline.format.digests import DRIFT_LIMIT_DB, FingerprintError, fingerprint_psnr, frames_sha256
from pipeline.format.pack import read_pack_index
from pipeline.format.runinfo import utc_now
from pipeline.format.schema import VERIFY_SCHEMA
from pipeline.read.manifest import ArchiveParts, DamagedPart, PartsError, parquet_bytes
from pipeline.read.manifest_layout import container_location, done_keys
from pipeline.read.manifest_videos import rows_of_videos
from pipeline.read.ordered import ordered_map
from pipeline.read.reader import ArchiveReader, CountingReader, decoder_key, header_decoder
from pipeline.store import thaw
from pipeline.store.listing import iter_objects
from pipeline.store.storage import (
    StorageError,
    check_reachable,
    describe,
    filesystem,
    full_uri,
    is_local,
    join,
    redact,
    write_bytes,
)
from pipeline.store.storage_class import is_cold
from pipeline.tools.verify_progress import INTERVAL_SECONDS, VerifyProgress
from pipeline.tools.verify_record import write_record
from pipeline.tools.verify_sample import SeededSample

TOLERANCE_DB = 0.05
CROSS_DEVICE_TOLERANCE_DB = 0.5
CLASSIC_CODECS = frozenset({"x264", "x265", "av1"})
FULL_SCAN_BYTES = 1 << 30
#: A container (or pack member) this small is checked in full from one GET, not a ranged GET per GOP:
#: on S3 a request costs far more than its bytes (a 14 KB object was 8 requests).
WHOLE_READ_BYTES = 8 << 20
#: Containers checked at once: their reads are storage round trips, not CPU (`fixity.REQUEST_WORKERS`).
CHECK_WORKERS = 8
DEFAULT_ALL_GOPS = 200
RAY_MIN_GOPS = 8
GOPS_PER_TASK = 16
MANIFEST_COLUMNS = [
    "run_id",
    "video_key",
    "source_uri",
    "source_bytes",
    "gop_index",
    "first_frame",
    "frame_count",
    "codec",
    "model_sha256",
    "device",
    "archive_uri",
    "offset",
    "length",
    "crc32c",
    "psnr",
    "codec_params",
    "status",
    "recon_sha256",
    "exact_sha256",
]


class VerifyError(Exception):
    """Verify cannot run (bad options, no manifest, unreachable storage): one line, exit 2."""


@dataclasses.dataclass
class VerifyReport:
    verify_run_id: str
    rows: list[dict[str, Any]]
    failures: list[str]
    warnings: list[str]
    containers_checked: int
    scan: str
    gops_total: int
    output_uri: str | None
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def gops_decoded(self) -> int:
        """Sampled GOPs whose decode was tried (read and decoded, or failed on the way)."""
        return sum(1 for r in self.rows if r.get("decode_ok") is not None)

    def checks(self) -> dict[str, Any]:
        """Counts of decode checks (exact / drift / exact-part / mismatch / unproven) and the worst drift:
        the lowest finite fingerprint PSNR of the drift rows (None when there is none), and how many
        drifted with a fingerprint identical to the encoder's (their PSNR is infinite, stored as null)."""
        counts = {"exact": 0, "drift": 0, "exact-part": 0, "mismatch": 0, "unproven": 0}
        for row in self.rows:
            if row.get("decode_ok") is not None:
                counts[row.get("decode_check") or "unproven"] += 1
        drift = [r for r in self.rows if r.get("decode_check") == "drift"]
        measured = [r["fingerprint_psnr"] for r in drift if r.get("fingerprint_psnr") is not None]
        return {
            **counts,
            "worst_drift_db": min(measured) if measured else None,
            "drift_fingerprint_identical": sum(1 for r in drift if r.get("fingerprint_identical")),
        }

    def to_json(self) -> dict[str, Any]:
        """The report for scripts (`vidarc verify --json`, the archive's `summary.json`): counts, checks,
        every failure and note as one line, and the failed rows (GOPs, containers, damaged manifest
        parts); every row is in the Parquet part at `rows_uri`. No number is infinite (strict JSON)."""
        failed = [
            {key: row.get(key) for key in _FAILED_ROW_FIELDS}
            for row in self.rows
            if row.get("status") == "failed"
        ]
        return {
            "verify_run_id": self.verify_run_id,
            "ok": self.ok,
            "gops_total": self.gops_total,
            "gops_decoded": self.gops_decoded,
            "containers_checked": self.containers_checked,
            "scan": self.scan,
            "checks": self.checks(),
            "failures": list(self.failures),
            "notes": list(self.warnings),
            "failed_rows": failed,
            "rows_uri": self.output_uri,
            "wall_seconds": round(self.wall_seconds, 3),
        }


_FAILED_ROW_FIELDS = ("video_key", "archive_uri", "gop_index", "crc_ok", "decode_ok", "decode_check", "error")


def run_verify(
    out: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    endpoint_url: str | None = None,
    verify_run_id: str | None = None,
    scan: str = "auto",
    model: str | None = None,
    against_source: bool = False,
    progress: Callable[[str], None] | None = None,
    progress_interval: float = INTERVAL_SECONDS,
    covers: dict[str, Any] | None = None,
    archive_run_id: str | None = None,
    readable_only: bool = False,
    wait: bool = False,
) -> VerifyReport:
    """Verify archive `out`; writes `<out>/verify/part-<verify_run_id>.parquet` and the last-verify
    record (`pipeline.tools.verify_record`), and returns the report.

    `progress` is called with rate-limited lines ("verify: 3/12 GOPs decoded ...", `verify_progress`).
    `covers`/`archive_run_id`: given by the archive's closing verify, what it covered (kept in the
    record, so a rerun that archived nothing can skip it). Raises VerifyError (nothing written) when
    the options are invalid or the archive cannot be read. Objects in GLACIER or DEEP_ARCHIVE without a
    thawed copy stop it with one line naming them (`pipeline.store.thaw`), unless `readable_only` (they are
    left out, with a note) or `wait` (it waits for copies already asked for).
    """
    started = time.monotonic()
    if fraction is not None and count is not None:
        raise VerifyError("give --fraction or --count, not both")
    if fraction is not None and not 0 < fraction <= 1:
        raise VerifyError(f"--fraction must be in (0, 1], got {fraction}")
    if count is not None and count < 1:
        raise VerifyError(f"--count must be at least 1, got {count}")
    if scan not in ("auto", "full", "index"):
        raise VerifyError(f"scan must be auto, full or index, got {scan!r}")
    if device not in ("cpu", "cuda", "auto"):
        raise VerifyError(f"device must be cpu, cuda or auto, got {device!r}")
    verify_run_id = (
        verify_run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    )
    try:
        fs, root = filesystem(out, endpoint_url=endpoint_url)
        check_reachable(fs, root, out, must_exist=True)
    except StorageError as exc:
        raise VerifyError(str(exc)) from None
    meter = VerifyProgress(progress, interval=progress_interval)
    scan_result = _scan_manifest(out, endpoint_url, fraction, count, seed, meter)
    cold = _ColdObjects(out, readable_only, wait, progress)
    if scan_result.rows is None:
        report = _verify_sample_of_large_archive(
            out, fs, root, scan_result, scan, device, endpoint_url, verify_run_id, model, against_source,
            meter, cold,
        )  # fmt: skip
    else:
        report = _verify_every_object(
            out, fs, root, scan_result, fraction, count, seed, scan, device, endpoint_url, verify_run_id,
            model, against_source, meter, cold,
        )  # fmt: skip
    report.wall_seconds = time.monotonic() - started
    _record(fs, root, report, covers, archive_run_id)
    return report


def _record(
    fs: Any, root: str, report: VerifyReport, covers: dict[str, Any] | None, archive_run_id: str | None
) -> None:
    """Replace `verify/last.json` with this verify's outcome; a failure to write it is a note (the
    checks stand; a rerun then finds the older record, or none)."""
    try:
        write_record(
            fs, root, verify_run_id=report.verify_run_id, passed=report.ok, gops_decoded=report.gops_decoded,
            covers=covers, run_id=archive_run_id,
        )  # fmt: skip
    except Exception as exc:
        report.warnings.append(f"last-verify record not written: {describe(exc, full_uri(fs, root))}")


def _verify_every_object(
    out: str,
    fs: Any,
    root: str,
    scan_result: ManifestScan,
    fraction: float | None,
    count: int | None,
    seed: int,
    scan: str,
    device: str,
    endpoint_url: str | None,
    verify_run_id: str,
    model: str | None,
    against_source: bool,
    meter: VerifyProgress,
    cold: _ColdObjects,
) -> VerifyReport:
    """An archive whose manifest rows fit in memory: every object checked against its rows and every
    done marker against the objects, then the sample decoded and proven."""
    manifest, damaged = scan_result.rows, scan_result.damaged
    fingerprints = pa.chunked_array(scan_result.fingerprints) if scan_result.fingerprints else None
    ok_rows = sorted(
        (r for r in manifest if r["status"] == "ok"), key=lambda r: (r["video_key"], r["gop_index"])
    )
    for row in ok_rows:  # the container under OUT, wherever the archive was written or moved from
        path, row["member"] = container_location(fs, root, row)  # member: its range in a pack, or None
        row["archive_uri"] = full_uri(fs, path)
    failures: list[str] = []
    warnings = [
        f"{r['source_uri']}: recorded as failed by the archive run ({r.get('error') or 'no reason'})"
        for r in manifest
        if r["status"] != "ok" and r.get("gop_index") is None
    ]
    classes: dict[str, str | None] = {}
    paths = _container_paths(fs, root, out, classes)
    sizes = {uri: size for uri, (_, size) in paths.items()}
    failures += [part.line() for part in damaged]  # every manifest part was read and checked
    failures += _check_markers(fs, root, ok_rows, sizes, {k for p in damaged for k in p.video_keys})
    for uri in cold.left_out(fs, {u: paths[u][0] for u, c in classes.items() if is_cold(c)}, warnings):
        del paths[uri], sizes[uri]  # not readable now, and --readable-only: neither checked nor sampled
    ok_rows = [r for r in ok_rows if r["archive_uri"] in sizes or r["archive_uri"] not in classes]
    scan_mode = scan
    if scan == "auto":
        scan_mode = "full" if sum(sizes.values()) <= FULL_SCAN_BYTES else "index"
    rows: list[dict[str, Any]] = [_damaged_row(part, verify_run_id, device) for part in damaged]
    by_container: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in ok_rows:
        by_container[(row["archive_uri"], row["member"])].append(row)
    failures += _check_packs(fs, paths, by_container)
    checked = 0
    meter.start("containers checked", len(by_container))
    containers = sorted(by_container.items(), key=lambda item: (item[0][0], item[0][1] or (0, 0)))

    def check(item: tuple[tuple[str, Any], list[dict[str, Any]]]) -> str | None:
        (uri, member), container_rows = item
        if uri not in sizes:
            return None
        full = scan_mode == "full"
        return _check_container(fs, paths[uri][0], uri, sizes[uri], container_rows, full=full, member=member)

    # in key order, CHECK_WORKERS at a time, at most twice that in flight (memory bounded)
    in_order = ordered_map(
        lambda item: (item, check(item)), containers, CHECK_WORKERS, ahead=2 * CHECK_WORKERS,
        name="vidarc-verify-check",
    )  # fmt: skip
    for ((uri, _), container_rows), problem in in_order:
        if uri not in sizes:
            failures.append(f"{uri}: archive object is missing (manifest lists {len(container_rows)} GOPs)")
            continue
        checked += 1
        meter.update(checked)
        if problem:
            failures.append(problem)
            rows.append(_failed_row(container_rows[0], verify_run_id, device, problem, crc_ok=False))
    sample = _sample(ok_rows, fraction, count, seed)
    sample = [r for r in sample if r["archive_uri"] in sizes]
    for row in sample:  # only the sampled rows' fingerprints become Python objects
        row["fingerprint"] = fingerprints[row["manifest_row"]].as_py() if fingerprints is not None else None
    del fingerprints
    return _decode_and_report(
        fs, root, sample, sizes, rows, failures, warnings, device, endpoint_url, verify_run_id, model,
        against_source, checked=checked, scan_mode=scan_mode, gops_total=len(ok_rows), meter=meter,
    )  # fmt: skip


def _decode_and_report(
    fs: Any,
    root: str,
    sample: list[dict[str, Any]],
    sizes: dict[str, int],
    rows: list[dict[str, Any]],
    failures: list[str],
    warnings: list[str],
    device: str,
    endpoint_url: str | None,
    verify_run_id: str,
    model: str | None,
    against_source: bool,
    *,
    checked: int,
    scan_mode: str,
    gops_total: int,
    meter: VerifyProgress,
) -> VerifyReport:
    """Decode the sample, prove each GOP, write the verify rows and report."""
    placement = decode_placement(device)
    if placement.note:
        warnings.append(placement.note)
    if sample:  # an archive without a GOP to decode (every video failed) has nothing to report
        meter.start("GOPs decoded", len(sample), line=f"decoding {len(sample)} GOPs {placement.describe()}")
    context = {
        "device": placement.device,
        "endpoint_url": endpoint_url,
        "model": model,
        "verify_run_id": verify_run_id,
        "against_source": against_source,
    }
    decoded = _decode_all(sample, sizes, context, placement, meter)
    if sample:
        meter.finish()
    if placement.device == "cuda" and any(r["device"] == "cpu" for r in decoded):
        warnings.append(
            f"--device {device}: a GPU task found no CUDA device (a GPU resource without CUDA behind it); "
            "decoded on CPU instead (a neural pixel decode may drift, reported per GOP)"
        )
    for result in decoded:
        rows.append(result)
        if result["status"] != "ok":
            failures.append(result["error"])
        elif result.get("error"):
            warnings.append(result["error"])
            result["error"] = None
    output_uri = None
    if rows:
        path = join(root, "verify", f"part-{verify_run_id}.parquet")
        try:
            write_bytes(fs, path, _parquet(rows))
            output_uri = full_uri(fs, path)
        except Exception as exc:  # the checks stand; their record could not be stored
            failures.append(f"verify rows not written: {describe(exc, full_uri(fs, path))}")
    return VerifyReport(
        verify_run_id=verify_run_id,
        rows=rows,
        failures=failures,
        warnings=warnings,
        containers_checked=checked,
        scan=scan_mode,
        gops_total=gops_total,
        output_uri=output_uri,
    )


def _verify_sample_of_large_archive(
    out: str,
    fs: Any,
    root: str,
    scan_result: ManifestScan,
    scan: str,
    device: str,
    endpoint_url: str | None,
    verify_run_id: str,
    model: str | None,
    against_source: bool,
    meter: VerifyProgress,
    cold: _ColdObjects,
) -> VerifyReport:
    """An archive too large to check object by object in one run: every manifest file was read and
    checked; the sampled videos' objects are checked whole (index, attachments, and every byte with
    `--scan full`) against all their manifest rows, read from the files that hold them; then the
    sampled GOPs are decoded and proven as usual."""
    damaged = scan_result.damaged
    failures = [part.line() for part in damaged]
    warnings = list(scan_result.failed_videos)
    if scan_result.failed_total > len(scan_result.failed_videos):
        warnings.append(f"... {scan_result.failed_total - len(scan_result.failed_videos)} more failed videos")
    warnings.append(
        f"{scan_result.ok_rows} GOPs: more than {IN_MEMORY_ROWS} to cross-check object by object in one run, "
        "so the objects of the sampled videos were checked (with all their rows) and every manifest file "
        "read and checked; done markers were not cross-checked against the objects"
    )
    sample = scan_result.sample
    keys = {row["video_key"] for row in sample}
    columns = [*MANIFEST_COLUMNS, "member_offset", "member_length"]
    video_rows = rows_of_videos(
        scan_result.plan, keys, columns, on_damage=lambda p, r: failures.append(f"{p}: {r}")
    )
    ok = pc.fill_null(pc.equal(video_rows.column("status"), "ok"), False)
    by_container: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in video_rows.filter(ok).to_pylist():
        path, row["member"] = container_location(fs, root, row)
        row["archive_uri"] = full_uri(fs, path)
        by_container[(row["archive_uri"], row["member"])].append(row)
    for row in sample:
        path, row["member"] = container_location(fs, root, row)
        row["archive_uri"] = full_uri(fs, path)
    sizes: dict[str, int] = {}
    rows: list[dict[str, Any]] = [_damaged_row(part, verify_run_id, device) for part in damaged]
    checked = 0
    object_paths = {
        uri: container_location(fs, root, rows_[0])[0] for (uri, _), rows_ in by_container.items()
    }
    skipped = set(cold.left_out(fs, object_paths, warnings))
    meter.start("containers checked", len(by_container))
    for (uri, member), container_rows in sorted(
        by_container.items(), key=lambda item: (item[0][0], item[0][1] or (0, 0))
    ):
        path = object_paths[uri]
        if uri in skipped:
            continue
        if uri not in sizes:
            try:
                sizes[uri] = int(fs.size(path))
            except FileNotFoundError:
                failures.append(
                    f"{uri}: archive object is missing (manifest lists {len(container_rows)} GOPs)"
                )
                continue
        checked += 1
        problem = _check_container(
            fs, path, uri, sizes[uri], container_rows, full=scan == "full", member=member
        )
        meter.update(checked)
        if problem:
            failures.append(problem)
            rows.append(_failed_row(container_rows[0], verify_run_id, device, problem, crc_ok=False))
    sample = [r for r in sample if r["archive_uri"] in sizes]
    return _decode_and_report(
        fs, root, sample, sizes, rows, failures, warnings, device, endpoint_url, verify_run_id, model,
        against_source, checked=checked, scan_mode="sample", gops_total=scan_result.ok_rows, meter=meter,
    )  # fmt: skip


# ---- reading the archive's records -------------------------------------------------------------
@dataclasses.dataclass
class ManifestScan:
    """One streamed pass over every manifest file (every column, so every checksum is verified).

    Up to `IN_MEMORY_ROWS` GOP rows the rows are kept (`rows`, with their `fingerprint` column as
    Arrow until sampled) and verify checks every object as before. Past that, only a seeded sample is
    kept — the `k` rows with the smallest seeded hash of (video key, GOP index) (or, for a fraction,
    those whose hash falls under it) — so memory does not grow with the archive, and the sample does
    not depend on how the manifest is laid out (parts or compacted files)."""

    rows: list[dict[str, Any]] | None
    fingerprints: list[Any]
    damaged: list[DamagedPart]
    plan: Any
    sample: list[dict[str, Any]]
    ok_rows: int = 0
    failed_videos: list[str] = dataclasses.field(default_factory=list)
    failed_total: int = 0


IN_MEMORY_ROWS = 100_000
#: Rows per batch of the scan of compacted files (their row groups hold 16,384).
SCAN_BATCH_ROWS = 16_384
_LISTED_FAILURES = 1000


def _scan_manifest(
    out: str,
    endpoint_url: str | None,
    fraction: float | None,
    count: int | None,
    seed: int,
    meter: VerifyProgress,
) -> ManifestScan:
    columns = [*MANIFEST_COLUMNS, "error", "member_offset", "member_length", "fingerprint"]
    try:
        parts = ArchiveParts(out, "manifest", endpoint_url=endpoint_url)
        if not len(parts):
            raise VerifyError(f"{out}: no manifest parts (manifest/*.parquet); is this a vidarc archive?")
        scan = ManifestScan(rows=[], fingerprints=[], damaged=parts.damaged, plan=parts.plan, sample=[])
        sampler = SeededSample(fraction, count, seed, DEFAULT_ALL_GOPS)
        # the rows while every object may still be checked, as Arrow (not Python objects)
        held: list[pa.Table] | None = []
        held_rows = 0
        if parts.plan is not None and sum(c.num_rows for c in parts.plan.compacted) > IN_MEMORY_ROWS:
            held = None  # the compacted files' footers already say: a sample from the start
        meter.start("manifest rows read")
        # every column (every checksum verified), a row group at a time: memory flat in the archive's size
        for table in parts.tables(batch_rows=SCAN_BATCH_ROWS):
            meter.advance(table.num_rows)
            table = table.select(columns)
            ok = _ok_mask(table)
            scan.ok_rows += pc.sum(pc.cast(ok, pa.int64())).as_py() or 0
            _note_failures(scan, table.filter(pc.invert(ok)))
            if held is not None:
                held.append(table)
                held_rows += table.num_rows
                if held_rows <= IN_MEMORY_ROWS:
                    continue
                for kept in held:  # too many to hold: from here on, a sample
                    sampler.offer(kept.filter(_ok_mask(kept)))
                held = None
                continue
            sampler.offer(table.filter(ok))
        if held is None:
            scan.rows, scan.sample = None, sampler.rows()
            return scan
        start = 0
        for table in held:
            records = table.drop_columns(["fingerprint"]).to_pylist()
            for i, record in enumerate(records, start):
                record["manifest_row"] = i
            start += len(records)
            scan.rows.extend(records)
            scan.fingerprints.append(table.column("fingerprint").combine_chunks())
        return scan
    except PartsError as exc:
        raise VerifyError(f"cannot read the manifest: {exc}") from None


def _ok_mask(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table.column("status"), "ok"), False)


def _note_failures(scan: ManifestScan, failed: pa.Table) -> None:
    """Videos the archive run recorded as failed (their one row without a GOP), listed up to a bound."""
    whole = failed.filter(pc.is_null(failed.column("gop_index")))
    scan.failed_total += whole.num_rows
    room = _LISTED_FAILURES - len(scan.failed_videos)
    for row in whole.slice(0, max(0, room)).select(["source_uri", "error"]).to_pylist():
        scan.failed_videos.append(
            f"{row['source_uri']}: recorded as failed by the archive run ({row.get('error') or 'no reason'})"
        )


class _ColdObjects:
    """What verify does with objects in cold storage that have no readable copy: stop with one line
    naming them (default), wait for copies already asked for (`wait`), or leave them out with a note
    (`readable_only`)."""

    def __init__(
        self, out: str, readable_only: bool, wait: bool, progress: Callable[[str], None] | None
    ) -> None:
        self.out, self.readable_only, self.wait, self.progress = out, readable_only, wait, progress

    def left_out(self, fs: Any, candidates: dict[str, str], warnings: list[str]) -> list[str]:
        """The URIs among `candidates` (uri -> path: objects the listing reports in a cold class, or
        every object to read when no listing was made) to leave out; one HEAD each on S3."""
        if not candidates or is_local(fs):
            return []
        states = thaw.object_states(fs, candidates.values())
        by_path = {path: uri for uri, path in candidates.items()}
        pending = {by_path[p]: s for p, s in states.items() if not s.readable and s.state != "missing"}
        if not pending:
            return []
        if self.readable_only:
            warnings.append(
                f"{len(pending)} objects in cold storage without a readable copy were left out "
                f"(--readable-only; first {min(pending)}): their fixity is checked by --scan checksums"
            )
            return sorted(pending)
        try:
            thaw.require_readable(
                fs, [candidates[u] for u in pending], out=self.out, wait=self.wait, progress=self.progress
            )
        except thaw.ObjectsNotReadable as exc:
            raise VerifyError(f"{exc} (or verify --readable-only)") from None
        return []


def _container_paths(
    fs: Any, root: str, out: str, classes: dict[str, str | None] | None = None
) -> dict[str, tuple[str, int]]:
    """archive_uri -> (path, size) for every container and pack, from one listing of videos/ and
    packs/ (no HEAD per object); `classes` gets each object's storage class from the same listing."""
    found: dict[str, tuple[str, int]] = {}
    for folder_name in ("videos", "packs"):
        folder = join(root, folder_name)
        try:
            for item in iter_objects(fs, folder):
                if item.path.endswith(".vdrc"):
                    found[full_uri(fs, item.path)] = (item.path, item.size)
                    if classes is not None:
                        classes[full_uri(fs, item.path)] = item.storage_class
        except Exception as exc:
            raise VerifyError(
                f"{out}: cannot list {folder_name}/ ({type(exc).__name__}: {redact(str(exc))})"
            ) from None
    return found


def _check_packs(
    fs: Any, paths: dict[str, tuple[str, int]], by_container: dict[tuple[str, Any], list[dict[str, Any]]]
) -> list[str]:
    """Each pack's own index (one ranged read) must list every packed video the manifest places in it,
    at the same range."""
    problems = []
    packs: dict[str, list[tuple[str, tuple[int, int]]]] = defaultdict(list)
    for (uri, member), rows in by_container.items():
        if member is not None and uri in paths:
            packs[uri].append((rows[0]["video_key"], member))
    for uri, members in sorted(packs.items()):
        path, size = paths[uri]
        try:
            index = read_pack_index(CountingReader(fs, path), size, name=uri)
        except ContainerError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:
            problems.append(f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})")
            continue
        stored = {m.video_key: (m.offset, m.length) for m in index.members}
        for key, member in sorted(members):
            if stored.get(key) != member:
                problems.append(
                    f"{uri}: the pack index places video {key} at {stored.get(key)}, the manifest at {member}"
                )
    return problems


def _check_markers(
    fs: Any, root: str, ok_rows: list[dict[str, Any]], sizes: dict[str, int], damaged: set[str | None]
) -> list[str]:
    """Every done video must have manifest rows and its container (videos whose manifest part is
    damaged are reported once, as that)."""
    with_rows = {r["video_key"] for r in ok_rows}
    stored = {uri.rsplit("/", 1)[-1].removesuffix(".vdrc") for uri in sizes}
    stored |= {r["video_key"] for r in ok_rows if r.get("member") is not None and r["archive_uri"] in sizes}
    problems = []
    try:
        done = done_keys(fs, root)
    except Exception as exc:
        raise VerifyError(f"cannot list the done markers: {describe(exc, root)}") from None
    for key in sorted(done - damaged):
        if key not in with_rows:
            problems.append(f"{key}: marked done but the manifest has no rows for it")
        elif key not in stored:
            problems.append(f"{key}: marked done but its container videos/{key}.vdrc is missing")
    return problems


# ---- integrity of whole containers --------------------------------------------------------------
def _check_container(
    fs: Any,
    path: str,
    uri: str,
    size: int,
    rows: list[dict[str, Any]],
    *,
    full: bool,
    member: tuple[int, int] | None = None,
) -> str | None:
    """A one-line problem with the object (or with one video of a pack: `member` = its range), or
    None. `full` also reads every GOP and attachment (one ranged read each, so memory stays bounded by
    the largest GOP, not the object)."""
    shift = member[0] if member else 0
    if member is not None:
        if member[0] < 0 or member[0] + member[1] > size:
            return f"{uri}: the manifest places video {rows[0]['video_key']} outside the pack"
        uri, size = f"{uri}#{rows[0]['video_key']}", member[1]
    read: Any = CountingReader(fs, path, base=shift)
    try:
        if full and size <= WHOLE_READ_BYTES:
            read = _HeldBytes(read(0, size), read)
        index = read_index(read, size, name=uri)
        if full:
            problem = _check_every_byte(read, index, uri)
            if problem:
                return problem
        else:  # attachments are small next to the video, and restore refuses a damaged one
            for attachment in index.attachments:
                read_attachment(read, attachment, name=uri)
    except ContainerError as exc:
        return str(exc)
    except FileNotFoundError:
        return f"{uri}: archive object is missing"
    except Exception as exc:
        return f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})"
    return _compare_with_manifest(index, rows, uri, shift)


class _HeldBytes:
    """A small container read whole (one request), served as the ranged reads the checks make; a
    read that starts outside it goes to the object itself, so errors read as they would."""

    def __init__(self, data: bytes, fallback: Callable[[int, int], bytes]) -> None:
        self.data, self.fallback = data, fallback

    def __call__(self, offset: int, length: int) -> bytes:
        if 0 <= offset <= len(self.data):
            return self.data[offset : offset + length]
        return self.fallback(offset, length)


def _check_every_byte(read: Any, index: ContainerIndex, uri: str) -> str | None:
    """Preamble, every GOP and attachment CRC, reserved fields, and no byte left unchecked."""
    from pipeline.format.container import END_MAGIC, FORMAT_VERSION, MAGIC

    magic, version, reserved = PREAMBLE.unpack(read(0, PREAMBLE.size))
    if magic != MAGIC or version != FORMAT_VERSION or reserved != 0:
        return f"{uri}: corrupt preamble (magic, version or reserved field)"
    trailer = TRAILER.unpack(read(index.size - TRAILER.size, TRAILER.size))
    if trailer[4] != 0 or trailer[5] != END_MAGIC:
        return f"{uri}: corrupt trailer (reserved field)"
    spans = []
    for entry in index.gops:
        read_gop(read, entry, name=uri)
        spans.append((entry.offset, entry.length))
    for attachment in index.attachments:
        read_attachment(read, attachment, name=uri)
        spans.append((attachment.offset, attachment.length))
    position = PREAMBLE.size
    for offset, length in sorted(spans):
        if offset != position:
            return f"{uri}: bytes {position}..{offset} are not covered by any GOP or attachment"
        position = offset + length
    footer_offset = trailer[0]
    if position != footer_offset:
        return f"{uri}: bytes {position}..{footer_offset} before the footer are not covered by the index"
    return None


def _compare_with_manifest(
    index: ContainerIndex, rows: list[dict[str, Any]], uri: str, shift: int = 0
) -> str | None:
    for row in rows:
        i = row["gop_index"]
        if i is None or not 0 <= i < len(index.gops):
            return f"{uri}: manifest GOP {i} is not in the container's index"
        entry = index.gops[i]
        stored = (entry.first_frame, entry.frame_count, entry.offset + shift, entry.length, entry.crc32c)
        listed = (row["first_frame"], row["frame_count"], row["offset"], row["length"], row["crc32c"])
        if stored != listed:
            return f"{uri}: GOP {i}: the manifest says (first, frames, offset, length, crc) {listed}, the index {stored}"
    if len(rows) != len(index.gops):
        return f"{uri}: the index has {len(index.gops)} GOPs, the manifest {len(rows)}"
    return None


# ---- the decoded sample -------------------------------------------------------------------------
def _sample(rows: list[dict[str, Any]], fraction: float | None, count: int | None, seed: int) -> list[dict]:
    if not rows:
        return []
    if count is not None:
        k = min(count, len(rows))
    elif fraction is not None:
        k = max(1, math.ceil(fraction * len(rows)))
    else:
        k = min(len(rows), DEFAULT_ALL_GOPS)
    picked = np.random.default_rng(seed).choice(len(rows), size=k, replace=False)
    return [rows[i] for i in sorted(picked)]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the sample decodes: the device, whether as Ray tasks (GPU ones need a GPU each), and why
    it is not where the user asked (None when it is)."""

    device: str
    ray_gpu_tasks: bool = False
    note: str | None = None

    def describe(self) -> str:
        """Where, for the progress line ("on cpu", "on cuda as Ray GPU tasks")."""
        return f"on {self.device}" + (" as Ray GPU tasks" if self.ray_gpu_tasks else "")


def decode_placement(device: str) -> Placement:
    """cuda -> GPU Ray tasks when the cluster has GPUs, else this machine's CUDA, else CPU with a note;
    auto -> the same without the note; cpu -> cpu."""
    if device == "cpu":
        return Placement("cpu")
    cluster_gpus = _cluster_gpus()
    if cluster_gpus:
        return Placement("cuda", ray_gpu_tasks=True)
    if _cuda():
        return Placement("cuda")
    note = None
    if device == "cuda":
        where = (
            "the Ray cluster has no GPU and this machine no CUDA"
            if cluster_gpus is not None
            else ("this machine has no CUDA device and no Ray cluster is connected")
        )
        note = f"--device cuda: {where}; decoded on CPU instead (a neural pixel decode may drift, reported per GOP)"
    return Placement("cpu", note=note)


def _cluster_gpus() -> float | None:
    """GPUs in the connected Ray cluster (None when Ray is not initialised)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return float(ray.cluster_resources().get("GPU", 0.0))


def _decode_all(
    sample: list[dict],
    sizes: dict[str, int],
    context: dict[str, Any],
    placement: Placement,
    meter: VerifyProgress,
) -> list[dict[str, Any]]:
    batches: list[list[tuple[dict, int]]] = []
    current: list[tuple[dict, int]] = []
    for row in sample:  # sorted by video, so batches group GOPs of the same container
        if len(current) >= GOPS_PER_TASK:
            batches.append(current)
            current = []
        current.append((row, row["member"][1] if row.get("member") else sizes[row["archive_uri"]]))
    if current:
        batches.append(current)
    if placement.ray_gpu_tasks:
        results = _decode_on_ray(batches, context, meter, num_gpus=1)
    elif placement.device == "cpu" and len(sample) > RAY_MIN_GOPS and _cluster_gpus() is not None:
        results = _decode_on_ray(batches, context, meter, num_gpus=0)
    else:
        workers = _in_process_workers(context, len(sample))
        results = [verify_batch(b, context, on_gop=meter.advance, workers=workers) for b in batches]
    return [row for batch in results for row in batch]


def _in_process_workers(context: dict[str, Any], gops: int) -> int:
    """GOPs decoded at once in this process: the usable cores on the CPU (a neural pass there runs one
    torch thread, `codec.cpu_threads`; libav decoders are thread-safe too), one on a GPU or when the
    sources are re-read (their decoded frames are cached per source, one reader at a time)."""
    if context["device"] != "cpu" or context["against_source"] or gops < 2:
        return 1
    from codec.cores import usable_cores

    return min(gops, usable_cores())


#: Seconds between two looks at the Ray tasks' GOP count while they decode.
POLL_SECONDS = 1.0


def _decode_on_ray(
    batches: list[list[tuple[dict, int]]], context: dict[str, Any], meter: VerifyProgress, *, num_gpus: int
) -> list[list[dict[str, Any]]]:
    """The batches as Ray tasks, results in batch order. Each task counts its GOPs on a small actor as
    it decodes them, so progress moves GOP by GOP even when one task holds the whole sample (a batch
    is up to `GOPS_PER_TASK` GOPs: a neural one decodes for minutes); without the actor, batch by batch."""
    import ray

    counter = _gop_counter() if meter.emit is not None else None
    task = ray.remote(num_cpus=1, num_gpus=num_gpus)(_verify_batch_counted)
    refs = [task.remote(b, context, counter) for b in batches]
    sizes = dict(zip(refs, (len(b) for b in batches), strict=True))
    pending, finished = list(refs), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
            finished += sum(sizes[r] for r in ready)
            meter.update(_counted(counter, finished))
        return ray.get(refs)
    finally:
        if counter is not None:
            ray.kill(counter)


def _gop_counter() -> Any:
    """A Ray actor (no CPU held) the verify tasks count decoded GOPs on; None if it cannot start."""
    import ray

    @ray.remote(num_cpus=0)
    class GopCounter:
        def __init__(self) -> None:
            self.count = 0

        def add(self, n: int = 1) -> None:
            self.count += n

        def value(self) -> int:
            return self.count

    try:
        return GopCounter.remote()
    except Exception:  # progress is a courtesy: batch by batch then
        return None


def _counted(counter: Any, finished: int) -> int:
    """GOPs decoded so far: the counter's count, at least those of the finished batches."""
    if counter is None:
        return finished
    import ray

    try:
        return max(finished, int(ray.get(counter.value.remote(), timeout=POLL_SECONDS)))
    except Exception:
        return finished


def _verify_batch_counted(
    batch: list[tuple[dict, int]], context: dict[str, Any], counter: Any
) -> list[dict[str, Any]]:
    """`verify_batch` as a Ray task that counts each GOP on `counter` when given: sent as it is done,
    and waited for (briefly) before the task returns, so a finished task's GOPs are all counted. The
    count is a courtesy: a counter that went away never fails the verify."""
    if counter is None:
        return verify_batch(batch, context)
    import ray

    sent: list[Any] = []
    rows = verify_batch(batch, context, on_gop=lambda: sent.append(counter.add.remote(1)))
    with contextlib.suppress(Exception):  # one caller's actor calls run in order: the last is enough
        ray.get(sent[-1:], timeout=10 * POLL_SECONDS)
    return rows


def verify_batch(
    batch: list[tuple[dict, int]],
    context: dict[str, Any],
    *,
    on_gop: Callable[[], Any] | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Decode and check GOPs (Ray task body or in-process), rows in batch order. Codecs are built once
    per batch and shared by `workers` threads decoding GOPs at once; `on_gop` is called after each GOP
    (progress).

    A worker asked for CUDA that has none (a Ray node declaring GPUs it cannot drive) decodes on CPU;
    its rows say so (`device`), and `run_verify` adds the note."""
    if context["device"] == "cuda" and not _cuda():
        context = dict(context, device="cpu")
    decoders = _Decoders()
    sources: dict[str, Any] = {}

    def one(item: tuple[dict, int]) -> dict[str, Any]:
        row = _verify_one(item[0], item[1], context, decoders, sources)
        if on_gop is not None:
            on_gop()
        return row

    if workers <= 1 or len(batch) < 2:
        return [one(item) for item in batch]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(batch)), thread_name_prefix="vidarc-verify") as pool:
        return list(pool.map(one, batch))


class _Decoders(dict):
    """The decoders of one batch by `decoder_key`, built once even when threads ask together; a
    decoder that is not thread-safe decodes under its own lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def get_or_build(self, key: tuple, build: Callable[[], Any]) -> tuple[Any, Any]:
        with self._lock:
            if key not in self:
                codec = build()
                self[key] = (codec, contextlib.nullcontext() if codec.thread_safe else threading.Lock())
            return self[key]


def _verify_one(row: dict, size: int, context: dict, decoders: _Decoders, sources: dict) -> dict[str, Any]:
    uri = row["archive_uri"]
    label = f"{uri} GOP {row['gop_index']} (frames {row['first_frame']}+{row['frame_count']})"
    device = context["device"]
    result = _base_row(row, context["verify_run_id"], device)
    member = tuple(row["member"]) if row.get("member") else None
    reader = ArchiveReader(uri, endpoint_url=context["endpoint_url"], size=size, member=member)
    started = time.perf_counter()
    try:
        index = reader.index()  # fresh ranged read 1: the index
        entry = index.gops[row["gop_index"]]
        payload = reader.gop(entry.index)  # fresh ranged read 2: the payload, CRC-checked
    except (ContainerError, IndexError) as exc:
        return dict(result, crc_ok=False, status="failed", error=_line(label, exc))
    except Exception as exc:
        return dict(
            result, status="failed", error=f"{label}: cannot read ({type(exc).__name__}: {redact(str(exc))})"
        )
    result["crc_ok"] = True
    header = index.header
    if header.codec != row["codec"] or (header.model_sha256 or None) != (row["model_sha256"] or None):
        return dict(result, status="failed", error=f"{label}: header codec/model disagree with the manifest")
    try:
        codec, lock = decoders.get_or_build(
            decoder_key(header),
            lambda: header_decoder(header, device=device, model=context["model"], name=uri),
        )
        with lock:
            frames, exact = codec.decode_with_digest(payload, entry.frame_count, header.width, header.height)
    except (CodecError, ContainerError) as exc:
        return dict(result, decode_ok=False, status="failed", error=_line(label, exc))
    except Exception as exc:  # a decoder crash on hostile bytes is still a verify failure, one line
        return dict(
            result,
            decode_ok=False,
            status="failed",
            error=f"{label}: decode failed ({type(exc).__name__}: {exc})",
        )
    result["decode_seconds"] = time.perf_counter() - started
    result["decode_ok"] = True
    result.update(decode_check(row, frames, exact))
    if result["decode_check"] == "mismatch":
        return dict(result, status="failed", error=f"{label}: {result.pop('problem')}")
    result.pop("problem", None)
    if not context["against_source"] or row.get("psnr") is None:
        return dict(result, status="ok")
    source, note = _source_frames(row, context, sources, deep=frames.dtype == np.uint16)
    result["against_source"] = source is not None
    if source is None:
        return dict(result, status="ok", error=f"{label}: quality not re-measured ({note})")
    from codec.base import to_8bit
    from pipeline.metrics import psnr_rgb

    psnr = psnr_rgb(to_8bit(source), to_8bit(frames))  # as the archive measured it (metrics are 8-bit)
    same_device = _device_class(device) == _device_class(row.get("device"))
    tolerance = TOLERANCE_DB if same_device or row["codec"] in CLASSIC_CODECS else CROSS_DEVICE_TOLERANCE_DB
    result["psnr_verify"] = psnr
    result["quality_ok"] = abs(psnr - row["psnr"]) <= tolerance
    if not result["quality_ok"]:
        return dict(
            result,
            status="failed",
            error=f"{label}: PSNR {psnr:.3f} dB, the manifest says {row['psnr']:.3f} dB (tolerance {tolerance} dB)",
        )
    return dict(result, status="ok")


def decode_check(row: dict[str, Any], frames: np.ndarray, exact: str) -> dict[str, Any]:
    """The decode proof of one GOP against the digests its manifest row recorded at encode time:
    verify columns (`exact_ok`, `recon_digest_ok`, `fingerprint_psnr`, `fingerprint_identical`,
    `decode_check`) and, for a mismatch, `problem` (one line). Rows of archives made before digests:
    `decode_check` None.

    Pixels that differ from the encoder's while their fingerprint is the same cell for cell (a drift
    below the fingerprint's 8-bit cell means) have an infinite fingerprint PSNR: that is recorded as
    `fingerprint_identical` with `fingerprint_psnr` null, never as an infinity (Parquet and JSON
    readers, and people, would get "inf dB")."""
    out: dict[str, Any] = {"decode_check": None}
    recorded_exact, recorded_recon = row.get("exact_sha256"), row.get("recon_sha256")
    if not recorded_exact and not recorded_recon:
        return out
    if recorded_exact:
        out["exact_ok"] = exact == recorded_exact
        if not out["exact_ok"]:
            what = "its pixels" if exact == frames_sha256(frames) else "its exact part (symbols)"
            return dict(
                out, decode_check="mismatch", problem=f"the decode differs from the encoder's in {what}"
            )
    blob = row.get("fingerprint")
    if recorded_exact and not recorded_recon and blob is None:
        # The encoder skipped this GOP's pixel decode (`--fingerprint-every` > 1): nothing to judge the
        # pixels by, so the proof is the exact part alone, which is what every pixel decode starts from.
        return dict(out, decode_check="exact-part")
    if recorded_recon:
        out["recon_digest_ok"] = frames_sha256(frames) == recorded_recon
        if out["recon_digest_ok"]:
            return dict(out, decode_check="exact")
    if blob is None:
        return dict(
            out, decode_check="mismatch", problem="other pixels than the encoder's, and no fingerprint"
        )
    try:
        psnr = fingerprint_psnr(bytes(blob), frames)
    except FingerprintError as exc:
        return dict(out, decode_check="mismatch", problem=f"unreadable fingerprint ({exc})")
    out["fingerprint_identical"] = math.isinf(psnr)
    out["fingerprint_psnr"] = psnr if math.isfinite(psnr) else None
    if psnr >= DRIFT_LIMIT_DB:
        return dict(out, decode_check="drift")
    return dict(
        out,
        decode_check="mismatch",
        problem=f"pixels drifted to {psnr:.1f} dB from the encoder's (worst frame's luma fingerprint; "
        f"limit {DRIFT_LIMIT_DB:g} dB)",
    )


def _source_frames(row: dict, context: dict, cache: dict, *, deep: bool) -> tuple[np.ndarray | None, str]:
    """The source frames of this GOP, or (None, why) when the source is gone or changed."""
    from pipeline.sources import media

    uri = row["source_uri"]
    try:
        if uri not in cache:
            fs, path = filesystem(uri, endpoint_url=context["endpoint_url"])
            if not fs.exists(path):
                cache[uri] = "source no longer exists"
            elif fs.size(path) != row["source_bytes"]:
                cache[uri] = "source changed size since archiving"
            else:
                cache[uri] = media.probe(uri, endpoint_url=context["endpoint_url"])
        info = cache[uri]
        if isinstance(info, str):
            return None, info
        first, n = row["first_frame"], row["frame_count"]
        pts = info.frame_pts[first : first + n] if info.frame_pts else None
        frames = media.decode_frames(
            uri,
            first,
            n,
            expected_pts=pts,
            endpoint_url=context["endpoint_url"],
            high_bit_depth=deep,
        )
        return frames, ""
    except Exception as exc:
        return None, f"source unreadable: {type(exc).__name__}: {redact(str(exc)).splitlines()[0]}"


def _base_row(row: dict, verify_run_id: str, device: str) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "verify_run_id": verify_run_id,
        "video_key": row["video_key"],
        "archive_uri": row["archive_uri"],
        "gop_index": row["gop_index"],
        "first_frame": row["first_frame"],
        "frame_count": row["frame_count"],
        "codec": row["codec"],
        "device": device,
        "crc_ok": None,
        "decode_ok": None,
        "recon_digest_ok": None,
        "exact_ok": None,
        "fingerprint_psnr": None,
        "fingerprint_identical": None,
        "decode_check": None,
        "against_source": None,
        "psnr_manifest": row.get("psnr"),
        "psnr_verify": None,
        "quality_ok": None,
        "decode_seconds": None,
        "status": None,
        "error": None,
        "created_at": utc_now(),
    }


def _damaged_row(part: DamagedPart, verify_run_id: str, device: str) -> dict[str, Any]:
    """A verify row for a damaged manifest part (its video's rows cannot be checked)."""
    row: dict[str, Any] = dict.fromkeys(VERIFY_SCHEMA.names)
    row.update(
        verify_run_id=verify_run_id,
        video_key=part.video_key,
        device=device,
        status="failed",
        error=part.line(),
        created_at=utc_now(),
    )
    return row


def _failed_row(row: dict, verify_run_id: str, device: str, error: str, *, crc_ok: bool) -> dict[str, Any]:
    """A whole-container failure found by the integrity scan (gop_index null)."""
    base = _base_row(row, verify_run_id, device)
    base.update(
        gop_index=None, first_frame=None, frame_count=None, crc_ok=crc_ok, status="failed", error=error
    )
    return base


def _line(label: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text if text.startswith(label.split(" GOP ")[0]) else f"{label}: {text}")


def _device_class(device: str | None) -> str:
    return "cuda" if device and device.startswith("cuda") else "cpu"


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    return parquet_bytes(rows, VERIFY_SCHEMA)
