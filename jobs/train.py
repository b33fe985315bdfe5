"""`vidarc train tokenizer|glvc|flow` and `python -m jobs.train ...`: training stages on Ray Train.

Each stage writes one component into a model bundle directory (`--out`, e.g. codec/models/vidarc-tiny)
and re-hashes the bundle's model card. Checkpoints go beside it (`<out>.checkpoints/<component>/` unless
`--checkpoint-dir`), are loadable model directories, and `--resume` continues from the newest one.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

train_app = typer.Typer(help="Train the bundled models' components on Ray Train.", no_args_is_help=True)

Data = Annotated[str, typer.Option(help="'synthetic' (clips of bundled photographs) or a video folder/URL.")]
Out = Annotated[str, typer.Option(help="Model bundle directory to write the component into.")]
Steps = Annotated[int, typer.Option(help="Optimiser steps (total, including resumed ones).")]
Minutes = Annotated[float | None, typer.Option(help="Stop after this much wall time.")]
Workers = Annotated[int, typer.Option(help="Ray Train workers (DDP across them).")]
UseGpu = Annotated[bool, typer.Option("--use-gpu", help="One GPU per worker.")]
Threads = Annotated[int, typer.Option(help="CPU threads per worker.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")]


@train_app.command("tokenizer")
def tokenizer_command(
    out: Out,
    data: Data = "synthetic",
    steps: Steps = 2000,
    minutes: Minutes = None,
    size: int = 48,
    frames: int = 5,
    batch: int = 6,
    lr: float = 1e-3,
    workers: Workers = 1,
    use_gpu: UseGpu = False,
    threads: Threads = 1,
    resume: Resume = False,
    init: Annotated[str | None, typer.Option(help="Start from this AutoencoderKLWan directory.")] = None,
    checkpoint_dir: str | None = None,
    endpoint_url: str | None = None,
    curriculum: Annotated[
        str | None,
        typer.Option(help="Growing crops: START:SIZExFRAMESxBATCH,... (overrides size/frames/batch)."),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Scale, motion and colour augmentation.")] = True,
    checkpoint_minutes: Annotated[float, typer.Option(help="Checkpoint at least this often.")] = 5.0,
    eval_minutes: Annotated[
        float | None, typer.Option(help="Log held-out PSNR/colour error of the EMA weights this often.")
    ] = None,
) -> None:
    """Train a small Wan2.1-architecture tokenizer (AutoencoderKLWan)."""
    from pipeline.synthetic import EVAL_IMAGES
    from pipeline.training.bundle import update_bundle_card
    from pipeline.training.tokenizer import (
        TokenizerTraining,
        reconstruction_psnr,
        tokenizer_summary,
        train_tokenizer,
    )

    settings = TokenizerTraining(
        data=data, out=out, steps=steps, minutes=minutes, size=size, frames=frames, batch=batch, lr=lr,
        workers=workers, use_gpu=use_gpu, threads=threads, resume=resume, init=init,
        checkpoint_dir=checkpoint_dir, endpoint_url=endpoint_url, curriculum=curriculum, augment=augment,
        checkpoint_minutes=checkpoint_minutes, eval_minutes=eval_minutes,
    )  # fmt: skip
    started = time.monotonic()
    directory = _guard(lambda: train_tokenizer(settings))
    psnr = reconstruction_psnr(str(directory), EVAL_IMAGES)
    run = {
        "steps": _steps_done(settings), "resume": resume, "init": init, "curriculum": curriculum,
        "size": size, "frames": frames, "batch": batch, "lr": lr, "data": data, "augment": augment,
        "threads": threads, "workers": workers, "device": "gpu" if use_gpu else _cpu_name(),
        "wall_seconds": round(time.monotonic() - started),
    }  # fmt: skip
    summary = tokenizer_summary(out, directory, run, psnr)
    update_bundle_card(
        out, "tokenizer", summary,
        f"AutoencoderKLWan (Wan2.1 architecture, small config) trained on {data} clips "
        f"({summary['steps']} steps in all); held-out reconstruction PSNR {psnr:.2f} dB "
        "(EVAL_IMAGES, 64x64x17).",
    )  # fmt: skip
    print(f"tokenizer written to {directory}; held-out reconstruction PSNR {psnr:.2f} dB")


@train_app.command("glvc")
def glvc_command(
    out: Out,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer directory (default: <out>/tokenizer).")
    ] = None,
    data: Data = "synthetic",
    steps: Steps = 3000,
    minutes: Minutes = None,
    size: int = 64,
    frames: int = 17,
    batch: int = 4,
    lr: float = 5e-4,
    workers: Workers = 1,
    use_gpu: UseGpu = False,
    threads: Threads = 1,
    resume: Resume = False,
    init: Annotated[str | None, typer.Option(help="Start from this latent_codec directory.")] = None,
    checkpoint_dir: str | None = None,
    endpoint_url: str | None = None,
    architecture: Annotated[
        str | None,
        typer.Option(
            help="LatentCodecConfig fields of a fresh model, as JSON (e.g. '{\"hidden_channels\": 96}')."
        ),
    ] = None,
    checkpoint_minutes: Annotated[float, typer.Option(help="Checkpoint at least this often.")] = 5.0,
) -> None:
    """Stage 1 of GLVC: rate + λ·MSE in the frozen tokenizer's latent space, all quality indices."""
    from pipeline.training.bundle import update_bundle_card
    from pipeline.training.glvc import GlvcTraining, train_glvc

    fields = _guard(lambda: _json_object(architecture, "--architecture")) if architecture else {}
    settings = GlvcTraining(
        data=data, tokenizer=tokenizer, out=out, steps=steps,
        minutes=minutes, size=size, frames=frames, batch=batch, lr=lr, workers=workers, use_gpu=use_gpu,
        threads=threads, resume=resume, init=init, checkpoint_dir=checkpoint_dir, endpoint_url=endpoint_url,
        architecture=fields, checkpoint_minutes=checkpoint_minutes,
    )  # fmt: skip
    started = time.monotonic()
    directory = _guard(lambda: train_glvc(settings))
    summary = {
        "steps": _steps_done(settings), "size": size, "frames": frames, "batch": batch, "lr": lr, "data": data,
        "resume": resume, "init": init, "device": "gpu" if use_gpu else _cpu_name(), "threads": threads,
        "wall_seconds_last_run": round(time.monotonic() - started),
        "architecture": json.loads((directory / "config.json").read_text()),
    }  # fmt: skip
    update_bundle_card(
        out, "latent_codec", summary,
        f"GLVC latent codec, stage 1 (bits + λ(q)·latent MSE over 64 quality indices) on {data} clips "
        f"{size}x{size}x{frames}; stage 2 (pixel-decoder sharpening) not trained.",
    )  # fmt: skip
    print(f"latent codec written to {directory}")


