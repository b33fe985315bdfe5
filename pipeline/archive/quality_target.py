"""Find the codec setting that reaches a quality target (e.g. "VMAF ≥ 93") at the lowest rate.

Like ab-av1's crf-search: encode a few sample GOPs at a codec's native quality knob
(`RateTarget("quality", q)`), measure the metric against the source, and move the knob by interpolating
between the two measured points that bracket the target (bisecting while only one side is known).
The search keeps the cheapest setting that meets the target, and every measured point is returned
so the pipeline can store the search next to the archive (auditable, reproducible).

Choices where ab-av1 and the papers are silent, stated here:
- Knob range and direction come from, in order: the `knob_range` argument, the codec's `quality_range`
  class attribute (worst, best), the classic codecs' `crf_range` (best, worst), or `DEFAULT_KNOB_RANGES` for the classic codecs (CRF 51→0 for x264/x265,
  63→0 for SVT-AV1). The knob moves in integer steps: CRF and GLVC's quality index are integers.
- `per_gop=False`: the target applies to the mean score over the sample GOPs, weighted by their frame
  counts (a video's short last GOP must not weigh as much as a full one). `per_gop=True`: to the
  worst sample GOP ("no GOP below the target"), which costs more bits but bounds the tail.
- `max_kbps` caps the rate: points above it never win; when no point meets the target under the cap,
  the best-quality point under the cap is chosen and the result says the target was not reached.
- `keep_encoding=True` keeps the chosen setting's encodings (`QualitySearchResult.encoded`), so a
  per-GOP search whose sample *is* the GOP stores that encoding instead of coding the GOP once more.
  Only the current winner is held: the winner of a set plus one new point is either the old winner or
  the new point (both rules below are an arg-min/arg-max), so memory stays at one encoding per GOP.
"""

from __future__ import annotations

import dataclasses
import math
import time
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import Codec, EncodedGop, RateTarget
from pipeline.metrics import HIGHER_IS_BETTER, MetricsConfig

DEFAULT_KNOB_RANGES: dict[str, tuple[float, float]] = {"x264": (51, 0), "x265": (51, 0), "av1": (63, 0)}


class QualityTargetError(Exception):
    """The search cannot run (unknown metric, metric not computable, knob range unknown): one line."""


@dataclasses.dataclass(frozen=True)
class SearchPoint:
    """One measured setting: knob value, score over the sample, and what it cost."""

    knob: float
    score: float
    gop_scores: tuple[float, ...]
    payload_bytes: int
    kbps: float
    bpp: float
    encode_seconds: float
    meets_target: bool
    within_cap: bool


@dataclasses.dataclass
class QualitySearchResult:
    codec: str
    metric: str
    target: float
    max_kbps: float | None
    per_gop: bool
    points: list[SearchPoint]
    chosen: SearchPoint | None
    reached: bool
    note: str
    #: The chosen setting's encodings of the sample GOPs, when the search was asked to keep them.
    encoded: list[EncodedGop] | None = None

    @property
    def rate_target(self) -> RateTarget:
        """The setting to archive with (raises if the search found none under the cap)."""
        if self.chosen is None:
            raise QualityTargetError(self.note)
        return RateTarget("quality", self.chosen.knob)

    def as_record(self) -> dict[str, Any]:
        """The search as compact JSON-ready data: the archive stores it in the container header and in
        every row's `codec_params`, so the manifest alone shows how each setting was chosen."""
        return {
            "metric": self.metric,
            "target": self.target,
            "max_kbps": self.max_kbps,
            "per_gop": self.per_gop,
            "chosen_quality": self.chosen.knob if self.chosen else None,
            "reached": self.reached,
            "note": self.note,
            "points": [
                {
                    "quality": p.knob,
                    "score": round(p.score, 4),
                    "gop_scores": [round(v, 4) for v in p.gop_scores],
                    "kbps": round(p.kbps, 3),
                    "bpp": round(p.bpp, 6),
                    "encode_seconds": round(p.encode_seconds, 3),
                }
                for p in self.points
            ],
        }

    def as_rows(self) -> list[dict[str, Any]]:
        """The search points as plain rows (for a Parquet/JSON record next to the archive)."""
        rows = []
        for point in self.points:
            row = dataclasses.asdict(point)
            row["gop_scores"] = list(point.gop_scores)
            row.update(codec=self.codec, metric=self.metric, target=self.target, chosen=point is self.chosen)
            rows.append(row)
        return rows


