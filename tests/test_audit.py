"""`vidarc audit`: totals, rates, percentiles, filters, worst GOPs, failures, JSON; local and on S3."""

from __future__ import annotations

import io
import json
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs.audit import app
from pipeline.audit.filters import FilterError, parse_filter
from pipeline.audit.reader import AuditError
from pipeline.audit.sketch import Reservoir
from pipeline.audit.summary import audit_archive
from pipeline.format.schema import MANIFEST_SCHEMA, VERIFY_SCHEMA, rows_to_table


def gop_row(
    video: int, gop: int, *, codec: str = "x264", target: float = 0.1, **values: Any
) -> dict[str, Any]:
    """One 'ok' manifest row for a 64×48, 10-frame, 25 fps GOP of video `video`."""
    payload = values.pop("payload_bytes", 1000)
    row = {
        "run_id": "run-1",
        "video_key": f"key{video}",
        "source_uri": f"src/video{video}.mp4",
        "source_bytes": 50_000,
        "gop_index": gop,
        "first_frame": gop * 10,
        "frame_count": 10,
        "width": 64,
        "height": 48,
        "fps": 25.0,
        "codec": codec,
        "target_kind": "bpp",
        "target_value": target,
        "payload_bytes": payload,
        "bpp": 8 * payload / (64 * 48 * 10),
        "kbps": 8 * payload / (10 / 25) / 1000,
        "encode_seconds": 0.5,
        "archive_uri": f"out/videos/key{video}.vdrc",
        "status": "ok",
    }
    row.update(values)
    return row


def write_part(fs: Any, path: str, rows: list[dict[str, Any]], schema=MANIFEST_SCHEMA) -> None:
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows, schema), buffer)
    with fs.open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def verify_row(video: int, gop: int, ok: bool = True) -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "verify_run_id": "verify-1",
        "video_key": f"key{video}",
        "gop_index": gop,
        "codec": "x264",
        "crc_ok": ok,
        "decode_ok": True,
        "quality_ok": True,
        "psnr_manifest": 35.0,
        "psnr_verify": 35.0,
        "status": "ok" if ok else "failed",
        "error": None if ok else "crc mismatch",
    }


def archive_rows() -> tuple[list[dict], list[dict]]:
    """Two parts: x264 at 0.1 bpp (3 videos × 4 GOPs, one failed video) and glvc at 0.05 bpp."""
    part1 = [
        gop_row(v, g, psnr=30.0 + v + g, vmaf=70.0 + 5 * g, lpips=0.1 * (g + 1), payload_bytes=1000)
        for v in range(3)
        for g in range(4)
    ]
    part1.append(
        {
            **gop_row(9, 0),
            "status": "failed",
            "error": "src/video9.mp4: corrupt stream",
            "payload_bytes": None,
        }
    )
    part2 = [
        gop_row(v, g, codec="glvc", target=0.05, psnr=28.0 + g, payload_bytes=500)
        for v in range(2)
        for g in range(2)
    ]
    return part1, part2


@pytest.fixture
def local_archive(tmp_path):
    fs = fsspec.filesystem("file")
    (tmp_path / "out" / "manifest").mkdir(parents=True)
    (tmp_path / "out" / "verify").mkdir()
    part1, part2 = archive_rows()
    write_part(fs, str(tmp_path / "out/manifest/part-a.parquet"), part1)
    write_part(fs, str(tmp_path / "out/manifest/part-b.parquet"), part2)
    write_part(
        fs,
        str(tmp_path / "out/verify/part-v.parquet"),
        [verify_row(0, 0), verify_row(1, 2, ok=False)],
        VERIFY_SCHEMA,
    )
    return str(tmp_path / "out")


