"""`vidarc audit --html` and `vidarc compare --html`: one self-contained page per report.

Everything is inline — figures are matplotlib PNGs embedded as base64 data URIs, styles in a <style>
block, no scripts, fonts or network resources — so a report can be mailed, archived next to the data or
opened on an air-gapped machine. The page is built from a second streaming pass over the manifest
(bounded memory: per-video aggregates, reservoir samples per group, GOP series for a few videos).

The worst GOPs are shown as the middle frame of the source next to the same frame decoded from the
archive (container index + one ranged read + the codec named in the header). When the source is gone,
the codec cannot be built here (e.g. a neural codec without its model) or the archive object is
unreadable, the image is replaced by a one-line note: a report never fails because of one GOP.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audit.groups import group_label
from pipeline.audit.reader import iter_batches, open_manifest
from pipeline.audit.sketch import Reservoir
from pipeline.audit.summary import QUALITY_METRICS, AuditResult
from pipeline.metrics import HIGHER_IS_BETTER

MAX_SERIES_VIDEOS = 8
MAX_FRAME_PAIRS = 4
PLOT_METRICS_ORDER = ("vmaf", "psnr", "ms_ssim", "lpips", "dists", "psnr_y", "lpips_vgg", "temporal_flicker")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd}
.note{color:#a33}.pair{display:flex;gap:1em;align-items:flex-start}.pair figure{margin:0}
figcaption{font-size:.85em;color:#555}
"""


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return _img(buffer.getvalue(), "figure")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _frame_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _figure(width: float = 9.0, height: float = 4.0, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return figure, axes[0]


def _collect(
    out: str, where_expression: Any, endpoint_url: str | None, series_videos: set[str]
) -> dict[str, Any]:
    """Per-video points, per-group samples and per-GOP series for `series_videos`, in one pass."""
    per_video: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    samples: dict[tuple[str, str], Reservoir] = {}
    series: dict[str, list[tuple[int, dict[str, float | None]]]] = defaultdict(list)
    columns = ["source_uri", "video_key", "codec", "target_kind", "target_value", "status", "gop_index"]
    columns += ["payload_bytes", "width", "height", "frame_count", *QUALITY_METRICS]
    for batch in iter_batches(open_manifest(out, endpoint_url=endpoint_url), columns, where_expression):
        for row in batch.to_pylist():
            if row["status"] != "ok":
                continue
            label = group_label(row["codec"], row["target_kind"], row["target_value"])
            video = row["source_uri"] or row["video_key"]
            point = per_video[(label, video)]
            point["bytes"] += row["payload_bytes"] or 0
            point["pixels"] += (row["width"] or 0) * (row["height"] or 0) * (row["frame_count"] or 0)
            for metric in QUALITY_METRICS:
                if row[metric] is not None:
                    point[f"{metric}_sum"] += row[metric]
                    point[f"{metric}_n"] += 1
                    samples.setdefault((label, metric), Reservoir(capacity=20_000)).add(
                        np.array([row[metric]])
                    )
            if video in series_videos:
                series[f"{video} ({label})"].append((row["gop_index"], {m: row[m] for m in QUALITY_METRICS}))
    return {"per_video": per_video, "samples": samples, "series": series}


def _metrics_present(samples: dict[tuple[str, str], Reservoir]) -> list[str]:
    present = {metric for (_, metric), reservoir in samples.items() if reservoir.count}
    return [m for m in PLOT_METRICS_ORDER if m in present]


def _rate_quality_plot(per_video: dict[tuple[str, str], dict[str, float]], metrics: list[str]) -> str:
    shown = metrics[:3]
    figure, axes = _figure(4.2 * len(shown), 3.6, len(shown))
    for axis, metric in zip(axes, shown, strict=False):
        by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (label, _video), point in per_video.items():
            if point["pixels"] and point[f"{metric}_n"]:
                by_label[label].append(
                    (8 * point["bytes"] / point["pixels"], point[f"{metric}_sum"] / point[f"{metric}_n"])
                )
        for label, xy in sorted(by_label.items()):
            data = np.array(xy)
            axis.scatter(data[:, 0], data[:, 1], s=18, label=label, alpha=0.8)
        axis.set_xlabel("bpp (bits / pixel·frame)")
        axis.set_ylabel(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)")
        axis.set_title(f"rate vs {metric}, one point per video")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _png(figure)


def _histograms(samples: dict[tuple[str, str], Reservoir], metrics: list[str]) -> str:
    figure, axes = _figure(4.2 * len(metrics), 3.2, len(metrics))
    for axis, metric in zip(axes, metrics, strict=False):
        for (label, name), reservoir in sorted(samples.items()):
            if name == metric and reservoir.sample.size:
                axis.hist(reservoir.sample, bins=30, alpha=0.6, label=label)
        axis.set_title(f"{metric} per GOP")
        axis.set_xlabel(metric)
        axis.set_ylabel("GOPs")
        axis.legend(fontsize=7)
    return _png(figure)


def _series_plot(series: dict[str, list[tuple[int, dict[str, float | None]]]], metric: str) -> str:
    figure, axes = _figure(9.0, 3.6)
    axis = axes[0]
    for name, points in sorted(series.items()):
        points.sort(key=lambda item: item[0])
        xs = [gop for gop, values in points if values[metric] is not None]
        ys = [values[metric] for _, values in points if values[metric] is not None]
        if xs:
            axis.plot(xs, ys, marker="o", markersize=3, label=name[:60])
    axis.set_xlabel("GOP index")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} along each video (videos holding the worst GOPs)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _png(figure)


