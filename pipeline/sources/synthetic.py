"""Natural-looking test and training clips made here, from images that scikit-image ships.

No video data set can be downloaded where vidarc is built, so the bundled models train on clips
synthesised from real photographs: a virtual camera pans, zooms and rotates slowly over the image while
a few patches cut from another photograph move across it, and the light drifts. The image lists are
split so benchmarks can measure on content the bundled models never saw.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

#: Every photograph the installed packages ship, except the held-out EVAL_IMAGES. Plain names are
#: scikit-image's `skimage.data` images; "sklearn:" and "matplotlib:" name the sample images of those
#: packages. `chelsea` is not here: `skimage.data.cat()` returns the very same photograph, and `cat` is
#: held out. Drawings and phantoms (logo, horse, checkerboard, shepp_logan_phantom) are not photographs;
#: colorwheel is kept for its saturated colours.
TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
    "retina",
    "stereo_motorcycle",
    "brick",
    "grass",
    "gravel",
    "clock",
    "cell",
    "text",
    "page",
    "sklearn:china",
    "sklearn:flower",
    "matplotlib:grace_hopper",
    "matplotlib:Minduka_Present_Blue_Pack",
)
EVAL_IMAGES: tuple[str, ...] = ("cat", "camera", "coins", "moon")
#: Images whose patches move across `synthetic_clip` clips. Fixed (the training list of the first bundle)
#: so the benchmark clips stay the same bytes whatever TRAIN_IMAGES becomes; training clips draw their
#: patches from TRAIN_IMAGES instead (`pipeline.training.data`).
PATCH_DONORS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "colorwheel",
)


def load_image(name: str) -> np.ndarray:
    """An RGB uint8 image by name (see TRAIN_IMAGES; grey images are replicated to three channels)."""
    source, _, item = name.rpartition(":")
    if source == "sklearn":
        image = _sklearn_image(item)
    elif source == "matplotlib":
        image = _matplotlib_image(item)
    elif source in ("", "skimage"):
        image = _skimage_image(item)
    else:
        raise ValueError(f"unknown image source {source!r} in {name!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (255.0 * image / max(float(image.max()), 1e-9)).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _skimage_image(name: str) -> np.ndarray:
    from skimage import data  # heavy import; only synthesis needs it

    try:
        image = getattr(data, name)()
    except AttributeError:
        raise ValueError(f"skimage.data has no image {name!r}") from None
    return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view


def _sklearn_image(name: str) -> np.ndarray:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        raise ValueError(f"image sklearn:{name} needs scikit-learn (pip install 'vidarc[train]')") from None
    return load_sample_image(f"{name}.jpg")


def _matplotlib_image(name: str) -> np.ndarray:
    import matplotlib
    from PIL import Image

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        raise ValueError(f"matplotlib ships no sample image {name!r}")
    with Image.open(matches[0]) as image:
        return np.asarray(image.convert("RGB"))


def synthetic_clip(
    image: str | np.ndarray,
    frames: int,
    width: int,
    height: int,
    *,
    seed: int = 0,
    objects: int = 2,
    speed: float = 1.0,
    donors: tuple[str, ...] = PATCH_DONORS,
) -> np.ndarray:
    """`frames` RGB frames (T×H×W×3 uint8) of a slow camera move over `image` with moving patches cut
    from the `donors` images."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    base = load_image(image) if isinstance(image, str) else np.asarray(image, dtype=np.uint8)
    src = torch.from_numpy(base).permute(2, 0, 1)[None].float() / 255.0
    src_h, src_w = base.shape[:2]
    # Camera path: a random start, a drift of a few pixels per frame, slow zoom and rotation.
    zoom0 = rng.uniform(0.45, 0.8)
    zoom_rate = rng.uniform(-0.004, 0.004) * speed
    angle_rate = rng.uniform(-0.004, 0.004) * speed
    centre = rng.uniform(-0.2, 0.2, size=2)
    velocity = rng.uniform(-0.012, 0.012, size=2) * speed
    aspect = (height / width) * (src_w / src_h)
    thetas = []
    for t in range(frames):
        zoom = zoom0 * (1.0 + zoom_rate * t)
        angle = angle_rate * t
        cx, cy = np.clip(centre + velocity * t, -1 + zoom, 1 - zoom)
        cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
        thetas.append([[cos, -sin * aspect, cx], [sin / aspect, cos, cy]])
    theta = torch.tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, [frames, 3, height, width], align_corners=False)
    video = F.grid_sample(
        src.expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    video = _add_moving_patches(video, rng, objects, speed, donors)
    light = 1.0 + 0.06 * np.sin(np.linspace(0, rng.uniform(1, 3), frames) + rng.uniform(0, 6))
    video = video * torch.tensor(light, dtype=torch.float32).view(-1, 1, 1, 1)
    return (video.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _add_moving_patches(video, rng: np.random.Generator, objects: int, speed: float, donors: tuple[str, ...]):
    frames, _, height, width = video.shape
    donor = load_image(str(rng.choice(donors)))
    for _ in range(objects):
        # at most the donor's size less one pixel (large frames ask for patches bigger than a donor)
        ph = min(int(rng.integers(max(2, height // 8), max(3, height // 3))), donor.shape[0] - 1)
        pw = min(int(rng.integers(max(2, width // 8), max(3, width // 3))), donor.shape[1] - 1)
        y0 = int(rng.integers(0, donor.shape[0] - ph))
        x0 = int(rng.integers(0, donor.shape[1] - pw))
        import torch

        patch = torch.from_numpy(donor[y0 : y0 + ph, x0 : x0 + pw]).permute(2, 0, 1).float() / 255.0
        pos = rng.uniform([0, 0], [height - ph, width - pw])
        vel = rng.uniform(-1.5, 1.5, size=2) * speed * max(height, width) / 64.0
        for t in range(frames):
            y = int(np.clip(pos[0] + vel[0] * t, 0, height - ph))
            x = int(np.clip(pos[1] + vel[1] * t, 0, width - pw))
            video[t, :, y : y + ph, x : x + pw] = patch
    return video


def write_video(
    path: str | Path,
    frames: np.ndarray,
    *,
    fps: Fraction | int = 24,
    codec: str = "libx264",
    crf: int = 12,
    audio_seconds: float | None = None,
) -> Path:
    """Write frames to a real container file with PyAV (near-lossless by default), optionally with a
    sine-tone AAC audio track; returns the path."""
    import av

    path = Path(path)
    fps = Fraction(fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = (
            frames.shape[2] - frames.shape[2] % 2,
            frames.shape[1] - frames.shape[1] % 2,
        )
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)} if codec in {"libx264", "libx265"} else {}
        audio = None
        if audio_seconds:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "stereo"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image[: stream.height, : stream.width], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            _write_tone(container, audio, audio_seconds)
    return path


def _write_tone(container, stream, seconds: float) -> None:
    import av

    rate, chunk = 48000, 1024
    total = int(rate * seconds)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tone = 0.2 * np.sin(2 * np.pi * 440.0 * t)
        interleaved = np.ascontiguousarray(np.stack([tone, tone], axis=1).reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
