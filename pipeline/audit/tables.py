"""Rich tables for `vidarc audit`: one summary row per codec/target, quality tails, worst GOPs."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.audit.summary import HIGHER_IS_BETTER, PERCENTILES, AuditResult
from pipeline.text import markup_text


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_audit(result: AuditResult, console: Console, worst: int) -> None:
    for part in result.damaged_parts:
        console.print(
            f"[red]damaged {part.get('folder', 'manifest')} part[/red] (its rows are left out): "
            f"{markup_text(part['uri'])}: "
            f"{markup_text(part['reason'])}",
            soft_wrap=True,
            markup=True,
        )
    title = f"{result.out}" + (f"  (where {result.where})" if result.where else "")
    summary = Table(title=f"archive {title}: {result.rows:,} manifest rows")
    for name in (
        "codec / target",
        "videos",
        "GOPs",
        "bytes",
        "ratio (source/stored)",
        "bpp",
        "kbps",
        "failures",
    ):
        summary.add_column(name, justify="left" if name == "codec / target" else "right")
    for group in result.groups:
        summary.add_row(
            group["label"],
            fmt(group["videos"]),
            fmt(group["gops"]),
            fmt(group["payload_bytes"]),
            fmt(group["compression_ratio"]),
            fmt(group["bpp"]),
            fmt(group["kbps"]),
            fmt(group["failures"]),
        )
    console.print(summary)

    quality = Table(title="quality per codec/target (p1 = value the worst 1% of GOPs reach)")
    quality.add_column("codec / target")
    quality.add_column("metric")
    for p in PERCENTILES:
        quality.add_column(f"p{p}", justify="right")
    quality.add_column("mean", justify="right")
    quality.add_column("mean 95% CI", justify="right")
    quality.add_column("GOPs measured", justify="right")
    for group in result.groups:
        for metric, stats in group["quality"].items():
            arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
            interval = stats.get("mean_ci95")
            of = stats.get("of_gops")
            quality.add_row(
                group["label"],
                f"{metric} {arrow}",
                *(fmt(stats[f"p{p}"], 4) for p in PERCENTILES),
                fmt(stats["mean"], 4),
                f"{fmt(interval[0], 4)} to {fmt(interval[1], 4)}" if interval else "-",
                f"{fmt(stats['count'])} of {fmt(of)}"
                if of is not None and of != stats["count"]
                else fmt(stats["count"]),
            )
    console.print(quality)

    checks = [(group["label"], group["target_check"]) for group in result.groups if group.get("target_check")]
    if checks:
        targets = Table(title="quality targets: the manifest's measurements against the target")
        for name in (
            "codec / target",
            "GOPs measured",
            "GOPs short",
            "unmeasured",
            "videos short",
            "worst video",
        ):
            targets.add_column(name, justify="left" if name == "codec / target" else "right")
        for label, check in checks:
            short = f"{check['videos_short']:,} of {check['videos_measured']:,}"
            targets.add_row(
                label,
                fmt(check["gops_measured"]),
                fmt(check["gops_short"]),
                fmt(check["gops_unmeasured"]),
                short,
                fmt(check["worst_video_mean"], 4),
            )
        console.print(targets)

    rates = [(group["label"], group["rate_check"]) for group in result.groups if group.get("rate_check")]
    if rates:
        table = Table(title="rate targets: GOPs whose bits missed the target (the codec's verdict)")
        for name in ("codec / target", "GOPs", "missed", "no verdict"):
            table.add_column(name, justify="left" if name == "codec / target" else "right")
        for label, check in rates:
            table.add_row(label, fmt(check["of_gops"]), fmt(check["gops_missed"]), fmt(check["gops_unknown"]))
        console.print(table)

    if worst > 0:
        for metric, rows in result.worst.items():
            table = Table(title=f"worst {len(rows)} GOPs by {metric}")
            for name in ("video", "source", "GOP", "frames", "codec / target", metric, "bpp"):
                table.add_column(name)
            for row in rows:
                table.add_row(
                    row["video_key"] or "-",
                    source_name(row["source_uri"]),
                    fmt(row["gop_index"]),
                    f"{row['first_frame']}+{row['frame_count']}",
                    f"{row['codec']} {row['target_kind']}={fmt(row['target_value'])}",
                    fmt(row[metric], 4),
                    fmt(row["bpp"]),
                )
            console.print(table)

    if result.failures:
        table = Table(title=f"{len(result.failures)} failed rows")
        table.add_column("video")
        table.add_column("source")
        table.add_column("error")
        for row in result.failures:
            table.add_row(
                row["video_key"] or "-", source_name(row["source_uri"]), row["error"] or row["status"]
            )
        console.print(table)

    if result.costs is not None:
        from pipeline.audit.cost_views import print_costs

        print_costs(result.costs, console)

    verify = result.verify
    if verify is None:
        console.print("verify: never run on this archive")
    else:
        console.print(
            f"verify: {verify['rows']} GOPs decoded in {len(verify['runs'])} run(s), {verify['failed']} failed "
            f"(crc {verify['crc_failed']}, decode {verify['decode_failed']}, quality {verify['quality_failed']})"
        )


def source_name(uri: str | None) -> str:
    """A source as `ls` shows it: its file name (the key, in the column beside it, names the video)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] if uri else "-"