def _knob_range(codec: Codec, knob_range: tuple[float, float] | None) -> tuple[float, float]:
    if knob_range is not None:
        return knob_range
    declared = getattr(codec, "quality_range", None)
    if declared is not None:
        return tuple(declared)  # type: ignore[return-value]
    crf_range = getattr(codec, "crf_range", None)  # classic codecs: (best, worst) CRF
    if crf_range is not None:
        return float(crf_range[1]), float(crf_range[0])
    if codec.name in DEFAULT_KNOB_RANGES:
        return DEFAULT_KNOB_RANGES[codec.name]
    raise QualityTargetError(
        f"{codec.name}: unknown quality knob range; pass knob_range=(worst, best) or set {type(codec).__name__}.quality_range"
    )


def knob_range(codec: Codec) -> tuple[float, float]:
    """(worst, best) of the codec's quality knob, as the search uses it."""
    return _knob_range(codec, None)


def measure_metric(
    metric: str,
    source: np.ndarray,
    recon: np.ndarray,
    fps: float,
    device: str = "cpu",
    weights_dir: str | None = None,
) -> float:
    """One metric for one GOP, through the same code that fills the manifest columns.

    PSNR and VMAF are computed alone (the same functions `compute_gop_metrics` calls for their
    columns): a search on them needs neither MS-SSIM nor torch.
    """
    from pipeline.metrics import compute_gop_metrics
    from pipeline.metrics.fidelity import check_pair

    if metric in ("psnr", "psnr_y", "vmaf"):
        check_pair(source, recon)
        if metric == "vmaf":
            from pipeline.metrics.vmaf import vmaf

            value, note = vmaf(source, recon, fps=fps, threads=MetricsConfig().vmaf_threads)
        else:
            from pipeline.metrics.fidelity import psnr_rgb, psnr_y

            value, note = (psnr_rgb if metric == "psnr" else psnr_y)(source, recon), None
        if value is None:
            raise QualityTargetError(f"cannot search on {metric}: {note}")
        return float(value)

    wants_perceptual = metric in ("lpips", "lpips_vgg")
    config = MetricsConfig(
        device=device,
        lpips=wants_perceptual,
        dists=metric == "dists",
        vmaf=metric == "vmaf",
        temporal=metric == "temporal_flicker",
        fps=fps,
        weights_dir=weights_dir,
    )
    values = compute_gop_metrics(source, recon, config)
    value = values[metric]
    if value is None:
        raise QualityTargetError(f"cannot search on {metric}: {values['metrics_note']}")
    return float(value)


class _Search:
    def __init__(self, codec: Codec, gops: list[np.ndarray], fps: Fraction, metric: str, target: float,
                 max_kbps: float | None, per_gop: bool, device: str, weights_dir: str | None,
                 keep_encoding: bool) -> None:  # fmt: skip
        self.codec, self.gops, self.fps, self.metric, self.target = codec, gops, fps, metric, target
        self.max_kbps, self.per_gop, self.device = max_kbps, per_gop, device
        self.weights_dir, self.keep_encoding = weights_dir, keep_encoding
        self.higher = HIGHER_IS_BETTER[metric]
        self.points: dict[float, SearchPoint] = {}
        self.winner: SearchPoint | None = None
        self.winner_encoded: list[EncodedGop] | None = None

    def better_or_equal(self, score: float) -> bool:
        return score >= self.target if self.higher else score <= self.target

    def evaluate(self, knob: float) -> SearchPoint:
        if knob in self.points:
            return self.points[knob]
        total_bytes, scores, seconds, encodings = 0, [], 0.0, []
        pixels = frames = 0
        for gop in self.gops:
            started = time.perf_counter()
            encoded = self.codec.encode(gop, RateTarget("quality", knob), self.fps)
            seconds += time.perf_counter() - started
            total_bytes += len(encoded.payload)
            scores.append(
                measure_metric(
                    self.metric, gop, encoded.reconstruction, float(self.fps), self.device, self.weights_dir
                )
            )
            if self.keep_encoding:
                encodings.append(encoded)
            frames += gop.shape[0]
            pixels += gop.shape[0] * gop.shape[1] * gop.shape[2]
        if self.per_gop:
            score = min(scores) if self.higher else max(scores)
        else:
            score = float(np.average(scores, weights=[gop.shape[0] for gop in self.gops]))
        kbps = 8.0 * total_bytes / (frames / float(self.fps)) / 1000.0
        point = SearchPoint(
            knob=knob,
            score=score,
            gop_scores=tuple(scores),
            payload_bytes=total_bytes,
            kbps=kbps,
            bpp=8.0 * total_bytes / pixels,
            encode_seconds=seconds,
            meets_target=self.better_or_equal(score),
            within_cap=self.max_kbps is None or kbps <= self.max_kbps,
        )
        self.points[knob] = point
        winner = _winner(list(self.points.values()), self.higher)
        if winner is not self.winner:
            self.winner = winner
            self.winner_encoded = encodings if self.keep_encoding and winner is point else None
        return point


