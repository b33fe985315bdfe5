"""`vidarc audit` (and `ls`) on a manifest of many small parts, before and after `vidarc compact`, side by
side in one run.

Usage (repository root):

    nice -n 19 python bench/scale_compact.py --videos 10000 --gops 10            # local folder
    nice -n 19 python bench/scale_compact.py --videos 10000 --gops 10 --s3       # the moto S3 server

Writes a synthetic manifest (no videos): `--videos` parts of `--gops` rows each, with the columns an
archive run fills (rates, PSNR/MS-SSIM, compute seconds; seeded values), written as an archive run writes
them (`pipeline.read.manifest.parquet_bytes`: page and column checksums), and a done marker per video.
Then times `audit_archive` and `list_archive` over it, compacts it (`pipeline.tools.compact`, timed), and
times them again, checking that both see the same rows (counts and totals) before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _part(key: str, gops: int, rng: np.random.Generator) -> bytes:
    from pipeline.format.schema import MANIFEST_SCHEMA
    from pipeline.read.manifest import parquet_bytes

    rows = []
    for i in range(gops):
        payload = int(rng.integers(2_000, 40_000))
        rows.append(
            {
                "run_id": "bench", "video_key": key, "source_uri": f"s3://src/{key}.mp4", "source_bytes": 10**7,
                "gop_index": i, "first_frame": 48 * i, "frame_count": 48, "width": 640, "height": 360,
                "fps": 24.0, "fps_num": 24, "fps_den": 1, "codec": "x264", "codec_version": "164",
                "target_kind": "quality", "target_value": 23.0, "payload_bytes": payload,
                "bpp": payload * 8 / (640 * 360 * 48), "kbps": payload * 8 / 2000, "psnr": float(rng.normal(38, 2)),
                "ms_ssim": float(rng.uniform(0.95, 0.99)), "encode_seconds": 0.2, "device": "cpu",
                "archive_uri": f"s3://out/videos/{key}.vdrc", "offset": 8 + i * payload, "length": payload,
                "crc32c": int(rng.integers(0, 2**32)), "status": "ok", "compute_device": "cpu",
                "encode_device_seconds": 0.2, "decode_device_seconds": 0.05,
            }
        )  # fmt: skip
    return parquet_bytes(rows, MANIFEST_SCHEMA)  # as an archive run writes it: page and column checksums


def build(out: str, endpoint_url: str | None, videos: int, gops: int) -> None:
    from pipeline.format.runinfo import manifest_path, marker_path
    from pipeline.store.storage import filesystem, write_bytes

    fs, root = filesystem(out, endpoint_url=endpoint_url)
    rng = np.random.default_rng(0)
    parts = [(f"clip-{i:07d}", _part(f"clip-{i:07d}", gops, rng)) for i in range(videos)]

    def write(item: tuple[str, bytes]) -> None:
        key, data = item
        write_bytes(fs, manifest_path(root, key), data)
        write_bytes(fs, marker_path(root, "done", key), json.dumps({"video_key": key}).encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, parts))


def timed(out: str, endpoint_url: str | None) -> dict:
    from pipeline.audit.summary import audit_archive
    from pipeline.read.inspect import list_archive

    started = time.perf_counter()
    result = audit_archive(out, endpoint_url=endpoint_url)
    audit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    listing = list_archive(out, endpoint_url=endpoint_url)
    ls_seconds = time.perf_counter() - started
    return {
        "audit_seconds": round(audit_seconds, 2),
        "ls_seconds": round(ls_seconds, 2),
        "gops": result.rows,
        "videos": len(listing),
        "payload_bytes": sum(v.payload_bytes for v in listing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--gops", type=int, default=10)
    parser.add_argument("--s3", action="store_true", help="write to a moto S3 server on 127.0.0.1")
    args = parser.parse_args()
    endpoint = None
    if args.s3:
        import os
        import socket
        import uuid

        import boto3
        from moto.server import ThreadedMotoServer

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        out = f"s3://{bucket}/archive"
    else:
        out = str(Path(tempfile.mkdtemp(prefix="vidarc-compact-")) / "archive")
    started = time.perf_counter()
    build(out, endpoint, args.videos, args.gops)
    print(f"wrote {args.videos} parts of {args.gops} rows in {time.perf_counter() - started:.1f} s to {out}")
    before = timed(out, endpoint)
    print(f"before: {json.dumps(before)}")
    from pipeline.tools.compact import compact

    report = compact(out, endpoint_url=endpoint)
    print(f"compact: {report.line()}")
    after = timed(out, endpoint)
    print(f"after:  {json.dumps(after)}")
    same = all(before[k] == after[k] for k in ("gops", "videos", "payload_bytes"))
    print(f"same rows before and after: {same}")
    print(
        f"audit before/after: {before['audit_seconds'] / after['audit_seconds']:.1f}x; "
        f"ls before/after: {before['ls_seconds'] / after['ls_seconds']:.1f}x"
    )


if __name__ == "__main__":
    main()
