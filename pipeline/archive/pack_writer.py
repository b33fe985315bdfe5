"""Committing a pack (`--pack N_MB`): many finished videos in one object, one manifest part, one marker.

Order, as for a single video (`video_writer`): the pack object (atomic), then the manifest part with
every member's rows (read back from the pack as stored, offsets absolute in the pack), then the pack
marker listing the members — last. A run killed before the marker leaves an orphan pack that no
reader counts; its videos are not done and the next run packs them again (under another pack id).

A member whose container cannot be built (its audio cannot be read, say) fails alone: it gets a failed
row and marker like any failed video, and the others are packed.
"""

from __future__ import annotations

import io
import time
from typing import Any

from pipeline.archive import accounting
from pipeline.archive.errors import one_line
from pipeline.archive.gop_result import GopResult
from pipeline.archive.video_writer import VideoJob, commit_result, container_inputs, object_fields, video_rows
from pipeline.format.container import bytes_reader
from pipeline.format.pack import PackWriter, read_member_index, read_pack_index
from pipeline.format.runinfo import (
    manifest_path,
    marker_path,
    pack_manifest_path,
    pack_marker_path,
    pack_path,
    utc_now,
    write_json,
)
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.locate import write_many_index_entries
from pipeline.read.manifest import parquet_bytes
from pipeline.store.storage import (
    filesystem,
    full_uri,
    is_local,
    put_checked,
    range_reader,
    remove,
    write_bytes,
)


def commit_pack(
    pack_id: str,
    jobs: list[VideoJob],
    metas: list[list[GopResult]],
    had_failed: list[bool],
    *payloads: bytes,
) -> dict[str, Any]:
    """Write one pack of `jobs` (payloads flattened in job order, GOP order). Returns
    {"pack_bytes", "archive_uri", "members": {video_key: commit result}, "failed": {video_key: reason}}."""
    started = time.perf_counter()
    out, endpoint_url = jobs[0].out, jobs[0].endpoint_url
    fs, out_root = filesystem(out, endpoint_url=endpoint_url)
    inputs, failed = [], {}
    position = 0
    for job, job_metas in zip(jobs, metas, strict=True):
        video_payloads = list(payloads[position : position + len(job.spans)])
        position += len(job.spans)
        try:
            inputs.append((job, job_metas, container_inputs(job, video_payloads)))
        except Exception as exc:  # this video fails; the pack goes on without it
            failed[job.video_key] = one_line(job.source_uri, exc)
    if not inputs:
        return {"pack_bytes": 0, "archive_uri": None, "members": {}, "failed": failed}
    path = pack_path(out_root, pack_id)

    buffer = io.BytesIO()
    writer = PackWriter(buffer)
    for job, _, (header, gops, attachments) in inputs:
        writer.add(job.video_key, header, gops, attachments)
    writer.close()
    data = buffer.getvalue()
    written = put_checked(fs, path, data, storage_class=jobs[0].storage_class)
    size = written.size
    archive_uri = full_uri(fs, path)
    # as stored: the bytes the store acknowledged by their checksum, else read back
    read = bytes_reader(data) if written.checksum or is_local(fs) else range_reader(fs, path)
    stored = {m.video_key: m for m in read_pack_index(read, size, name=archive_uri).members}  # as stored
    frames = {job.video_key: sum(s.frame_count for s in job.spans) for job, _, _ in inputs}
    frames_total = sum(frames.values()) or 1
    cpu = accounting.held("cpu")
    seconds = cpu.charge(time.perf_counter() - started)
    rows_by_video = {}
    for job, job_metas, (_, _, attachments) in inputs:
        member = stored[job.video_key]
        index = read_member_index(read, member, name=archive_uri)
        share = seconds * frames[job.video_key] / frames_total  # the commit's time, split by frames
        rows_by_video[job.video_key] = (
            video_rows(
                job,
                job_metas,
                index.gops,
                archive_uri,
                share,
                member=(member.offset, member.length),
                stored=written,
            ),
            bool(attachments),
            member.length,
        )
    all_rows = [row for rows, _, _ in rows_by_video.values() for row in rows]
    write_bytes(fs, pack_manifest_path(out_root, pack_id), parquet_bytes(all_rows, MANIFEST_SCHEMA))
    entries = [
        (job.video_key, job.source_uri, (pack_id, stored[job.video_key].offset, stored[job.video_key].length))
        for job, _, _ in inputs
    ]
    write_many_index_entries(fs, out_root, entries)  # before the marker: a committed pack is indexed
    marker = {
        "pack_id": pack_id,
        "run_id": jobs[0].run_id,
        "archive_uri": archive_uri,
        "archive_bytes": size,
        **object_fields(written),
        "members": list(rows_by_video),
        "completed_at": utc_now().isoformat(),
    }
    write_json(fs, pack_marker_path(out_root, pack_id), marker)
    for job, was_failed in zip(jobs, had_failed, strict=True):
        if was_failed and job.video_key in rows_by_video:  # an earlier run's failed row and marker
            for stale in (
                manifest_path(out_root, job.video_key),
                marker_path(out_root, "failed", job.video_key),
            ):
                remove(fs, stale)
    total = cpu.charge(time.perf_counter() - started)
    members = {
        key: commit_result(length, audio, rows, total * frames[key] / frames_total)
        for key, (rows, audio, length) in rows_by_video.items()
    }
    return {"pack_bytes": size, "archive_uri": archive_uri, "members": members, "failed": failed}
