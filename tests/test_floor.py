"""The quality floor (`--min-psnr`/`--min-vmaf`, `--fallback`): content the bundled GLVC model cannot
code (a colour-bar test pattern: about 10 dB with wrong colours) is never archived badly in silence.
It fails in one line without a fallback, or is coded again with the fallback classic codec, the
manifest keeping both the attempt and the fallback; natural footage stays GLVC."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from codec.base import RateTarget
from pipeline.archive import run_archive
from pipeline.archive.config import DEFAULT_MIN_PSNR, ArchiveConfig, ConfigError
from pipeline.archive.floor import Floor, fallback_target, floor_of, video_score
from pipeline.archive.gop_result import GopResult
from pipeline.read.reader import ArchiveReader
from pipeline.read.restore import restore_video
from pipeline.sources.synthetic import synthetic_clip
from tests.test_archive_cli import _archive, _assert_one_line_error

SKIP = ("lpips", "dists", "vmaf", "temporal")
W, H, FRAMES = 64, 64, 9  # tiny: GLVC on CPU is slow

#: Colour bars: flat saturated colours the bundled model was never trained on (8 px each, so their
#: edges fall on 4:2:0 chroma blocks and a classic codec keeps them).
BAR_COLOURS = np.array(
    [
        [192, 192, 192],
        [192, 192, 0],
        [0, 192, 192],
        [0, 192, 0],
        [192, 0, 192],
        [192, 0, 0],
        [0, 0, 192],
        [0, 0, 0],
    ],
    np.uint8,
)


def _floor(config: ArchiveConfig) -> Floor | None:
    resolved = config.resolved()
    return floor_of(resolved.min_psnr, resolved.min_vmaf)


def colour_bars(frames: int = FRAMES) -> np.ndarray:
    image = np.repeat(BAR_COLOURS[np.arange(W) * len(BAR_COLOURS) // W][None], H, axis=0)
    return np.repeat(image[None], frames, axis=0)


def _write(path: Path, frames: np.ndarray) -> Path:
    """A lossless FFV1 source (the codec, not the source, decides every pixel)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


# ---- options ---------------------------------------------------------------------------------------
def test_floor_defaults_on_for_neural_codecs_off_for_classic() -> None:
    assert _floor(ArchiveConfig("s", "o", codec="glvc")) == Floor("psnr", DEFAULT_MIN_PSNR)
    assert _floor(ArchiveConfig("s", "o", codec="gvc")) == Floor("psnr", DEFAULT_MIN_PSNR)
    assert _floor(ArchiveConfig("s", "o", codec="x264")) is None
    assert _floor(ArchiveConfig("s", "o", codec="glvc", min_psnr=0)) is None
    assert _floor(ArchiveConfig("s", "o", codec="glvc", min_vmaf=60)) == Floor("vmaf", 60)
    assert _floor(ArchiveConfig("s", "o", codec="x265", min_psnr=30)) == Floor("psnr", 30)
    resolved = ArchiveConfig("s", "o", codec="glvc").resolved()
    assert _floor(resolved.resolved()) == _floor(resolved)  # resolving twice changes nothing
    with pytest.raises(ConfigError, match="applies to a quality floor"):
        ArchiveConfig("s", "o", codec="x264", fallback="x265").resolved()
    with pytest.raises(ConfigError, match="archive's own codec"):
        ArchiveConfig("s", "o", codec="x264", min_psnr=30, fallback="x264").resolved()


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--codec", "glvc", "--min-psnr", "-3"], "--min-psnr"),
        (["--codec", "glvc", "--fallback", "vp9"], "--fallback must be one of"),
        (["--min-psnr", "30", "--min-vmaf", "80"], "one quality floor"),
    ],
)
def test_bad_floor_options_are_one_line_and_write_nothing(
    tmp_path: Path, sample_dir: Path, options: list[str], needle: str
) -> None:
    proc = _archive(str(sample_dir), str(tmp_path / "out"), *options)
    _assert_one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()


