"""Quality-targeted search: reaches the target at the lowest rate, honours the cap, records every point."""

from __future__ import annotations

import zlib
from fractions import Fraction

import numpy as np
import pytest

from codec.base import Codec, EncodedGop, RateTarget
from pipeline.archive.quality_target import QualityTargetError, find_rate_for_quality
from pipeline.metrics import psnr_rgb
from pipeline.sources.synthetic import synthetic_clip


class QuantizingCodec(Codec):
    """A real (if simple) lossy codec: uniform quantisation with step q, then zlib. Knob 64 (worst) → 1."""

    name = "quantize"
    version = "1"
    quality_range = (64, 1)

    @classmethod
    def default_gop_frames(cls, fps: Fraction) -> int:
        return 8

    def encode(self, frames: np.ndarray, target: RateTarget, fps: Fraction) -> EncodedGop:
        step = int(target.value)
        payload = bytes([step]) + zlib.compress((frames // step).astype(np.uint8).tobytes(), 9)
        return EncodedGop(payload, self._decode(payload, frames.shape), {"step": step})

    def _decode(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        step = payload[0]
        levels = np.frombuffer(zlib.decompress(payload[1:]), dtype=np.uint8).reshape(shape).astype(np.int32)
        return np.clip(levels * step + step // 2, 0, 255).astype(np.uint8)

    def decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        return self._decode(payload, (frame_count, height, width, 3))


@pytest.fixture(scope="module")
def gops() -> list[np.ndarray]:
    clip = synthetic_clip("astronaut", 12, 64, 48, seed=5)
    return [clip[:6], clip[6:]]


def test_search_finds_the_cheapest_setting_meeting_the_target(gops):
    result = find_rate_for_quality(QuantizingCodec(), gops, 25, "psnr", 36.0)
    assert result.reached and result.chosen.score >= 36.0
    # Exhaustive check: no cheaper knob meets the target, and the one just cheaper misses it.
    codec = QuantizingCodec()
    next_cheaper = result.chosen.knob + 1
    scores = [
        psnr_rgb(g, codec.encode(g, RateTarget("quality", next_cheaper), Fraction(25)).reconstruction)
        for g in gops
    ]
    assert np.mean(scores) < 36.0
    assert len(result.points) <= 8  # interpolation, not a scan of 64 settings
    assert result.rate_target == RateTarget("quality", result.chosen.knob)
    rows = result.as_rows()
    assert len(rows) == len(result.points) and sum(r["chosen"] for r in rows) == 1


def test_per_gop_targets_the_worst_gop(gops):
    mean = find_rate_for_quality(QuantizingCodec(), gops, 25, "psnr", 36.0)
    worst = find_rate_for_quality(QuantizingCodec(), gops, 25, "psnr", 36.0, per_gop=True)
    assert min(worst.chosen.gop_scores) >= 36.0
    assert worst.chosen.kbps >= mean.chosen.kbps


def test_rate_cap_wins_over_the_quality_target(gops):
    uncapped = find_rate_for_quality(QuantizingCodec(), gops, 25, "psnr", 45.0)
    cap = uncapped.chosen.kbps * 0.6
    capped = find_rate_for_quality(QuantizingCodec(), gops, 25, "psnr", 45.0, max_kbps=cap)
    assert not capped.reached and capped.chosen.kbps <= cap
    assert "not reached" in capped.note
    assert any(not p.within_cap for p in capped.points)  # the search saw the cap bite and backed off


def test_unknown_knob_range_and_uncomputable_metric_are_clear_errors(gops):
    class NoRange(QuantizingCodec):
        quality_range = None
        name = "mystery"

    with pytest.raises(QualityTargetError, match="knob range"):
        find_rate_for_quality(NoRange(), gops, 25, "psnr", 30.0)
    with pytest.raises(QualityTargetError, match="ms_ssim"):  # 64×48 is below MS-SSIM's minimum size
        find_rate_for_quality(QuantizingCodec(), gops, 25, "ms_ssim", 0.9)


def test_x264_crf_search_reaches_a_psnr_target(gops):
    pytest.importorskip("codec.classic", reason="the classic codecs are not in this checkout yet")
    from codec.registry import create_codec

    codec = create_codec("x264")
    # 4:2:0 chroma caps RGB PSNR near 30 dB on this small clip, so the target sits inside x264's range.
    result = find_rate_for_quality(codec, gops, 25, "psnr", 28.0)
    assert result.reached and result.chosen.score >= 28.0
    crf = result.chosen.knob
    assert 0 < crf < 51 and len(result.points) <= 8
    cheaper = [
        psnr_rgb(g, codec.encode(g, RateTarget("quality", crf + 1), Fraction(25)).reconstruction)
        for g in gops
    ]
    assert np.mean(cheaper) < 28.0  # one CRF step cheaper misses the target: the search found the edge


def test_kept_encoding_is_the_chosen_settings_own(gops):
    """A per-GOP search stores the winner's encoding instead of coding the GOP again: it must be the
    chosen setting's, even when the search measured other settings after finding it."""
    codec = QuantizingCodec()
    for target, cap in ((36.0, None), (45.0, 400.0)):
        result = find_rate_for_quality(codec, gops[:1], 25, "psnr", target, max_kbps=cap, keep_encoding=True)
        assert result.encoded is not None and len(result.encoded) == 1
        again = codec.encode(gops[0], result.rate_target, Fraction(25))
        assert result.encoded[0].payload == again.payload
    assert find_rate_for_quality(codec, gops[:1], 25, "psnr", 36.0).encoded is None
