"""Compute accounting and the classic reference on real archives (PyAV sources, the session's local Ray
cluster): x264 archived with an x265 reference, x265 (quality-targeted) with an x264 reference, then
audit, compare and ls on them."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from jobs.audit import app as audit_app
from jobs.inspect_archive import register as register_inspect
from pipeline.archive import ArchiveError, run_archive
from pipeline.archive.config import ArchiveConfig, QualityGoal
from pipeline.format.schema import COMPUTE_STAGES, compute_column

FRACTION = 0.5
GOP_FRAMES = 8


def _rows(out: Path, folder: str) -> list[dict]:
    return [r for p in sorted((out / folder).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def x264_archive(tmp_path_factory, sample_dir: Path, ray_address: str, fast_metrics) -> tuple[Path, dict]:
    """Both sample videos (37 and 12 frames: 5 + 2 GOPs) in x264, x265 coding half the GOPs.
    VMAF is switched off, so the reference falls back to PSNR (and says so)."""
    src = tmp_path_factory.mktemp("reference") / "src"
    shutil.copytree(sample_dir, src)
    out = src.parent / "x264"
    config = ArchiveConfig(src=str(src), out=str(out), codec="x264", gop_frames=GOP_FRAMES,
                           skip_metrics=fast_metrics, reference="x265", reference_fraction=FRACTION)  # fmt: skip
    result = run_archive(config)
    assert result.exit_code == 0, result.summary["failures"]
    return out, result.summary


@pytest.fixture(scope="module")
def x265_archive(x264_archive, fast_metrics) -> tuple[Path, dict]:
    """The short video in x265 at a PSNR target (a per-video search), x264 coding every GOP."""
    src = x264_archive[0].parent / "src"
    out = src.parent / "x265"
    config = ArchiveConfig(src=str(src), out=str(out), codec="x265", gop_frames=GOP_FRAMES, include=("short.mkv",),
                           skip_metrics=fast_metrics, quality_goal=QualityGoal("psnr", 27.0, sample_gops=1),
                           reference="x264", reference_fraction=1.0)  # fmt: skip
    result = run_archive(config)
    assert result.exit_code == 0, result.summary["failures"]
    return out, result.summary


def _check_reference_rows(out: Path, summary: dict, codec: str, fraction: float) -> list[dict]:
    manifest = {(r["video_key"], r["gop_index"]): r for r in _rows(out, "manifest")}
    reference = _rows(out, "reference")
    per_video = defaultdict(int)
    for key, _ in manifest:
        per_video[key] += 1
    sampled = defaultdict(int)
    for row in reference:
        sampled[row["video_key"]] += 1
        gop = manifest[(row["video_key"], row["gop_index"])]
        assert row["status"] == "ok", row["error"]
        assert row["reference_codec"] == codec and row["metric"] == "psnr" and row["run_id"] == gop["run_id"]
        # Equal quality: the archive GOP's own measured PSNR, bracketed by two adjacent CRFs of the
        # reference (the search's resolution), the size interpolated between them.
        assert row["archive_score"] == gop["psnr"] and row["archive_bytes"] == gop["payload_bytes"]
        assert abs(row["high_quality"] - row["low_quality"]) == 1
        assert row["low_score"] < row["archive_score"] <= row["high_score"]
        ends = sorted((row["low_bytes"], row["high_bytes"]))  # interpolated between the two
        assert ends[0] <= row["reference_bytes"] <= ends[1]
        assert row["log_ratio"] == pytest.approx(math.log(row["archive_bytes"] / row["reference_bytes"]))
        assert 0 < row["encode_cpu_seconds"] <= row["cpu_seconds"]
        assert {p["quality"] for p in json.loads(row["search"])} >= {row["low_quality"], row["high_quality"]}
    for key, gops in per_video.items():  # the sample size: ⌊F·n⌋ or ⌈F·n⌉ GOPs of every video
        assert sampled[key] in (math.floor(fraction * gops), math.ceil(fraction * gops))
    ref = summary["reference"]
    assert ref["codec"] == codec and ref["gops_sampled"] == len(reference) == ref["gops"]["ok"]
    assert ref["ratio"]["gops"] == len(reference)
    word = "smaller" if ref["ratio"]["smaller_percent"] >= 0 else "larger"
    assert f"% {word} than {codec} at equal PSNR" in ref["statement"]
    return reference


def _check_compute(out: Path, summary: dict, stages_on_actor: set[str]) -> None:
    from pipeline.archive.actors import cpus_per_actor

    rows = _rows(out, "manifest")
    compute = summary["compute"]
    held = cpus_per_actor(ArchiveConfig(src="", out=""))  # what Ray reserved for the one CPU actor
    for row in rows:
        assert row["compute_device"] == "cpu"
        # Device-seconds: the GOP's share of the actor's wall seconds (a GOP measured while another
        # codes shares that time with it) times the CPUs the actor holds.
        assert 0 < row["encode_device_seconds"] <= row["encode_seconds"] * held * (1 + 1e-9)
        for stage in COMPUTE_STAGES:
            value = row[compute_column(stage)]
            if stage == "search" and "search" not in stages_on_actor:
                assert value is None
            else:
                assert value is not None and value >= 0, (stage, row)
        assert row["encode_device_seconds"] > 0 and row["decode_device_seconds"] > 0
    # A video's rows add up to what summary.json says it spent (per-video stages apportioned).
    for key, spent in compute["videos"].items():
        video_rows = [r for r in rows if r["video_key"] == key]
        for stage in ("probe", "decode", "encode", "metrics", *stages_on_actor):
            total = sum(r[compute_column(stage)] for r in video_rows)
            assert total == pytest.approx(spent[stage]["cpu"], rel=1e-9), stage
        assert spent["commit"]["cpu"] >= sum(r["commit_device_seconds"] for r in video_rows)
    assert compute["by_stage"]["reference"]["cpu"] == pytest.approx(summary["reference"]["cpu_seconds"])
    assert compute["archive_by_device"]["cpu"] == pytest.approx(
        sum(kinds["cpu"] for stage, kinds in compute["by_stage"].items() if stage != "reference")
    )
    assert compute["actors_reserved"]["cpu"] > 0
    # Coding, measuring and searching are charged the actor's busy time once, however many GOPs and
    # searches were in flight together.
    busy = sum(actor["actor"]["busy_seconds"] for actor in summary["encode_actors"]) * held
    on_actor = sum(
        r["encode_device_seconds"] + r["metrics_device_seconds"] + (r["search_device_seconds"] or 0.0)
        for r in rows
    )
    assert 0 < on_actor <= busy * (1 + 1e-9)


def test_x264_archive_with_an_x265_reference(x264_archive) -> None:
    out, summary = x264_archive
    _check_compute(out, summary, set())
    _check_reference_rows(out, summary, "x265", FRACTION)
    ref = summary["reference"]
    assert ref["metric"] == "psnr" and "--skip-metric vmaf" in ref["metric_note"]
    assert {r["metric_note"] for r in _rows(out, "reference")} == {ref["metric_note"]}
    # the run's closing compaction took both videos' reference parts (their references were complete)
    assert [p.name.split("-")[0] for p in (out / "reference").iterdir()] == ["compacted"]
    assert summary["compaction"]["reference_parts_absorbed"] == 2


def test_x265_archive_at_a_target_with_an_x264_reference(x265_archive) -> None:
    out, summary = x265_archive
    _check_compute(out, summary, {"search"})
    rows = _check_reference_rows(out, summary, "x264", 1.0)
    assert len(rows) == 2  # fraction 1: every GOP of the 12-frame video
    assert "quality target" in summary["reference"]["metric_note"]


def test_audit_compare_and_ls_show_the_same_figures(x264_archive, x265_archive, tmp_path: Path) -> None:
    (out_a, summary_a), (out_b, _) = x264_archive, x265_archive
    prices = tmp_path / "prices.toml"
    prices.write_text("cpu_hour = 0.04\n[storage_gb_month]\nstandard = 0.02\n")
    runner = CliRunner()
    audit = runner.invoke(audit_app, ["audit", str(out_a), "--json", "--prices", str(prices)])
    assert audit.exit_code == 0, audit.output
    costs = json.loads(audit.stdout)["costs"]
    total = costs["total"]
    assert total["stored_bytes_are"].startswith("archive objects")
    stored = sum(p.stat().st_size for p in (out_a / "videos").glob("*.vdrc"))
    assert total["vs_source"]["bytes_saved"] == total["source_bytes"] - stored
    archive_seconds = sum(s for stage, k in summary_a["compute"]["by_stage"].items() if stage not in ("reference", "commit") for s in k.values())  # fmt: skip
    listed = sum(sum(k.values()) for stage, k in total["device_seconds"].items() if stage != "commit")
    assert listed == pytest.approx(archive_seconds)
    (ref,) = total["references"]
    assert ref["statement"] == summary_a["reference"]["statement"]
    assert total["vs_source"]["months"]["standard"] == pytest.approx(
        total["compute_cost"] / (total["vs_source"]["bytes_saved"] / 2**30 * 0.02)
    )
    html = tmp_path / "audit.html"
    assert runner.invoke(audit_app, ["audit", str(out_a), "--html", str(html)]).exit_code == 0
    page = html.read_text()
    assert "Cost and break-even" in page and ref["statement"] in page and "default (not given)" in page

    compare_html = tmp_path / "compare.html"
    args = ["compare", str(out_a), str(out_b), "--json", "--cpu-hour", "0.04", "--html", str(compare_html)]
    compare = runner.invoke(audit_app, args)
    assert compare.exit_code == 0, compare.output
    assert "Cost and break-even (matched videos)" in compare_html.read_text()
    result = json.loads(compare.stdout)
    assert result["matched_videos"] == 1
    assert result["costs_a"]["total"]["videos"] == result["costs_b"]["total"]["videos"] == 1
    assert result["costs_b"]["total"]["references"][0]["codec"] == "x264"
    b_vs_a = result["b_vs_a"]
    assert b_vs_a["bytes_saved"] == (
        result["costs_a"]["total"]["payload_bytes"] - result["costs_b"]["total"]["payload_bytes"]
    )

    ls_app = typer.Typer()
    register_inspect(ls_app)
    listing = runner.invoke(ls_app, ["ls", str(out_b), "--json", "--cpu-hour", "0.04"])
    assert listing.exit_code == 0, listing.output
    (video,) = json.loads(listing.stdout)
    assert (
        video["costs"]["references"][0]["statement"]
        == result["costs_b"]["total"]["references"][0]["statement"]
    )
    assert video["costs"]["compute_cost"] == pytest.approx(result["costs_b"]["total"]["compute_cost"])
    assert {p["source"] for p in video["costs"]["prices"]["prices"]} == {"default", "flag"}
    table = runner.invoke(ls_app, ["ls", str(out_b)], terminal_width=200)
    assert table.exit_code == 0 and "vs x264" in table.stdout and "default (not given)" in table.stdout


def test_reference_options_are_checked_before_any_work(tmp_path: Path, sample_dir: Path) -> None:
    for options, message in (
        ({"reference": "glvc"}, "--reference must be one of x264, x265, av1"),
        ({"reference": "x265", "reference_fraction": 0.0}, "--reference-fraction must be in (0, 1]"),
        ({"reference": "x265", "reference_preset": "warp9"}, "--reference x265"),
        ({"reference_preset": "slow"}, "--reference-preset applies to a --reference codec"),
    ):
        with pytest.raises(ArchiveError, match=None) as error:
            run_archive(ArchiveConfig(src=str(sample_dir), out=str(tmp_path / "out"), **options))
        assert message in str(error.value)
        assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_actor_is_charged_its_share_of_the_named_gpu(tmp_path: Path, sample_dir: Path, ray_address: str,
                                                         fast_metrics) -> None:  # fmt: skip
    """GLVC (bundled model) on half a GPU: GPU-seconds = wall × 0.5 under the GPU's model name; the
    x264 reference runs on CPU tasks beside it."""
    import torch

    out = tmp_path / "out"
    config = ArchiveConfig(src=str(sample_dir), out=str(out), codec="glvc", gop_frames=5, include=("short.mkv",),
                           num_gpus_per_actor=0.5, skip_metrics=fast_metrics, reference="x264",
                           reference_fraction=1.0, min_psnr=0)  # fmt: skip  # 64×48: under GLVC's floor
    result = run_archive(config)
    assert result.exit_code == 0, result.summary["failures"]
    name = torch.cuda.get_device_name(0)
    for row in _rows(out, "manifest"):
        assert row["compute_device"] == name
        assert 0 < row["encode_device_seconds"] <= row["encode_seconds"] * 0.5 * (1 + 1e-9)
    compute = result.summary["compute"]
    assert set(compute["by_stage"]["encode"]) == {name} and set(compute["by_stage"]["decode"]) == {"cpu"}
    assert set(compute["actors_reserved"]) == {name}
    reference = _rows(out, "reference")
    assert reference and {r["status"] for r in reference} <= {"ok", "unreachable"}
    assert compute["by_stage"]["reference"]["cpu"] > 0


def test_reference_rows_a_run_could_not_write_are_completed_by_the_next_run(
    x264_archive, fast_metrics, tmp_path
):
    """A video's reference part is written after its commit. When that write never happens (a driver
    killed in between; here `reference` is a file, so the write fails), its sampled GOPs wait in
    `markers/reference/`, and the next run with the same --reference completes the part from the
    sources without archiving anything again."""
    src = x264_archive[0].parent / "src"
    out = tmp_path / "out"
    out.mkdir()
    (out / "reference").write_text("in the way")
    config = ArchiveConfig(src=str(src), out=str(out), codec="x264", gop_frames=GOP_FRAMES,
                           skip_metrics=fast_metrics, reference="x265", reference_fraction=FRACTION)  # fmt: skip
    first = run_archive(config)
    assert first.exit_code == 0, first.summary["failures"]
    done = sorted(p.stem for p in (out / "markers" / "done").glob("*.json"))
    assert len(done) == 2 and first.summary["reference"]["gops_sampled"] == 0
    assert sorted(p.stem for p in (out / "markers" / "reference").glob("*.json")) == done

    (out / "reference").unlink()
    second = run_archive(config)
    assert second.exit_code == 0, second.summary["failures"]
    assert second.summary["videos_ok"] == 0 and second.summary["videos_skipped_done"] == 2
    assert second.summary["reference"]["backfilled_videos"] == 2
    assert not list((out / "markers" / "reference").glob("*.json"))
    rows = _check_reference_rows(out, second.summary, "x265", FRACTION)
    assert {r["run_id"] for r in rows} == {first.run_id}  # the rows of the run that archived the GOPs
    # The same GOPs an uninterrupted run samples (seeded by video), none twice.
    original = _rows(x264_archive[0], "reference")
    assert sorted((r["video_key"], r["gop_index"]) for r in rows) == sorted(
        (r["video_key"], r["gop_index"]) for r in original
    )
