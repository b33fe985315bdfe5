"""`vidarc migrate OUT NEW_OUT` and `python -m jobs.migrate OUT NEW_OUT` (for `ray job submit`).

Re-encodes archived videos from their decoded frames into a new archive (no sources needed): an
ordinary archive run (resumable, sharded, leased, verified) whose sources are OUT's done videos
(`pipeline/archive/migration.py`), with their lineage on every manifest row. Exit codes as `archive`:
0 every selected video migrated, 1 some failed (a frozen parent says to thaw it), 2 the job could not
run (OUT missing or not an archive, NEW_OUT that is OUT or inside it, unknown codec, a `--where` that
does not parse or matches nothing, bad target options) — then nothing is written to NEW_OUT, 3 the
storage failed during the run (rerun the same command).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

COMMAND_HELP = (
    "Re-encode OUT's archived videos (selected with --where / --video) from their decoded frames into "
    "NEW_OUT with another codec or target, with lineage (parent object, its sha256, generation) and "
    "quality against the old decode (and against the source where it still exists)."
)


def migrate_command(
    ctx: typer.Context,
    out: Annotated[str, typer.Argument(help="The archive to migrate from: local folder or fsspec URL.")],
    new_out: Annotated[str, typer.Argument(help="The new archive (not OUT, not inside it).")],
    codec: Annotated[str, typer.Option(help="x264 | x265 | av1 | glvc | gvc")] = "x264",
    target_kbps: Annotated[float | None, typer.Option(help="Target bit rate per video (kbit/s).")] = None,
    target_bpp: Annotated[float | None, typer.Option(help="Target bits / (width·height·frames).")] = None,
    quality: Annotated[float | None, typer.Option(help="Codec-native quality (CRF, q-index, atoms).")] = None,
    target_vmaf: Annotated[
        float | None, typer.Option(help="Search each video's setting for this VMAF (0-100).")
    ] = None,
    target_psnr: Annotated[
        float | None, typer.Option(help="Search each video's setting for this PSNR (dB, RGB).")
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            help="Migrate the videos with a manifest row matching this filter (e.g. \"codec == 'x264' and "
            'vmaf < 80"); every done video without it.'
        ),
    ] = None,
    video: Annotated[list[str] | None, typer.Option(help="Migrate this video key (repeatable).")] = None,
    source_fraction: Annotated[
        float,
        typer.Option(
            help="Share of each video's GOPs (a seeded sample, at least one) also measured against the "
            "original source, where it still exists and is unchanged (source_psnr); 0: none."
        ),
    ] = 0.1,
    gop_frames: Annotated[int | None, typer.Option(help="Frames per GOP (default: the codec's).")] = None,
    model: Annotated[str | None, typer.Option(help="Model directory or URL of the new codec.")] = None,
    parent_model: Annotated[
        str | None,
        typer.Option(help="Weights to decode OUT's neural videos with (default: the bundled model)."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Encoder preset (classic codecs).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
    actors: Annotated[int, typer.Option(help="Encode actors.")] = 1,
    num_gpus_per_actor: Annotated[
        float, typer.Option(help="GPUs per encode actor (fractional ok; 0 = CPU).")
    ] = 0.0,
    gops_per_actor: Annotated[
        int, typer.Option(help="Decoded GOPs queued or coding per actor at once (bounds memory).")
    ] = 2,
    verify_fraction: Annotated[
        float | None,
        typer.Option(help="Verify this fraction of GOPs at the end.", show_default="none: no closing verify"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Migrate at most this many videos in this run.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rerun videos recorded as failed in NEW_OUT.")
    ] = False,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: time + random suffix).")] = None,
    metrics_every: Annotated[int, typer.Option(help="Measure quality on every Nth GOP of a video.")] = 1,
    metrics_sample: Annotated[
        float, typer.Option(help="Share of the measured GOPs that also get the expensive metrics.")
    ] = 0.1,
    skip_metric: Annotated[
        list[str] | None, typer.Option(help="Do not compute lpips | dists | vmaf | temporal (repeatable).")
    ] = None,
    metric_weights: Annotated[
        str | None, typer.Option(help="Folder with LPIPS/DISTS backbone weights (checked by sha256).")
    ] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: migrate only the videos of shard i of n.")] = None,
    pack: Annotated[
        float | None, typer.Option("--pack", help="Pack videos into objects of about N_MB.", metavar="N_MB")
    ] = None,
    min_psnr: Annotated[
        float | None,
        typer.Option(
            help="Quality floor on each video's mean RGB PSNR against the old decode (dB).",
            metavar="DB",
            show_default="20 for glvc/gvc, off for classic codecs",
        ),
    ] = None,
    fallback: Annotated[
        str | None, typer.Option(help="x264 | x265 | av1: code a video under the floor with this codec.")
    ] = None,
    storage_class: Annotated[
        str | None,
        typer.Option(
            help="S3 class of NEW_OUT's video and pack objects.",
            show_default="the bucket's default (STANDARD)",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            help="TOML file of options (their command-line names, as for `vidarc archive --config`); "
            "options on the command line win.",
            metavar="FILE.toml",
        ),
    ] = None,
) -> None:
    """Re-encode OUT's archived videos into NEW_OUT."""
    values = {name: value for name, value in locals().items() if name != "ctx"}
    from jobs.archive import report
    from jobs.archive_options import ConfigFileError, apply_config_file, archive_config, run_with_ray
    from pipeline.archive import ArchiveError, run_archive
    from pipeline.archive.config import ConfigError, MigrationSpec
    from pipeline.store.storage import redact
    from pipeline.text import printable

    try:
        o = apply_config_file(ctx, values, config)
        migration = MigrationSpec(
            where=o["where"], keys=tuple(o["video"] or ()), source_fraction=o["source_fraction"],
            parent_model=o["parent_model"],
        )  # fmt: skip
        run_config = archive_config(o, src=o["out"], out=o["new_out"], migration=migration)
        result = run_with_ray(run_archive, run_config)
    except (ArchiveError, ConfigError, ConfigFileError) as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    report(result)


def register(app: typer.Typer) -> None:
    app.command("migrate", help=COMMAND_HELP)(migrate_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(migrate_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
