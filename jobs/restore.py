"""`vidarc restore OUT VIDEO DEST` and `python -m jobs.restore ...`: write a video back out of an archive.

VIDEO is a video_key or a source name (its file name or path relative to SRC, if unique). DEST ends in
.mp4 (H.264 CRF 10) or .mkv (lossless FFV1). Exit codes: 0 written, 2 any error (one line; no DEST).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer

COMMAND_HELP = "Restore a video (or a frame range) from an archive into DEST (.mp4 or .mkv)."


def restore_command(
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
    video: Annotated[str, typer.Argument(help="video_key, or the source's file name / relative path.")],
    dest: Annotated[str, typer.Argument(help="Output file (.mp4 or .mkv), local or fsspec URL.")],
    frames: Annotated[str | None, typer.Option(help="Half-open frame range A:B (A: or :B allowed).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda: where to decode.")] = "cpu",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model directory or fsspec URL for neural codecs (default: the bundled model the "
            "archive's header names). Weights other than the header's sha256 are refused."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="If the object is being thawed (`vidarc thaw`), wait for its copy instead of failing.",
        ),
    ] = False,
) -> None:
    """Restore a video (or a frame range) from an archive into DEST (.mp4 or .mkv)."""
    from pipeline.read.restore import RestoreError, parse_frame_range, restore_video
    from pipeline.store.storage import StorageError, redact
    from pipeline.text import printable

    try:
        span = parse_frame_range(frames) if frames else None
        with _index_warnings_as_lines():
            result = restore_video(
                out, video, dest, frames=span, endpoint_url=endpoint_url, device=device, model=model,
                wait=wait, progress=lambda line: print(printable(line), file=sys.stderr, flush=True),
            )  # fmt: skip
    except (RestoreError, StorageError, OSError) as exc:
        print(f"error: {printable(redact(str(exc).splitlines()[0]))}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(
        f"restored {result.video_key} frames {result.first_frame}:{result.first_frame + result.frame_count} "
        f"({result.gops_decoded} GOPs, {result.bytes_read} bytes read"
        f"{', with audio' if result.audio else ''}) to {printable(result.dest)}"
    )


@contextlib.contextmanager
def _index_warnings_as_lines() -> Iterator[None]:
    """A lookup that had to scan the manifest (an archive older than its index) says so in one line."""
    from pipeline.read.locate import IndexWarning
    from pipeline.text import printable

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, IndexWarning):
                    print(f"warning: {printable(str(warning.message))}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def register(app: typer.Typer) -> None:
    app.command("restore", help=COMMAND_HELP)(restore_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(restore_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
