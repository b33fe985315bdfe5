"""BD-rate on analytic curves, and `vidarc compare` on two archives of the same sources."""

from __future__ import annotations

import json
import math

import fsspec
import numpy as np
import pytest
from test_audit import gop_row, write_part
from typer.testing import CliRunner

from jobs.audit import app
from pipeline.audit.bdrate import BdRateError, bd_quality, bd_rate
from pipeline.audit.compare import compare_archives

RATES = np.array([0.05, 0.1, 0.2, 0.4, 0.8])


def psnr_curve(rates: np.ndarray) -> np.ndarray:
    """A textbook RD curve: +6 dB per doubling of the rate."""
    return 30.0 + 6.0 * np.log2(rates / 0.05)


def test_bd_rate_of_a_curve_needing_80_percent_of_the_bits_is_minus_20():
    assert bd_rate(RATES, psnr_curve(RATES), 0.8 * RATES, psnr_curve(RATES)) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATES, psnr_curve(RATES), 1.25 * RATES, psnr_curve(RATES)) == pytest.approx(25.0, abs=1e-9)


def test_bd_quality_matches_the_analytic_shift():
    # B reaches A's quality with 0.8x the bits, so at equal rate it is 6·log2(1/0.8) dB better.
    gain = bd_quality(RATES, psnr_curve(RATES), 0.8 * RATES, psnr_curve(RATES))
    assert gain == pytest.approx(6.0 * math.log2(1.25), abs=1e-9)


def test_identical_curves_give_zero_and_lower_is_better_metrics_work():
    assert bd_rate(RATES, psnr_curve(RATES), RATES, psnr_curve(RATES)) == pytest.approx(0.0, abs=1e-12)
    lpips = 0.5 - 0.05 * np.log2(RATES / 0.05)  # falls as rate rises
    assert bd_rate(RATES, lpips, 0.5 * RATES, lpips) == pytest.approx(-50.0, abs=1e-9)


def test_bd_rate_refuses_curves_it_cannot_compare():
    with pytest.raises(BdRateError, match="at least 2"):
        bd_rate([0.1], [30.0], RATES, psnr_curve(RATES))
    with pytest.raises(BdRateError, match="share no"):
        bd_rate(RATES, psnr_curve(RATES), RATES, psnr_curve(RATES) + 100)


def write_archive(root, factor: float, videos: range, psnr_offset: float = 0.0) -> str:
    """Each video coded at four targets; payload bytes scale with `factor` at equal PSNR."""
    rows = []
    for v in videos:
        for t, base_bytes in enumerate((500, 1000, 2000, 4000)):
            quality = 30.0 + 6.0 * math.log2(base_bytes / 500) + psnr_offset
            for g in range(2):
                row = gop_row(v, g, target=float(t), psnr=quality, payload_bytes=round(base_bytes * factor))
                rows.append(row)
    (root / "manifest").mkdir(parents=True)
    write_part(fsspec.filesystem("file"), str(root / "manifest/part-0.parquet"), rows)
    return str(root)


def test_compare_archives_reports_bd_rate_and_per_video_changes(tmp_path):
    out_a = write_archive(tmp_path / "a", 1.0, range(3))
    out_b = write_archive(tmp_path / "b", 0.8, range(1, 4))
    result = compare_archives(out_a, out_b, metric="psnr")
    assert (result.matched_videos, result.only_in_a, result.only_in_b) == (2, 1, 1)
    assert result.bd_rate_percent == pytest.approx(-20.0, abs=1e-6)
    assert len(result.points_a) == 4
    for video in result.videos:
        assert video["rate_change_percent"] == pytest.approx(-20.0)
        assert video["quality_delta"] == pytest.approx(0.0)
        assert video["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6)


def test_compare_cli_prints_json_and_writes_html(tmp_path):
    out_a = write_archive(tmp_path / "a", 1.0, range(2))
    out_b = write_archive(tmp_path / "b", 1.0, range(2), psnr_offset=1.0)
    report = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", out_a, out_b, "--json", "--html", str(report)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["bd_rate_percent"] < 0  # same bytes, better PSNR: B saves bits
    assert payload["bd_quality"] == pytest.approx(1.0, abs=1e-6)
    assert "data:image/png;base64," in report.read_text()
    text = CliRunner().invoke(app, ["compare", out_a, out_b])
    assert text.exit_code == 0 and "BD-rate" in text.stdout


def test_compare_errors_are_one_line(tmp_path):
    out_a = write_archive(tmp_path / "a", 1.0, range(2))
    out_b = write_archive(tmp_path / "b", 1.0, range(5, 7))
    runner = CliRunner()
    for args, needle in (
        ([out_a, out_b], "share no source videos"),
        ([out_a, out_a, "--metric", "nope"], "unknown metric"),
    ):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_compare_says_when_the_archives_are_not_at_equal_quality(tmp_path):
    """A neural archive that is 17 dB worse is not "cheaper at equal quality": one sentence says so,
    and `--json` has the field; archives within the tolerance get no such sentence."""
    out_a = write_archive(tmp_path / "a", 1.0, range(2))
    out_bad = write_archive(tmp_path / "bad", 0.5, range(2), psnr_offset=-17.0)
    out_close = write_archive(tmp_path / "close", 0.9, range(2), psnr_offset=0.5)
    runner = CliRunner()
    payload = json.loads(runner.invoke(app, ["compare", out_a, out_bad, "--json"]).stdout)
    gap = payload["quality_gap"]
    assert gap["equal"] is False and gap["delta"] == pytest.approx(-17.0) and gap["tolerance"] == 1.0
    report = tmp_path / "gap.html"
    text = runner.invoke(app, ["compare", out_a, out_bad, "--html", str(report)])
    assert text.exit_code == 0
    assert "not at equal quality" in report.read_text()
    words = " ".join(text.stdout.split())  # the console wraps long lines
    assert words.count("not at equal quality") == 1
    assert "17 dB apart" in words and "A is better" in words
    close = json.loads(runner.invoke(app, ["compare", out_a, out_close, "--json"]).stdout)
    assert close["quality_gap"]["equal"] is True and close["quality_gap"]["statement"] is None
    assert "not at equal quality" not in runner.invoke(app, ["compare", out_a, out_close]).stdout