def _winner(points: list[SearchPoint], higher_is_better: bool) -> SearchPoint | None:
    """The point to archive with: the cheapest meeting the target under the cap, else the best under it."""
    meeting = [p for p in points if p.meets_target and p.within_cap]
    if meeting:
        return min(meeting, key=lambda p: (p.kbps, p.knob))
    under_cap = [p for p in points if p.within_cap]
    if not under_cap:
        return None
    return max(under_cap, key=lambda p: (p.score if higher_is_better else -p.score, -p.kbps))


def find_rate_for_quality(
    codec: Codec,
    sample_gops: list[np.ndarray],
    fps: Fraction | float,
    metric: str,
    target: float,
    *,
    max_kbps: float | None = None,
    per_gop: bool = False,
    knob_range: tuple[float, float] | None = None,
    max_steps: int = 10,
    device: str = "cpu",
    weights_dir: str | None = None,
    keep_encoding: bool = False,
) -> QualitySearchResult:
    """Cheapest knob setting whose `metric` over `sample_gops` meets `target` (see the module docstring)."""
    if metric not in HIGHER_IS_BETTER:
        raise QualityTargetError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    if not math.isfinite(target):
        raise QualityTargetError(f"quality target must be a finite number, got {target}")
    if not sample_gops:
        raise QualityTargetError("quality search needs at least one sample GOP")
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    worst, best = _knob_range(codec, knob_range)
    step = 1.0 if best > worst else -1.0  # direction of "better quality" on the knob axis
    search = _Search(
        codec, sample_gops, fps, metric, target, max_kbps, per_gop, device, weights_dir, keep_encoding
    )

    def toward_best(knob: float) -> float:
        """Position along the axis, increasing with quality (so the logic below is direction-free)."""
        return (knob - worst) * step

    low, high = toward_best(worst), toward_best(best)  # positions; quality rises with position
    knob_at = lambda position: worst + position * step  # noqa: E731
    position = float(round((low + high) / 2))
    for _ in range(max_steps):
        point = search.evaluate(knob_at(position))
        if point.meets_target:
            high = position  # cheapest meeting point is at or below this position
        else:
            low = position
        if high - low <= 1:
            break
        position = _next_position(search, low, high, knob_at, toward_best)
    if max_kbps is not None and not any(p.meets_target and p.within_cap for p in search.points.values()):
        _search_under_cap(search, knob_at, toward_best, max_steps)
    return _choose(search, codec.name, metric, target, max_kbps, per_gop, toward_best)


def _search_under_cap(search: _Search, knob_at, toward_best, max_steps: int) -> None:
    """Bisect (rate falls with position) for the highest-quality setting under the cap."""
    over = min(toward_best(p.knob) for p in search.points.values() if not p.within_cap)
    under = [
        toward_best(p.knob) for p in search.points.values() if p.within_cap and toward_best(p.knob) < over
    ]
    if under:
        low = max(under)
    else:
        low = 0.0
        if not search.evaluate(knob_at(low)).within_cap:
            return  # even the lowest-quality setting is over the cap
    for _ in range(max_steps):
        if over - low <= 1:
            return
        middle = float((low + over) // 2)
        if search.evaluate(knob_at(middle)).within_cap:
            low = middle
        else:
            over = middle


def _next_position(search: _Search, low: float, high: float, knob_at, toward_best) -> float:
    """Interpolate the target between the nearest measured points that bracket it; bisect otherwise."""
    below = [p for p in search.points.values() if not p.meets_target and toward_best(p.knob) == low]
    above = [p for p in search.points.values() if p.meets_target and toward_best(p.knob) == high]
    guess = (low + high) / 2
    if below and above and below[0].score != above[0].score:
        fraction = (search.target - below[0].score) / (above[0].score - below[0].score)
        guess = low + fraction * (high - low)
    guess = float(round(guess))
    return min(max(guess, low + 1), high - 1)


def _choose(search: _Search, codec: str, metric: str, target: float, max_kbps: float | None,
            per_gop: bool, toward_best) -> QualitySearchResult:  # fmt: skip
    points = sorted(search.points.values(), key=lambda p: toward_best(p.knob))
    chosen = search.winner
    reached = chosen is not None and chosen.meets_target
    if chosen is None:
        note = f"no measured setting stays under {max_kbps:g} kbps"
    elif reached:
        note = f"{metric} {chosen.score:.4g} at quality {chosen.knob:g} ({chosen.kbps:.1f} kbps)"
    else:
        why = f"under the {max_kbps:g} kbps cap" if max_kbps is not None else "in the knob range"
        note = f"{metric} target {target:g} not reached {why}; best {chosen.score:.4g} at quality {chosen.knob:g}"
    return QualitySearchResult(
        codec, metric, target, max_kbps, per_gop, points, chosen, reached, note, search.winner_encoded
    )
