"""The tokenizer: diffusers' `AutoencoderKLWan` (Wan2.1 VAE architecture) behind a frames <-> latents API.

Why a wrapper: the codec needs a few conventions the VAE leaves to callers —
- frames are uint8 T×H×W×3 RGB; the VAE wants [-1, 1] float [B, 3, T, H, W];
- T must be 1+4k (a causal VAE silently drops frames otherwise) and H, W multiples of its 8× stride;
- each GOP is coded independently: diffusers' `encode`/`decode` call `clear_cache()` first, which resets
  the causal feature cache, so one call per GOP is one GOP with a fresh cache;
- latents are normalised per channel with the config's `latents_mean`/`latents_std` (as Wan pipelines
  do), so the latent codec sees roughly unit-variance data whatever tokenizer it is paired with;
- the posterior *mode* is used (a codec wants a deterministic latent, not a sample);
- large frames use the VAE's spatial tiling (above TILING_PIXELS) so 1080p fits a 24 GB GPU; below that,
  untiled is faster and exact;
- on CUDA the VAE may run in bf16 (its convolutions are well conditioned; the normalisation stays fp32).
  Nothing downstream of the VAE's encoder selects entropy-coding tables without going through the
  latent codec's exact integer path, so bf16 here cannot desynchronise a decoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Frames with more pixels than 1280×720 go through the VAE's tiled encode/decode.
TILING_PIXELS = 1280 * 720


class Tokenizer:
    """A loaded `AutoencoderKLWan` with GLVC's frame/latent conventions."""

    def __init__(self, vae, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if vae.dtype != dtype:
            vae = vae.to(dtype=dtype)
        self.vae = vae.to(device=device).eval()
        self.device, self.dtype = torch.device(device), dtype
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = 2 ** sum(1 for _ in cfg.dim_mult[1:])
        self.temporal_factor = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32)
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise ValueError("latents_mean/latents_std must have one entry per latent channel")
        self.mean = mean.view(1, -1, 1, 1, 1).to(self.device)
        self.std = std.view(1, -1, 1, 1, 1).to(self.device)

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor

    def _tiling_for(self, height: int, width: int) -> None:
        if height * width > TILING_PIXELS:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> Tensor:
        """uint8 [T, H, W, 3] (T = 1+4k, H, W multiples of the stride) -> normalised latents [1, C, F, h, w]."""
        count, height, width, _ = frames.shape
        if (count - 1) % self.temporal_factor or height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"tokenizer needs 1+{self.temporal_factor}k frames and sizes divisible by "
                f"{self.spatial_factor}, got {count}×{height}×{width}"
            )
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(3, 0, 1, 2)[None].to(self.dtype) / 127.5 - 1.0
        self._tiling_for(height, width)
        mode = self.vae.encode(x).latent_dist.mode()
        return (mode.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalised latents [1, C, F, h, w] -> uint8 frames [1+4(F-1), 8h, 8w, 3]."""
        z = (latents.to(self.device).float() * self.std + self.mean).to(self.dtype)
        self._tiling_for(latents.shape[-2] * self.spatial_factor, latents.shape[-1] * self.spatial_factor)
        video = self.vae.decode(z).sample[0]  # [3, T, H, W] in about [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


def load_tokenizer(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Tokenizer:
    """Load a diffusers-format `AutoencoderKLWan` directory (safetensors only) as a Tokenizer, its
    weights read straight onto `device` in `dtype` (`codec.weights`)."""
    from diffusers import AutoencoderKLWan

    from codec.weights import load_diffusers_model

    dtype = dtype or torch.float32
    vae = load_diffusers_model(AutoencoderKLWan, Path(directory), torch.device(device), dtype)
    return Tokenizer(vae, device=device, dtype=dtype)
