"""`vidarc train tokenizer|glvc|glvc-decoder|flow` and `python -m jobs.train ...`: the training stages,
on Ray Train, or in this process for one CPU worker without a cluster (`--backend`).

Each stage writes one component into a model bundle directory (`--out`, e.g. codec/models/vidarc-tiny)
and re-hashes the bundle's model card. Checkpoints go beside it (`<out>.checkpoints/<component>/` unless
`--checkpoint-dir`), are loadable model directories, and `--resume` continues from the newest one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

train_app = typer.Typer(
    help="Train the bundled models' components (Ray Train, or this process: --backend).", no_args_is_help=True
)

Data = Annotated[str, typer.Option(help="'synthetic' (clips of bundled photographs) or a video folder/URL.")]
Out = Annotated[str, typer.Option(help="Model bundle directory to write the component into.")]
Steps = Annotated[int, typer.Option(help="Optimiser steps (total, including resumed ones).")]
Minutes = Annotated[float | None, typer.Option(help="Stop after this much wall time.")]
Workers = Annotated[int, typer.Option(help="Ray Train workers (DDP across them).")]
UseGpu = Annotated[bool, typer.Option("--use-gpu", help="One GPU per worker.")]
Threads = Annotated[int, typer.Option(help="CPU threads per worker.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")]
Backend = Annotated[
    str,
    typer.Option(
        help="Where the workers run: ray (Ray Train), local (this process; one CPU worker) or auto "
        "(local for one CPU worker when no cluster is asked for — no RAY_ADDRESS —, else ray)."
    ),
]


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
    backend: Backend = "auto",
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
    trainable: Annotated[
        str,
        typer.Option(
            help="all | decoder: 'decoder' freezes the encoder of --init, so the latent space (and the "
            "bundle's latent codec and flow model trained on it) stays valid."
        ),
    ] = "all",
) -> None:
    """Train a small Wan2.1-architecture tokenizer (AutoencoderKLWan)."""
    _check_shape(size, frames, batch, steps, workers, block=8)
    _check_backend(backend, workers, use_gpu)
    _check_data(data, frames, size, endpoint_url)
    if trainable == "decoder" and not (init or resume):
        _fail("--trainable decoder needs --init (a trained tokenizer whose encoder stays frozen) or --resume")
    from pipeline.sources.synthetic import EVAL_IMAGES
    from pipeline.training.bundle import describe_source, update_bundle_card
    from pipeline.training.loop import Stage, parse_curriculum
    from pipeline.training.tokenizer import (
        TRAINABLE,
        TokenizerTraining,
        check_init,
        reconstruction_psnr,
        tokenizer_summary,
        train_tokenizer,
    )

    if trainable not in TRAINABLE:
        _fail(f"--trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    if init is not None:
        _guard(lambda: check_init(init))
    settings = TokenizerTraining(
        data=data, out=out, steps=steps, minutes=minutes, size=size, frames=frames, batch=batch, lr=lr,
        workers=workers, use_gpu=use_gpu, threads=threads, resume=resume, init=init,
        checkpoint_dir=checkpoint_dir, endpoint_url=endpoint_url, curriculum=curriculum, augment=augment,
        checkpoint_minutes=checkpoint_minutes, eval_minutes=eval_minutes, trainable=trainable,
        backend=backend,
    )  # fmt: skip
    started = time.monotonic()
    directory = _guard(lambda: train_tokenizer(settings))
    psnr = reconstruction_psnr(str(directory), EVAL_IMAGES)
    run = {
        "steps": _steps_done(settings), "resume": resume, "init": describe_source(init),
        "curriculum": curriculum,
        "trainable": trainable,
        # a curriculum names every stage's crop and batch; the single-stage options then did not apply
        **({} if curriculum else {"size": size, "frames": frames, "batch": batch}),
        "lr": lr, "data": data, "augment": augment, "threads": threads, "workers": workers,
        "device": "gpu" if use_gpu else _cpu_name(),
        "wall_seconds": round(time.monotonic() - started),
    }  # fmt: skip
    summary = tokenizer_summary(out, directory, run, psnr)
    longest = max(stage.frames for stage in parse_curriculum(curriculum, Stage(0, size, frames, batch)))
    update_bundle_card(
        out, "tokenizer", summary,
        f"AutoencoderKLWan (Wan2.1 architecture, small config) trained on {data} clips "
        f"({summary['steps']} steps in all); held-out reconstruction PSNR {psnr:.2f} dB "
        "(EVAL_IMAGES, 64x64x17).",
        extra_config=_default_glvc_gop(out, longest),
    )  # fmt: skip
    print(f"tokenizer written to {directory}; held-out reconstruction PSNR {psnr:.2f} dB")


def _default_glvc_gop(out: str, clip_frames: int) -> dict[str, Any]:
    """GLVC's GOP length is the latent codec's training clip length (its recurrent memory learned that
    far); only a bundle without a latent codec yet takes the tokenizer's clips as the default."""
    from codec.modeldir import CARD_NAME

    card = Path(out) / CARD_NAME
    if card.is_file() and "latent_codec" in json.loads(card.read_text()).get("config", {}):
        return {}
    return {"glvc": {"gop_frames": clip_frames}}


