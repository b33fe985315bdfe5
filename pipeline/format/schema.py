"""Parquet schemas of the manifest (one row per GOP), of verify results (one row per sampled GOP) and
of the classic reference (one row per GOP sampled for it); the compute columns' definition.

These are contracts users audit and query; add columns at the end, never rename or retype one.
Quality columns are null when not computed: never a made-up value. `metrics_note` says why a column
is null (e.g. "lpips: AlexNet weights not found in the torch hub cache").

Decode proof. Each manifest row records, at encode time, `recon_sha256` (the encoder's reconstruction),
`exact_sha256` (the part of the decode that is exact on every device: GLVC's latent symbols, GVC's
codebook entries and stills, classic codecs' pixels) and `fingerprint` (per-frame luma at 1/8 scale,
at most 16 cells along the long side, delta + zlib; about 0.6 KB for a 17-frame 64×48 GOP, 2.3 KB for
33 frames of 1080p). Each verify row then says `decode_check`: "exact" (`recon_digest_ok`: the same
frames), "drift" (exact part equal, pixels not; `fingerprint_psnr` says by how much, at or above
`pipeline.format.digests.DRIFT_LIMIT_DB`, or `fingerprint_identical` when the fingerprints agree cell for
cell: an infinite PSNR, stored as null, never as an infinity), "exact-part" (exact part equal; the GOP was archived without its
pixel proof, `--fingerprint-every N`: `recon_sha256` and `fingerprint` null), or "mismatch" (the exact
part differs, or the drift is past that limit). `psnr_verify`/`quality_ok` compare with the source, only with `verify --against-source`.
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
        # --- compute accounting (see COMPUTE_STAGES below); null in parts written before it existed ---
        ("compute_device", pa.string()),
        ("probe_device_seconds", pa.float64()),
        ("decode_device_seconds", pa.float64()),
        ("encode_device_seconds", pa.float64()),
        ("metrics_device_seconds", pa.float64()),
        ("search_device_seconds", pa.float64()),
        ("commit_device_seconds", pa.float64()),
        # --- what verify proves the decode with (pipeline/format/digests.py); null in archives made before ---
        ("recon_sha256", pa.string()),  # sha256 of the encoder's reconstruction (uint8 T×H×W×3, C order)
        ("exact_sha256", pa.string()),  # sha256 of the exact part (Codec.exact_digest; classic: = recon)
        ("fingerprint", pa.binary()),  # compact per-frame 1/8-scale luma of the reconstruction
        # --- from an input list (`vidarc archive LIST OUT`); null for a folder or prefix ---
        ("caption", pa.string()),
        ("license", pa.string()),
        ("split", pa.string()),
        # --- a video packed with others in one object (`--pack`): its container's range in the pack;
        # null for a single-video object. `offset` is then absolute in the pack object ---
        ("member_offset", pa.int64()),
        ("member_length", pa.int64()),
        # --- what the archive keeps of the source (null in parts of earlier releases) ---
        ("source_bit_depth", pa.int32()),  # bits per component of the source's pixels (8, 10, ...)
        ("source_chroma", pa.string()),  # "4:2:0", "4:2:2", "4:4:4", "4:0:0", "rgb"
        ("coded_bit_depth", pa.int32()),  # what the codec stored: 10 for a 10-bit source on x265, 8 on glvc
        ("source_frames_declared", pa.int64()),  # frames the source's container declares (null: unknown)
        ("source_note", pa.string()),  # e.g. "truncated source: 6 of 30 declared frames are readable; ..."
        # --- the video's object: its size (a pack member: its length), so reads that price stored
        # bytes need no listing of videos/ (null in parts of earlier releases) ---
        ("archive_bytes", pa.int64()),
        # --- the quality floor (`--min-psnr`/`--min-vmaf`, `pipeline/archive/floor.py`): the floor the
        # video was checked against (null: none), and on a fallback's rows the attempt that fell under
        # it (its codec, frame-weighted mean PSNR/VMAF, payload bytes) and `fallback_of`, that codec ---
        ("floor_metric", pa.string()),  # "psnr" | "vmaf"
        ("floor_value", pa.float64()),
        ("attempt_codec", pa.string()),
        ("attempt_psnr", pa.float64()),
        ("attempt_vmaf", pa.float64()),
        ("attempt_bytes", pa.int64()),
        ("fallback_of", pa.string()),
        # --- a bitrate target (`--target-kbps`/`--target-bpp`): whether the GOP's bits met it (within
        # the rate search's tolerance; the codec's own verdict). Null for a quality target and in parts
        # of earlier releases. A miss is counted in summary.json and by `vidarc audit` ---
        ("target_reached", pa.bool_()),
        # --- the archival lifecycle (`pipeline/store/storage_class.py`): where the video's object lives and what
        # its fixity is checked against without a download (`vidarc verify --scan checksums`). Null in
        # parts of earlier releases ---
        ("storage_class", pa.string()),  # the S3 class it was written to (null: a local folder)
        ("object_sha256", pa.string()),  # sha256 of the whole object (a pack member: of its pack)
        (
            "object_checksum",
            pa.string(),
        ),  # the store's own: "SHA256:<base64>" ("-N": multipart); null locally
        # --- lineage (`vidarc migrate`): a video re-encoded from an earlier archive's decode ---
        ("generation", pa.int32()),  # 1: coded from its source; n + 1: migrated from generation n
        ("parent_archive_uri", pa.string()),  # the object it was decoded from (null: generation 1)
        ("parent_object_sha256", pa.string()),  # that object's sha256 when it was decoded
        ("parent_video_key", pa.string()),
        (
            "source_psnr",
            pa.float64(),
        ),  # a migration's PSNR against the original source, where it still exists
    ]
)

#: Compute accounting. Every stage of the archive job measures itself where it runs (in the Ray task
#: or actor, never in the driver) as *device-seconds*: wall seconds × the devices Ray reserved for it
#: (a task with num_cpus=0.5 running 2 s spends 1 CPU-second; an actor with num_gpus=0.5 coding for
#: 4 s spends 2 GPU-seconds). Stages on the encode actor (encode, metrics, search) run on the device
#: named by `compute_device` (a GPU's model name, e.g. "NVIDIA H100 80GB HBM3", or "cpu"): a GPU actor
#: is charged its GPUs only (a GPU-hour price is taken to include its host's share of CPUs), a CPU
#: actor its reserved CPUs. `CPU_STAGES` always run on CPU tasks. Per-GOP stages (decode, encode,
#: metrics, a `--per-gop` search) are that GOP's own measurements; on an encode actor with several
#: GOPs in flight, a moment when k GOPs were coding or measuring is charged 1/k to each (`BusyClock`
#: shares), so the actor's busy time is charged once (`encode_seconds` stays the GOP's wall time); per-video stages (probe, the
#: per-video quality search, commit) are measured once per video and apportioned to its rows by frame
#: count, so a video's rows sum to what it spent. The commit columns hold the commit's time up to the
#: manifest write (the manifest cannot contain its own write time; `summary.json` has the whole).
#: Work lost to a dead actor, and idle time of the actors, are not charged to any GOP (`summary.json`
#: shows the actors' reserved device-seconds beside the busy ones).
COMPUTE_STAGES: tuple[str, ...] = ("probe", "decode", "encode", "metrics", "search", "commit")
CPU_STAGES: tuple[str, ...] = ("probe", "decode", "commit")
CPU_DEVICE = "cpu"


def compute_column(stage: str) -> str:
    """The manifest column holding `stage`'s device-seconds."""
    if stage not in COMPUTE_STAGES:
        raise ValueError(f"unknown compute stage {stage!r}")
    return f"{stage}_device_seconds"