def decode_archived_frame(row: dict[str, Any], offset_in_gop: int, endpoint_url: str | None) -> np.ndarray:
    """One frame of a GOP decoded from the archive object named in the manifest row (with the decoder
    its header asks for: the bundled model when it names one)."""
    from pipeline.read.reader import ArchiveReader

    reader = ArchiveReader(row["archive_uri"], endpoint_url=endpoint_url)
    frames = reader.decode(int(row["gop_index"]), reader.decoder_for())
    return frames[offset_in_gop]


def _frame_pairs(result: AuditResult, metric: str, endpoint_url: str | None) -> str:
    from pipeline.sources.media import decode_frames

    parts = []
    for row in result.worst.get(metric, [])[:MAX_FRAME_PAIRS]:
        middle = row["frame_count"] // 2
        caption = (
            f"{html.escape(str(row['source_uri']))} — GOP {row['gop_index']}, frame {row['first_frame'] + middle}; "
            f"{metric} {row[metric]:.4g}, {row['codec']} {row['target_kind']}={row['target_value']:g}"
        )
        cells = []
        try:
            source = decode_frames(
                row["source_uri"],
                row["first_frame"] + middle,
                1,
                expected_pts=None,
                endpoint_url=endpoint_url,
            )[0]
            cells.append(
                f"<figure>{_img(_frame_png(source), 'source frame')}<figcaption>source</figcaption></figure>"
            )
        except Exception as exc:  # the source may be gone: say so and go on
            cells.append(f'<p class="note">source frame unavailable: {html.escape(_one_line(exc))}</p>')
        try:
            decoded = decode_archived_frame(row, middle, endpoint_url)
            cells.append(
                f"<figure>{_img(_frame_png(decoded), 'decoded frame')}<figcaption>decoded</figcaption></figure>"
            )
        except Exception as exc:
            cells.append(f'<p class="note">decoded frame unavailable: {html.escape(_one_line(exc))}</p>')
        parts.append(f'<h4>{caption}</h4><div class="pair">{"".join(cells)}</div>')
    return "".join(parts)


def _one_line(exc: BaseException) -> str:
    from pipeline.store.storage import redact

    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"l" if i < left else ""}">{html.escape(_cell(v))}</td>' for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def write_html_report(result: AuditResult, path: str | Path, *, endpoint_url: str | None = None) -> Path:
    """Render `result` (plus a second pass over its manifest) as one self-contained HTML file."""
    from pipeline.audit.filters import parse_filter
    from pipeline.format.schema import MANIFEST_SCHEMA

    series_videos = {row["source_uri"] or row["video_key"] for rows in result.worst.values() for row in rows}
    series_videos = set(sorted(series_videos)[:MAX_SERIES_VIDEOS])
    data = _collect(result.out, parse_filter(result.where, MANIFEST_SCHEMA), endpoint_url, series_videos)
    metrics = _metrics_present(data["samples"])
    sections = [f"<p>archive <code>{html.escape(result.out)}</code>, {result.rows:,} manifest rows"]
    sections[0] += f", filter <code>{html.escape(result.where)}</code></p>" if result.where else "</p>"
    sections.append("<h2>Summary</h2>")
    sections.append(
        _table(
            ["codec / target", "videos", "GOPs", "bytes", "ratio (source/stored)", "bpp", "kbps", "failures"],
            [
                [
                    g["label"],
                    g["videos"],
                    g["gops"],
                    g["payload_bytes"],
                    g["compression_ratio"],
                    g["bpp"],
                    g["kbps"],
                    g["failures"],
                ]
                for g in result.groups
            ],
        )
    )
    quality_rows = [
        [
            g["label"],
            f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}",
            s["p1"],
            s["p5"],
            s["p50"],
            s["mean"],
            s["count"],
        ]
        for g in result.groups
        for m, s in g["quality"].items()
    ]
    sections.append(
        _table(["codec / target", "metric", "p1", "p5", "p50", "mean", "GOPs"], quality_rows, left=2)
    )
    checks = [(g["label"], g["target_check"]) for g in result.groups if g.get("target_check")]
    if checks:
        sections.append("<h2>Quality targets</h2><p>The manifest's own measurements against each target.</p>")
        sections.append(
            _table(
                [
                    "codec / target",
                    "GOPs measured",
                    "GOPs short",
                    "unmeasured",
                    "videos short",
                    "of videos",
                    "worst video",
                ],
                [
                    [
                        label,
                        c["gops_measured"],
                        c["gops_short"],
                        c["gops_unmeasured"],
                        c["videos_short"],
                        c["videos_measured"],
                        c["worst_video_mean"],
                    ]
                    for label, c in checks
                ],
            )
        )
    if metrics:
        sections.append("<h2>Rate vs quality</h2>" + _rate_quality_plot(data["per_video"], metrics))
        sections.append("<h2>Quality histograms</h2>" + _histograms(data["samples"], metrics))
        if data["series"]:
            sections.append("<h2>Quality along each video</h2>" + _series_plot(data["series"], metrics[0]))
        sections.append(f"<h2>Worst GOPs by {metrics[0]}</h2>")
        sections.append(_frame_pairs(result, metrics[0], endpoint_url) or "<p>none</p>")
    else:
        sections.append('<p class="note">no quality metrics in this manifest: nothing to plot</p>')
    if result.costs is not None:
        from pipeline.audit.cost_views import costs_html

        sections.append(costs_html(result.costs))
    if result.failures:
        sections.append("<h2>Failures</h2>")
        sections.append(
            _table(
                ["video", "error"], [[f["source_uri"] or f["video_key"], f["error"]] for f in result.failures]
            )
        )
    sections.append("<h2>Verify</h2>")
    verify = result.verify
    if verify is None:
        sections.append("<p>never verified</p>")
    else:
        sections.append(
            f"<p>{verify['rows']} GOPs decoded in {len(verify['runs'])} run(s): {verify['failed']} failed "
            f"(crc {verify['crc_failed']}, decode {verify['decode_failed']}, quality {verify['quality_failed']}); "
            f"largest PSNR difference to the manifest {_cell(verify['max_psnr_delta'])} dB</p>"
        )
        if verify["failures"]:
            sections.append(
                _table(
                    ["video", "GOP", "status", "error"],
                    [[f["video_key"], f["gop_index"], f["status"], f["error"]] for f in verify["failures"]],
                )
            )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    temporary.write_text(_page(f"vidarc audit — {result.out}", "".join(sections)), encoding="utf-8")
    temporary.replace(target)  # never a half-written report under the final name
    return target


