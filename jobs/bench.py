"""`vidarc bench ...`: benchmarks as a sub-app, so each benchmark is `vidarc bench <name>`.

`vidarc bench pipeline` compares a codec's own throughput with the whole Ray pipeline's on the same
clips (see `pipeline.benchmarks.throughput`), or with `--against ffmpeg` vidarc's archive job with a plain ffmpeg loop
on the same files (see `pipeline.benchmarks.ffmpeg_loop`); `vidarc bench codec` times one codec's encode and decode alone beside x265 on the same frames (see
`pipeline.benchmarks.codec_speed`); `vidarc bench metrics` times each quality metric against the codec's
encode on one GOP (see `pipeline.benchmarks.metric_costs`); `vidarc bench gpu` sets a neural codec's own
throughput beside the pipeline's, with the encode actors' device-busy fraction (see `pipeline.benchmarks.gpu_goals`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

bench_app = typer.Typer(
    name="bench", help="Benchmarks (print measured numbers).", no_args_is_help=True, add_completion=False
)


@bench_app.callback()
def _benchmarks() -> None:
    """Benchmarks (print measured numbers)."""  # a callback keeps `pipeline` a subcommand


@bench_app.command("pipeline")
def pipeline_command(
    codec: Annotated[str, typer.Option(help="Codec to measure.")] = "x264",
    videos: Annotated[int, typer.Option(min=1, help="Synthetic clips.")] = 4,
    frames: Annotated[int, typer.Option(min=1, help="Frames per clip.")] = 96,
    size: Annotated[str, typer.Option(help="Clip size WxH.")] = "640x360",
    gop_frames: Annotated[int, typer.Option(min=1, help="Frames per GOP.")] = 48,
    quality: Annotated[
        float | None, typer.Option(help="Codec-native quality (default: the codec's).")
    ] = None,
    metrics_every: Annotated[
        int, typer.Option(min=1, help="The pipeline measures quality on every Nth GOP.")
    ] = 1,
    metrics_sample: Annotated[
        float,
        typer.Option(
            help="With --against: the archive's --metrics-sample (share of GOPs with the expensive "
            "metrics; 1: every GOP)."
        ),
    ] = 0.1,
    against: Annotated[
        str | None,
        typer.Option(
            help="ffmpeg: vidarc (default metrics) against a plain ffmpeg loop with the same encoder "
            "settings, on the same files.",
            show_default="none: the codec alone",
        ),
    ] = None,
    files: Annotated[
        list[str] | None,
        typer.Option(
            help="With --against: these videos, or the videos in these folders, instead of synthetic "
            "clips (repeatable).",
            show_default="none: synthetic clips",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Codec throughput alone vs the whole pipeline through Ray, on the same clips; prints the ratio.
    With --against ffmpeg: vidarc archive vs a plain ffmpeg loop on the same files."""
    if against is not None:
        _against(
            against,
            codec,
            files,
            videos,
            frames,
            size,
            gop_frames,
            quality,
            metrics_every,
            metrics_sample,
            as_json,
        )
        return
    from pipeline.benchmarks.throughput import parse_size, result_record, run_pipeline_bench

    def run():
        if files:
            raise ValueError("--files needs --against ffmpeg")
        width, height = parse_size(size)
        return run_pipeline_bench(
            codec=codec, videos=videos, frames=frames, width=width, height=height, gop_frames=gop_frames,
            quality=quality, metrics_every=metrics_every,
        )  # fmt: skip

    _report(run, result_record, as_json)


def _against(
    against: str,
    codec: str,
    files: list[str] | None,
    videos: int,
    frames: int,
    size: str,
    gop_frames: int,
    quality: float | None,
    metrics_every: int,
    metrics_sample: float,
    as_json: bool,
) -> None:
    """`vidarc bench pipeline --against ffmpeg` (see `pipeline.benchmarks.ffmpeg_loop`)."""
    from pipeline.benchmarks.ffmpeg_loop import AGAINST, result_record, run_ffmpeg_bench
    from pipeline.benchmarks.throughput import parse_size

    def run():
        if against not in AGAINST:
            raise ValueError(f"--against {against!r}: expected one of {', '.join(AGAINST)}")
        width, height = parse_size(size)
        return run_ffmpeg_bench(
            codec=codec, files=files, videos=videos, frames=frames, width=width, height=height,
            gop_frames=gop_frames, quality=quality, metrics_every=metrics_every, metrics_sample=metrics_sample,
        )  # fmt: skip

    _report(run, result_record, as_json)


