"""`vidarc compact` alone at 10,000 and 100,000 parts: seconds, peak RSS and where memory goes.

Usage (repository root):

    nice -n 19 python bench/compact_memory.py build --videos 10000 --gops 10 --template /tmp/parts-10k
    nice -n 19 python bench/compact_memory.py build --videos 100000 --gops 10 --fast --template /tmp/parts-100k
    nice -n 19 python bench/compact_memory.py run --template /tmp/parts-100k [--tracemalloc]

`build` writes a synthetic manifest once (bench/scale_compact.py's parts: every column an archive run
fills, page and column checksums, one done marker per video) into `--template`. `run` hard-links the
template into a fresh folder (compaction deletes parts, never rewrites them, so the template is left
as it was) and compacts it in a child process, which reports its wall and CPU seconds, its peak RSS
(`ru_maxrss`) and, with `--tracemalloc`, the peak of Python-level allocations and their top lines.
It then checks the compacted files: rows, row groups, and that each is sorted by key when it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(template: str, videos: int, gops: int, fast: bool, start: int = 0) -> None:
    """bench/scale_compact.py's parts and done markers, 5,000 at a time (never all parts in memory).
    `fast`: one seeded part's values for every video, only its key, URIs and sizes changed (and their
    column checksums recomputed): about 10x quicker to write, the same work to compact."""
    import numpy as np

    from bench.scale_compact import _part
    from pipeline.format.runinfo import manifest_path, marker_path

    root = str(Path(template).resolve())
    for folder in ("manifest", "markers/done"):
        Path(root, folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    make = _fast_parts(gops, rng) if fast else (lambda key: _part(key, gops, rng))
    started = time.perf_counter()
    for first in range(start, videos, 5000):
        for i in range(first, min(first + 5000, videos)):
            key = f"clip-{i:07d}"
            Path(manifest_path(root, key)).write_bytes(make(key))  # no fsync: a scratch template
            Path(marker_path(root, "done", key)).write_text(json.dumps({"video_key": key}))
        print(f"{min(first + 5000, videos)} parts", flush=True)
    print(f"wrote {videos} parts of {gops} rows in {time.perf_counter() - started:.1f} s to {template}")


def _fast_parts(gops: int, rng):
    """A part writer reusing one seeded part: per video, only the columns that name it change."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.scale_compact import _part
    from pipeline.format.schema import MANIFEST_SCHEMA
    from pipeline.read.manifest import (
        COLUMN_CHECKSUMS_KEY,
        WRITE_OPTIONS,
        column_checksum,
        statistics_columns,
    )

    base = pq.read_table(io.BytesIO(_part("clip-base", gops, rng)))
    names_crc, _, listed = base.schema.metadata[COLUMN_CHECKSUMS_KEY.encode()].decode().partition(";")
    checksums = listed.split(",")
    statistics = statistics_columns(MANIFEST_SCHEMA)

    def make(key: str) -> bytes:
        table = base
        payload = rng.integers(2_000, 40_000, size=gops)
        changed = {
            "video_key": [key] * gops,
            "source_uri": [f"s3://src/{key}.mp4"] * gops,
            "archive_uri": [f"s3://out/videos/{key}.vdrc"] * gops,
            "payload_bytes": payload.tolist(),
            "length": payload.tolist(),
        }
        sums = list(checksums)
        for name, values in changed.items():
            index = table.schema.get_field_index(name)
            column = pa.array(values, table.schema.field(name).type)
            table = table.set_column(index, table.schema.field(name), column)
            sums[index] = f"{column_checksum(column):08x}"
        table = table.replace_schema_metadata({COLUMN_CHECKSUMS_KEY: f"{names_crc};{','.join(sums)}"})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, **WRITE_OPTIONS, write_statistics=statistics)
        return buffer.getvalue()

    return make


def child(out: str, trace: bool) -> None:
    """Runs in a fresh process: compact `out`, print one JSON line of what it cost."""
    if trace:
        import tracemalloc

        tracemalloc.start(8)
    from pipeline.tools.compact import compact

    started, cpu = time.perf_counter(), _cpu_seconds()
    report = compact(out)
    result = {
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu, 1),  # user + system: what the machine's load does not move
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parts": report.parts_absorbed,
        "rows": report.rows,
        "files": len(report.files_written),
        "bytes_out": report.bytes_out,
        "peak_parts_held": getattr(report, "peak_parts_held", None),
    }
    if trace:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        result["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        result["top"] = [str(s) for s in snapshot.statistics("lineno")[:8]]
    print(json.dumps(result))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(template: str, trace: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="vidarc-compact-run-")) / "archive"
    started = time.perf_counter()
    shutil.copytree(template, work, copy_function=os.link)
    print(f"linked the template in {time.perf_counter() - started:.1f} s", flush=True)
    command = [sys.executable, __file__, "child", str(work)] + (["--tracemalloc"] if trace else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"compaction failed:\n{done.stderr[-2000:]}")
    print(done.stdout.strip())
    check(str(work))
    shutil.rmtree(work.parent)


def check(out: str) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in sorted(Path(out, "manifest").glob("compacted-*.parquet")):
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
        sorted_by = (meta.metadata or {}).get(b"vidarc.sorted_by")
        in_order = None
        if sorted_by:
            keys = parquet.read(columns=["video_key", "gop_index"])
            order = keys.sort_by([("video_key", "ascending"), ("gop_index", "ascending")])
            in_order = bool(pc.all(pc.equal(keys.column(0), order.column(0))).as_py()) and bool(
                pc.all(pc.equal(keys.column(1), order.column(1))).as_py()
            )
        print(
            f"{path.name}: {path.stat().st_size} B, {meta.num_rows} rows, {meta.num_row_groups} row groups, "
            f"footer {footer} B, sorted_by={sorted_by!r} in order={in_order}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--videos", type=int, default=10_000)
    b.add_argument("--gops", type=int, default=10)
    b.add_argument("--template", required=True)
    b.add_argument("--fast", action="store_true", help="one seeded part's values for every video")
    b.add_argument("--start", type=int, default=0, help="first video number (to add to a template)")
    r = sub.add_parser("run")
    r.add_argument("--template", required=True)
    r.add_argument("--tracemalloc", action="store_true")
    c = sub.add_parser("child")
    c.add_argument("out")
    c.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    if args.command == "build":
        build(args.template, args.videos, args.gops, args.fast, args.start)
    elif args.command == "run":
        run(args.template, args.tracemalloc)
    else:
        child(args.out, args.tracemalloc)


if __name__ == "__main__":
    main()
