"""What each GOP records at encode time so `verify` can prove its decode without the source.

Three records per GOP (manifest columns, `pipeline/format/schema.py`):

- ``recon_sha256``: sha256 of the encoder's reconstruction (uint8 T×H×W×3, C order) — what a decoder
  must produce. Equal digests mean an exact decode.
- ``exact_sha256``: `Codec.exact_digest` — the part of the decode that is exact on every device (GLVC:
  the latent symbols; GVC: codebook entries and reference stills; classic codecs: the reconstruction,
  so it equals ``recon_sha256``). A differing exact part is a mismatch whatever the pixels say.
- ``fingerprint``: a small picture of the reconstruction, to say *how far* a pixel decode drifted when it
  is not exact (a neural decode on another device class, or another BLAS/vector unit): per frame, the
  BT.709 luma of square cells, each the mean of up to 8×8 samples, rounded to 8 bits. Frames up to 128
  pixels on their long side are sampled at every pixel (cells of 8×8 pixels: 1/8 scale); bigger ones at
  every s-th pixel, s = ⌈long side / 128⌉ (cells of 8s pixels), so at most `MAX_CELLS` cells span the
  long side and the cost does not grow with the frame size. It catches gross breakage of a pixel decoder
  (other weights, a changed network or library); fine detail is proven by the exact part, which fixes
  everything a pixel decoder sees.

Fingerprint bytes (format 1, little endian): ``u8 format | u16 stride s | u16 grid width | u16 grid
height | u32 frames``, then zlib (level 9) of the frames' cell values, each frame stored as its
difference from the previous one modulo 256 (the first as is), which compresses well since
consecutive frames are alike.

`fingerprint_psnr` compares a decode with a stored fingerprint: the PSNR (8-bit peak) of the worst
frame's cells, so one broken frame of a long GOP is not averaged away.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from codec.base import frames_sha256, to_8bit

FINGERPRINT_FORMAT = 1
#: Below this fingerprint PSNR (worst frame) a pixel decode that is not exact is a mismatch, not drift.
#: Measured on the bundled GLVC model (64×48, 17 frames): a bfloat16 against a float32 decode of the same
#: payload 55.9 dB (pixels at most 2 levels apart); the same GOP one quality index lower 33.2 dB;
#: another clip 10.2 dB.
DRIFT_LIMIT_DB = 40.0
SAMPLES = 8  # samples per cell side
MAX_CELLS = 16  # cells along the long side, at most
_HEADER = struct.Struct("<BHHHI")
_LUMA = np.array([0.2126, 0.7152, 0.0722])

__all__ = [
    "DRIFT_LIMIT_DB",
    "FingerprintError",
    "fingerprint",
    "fingerprint_psnr",
    "frames_sha256",
    "read_fingerprint",
]


class FingerprintError(ValueError):
    """A stored fingerprint is malformed or does not match the frames' geometry."""


def sample_stride(width: int, height: int) -> int:
    """Every how many pixels the fingerprint samples (1 up to 128 pixels on the long side)."""
    return max(1, math.ceil(max(width, height) / (MAX_CELLS * SAMPLES)))


def cell_size(width: int, height: int) -> int:
    """The side of a fingerprint cell in pixels."""
    return SAMPLES * sample_stride(width, height)


def _cells(frames: np.ndarray, stride: int) -> np.ndarray:
    """uint8 [T, gh, gw]: each cell's mean BT.709 luma over its samples (edge cells use those they have).

    Sums are exact integers (the mean of a linear luma is the luma of the mean colour), so the values
    do not depend on summation order. uint16 RGB48 frames (a 10-bit decode) are rounded to 8 bits
    first, as the quality metrics see them."""
    samples = to_8bit(frames[:, ::stride, ::stride])
    height, width = samples.shape[1:3]
    rows = np.arange(0, height, SAMPLES)
    cols = np.arange(0, width, SAMPLES)
    sums = np.add.reduceat(
        np.add.reduceat(samples, rows, axis=1, dtype=np.uint32), cols, axis=2, dtype=np.uint32
    )
    area = np.minimum(SAMPLES, height - rows)[:, None] * np.minimum(SAMPLES, width - cols)[None, :]
    luma = (sums.astype(np.float64) @ _LUMA) / area
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)


def fingerprint(frames: np.ndarray) -> bytes:
    """The compact luma fingerprint of uint8 frames T×H×W×3 (format in the module docstring)."""
    count, height, width = frames.shape[:3]
    stride = sample_stride(width, height)
    cells = _cells(frames, stride)
    deltas = cells.copy()
    deltas[1:] = cells[1:] - cells[:-1]  # uint8 arithmetic wraps: a difference modulo 256
    header = _HEADER.pack(FINGERPRINT_FORMAT, stride, cells.shape[2], cells.shape[1], count)
    return header + zlib.compress(deltas.tobytes(), 9)


def read_fingerprint(blob: bytes) -> tuple[int, np.ndarray]:
    """(sample stride, uint8 [T, gh, gw]) of a stored fingerprint; FingerprintError when malformed."""
    if len(blob) < _HEADER.size:
        raise FingerprintError(f"fingerprint of {len(blob)} bytes is too short")
    version, stride, gw, gh, count = _HEADER.unpack_from(blob, 0)
    if version != FINGERPRINT_FORMAT or stride < 1 or not gw or not gh or not count:
        raise FingerprintError(
            f"fingerprint format {version} (stride {stride}, {gw}x{gh}x{count}) is not readable"
        )
    size = count * gh * gw
    stream = zlib.decompressobj()
    try:
        raw = stream.decompress(blob[_HEADER.size :], size + 1)
    except zlib.error:
        raise FingerprintError("fingerprint data is damaged") from None
    if not stream.eof or stream.unused_data:
        raise FingerprintError("fingerprint data is truncated or padded")
    if len(raw) != size:
        raise FingerprintError(f"fingerprint holds {len(raw)} values, its header says {size}")
    deltas = np.frombuffer(raw, dtype=np.uint8).reshape(count, gh, gw)
    return stride, np.cumsum(deltas, axis=0, dtype=np.uint64).astype(np.uint8)  # undo the mod-256 deltas


def fingerprint_psnr(blob: bytes, frames: np.ndarray) -> float:
    """PSNR (dB, 8-bit peak) between a stored fingerprint and `frames`' own, on the worst frame;
    `math.inf` when they are identical (verify records that as `fingerprint_identical`, never the
    infinity). FingerprintError when the geometry does not match."""
    stride, stored = read_fingerprint(blob)
    count, height, width = frames.shape[:3]
    cell = SAMPLES * stride
    if stored.shape != (count, math.ceil(height / cell), math.ceil(width / cell)):
        raise FingerprintError(
            f"fingerprint is {stored.shape[0]} frames of {stored.shape[2]}x{stored.shape[1]} cells, "
            f"the decode {count} frames of {width}x{height} pixels"
        )
    diff = _cells(frames, stride).astype(np.float64) - stored
    worst = float(np.max(np.mean(diff.reshape(count, -1) ** 2, axis=1)))
    return math.inf if worst == 0 else 10.0 * math.log10(255.0**2 / worst)