#: `reference/part-<video_key>.parquet`: one row per GOP sampled for the classic reference
#: (`vidarc archive --reference x265 --reference-fraction F`). The reference codec codes the GOP's
#: source frames at the archive GOP's own measured quality (`metric`, `archive_score`), searched on the
#: codec's CRF like a per-GOP quality target. CRF is an integer, so the search ends on two adjacent
#: settings that bracket the archive's score (`low_*`: the cheapest measured setting scoring worse,
#: `high_*`: the setting scoring at least as well); `reference_bytes` is the size at exactly equal
#: quality, interpolated linearly in log(bytes) between them. `status`: "ok"; "unreachable" (the
#: archive's score lies outside what the reference codec reaches: no bracket, `reference_bytes` null);
#: "unmeasured" (the archive GOP has no value of the metric); "failed" (`error` says why).
#: `cpu_seconds`: the whole reference search (wall × 1 CPU: its encoder runs one thread);
#: `encode_cpu_seconds`: one encode at the `high` setting, what a reference archive would spend.
#: The manifest's decode-proof columns (written without min/max statistics: they are never range-filtered).
PROOF_COLUMNS: tuple[str, ...] = ("recon_sha256", "exact_sha256", "fingerprint")

REFERENCE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("video_key", pa.string()),
        ("source_uri", pa.string()),
        ("gop_index", pa.int32()),
        ("first_frame", pa.int64()),
        ("frame_count", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("archive_codec", pa.string()),
        ("target_kind", pa.string()),
        ("target_value", pa.float64()),
        ("archive_bytes", pa.int64()),
        ("metric", pa.string()),
        ("metric_note", pa.string()),  # why this metric (e.g. VMAF unavailable -> PSNR)
        ("archive_score", pa.float64()),
        ("reference_codec", pa.string()),
        ("reference_codec_version", pa.string()),
        ("reference_preset", pa.string()),
        ("reference_bytes", pa.float64()),
        ("log_ratio", pa.float64()),  # ln(archive_bytes / reference_bytes)
        ("low_quality", pa.float64()),
        ("low_score", pa.float64()),
        ("low_bytes", pa.int64()),
        ("high_quality", pa.float64()),
        ("high_score", pa.float64()),
        ("high_bytes", pa.int64()),
        ("search", pa.string()),  # JSON: every measured point
        ("cpu_seconds", pa.float64()),
        ("encode_cpu_seconds", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: Input-list columns carried into every manifest row of a video.
SOURCE_METADATA_COLUMNS = ("caption", "license", "split")

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
        # --- the decode proof (pipeline/tools/verify.py); null for archives made before digests ---
        ("exact_ok", pa.bool_()),  # the exact part's digest == the manifest's exact_sha256
        ("fingerprint_psnr", pa.float64()),  # worst frame's luma-fingerprint PSNR (dB); null when exact
        # or when the fingerprints are identical (then `fingerprint_identical`; the PSNR is infinite)
        (
            "decode_check",
            pa.string(),
        ),  # "exact" | "drift" | "exact-part" | "mismatch" (see pipeline/tools/verify.py)
        ("against_source", pa.bool_()),  # psnr_verify was measured against the source (--against-source)
        # the pixels differ from the encoder's but their luma fingerprint is identical (null: not compared)
        ("fingerprint_identical", pa.bool_()),
    ]
)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys become null) as a table with exactly `schema`."""
    unknown = {key for row in rows for key in row} - set(schema.names)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)
