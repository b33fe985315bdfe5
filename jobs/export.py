"""`vidarc export OUT DEST` and `python -m jobs.export ...`: the selected part of an archive as files.

`--format mp4`: one mp4 (with audio) per video or per contiguous run of selected GOPs, plus a JSON
sidecar. `--format webdataset`: tar shards of clips (`.mp4`, `.npy` latents for GLVC, `.json`).
`--where` takes the audit's filter language and is applied to the manifest before anything is read.
Exit codes: 0 written, 2 any error (one line; nothing left in DEST).
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

COMMAND_HELP = "Export the selected GOPs of an archive as mp4 files or WebDataset shards."


def export_command(
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
    dest: Annotated[str, typer.Argument(help="Output folder, local or fsspec URL.")],
    where: Annotated[
        str | None, typer.Option("--where", help='filter, e.g. "vmaf >= 85 and height >= 480"')
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="mp4 | webdataset")] = "mp4",
    output: Annotated[
        str, typer.Option("--output", help="webdataset: frames | latents (GLVC) | both")
    ] = "frames",
    clip_frames: Annotated[
        int | None, typer.Option("--clip-frames", help="webdataset: clips of N frames inside each GOP")
    ] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="webdataset: frames between clips")] = None,
    clips_per_shard: Annotated[
        int, typer.Option("--clips-per-shard", help="webdataset: clips per tar")
    ] = 1000,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint URL.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda: where to decode.")] = "cpu",
    model: Annotated[
        str | None,
        typer.Option(help="Model directory for neural codecs (default: the bundled model the header names)."),
    ] = None,
    allow_damaged: Annotated[
        bool,
        typer.Option("--allow-damaged", help="Export what is readable when manifest parts are damaged."),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait for selected objects being thawed (`vidarc thaw`) instead of failing."
        ),
    ] = False,
) -> None:
    """Export the selected GOPs of an archive as mp4 files or WebDataset shards."""
    from pipeline.dataset import DamagedManifestWarning, DatasetError
    from pipeline.dataset.export import export_archive
    from pipeline.store.storage import StorageError, redact

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedManifestWarning)  # others keep the default filters
            result = export_archive(
                out,
                dest,
                fmt=fmt,
                where=where,
                output=output,
                clip_frames=clip_frames,
                stride=stride,
                clips_per_shard=clips_per_shard,
                endpoint_url=endpoint_url,
                device=device,
                model=model,
                allow_damaged=allow_damaged,
                wait=wait,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
    except (DatasetError, StorageError, OSError) as exc:
        print(f"error: {redact(str(exc).splitlines()[0])}", file=sys.stderr)
        raise typer.Exit(2) from None
    for warning in caught:  # ours as one line; any other warning as Python would have shown it
        if issubclass(warning.category, DamagedManifestWarning):
            print(f"warning: {redact(str(warning.message))}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if fmt == "mp4":
        print(
            f"exported {result.clips} mp4 files ({result.gops} GOPs, {result.bytes_read} bytes read) to {dest}"
        )
    else:
        print(
            f"exported {result.clips} clips ({result.gops} GOPs, {result.bytes_read} bytes read) in "
            f"{len(result.files)} shards to {dest}"
        )


def register(app: typer.Typer) -> None:
    app.command("export", help=COMMAND_HELP)(export_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(export_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
