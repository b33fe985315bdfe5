"""`vidarc compare`: two archives of the same sources, side by side (BD-rate and per-video deltas).

Rate–quality points. Each archive contributes one point per (codec, target) group, computed over the
videos both archives hold (matched by source_uri), so the comparison is on identical content:
rate = bpp over those videos' coded GOPs (8·bytes / Σ width·height·frames), quality = the mean of the
per-GOP metric. BD-rate needs at least two points per archive (archives made at several targets); with
one point each the BD numbers are null with the reason, and the per-video deltas still say how rate and
quality moved. Per video, the same is done on that video's own points.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.audit.bdrate import BdRateError, bd_quality, bd_rate
from pipeline.audit.groups import group_label
from pipeline.audit.reader import iter_batches, open_manifest
from pipeline.audit.summary import HIGHER_IS_BETTER

#: How far apart two archives' mean quality may be and still count as equal quality (the metric's
#: units): 1 dB of PSNR is about what a viewer starts to notice and about 15–20 % of a classic codec's
#: rate; the others are set at a comparable step.
EQUAL_QUALITY_TOLERANCE: dict[str, float] = {
    "psnr": 1.0,
    "psnr_y": 1.0,
    "vmaf": 2.0,
    "ms_ssim": 0.01,
    "lpips": 0.02,
    "lpips_vgg": 0.02,
    "dists": 0.02,
}


class CompareError(Exception):
    """The archives cannot be compared (unknown metric, no shared videos): one line."""


@dataclasses.dataclass
class _Point:
    payload_bytes: float = 0.0
    pixels: float = 0.0
    quality_sum: float = 0.0
    quality_count: int = 0

    def rate_quality(self) -> tuple[float | None, float | None]:
        rate = 8.0 * self.payload_bytes / self.pixels if self.pixels else None
        quality = self.quality_sum / self.quality_count if self.quality_count else None
        return rate, quality


@dataclasses.dataclass
class Comparison:
    out_a: str
    out_b: str
    metric: str
    matched_videos: int
    only_in_a: int
    only_in_b: int
    points_a: list[dict[str, Any]]
    points_b: list[dict[str, Any]]
    bd_rate_percent: float | None
    bd_quality: float | None
    bd_note: str | None
    videos: list[dict[str, Any]]
    #: Damaged manifest parts of either archive (their videos are left out of the comparison).
    damaged_parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Compute, reference and break-even of each archive over the matched videos, and B's break-even
    #: against A (`costs`), when priced.
    costs_a: dict[str, Any] | None = None
    costs_b: dict[str, Any] | None = None
    b_vs_a: dict[str, Any] | None = None
    #: Whether A and B are at equal quality over the matched videos (`quality_gap`): byte savings and a
    #: break-even only mean something between archives of equal quality.
    quality_gap: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _collect(
    out: str, metric: str, endpoint_url: str | None, damaged: list[dict[str, Any]]
) -> dict[str, dict[str, _Point]]:
    """source_uri -> group label -> accumulated point, from one streaming pass over the manifest
    (damaged parts are appended to `damaged`)."""
    per_video: dict[str, dict[str, _Point]] = defaultdict(lambda: defaultdict(_Point))
    columns = ["source_uri", "codec", "target_kind", "target_value", "status", "payload_bytes"]
    columns += ["width", "height", "frame_count", metric]
    parts = open_manifest(out, endpoint_url=endpoint_url)
    for batch in iter_batches(parts, columns):
        for row in batch.to_pylist():
            if row["status"] != "ok" or row["source_uri"] is None:
                continue
            point = per_video[row["source_uri"]][
                group_label(row["codec"], row["target_kind"], row["target_value"])
            ]
            point.payload_bytes += row["payload_bytes"] or 0
            point.pixels += (row["width"] or 0) * (row["height"] or 0) * (row["frame_count"] or 0)
            if row[metric] is not None and np.isfinite(row[metric]):
                point.quality_sum += row[metric]
                point.quality_count += 1
    damaged.extend(part.as_record() for part in parts.damaged)
    return per_video


def _merge(points: list[dict[str, _Point]]) -> dict[str, _Point]:
    merged: dict[str, _Point] = defaultdict(_Point)
    for groups in points:
        for label, point in groups.items():
            total = merged[label]
            total.payload_bytes += point.payload_bytes
            total.pixels += point.pixels
            total.quality_sum += point.quality_sum
            total.quality_count += point.quality_count
    return merged


def _as_rows(groups: dict[str, _Point]) -> list[dict[str, Any]]:
    rows = []
    for label, point in sorted(groups.items()):
        rate, quality = point.rate_quality()
        rows.append({"label": label, "bpp": rate, "quality": quality})
    return rows


def _bd(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]
) -> tuple[float | None, float | None, str | None]:
    def arrays(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        usable = [r for r in rows if r["bpp"] is not None and r["quality"] is not None]
        return np.array([r["bpp"] for r in usable]), np.array([r["quality"] for r in usable])

    rate_a, quality_a = arrays(rows_a)
    rate_b, quality_b = arrays(rows_b)
    try:
        return (
            bd_rate(rate_a, quality_a, rate_b, quality_b),
            bd_quality(rate_a, quality_a, rate_b, quality_b),
            None,
        )
    except BdRateError as exc:
        return None, None, str(exc)


def compare_archives(
    out_a: str, out_b: str, *, metric: str = "psnr", endpoint_url: str | None = None, prices: Any = None
) -> Comparison:
    """BD-rate (bpp) and BD-`metric` of B against A, overall and per matched video; with `prices`,
    the cost figures of both over the matched videos and B's break-even against A."""
    if metric not in HIGHER_IS_BETTER:
        raise CompareError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    damaged: list[dict[str, Any]] = []
    videos_a = _collect(out_a, metric, endpoint_url, damaged)
    videos_b = _collect(out_b, metric, endpoint_url, damaged)
    matched = sorted(set(videos_a) & set(videos_b))
    if not matched:
        raise CompareError(f"{out_a} and {out_b} share no source videos (matched by source_uri)")
    points_a = _as_rows(_merge([videos_a[v] for v in matched]))
    points_b = _as_rows(_merge([videos_b[v] for v in matched]))
    bd_rate_value, bd_quality_value, note = _bd(points_a, points_b)
    per_video = []
    for uri in matched:
        rows_a, rows_b = _as_rows(videos_a[uri]), _as_rows(videos_b[uri])
        video_bd_rate, video_bd_quality, video_note = _bd(rows_a, rows_b)
        bpp_a, quality_a = _totals(videos_a[uri])
        bpp_b, quality_b = _totals(videos_b[uri])
        per_video.append(
            {
                "source_uri": uri,
                "bpp_a": bpp_a,
                "bpp_b": bpp_b,
                "rate_change_percent": (bpp_b / bpp_a - 1.0) * 100.0 if bpp_a and bpp_b is not None else None,
                "quality_a": quality_a,
                "quality_b": quality_b,
                "quality_delta": quality_b - quality_a
                if quality_a is not None and quality_b is not None
                else None,
                "bd_rate_percent": video_bd_rate,
                "bd_quality": video_bd_quality,
                "bd_note": video_note,
            }
        )
    costs_a = costs_b = b_vs_a = None
    if prices is not None:
        from pipeline.audit.costs import cost_report, relative_payback

        matched_set = set(matched)
        reference_damaged: list[Any] = []
        costs_a = cost_report(
            out_a, prices, source_uris=matched_set, endpoint_url=endpoint_url, damaged=reference_damaged
        )
        costs_b = cost_report(
            out_b, prices, source_uris=matched_set, endpoint_url=endpoint_url, damaged=reference_damaged
        )
        damaged.extend(part.as_record() for part in reference_damaged)
        b_vs_a = relative_payback(costs_a["total"], costs_b["total"], prices)
    gap = quality_gap(
        metric,
        _totals(_merge([videos_a[v] for v in matched]))[1],
        _totals(_merge([videos_b[v] for v in matched]))[1],
    )
    if b_vs_a is not None and not gap["equal"]:
        b_vs_a = dict(b_vs_a, quality_note=gap["statement"])  # the break-even prices unequal quality
    return Comparison(
        quality_gap=gap,
        costs_a=costs_a,
        costs_b=costs_b,
        b_vs_a=b_vs_a,
        out_a=out_a,
        out_b=out_b,
        metric=metric,
        matched_videos=len(matched),
        only_in_a=len(set(videos_a) - set(videos_b)),
        only_in_b=len(set(videos_b) - set(videos_a)),
        points_a=points_a,
        points_b=points_b,
        bd_rate_percent=bd_rate_value,
        bd_quality=bd_quality_value,
        bd_note=note,
        videos=per_video,
        damaged_parts=damaged,
    )


