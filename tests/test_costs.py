"""What an archive cost and what it saved: prices, the break-even arithmetic on a hand-computed case,
the equal-quality ratio and its interval, and the reference's seeded sample (no Ray, no codecs)."""

from __future__ import annotations

import math
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from test_audit import gop_row, write_part
from typer.testing import CliRunner

from jobs.audit import app
from pipeline.archive.reference import choose_gops, resolve_metric
from pipeline.audit import prices as prices_module
from pipeline.audit.costs import (
    REFERENCE_COST_COLUMNS,
    REFERENCE_ROWS_SCHEMA,
    _reference_rows,
    cost_report,
    device_cost,
    equal_quality_ratio,
    payback,
)
from pipeline.audit.prices import PricesError, load_prices
from pipeline.format.schema import REFERENCE_SCHEMA

GB = 2**30
PRICES_TOML = """
currency = "EUR"
gpu_hour = 3.0
cpu_hour = 0.05
egress_gb = 0.1
[gpu_hour_by_model]
"NVIDIA H100" = 4.0
[storage_gb_month]
standard = 0.025
cold = 0.004
"""


@pytest.fixture
def prices_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML)
    return path


def test_break_even_matches_a_hand_computed_case(prices_file: Path) -> None:
    prices = load_prices(prices_file)
    # 2 GPU-hours of an unlisted GPU at 3 + 10 CPU-hours at 0.05 = 6.5.
    cost = device_cost({"NVIDIA A10": 2 * 3600.0, "cpu": 10 * 3600.0}, prices)
    assert cost == pytest.approx(6.5)
    assert device_cost({"NVIDIA H100": 3600.0}, prices) == pytest.approx(4.0)  # its own price
    # 80 GB saved: 2.00 a month in standard (3.25 months), 0.32 in cold (20.3125), 8.00 a download.
    result = payback(cost, 80 * GB, prices)
    assert result["months"] == pytest.approx({"standard": 3.25, "cold": 20.3125})
    assert result["downloads"] == pytest.approx(0.8125)
    assert result["saving_per_month"] == pytest.approx({"standard": 2.0, "cold": 0.32})
    # No saving never pays back; a saving without extra cost pays back at once.
    never = payback(cost, -5 * GB, prices)
    assert never["months"] == {"standard": None, "cold": None} and never["downloads"] is None
    assert "never" in never["note"]
    at_once = payback(-1.0, 1 * GB, prices)
    assert at_once["months"] == {"standard": 0.0, "cold": 0.0} and at_once["downloads"] == 0.0


