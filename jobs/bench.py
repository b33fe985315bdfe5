"""`vidarc bench ...`: benchmarks as a sub-app, so each benchmark is `vidarc bench <name>`.

`vidarc bench pipeline` compares a codec's own throughput with the whole Ray pipeline's on the same
clips (see `pipeline.bench`); `vidarc bench metrics` times each quality metric against the codec's
encode on one GOP (see `pipeline.bench_metrics`).
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Codec throughput alone vs the whole pipeline through Ray, on the same clips; prints the ratio."""
    from pipeline.bench import parse_size, result_record, run_pipeline_bench

    def run():
        width, height = parse_size(size)
        return run_pipeline_bench(
            codec=codec, videos=videos, frames=frames, width=width, height=height, gop_frames=gop_frames,
            quality=quality, metrics_every=metrics_every,
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
    from pipeline.bench import parse_size
    from pipeline.bench_metrics import result_record, run_metrics_bench

    def run():
        width, height = parse_size(size)
        return run_metrics_bench(
            codec=codec, width=width, height=height, frames=frames, device=device, weights_dir=metric_weights
        )

    _report(run, result_record, as_json)


def _report(run: Callable[[], Any], record: Callable[[Any], dict], as_json: bool) -> None:
    """Run a benchmark; print its lines (or JSON), or a one-line error with exit code 2."""
    try:
        result = run()
    except (ValueError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(record(result), indent=2) + "\n")
    else:
        print("\n".join(result.lines()))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


def main() -> None:
    bench_app()


if __name__ == "__main__":
    main()
