"""What reading the manifest part by part, with its checksums verified, costs against one dataset scan.

`pipeline.read.manifest.ArchiveParts` parses every part on its own (so a damaged part costs only its own
video) and verifies page checksums and the content checksum; a pyarrow dataset scan reads the same
parts in one multithreaded pass but stops at the first damaged part. Both read the same local parts,
alternately, twice each; the best of each is printed with their ratio.

    python -m bench.manifest_read --parts 2000 --rows 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

COLUMNS = ["video_key", "source_uri", "status", "codec", "frame_count", "payload_bytes", "psnr"]


def write_parts(root: Path, parts: int, rows: int) -> None:
    from pipeline.format.schema import MANIFEST_SCHEMA
    from pipeline.read.manifest import parquet_bytes

    folder = root / "manifest"
    folder.mkdir(parents=True)
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for p in range(parts):
        key = f"clip-{p:05d}.mp4-{p:012x}"
        data = [_row(key, g, created) for g in range(rows)]
        (folder / f"part-{key}.parquet").write_bytes(parquet_bytes(data, MANIFEST_SCHEMA))


def _row(key: str, gop: int, created: dt.datetime) -> dict:
    return {
        "run_id": "r", "video_key": key, "source_uri": f"s3://b/{key}", "gop_index": gop,
        "first_frame": 48 * gop, "frame_count": 48, "width": 1920, "height": 1080, "codec": "x264",
        "codec_version": "libx264 core 165", "status": "ok", "payload_bytes": 100_000 + gop,
        "psnr": 38.0 + gop / 100, "created_at": created,
    }  # fmt: skip


def per_part(root: Path) -> int:
    from pipeline.read.manifest import ArchiveParts

    return ArchiveParts(str(root)).read(COLUMNS).num_rows


def one_scan(root: Path) -> int:
    import pyarrow.dataset as ds

    from pipeline.format.schema import MANIFEST_SCHEMA

    files = sorted(str(p) for p in (root / "manifest").glob("*.parquet"))
    return ds.dataset(files, schema=MANIFEST_SCHEMA, format="parquet").to_table(columns=COLUMNS).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10, help="GOP rows per part (one part per video)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidarc-manifest-read-") as tmp:
        root = Path(tmp)
        write_parts(root, args.parts, args.rows)
        best = {"per_part": float("inf"), "one_scan": float("inf")}
        for _ in range(2):
            for name, read in (("per_part", per_part), ("one_scan", one_scan)):
                started = time.perf_counter()
                assert read(root) == args.parts * args.rows
                best[name] = min(best[name], time.perf_counter() - started)
    print(
        json.dumps(
            {
                "parts": args.parts,
                "rows_per_part": args.rows,
                "per_part_checked_seconds": round(best["per_part"], 3),
                "one_scan_seconds": round(best["one_scan"], 3),
                "ms_per_part_checked": round(1000 * best["per_part"] / args.parts, 2),
                "ratio": round(best["per_part"] / best["one_scan"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