def _compare_costs(result: Any) -> str:
    if getattr(result, "costs_a", None) is None or getattr(result, "costs_b", None) is None:
        return ""
    from pipeline.audit.cost_views import compare_costs_html

    return compare_costs_html(result.costs_a, result.costs_b, result.b_vs_a)


def _quality_gap(result: Any) -> str:
    """compare's equal-quality warning (`compare.quality_gap`), as in its text output."""
    statement = (getattr(result, "quality_gap", None) or {}).get("statement")
    return f"<p><b>warning: {html.escape(statement)}</b></p>" if statement else ""


def write_compare_html(result: Any, path: str | Path) -> Path:
    """RD curves of both archives and the per-video rate/quality changes, as one HTML file."""
    metric = result.metric
    figure, axes = _figure(10.0, 4.0, 2)
    for name, points, marker in (("A", result.points_a, "o"), ("B", result.points_b, "s")):
        usable = sorted(
            (p["bpp"], p["quality"]) for p in points if p["bpp"] is not None and p["quality"] is not None
        )
        if usable:
            xs, ys = zip(*usable, strict=True)
            axes[0].plot(xs, ys, marker=marker, label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("bpp")
    axes[0].set_ylabel(metric)
    axes[0].set_title("rate–quality (matched videos)")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    deltas = [
        (v["rate_change_percent"], v["quality_delta"])
        for v in result.videos
        if v["rate_change_percent"] is not None and v["quality_delta"] is not None
    ]
    if deltas:
        data = np.array(deltas)
        axes[1].scatter(data[:, 0], data[:, 1], s=16)
    axes[1].axhline(0, color="#888", lw=0.8)
    axes[1].axvline(0, color="#888", lw=0.8)
    axes[1].set_xlabel("rate change B vs A (%)")
    axes[1].set_ylabel(f"{metric} change B − A")
    axes[1].set_title("per video")
    bd = (
        f"BD-rate (bpp) of B vs A: {result.bd_rate_percent:+.2f} %, BD-{metric}: {result.bd_quality:+.4g}"
        if result.bd_rate_percent is not None
        else f"BD-rate not computed: {result.bd_note}"
    )
    body = (
        f"<p>A = <code>{html.escape(result.out_a)}</code><br>B = <code>{html.escape(result.out_b)}</code><br>"
        f"{result.matched_videos} matched videos ({result.only_in_a} only in A, {result.only_in_b} only in B)</p>"
        f"<p><b>{html.escape(bd)}</b></p>{_png(figure)}"
        + _quality_gap(result)
        + _compare_costs(result)
        + _table(
            ["video", "bpp A", "bpp B", "rate Δ %", f"{metric} A", f"{metric} B", "Δ", "BD-rate %"],
            [
                [
                    v["source_uri"],
                    v["bpp_a"],
                    v["bpp_b"],
                    v["rate_change_percent"],
                    v["quality_a"],
                    v["quality_b"],
                    v["quality_delta"],
                    v["bd_rate_percent"],
                ]
                for v in result.videos
            ],
        )
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    temporary.write_text(_page("vidarc compare", body), encoding="utf-8")
    temporary.replace(target)
    return target