def test_video_score_is_frame_weighted_over_measured_gops() -> None:
    metas = [GopResult(metrics={"psnr": value}) for value in (10.0, 30.0, None)]
    assert video_score(metas, [1, 3, 5], "psnr") == pytest.approx(25.0)
    assert video_score([GopResult(metrics={"psnr": None})], [9], "psnr") is None


def test_fallback_keeps_the_rate_and_maps_quality_to_its_default() -> None:
    assert fallback_target(RateTarget("bpp", 0.05), "x265") == RateTarget("bpp", 0.05)
    assert fallback_target(RateTarget("kbps", 80), "x264") == RateTarget("kbps", 80)
    assert fallback_target(RateTarget("quality", 32), "x264") == RateTarget("quality", 23)
    assert fallback_target(None, "av1") == RateTarget("quality", 35)


# ---- the whole pipeline ----------------------------------------------------------------------------
def test_colour_bars_fail_under_the_floor_then_fall_back_natural_stays_glvc(
    tmp_path: Path, ray_address: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bars = _write(src / "bars.mkv", colour_bars())
    _write(src / "natural.mkv", synthetic_clip("astronaut", FRAMES, 128, 128, seed=3))
    out = tmp_path / "out"
    skip = [arg for metric in SKIP for arg in ("--skip-metric", metric)]

    proc = _archive(str(src), str(out), "--codec", "glvc", "--address", ray_address, *skip, timeout=900)

    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(lines) == 1, proc.stderr  # the run's list of failures: one line, naming the video
    assert lines[0].startswith(f"  failed: {bars}: PSNR "), lines[0]
    assert f"is under the floor of {DEFAULT_MIN_PSNR:g} dB (--min-psnr)" in lines[0]
    assert "--fallback" in lines[0]
    failed = [r for r in _rows(out) if r["source_uri"] == str(bars)]
    assert [r["status"] for r in failed] == ["failed"] and "under the floor" in failed[0]["error"]
    natural = [r for r in _rows(out) if r["source_uri"].endswith("natural.mkv")]
    assert natural and all(r["status"] == "ok" and r["codec"] == "glvc" for r in natural)
    assert all(r["floor_metric"] == "psnr" and r["floor_value"] == DEFAULT_MIN_PSNR for r in natural)
    assert all(r["fallback_of"] is None and r["attempt_codec"] is None for r in natural)
    assert all(r["psnr"] >= DEFAULT_MIN_PSNR for r in natural)

    rerun = run_archive(
        ArchiveConfig(
            src=str(src), out=str(out), codec="glvc", skip_metrics=SKIP,
            fallback="x264", retry_failed=True,
        )
    )  # fmt: skip

    assert rerun.exit_code == 0, rerun.summary.get("failures")
    assert rerun.summary["quality_floor"]["fallback_videos"] == 1
    rows = [r for r in _rows(out) if r["source_uri"] == str(bars)]
    assert rows and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert row["codec"] == "x264" and row["model_id"] is None
        assert row["fallback_of"] == "glvc" and row["attempt_codec"] == "glvc"
        assert row["attempt_psnr"] < DEFAULT_MIN_PSNR and row["attempt_bytes"] > 0
        assert row["floor_metric"] == "psnr" and row["floor_value"] == DEFAULT_MIN_PSNR
        assert row["target_kind"] == "quality" and row["target_value"] == 23  # x264's default CRF
        assert row["psnr"] >= DEFAULT_MIN_PSNR > row["attempt_psnr"]
    dest = tmp_path / "bars-restored.mkv"
    restored = restore_video(str(out), "bars.mkv", str(dest))
    assert restored.frame_count == FRAMES
    with av.open(str(dest)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    reader = ArchiveReader(restored.archive_uri)
    decoder = reader.decoder_for()
    archived = np.concatenate([reader.decode(g.index, decoder) for g in reader.index().gops])
    assert np.array_equal(frames, archived)
    assert _psnr(archived, colour_bars()) >= DEFAULT_MIN_PSNR
