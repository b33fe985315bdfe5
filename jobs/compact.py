"""`vidarc compact OUT` and `python -m jobs.compact OUT`: merge the manifest parts of finished videos into
large Parquet files (about 128 MB), atomically and idempotently (`pipeline/tools/compact.py`), and the
classic reference's parts of those videos into files of about 100,000 rows
(`pipeline/tools/compact_reference.py`). The one-line report counts both.

Exit codes: 0 compacted (or nothing to do), 1 some parts were unreadable and were left as they are
(each printed as one line), 2 the archive cannot be compacted (unreachable, not an archive, or another
compaction holds its lock).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

COMMAND_HELP = (
    "Merge the manifest (and classic-reference) parts of finished videos into large Parquet files "
    "(atomic, idempotent)."
)


def compact_command(
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
    target_mb: Annotated[float, typer.Option(help="Size of each compacted file, MB of Parquet.")] = 128.0,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    orphan_hours: Annotated[
        float, typer.Option(help="Remove packs whose commit never finished after this many hours.")
    ] = 24.0,
    force: Annotated[
        bool, typer.Option("--force", help="Take the compaction lock even if a fresh one exists.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Merge the manifest (and classic-reference) parts of finished videos into large Parquet files
    (atomic, idempotent)."""
    import dataclasses

    from pipeline.format.runinfo import json_text
    from pipeline.store.storage import redact
    from pipeline.text import printable
    from pipeline.tools.compact import CompactError, compact

    if not target_mb > 0:
        print(f"error: --target-mb must be positive, got {target_mb:g}", file=sys.stderr)
        raise typer.Exit(2)
    try:
        report = compact(
            out,
            endpoint_url=endpoint_url,
            target_bytes=int(target_mb * 1024 * 1024),
            orphan_hours=orphan_hours,
            force=force,
        )
    except CompactError as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    indexed = _index_older_archive(out, endpoint_url)
    if as_json:
        print(json_text(dict(dataclasses.asdict(report), videos_indexed=indexed), indent=2))
    else:
        print(report.line())
        if indexed:
            print(f"indexed {indexed} videos written before the video index (index/)")
    for line in report.damaged:
        print(f"  unreadable part left as it is: {printable(redact(line))}", file=sys.stderr)
    raise typer.Exit(1 if report.damaged else 0)


def _index_older_archive(out: str, endpoint_url: str | None) -> int:
    """An archive written before the video index gets its entries now (once), so restores by name stop
    scanning the manifest; a failure here is a warning, the compaction stands."""
    from pipeline.read.locate import backfill_index
    from pipeline.text import printable

    try:
        return backfill_index(out, endpoint_url=endpoint_url)
    except Exception as exc:
        print(f"warning: the video index was not written ({printable(str(exc))[:300]})", file=sys.stderr)
        return 0


def register(app: typer.Typer) -> None:
    app.command("compact", help=COMMAND_HELP)(compact_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(compact_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
