"""`vidarc archive --target-psnr/--target-vmaf/--target-dists`: quality-targeted archiving end to end
(real PyAV files, the session's local Ray cluster, x264), the search record and cache, the options."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.archive import ArchiveError, run_archive
from pipeline.archive.config import ArchiveConfig, ConfigError, QualityGoal, quality_goal_from_options
from pipeline.format.container import read_index
from pipeline.store.storage import filesystem, range_reader

# 4:2:0 chroma caps x264's RGB PSNR near 30 dB on the 64×48 test clip: 27 dB sits inside its CRF range.
REACHABLE_PSNR = 27.0


def _rows(out: Path) -> list[dict]:
    rows = []
    for part in sorted((out / "manifest").glob("*.parquet")):  # parts, or the run's compacted files
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def _config(src: Path, out: Path, fast_metrics: tuple[str, ...], goal: QualityGoal, **kw) -> ArchiveConfig:
    return ArchiveConfig(
        src=str(src),
        out=str(out),
        codec="x264",
        gop_frames=8,
        skip_metrics=fast_metrics,
        quality_goal=goal,
        **kw,
    )


def test_per_video_target_is_reached_at_the_cheapest_setting_and_recorded(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    goal = QualityGoal("psnr", REACHABLE_PSNR, sample_gops=2)
    result = run_archive(_config(samples, out, fast_metrics, goal))

    assert result.exit_code == 0, result.summary["failures"]
    assert result.summary["quality_goal"]["metric"] == "psnr" and not result.summary["quality_targets_missed"]
    rows = [r for r in _rows(out) if r["status"] == "ok"]
    keys = {Path(r["source_uri"]).name: r["video_key"] for r in rows}
    assert sorted(keys) == ["short.mkv", "with-audio.mp4"]
    for key in keys.values():
        video_rows = sorted((r for r in rows if r["video_key"] == key), key=lambda r: r["gop_index"])
        assert {(r["target_kind"], r["target_value"]) for r in video_rows} == {("psnr", REACHABLE_PSNR)}
        params = [json.loads(r["codec_params"]) for r in video_rows]
        search = params[0]["quality_search"]
        # One setting per video, the one the search chose, on every GOP.
        assert {p["crf"] for p in params} == {round(search["chosen_quality"])}
        assert all(p["quality_search"] == search for p in params)
        points = {p["quality"]: p for p in search["points"]}
        chosen = points[search["chosen_quality"]]
        assert search["reached"] and chosen["score"] >= REACHABLE_PSNR
        # Cheapest: every cheaper (higher-CRF) setting the search measured misses the target.
        assert all(p["score"] < REACHABLE_PSNR for q, p in points.items() if q > search["chosen_quality"])
        assert 2 <= len(points) <= 10
        # The search measured what the archive stores: the sampled GOPs' (first and last) manifest PSNR
        # is what the search saw. Not to the bit: libx264's MB-tree can vary a few bytes between calls.
        sampled = [video_rows[0], video_rows[-1]] if len(video_rows) > 1 else video_rows
        assert [r["psnr"] for r in sampled] == pytest.approx(chosen["gop_scores"], abs=0.5)
        # The container header carries the goal and the search, for readers without the manifest.
        archive = Path(video_rows[0]["archive_uri"].removeprefix("file://"))
        fs, path = filesystem(str(archive))
        header = read_index(range_reader(fs, path), archive.stat().st_size, name=str(archive)).header
        assert header.extra["quality_search"] == search and header.target == {"kind": "psnr", "value": 27.0}

    # The search is cached: archiving the same video again (here after deleting its outputs) reuses it.
    short = keys["short.mkv"]
    cache = out / "quality_search" / f"{short}.json"
    stamp = cache.stat().st_mtime_ns
    for leftover in (out / "markers" / "done" / f"{short}.json", out / "videos" / f"{short}.vdrc"):
        leftover.unlink()
    again = run_archive(_config(samples, out, fast_metrics, goal))
    assert again.exit_code == 0 and again.summary["videos_ok"] == 1
    assert cache.stat().st_mtime_ns == stamp
    # A different goal is a cache miss: a new search replaces the record.
    for leftover in (out / "markers" / "done" / f"{short}.json", out / "videos" / f"{short}.vdrc"):
        leftover.unlink()
    stricter = QualityGoal("psnr", REACHABLE_PSNR + 1, sample_gops=2)
    assert run_archive(_config(samples, out, fast_metrics, stricter)).exit_code == 0
    assert json.loads(cache.read_text())["key"]["goal"]["target"] == REACHABLE_PSNR + 1


def test_per_gop_search_under_a_cap_stores_each_gops_winner(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    cap = 60.0  # kbit/s: well below what 45 dB would cost, so every GOP settles under the cap
    goal = QualityGoal("psnr", 45.0, per_gop=True, max_kbps=cap)
    result = run_archive(_config(samples, out, fast_metrics, goal, include=("short.mkv",)))

    assert result.exit_code == 0, result.summary["failures"]
    rows = [r for r in _rows(out) if r["status"] == "ok"]
    assert len(rows) == 2  # 12 frames in GOPs of 8
    missed = result.summary["quality_targets_missed"]
    assert [m["gop_index"] for m in missed] == [0, 1]
    for row in rows:
        search = json.loads(row["codec_params"])["quality_search"]
        assert search["per_gop"] and not search["reached"] and "not reached" in search["note"]
        chosen = next(p for p in search["points"] if p["quality"] == search["chosen_quality"])
        # The stored encoding is the winner's own: same rate, same PSNR as measured in the search.
        assert row["kbps"] == pytest.approx(chosen["kbps"], rel=1e-3) and row["kbps"] <= cap
        assert row["psnr"] == pytest.approx(chosen["score"], abs=1e-3)
        # Best quality under the cap: every better setting measured was over it.
        better = [p for p in search["points"] if p["quality"] < search["chosen_quality"]]
        assert better and all(p["kbps"] > cap for p in better)


def test_unmeasurable_target_metric_stops_the_job_before_any_work(
    samples: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vgg16-397923af.pth").write_bytes(b"not the ImageNet VGG16")  # found first, wrong sha256
    out = tmp_path / "out"
    config = ArchiveConfig(
        src=str(samples),
        out=str(out),
        codec="x264",
        skip_metrics=("lpips", "vmaf"),
        metric_weights=str(weights),
        quality_goal=QualityGoal("dists", 0.2),
    )
    with pytest.raises(ArchiveError, match=r"--target-dists cannot be measured: .*sha256"):
        run_archive(config)
    assert not (out / "videos").exists() and not (out / "manifest").exists()


def test_quality_target_options_are_checked() -> None:
    goal = quality_goal_from_options(None, 35.0, None, per_gop=True, max_kbps=500, search_gops=2)
    assert goal == QualityGoal("psnr", 35.0, per_gop=True, max_kbps=500, sample_gops=2)
    with pytest.raises(ConfigError, match="at most one"):
        quality_goal_from_options(90, 35.0, None, per_gop=False, max_kbps=None, search_gops=3)
    with pytest.raises(ConfigError, match="apply to a quality target"):
        quality_goal_from_options(None, None, None, per_gop=False, max_kbps=300, search_gops=3)
    base = ArchiveConfig(src="in", out="out")
    bad = [
        ({"quality_goal": QualityGoal("vmaf", 90), "skip_metrics": ("vmaf",)}, "switches off"),
        ({"quality_goal": QualityGoal("vmaf", 190)}, r"\(0, 100\]"),
        ({"quality_goal": QualityGoal("dists", 3)}, "lower is better"),
        ({"quality_goal": QualityGoal("psnr", 30, max_kbps=0)}, "--max-kbps"),
        ({"quality_goal": QualityGoal("psnr", 30, sample_gops=0)}, "--search-gops"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            ArchiveConfig(**{**base.__dict__, **change}).resolved()
    from codec.base import RateTarget

    with pytest.raises(ConfigError, match="either a rate option"):
        ArchiveConfig(src="in", out="out", target=RateTarget("kbps", 300), quality_goal=goal).resolved()
    resolved = ArchiveConfig(src="in", out="out", quality_goal=goal).resolved()
    assert resolved.target is None and resolved.as_record()["quality_goal"]["metric"] == "psnr"
