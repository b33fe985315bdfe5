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
  compare with anybody's published MS-SSIM.
"""

from __future__ import annotations

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


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    # Chunked over frames so a long 1080p GOP never needs a full float64 copy.
    total = 0.0
    for start in range(0, a.shape[0], 8):
        diff = a[start : start + 8].astype(np.float64) - b[start : start + 8].astype(np.float64)
        total += float(np.square(diff).sum())
    return total / a.size


def psnr_rgb(source: np.ndarray, recon: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of all frames (one pooled MSE), capped at 100 dB."""
    check_pair(source, recon)
    return psnr_from_mse(_mse(source, recon))


def luma_bt709(frames: np.ndarray) -> np.ndarray:
    """Full-range BT.709 luma as float32 T×H×W in [0, 255]."""
    return (frames.astype(np.float32) @ _BT709.astype(np.float32)).astype(np.float32)


def psnr_y(source: np.ndarray, recon: np.ndarray) -> float:
    """PSNR in dB of BT.709 luma over all frames, capped at 100 dB."""
    check_pair(source, recon)
    total = 0.0
    for start in range(0, source.shape[0], 8):
        diff = luma_bt709(source[start : start + 8]) - luma_bt709(recon[start : start + 8])
        total += float(np.square(diff.astype(np.float64)).sum())
    return psnr_from_mse(total / (source.size / 3))


def ms_ssim_unavailable_reason(height: int, width: int) -> str | None:
    """Why MS-SSIM cannot be computed at this size, or None when it can."""
    if min(height, width) < MS_SSIM_MIN_SIDE:
        return f"ms_ssim: {width}x{height} frames are below the {MS_SSIM_MIN_SIDE}-px minimum side of 5-scale MS-SSIM"
    return None


def ms_ssim(
    source: np.ndarray, recon: np.ndarray, *, device: str = "cpu", batch_frames: int = 16
) -> tuple[float | None, str | None]:
    """(mean MS-SSIM over frames, None) or (None, note) when the frames are too small."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    check_pair(source, recon)
    reason = ms_ssim_unavailable_reason(source.shape[1], source.shape[2])
    if reason:
        return None, reason
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
