"""`vidarc archive SRC OUT` and `python -m jobs.archive SRC OUT` (same options; for `ray job submit`).

Exit codes: 0 every video archived (or nothing to do: an empty SRC), 1 some videos failed or the
closing verify found a problem (the summary lists them), 2 the job could not run (bad options,
missing SRC, unreachable storage, OUT an existing file or not writable, codec or model that cannot
load) — then nothing is written to OUT, 3 the storage failed during the run (an outage longer than
the retries): the summary line is still printed, nothing is marked failed for it, and rerunning the
same command finishes the job.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

COMMAND_HELP = (
    "Archive every video under SRC (a folder, file or s3:// prefix, or an input list: .parquet/.csv/.jsonl "
    "of source URIs) into OUT."
)


def archive_command(
    ctx: typer.Context,
    src: Annotated[
        str,
        typer.Argument(
            help="Source folder, file, or fsspec URL (s3://bucket/prefix); or a list of source URIs "
            "(.parquet/.csv/.jsonl with a uri column, optional size, caption, license, split, "
            "target_kbps/target_bpp/quality)."
        ),
    ],
    out: Annotated[str, typer.Argument(help="Archive root: local folder or fsspec URL.")],
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
    target_dists: Annotated[
        float | None, typer.Option(help="Search each video's setting for this DISTS (lower is better).")
    ] = None,
    per_gop: Annotated[
        bool, typer.Option("--per-gop", help="Search the quality target for every GOP, not per video.")
    ] = False,
    max_kbps: Annotated[
        float | None, typer.Option(help="Rate cap for quality-target searches (kbit/s).")
    ] = None,
    search_gops: Annotated[int, typer.Option(help="Sample GOPs per video for a quality-target search.")] = 3,
    gop_frames: Annotated[int | None, typer.Option(help="Frames per GOP (default: the codec's).")] = None,
    model: Annotated[str | None, typer.Option(help="Model directory or URL (neural codecs).")] = None,
    gvc_mode: Annotated[
        str | None,
        typer.Option(help="GVC conditioning: t2v | i2v | flf2v (default: the best the model has)."),
    ] = None,
    gvc_steps: Annotated[
        int | None, typer.Option(help="GVC sampler steps (default: the model's, else 20).")
    ] = None,
    gvc_atoms: Annotated[
        int | None, typer.Option(help="GVC atoms per codebook K (default: the model's, else 16384).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Encoder preset (classic codecs).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
    actors: Annotated[int, typer.Option(help="Encode actors.")] = 1,
    gops_per_actor: Annotated[
        int, typer.Option(help="Decoded GOPs queued or coding per actor at once (bounds memory).")
    ] = 2,
    max_pixels: Annotated[
        int, typer.Option(help="Pixel budget per frame; larger sources fail before decoding (default 8K).")
    ] = 7680 * 4320,
    num_gpus_per_actor: Annotated[
        float, typer.Option(help="GPUs per encode actor (fractional ok; 0 = CPU).")
    ] = 0.0,
    verify_fraction: Annotated[
        float | None,
        typer.Option(help="Verify this fraction of GOPs at the end.", show_default="none: no closing verify"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Archive at most this many videos in this run.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rerun videos recorded as failed.")
    ] = False,
    include: Annotated[
        list[str] | None, typer.Option(help="Glob on the path relative to SRC (repeatable).")
    ] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob to leave out (repeatable).")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: time + random suffix).")] = None,
    metrics_every: Annotated[int, typer.Option(help="Measure quality on every Nth GOP of a video.")] = 1,
    metrics_sample: Annotated[
        float,
        typer.Option(
            help="Share of the measured GOPs that also get the expensive metrics (MS-SSIM, VMAF, LPIPS, "
            "DISTS), a seeded sample; PSNR, PSNR-Y and flicker are on every measured GOP. 1: every GOP."
        ),
    ] = 0.1,  # pipeline.metrics.DEFAULT_SAMPLE_FRACTION (kept literal: --help stays import-light)
    fingerprint_every: Annotated[
        int,
        typer.Option(
            help="Record the decode proof's pixel fingerprint on every Nth GOP (1 = all; others are "
            "proven by their exact part only, and skip the neural pixel decode)."
        ),
    ] = 1,
    metric_weights: Annotated[
        str | None, typer.Option(help="Folder with LPIPS/DISTS backbone weights (checked by sha256).")
    ] = None,
    skip_metric: Annotated[
        list[str] | None, typer.Option(help="Do not compute lpips | dists | vmaf | temporal (repeatable).")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: archive only the videos of shard i of n (n jobs share one OUT, no coordination)."
        ),
    ] = None,
    actor_resources: Annotated[
        str | None,
        typer.Option(
            help="Ray custom resources per encode actor, JSON or name=amount (e.g. '{\"gpu_node\": 1}')."
        ),
    ] = None,
    pack: Annotated[
        float | None,
        typer.Option(
            "--pack",
            help="Pack many short videos into objects of about N_MB each (each video still restorable "
            "alone with ranged reads), for storage with a minimum object size or per-object fees.",
            metavar="N_MB",
        ),
    ] = None,
    task_resources: Annotated[
        str | None,
        typer.Option(help="Ray custom resources per probe/decode/commit task, JSON or name=amount."),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="x264 | x265 | av1: code a seeded sample of GOPs with this classic codec at the archive's "
            "measured quality (the quality target's metric, else VMAF, else PSNR) and report the size ratio."
        ),
    ] = None,
    reference_fraction: Annotated[
        float, typer.Option(help="Fraction of each video's GOPs coded by the --reference codec.")
    ] = 0.05,
    reference_seed: Annotated[int, typer.Option(help="Seed of the reference sample.")] = 0,
    reference_preset: Annotated[
        str | None, typer.Option(help="Encoder preset of the --reference codec (default: the codec's).")
    ] = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact/--no-compact",
            help="Merge the committed videos' manifest parts into large key-sorted files at the end of "
            "the run and every --compact-every videos (as `vidarc compact` does).",
        ),
    ] = True,
    compact_every: Annotated[
        int, typer.Option(help="During the run, compact after this many more committed videos.")
    ] = 10_000,
    min_psnr: Annotated[
        float | None,
        typer.Option(
            help="Quality floor: each video's mean RGB PSNR (dB) must reach it, else the video falls back "
            "(--fallback) or fails. Default 20 for glvc/gvc, off for classic codecs; 0 switches it off.",
            metavar="DB",
            show_default="20 for glvc/gvc, off for classic codecs",
        ),
    ] = None,
    min_vmaf: Annotated[
        float | None,
        typer.Option(help="Quality floor on each video's mean VMAF (0-100) instead of PSNR.", metavar="V"),
    ] = None,
    fallback: Annotated[
        str | None,
        typer.Option(
            help="x264 | x265 | av1: code a video under the quality floor again with this codec at the same "
            "--target-bpp/--target-kbps (with --quality: the fallback's default CRF)."
        ),
    ] = None,
    stall_timeout: Annotated[
        float,
        typer.Option(help="Kill (and replace) an encode actor that finishes nothing for this many seconds."),
    ] = 3600.0,
    storage_class: Annotated[
        str | None,
        typer.Option(
            help="S3 class of the video and pack objects: STANDARD | STANDARD_IA | GLACIER_IR | GLACIER | "
            "DEEP_ARCHIVE (GLACIER and DEEP_ARCHIVE need `vidarc thaw` before a read). Manifests, markers "
            "and indexes stay in STANDARD.",
            show_default="the bucket's default (STANDARD)",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            help="TOML file of options for a run people repeat (their command-line names, e.g. codec = "
            '"x265", storage-class = "DEEP_ARCHIVE"); options on the command line win.',
            metavar="FILE.toml",
        ),
    ] = None,
) -> None:
    """Archive every video under SRC (a folder, file or s3:// prefix) into OUT."""
    values = {name: value for name, value in locals().items() if name != "ctx"}
    from jobs.archive_options import ConfigFileError, apply_config_file, archive_config, run_with_ray
    from pipeline.archive import ArchiveError, run_archive
    from pipeline.archive.config import ConfigError
    from pipeline.store.storage import redact
    from pipeline.text import printable

    try:
        run_config = archive_config(apply_config_file(ctx, values, config))
        result = run_with_ray(run_archive, run_config)
    except (ArchiveError, ConfigError, ConfigFileError) as exc:
        print(f"error: {printable(redact(str(exc)))}", file=sys.stderr)
        raise typer.Exit(2) from None
    report(result)


def report(result) -> None:
    """Print a finished run's outcome (summary line on stdout, problems on stderr) and exit with its
    code; shared by `archive` and `migrate`."""
    from pipeline.store.storage import redact
    from pipeline.text import printable

    print(printable(result.message))
    if result.summary.get("reference"):
        print(result.summary["reference"]["statement"])
    for missed in result.summary.get("quality_targets_missed", []):
        where = missed["video_key"] + (f" GOP {missed['gop_index']}" if "gop_index" in missed else "")
        print(f"  quality target not reached: {where}: {printable(missed['note'])}", file=sys.stderr)
    missed = result.summary.get("rate_target_missed_gops") or 0
    if missed:
        target = result.summary.get("target") or {}
        first = result.summary["rate_target_missed"][0]
        rate = f"{first['bpp']:.4f} bpp" if target.get("kind") == "bpp" else f"{first['kbps']:.1f} kbps"
        print(
            f"  rate target not reached: {missed} of {result.summary.get('gops', 0)} GOPs over "
            f"{target.get('kind')} {target.get('value')} (first: {printable(first['video_key'])} "
            f"GOP {first['gop_index']} at {rate}); rows have target_reached false",
            file=sys.stderr,
        )
    for warning in result.summary.get("warnings", []):
        print(
            f"  warning: {printable(warning['source_uri'])}: {printable(warning['warning'])}", file=sys.stderr
        )
    for failure in result.summary.get("failures", []):
        label = "not written (storage failed)" if failure.get("transient") else "failed"
        print(f"  {label}: {printable(failure['error'])}", file=sys.stderr)
    for failure in (result.summary.get("verify") or {}).get("failures", []):
        print(f"  verify FAILED: {printable(failure)}", file=sys.stderr)
    if result.summary.get("lease_error"):
        print(f"  storage: leases not written: {result.summary['lease_error']}", file=sys.stderr)
    if result.summary.get("storage_stop"):
        print(f"  storage: run stopped: {result.summary['storage_stop']}", file=sys.stderr)
    if result.summary.get("storage_error"):
        print(f"error: {printable(redact(result.summary['storage_error']))}", file=sys.stderr)
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    app.command("archive", help=COMMAND_HELP)(archive_command)


def main() -> None:
    from jobs.help_defaults import describe_defaults

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=COMMAND_HELP)(archive_command)
    describe_defaults(app)
    app()


if __name__ == "__main__":
    main()