@train_app.command("glvc")
def glvc_command(
    out: Annotated[
        str, typer.Option(help="GLVC model directory to write (tokenizer/ + latent_codec/ + card).")
    ],
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="The Wan VAE: an official Wan2.1 folder, its vae/, or a tokenizer folder "
            "(default: <out>/tokenizer). It is copied into <out>."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name in the card (default: kept, or <out>'s name).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version in the card (default: kept, or 1).")
    ] = None,
    data: Data = "synthetic",
    steps: Steps = 3000,
    minutes: Minutes = None,
    size: int = 64,
    frames: int = 17,
    batch: int = 4,
    lr: float = 5e-4,
    pool: Annotated[
        int, typer.Option(help="Clips whose latents are cached (one is replaced every few steps).")
    ] = 96,
    workers: Workers = 1,
    use_gpu: UseGpu = False,
    threads: Threads = 1,
    resume: Resume = False,
    backend: Backend = "auto",
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
    source = tokenizer or f"{out.rstrip('/')}/tokenizer"
    _check_shape(size, frames, batch, steps, workers, block=4 * _spatial_factor(source))
    _check_backend(backend, workers, use_gpu)
    if pool < 1:
        _fail(f"--pool must be at least 1, got {pool}")
    _check_data(data, frames, size, endpoint_url)
    from pipeline.training.bundle import describe_source, update_bundle_card
    from pipeline.training.glvc import GlvcTraining, prepare_model_dir, train_glvc

    copied = _guard(lambda: prepare_model_dir(tokenizer, out))
    fields = _guard(lambda: _json_object(architecture, "--architecture")) if architecture else {}
    settings = GlvcTraining(
        data=data, tokenizer=str(copied), out=out, steps=steps, pool=pool,
        minutes=minutes, size=size, frames=frames, batch=batch, lr=lr, workers=workers, use_gpu=use_gpu,
        threads=threads, resume=resume, init=init, checkpoint_dir=checkpoint_dir, endpoint_url=endpoint_url,
        architecture=fields, checkpoint_minutes=checkpoint_minutes, backend=backend,
    )  # fmt: skip
    started = time.monotonic()
    directory = _guard(lambda: train_glvc(settings))
    summary = {
        "steps": _steps_done(settings), "size": size, "frames": frames, "batch": batch, "lr": lr, "data": data,
        "resume": resume, "init": describe_source(init), "device": "gpu" if use_gpu else _cpu_name(),
        "threads": threads, "wall_seconds_last_run": round(time.monotonic() - started),
        "architecture": json.loads((directory / "config.json").read_text()),
        "tokenizer_from": describe_source(source),
    }  # fmt: skip
    model = _named(
        update_bundle_card(
            out, "latent_codec", summary,
            f"GLVC latent codec, stage 1 (bits + λ(q)·latent MSE over 64 quality indices) on {data} clips "
            f"{size}x{size}x{frames}, on the tokenizer from {source}.",
            name=name or Path(out).name, version=version or "1",
            extra_config={"glvc": {"gop_frames": frames}},  # its recurrent memory learned clips this long
        ),
        name, version,
    )  # fmt: skip
    print(f"latent codec written to {directory}; model {model.model_id} sha256 {model.sha256[:16]}…")


@train_app.command("glvc-decoder")
def glvc_decoder_command(
    out: Annotated[str, typer.Option(help="GLVC model directory (tokenizer/ + latent_codec/) to sharpen.")],
    metric: Annotated[str, typer.Option(help="Perceptual loss: lpips | lpips_vgg | dists.")] = "lpips",
    metric_weights: Annotated[
        str | None,
        typer.Option(help="Folder with the official backbone weights (default: the torch hub cache)."),
    ] = None,
    perceptual_weight: float = 1.0,
    adversarial_weight: Annotated[float, typer.Option(help="Hinge-GAN term (0 = off).")] = 0.0,
    trainable: Annotated[str, typer.Option(help="head (last up-block + output layers) | decoder.")] = "head",
    data: Data = "synthetic",
    steps: Steps = 1000,
    minutes: Minutes = None,
    size: int = 64,
    frames: int = 9,
    batch: int = 2,
    lr: float = 2e-5,
    workers: Workers = 1,
    use_gpu: UseGpu = False,
    threads: Threads = 1,
    resume: Resume = False,
    backend: Backend = "auto",
    checkpoint_dir: str | None = None,
    endpoint_url: str | None = None,
) -> None:
    """Stage 2 of GLVC: fine-tune the pixel decoder on the latent codec's output (L1 + perceptual
    [+ adversarial]); replaces <out>/tokenizer/ and re-pins the model card."""
    from pipeline.metrics.weights import WeightsUnavailable
    from pipeline.training.bundle import update_bundle_card
    from pipeline.training.glvc import prepare_model_dir
    from pipeline.training.glvc_decoder import DecoderTraining, perceptual_network, train_glvc_decoder

    _check_shape(
        size, frames, batch, steps, workers, block=4 * _spatial_factor(f"{out.rstrip('/')}/tokenizer")
    )
    _check_backend(backend, workers, use_gpu)
    _check_data(data, frames, size, endpoint_url)
    _guard(lambda: prepare_model_dir(None, out))
    if not (Path(out) / "latent_codec").is_dir():
        _fail(f"{out} has no latent_codec/; run `vidarc train glvc --out {out}` (stage 1) first")
    settings = _guard(
        lambda: DecoderTraining(
            data=data, out=out, steps=steps, minutes=minutes, size=size, frames=frames, batch=batch, lr=lr,
            workers=workers, use_gpu=use_gpu, threads=threads, resume=resume, checkpoint_dir=checkpoint_dir,
            endpoint_url=endpoint_url, metric=metric, metric_weights=metric_weights,
            perceptual_weight=perceptual_weight, adversarial_weight=adversarial_weight, trainable=trainable,
            backend=backend,
        )
    )  # fmt: skip
    if perceptual_weight > 0:
        try:  # refuse now, not inside a Ray worker: no official weights, no perceptual loss
            perceptual_network(metric, metric_weights, "cpu")
        except WeightsUnavailable as exc:
            _fail(f"{exc}; fetch them once into the torch hub cache or pass --metric-weights DIR")
    started = time.monotonic()
    directory = _guard(lambda: train_glvc_decoder(settings))
    summary = {
        "steps": _steps_done(settings), "metric": metric, "perceptual_weight": perceptual_weight,
        "adversarial_weight": adversarial_weight, "trainable": trainable, "size": size, "frames": frames,
        "batch": batch, "lr": lr, "data": data, "wall_seconds_last_run": round(time.monotonic() - started),
    }  # fmt: skip
    model = update_bundle_card(
        out, "decoder_finetune", summary,
        f"GLVC stage 2: tokenizer decoder ({trainable}) fine-tuned on the latent codec's output with "
        f"L1 + {perceptual_weight:g}·{metric}" + (f" + {adversarial_weight:g}·GAN" if adversarial_weight else ""),
    )  # fmt: skip
    print(f"decoder written to {directory}; model {model.model_id} sha256 {model.sha256[:16]}…")


@train_app.command("flow")
def flow_command(
    out: Out,
    data: Data = "synthetic",
    minutes: Annotated[float, typer.Option(help="Stop after this much wall time.")] = 20.0,
    steps: Steps = 1_000_000,
    frames: int = 17,
    size: int = 64,
    batch: int = 8,
    lr: float = 5e-4,
    workers: Workers = 1,
    use_gpu: UseGpu = False,
    threads: Threads = 1,
    resume: Resume = False,
    backend: Backend = "auto",
    clips_per_image: Annotated[
        int,
        typer.Option(help="Training clips cached per photograph or video (at most 4,096 in all)."),
    ] = 24,
    init: Annotated[str | None, typer.Option(help="Continue from this flow model directory.")] = None,
    checkpoint_dir: str | None = None,
    endpoint_url: str | None = None,
    checkpoint_minutes: Annotated[float, typer.Option(help="Checkpoint at least this often.")] = 5.0,
) -> None:
    """Train the GVC flow model (a small Wan transformer) on the bundle tokenizer's latents."""
    _check_shape(
        size, frames, batch, max(steps, 1), workers, block=2 * _spatial_factor(f"{out.rstrip('/')}/tokenizer")
    )
    _check_backend(backend, workers, use_gpu)
    if not (Path(out) / "tokenizer").is_dir():
        _fail(
            f"{out} has no tokenizer/ to train the flow model on; run `vidarc train tokenizer --out {out}` first"
        )
    if init is not None and not (Path(init) / "config.json").is_file():
        _fail(f"--init {init}: not a flow model directory (no config.json)")
    _check_data(data, frames, size, endpoint_url)
    from pipeline.training.flow import FlowTraining, train_flow

    settings = _guard(
        lambda: FlowTraining(
            data=data, out=out, steps=steps, minutes=minutes, size=size, frames=frames, batch=batch, lr=lr,
            workers=workers, use_gpu=use_gpu, threads=threads, resume=resume, init=init,
            checkpoint_dir=checkpoint_dir, endpoint_url=endpoint_url, clips_per_source=clips_per_image,
            checkpoint_minutes=checkpoint_minutes, backend=backend,
        )
    )  # fmt: skip
    summary = _guard(lambda: train_flow(settings))
    print(
        f"flow model written to {out}/flow: {summary['steps']} steps, final loss EMA "
        f"{summary['final_loss_ema']:.4f}, {summary['wall_seconds_last_run']:.0f} s"
    )


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
    """Bad input (missing data, wrong directories or weights) as one line and exit code 2, not a
    traceback; a training run that fails (on Ray Train or in this process) as one line and exit code 1."""
    from codec.errors import CodecError

    try:
        return run()
    except (ValueError, FileNotFoundError, OSError, CodecError) as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # `loop.fit`: the workers' error, already named
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None


def _fail(message: str) -> None:
    print(f"error: {_first_line(message)}", file=sys.stderr)
    raise typer.Exit(2)


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(text).__name__


def _spatial_factor(tokenizer: str) -> int:
    """The Wan VAE's spatial factor from its config (2 per down stage); 8 (Wan2.1's) when unreadable."""
    for config in (Path(tokenizer) / "config.json", Path(tokenizer) / "vae" / "config.json"):
        try:
            return 2 ** (len(json.loads(config.read_text())["dim_mult"]) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 8


def _check_shape(size: int, frames: int, batch: int, steps: int, workers: int, *, block: int) -> None:
    """Options every stage validates before starting Ray."""
    if size < block or size % block:
        _fail(f"--size must be a positive multiple of {block} (the model's block), got {size}")
    if frames < 1 or (frames - 1) % 4:
        _fail(f"--frames must be 1+4k (the tokenizer's causal GOP), got {frames}")
    for option, value in (("--batch", batch), ("--steps", steps), ("--workers", workers)):
        if value < 1:
            _fail(f"{option} must be at least 1, got {value}")


def _check_backend(backend: str, workers: int, use_gpu: bool) -> None:
    """A --backend value that is not one, or local with what only Ray Train runs: one line, exit 2."""
    from pipeline.training.worker_context import choose_backend

    try:
        choose_backend(backend, workers=workers, use_gpu=use_gpu)
    except ValueError as exc:
        _fail(str(exc))


def _check_data(data: str, frames: int, size: int, endpoint_url: str | None) -> None:
    """Refuse a data source without usable clips here, in one line, not later inside a Ray worker."""
    from pipeline.training.data import ClipSampler

    if data == "synthetic":
        return
    if "://" not in data and not Path(data).exists():
        _fail(f"--data {data}: no such file or directory (or use 'synthetic')")
    _guard(lambda: ClipSampler(data, frames=frames, size=size, seed=0, endpoint_url=endpoint_url))


def _named(model, name: str | None, version: str | None):
    """Give an existing card the --name/--version asked for (a new card already has them)."""
    from codec.modeldir import write_model_card

    card = model.card
    if (name or card["name"]) == card["name"] and (version or card["version"]) == card["version"]:
        return model
    extra = {
        k: v for k, v in card.items() if k not in {"name", "version", "kind", "config", "files", "notes"}
    }
    return write_model_card(
        model.path, name=name or card["name"], version=version or card["version"], kind=card["kind"],
        config=card["config"], notes=card.get("notes", ""), extra=extra,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


def main() -> None:
    from jobs.help_defaults import describe_defaults

    describe_defaults(train_app)
    train_app()


if __name__ == "__main__":
    main()
