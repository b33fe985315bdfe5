"""Parquet schemas of the manifest (one row per GOP) and of verify results (one row per sampled GOP).

These are contracts users audit and query; add columns at the end, never rename or retype one.
Quality columns are null when not computed: never a made-up value. `metrics_note` says why a column
is null (e.g. "lpips: AlexNet weights not found in the torch hub cache").

Decode proof. Each manifest row records, at encode time, `recon_sha256` (the encoder's reconstruction),
`exact_sha256` (the part of the decode that is exact on every device: GLVC's latent symbols, GVC's
codebook entries and stills, classic codecs' pixels) and `fingerprint` (per-frame luma at 1/8 scale,
at most 16 cells along the long side, delta + zlib; about 0.6 KB for a 17-frame 64×48 GOP, 2.3 KB for
33 frames of 1080p). Each verify row then says `decode_check`: "exact" (`recon_digest_ok`: the same
frames), "drift" (exact part equal, pixels not; `fingerprint_psnr` says by how much, at or above
`pipeline.digests.DRIFT_LIMIT_DB`), or "mismatch" (the exact part differs, or the drift is past that
limit). `psnr_verify`/`quality_ok` compare with the source, only with `verify --against-source`.
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
        # --- what verify proves the decode with (pipeline/digests.py); null in archives made before ---
        ("recon_sha256", pa.string()),  # sha256 of the encoder's reconstruction (uint8 T×H×W×3, C order)
        ("exact_sha256", pa.string()),  # sha256 of the exact part (Codec.exact_digest; classic: = recon)
        ("fingerprint", pa.binary()),  # compact per-frame 1/8-scale luma of the reconstruction
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
        ("recon_digest_ok", pa.bool_()),  # decoded frames' sha256 == recon_sha256 (null: none recorded)
        ("psnr_manifest", pa.float64()),
        ("psnr_verify", pa.float64()),
        ("quality_ok", pa.bool_()),
        ("decode_seconds", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # --- the decode proof (pipeline/verify.py); null for archives made before digests ---
        ("exact_ok", pa.bool_()),  # the exact part's digest == the manifest's exact_sha256
        ("fingerprint_psnr", pa.float64()),  # worst frame's luma-fingerprint PSNR (dB); null when exact
        ("decode_check", pa.string()),  # "exact" | "drift" | "mismatch" (see pipeline/verify.py)
        ("against_source", pa.bool_()),  # psnr_verify was measured against the source (--against-source)
    ]
)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys become null) as a table with exactly `schema`."""
    unknown = {key for row in rows for key in row} - set(schema.names)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)