def test_prices_come_from_defaults_then_file_then_flags_and_say_so(prices_file: Path) -> None:
    defaults = load_prices()
    assert defaults.uses_defaults() and all(p.source == "default" for _, p in defaults.items())
    assert set(defaults.storage_gb_month) == {
        "standard",
        "infrequent_access",
        "archive_instant",
        "deep_archive",
    }
    prices = load_prices(prices_file, cpu_hour=0.07, storage=["cold=0.005", "tape=0.001"])
    assert prices.currency == "EUR" and not prices.uses_defaults()
    assert (prices.cpu_hour.value, prices.cpu_hour.source) == (0.07, "flag")
    assert (prices.gpu_hour.value, prices.gpu_hour.source) == (3.0, str(prices_file))
    # The file's storage classes replace the defaults; flags add or override single classes.
    assert {k: (p.value, p.source) for k, p in prices.storage_gb_month.items()} == {
        "standard": (0.025, str(prices_file)),
        "cold": (0.005, "flag"),
        "tape": (0.001, "flag"),
    }
    partial = load_prices(gpu_hour=2.0)
    assert partial.uses_defaults() and partial.gpu_hour.source == "flag"


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("gpu_hour = -1\n", {}, "cannot be negative"),
        ("gpu_hours = 1\n", {}, "unknown key(s) gpu_hours"),
        ("gpu_hour = 'cheap'\n", {}, "finite number"),
        ("gpu_hour = \n", {}, "not valid TOML"),
        ("storage_gb_month = 3\n", {}, "must be a table"),
        ("", {"storage": ["standard"]}, "expected CLASS=PRICE"),
        ("", {"storage": ["standard=x"]}, "not a number"),
    ],
)
def test_bad_prices_are_one_line_errors(tmp_path: Path, text: str, flags: dict, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PricesError) as error:
        load_prices(path, **flags)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_python_without_toml_reader(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(PricesError, match="no such prices file"):
        load_prices(tmp_path / "absent.toml")
    monkeypatch.setattr(prices_module, "_toml", None)  # Python 3.10 without the tomli backport
    with pytest.raises(PricesError, match=r"needs Python 3.11\+ or the tomli package"):
        load_prices(tmp_path / "absent.toml")
    assert load_prices(gpu_hour=1.0).gpu_hour.value == 1.0  # flags still work


def test_equal_quality_ratio_is_frame_weighted_with_a_bootstrap_interval() -> None:
    # Three frames of GOPs half the reference's size, one frame of equal size.
    ratio = equal_quality_ratio([math.log(0.5), 0.0], [3, 1], ["a", "b"])
    assert ratio["smaller_percent"] == pytest.approx((1 - 0.5**0.75) * 100)
    low, high = ratio["ci_percent"]
    assert 0 <= low <= ratio["smaller_percent"] <= high <= 50 and "over GOPs" in ratio["method"]
    rng = np.random.default_rng(1)
    logs = np.log(rng.uniform(0.6, 0.9, size=40))
    clustered = equal_quality_ratio(logs, np.full(40, 8), [f"v{i % 8}" for i in range(40)])
    assert "over videos" in clustered["method"] and clustered["videos"] == 8
    assert clustered["ci_percent"][0] < clustered["smaller_percent"] < clustered["ci_percent"][1]
    assert equal_quality_ratio([], [], []) is None
    assert equal_quality_ratio([0.1], [5], ["a"])["ci_percent"] is None  # one GOP: no interval


def test_reference_sample_sizes_are_honoured_and_seeded() -> None:
    counts = []
    for i in range(200):
        picks = choose_gops(f"video-{i}", list(range(0, 14, 2)), 0.3, seed=0)
        assert picks == sorted(set(picks)) and set(picks) <= set(range(0, 14, 2))
        assert len(picks) in (2, 3)  # ⌊0.3·7⌋ or ⌈0.3·7⌉
        assert picks == choose_gops(f"video-{i}", list(range(0, 14, 2)), 0.3, seed=0)
        counts.append(len(picks))
    assert abs(sum(counts) - 0.3 * 7 * 200) < 20  # randomised rounding: the expected total is F·N
    reseeded = [choose_gops(f"video-{i}", list(range(0, 14, 2)), 0.3, seed=1) for i in range(20)]
    assert reseeded != [choose_gops(f"video-{i}", list(range(0, 14, 2)), 0.3, seed=0) for i in range(20)]
    assert choose_gops("x", list(range(5)), 1.0, seed=3) == [0, 1, 2, 3, 4]
    assert choose_gops("x", [], 0.5, seed=3) == []


def test_reference_metric_falls_back_to_psnr_and_says_why() -> None:
    assert resolve_metric("dists", (), lambda: "never asked")[0] == "dists"
    assert resolve_metric(None, (), lambda: None) == ("vmaf", None)
    metric, note = resolve_metric(None, (), lambda: "vmaf: ffmpeg was built without libvmaf")
    assert metric == "psnr" and "built without libvmaf" in note
    metric, note = resolve_metric(None, ("vmaf",), lambda: None)
    assert metric == "psnr" and "--skip-metric vmaf" in note


def _reference_row(video: int, gop: int, **values) -> dict:
    row = {
        "run_id": "run-1",
        "video_key": f"key{video}",
        "source_uri": f"src/video{video}.mp4",
        "gop_index": gop,
        "frame_count": 10,
        "width": 64,
        "height": 48,
        "archive_bytes": 1000,
        "metric": "psnr",
        "metric_note": "vmaf unavailable (test): reference matched on psnr",
        "archive_score": 30.0,
        "reference_codec": "x265",
        "reference_bytes": 2000.0,
        "log_ratio": math.log(0.5),
        "cpu_seconds": 36.0,
        "encode_cpu_seconds": 7.2,
        "status": "ok",
    }
    row.update(values)
    return row


def test_cost_report_on_a_hand_built_archive(tmp_path: Path, prices_file: Path) -> None:
    """2 videos × 2 GOPs: 0.1 GPU-hour of encoding and 36 CPU-seconds of decoding per GOP."""
    rows = [
        gop_row(v, g, compute_device="NVIDIA L4", encode_device_seconds=360.0, decode_device_seconds=36.0)
        for v in range(2)
        for g in range(2)
    ]
    fs = fsspec.filesystem("file")
    (tmp_path / "manifest").mkdir()
    (tmp_path / "reference").mkdir()
    write_part(fs, str(tmp_path / "manifest/part-0.parquet"), rows)
    reference = [_reference_row(0, 0), _reference_row(1, 0), _reference_row(1, 1, run_id="older-run")]
    reference.append(_reference_row(1, 1, status="unreachable", reference_bytes=None, log_ratio=None))
    write_part(
        fs, str(tmp_path / "reference/part-0.parquet"), reference[:2] + reference[3:], REFERENCE_SCHEMA
    )
    write_part(fs, str(tmp_path / "reference/part-1.parquet"), reference[2:3], REFERENCE_SCHEMA)
    prices = load_prices(prices_file)
    total = cost_report(str(tmp_path), prices)["total"]

    assert total["device_seconds_by_kind"] == pytest.approx({"NVIDIA L4": 1440.0, "cpu": 144.0})
    assert total["compute_cost"] == pytest.approx(0.4 * 3.0 + 0.04 * 0.05)  # 1.202
    # No videos/ objects here: the payloads stand for the stored bytes, and the report says so.
    assert total["stored_bytes"] == 4000 and "payloads" in total["stored_bytes_are"]
    assert total["vs_source"]["bytes_saved"] == 100_000 - 4000
    assert total["vs_source"]["months"]["standard"] == pytest.approx(1.202 / (96_000 / GB * 0.025))
    assert total["vs_source"]["downloads"] == pytest.approx(1.202 / (96_000 / GB * 0.1))

    (ref,) = total["references"]
    # The row of an earlier run of video 1 GOP 1 is not joined; the unreachable one is counted.
    assert ref["gops_sampled"] == 3 and ref["gops_by_status"] == {"ok": 2, "unreachable": 1}
    assert ref["ratio"]["smaller_percent"] == pytest.approx(50.0)
    assert ref["ratio"]["ci_percent"] == pytest.approx([50.0, 50.0])
    assert "50.0 % smaller than x265 at equal PSNR" in ref["statement"]
    # Reference: 14.4 CPU-s of encoding on 2 sampled GOPs -> 28.8 CPU-s for the 4 GOPs.
    assert ref["reference_compute_cost_estimate"] == pytest.approx(28.8 / 3600 * 0.05)
    assert ref["reference_bytes_estimate"] == pytest.approx(8000.0)
    extra = 0.4 * 3.0 - 28.8 / 3600 * 0.05
    assert ref["vs_reference"]["extra_cost"] == pytest.approx(extra)
    assert ref["vs_reference"]["months"]["cold"] == pytest.approx(extra / (4000 / GB * 0.004))
    assert ref["measurement_cost"] == pytest.approx(3 * 36.0 / 3600 * 0.05)

    # The CLI prints the same figures with the prices and their sources; defaults are labelled.
    result = CliRunner().invoke(app, ["audit", str(tmp_path), "--json", "--prices", str(prices_file)])
    assert result.exit_code == 0, result.output
    assert '"uses_default_prices": false' in result.stdout and "50.0 % smaller than x265" in result.stdout
    text = CliRunner().invoke(app, ["audit", str(tmp_path), "--worst", "0"], terminal_width=200)
    assert text.exit_code == 0 and "default (not given)" in text.stdout and "deep_archive" in text.stdout
    bad = CliRunner().invoke(app, ["audit", str(tmp_path), "--prices", str(tmp_path / "none.toml")])
    assert bad.exit_code == 2 and "no such prices file" in bad.output and "Traceback" not in bad.output


def test_reference_rows_hold_the_columns_the_figures_read_as_one_arrow_table(tmp_path: Path) -> None:
    """A million-video archive samples hundreds of thousands of reference GOPs: one Arrow table of only
    the columns the figures read, the codec, metric, note and status dictionary-encoded, in the order
    read."""
    fs = fsspec.filesystem("file")
    (tmp_path / "reference").mkdir()
    written = [_reference_row(v, g) for v in range(3) for g in range(2)]
    write_part(fs, str(tmp_path / "reference/part-0.parquet"), written, REFERENCE_SCHEMA)
    rows = _reference_rows(str(tmp_path), None)
    assert isinstance(rows, pa.Table) and rows.num_rows == 6
    assert rows.schema == REFERENCE_ROWS_SCHEMA and rows.column_names == list(REFERENCE_COST_COLUMNS)
    for column in ("reference_codec", "metric", "metric_note", "status"):
        assert pa.types.is_dictionary(rows.schema.field(column).type), column
    assert rows.column("log_ratio").to_pylist() == [w["log_ratio"] for w in written]
