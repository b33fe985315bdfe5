"""Where the perceptual metrics' weights come from, and proof that they are the official ones.

LPIPS and DISTS are only meaningful with the ImageNet backbones they were calibrated on: with random
backbones the numbers look plausible and mean nothing. So every file is checked against the table below
before use, nothing is ever downloaded at run time (archive workers often have no network, and a silent
download mid-job is a surprise), and a missing or wrong file turns the column null with a note.

- Backbones: torchvision's official ImageNet checkpoints. torchvision encodes the first 8 hex digits of
  each file's sha256 in its name, and its own loader checks exactly that prefix; we do the same.
  Users fetch them once (e.g. `torchvision.models.alexnet(weights="DEFAULT")` on a machine with network)
  into the torch hub cache, or copy them into a directory passed as `--metric-weights DIR`.
- Calibration heads: the lpips package ships its linear-layer weights (v0.1), DISTS_pytorch ships its
  alpha/beta file; their full sha256 of the released files are recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: finding out that weights are missing must not cost 4 s
    import torch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    filename: str
    sha256_prefix: str
    origin: str


BACKBONES: dict[str, OfficialFile] = {
    "alexnet": OfficialFile(
        "alexnet-owt-7be5be79.pth", "7be5be79", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    ),
    "vgg16": OfficialFile(
        "vgg16-397923af.pth", "397923af", "https://download.pytorch.org/models/vgg16-397923af.pth"
    ),
}

HEADS: dict[str, OfficialFile] = {
    "lpips_alex": OfficialFile(
        "alex.pth",
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        "lpips package, weights/v0.1/alex.pth",
    ),
    "lpips_vgg": OfficialFile(
        "vgg.pth",
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        "lpips package, weights/v0.1/vgg.pth",
    ),
    "dists": OfficialFile(
        "weights.pt",
        "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
        "DISTS_pytorch package, weights.pt",
    ),
}


class WeightsUnavailable(Exception):
    """A weights file is missing or not the official one; the message is the manifest note."""


_hash_cache: dict[tuple[str, int, float], str] = {}
_hash_lock = threading.Lock()
_warned: set[str] = set()


def sha256_of(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime): the VGG16 file is 528 MB."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    with _hash_lock:
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def search_dirs(weights_dir: str | os.PathLike[str] | None) -> list[Path]:
    """`weights_dir` (flat, or holding checkpoints/) first, then the torch hub cache's checkpoints/."""
    dirs: list[Path] = []
    if weights_dir:
        dirs += [Path(weights_dir), Path(weights_dir) / "checkpoints"]
    dirs.append(hub_dir() / "checkpoints")
    return dirs


#: The ImageNet backbone each perceptual metric is calibrated on.
BACKBONE_OF_METRIC = {"lpips": "alexnet", "lpips_vgg": "vgg16", "dists": "vgg16"}


def missing_backbone(metric: str, weights_dir: str | os.PathLike[str] | None) -> str | None:
    """The manifest note when `metric`'s official backbone is missing or wrong (as `perceptual.get_model`
    words it), else None; without importing torch, so a job without the weights never loads it."""
    try:
        locate_backbone(BACKBONE_OF_METRIC[metric], weights_dir)
    except WeightsUnavailable as exc:
        return f"{metric}: {exc}"
    return None


def hub_dir() -> Path:
    """torch's hub folder: `torch.hub.get_dir()` once torch is loaded (it honours `set_dir`), else the
    same rule read from the environment ($TORCH_HOME/hub, $XDG_CACHE_HOME/torch/hub, ~/.cache/torch/hub)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub"


def locate_backbone(name: str, weights_dir: str | os.PathLike[str] | None) -> Path:
    """Path of the verified official backbone checkpoint, or WeightsUnavailable saying why not."""
    official = BACKBONES[name]
    for directory in search_dirs(weights_dir):
        candidate = directory / official.filename
        if candidate.is_file():
            digest = sha256_of(candidate)
            if not digest.startswith(official.sha256_prefix):
                raise WeightsUnavailable(
                    f"{name} weights {candidate} have sha256 {digest[:8]}…, not the official {official.sha256_prefix}…"
                )
            return candidate
    where = ", ".join(str(d) for d in search_dirs(weights_dir))
    raise WeightsUnavailable(f"{name} ImageNet weights ({official.filename}) not found in {where}")


def verify_head(name: str, path: Path) -> Path:
    """Check a calibration file shipped by a metric package against its released sha256."""
    official = HEADS[name]
    if not path.is_file():
        raise WeightsUnavailable(f"{name} calibration weights missing at {path}")
    digest = sha256_of(path)
    if digest != official.sha256_prefix:
        raise WeightsUnavailable(
            f"{name} calibration weights {path} have sha256 {digest[:8]}…, not the released file"
        )
    return path


def load_features_state(path: Path) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision checkpoint, renamed to the features module's keys.

    `weights_only=True`: a checkpoint is data, never code to unpickle.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {
        key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")
    }


def warn_once(note: str) -> None:
    """Log a missing-weights note once per process, not once per GOP."""
    if note not in _warned:
        _warned.add(note)
        log.warning("%s; the column stays null", note)
