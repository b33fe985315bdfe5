"""Committing one video: container, then manifest part, then done marker — in that order.

The order is the resume contract (see `runinfo`): each object is written atomically, the done
marker last, so a reader that trusts the marker always finds both the container and its manifest
rows. Rows are written once per video, from the index of the container as stored, so a GOP retried
on another actor can never appear twice and offsets/lengths/CRCs are those a reader will see.
A failed video gets one manifest row with status "failed" and its one-line error, a failed marker,
and no container (a stale one from an earlier attempt is removed).
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import numpy as np

from pipeline.archive import accounting
from pipeline.archive.floor import floor_columns
from pipeline.archive.gop_result import GopResult
from pipeline.archive.plan import GopSpan
from pipeline.format.container import (
    AUDIO_ATTACHMENT,
    TIMESTAMPS_ATTACHMENT,
    bytes_reader,
    read_index,
    write_container,
)
from pipeline.format.container_header import ContainerHeader
from pipeline.format.runinfo import (
    container_path,
    finite,
    json_text,
    manifest_path,
    marker_path,
    utc_now,
    write_json,
)
from pipeline.format.schema import (
    COMPUTE_STAGES,
    MANIFEST_SCHEMA,
    SOURCE_METADATA_COLUMNS,
    compute_column,
)
from pipeline.read.archived_source import ParentRef
from pipeline.read.locate import write_index_entries
from pipeline.read.manifest import parquet_bytes
from pipeline.sources import media
from pipeline.store.storage import (
    StoredObject,
    filesystem,
    full_uri,
    is_local,
    put_checked,
    range_reader,
    redact,
    remove,
    write_bytes,
)


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """Everything the writer needs about one video besides its coded GOPs."""

    video_key: str
    source_uri: str
    source_bytes: int
    out: str
    run_id: str
    endpoint_url: str | None
    header: ContainerHeader  # geometry, rate, colour, rotation, codec identity, target
    spans: tuple[GopSpan, ...]
    has_audio: bool
    #: caption / license / split from an input list: copied into every row of the video.
    metadata: dict[str, str] | None = None
    #: Per-video device-seconds measured before the commit ("probe", "search"; `accounting`).
    compute: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The S3 storage class of the video's object (`--storage-class`; None: the store's default).
    storage_class: str | None = None
    #: A migrated video's lineage columns (`generation`, `parent_*`); None: coded from its source.
    lineage: dict[str, Any] | None = None
    #: A migrated video's parent (`pipeline.read.archived_source`): its frames and audio come from there.
    parent: ParentRef | None = None
    #: A migrated video's `source_psnr` settings ({"fraction", "model"}; `source_quality`).
    source_check: dict[str, Any] | None = None


def commit_video(job: VideoJob, metas: list[GopResult], payloads: list[bytes]) -> dict[str, Any]:
    """Write the video's container, manifest part and done marker; returns the per-GOP stats."""
    started = time.perf_counter()
    fs, out_root = filesystem(job.out, endpoint_url=job.endpoint_url)
    header, gops, attachments = container_inputs(job, payloads)
    path = container_path(out_root, job.video_key)
    buffer = io.BytesIO()
    write_container(buffer, header, gops, attachments)
    data = buffer.getvalue()
    stored = put_checked(fs, path, data, storage_class=job.storage_class)
    size = stored.size
    archive_uri = full_uri(fs, path)
    # the index of the bytes the store acknowledged by their checksum (a cold object cannot be read
    # back); without a store checksum, read back as stored
    read = bytes_reader(data) if stored.checksum or is_local(fs) else range_reader(fs, path)
    index = read_index(read, size, name=archive_uri)
    cpu = accounting.held("cpu")
    seconds = cpu.charge(time.perf_counter() - started)
    rows = video_rows(job, metas, index.gops, archive_uri, seconds, archive_bytes=size, stored=stored)
    write_bytes(fs, manifest_path(out_root, job.video_key), _parquet_bytes(rows))
    write_index_entries(fs, out_root, job.video_key, job.source_uri)  # before the marker: done => indexed
    marker = {
        "video_key": job.video_key,
        "source_uri": job.source_uri,
        "run_id": job.run_id,
        "archive_uri": archive_uri,
        "archive_bytes": size,
        **object_fields(stored),
        "gops": len(rows),
        "frames": header.frame_count,
        "completed_at": utc_now().isoformat(),
    }
    write_json(fs, marker_path(out_root, "done", job.video_key), marker)
    remove(fs, marker_path(out_root, "failed", job.video_key))
    return commit_result(size, bool(attachments), rows, cpu.charge(time.perf_counter() - started))


