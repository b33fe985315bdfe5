"""`vidarc inspect ARCHIVE_OBJECT` and `vidarc ls OUT`: what one object holds, what an archive holds.

Both print rich tables, or JSON with `--json` for scripts. Errors are one line, exit code 2. `ls`
exits 1 when manifest parts (or classic-reference files) are damaged (each named on
stderr; the other videos are listed).
`python -m jobs.inspect_archive OBJECT` runs `inspect`; `python -m jobs.inspect_archive ls OUT` runs `ls`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer

from jobs import price_options as po


def _fail(message: str) -> None:
    from pipeline.store.storage import redact
    from pipeline.text import printable

    print(f"error: {printable(redact(message))}", file=sys.stderr)
    raise typer.Exit(2)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def inspect_command(
    archive_object: Annotated[str, typer.Argument(help="A .vdrc object: local path or fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model directory or fsspec URL for neural codecs: build the decoder the header asks for "
            "and check its weights (default: only name it; the bundled model when the header names it)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu | cuda: where to build the decoder (with --model).")
    ] = "cpu",
    video: Annotated[
        str | None,
        typer.Option(
            help="For a pack object: inspect this video (its key) of the pack. For an archive root "
            "(OUT): inspect this video's object (a key or a source name)."
        ),
    ] = None,
) -> None:
    """Header, model, decoder, GOP index and rates of one archive object (reads only its index)."""
    from pipeline.read.inspect import InspectError, inspect_object

    try:
        report = inspect_object(
            archive_object, endpoint_url=endpoint_url, model=model, device=device, video=video
        )
    except InspectError as exc:
        _fail(str(exc))
        return
    if as_json:
        from pipeline.format.runinfo import json_text

        sys.stdout.write(json_text(report, indent=2, sort_keys=True) + "\n")
        return
    from rich.table import Table

    from pipeline.text import text_console

    console = text_console()  # header strings and names are data: text, never markup or escapes
    if report.get("kind") == "pack":
        members = Table(
            title=f"pack {report['uri']} ({report['object_bytes']} bytes, {len(report['members'])} videos)"
        )
        for name in ("video_key", "offset", "length", "codec", "size", "frames", "GOPs", "bpp", "kbps"):
            members.add_column(name, justify="left" if name in ("video_key", "codec") else "right")
        for m in report["members"]:
            members.add_row(
                m["video_key"], str(m["offset"]), str(m["length"]), _fmt(m["codec"]), f"{m['width']}x{m['height']}",
                str(m["frames"]), str(m["gops"]), _fmt(m["bpp"], 4), _fmt(m["kbps"], 1),
            )  # fmt: skip
        console.print(members)
        console.print("inspect one of them with --video KEY")
        return
    header = Table(title=f"{report['uri']} ({report['object_bytes']} bytes)", show_header=False)
    for key, value in sorted(report["header"].items()):
        header.add_row(key, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
    console.print(header)
    decoder = report["decoder"]
    checked = (
        "weights checked" if decoder["weights_checked"] else "weights not loaded (give --model to check)"
    )
    console.print(
        f"decoder: {decoder['codec']} options {json.dumps(decoder['options'])}, "
        f"model {decoder['model_dir'] or '-'}" + (f", {checked}" if decoder["model_dir"] else "")
    )
    for attachment in report["attachments"]:
        console.print(f"attachment {attachment['name']}: {attachment['bytes']} bytes, {attachment['info']}")
    gops = Table(title="GOP index")
    for name in ("GOP", "first frame", "frames", "offset", "length", "crc32c", "bpp", "kbps"):
        gops.add_column(name, justify="right")
    for g in report["gops"]:
        crc = f"{g['payload_crc32c']}*" if g.get("payload_crc32c") else g["crc32c"]
        gops.add_row(
            str(g["index"]), str(g["first_frame"]), str(g["frame_count"]), str(g["offset"]),
            str(g["length"]), crc, _fmt(g["bpp"], 4), _fmt(g["kbps"], 1),
        )  # fmt: skip
    console.print(gops)
    if any(g.get("payload_crc32c") for g in report["gops"]):
        console.print(
            "* the payload's own CRC-32C (its last 4 bytes; the index's CRC of such a payload is 48674bc7)"
        )
    t = report["totals"]
    console.print(
        f"total: {t['frames']} frames in {t['gops']} GOPs, {t['payload_bytes']} payload bytes, "
        f"{t['bpp']:.4f} bpp, {t['kbps']:.1f} kbps ({t['seconds']:.2f} s)"
    )


def ls_command(
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array (streamed) instead of tables.")
    ] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per line.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="List at most this many videos (default: all).")
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(help="List the videos whose key sorts after this one (the next page)."),
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    prices: po.PricesFile = None,
    gpu_hour: po.GpuHour = None,
    cpu_hour: po.CpuHour = None,
    storage_gb_month: po.StorageGbMonth = None,
    egress_gb: po.EgressGb = None,
    storage_class: po.StorageClass = None,
) -> None:
    """Videos in an archive, in key order, with status, frames, bytes, rate, quality, compute spent,
    cost and the classic reference (at the prices shown). Streams: memory does not grow with the
    archive; --limit and --after page through it."""
    from jobs.warning_lines import notes_for
    from pipeline.audit.videos import ArchiveListing, ListingError
    from pipeline.read.manifest import UncompactedManifest

    priced = po.load(prices, gpu_hour, cpu_hour, storage_gb_month, egress_gb, storage_class)
    try:
        with notes_for(UncompactedManifest):
            listing = ArchiveListing(out, endpoint_url=endpoint_url, prices=priced, after=after, limit=limit)
            if as_json or as_jsonl:
                _print_json(listing, priced, lines=as_jsonl)
            else:
                _print_tables(out, listing, priced)
    except ListingError as exc:
        _fail(str(exc))
        return
    _exit_if_damaged(listing.damaged)


def _print_json(listing: Any, priced: Any, *, lines: bool) -> None:
    """Each video as it comes: a JSON array written element by element, or JSON lines (strict JSON)."""
    from pipeline.audit.videos import VideoListing
    from pipeline.format.runinfo import json_text

    # In every video's costs: each row says what it was priced with. The same ~9 KB for every video,
    # so it is encoded once and spliced in (the text is what json_text(record) would give).
    prices_text = json_text(priced.to_json())
    fields = [field.name for field in dataclasses.fields(VideoListing)]
    write = sys.stdout.write
    first = True
    if not lines:
        write("[")
    for item in listing:
        video = json_text({name: getattr(item.video, name) for name in fields})
        if item.costs is None:
            costs = "null"
        else:
            costs = json_text({key: value for key, value in item.costs.items() if key != "prices"})
            costs = f'{costs[:-1]}{", " if len(costs) > 2 else ""}"prices": {prices_text}}}'
        text = f'{video[:-1]}, "costs": {costs}}}'
        if lines:
            write(text + "\n")
        else:
            write(("\n  " if first else ",\n  ") + text)
        first = False
    if not lines:
        write("\n]\n" if not first else "]\n")
    sys.stdout.flush()


PAGE_ROWS = 500


def _print_tables(out: str, listing: Any, priced: Any) -> None:
    """Tables of `PAGE_ROWS` videos each, printed as the listing streams (never the whole archive)."""
    from rich.table import Table

    from pipeline.audit.cost_views import LS_COLUMNS, ls_cells, print_prices
    from pipeline.text import text_console

    console = text_console()  # source names and errors are data: text, never markup or escapes
    shown = 0
    costed = False
    classes: set[str] = set()
    errors: list[str] = []
    items = iter(listing)
    while True:
        page = [item for _, item in zip(range(PAGE_ROWS), items, strict=False)]
        if not page:
            break
        table = Table(title=f"{out}: videos {shown + 1}-{shown + len(page)}")
        for name in (
            "video",
            "source",
            "status",
            "codec",
            "frames",
            "bytes",
            "bpp",
            "kbps",
            "PSNR",
            "MS-SSIM",
        ):
            text = name in ("video", "source", "status", "codec")
            table.add_column(
                name, justify="left" if text else "right", overflow="fold" if text else "ellipsis"
            )
        spent = Table(
            title="compute spent, bytes saved and storage per video (device-time: wall × devices reserved)"
        )
        for name in ("video", *LS_COLUMNS):
            spent.add_column(name, justify="left" if name == "video" else "right", overflow="fold")
        for item in page:
            v = item.video
            source = v.source_uri.rstrip("/").rsplit("/", 1)[-1] if v.source_uri else "-"
            table.add_row(
                v.video_key, source, v.status, v.codec or "-", str(v.frames),
                str(v.payload_bytes), _fmt(v.bpp, 4), _fmt(v.kbps, 1), _fmt(v.psnr, 2), _fmt(v.ms_ssim, 4),
            )  # fmt: skip
            if item.costs is not None:
                spent.add_row(v.video_key, *ls_cells(item.costs, priced.currency))
                classes.update(item.costs["storage"]["classes"])
            if v.error and v.status != "damaged" and len(errors) < 1000:
                errors.append(f"{v.video_key}: {v.error}")
            if v.rate_target_missed and len(errors) < 1000:
                errors.append(f"{v.video_key}: rate target missed on {v.rate_target_missed} of {v.gops} GOPs")
        console.print(table)
        if spent.row_count:
            costed = True
            console.print(spent)
        shown += len(page)
    if not shown:
        console.print(f"{out}: no videos")
    if costed:
        print_prices(
            {"prices": priced.to_json(), "uses_default_prices": priced.uses_defaults()},
            console,
            sorted(classes),
        )
    for line in errors:
        console.print(line, soft_wrap=True)


def _exit_if_damaged(damaged: list[Any]) -> None:
    """Damaged manifest parts: one line each on stderr, exit 1 (the other videos were listed)."""
    from pipeline.text import printable

    if damaged:
        for part in damaged:
            print(f"damaged: {printable(part.line())}", file=sys.stderr)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
    app.command("ls")(ls_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
    register(app)
    describe_defaults(app)
    argv = sys.argv[1:]
    app(argv if argv and argv[0] in ("inspect", "ls") else ["inspect", *argv])


if __name__ == "__main__":
    main()
