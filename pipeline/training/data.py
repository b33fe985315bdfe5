"""Training clips: random GOP-length windows and crops, from real videos or from synthetic camera moves.

Real sources go through the archive job's own discovery and decoding (`pipeline.archive.discovery`,
`pipeline.sources`), so a model trains on exactly what the archive job will feed it. `synthetic` draws
from `pipeline.synthetic.TRAIN_IMAGES` (photographs moved by a virtual camera); the held-out
`EVAL_IMAGES` are never used here, so benchmarks measure on unseen content.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic import TRAIN_IMAGES, synthetic_clip

SYNTHETIC = "synthetic"


class ClipSampler:
    """Endless random clips of `frames` frames, `size`×`size` pixels, uint8 T×H×W×3."""

    def __init__(self, source: str, *, frames: int, size: int, seed: int, endpoint_url: str | None = None):
        self.source, self.frames, self.size = source, frames, size
        self.endpoint_url = endpoint_url
        self.rng = np.random.default_rng(seed)
        self._videos: list[tuple[str, int, tuple[int, ...] | None]] = []
        if source != SYNTHETIC:
            self._videos = self._discover(source)

    def _discover(self, source: str) -> list[tuple[str, int, tuple[int, ...] | None]]:
        from pipeline import sources
        from pipeline.archive import discovery

        videos = []
        for entry in discovery.list_sources(source, endpoint_url=self.endpoint_url):
            try:
                info = sources.probe(entry.uri, endpoint_url=self.endpoint_url)
            except (sources.NotAVideo, sources.SourceError):
                continue
            if info.frame_count >= self.frames and min(info.width, info.height) >= self.size:
                videos.append((entry.uri, info.frame_count, info.frame_pts))
        if not videos:
            raise ValueError(
                f"{source}: no video with at least {self.frames} frames of {self.size}×{self.size} pixels"
            )
        return videos

    def clip(self) -> np.ndarray:
        if self.source == SYNTHETIC:
            return synthetic_clip(
                str(self.rng.choice(TRAIN_IMAGES)),
                self.frames,
                self.size,
                self.size,
                seed=int(self.rng.integers(1 << 31)),
                speed=float(self.rng.uniform(0.3, 2.0)),
            )
        from pipeline import sources

        uri, count, pts = self._videos[int(self.rng.integers(len(self._videos)))]
        first = int(self.rng.integers(0, count - self.frames + 1))
        window = None if pts is None else pts[first : first + self.frames]
        frames = sources.decode_frames(
            uri, first, self.frames, expected_pts=window, endpoint_url=self.endpoint_url
        )
        y = int(self.rng.integers(0, frames.shape[1] - self.size + 1))
        x = int(self.rng.integers(0, frames.shape[2] - self.size + 1))
        return np.ascontiguousarray(frames[:, y : y + self.size, x : x + self.size])

    def batch(self, count: int) -> np.ndarray:
        return np.stack([self.clip() for _ in range(count)])


def to_model_input(batch: np.ndarray, device) -> torch.Tensor:  # noqa: F821
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1], the VAE's input convention."""
    import torch

    x = torch.from_numpy(batch).to(device)
    return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