def container_inputs(
    job: VideoJob, payloads: list[bytes]
) -> tuple[ContainerHeader, list[tuple[int, int, bytes]], list[tuple[str, bytes, dict[str, Any]]]]:
    """(header, GOPs, attachments) of the video's container: the audio copied from the source, the
    timestamps of a variable-rate source."""
    attachments = []
    if job.has_audio:
        if job.parent is not None:  # a migration: the parent's copy (the source may be gone)
            from pipeline.read.archived_source import audio as parent_audio

            audio = parent_audio(job.parent, endpoint_url=job.endpoint_url)
        else:
            audio = media.extract_audio(job.source_uri, endpoint_url=job.endpoint_url)
        if audio is not None:
            attachments.append((AUDIO_ATTACHMENT, audio[0], audio[1]))
    pts = [t for span in job.spans for t in (span.pts or ())]
    if job.header.vfr and len(pts) == job.header.frame_count:
        info = {"time_base": job.header.time_base, "dtype": "<i8", "count": len(pts)}
        attachments.append((TIMESTAMPS_ATTACHMENT, np.asarray(pts, dtype="<i8").tobytes(), info))
    # finite: a NaN (a quality search's score) would make a header the reader refuses; null instead.
    # (source_sha256 is the probe's.)
    fields = finite(dict(job.header.to_dict(), created_at=utc_now().isoformat()))
    fields.setdefault("decoder_options", {})  # what `codec.registry.decoder_for` rebuilds the decoder with
    header = ContainerHeader.from_dict(fields)
    gops = [(s.first_frame, s.frame_count, p) for s, p in zip(job.spans, payloads, strict=True)]
    return header, gops, attachments


def video_rows(
    job: VideoJob,
    metas: list[GopResult],
    entries: list[Any],
    archive_uri: str,
    commit_seconds: float,
    *,
    member: tuple[int, int] | None = None,
    archive_bytes: int | None = None,
    stored: StoredObject | None = None,
) -> list[dict[str, Any]]:
    """The video's manifest rows from its container index as stored. `member`: (offset, length) of
    the video's container inside a pack; row offsets are then absolute in the pack object.
    `archive_bytes`: the size of its object (a pack member: its length), so reads that price the
    stored bytes never list `videos/`. `stored`: the object's class and checksums (a pack's)."""
    per_video = accounting.add_per_video(job.compute, "commit", commit_seconds)
    frames_total = sum(span.frame_count for span in job.spans) or 1
    shift = member[0] if member else 0
    placed: dict[str, Any] = {"member_offset": member[0], "member_length": member[1]} if member else {}
    placed["archive_bytes"] = member[1] if member else archive_bytes
    if stored is not None:
        placed.update(object_fields(stored))
    placed.update(job.lineage or {"generation": 1})
    return [
        dict(
            _ok_row(job, span, meta, dataclasses.replace(entry, offset=entry.offset + shift), archive_uri),
            **placed,
            **accounting.row_columns(meta.compute, per_video, span.frame_count / frames_total),
        )
        for span, meta, entry in zip(job.spans, metas, entries, strict=True)
    ]


def object_fields(stored: StoredObject) -> dict[str, Any]:
    """The manifest's (and markers') record of where an object lives and its fixity."""
    return {
        "storage_class": stored.storage_class,
        "object_sha256": stored.sha256,
        "object_checksum": stored.checksum,
    }


def commit_result(
    size: int, audio: bool, rows: list[dict[str, Any]], commit_seconds: float
) -> dict[str, Any]:
    """What the scheduler needs of a committed video (its totals, per-GOP stats, compute)."""
    compute_columns = ("compute_device", *(compute_column(stage) for stage in COMPUTE_STAGES))
    return {
        "archive_bytes": size,
        "audio": audio,
        "gops": [_gop_stats(r) for r in rows],
        "compute_rows": [{k: r.get(k) for k in compute_columns} for r in rows],
        "commit_device_seconds": commit_seconds,
    }