@bench_app.command("codec")
def codec_command(
    codec: Annotated[str, typer.Option(help="glvc | gvc | x264 | x265 | av1.")] = "glvc",
    size: Annotated[str, typer.Option(help="Frame size WxH.")] = "256x144",
    frames: Annotated[int, typer.Option(min=1, help="Frames per GOP (GLVC/GVC: 1+4k).")] = 17,
    gops: Annotated[
        int, typer.Option(min=1, help="GOPs to code; more than 1 also decodes them side by side.")
    ] = 2,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
    target: Annotated[
        str | None,
        typer.Option(help="bpp=N, kbps=N or quality=N.", show_default="the archive's default quality"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model directory (default: the bundled one).")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Codec option key=value.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """One codec's encode and decode frames/s alone, beside x265 (medium) on the same frames."""
    from pipeline.benchmarks.codec_speed import result_record, run_codec_bench
    from pipeline.benchmarks.throughput import parse_size

    def run():
        width, height = parse_size(size)
        return run_codec_bench(
            codec=codec, width=width, height=height, frames=frames, gops=gops, device=device,
            target=target, model=model, options=_options(option or []),
        )  # fmt: skip

    _report(run, result_record, as_json)


@bench_app.command("metrics")
def metrics_command(
    codec: Annotated[str, typer.Option(help="Codec whose encode time is the yardstick.")] = "x264",
    size: Annotated[str, typer.Option(help="GOP size WxH.")] = "640x360",
    frames: Annotated[int, typer.Option(min=2, help="Frames in the GOP.")] = 48,
    device: Annotated[str, typer.Option(help="cpu | cuda: where the metrics run.")] = "cpu",
    metric_weights: Annotated[
        str | None, typer.Option(help="Folder with the official LPIPS/DISTS backbone weights.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Seconds per GOP of every quality metric, side by side with the codec's encode."""
    from pipeline.benchmarks.metric_costs import result_record, run_metrics_bench
    from pipeline.benchmarks.throughput import parse_size

    def run():
        width, height = parse_size(size)
        return run_metrics_bench(
            codec=codec, width=width, height=height, frames=frames, device=device, weights_dir=metric_weights
        )

    _report(run, result_record, as_json)


@bench_app.command("gpu")
def gpu_command(
    codec: Annotated[
        str, typer.Option(help="glvc | gvc (any codec runs; the goals are for these two).")
    ] = "glvc",
    model: Annotated[str | None, typer.Option(help="Model directory (default: the bundled one).")] = None,
    random_model: Annotated[
        bool, typer.Option(help="Write full-size random-weight models (timing only): Wan2.1 VAE, Wan 1.3B.")
    ] = False,
    videos: Annotated[int, typer.Option(min=1, help="Synthetic clips.")] = 2,
    frames: Annotated[int, typer.Option(min=1, help="Frames per clip.")] = 49,
    size: Annotated[str, typer.Option(help="Clip size WxH.")] = "1280x720",
    gop_frames: Annotated[
        int | None, typer.Option(min=1, help="Frames per GOP (default: the codec's).")
    ] = None,
    quality: Annotated[
        float | None, typer.Option(help="Codec-native quality (default: the codec's).")
    ] = None,
    metrics_every: Annotated[int, typer.Option(min=1, help="The pipeline measures every Nth GOP.")] = 10,
    actors: Annotated[int, typer.Option(min=1, help="Encode actors.")] = 1,
    num_gpus_per_actor: Annotated[
        float, typer.Option(min=0, help="GPUs per actor (0.5: two per GPU).")
    ] = 1.0,
    gops_in_flight: Annotated[int, typer.Option(min=1, help="GOPs in flight per actor.")] = 3,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu.")] = "auto",
    option: Annotated[
        list[str] | None, typer.Option(help="Codec option key=value (e.g. compile=false, atoms=16384).")
    ] = None,
    workdir: Annotated[
        str | None, typer.Option(help="Folder for clips, outputs and random models (default: the temp dir).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """A neural codec alone (encode without reconstruction, decode) vs the whole pipeline on the same clips,
    with the encode actors' device-busy fraction."""
    from pipeline.benchmarks.gpu_goals import result_record, run_gpu_bench
    from pipeline.benchmarks.throughput import parse_size

    def run():
        width, height = parse_size(size)
        return run_gpu_bench(
            codec=codec, model=model, random_model_kind=random_model, videos=videos, frames=frames,
            width=width, height=height, gop_frames=gop_frames, quality=quality, metrics_every=metrics_every,
            actors=actors, num_gpus_per_actor=num_gpus_per_actor, gops_in_flight=gops_in_flight,
            device=device, options=_options(option or []), workdir=workdir,
        )  # fmt: skip

    _report(run, result_record, as_json)


def _options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` codec options; values parsed as JSON where they can be (numbers, true/false)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected key=value")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _report(run: Callable[[], Any], record: Callable[[Any], dict], as_json: bool) -> None:
    """Run a benchmark; print its lines (or JSON), or a one-line error with exit code 2."""
    from codec.errors import CodecError

    try:
        result = run()
    except (ValueError, RuntimeError, CodecError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        from pipeline.format.runinfo import json_text

        sys.stdout.write(json_text(record(result), indent=2) + "\n")
    else:
        print("\n".join(result.lines()))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


def main() -> None:
    from jobs.help_defaults import describe_defaults

    describe_defaults(bench_app)
    bench_app()


if __name__ == "__main__":
    main()
