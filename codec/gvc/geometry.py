"""The shape GVC codes a GOP at: sides padded to `SPATIAL_MULTIPLE`, frames to 1+4k (the Wan VAE's
causal GOP). Shared by the codec and the exact digest, which must agree on it without a network."""

from __future__ import annotations

import numpy as np

#: Frame sides are padded (edge-replicated) up to a multiple of this: the VAE's 8× stride times the
#: transformer's 2×2 patches.
SPATIAL_MULTIPLE = 16


def padded_size(n: int) -> int:
    """A side rounded up to `SPATIAL_MULTIPLE`."""
    return -(-n // SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE


def padded_frames(n: int) -> int:
    """A frame count rounded up to 1+4k."""
    return 1 + 4 * (-(-(n - 1) // 4))


def pad(frames: np.ndarray) -> np.ndarray:
    """uint8 T×H×W×3 frames edge-padded to the coded shape (the array itself when nothing is added)."""
    count, height, width = frames.shape[:3]
    widths = (
        (0, padded_frames(count) - count),
        (0, padded_size(height) - height),
        (0, padded_size(width) - width),
        (0, 0),
    )
    return np.pad(frames, widths, mode="edge") if any(w[1] for w in widths) else frames