@train_app.command("flow")
def flow_command(
    out: Out,
    minutes: Annotated[float, typer.Option(help="Stop after this much wall time.")] = 20.0,
    steps: Steps = 1_000_000,
    frames: int = 17,
    size: int = 64,
    batch: int = 8,
    lr: float = 5e-4,
    threads: Threads = 1,
    clips_per_image: Annotated[int, typer.Option(help="Training clips per training photograph.")] = 24,
    init: Annotated[str | None, typer.Option(help="Continue from this flow model directory.")] = None,
) -> None:
    """Train the GVC flow model (a small Wan transformer) on the bundle tokenizer's latents."""
    from pipeline.training.flow import train_flow

    summary = _guard(
        lambda: train_flow(
            out, minutes=minutes, max_steps=steps, frames=frames, size=size, batch_size=batch, lr=lr,
            threads=threads, clips_per_image=clips_per_image, init=init,
        )
    )  # fmt: skip
    print(f"flow model written to {out}/flow: {summary}")


def _json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object")
    return value


def _cpu_name() -> str:
    """The CPU model and core count, for model cards' honest training records."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name
            )
    except OSError:
        pass
    return f"CPU ({name}, {os.cpu_count()} cores)"


def _steps_done(settings) -> int:
    """Optimiser steps the written component has had (resumed runs included), from its last checkpoint."""

    from pipeline.training.loop import STATE_NAME, latest_checkpoint

    checkpoint = latest_checkpoint(settings.resolved()["checkpoint_dir"])
    return json.loads((checkpoint / STATE_NAME).read_text())["step"] if checkpoint else 0


def _guard(run):
    """Bad input (missing data, wrong directories) as one line and exit code 2, not a traceback."""
    try:
        return run()
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


def main() -> None:
    train_app()


if __name__ == "__main__":
    main()