def test_audit_totals_rates_and_percentiles(local_archive):
    result = audit_archive(local_archive)
    by_label = {g["label"]: g for g in result.groups}
    x264 = by_label["x264 bpp=0.1"]
    assert (x264["videos"], x264["gops"], x264["failures"]) == (4, 12, 1)
    assert x264["payload_bytes"] == 12_000
    assert x264["compression_ratio"] == pytest.approx(3 * 50_000 / 12_000)  # failed video not counted
    assert x264["bpp"] == pytest.approx(8 * 12_000 / (64 * 48 * 10 * 12))  # bits / (w·h·frames), no /3
    assert x264["kbps"] == pytest.approx(8 * 12_000 / (12 * 10 / 25) / 1000)
    psnr_values = [30.0 + v + g for v in range(3) for g in range(4)]
    assert x264["quality"]["psnr"]["p50"] == pytest.approx(np.quantile(psnr_values, 0.5))
    assert x264["quality"]["psnr"]["p1"] == pytest.approx(np.quantile(psnr_values, 0.01))
    # LPIPS: lower is better, so the bad-tail "p1" is the 99th percentile.
    assert x264["quality"]["lpips"]["p1"] == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.4] * 3, 0.99))
    assert "vmaf" not in by_label["glvc bpp=0.05"]["quality"]  # never computed: no made-up numbers
    assert result.failures[0]["error"] == "src/video9.mp4: corrupt stream"
    assert result.verify["rows"] == 2 and result.verify["failed"] == 1 and result.verify["crc_failed"] == 1


def test_worst_gops_are_the_lowest_psnr_and_the_highest_lpips(local_archive):
    result = audit_archive(local_archive, worst=3)
    assert [r["psnr"] for r in result.worst["psnr"]] == [28.0, 28.0, 29.0]
    assert [r["lpips"] for r in result.worst["lpips"]] == pytest.approx([0.4, 0.4, 0.4])


