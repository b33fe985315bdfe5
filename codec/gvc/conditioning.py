"""What the flow model is conditioned on in each GVC mode (t2v, i2v, flf2v).

Wan2.1's image-conditioned models take, besides x_t, a condition y = [mask (4 ch), VAE latent of a
conditioning video (16 ch)] concatenated on the channel axis (36 input channels in all). The
conditioning video holds the known frames — the first (I2V) or first and last (FLF2V) — and zeros
(mid-grey) elsewhere; the mask is 1 on known pixel frames, folded by the VAE's temporal stride 4 into
4 channels per latent frame, as diffusers' `WanImageToVideoPipeline.prepare_latents` builds it.

The bundled tiny flow model uses the same layout for all three modes (trained with random conditioning
dropout), so T2V is the same network with an all-zero mask and an all-zero condition latent. Real Wan
T2V transformers have 16 input channels and get no y at all.

The conditioning frames are always the *decoded* reference stills, on both sides, so the encoder's
loop is exactly the decoder's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

TEMPORAL_STRIDE = 4
MASK_CHANNELS = 4


def condition_mask(mode: str, pixel_frames: int, latent_frames: int, height: int, width: int) -> torch.Tensor:
    """float32 [4, latent_frames, height, width] mask of the known frames (latent resolution)."""
    known = torch.zeros(pixel_frames)
    if mode in ("i2v", "flf2v"):
        known[0] = 1.0
    if mode == "flf2v":
        known[-1] = 1.0
    # The first latent frame stands for one pixel frame: repeat it to fill a whole stride.
    padded = torch.cat([known[:1].repeat(TEMPORAL_STRIDE), known[1:]])
    if padded.numel() != latent_frames * TEMPORAL_STRIDE:
        raise ValueError(f"{pixel_frames} pixel frames do not fold into {latent_frames} latent frames")
    mask = padded.view(latent_frames, TEMPORAL_STRIDE).transpose(0, 1)  # [4, F_lat]
    return mask[:, :, None, None].expand(MASK_CHANNELS, latent_frames, height, width).contiguous()


def conditioning_video(
    mode: str, first: np.ndarray | None, last: np.ndarray | None, frames: int
) -> np.ndarray:
    """uint8 T×H×W×3: the known frames in place, mid-grey (0 in [−1, 1]) elsewhere."""
    ref = first if first is not None else last
    assert ref is not None
    video = np.full((frames, *ref.shape), 128, dtype=np.uint8)
    if mode in ("i2v", "flf2v") and first is not None:
        video[0] = first
    if mode == "flf2v" and last is not None:
        video[-1] = last
    return video


def build_condition(
    mode: str,
    first: np.ndarray | None,
    last: np.ndarray | None,
    pixel_frames: int,
    latent_shape: tuple[int, int, int, int],
    encode: Callable[[np.ndarray], torch.Tensor],
) -> torch.Tensor:
    """y [4 + C, F_lat, h, w] for the mode; T2V gives zeros (the tiny model's 'nothing known')."""
    channels, latent_frames, height, width = latent_shape
    mask = condition_mask(mode, pixel_frames, latent_frames, height, width)
    if mode == "t2v":
        return torch.zeros(MASK_CHANNELS + channels, latent_frames, height, width)
    latents = encode(conditioning_video(mode, first, last, pixel_frames)).to(torch.float32).cpu()
    return torch.cat([mask, latents], dim=0)
