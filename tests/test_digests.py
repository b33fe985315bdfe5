"""The decode proof's parts (pipeline/format/digests.py) and verify's per-GOP verdict (`decode_check`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.format.digests import (
    DRIFT_LIMIT_DB,
    FingerprintError,
    cell_size,
    fingerprint,
    fingerprint_psnr,
    frames_sha256,
    read_fingerprint,
)
from pipeline.sources.synthetic import synthetic_clip
from pipeline.tools.verify import decode_check


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_clip("astronaut", 9, 64, 48, seed=1)


def test_fingerprint_is_small_eighth_scale_luma(frames: np.ndarray) -> None:
    blob = fingerprint(frames)
    stride, cells = read_fingerprint(blob)
    assert stride == 1 and cells.shape == (9, 6, 8)  # every pixel, 8×8 per cell
    luma = frames.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    assert np.abs(cells[3].astype(float) - luma[3].reshape(6, 8, 8, 8).mean(axis=(1, 3))).max() <= 0.5
    assert len(blob) < cells.size  # delta + zlib store less than one byte per cell
    assert fingerprint_psnr(blob, frames) == math.inf
    # big frames: 8×8 samples every 15th pixel, 16 cells along the long side; edge cells partial
    assert cell_size(1920, 1080) == 120 and cell_size(100, 30) == 8
    big = np.zeros((2, 1080, 1920, 3), np.uint8)
    big[1, :, 960:] = 200
    stride, cells = read_fingerprint(fingerprint(big))
    assert stride == 15 and cells.shape == (2, 9, 16) and cells[1, :, 8:].min() > 0 == cells[1, :, :8].max()
    odd = synthetic_clip("coffee", 2, 70, 36, seed=0)
    assert read_fingerprint(fingerprint(odd))[1].shape == (2, 5, 9)


def test_fingerprint_refuses_damage_and_other_geometry(frames: np.ndarray) -> None:
    blob = fingerprint(frames)
    with pytest.raises(FingerprintError):
        read_fingerprint(blob[:6])
    with pytest.raises(FingerprintError):
        read_fingerprint(blob[:-3])
    with pytest.raises(FingerprintError, match="fingerprint is 9 frames"):
        fingerprint_psnr(blob, frames[:5])


def _row(frames: np.ndarray, exact: str) -> dict:
    return {"recon_sha256": frames_sha256(frames), "exact_sha256": exact, "fingerprint": fingerprint(frames)}


def test_exact_drift_and_mismatch(frames: np.ndarray) -> None:
    row = _row(frames, "e" * 64)
    assert decode_check(row, frames, "e" * 64) == {
        "decode_check": "exact",
        "exact_ok": True,
        "recon_digest_ok": True,
    }
    # a device's float noise: single pixels one level off
    noisy = frames.copy()
    rng = np.random.default_rng(0)
    idx = rng.choice(noisy.size, size=noisy.size // 50, replace=False)
    noisy.reshape(-1)[idx] = np.clip(noisy.reshape(-1)[idx].astype(int) + 1, 0, 255)
    drift = decode_check(row, noisy, "e" * 64)
    assert drift["decode_check"] == "drift" and drift["recon_digest_ok"] is False
    assert drift["fingerprint_psnr"] >= DRIFT_LIMIT_DB
    # one broken frame in the GOP: past the limit, however good the others are
    broken = frames.copy()
    broken[4] = 255 - broken[4]
    bad = decode_check(row, broken, "e" * 64)
    assert bad["decode_check"] == "mismatch" and bad["fingerprint_psnr"] < DRIFT_LIMIT_DB
    assert "drifted" in bad["problem"]
    # the exact part differs: a mismatch whatever the pixels
    symbols = decode_check(row, frames, "f" * 64)
    assert symbols["decode_check"] == "mismatch" and symbols["exact_ok"] is False
    assert "exact part" in symbols["problem"]


def test_rows_of_archives_before_digests_are_unproven(frames: np.ndarray) -> None:
    assert decode_check({"recon_sha256": None, "exact_sha256": None}, frames, "e" * 64) == {
        "decode_check": None
    }


def test_gops_archived_without_their_pixel_proof_are_judged_by_the_exact_part(frames: np.ndarray) -> None:
    """`--fingerprint-every N`: the encoder recorded no pixels, so the exact part is the whole proof."""
    row = {"recon_sha256": None, "exact_sha256": "e" * 64, "fingerprint": None}
    assert decode_check(row, frames, "e" * 64) == {"decode_check": "exact-part", "exact_ok": True}
    wrong = decode_check(row, frames, "f" * 64)
    assert wrong["decode_check"] == "mismatch" and wrong["exact_ok"] is False


def test_ten_bit_decodes_are_digested_in_full_and_fingerprinted_as_eight_bit(frames: np.ndarray) -> None:
    """uint16 RGB48 frames (a 10-bit stream's decode): every bit reaches the digest; the fingerprint
    is that of their 8-bit rounding (as the metrics see them)."""
    deep = frames.astype(np.uint16) * 257
    other = deep.copy()
    other[0, 0, 0, 0] ^= 1 << 9  # one sample differs in its high byte only
    assert frames_sha256(deep) != frames_sha256(other) != frames_sha256(frames)
    assert fingerprint(deep) == fingerprint(frames)
    assert fingerprint_psnr(fingerprint(frames), deep) == float("inf")


def test_recon_sha256_is_the_sha256_of_the_frames_bytes_whatever_their_layout(frames: np.ndarray) -> None:
    """The digest is hashed from the array's buffer, not a copy of it: still exactly the sha256 of
    the C-order bytes (uint8, or little-endian 16-bit values), for views that are not contiguous too."""
    import hashlib

    deep = frames.astype(np.uint16) * 257 + 3
    for array, raw in [
        (frames, frames.tobytes()),
        (deep, deep.astype("<u2").tobytes()),
        (frames[:, ::2, 1:], np.ascontiguousarray(frames[:, ::2, 1:]).tobytes()),
        (deep[::-1], np.ascontiguousarray(deep[::-1]).astype("<u2").tobytes()),
    ]:
        assert frames_sha256(array) == hashlib.sha256(raw).hexdigest()
    assert frames_sha256(frames[:, :, ::-1]) != frames_sha256(frames)
