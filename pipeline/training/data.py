"""Training clips: random GOP-length windows and crops, from real videos or from synthetic camera moves.

Real sources go through the archive job's own discovery and decoding (`pipeline.archive.discovery`,
`pipeline.sources.media`), so a model trains on exactly what the archive job will feed it. `synthetic` draws
from `pipeline.sources.synthetic.TRAIN_IMAGES` (photographs moved by a virtual camera); the held-out
`EVAL_IMAGES` are never used here, so benchmarks measure on unseen content.

With `augment` (the default for training), each clip also gets:
- **scale**: the camera sees 0.6–2 source pixels per output pixel (log-uniform), taken from an
  antialiased pyramid of the photograph, so a model trained on small crops has seen the textures it
  will meet at full size, finer and coarser, without aliasing (video at its native resolution is
  about 1; wider ranges spent most of a small model's capacity on textures denser than any video's);
- **motion**: static shots, pans of up to 4 px/frame, slow zoom and rotation, hand-held shake, and up
  to three patches cut from other training photographs moving across the frame;
- **colour**: grey clips (the held-out set is mostly grey), saturation, a small hue rotation, gain,
  gamma and a horizontal flip, so colour is learnt as colour, not as the few palettes of ~20 photos.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np

from pipeline.sources.synthetic import TRAIN_IMAGES, load_image

SYNTHETIC = "synthetic"
#: Source pixels per output pixel, the range scale augmentation draws from (log-uniform).
SCALE_RANGE = (0.6, 2.0)
_PYRAMID = (1.0, math.sqrt(2.0), 2.0, 2 * math.sqrt(2.0))


class ClipSampler:
    """Endless random clips of `frames` frames, `size`×`size` pixels, uint8 T×H×W×3.

    `clip`/`batch` take another size or frame count per call (curricula grow the crops as training
    goes on).
    """

    def __init__(
        self,
        source: str,
        *,
        frames: int,
        size: int,
        seed: int,
        endpoint_url: str | None = None,
        augment: bool = True,
        images: tuple[str, ...] | None = None,
    ):
        self.source, self.frames, self.size = source, frames, size
        self.endpoint_url, self.augment = endpoint_url, augment
        self.rng = np.random.default_rng(seed)
        self._videos: list[tuple[str, int, tuple[int, ...] | None]] = []
        self.images: tuple[str, ...] = ()
        if source == SYNTHETIC:
            self.images = available_images(images or TRAIN_IMAGES)
        else:
            self._videos = self._discover(source)

    def _discover(self, source: str) -> list[tuple[str, int, tuple[int, ...] | None]]:
        from pipeline.archive import discovery
        from pipeline.sources import media

        videos = []
        for entry in discovery.list_sources(source, endpoint_url=self.endpoint_url):
            try:
                info = media.probe(entry.uri, endpoint_url=self.endpoint_url)
            except (media.NotAVideo, media.SourceError):
                continue
            if info.frame_count >= self.frames and min(info.width, info.height) >= self.size:
                videos.append((entry.uri, info.frame_count, info.frame_pts))
        if not videos:
            raise ValueError(
                f"{source}: no video with at least {self.frames} frames of {self.size}×{self.size} pixels"
            )
        return videos

    @property
    def video_count(self) -> int:
        """Usable videos of a folder source (0 for the bundled photographs)."""
        return len(self._videos)

    def clip(self, size: int | None = None, frames: int | None = None) -> np.ndarray:
        size, frames = size or self.size, frames or self.frames
        if self.source == SYNTHETIC:
            if not self.augment:
                from pipeline.sources.synthetic import synthetic_clip

                image = str(self.rng.choice(self.images))
                seed = int(self.rng.integers(1 << 31))
                return synthetic_clip(image, frames, size, size, seed=seed, donors=self.images)
            return camera_clip(self.images, frames, size, self.rng)
        clip = self._video_clip(size, frames)
        return colour_augment(clip, self.rng) if self.augment else clip

    def _video_clip(self, size: int, frames: int) -> np.ndarray:
        from pipeline.sources import media

        uri, count, pts = self._videos[int(self.rng.integers(len(self._videos)))]
        first = int(self.rng.integers(0, count - frames + 1))
        window = None if pts is None else pts[first : first + frames]
        video = media.decode_frames(uri, first, frames, expected_pts=window, endpoint_url=self.endpoint_url)
        y = int(self.rng.integers(0, video.shape[1] - size + 1))
        x = int(self.rng.integers(0, video.shape[2] - size + 1))
        return np.ascontiguousarray(video[:, y : y + size, x : x + size])

    def batch(self, count: int, size: int | None = None, frames: int | None = None) -> np.ndarray:
        return np.stack([self.clip(size, frames) for _ in range(count)])


def available_images(names: tuple[str, ...]) -> tuple[str, ...]:
    """The images of `names` that load here (scikit-learn's two are optional); refuses an empty set and
    says which ones it leaves out and why, so a run's data is never silently smaller than asked."""
    usable, skipped = [], []
    for name in names:
        try:
            _pyramid(name)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        usable.append(name)
    if not usable:
        raise ValueError(f"none of the training images loads: {', '.join(names)}")
    if skipped:
        _warn_once(f"training without {len(skipped)} of {len(names)} images: " + "; ".join(skipped))
    return tuple(usable)


@lru_cache(maxsize=16)
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


@lru_cache(maxsize=64)
def _pyramid(name: str) -> tuple:
    """The photograph as float tensors [1, 3, H, W] in 0..1, at each `_PYRAMID` factor (antialiased)."""
    import torch
    import torch.nn.functional as F

    base = torch.from_numpy(load_image(name)).permute(2, 0, 1)[None].float() / 255.0
    levels = [base]
    for factor in _PYRAMID[1:]:
        h, w = (max(8, round(d / factor)) for d in base.shape[-2:])
        levels.append(F.interpolate(base, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
    return tuple(levels)


def camera_clip(images: tuple[str, ...], frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented training clip (see the module docstring): uint8 T×size×size×3."""
    import torch
    import torch.nn.functional as F

    scale = math.exp(rng.uniform(*np.log(SCALE_RANGE)))
    level = max((i for i, f in enumerate(_PYRAMID) if f <= scale), default=0)
    src = _pyramid(str(rng.choice(images)))[level]
    residual = scale / _PYRAMID[level]  # below √2: bilinear sampling barely aliases
    src_h, src_w = src.shape[-2:]
    kind = rng.choice(["static", "pan", "pan", "pan", "zoom", "rotate"])
    velocity = np.zeros(2) if kind == "static" else rng.uniform(-4.0, 4.0, size=2) * rng.uniform(0.2, 1.0)
    zoom_rate = rng.uniform(-0.012, 0.012) if kind == "zoom" else 0.0
    angle_rate = rng.uniform(-0.01, 0.01) if kind == "rotate" else 0.0
    shake = rng.uniform(0.0, 0.8) if rng.random() < 0.3 else 0.0
    extent = residual * size  # source pixels the frame spans at frame 0
    centre = np.array(
        [rng.uniform(-1, 1) * max(0.0, src_w - extent) / 2, rng.uniform(-1, 1) * max(0.0, src_h - extent) / 2]
    )
    thetas = []
    for t in range(frames):
        s = residual * (1.0 + zoom_rate * t)
        angle = angle_rate * t
        cx, cy = centre + velocity * residual * t + rng.normal(0.0, shake, size=2) * residual
        cos, sin = math.cos(angle) * s, math.sin(angle) * s
        # output pixel offsets -> source pixel offsets, in affine_grid's normalised coordinates
        thetas.append(
            [
                [cos * size / src_w, -sin * size / src_w, 2 * cx / src_w],
                [sin * size / src_h, cos * size / src_h, 2 * cy / src_h],
            ]
        )
    grid = F.affine_grid(
        torch.tensor(thetas, dtype=torch.float32), [frames, 3, size, size], align_corners=False
    )
    video = F.grid_sample(
        src.expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    video = _moving_patches(video, images, rng)
    light = 1.0 + rng.uniform(0.0, 0.08) * np.sin(
        np.linspace(0, rng.uniform(1, 3), frames) + rng.uniform(0, 6)
    )
    video = video * torch.tensor(light, dtype=torch.float32).view(-1, 1, 1, 1)
    clip = (video.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return colour_augment(clip, rng)


def _moving_patches(video, images: tuple[str, ...], rng: np.random.Generator):
    frames, _, size, _ = video.shape
    for _ in range(int(rng.integers(0, 4))):
        donor = _pyramid(str(rng.choice(images)))[int(rng.integers(len(_PYRAMID)))][0]
        ph, pw = (int(rng.integers(max(2, size // 8), max(3, size // 3))) for _ in range(2))
        if donor.shape[1] <= ph or donor.shape[2] <= pw:
            continue
        y0, x0 = int(rng.integers(0, donor.shape[1] - ph)), int(rng.integers(0, donor.shape[2] - pw))
        patch = donor[:, y0 : y0 + ph, x0 : x0 + pw]
        pos = rng.uniform([0, 0], [size - ph, size - pw])
        vel = rng.uniform(-3.0, 3.0, size=2)
        for t in range(frames):
            y = int(np.clip(pos[0] + vel[0] * t, 0, size - ph))
            x = int(np.clip(pos[1] + vel[1] * t, 0, size - pw))
            video[t, :, y : y + ph, x : x + pw] = patch
    return video


def colour_augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey (20%), saturation, hue rotation, gain, gamma and a horizontal flip, one draw per clip."""
    x = clip.astype(np.float32) / 255.0
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if rng.random() < 0.2:
        x = np.repeat(luma[..., None], 3, axis=-1)
    else:
        chroma = x - luma[..., None]
        if rng.random() < 0.5:  # rotate chroma about the grey axis
            angle = rng.uniform(-0.5, 0.5)
            axis = np.ones(3, dtype=np.float32) / math.sqrt(3.0)
            k = np.array(
                [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=np.float32
            )
            rotation = np.eye(3, dtype=np.float32) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
            chroma = chroma @ rotation.T
        x = luma[..., None] + chroma * rng.uniform(0.6, 1.4)
    x = np.clip(x * rng.uniform(0.8, 1.15), 0.0, 1.0) ** math.exp(rng.uniform(-0.25, 0.25))
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    return np.ascontiguousarray((x * 255.0 + 0.5).astype(np.uint8))


def to_model_input(batch: np.ndarray, device) -> torch.Tensor:  # noqa: F821
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1], the VAE's input convention."""
    import torch

    x = torch.from_numpy(batch).to(device)
    return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
