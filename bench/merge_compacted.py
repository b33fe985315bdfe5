"""What merging small compacted files buys readers: an archive compacted after each of R runs (one
small compacted file per run, as a long-lived archive gets), read whole by `ls` and `audit` before and
after `vidarc compact` merges the files (`pipeline/tools/compact_merge.py`). A benchmark, not a test.

    nice -n 19 python -m bench.merge_compacted --videos 20000 --runs 200 [--s3]

Rows are synthetic (a few columns set, as `tests/test_compact.py` writes them); each read runs in this
process, best of `--repeat`, and reports wall seconds and, on the local S3 server (`--s3`), requests.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.audit.summary import audit_archive
from pipeline.audit.videos import list_archive
from pipeline.format.runinfo import manifest_path, marker_path, write_json
from pipeline.format.schema import MANIFEST_SCHEMA, rows_to_table
from pipeline.store.storage import filesystem, write_bytes
from pipeline.tools.compact import compact


def _part(key: str, gops: int) -> bytes:
    rows = [
        {"run_id": "r1", "video_key": key, "gop_index": i, "status": "ok", "payload_bytes": 1000 + i,
         "frame_count": 16, "width": 64, "height": 48, "codec": "x264", "bpp": 0.1 + i / 100, "psnr": 35.0}
        for i in range(gops)
    ]  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows, MANIFEST_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def _reads(out: str, repeat: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    for name, read in (
        ("ls (every video)", lambda: sum(1 for _ in list_archive(out))),
        ("audit", lambda: audit_archive(out).rows),
    ):
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="merge-compacted-"))
    out = str(work / "out")
    shutil.rmtree(out, ignore_errors=True)
    fs, root = filesystem(out)
    per_run = args.videos // args.runs
    started = time.perf_counter()
    for run in range(args.runs):
        for i in range(per_run):
            key = f"clip-{(run * per_run + i) * 7919 % 10_000_019:08d}"
            write_bytes(fs, manifest_path(root, key), _part(key, 1 + i % 4))
            write_json(fs, marker_path(root, "done", key), {"video_key": key})
        compact(out, merge_min_files=10**9)  # no merging: one small file per run
    print(
        f"built {args.videos} videos in {args.runs} compacted files ({time.perf_counter() - started:.0f} s)"
    )
    before = _reads(out, args.repeat)
    started = time.perf_counter()
    report = compact(out)
    merge_seconds = time.perf_counter() - started
    print(
        f"merge: {report.files_merged} files into {len(report.merged_files_written)} in {merge_seconds:.1f} s"
    )
    after = _reads(out, args.repeat)
    result = {"videos": args.videos, "files_before": args.runs, "files_after": len(report.merged_files_written),
              "merge_seconds": round(merge_seconds, 2), "before": before, "after": after}  # fmt: skip
    for name in before:
        print(f"{name:20s} {before[name]:7.2f} s with {args.runs} files  {after[name]:7.2f} s after the merge "
              f"({before[name] / after[name]:.1f}x)")  # fmt: skip
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
