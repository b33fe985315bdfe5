"""Signal-fidelity metrics on uint8 RGB GOPs: PSNR (RGB and luma) and MS-SSIM.

Conventions, chosen to match how learned-video-compression papers report results so numbers compare:
- PSNR pools the squared error over every pixel of every frame of the GOP (one MSE per GOP), peak 255.
  Identical inputs would give +inf, which breaks percentiles and JSON; PSNR is capped at `PSNR_CAP_DB`
  (100 dB, as x264 and the HEVC reference software report lossless frames).
- Luma is BT.709 Y' = 0.2126 R + 0.7152 G + 0.0722 B on full-range 8-bit RGB, kept in float (no rounding,
  no chroma subsampling), peak 255 — what DCVC-style evaluations call PSNR-Y on RGB sources.
- MS-SSIM is the standard 5-scale Wang et al. definition (11-px Gaussian window, σ=1.5) from
  pytorch-msssim, on RGB in [0, 255], averaged over frames. It is only defined when the coarsest scale
  still holds a window: the smaller frame side must exceed 160 px. For smaller frames the value is null
  with a note — a "fewer scales" variant would be a different metric under the same name and would not
  compare with anybody's published MS-SSIM. On the CPU it is computed by `msssim_cpu` (OpenCV
  filters, ~10x faster, the same definition to ~1e-6); on a GPU by pytorch-msssim itself.

The cheap metrics (PSNR, PSNR-Y, and `temporal`'s flicker, which shares their luma error) are measured
on every GOP, so `pixel_metrics` computes all three in one pass over the pixels in cache-sized chunks:
the RGB squared error by OpenCV's `norm(NORM_L2SQR)` on the uint8 frames (exact: integer differences,
a double accumulator), and, luma being linear, the luma error as BT.709's weights applied to the RGB
difference in float32 (`cv2.transform`), its squares and frame-to-frame changes summed in double.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: PSNR (and the audit's imports) must not pay for it
    import torch

PSNR_CAP_DB = 100.0
MS_SSIM_MIN_SIDE = 161  # pytorch-msssim asserts side > (win_size - 1) * 2**4 = 160 for the 11-px window
_BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)


def check_pair(source: np.ndarray, recon: np.ndarray) -> None:
    """Both arrays must be uint8 T×H×W×3 of the same shape; anything else is a caller bug."""
    if source.shape != recon.shape:
        raise ValueError(f"source {source.shape} and reconstruction {recon.shape} differ in shape")
    if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or recon.dtype != np.uint8:
        raise ValueError(f"expected uint8 T×H×W×3 frames, got {source.dtype} / {recon.dtype} {source.shape}")


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    if mse <= 0:
        return PSNR_CAP_DB
    return float(min(PSNR_CAP_DB, 10.0 * np.log10(peak * peak / mse)))


#: Frames per chunk of `pixel_metrics`: a 640×360 chunk's float32 luma error stays in cache.
CHUNK_FRAMES = 8
_LUMA_WEIGHTS = _BT709.astype(np.float32).reshape(1, 3)


@dataclasses.dataclass(frozen=True)
class PixelMetrics:
    psnr: float
    psnr_y: float
    #: None for a single-frame GOP (no frame-to-frame change to measure); see `temporal`
    temporal_flicker: float | None


def pixel_metrics(source: np.ndarray, recon: np.ndarray) -> PixelMetrics:
    """PSNR, PSNR-Y and temporal flicker of a uint8 T×H×W×3 GOP pair, in one pass."""
    import cv2

    check_pair(source, recon)
    count, height, width = source.shape[:3]
    squared_rgb = squared_luma = flicker = 0.0
    previous: np.ndarray | None = None  # the last frame's luma error in the previous chunk
    for start in range(0, count, CHUNK_FRAMES):
        rows = min(CHUNK_FRAMES, count - start) * height
        src = source[start : start + CHUNK_FRAMES].reshape(rows, width * 3)
        rec = recon[start : start + CHUNK_FRAMES].reshape(rows, width * 3)
        squared_rgb += cv2.norm(src, rec, cv2.NORM_L2SQR)
        difference = cv2.subtract(src, rec, dtype=cv2.CV_32F).reshape(rows, width, 3)
        luma_error = cv2.transform(difference, _LUMA_WEIGHTS)  # rows × width, float32
        squared_luma += cv2.norm(luma_error, cv2.NORM_L2SQR)
        if previous is not None:  # the change across the chunk boundary
            flicker += cv2.norm(luma_error[:height], previous, cv2.NORM_L1)
        if rows > height:
            flicker += cv2.norm(luma_error[height:], luma_error[:-height], cv2.NORM_L1)
        previous = luma_error[-height:]
    pixels = count * height * width
    return PixelMetrics(
        psnr=psnr_from_mse(squared_rgb / (pixels * 3)),
        psnr_y=psnr_from_mse(squared_luma / pixels),
        temporal_flicker=flicker / ((count - 1) * height * width) if count > 1 else None,
    )


def psnr_rgb(source: np.ndarray, recon: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of all frames (one pooled MSE), capped at 100 dB."""
    import cv2

    check_pair(source, recon)
    flat = (-1, source.shape[2] * 3)
    squared = cv2.norm(source.reshape(flat), recon.reshape(flat), cv2.NORM_L2SQR)
    return psnr_from_mse(squared / source.size)


def psnr_y(source: np.ndarray, recon: np.ndarray) -> float:
    """PSNR in dB of BT.709 luma over all frames, capped at 100 dB."""
    return pixel_metrics(source, recon).psnr_y


def ms_ssim_unavailable_reason(height: int, width: int) -> str | None:
    """Why MS-SSIM cannot be computed at this size, or None when it can."""
    if min(height, width) < MS_SSIM_MIN_SIDE:
        return f"ms_ssim: {width}x{height} frames are below the {MS_SSIM_MIN_SIDE}-px minimum side of 5-scale MS-SSIM"
    return None


def ms_ssim(
    source: np.ndarray, recon: np.ndarray, *, device: str = "cpu", batch_frames: int = 16
) -> tuple[float | None, str | None]:
    """(mean MS-SSIM over frames, None) or (None, note) when the frames are too small."""
    check_pair(source, recon)
    reason = ms_ssim_unavailable_reason(source.shape[1], source.shape[2])
    if reason:
        return None, reason
    if device == "cpu":
        from pipeline.metrics.msssim_cpu import ms_ssim_gop

        return ms_ssim_gop(source, recon), None
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    values: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, source.shape[0], batch_frames):
            x = to_tensor(source[start : start + batch_frames], device) * 255.0
            y = to_tensor(recon[start : start + batch_frames], device) * 255.0
            values.append(_ms_ssim(x, y, data_range=255.0, size_average=False).double().cpu())
    return float(torch.cat(values).mean()), None


def to_tensor(frames: np.ndarray, device: str) -> torch.Tensor:
    """uint8 T×H×W×3 -> float32 T×3×H×W in [0, 1] on `device` (the layout every metric network takes)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
