"""The encode actor: builds one codec per actor (weights load once) and codes GOPs with it.

A GOP arrives as decoded frames (an object-store reference resolved by Ray, zero-copy) and leaves as
two results: a small metadata dict the driver reads for progress and scheduling, and the payload
bytes, which go straight to the video's writer task without passing through the driver. The
reconstruction the codec returns (every encoder decodes its own output) is used here for the quality
metrics and then dropped: it never travels.
"""

from __future__ import annotations

import inspect
import time
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import Codec, RateTarget, bits_per_pixel, kilobits_per_second
from codec.errors import CodecError
from codec.registry import codec_class, create_codec
from pipeline.schema import MANIFEST_SCHEMA


def build_codec(name: str, *, model: str | None, device: str, options: dict[str, Any]) -> Codec:
    """`create_codec` with only the options this codec's constructor takes (classic codecs have no
    model or device), so one call site serves every codec."""
    wanted = dict(options)
    if model is not None:
        wanted["model"] = model
    wanted["device"] = device
    params = inspect.signature(codec_class(name).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        dropped = {k for k in ("device",) if k not in params}
        wanted = {k: v for k, v in wanted.items() if k not in dropped}
    return create_codec(name, **wanted)


class EncodeWorker:
    """Ray actor body (wrapped with `ray.remote` by the workflow, which sets its resources)."""

    def __init__(
        self,
        codec_name: str,
        model: str | None,
        device: str,
        options: dict[str, Any],
        metrics_every: int = 1,
        skip_metrics: tuple[str, ...] = (),
        metric_weights: str | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.init_error: str | None = None
        self.codec: Codec | None = None
        try:
            self.codec = build_codec(codec_name, model=model, device=device, options=options)
        except CodecError as exc:
            self.init_error = f"codec {codec_name}: {exc}"
        self.metrics_every = metrics_every
        self.metric_weights = metric_weights
        self.skip_metrics = tuple(skip_metrics)

    def describe(self) -> dict[str, Any]:
        if self.codec is None:
            return {"error": self.init_error}
        return dict(self.codec.describe())

    def gop_frames(self, requested: int | None, fps_num: int, fps_den: int) -> int | str:
        """The GOP length to use for a video at this rate, or a one-line reason it cannot be used."""
        assert self.codec is not None
        n = requested if requested is not None else self.codec.default_gop_frames(Fraction(fps_num, fps_den))
        try:
            self.codec.check_gop_frames(n)
        except CodecError as exc:
            return str(exc)
        return n

    def encode(
        self, frames: np.ndarray, target: RateTarget, fps_num: int, fps_den: int, gop_index: int, label: str
    ) -> tuple[dict[str, Any], bytes]:
        """Code one GOP: (metadata, payload). A codec refusal comes back as metadata["error"]."""
        assert self.codec is not None
        fps = Fraction(fps_num, fps_den)
        count, height, width = frames.shape[:3]
        started = time.perf_counter()
        try:
            self.codec.check_geometry(width, height)
            encoded = self.codec.encode(frames, target, fps)
        except CodecError as exc:
            return {"error": f"{label}: {exc}"}, b""
        seconds = time.perf_counter() - started
        payload = bytes(encoded.payload)
        meta: dict[str, Any] = {
            "payload_bytes": len(payload),
            "bpp": bits_per_pixel(len(payload), width, height, count),
            "kbps": kilobits_per_second(len(payload), count, fps),
            "encode_seconds": seconds,
            "params": dict(encoded.params),
            "device": self.codec.device,
        }
        meta.update(self._quality(frames, encoded.reconstruction, gop_index, float(fps)))
        return meta, payload

    def _quality(self, source: np.ndarray, recon: np.ndarray, gop_index: int, fps: float) -> dict[str, Any]:
        from pipeline.metrics import MetricsConfig, compute_gop_metrics, should_measure

        if not should_measure(gop_index, self.metrics_every):
            return {"metrics_note": f"not measured (metrics on every {self.metrics_every}th GOP)"}
        config = MetricsConfig(
            device=self.codec.device if self.codec else "cpu",
            fps=fps,
            lpips="lpips" not in self.skip_metrics,
            dists="dists" not in self.skip_metrics,
            vmaf="vmaf" not in self.skip_metrics,
            temporal="temporal" not in self.skip_metrics,
            weights_dir=self.metric_weights,
        )
        try:
            values = compute_gop_metrics(source, recon, config)
        except Exception as exc:  # a metric failure must not lose the coded GOP
            return {"metrics_note": f"metrics failed: {type(exc).__name__}: {exc}"}
        columns = set(MANIFEST_SCHEMA.names)
        return {k: v for k, v in values.items() if k in columns}
