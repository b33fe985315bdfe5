"""The encode actor: builds one codec per actor (weights load once) and codes GOPs with it.

A GOP arrives as decoded frames (an object-store reference resolved by Ray, zero-copy) and leaves as
two results: a small `GopResult` the driver reads for progress and scheduling, and the payload
bytes, which go straight to the video's writer task without passing through the driver. The
reconstruction the codec returns (every encoder decodes its own output) is used here for the quality
metrics and then dropped: it never travels.

Quality targets (`QualityGoal`) run here too, next to the codec and on its device: `search_quality`
searches a video's sample GOPs once, before its GOPs are dispatched; with `per_gop`, `encode` searches
each GOP on itself and keeps the winning encoding (no extra encode).

The reconstruction is asked for only where pixels are needed: GOPs whose quality is measured
(`--metrics-every`), GOPs whose decode proof records pixels (`--fingerprint-every`, every GOP by
default: verify needs the encoder's pixels to judge a GOP's pixel decode) and quality searches.
Elsewhere GLVC and GVC skip their tokenizer decode; the codec's self-check of the payload still runs,
the manifest marks the GOP as not measured, and its proof is the exact part's digest alone.

Several GOPs are in flight per actor: the actor is a threaded Ray actor (`max_concurrency`, set by
`actors`), and each call runs in its own thread. A codec that declares itself `thread_safe` (GLVC,
GVC) is called concurrently and serialises its own device stages, so one GOP's entropy coding and
metrics overlap the next GOP's network passes; other codecs are called one at a time under a lock,
and only the metrics overlap. A threaded actor rather than an async one: every stage is a blocking
call into PyTorch, PyAV or constriction (which release the GIL in their native code), so coroutines
would only wrap the same threads. How busy the actor kept its device is measured here
(`utilisation`, reported in summary.json).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import Codec, RateTarget, bits_per_pixel, kilobits_per_second
from codec.busy_clock import BusyClock
from codec.errors import CodecError
from codec.registry import build_codec
from pipeline.archive import accounting, utilisation
from pipeline.archive.config import QualityGoal
from pipeline.archive.gop_result import GopResult
from pipeline.archive.quality_target import QualityTargetError, find_rate_for_quality
from pipeline.format.digests import fingerprint, frames_sha256
from pipeline.format.schema import MANIFEST_SCHEMA


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
        fingerprint_every: int = 1,
        always_measured: tuple[str, ...] = (),
    ) -> None:
        self.always_measured = tuple(always_measured)
        self.init_error: str | None = None
        self.codec: Codec | None = None
        try:
            self.codec = build_codec(codec_name, model=model, device=device, options=options)
        except CodecError as exc:
            self.init_error = f"codec {codec_name}: {exc}"
        # The classic codecs never load torch (4 s of start-up on a small machine); a neural one has.
        self.metric_threads = max(1, min(4, os.cpu_count() or 1))  # libvmaf's threads: the actor's cores
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
            self.metric_threads = torch.get_num_threads()
        self.metrics_every = metrics_every
        self.fingerprint_every = fingerprint_every
        self.metric_weights = metric_weights
        self.skip_metrics = tuple(skip_metrics)
        # Codecs that are not thread-safe are called one at a time; thread-safe ones lock their own stages.
        safe = self.codec is not None and self.codec.thread_safe
        self._codec_lock: Any = contextlib.nullcontext() if safe else threading.RLock()
        self.busy = BusyClock()  # coding or measuring a GOP, any thread
        self.sharing = BusyClock()  # the coding and measuring sections alone: each GOP's share of them
        self.gops = 0
        self._nvml: Any = None
        self._nvml_started = False

    def describe(self) -> dict[str, Any]:
        if self.codec is None:
            return {"error": self.init_error}
        return dict(self.codec.describe())

    def check_metric(self, metric: str) -> str | None:
        """None if `metric` can be measured here (weights verified, ffmpeg has libvmaf), else why not.

        A quality target on a metric that cannot be computed would fail every video; the driver asks
        this once, before any work, so the job stops up-front with this one line instead.
        """
        if metric == "vmaf":
            from pipeline.metrics.vmaf import ffmpeg_with_vmaf

            return ffmpeg_with_vmaf()[1]
        if metric in ("lpips", "lpips_vgg", "dists"):
            from pipeline.metrics.perceptual import get_model
            from pipeline.metrics.weights import WeightsUnavailable

            try:
                get_model(metric, self.codec.device if self.codec else "cpu", self.metric_weights)
            except WeightsUnavailable as exc:
                return f"{exc} (give --metric-weights DIR or fill the torch hub cache)"
        return None

    def search_quality(
        self, goal: QualityGoal, fps_num: int, fps_den: int, label: str, *sample_gops: np.ndarray
    ) -> dict[str, Any]:
        """Per-video quality search on sample GOPs: {"knob", "record"} or {"error"} (one line).
        Charged, like a GOP, its share of the actor's time (GOPs of other videos may run beside it)."""
        assert self.codec is not None
        try:
            with self.busy.busy(), self.sharing.busy() as share:
                height, width = sample_gops[0].shape[1:3]
                self.codec.check_geometry(width, height)
                result = self._search(list(sample_gops), goal, Fraction(fps_num, fps_den))
            record = result.as_record()
            knob = result.rate_target.value
        except (CodecError, QualityTargetError) as exc:
            return {"error": f"{label}: quality search: {exc}"}
        device = accounting.held(self.codec.device)
        compute = {"search": device.charge(share.seconds), "device": device.kind}
        return {"knob": knob, "record": record, "compute": compute}

    def encode(self, frames: np.ndarray, *args: Any, **kwargs: Any) -> tuple[GopResult, bytes]:
        """`_encode_gop`, timed as the actor's busy time; one call at a time unless the codec is
        thread-safe (then concurrent calls overlap, see the module docstring)."""
        self._start_nvml()
        with self.busy.busy():
            result = self._encode_gop(frames, *args, **kwargs)
        self.gops += 1
        return result

    def _encode_gop(
        self,
        frames: np.ndarray,
        target: RateTarget | None,
        fps_num: int,
        fps_den: int,
        gop_index: int,
        label: str,
        goal: QualityGoal | None = None,
        decode_seconds: float | None = None,
        sampled: bool = True,
    ) -> tuple[GopResult, bytes]:
        """Code one GOP: (result, payload). A codec refusal comes back as the result's `error`.

        `goal` (per-GOP quality target) replaces `target`: the GOP is searched on itself.
        `decode_seconds`: the CPU-seconds its decode task measured, carried into the result's `compute`.
        `sampled`: the GOP is in the expensive metrics' sample (`pipeline.metrics.MetricsSample`).
        """
        assert self.codec is not None
        fps = Fraction(fps_num, fps_den)
        count, height, width = frames.shape[:3]
        search: dict[str, Any] | None = None
        try:
            self.codec.check_geometry(width, height)
            with self._codec_lock:  # a no-op for thread-safe codecs; the metrics below run outside it
                with self.sharing.busy() as encode_share:
                    if goal is not None:
                        encoded, search = self._search_gop(frames, goal, fps)
                    else:
                        assert target is not None
                        encoded = self.codec.encode(
                            frames, target, fps, reconstruct=self._pixels_needed(gop_index)
                        )
                seconds = encode_share.wall
                payload = bytes(encoded.payload)
                digests = self._digests(encoded, payload, count, width, height)  # may decode: same lock
        except CodecError as exc:
            return GopResult.failed(f"{label}: {exc}"), b""
        except QualityTargetError as exc:  # the metric cannot be computed, or nothing fits the cap
            return GopResult.failed(f"{label}: quality search: {exc}"), b""
        params = dict(encoded.params)
        if search is not None:
            params["quality_search"] = search
        with self.sharing.busy() as metrics_share:
            quality = self._quality(frames, encoded.reconstruction, gop_index, float(fps), sampled)
        note = quality.pop("metrics_note", None)
        result = GopResult(
            payload_bytes=len(payload),
            bpp=bits_per_pixel(len(payload), width, height, count),
            kbps=kilobits_per_second(len(payload), count, fps),
            encode_seconds=seconds,
            params=params,
            device=self.codec.device,
            **digests,
            metrics=quality,
            metrics_note=note,
            compute=self._compute(
                seconds, encode_share.seconds, metrics_share.seconds, search, decode_seconds
            ),
        )
        return result, payload

    def _digests(self, encoded: Any, payload: bytes, count: int, width: int, height: int) -> dict[str, Any]:
        """What verify proves the decode with (`pipeline.format.digests`): the exact part's sha256 (the codec's,
        else the reconstruction's), and the reconstruction's sha256 and luma fingerprint — null when the
        codec skipped its pixel decode (a GOP whose quality is not measured)."""
        assert self.codec is not None
        recon = encoded.reconstruction
        recon_sha256 = None if recon is None else frames_sha256(recon)
        exact = encoded.exact_digest
        if exact is None:
            exact = self.codec.exact_digest(payload, count, width, height)
        return {
            "recon_sha256": recon_sha256,
            "exact_sha256": exact if exact is not None else recon_sha256,
            "fingerprint": None if recon is None else fingerprint(recon),
        }

    def _compute(
        self,
        seconds: float,
        encode_share: float,
        metrics_share: float,
        search: dict[str, Any] | None,
        decode: float | None,
    ) -> dict[str, Any]:
        """This GOP's device-seconds per stage: its share of the actor's busy time (`BusyClock`
        shares: GOPs coding or measuring at the same moment split that moment, so the actor's time
        is charged once, not once per GOP in flight). A per-GOP search's chosen point is the encode
        (its encoding is the one stored); the other points it measured are the search."""
        device = accounting.held(self.codec.device if self.codec else "cpu")
        encode_wall, search_wall = seconds, None
        if search is not None:
            chosen = [p for p in search.get("points", []) if p["quality"] == search.get("chosen_quality")]
            encode_wall = min(seconds, chosen[0]["encode_seconds"]) if chosen else 0.0
            search_wall = seconds - encode_wall
        shared = encode_share / seconds if seconds > 0 else 1.0  # of the coding's wall time
        return {
            "device": device.kind,
            "decode": decode,
            "encode": device.charge(encode_wall * shared),
            "metrics": device.charge(metrics_share),
            "search": None if search_wall is None else device.charge(search_wall * shared),
        }

    def _pixels_needed(self, gop_index: int) -> bool:
        """Whether this GOP's reconstruction is needed: its quality is measured, or the decode proof
        records its pixels (`fingerprint_every`; every GOP by default)."""
        from pipeline.metrics import should_measure

        return should_measure(gop_index, self.metrics_every) or should_measure(
            gop_index, self.fingerprint_every
        )

    def _start_nvml(self) -> None:
        if not self._nvml_started and self.codec is not None:
            self._nvml_started = True
            self._nvml = utilisation.start_nvml(self.codec.device)

    def utilisation(self) -> dict[str, Any]:
        """How busy this actor kept its device (see `pipeline.archive.utilisation`)."""
        stage = getattr(self.codec, "stage", None)
        return {
            "device": self.codec.device if self.codec else None,
            "resources": utilisation.assigned_resources(),
            "gops": self.gops,
            "actor": self.busy.report(),
            "device_stage": stage.clock.report() if stage is not None else None,
            "nvml": self._nvml.report() if self._nvml is not None else None,
        }

    def _search_gop(self, frames: np.ndarray, goal: QualityGoal, fps: Fraction):
        """Search one GOP on itself; reuse the winning encoding (re-encode only if it was not kept)."""
        assert self.codec is not None
        result = self._search([frames], goal, fps, per_gop=True, keep_encoding=True)
        rate_target = result.rate_target  # raises QualityTargetError if nothing fits under the cap
        encoded = result.encoded[0] if result.encoded else self.codec.encode(frames, rate_target, fps)
        return encoded, result.as_record()

    def _search(self, gops: list[np.ndarray], goal: QualityGoal, fps: Fraction, **options: Any):
        """`find_rate_for_quality` for this actor's codec, on its device, with its metric weights."""
        assert self.codec is not None
        with self._codec_lock:
            return find_rate_for_quality(
                self.codec,
                gops,
                fps,
                goal.metric,
                goal.target,
                max_kbps=goal.max_kbps,
                device=self.codec.device,
                weights_dir=self.metric_weights,
                **options,
            )

    def _quality(
        self, source: np.ndarray, recon: np.ndarray | None, gop_index: int, fps: float, sampled: bool
    ) -> dict[str, Any]:
        from pipeline.metrics import MetricsConfig, compute_gop_metrics, should_measure

        if not should_measure(gop_index, self.metrics_every) or recon is None:
            return {"metrics_note": f"not measured (metrics on every {self.metrics_every}th GOP)"}
        config = MetricsConfig(
            device=self.codec.device if self.codec else "cpu",
            fps=fps,
            lpips="lpips" not in self.skip_metrics,
            dists="dists" not in self.skip_metrics,
            vmaf="vmaf" not in self.skip_metrics,
            temporal="temporal" not in self.skip_metrics,
            weights_dir=self.metric_weights,
            vmaf_threads=self.metric_threads,
            always=self.always_measured,
        )
        try:
            with _metrics_stream(config.device):
                values = compute_gop_metrics(source, recon, config, sampled=sampled)
        except Exception as exc:  # a metric failure must not lose the coded GOP
            return {"metrics_note": f"metrics failed: {type(exc).__name__}: {exc}"}
        columns = set(MANIFEST_SCHEMA.names)
        return {k: v for k, v in values.items() if k in columns}


def _metrics_stream(device: str) -> Any:
    """On a GPU, the metrics run on this thread's own CUDA stream, beside the codec's, not on it; on the
    CPU nothing (and torch stays unloaded)."""
    if device == "cpu":
        return contextlib.nullcontext()
    import torch

    from codec.gpu import thread_stream

    return thread_stream(torch.device(device))