def test_where_filter_is_pushed_into_the_scan(local_archive):
    result = audit_archive(local_archive, where="vmaf < 80 and codec == 'x264'")
    assert result.rows == 6  # GOPs 0 and 1 (vmaf 70, 75) of three videos
    assert [g["label"] for g in result.groups] == ["x264 bpp=0.1"]
    assert audit_archive(local_archive, where="vmaf is null").rows == 5  # glvc rows + failed row
    assert (
        audit_archive(local_archive, where="status != 'ok' or (psnr >= 35 and not gop_index = 3)").rows
        == 1 + 0
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vmaf <", "ends too early"),
        ("bogus > 1", "unknown column 'bogus'"),
        ("codec > 3", "quoted string"),
        ("__import__('os').system('x')", "unexpected"),
        ("vmaf < 80 80", "after a complete expression"),
        ("(vmaf < 80", "missing ')'"),
    ],
)
def test_bad_filters_are_one_line_errors(text, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_filter(text, MANIFEST_SCHEMA)


def test_filter_semantics_on_a_table():
    table = pa.table({"vmaf": [50.0, None, 90.0], "codec": ["a", "b", "a"]})
    expression = parse_filter("not vmaf >= 60 or codec = 'b'", table.schema)
    import pyarrow.dataset as ds

    assert ds.dataset(table).to_table(filter=expression).column("codec").to_pylist() == ["a", "b"]


def test_reservoir_is_exact_when_small_and_close_when_large():
    small = Reservoir(capacity=1000)
    small.add(np.arange(100.0))
    assert small.quantile(0.05) == pytest.approx(np.quantile(np.arange(100.0), 0.05))
    big = Reservoir(capacity=5000, seed=1)
    values = np.random.default_rng(0).normal(size=200_000)
    for chunk in np.array_split(values, 37):
        big.add(chunk)
    assert big.count == 200_000 and big.mean == pytest.approx(values.mean())
    for q in (0.01, 0.05, 0.5):
        # rank error ~ sqrt(q(1-q)/n): compare ranks, not values
        rank = (values < big.quantile(q)).mean()
        assert abs(rank - q) < 4 * np.sqrt(q * (1 - q) / 5000) + 1e-3


def test_cli_json_and_one_line_errors(local_archive, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["audit", local_archive, "--json", "--worst", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {g["label"] for g in payload["groups"]} == {"x264 bpp=0.1", "glvc bpp=0.05"}
    assert len(payload["worst"]["psnr"]) == 2
    tables = runner.invoke(app, ["audit", local_archive])
    assert tables.exit_code == 0 and "x264 bpp=0.1" in tables.stdout and "worst" in tables.stdout
    bad = runner.invoke(app, ["audit", local_archive, "--where", "vmaf <<< 3"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    missing = runner.invoke(app, ["audit", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere" in missing.output and "Traceback" not in missing.output


def test_not_an_archive_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditError, match="no manifest parts"):
        audit_archive(str(tmp_path / "empty"))


def test_audit_reads_manifests_on_s3(s3_endpoint, s3_bucket):
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    part1, part2 = archive_rows()
    write_part(fs, f"{s3_bucket}/arch/manifest/part-a.parquet", part1)
    write_part(fs, f"{s3_bucket}/arch/manifest/part-b.parquet", part2)
    result = audit_archive(f"s3://{s3_bucket}/arch", endpoint_url=s3_endpoint, where="codec == 'glvc'")
    assert result.rows == 4 and result.groups[0]["payload_bytes"] == 2000
    assert result.verify is None


def test_unreachable_bucket_is_one_line(s3_endpoint):
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "s3://no-such-bucket-vidarc/x", "--endpoint-url", s3_endpoint])
    assert (
        result.exit_code == 2
        and "no-such-bucket-vidarc" in result.output
        and "Traceback" not in result.output
    )


def test_quality_target_archives_are_checked_against_their_target(tmp_path):
    """`--target-vmaf 90` archives: the audit checks the manifest's own VMAF against 90 per GOP and
    per video (frame-weighted), and never counts an unmeasured GOP as meeting it; distances invert."""
    fs = fsspec.filesystem("file")
    (tmp_path / "out" / "manifest").mkdir(parents=True)
    vmaf = {"target_kind": "vmaf", "target_value": 90.0}
    rows = [
        gop_row(0, 0, vmaf=95.0, **vmaf),
        gop_row(0, 1, vmaf=86.0, frame_count=5, **vmaf),  # short GOP; video 0 mean (950+430)/15 = 92
        gop_row(1, 0, vmaf=80.0, **vmaf),
        gop_row(1, 1, vmaf=89.0, **vmaf),  # video 1 mean 84.5: short
        gop_row(1, 2, **vmaf),  # not measured
        gop_row(2, 0, codec="x265", dists=0.12, target_kind="dists", target_value=0.1),
        gop_row(3, 0, codec="x265", dists=0.05, target_kind="dists", target_value=0.1),
    ]
    write_part(fs, str(tmp_path / "out/manifest/part-q.parquet"), rows)
    result = audit_archive(str(tmp_path / "out"))
    checks = {g["label"]: g["target_check"] for g in result.groups}
    assert checks["x264 vmaf=90"] == {
        "metric": "vmaf",
        "target": 90.0,
        "gops_measured": 4,
        "gops_short": 3,
        "gops_unmeasured": 1,
        "videos_measured": 2,
        "videos_short": 1,
        "videos_short_listed": ["key1"],
        "worst_video_mean": pytest.approx(84.5),
    }
    dists = checks["x265 dists=0.1"]
    assert (dists["gops_short"], dists["videos_short"], dists["worst_video_mean"]) == (1, 1, 0.12)
    output = CliRunner().invoke(app, ["audit", str(tmp_path / "out")]).output
    assert "quality targets" in output and "1 of 2" in output
    from pipeline.audit.report_html import write_html_report

    page = write_html_report(result, tmp_path / "report.html").read_text()
    assert "<h2>Quality targets</h2>" in page and "x264 vmaf=90" in page


def test_worst_rows_do_not_depend_on_how_the_rows_were_batched():
    """Equal values are common (a replicated clip, a metric capped at 100): the rows named must be the
    earliest of them in the stream, whether a layout yields one part per batch or 65,536 rows."""
    from pipeline.audit.sketch import WorstRows

    values = np.random.default_rng(0).integers(0, 5, size=1000).astype(float)
    expected = sorted(range(1000), key=lambda i: (values[i], i))[:10]
    for batch in (1, 7, 64, 1000):
        worst = WorstRows(10, higher_is_better=True)
        for start in range(0, 1000, batch):
            worst.offer(values[start : start + batch], lambda i, start=start: {"row": start + i})
        assert [row["row"] for row in worst.rows()] == expected, batch
    lowest = WorstRows(3, higher_is_better=False)  # lower is better: the largest values are worst
    lowest.offer(np.array([1.0, 9.0, np.nan, 9.0, 2.0]), lambda i: {"row": i})
    assert [row["row"] for row in lowest.rows()] == [1, 3, 4]
