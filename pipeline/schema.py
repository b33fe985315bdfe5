"""Parquet schemas of the manifest (one row per GOP) and of verify results (one row per sampled GOP).

These are contracts users audit and query; add columns at the end, never rename or retype one.
Quality columns are null when not computed: never a made-up value. `metrics_note` says why a column
is null (e.g. "lpips: AlexNet weights not found in the torch hub cache").
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

MANIFEST_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("video_key", pa.string()),
        ("source_uri", pa.string()),
        ("source_bytes", pa.int64()),
        ("gop_index", pa.int32()),
        ("first_frame", pa.int64()),
        ("frame_count", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("codec", pa.string()),
        ("codec_version", pa.string()),
        ("model_id", pa.string()),
        ("model_sha256", pa.string()),
        ("target_kind", pa.string()),
        ("target_value", pa.float64()),
        ("payload_bytes", pa.int64()),
        ("bpp", pa.float64()),
        ("kbps", pa.float64()),
        ("psnr", pa.float64()),
        ("ms_ssim", pa.float64()),
        ("lpips", pa.float64()),
        ("dists", pa.float64()),
        ("vmaf", pa.float64()),
        ("encode_seconds", pa.float64()),
        ("device", pa.string()),
        ("archive_uri", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("crc32c", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        # --- beyond the DESIGN.md minimum ---
        ("fps_num", pa.int64()),
        ("fps_den", pa.int64()),
        ("codec_params", pa.string()),  # JSON: what rate control chose, e.g. {"crf": 31} or {"q_index": 17}
        ("psnr_y", pa.float64()),
        ("lpips_vgg", pa.float64()),
        ("temporal_flicker", pa.float64()),
        ("metrics_note", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # --- what the archive keeps of the source (null in parts of earlier releases) ---
        ("source_bit_depth", pa.int32()),  # bits per component of the source's pixels (8, 10, ...)
        ("source_chroma", pa.string()),  # "4:2:0", "4:2:2", "4:4:4", "4:0:0", "rgb"
        ("coded_bit_depth", pa.int32()),  # what the codec stored: 10 for a 10-bit source on x265, 8 on glvc
        ("source_frames_declared", pa.int64()),  # frames the source's container declares (null: unknown)
        ("source_note", pa.string()),  # e.g. "truncated source: 6 of 30 declared frames are readable; ..."
    ]
)

VERIFY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("verify_run_id", pa.string()),
        ("video_key", pa.string()),
        ("archive_uri", pa.string()),
        ("gop_index", pa.int32()),
        ("first_frame", pa.int64()),
        ("frame_count", pa.int32()),
        ("codec", pa.string()),
        ("device", pa.string()),
        ("crc_ok", pa.bool_()),
        ("decode_ok", pa.bool_()),
        ("recon_digest_ok", pa.bool_()),  # null when the codec promises no exact digest
        ("psnr_manifest", pa.float64()),
        ("psnr_verify", pa.float64()),
        ("quality_ok", pa.bool_()),
        ("decode_seconds", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys become null) as a table with exactly `schema`."""
    unknown = {key for row in rows for key in row} - set(schema.names)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)
