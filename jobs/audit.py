"""`vidarc audit` and `vidarc compare`: read an archive's manifest and say what it holds and how good it is.

Thin entry points: the work lives in `pipeline.audit`. Errors a user can act on are one line, exit 2.
A damaged manifest or verify part (or classic-reference file) is a finding: the
audit (or comparison) of the other parts is printed, each damaged part is named on stderr, and `audit`
and `compare` exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jobs import price_options as po
from pipeline.format.runinfo import json_text
from pipeline.text import printable, text_console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"error: {printable(message)}", err=True)
    raise typer.Exit(2)


def _json_default(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def audit(
    out: Annotated[str, typer.Argument(help="archive root (local path or s3://bucket/prefix)")],
    where: Annotated[
        str | None, typer.Option("--where", help="filter, e.g. \"vmaf < 80 and codec == 'glvc'\"")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the audit as JSON instead of tables")
    ] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="also write a self-contained HTML report")
    ] = None,
    worst: Annotated[int, typer.Option("--worst", min=0, help="list the N worst GOPs per metric")] = 10,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint")] = None,
    prices: po.PricesFile = None,
    gpu_hour: po.GpuHour = None,
    cpu_hour: po.CpuHour = None,
    storage_gb_month: po.StorageGbMonth = None,
    egress_gb: po.EgressGb = None,
    storage_class: po.StorageClass = None,
) -> None:
    """Summarise an archive: sizes, rates, quality percentiles, worst GOPs, failures, verify results,
    compute spent, the classic reference at equal quality and the break-even at the prices shown."""
    from jobs.warning_lines import notes_for
    from pipeline.audit.reader import AuditError
    from pipeline.audit.summary import audit_archive
    from pipeline.read.manifest import UncompactedManifest
    from pipeline.store.storage import StorageError

    priced = po.load(prices, gpu_hour, cpu_hour, storage_gb_month, egress_gb, storage_class)
    try:
        with notes_for(UncompactedManifest):
            result = audit_archive(out, where=where, worst=worst, endpoint_url=endpoint_url, prices=priced)
        if html is not None:
            from pipeline.audit.report_html import write_html_report

            write_html_report(result, html, endpoint_url=endpoint_url)
    except (AuditError, StorageError, OSError) as exc:
        _fail(str(exc))
        return
    if as_json:
        sys.stdout.write(json_text(result.to_json(), default=_json_default, indent=2) + "\n")
    else:
        from pipeline.audit.tables import print_audit

        print_audit(result, text_console(), worst)
        if html is not None:
            typer.echo(f"report written to {html}")
    damaged = result.damaged_parts + ((result.verify or {}).get("damaged_parts") or [])
    if damaged:  # the audit of everything else stands; the damage is a finding, exit 1
        for part in damaged:
            typer.echo(f"damaged: {printable(part['uri'])}: {printable(part['reason'])}", err=True)
        raise typer.Exit(1)


def compare(
    out_a: Annotated[str, typer.Argument(help="first archive (the anchor)")],
    out_b: Annotated[str, typer.Argument(help="second archive (the test)")],
    metric: Annotated[str, typer.Option("--metric", help="quality metric for BD-rate")] = "psnr",
    html: Annotated[
        Path | None, typer.Option("--html", help="also write a self-contained HTML comparison")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")] = False,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint")] = None,
    prices: po.PricesFile = None,
    gpu_hour: po.GpuHour = None,
    cpu_hour: po.CpuHour = None,
    storage_gb_month: po.StorageGbMonth = None,
    egress_gb: po.EgressGb = None,
) -> None:
    """BD-rate of B against A and per-video deltas for two archives of the same sources, with each
    one's compute, reference and break-even, and B's break-even against A, at the prices shown."""
    from pipeline.audit.compare import CompareError, compare_archives
    from pipeline.audit.reader import AuditError
    from pipeline.store.storage import StorageError

    priced = po.load(prices, gpu_hour, cpu_hour, storage_gb_month, egress_gb)
    try:
        result = compare_archives(out_a, out_b, metric=metric, endpoint_url=endpoint_url, prices=priced)
        if html is not None:
            from pipeline.audit.report_html import write_compare_html

            write_compare_html(result, html)
    except (CompareError, AuditError, StorageError, OSError) as exc:
        _fail(str(exc))
        return
    if as_json:
        sys.stdout.write(json_text(result.to_json(), default=_json_default, indent=2) + "\n")
    else:
        from pipeline.audit.compare import print_comparison

        print_comparison(result, text_console())
        if html is not None:
            typer.echo(f"report written to {html}")
    if result.damaged_parts:  # as audit: the comparison of the rest stands, the damage is a finding
        for part in result.damaged_parts:
            typer.echo(f"damaged: {printable(part['uri'])}: {printable(part['reason'])}", err=True)
        raise typer.Exit(1)


def register(parent: typer.Typer) -> None:
    parent.command("audit")(audit)
    parent.command("compare")(compare)


register(app)


def main() -> None:
    """`python -m jobs.audit OUT ...` (the audit command; `compare` via `python -m jobs.audit compare`)."""
    from jobs.help_defaults import describe_defaults

    describe_defaults(app)
    argv = sys.argv[1:]
    if argv and argv[0] in ("audit", "compare"):
        app(argv)
    else:
        app(["audit", *argv])


if __name__ == "__main__":
    main()