def quality_gap(metric: str, quality_a: float | None, quality_b: float | None) -> dict[str, Any]:
    """Whether two archives' mean `metric` over the same videos is equal within
    `EQUAL_QUALITY_TOLERANCE`, with one sentence saying so when it is not (`statement`; None when
    equal or unknown). A neural archive whose model failed on some content can look cheap only because
    it is worse: its byte savings are then not savings at equal quality."""
    tolerance = EQUAL_QUALITY_TOLERANCE.get(metric)
    delta = quality_b - quality_a if quality_a is not None and quality_b is not None else None
    equal: bool | None = None
    statement = None
    if delta is not None and tolerance is not None:
        equal = abs(delta) <= tolerance
        if not equal:
            unit = " dB" if metric.startswith("psnr") else ""
            better = "B" if (delta > 0) == HIGHER_IS_BETTER[metric] else "A"
            statement = (
                f"A and B are not at equal quality: mean {metric} {quality_a:.4g}{unit} (A) vs "
                f"{quality_b:.4g}{unit} (B), {abs(delta):.3g}{unit} apart (more than {tolerance:g}{unit}; "
                f"{better} is better), so their byte savings and break-even compare different quality"
            )
    return {
        "metric": metric,
        "quality_a": quality_a,
        "quality_b": quality_b,
        "delta": delta,
        "tolerance": tolerance,
        "equal": equal,
        "statement": statement,
    }


