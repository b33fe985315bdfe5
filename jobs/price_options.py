"""The price options shared by `vidarc audit`, `compare` and `ls` (see `pipeline/audit/prices.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PricesFile = Annotated[
    Path | None,
    typer.Option(
        "--prices",
        help="TOML file of prices: gpu_hour, cpu_hour, egress_gb, a storage_gb_month table and "
        "[storage_class.CLASS] tables (see the README).",
    ),
]
GpuHour = Annotated[float | None, typer.Option("--gpu-hour", help="Price of one GPU-hour (any model).")]
CpuHour = Annotated[
    float | None, typer.Option("--cpu-hour", help="Price of one CPU-hour (one reserved CPU).")
]
StorageGbMonth = Annotated[
    list[str] | None,
    typer.Option("--storage-gb-month", help="CLASS=PRICE per GB-month, e.g. standard=0.023 (repeatable)."),
]
EgressGb = Annotated[float | None, typer.Option("--egress-gb", help="Price of one GB downloaded.")]
StorageClass = Annotated[
    str | None,
    typer.Option(
        "--storage-class",
        help="Price the objects as if stored in this S3 class: STANDARD | STANDARD_IA | GLACIER_IR | "
        "GLACIER | DEEP_ARCHIVE (storage, minimums, writes, reads back, break-even).",
        show_default="each object's recorded class, else STANDARD",
    ),
]


def load(
    prices: Path | None,
    gpu_hour: float | None,
    cpu_hour: float | None,
    storage_gb_month: list[str] | None,
    egress_gb: float | None,
    storage_class: str | None = None,
):
    """The prices to use (documented defaults for what is not given); exit 2 with one line on an error."""
    from pipeline.audit.prices import PricesError, load_prices

    try:
        return load_prices(
            prices,
            gpu_hour=gpu_hour,
            cpu_hour=cpu_hour,
            egress_gb=egress_gb,
            storage=storage_gb_month,
            storage_class=storage_class,
        )
    except PricesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
