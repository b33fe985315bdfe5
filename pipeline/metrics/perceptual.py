"""LPIPS (AlexNet and VGG variants) and DISTS, built from verified official weights only.

The lpips and DISTS_pytorch packages compute the metrics; this module only decides which weights they
get. Both packages would otherwise fetch torchvision's ImageNet backbones from the network in their
constructors, so they are built with the torchvision reference swapped for `_VerifiedTorchvision`, which
hands them feature stacks loaded from the checked files (see `weights`). Models are built once per
process and device and reused for every GOP.

Tests and benchmarks of the plumbing can inject backbone tensors with `backbone_override`; values
computed that way are meaningless as quality numbers and are never written by the pipeline.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.metrics.fidelity import to_tensor
from pipeline.metrics.weights import (
    BACKBONE_OF_METRIC,
    WeightsUnavailable,
    load_features_state,
    locate_backbone,
    verify_head,
    warn_once,
)

_BACKBONE_OF = BACKBONE_OF_METRIC
_models: dict[tuple[str, str, str | None], torch.nn.Module] = {}
_failures: dict[tuple[str, str, str | None], str] = {}
_lock = threading.Lock()
_override: dict[str, dict[str, torch.Tensor]] | None = None


@contextlib.contextmanager
def backbone_override(states: dict[str, dict[str, torch.Tensor]]) -> Iterator[None]:
    """Use these `features` state dicts ("alexnet", "vgg16") instead of files, for plumbing tests only."""
    global _override
    with _lock:
        _override, previous = states, _override
        _models.clear()
        _failures.clear()
    try:
        yield
    finally:
        with _lock:
            _override = previous
            _models.clear()
            _failures.clear()


def _features_module(arch: str) -> torch.nn.Sequential:
    """An untrained torchvision feature stack of `arch` (no classifier: it is never used)."""
    import torchvision

    if arch == "vgg16":
        return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False)
    return torchvision.models.AlexNet().features


def _backbone_state(arch: str, weights_dir: str | None) -> dict[str, torch.Tensor]:
    if _override is not None:
        if arch not in _override:
            raise WeightsUnavailable(f"{arch} backbone not injected")
        return _override[arch]
    return load_features_state(locate_backbone(arch, weights_dir))


class _FeaturesOnly:
    def __init__(self, features: torch.nn.Sequential) -> None:
        self.features = features


class _VerifiedTorchvision:
    """Stands in for `torchvision.models` inside the metric packages while they build their networks."""

    def __init__(self, weights_dir: str | None) -> None:
        self.weights_dir = weights_dir

    def _load(self, arch: str) -> _FeaturesOnly:
        features = _features_module(arch)
        features.load_state_dict(_backbone_state(arch, self.weights_dir), strict=True)
        return _FeaturesOnly(features)

    def alexnet(self, *args: Any, **kwargs: Any) -> _FeaturesOnly:
        return self._load("alexnet")

    def vgg16(self, *args: Any, **kwargs: Any) -> _FeaturesOnly:
        return self._load("vgg16")


@contextlib.contextmanager
def _swap_torchvision(module: Any, weights_dir: str | None) -> Iterator[None]:
    original = module.tv if hasattr(module, "tv") else module.models
    attr = "tv" if hasattr(module, "tv") else "models"
    setattr(module, attr, _VerifiedTorchvision(weights_dir))
    try:
        yield
    finally:
        setattr(module, attr, original)


def _build(metric: str, weights_dir: str | None) -> torch.nn.Module:
    if metric in ("lpips", "lpips_vgg"):
        import lpips
        import lpips.pretrained_networks as networks

        net = "alex" if metric == "lpips" else "vgg"
        head = verify_head(
            "lpips_alex" if net == "alex" else "lpips_vgg",
            Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
        )
        with _swap_torchvision(networks, weights_dir):
            model = lpips.LPIPS(net=net, version="0.1", model_path=str(head), verbose=False)
        return model
    import DISTS_pytorch
    from DISTS_pytorch import DISTS_pt

    head = verify_head("dists", Path(DISTS_pytorch.__file__).parent / "weights.pt")
    with _swap_torchvision(DISTS_pt, weights_dir):
        model = DISTS_pt.DISTS(load_weights=False)
    calibration = torch.load(head, map_location="cpu", weights_only=True)
    model.alpha.data = calibration["alpha"]
    model.beta.data = calibration["beta"]
    return model


def get_model(metric: str, device: str, weights_dir: str | None) -> torch.nn.Module:
    """The metric network on `device`, built once per process; WeightsUnavailable (cached) if it cannot be."""
    key = (metric, device, weights_dir)
    with _lock:
        if key in _models:
            return _models[key]
        if key in _failures:
            raise WeightsUnavailable(_failures[key])
        try:
            if _override is None:  # no weights: say so before building (and randomly initialising) a VGG
                locate_backbone(_BACKBONE_OF[metric], weights_dir)
            model = _build(metric, weights_dir).to(device).eval()
        except WeightsUnavailable as exc:
            _failures[key] = f"{metric}: {exc}"
            raise WeightsUnavailable(_failures[key]) from None
        _models[key] = model
        return model


def perceptual_distance(
    metric: str,
    source: np.ndarray,
    recon: np.ndarray,
    *,
    device: str = "cpu",
    weights_dir: str | None = None,
    batch_frames: int = 16,
) -> tuple[float | None, str | None]:
    """Mean per-frame `metric` ("lpips", "lpips_vgg" or "dists"; lower is better) or (None, note)."""
    if metric not in _BACKBONE_OF:
        raise ValueError(f"unknown perceptual metric {metric!r}")
    try:
        model = get_model(metric, device, weights_dir)
    except WeightsUnavailable as exc:
        warn_once(str(exc))
        return None, str(exc)
    values: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, source.shape[0], batch_frames):
                x = to_tensor(source[start : start + batch_frames], device)
                y = to_tensor(recon[start : start + batch_frames], device)
                if metric == "dists":
                    scores = model(x, y)
                else:
                    scores = model(x, y, normalize=True)
                values.append(scores.reshape(-1).double().cpu())
    except RuntimeError as exc:  # frames too small for the backbone's pooling pyramid
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"{metric}: cannot run on {source.shape[2]}x{source.shape[1]} frames ({first_line})"
    return float(torch.cat(values).mean()), None