def _totals(groups: dict[str, _Point]) -> tuple[float | None, float | None]:
    """All of a video's GOPs in one archive as one point (every target pooled)."""
    total = _Point()
    for point in groups.values():
        total.payload_bytes += point.payload_bytes
        total.pixels += point.pixels
        total.quality_sum += point.quality_sum
        total.quality_count += point.quality_count
    return total.rate_quality()


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_comparison(result: Comparison, console: Console, max_videos: int = 50) -> None:
    direction = "higher" if HIGHER_IS_BETTER[result.metric] else "lower"
    console.print(
        f"A = {result.out_a}\nB = {result.out_b}\n{result.matched_videos} videos in both "
        f"({result.only_in_a} only in A, {result.only_in_b} only in B); {result.metric}: {direction} is better"
    )
    for part in result.damaged_parts:
        left_out = (
            "its video is left out"
            if part.get("folder", "manifest") == "manifest"
            else "its rows are left out"
        )
        console.print(
            f"damaged {part.get('folder', 'manifest')} part ({left_out}): {part['uri']}: {part['reason']}"
        )
    points = Table(title="rate–quality points (matched videos)")
    for name in ("archive", "codec / target", "bpp", result.metric):
        points.add_column(name)
    for name, rows in (("A", result.points_a), ("B", result.points_b)):
        for row in rows:
            points.add_row(name, row["label"], _fmt(row["bpp"], ".4g"), _fmt(row["quality"], ".4g"))
    console.print(points)
    if result.bd_rate_percent is not None:
        console.print(
            f"BD-rate (bpp) of B vs A: {result.bd_rate_percent:+.2f} %   "
            f"BD-{result.metric}: {result.bd_quality:+.4g}"
        )
    else:
        console.print(f"BD-rate: not computed ({result.bd_note})")
    if result.quality_gap and result.quality_gap.get("statement"):
        console.print(f"warning: {result.quality_gap['statement']}")
    if result.costs_a is not None and result.costs_b is not None:
        from pipeline.audit.cost_views import print_compare_costs

        print_compare_costs(result.costs_a, result.costs_b, result.b_vs_a, console)
    table = Table(title=f"per video (first {min(max_videos, len(result.videos))} of {len(result.videos)})")
    for name in (
        "video",
        "bpp A",
        "bpp B",
        "rate Δ %",
        f"{result.metric} A",
        f"{result.metric} B",
        "Δ",
        "BD-rate %",
    ):
        table.add_column(name)
    for row in result.videos[:max_videos]:
        table.add_row(
            row["source_uri"],
            _fmt(row["bpp_a"], ".4g"),
            _fmt(row["bpp_b"], ".4g"),
            _fmt(row["rate_change_percent"], "+.1f"),
            _fmt(row["quality_a"], ".4g"),
            _fmt(row["quality_b"], ".4g"),
            _fmt(row["quality_delta"], "+.3g"),
            _fmt(row["bd_rate_percent"], "+.1f"),
        )
    console.print(table)