def record_failure(
    *,
    out: str,
    endpoint_url: str | None,
    run_id: str,
    video_key: str,
    source_uri: str,
    source_bytes: int,
    error: str,
    identity: dict[str, Any],
) -> None:
    """Mark a video failed: one manifest row with the error, a failed marker, no container."""
    error = redact(error.splitlines()[0] if error else "unknown error")
    fs, out_root = filesystem(out, endpoint_url=endpoint_url)
    remove(fs, container_path(out_root, video_key))
    row = {
        "run_id": run_id,
        "video_key": video_key,
        "source_uri": source_uri,
        "source_bytes": source_bytes,
        "codec": identity.get("codec"),
        "codec_version": identity.get("codec_version"),
        "model_id": identity.get("model_id"),
        "model_sha256": identity.get("model_sha256"),
        "device": identity.get("device"),
        "status": "failed",
        "error": error,
        "created_at": utc_now(),
    }
    write_bytes(fs, manifest_path(out_root, video_key), _parquet_bytes([row]))
    write_index_entries(fs, out_root, video_key, source_uri)
    marker = {"video_key": video_key, "source_uri": source_uri, "run_id": run_id, "error": error}
    write_json(fs, marker_path(out_root, "failed", video_key), marker)


def gop_identity(job: VideoJob, span: GopSpan) -> dict[str, Any]:
    """The columns that name one GOP of one run, shared by manifest and reference rows."""
    header = job.header
    return {
        "run_id": job.run_id,
        "video_key": job.video_key,
        "source_uri": job.source_uri,
        "gop_index": span.index,
        "first_frame": span.first_frame,
        "frame_count": span.frame_count,
        "width": header.width,
        "height": header.height,
        "fps": header.fps_num / header.fps_den,
        "fps_num": header.fps_num,
        "fps_den": header.fps_den,
        "target_kind": header.target["kind"],
        "target_value": header.target["value"],
    }


def _ok_row(job: VideoJob, span: GopSpan, meta: GopResult, entry: Any, archive_uri: str) -> dict[str, Any]:
    header = job.header
    return {
        **gop_identity(job, span),
        "source_bytes": job.source_bytes,
        "codec": header.codec,
        "codec_version": header.codec_version,
        "model_id": header.model_id,
        "model_sha256": header.model_sha256,
        "payload_bytes": meta.payload_bytes,
        "bpp": meta.bpp,
        "kbps": meta.kbps,
        "encode_seconds": meta.encode_seconds,
        "device": meta.device,
        "codec_params": json_text(meta.params, sort_keys=True),
        "target_reached": rate_target_reached(header.target["kind"], meta.params),
        "archive_uri": archive_uri,
        "offset": entry.offset,
        "length": entry.length,
        "crc32c": entry.crc32c,
        "recon_sha256": meta.recon_sha256,
        "exact_sha256": meta.exact_sha256,
        "fingerprint": meta.fingerprint,
        "status": "ok",
        "error": None,
        "created_at": utc_now(),
        **{column: getattr(header, column) for column in _SOURCE_COLUMNS},
        **floor_columns(header),
        **meta.quality_columns(),
        **{k: v for k, v in (job.metadata or {}).items() if k in SOURCE_METADATA_COLUMNS},
    }


#: Header fields repeated on every row: what the archive keeps of the source (`media.VideoInfo`).
_SOURCE_COLUMNS = (
    "source_bit_depth",
    "source_chroma",
    "coded_bit_depth",
    "source_frames_declared",
    "source_note",
)


def rate_target_reached(kind: str, params: dict[str, Any]) -> bool | None:
    """The codec's verdict on a bitrate target (its `target_reached` parameter), None for a quality
    target (nothing to reach) or a codec that gives none."""
    if kind not in ("kbps", "bpp") or "target_reached" not in params:
        return None
    return bool(params["target_reached"])


def _gop_stats(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "video_key",
        "gop_index",
        "target_reached",
        "frame_count",
        "payload_bytes",
        "bpp",
        "kbps",
        "psnr",
        "ms_ssim",
        "lpips",
        "dists",
        "vmaf",
        "encode_seconds",
        "metrics_note",
    )
    return {k: row.get(k) for k in keys}


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    return parquet_bytes(rows, MANIFEST_SCHEMA)  # page checksums + content digest (pipeline.read.manifest)
