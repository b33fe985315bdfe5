"""bench/scale_reads.py's copy of a local archive into a bucket (`mirror_to_s3`): every file under the same
relative key, the object URIs that rows and markers hold renamed to the bucket's, resumable. No timing."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.scale_reads import mirror_to_s3
from pipeline.store.storage import filesystem
from pipeline.tools.compact import COMPACTED_SCHEMA, write_compacted_table


def test_mirror_copies_every_file_and_renames_object_uris(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    import boto3

    local = tmp_path / "archive"
    elsewhere = tmp_path / "parts" / "videos"  # a layout hard-linked from another: its rows name that one
    for folder in ("videos", "markers/done", "index/names/ab", "manifest"):
        (local / folder).mkdir(parents=True)
    (local / "videos" / "k1.vdrc").write_bytes(b"payload")
    os.link(local / "videos" / "k1.vdrc", local / "videos" / "k2.vdrc")
    for key in ("k1", "k2"):
        marker = {"archive_uri": f"{elsewhere}/{key}.vdrc", "video_key": key}
        (local / "markers" / "done" / f"{key}.json").write_text(
            json.dumps(marker, indent=2, sort_keys=True) + "\n"
        )
    (local / "index" / "names" / "ab" / "k1.json").write_text('{"video_key": "k1"}\n')
    rows = [{"video_key": k, "gop_index": 0, "archive_uri": f"{elsewhere}/{k}.vdrc"} for k in ("k1", "k2")]
    fs, root = filesystem(str(local))
    write_compacted_table(
        fs, root, pa.Table.from_pylist(rows, schema=COMPACTED_SCHEMA), name="compacted-x.parquet"
    )
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())

    counts = mirror_to_s3(local, s3_endpoint, s3_bucket, threads=4)

    assert (counts["files"], counts["put"], counts["skipped"], counts["relocated"]) == (
        len(files),
        len(files),
        0,
        3,
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == [f"archive/{rel}" for rel in files]

    def get(rel: str) -> bytes:
        return client.get_object(Bucket=s3_bucket, Key=f"archive/{rel}")["Body"].read()

    uri = f"s3://{s3_bucket}/archive/videos"
    assert get("videos/k2.vdrc") == b"payload"
    assert json.loads(get("markers/done/k2.json")) == {"archive_uri": f"{uri}/k2.vdrc", "video_key": "k2"}
    assert get("index/names/ab/k1.json") == b'{"video_key": "k1"}\n'
    copied = pq.ParquetFile(io.BytesIO(get("manifest/compacted-x.parquet")))
    assert copied.read().column("archive_uri").to_pylist() == [f"{uri}/k1.vdrc", f"{uri}/k2.vdrc"]
    assert copied.metadata.metadata[b"vidarc.sorted_by"] == b"video_key,gop_index"

    again = mirror_to_s3(local, s3_endpoint, s3_bucket, threads=4)
    assert (again["put"], again["skipped"]) == (0, len(files))
