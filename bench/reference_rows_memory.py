"""Peak memory of holding an archive's classic-reference rows (`pipeline.audit.costs._reference_rows`,
which audit, ls and compare call once): ROWS synthetic reference rows (distinct keys and sources, the
same run, codec, metric and note, as one archive run writes them) in parts of 20,000, then the growth
of the process's peak RSS around the one call.

    python -m bench.reference_rows_memory --rows 200000 --work /tmp/reference-rows

Run it twice on the same WORK (the first run also writes the parts) and read the second; compare two
checkouts by running each against the same WORK.
"""

from __future__ import annotations

import argparse
import math
import resource
from pathlib import Path

import fsspec

from pipeline.format.manifest_part import parquet_bytes
from pipeline.format.schema import REFERENCE_SCHEMA

PART_ROWS = 20_000


def _row(i: int) -> dict:
    return {
        "run_id": "run-1",
        "video_key": f"synthetic_{i // PART_ROWS:04d}_clip-{i:07d}.mp4-{i:012x}",
        "source_uri": f"s3://bucket/videos/clip-{i}.mp4",
        "gop_index": 0,
        "frame_count": 10,
        "width": 64,
        "height": 48,
        "archive_bytes": 1000,
        "metric": "psnr",
        "metric_note": "vmaf unavailable: reference matched on psnr",
        "archive_score": 30.0,
        "reference_codec": "x265",
        "reference_bytes": 2000.0,
        "log_ratio": math.log(0.5) - i * 1e-7,
        "cpu_seconds": 36.0,
        "encode_cpu_seconds": 7.2,
        "status": "ok",
    }


def _write(work: Path, rows: int) -> None:
    folder = work / "reference"
    if folder.exists():
        return
    folder.mkdir(parents=True)
    fs = fsspec.filesystem("file")
    for start in range(0, rows, PART_ROWS):
        data = parquet_bytes([_row(i) for i in range(start, min(rows, start + PART_ROWS))], REFERENCE_SCHEMA)
        with fs.open(str(folder / f"part-{start // PART_ROWS:04d}.parquet"), "wb") as handle:
            handle.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/reference-rows"))
    args = parser.parse_args()
    _write(args.work, args.rows)
    from pipeline.audit.costs import _reference_rows

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = _reference_rows(str(args.work), None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(held)} reference rows held: peak RSS +{after - before:.0f} MB")


if __name__ == "__main__":
    main()
