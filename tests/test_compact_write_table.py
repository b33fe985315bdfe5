"""`compact.write_compacted_table` (the direct build of bench/synthetic_archive.py writes its compacted
files with it) lays a file out exactly as `vidarc compact` does: same schema, key-sorted rows, row
groups, statistics, Parquet sorting columns and key-value metadata; readers see the same rows."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.format.runinfo import manifest_path, marker_path, write_json
from pipeline.format.schema import MANIFEST_SCHEMA, rows_to_table
from pipeline.read.manifest_layout import iter_tables, plan_manifest
from pipeline.store.storage import filesystem, write_bytes
from pipeline.tools.compact import compact, write_compacted_table


def _layout(path: Path) -> dict:
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    return {
        "schema": parquet.schema_arrow.remove_metadata(),
        "metadata": {k: v for k, v in (meta.metadata or {}).items() if k != b"ARROW:schema"},
        "rows": [g.num_rows for g in groups],
        "sorting": [g.sorting_columns for g in groups],
        "statistics": [[g.column(c).is_stats_set for c in range(g.num_columns)] for g in groups],
        "compression": {g.column(c).compression for g in groups for c in range(g.num_columns)},
    }


def _readers_rows(out: str) -> list[dict]:
    fs, root = filesystem(out)
    table = pa.concat_tables(list(iter_tables(plan_manifest(fs, root))))
    return table.sort_by([("video_key", "ascending"), ("gop_index", "ascending")]).to_pylist()


def test_a_table_written_directly_is_laid_out_as_compact_lays_it_out(tmp_path: Path) -> None:
    compacted, direct = str(tmp_path / "compacted"), str(tmp_path / "direct")
    fs, root = filesystem(compacted)
    for i in range(40):
        key = f"clip-{(i * 7919) % 40:03d}"  # parts written out of key order
        rows = [{"run_id": "r1", "video_key": key, "gop_index": g, "status": "ok", "psnr": 30.0 + g,
                 "payload_bytes": 100 + g} for g in range(1 + i % 3)]  # fmt: skip
        buffer = io.BytesIO()
        pq.write_table(rows_to_table(rows, MANIFEST_SCHEMA), buffer, compression="zstd")
        write_bytes(fs, manifest_path(root, key), buffer.getvalue())
        write_json(fs, marker_path(root, "done", key), {"video_key": key})
    report = compact(compacted, row_group_rows=16)
    assert report.parts_absorbed == 40 and len(report.files_written) == 1
    (made,) = (tmp_path / "compacted" / "manifest").glob("compacted-*.parquet")

    table = pq.read_table(made)
    order = list(range(table.num_rows))
    random.Random(5).shuffle(order)
    dfs, droot = filesystem(direct)
    path = write_compacted_table(dfs, droot, table.take(order), row_group_rows=16)
    assert Path(path).name.startswith("compacted-") and Path(path).parent == tmp_path / "direct" / "manifest"

    assert _layout(Path(path)) == _layout(made)
    assert pq.read_table(path).equals(table)  # sorted back into compact's order
    assert _readers_rows(direct) == _readers_rows(compacted)
