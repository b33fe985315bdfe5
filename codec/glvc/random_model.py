"""Random-weight GLVC model directories, for tests and timing only (never for quality numbers).

Why it exists: the codec's machinery (padding, rate control, bitstream, determinism) must be testable
without the trained bundle, and speed benchmarks of the full-size Wan2.1 VAE configuration need weights
nobody can download here. The latent codec's analysis output is scaled up so that symbols are not all
zero and the rate actually moves with the quality index (the per-quality gains are log-spaced at init).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from codec.glvc.latent_codec import LatentCodec, LatentCodecConfig
from codec.modeldir import ModelDir, write_model_card

TINY_TOKENIZER: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
TINY_LATENT_CODEC: dict[str, Any] = {
    "hidden_channels": 16,
    "y_channels": 16,
    "z_channels": 8,
    "memory_channels": 8,
}
#: Multiplier on the analysis output so random-weight y spans several quantisation steps.
ANALYSIS_GAIN = 30.0


def build_random_model(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    tokenizer: dict[str, Any] | None = None,
    latent_codec: dict[str, Any] | None = None,
    name: str = "glvc-random",
    version: str = "0",
) -> ModelDir:
    """Write tokenizer/ + latent_codec/ with random weights and a model card; returns the ModelDir."""
    from diffusers import AutoencoderKLWan

    root = Path(directory)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**(TINY_TOKENIZER if tokenizer is None else tokenizer))
    vae.save_pretrained(str(root / "tokenizer"), safe_serialization=True)
    config = LatentCodecConfig.from_dict(TINY_LATENT_CODEC if latent_codec is None else latent_codec)
    codec = LatentCodec(config)
    with torch.no_grad():
        codec.analysis_out.weight.mul_(ANALYSIS_GAIN)
        codec.analysis_out.bias.mul_(ANALYSIS_GAIN)
    codec.save_pretrained(root / "latent_codec")
    return write_model_card(
        root,
        name=name,
        version=version,
        kind="bundle",
        config={"latent_codec": config.to_dict(), "seed": seed},
        notes="random weights: for tests and timing only",
    )
