"""`vidarc bench gpu`: a neural codec's own throughput and the whole pipeline's, in one run, on the same
clips, with how busy the encode actors kept their device.

Measured side by side (one process, then one archive run through Ray):
- **codec alone** (in-process, frames already decoded): `encode(reconstruct=False)` of every GOP —
  tokenizer + latent codec (GLVC) or the whole sampler (GVC), no pixel decode: the "encode alone"
  goal — and `decode` of every payload (the restore goal). The first GOP is coded once before timing
  (weights resident, `torch.compile` and cuDNN autotuning done), so steady-state speed is reported;
  the warm-up's seconds are printed too.
- **pipeline**: `run_archive` on the same clips (probe, source decode tasks, encode actors with several
  GOPs in flight, quality on every `--metrics-every`-th GOP, commits): frames/s over its wall time and
  over its wall after start-up (until the run's config was written: the actors had built their codec).
- **busy**: each encode actor's own measures (`pipeline.archive.utilisation`, also in summary.json):
  on a GPU the NVML utilisation counter when the bindings are installed, and always the union of the
  codec's device stages (network passes, each ended by a stream synchronise) — summed over actors and
  divided by the pipeline's wall after start-up, that is "GPU busy" as the goals define it; on a CPU
  the actor's own timers (coding or measuring a GOP).

Models: `--model DIR`, or `--random-model` to write random-weight full-size models for timing (never
quality; written once under `--workdir` and reused): GLVC = the Wan2.1 VAE configuration + the default latent codec; GVC = that VAE + the
Wan2.1-1.3B T2V transformer configuration with a fixed null text embedding. Without either, the bundled
vidarc-tiny. `--num-gpus-per-actor 0.5` puts several actors on one GPU; on a machine without a GPU the
bench declares one logical GPU to Ray so the fractional scheduling path itself is exercised (the actors
then run on the CPU).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from codec.base import RateTarget
from pipeline.benchmarks.throughput import SKIPPED_METRICS, make_clips

#: The Wan2.1-1.3B T2V transformer (diffusers' config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers).
WAN_13B_T2V: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
TEXT_TOKENS = 512
FPS = 24


@dataclasses.dataclass
class GpuBenchResult:
    codec: str
    model: str
    device: str
    videos: int
    frames_per_video: int
    width: int
    height: int
    gop_frames: int
    target: str
    metrics_every: int
    actors: int
    num_gpus_per_actor: float
    gops_in_flight_per_actor: int
    codec_load_seconds: float
    codec_warmup_seconds: float
    codec_encode_seconds: float
    codec_decode_seconds: float
    source_decode_seconds: float
    codec_encode_fps: float
    codec_decode_fps: float
    tokenizer_tiled: bool | None
    tokenizer_compiled: bool | None
    peak_gpu_gib: float | None
    pipeline_wall_seconds: float
    pipeline_startup_seconds: float
    pipeline_fps: float
    pipeline_steady_fps: float
    actor_busy_fraction: float | None
    device_stage_busy_of_wall: float | None
    nvml_busy_fraction: float | None
    actors_report: list[dict[str, Any]]
    gpu_name: str | None = None
    torch_version: str | None = None

    @property
    def frames(self) -> int:
        return self.videos * self.frames_per_video

    def lines(self) -> list[str]:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.0f}%"

        extras = []
        if self.tokenizer_tiled is not None:
            extras.append("tiled" if self.tokenizer_tiled else "untiled")
        if self.tokenizer_compiled is not None:
            extras.append("torch.compile" if self.tokenizer_compiled else "eager")
        if self.peak_gpu_gib is not None:
            extras.append(f"peak {self.peak_gpu_gib:.1f} GiB")
        resources = [r.get("resources", {}) for r in self.actors_report]
        return [
            f"clips: {self.videos} × {self.frames_per_video} frames at {self.width}x{self.height}, codec "
            f"{self.codec} ({self.model}) {self.target} on {self.device}, GOP {self.gop_frames}, "
            f"metrics on every {self.metrics_every}. GOP; {self.gpu_name or 'no GPU'}, torch {self.torch_version}",
            f"codec alone, encode (no reconstruction): {self.codec_encode_fps:8.1f} frames/s "
            f"({self.frames} frames in {self.codec_encode_seconds:.2f} s; {', '.join(extras) or 'tokenizer n/a'})",
            f"codec alone, decode (restore):           {self.codec_decode_fps:8.1f} frames/s "
            f"({self.codec_decode_seconds:.2f} s)",
            f"  load {self.codec_load_seconds:.1f} s, warm-up GOP {self.codec_warmup_seconds:.1f} s, "
            f"source decode {self.source_decode_seconds:.2f} s (PyAV, not in the codec's frames/s)",
            f"pipeline through Ray:                    {self.pipeline_fps:8.1f} frames/s "
            f"({self.frames} frames in {self.pipeline_wall_seconds:.2f} s; "
            f"{self.actors} actor(s) × {self.num_gpus_per_actor:g} GPU, "
            f"{self.gops_in_flight_per_actor} GOPs in flight each)",
            f"pipeline after start-up:                 {self.pipeline_steady_fps:8.1f} frames/s "
            f"(start-up {self.pipeline_startup_seconds:.2f} s)",
            f"ratio pipeline/codec encode: {self.pipeline_fps / self.codec_encode_fps:.2f} "
            f"(after start-up {self.pipeline_steady_fps / self.codec_encode_fps:.2f})",
            f"device busy (codec stages, summed over actors / wall after start-up): "
            f"{pct(self.device_stage_busy_of_wall)}",
            f"GPU utilisation (NVML, over the actors' working span): {pct(self.nvml_busy_fraction)}",
            f"encode actor busy (its own timers, over its working span): {pct(self.actor_busy_fraction)}",
            f"actors' reserved resources: {resources}",
        ]


def random_model(kind: str, root: Path, device: str) -> Path:
    """Full-size random-weight model directories for timing (see the module docstring), written once
    under `root` (a staging folder renamed at the end, so an interrupted write is never reused)."""
    import shutil

    from codec.glvc.random_model import build_random_model

    if (root / "model_card.json").is_file():
        return root
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    build_random_model(staging, tokenizer={}, latent_codec={}, name=f"{kind}-random-full")
    if kind == "gvc":
        import torch
        from diffusers import WanTransformer3DModel

        from codec.gvc.backbone import save_flow
        from codec.modeldir import write_model_card

        torch.manual_seed(0)
        target = torch.device("cuda" if device.startswith("cuda") else "cpu")
        with target:
            transformer = WanTransformer3DModel(**WAN_13B_T2V).to(torch.bfloat16)
        text = torch.zeros(1, TEXT_TOKENS, WAN_13B_T2V["text_dim"], dtype=torch.bfloat16)
        save_flow(transformer, text, staging / "flow")
        del transformer
        (staging / "model_card.json").unlink()
        write_model_card(staging, name="gvc-random-full", version="0", kind="bundle", config={},
                         notes="random weights: for timing only")  # fmt: skip
    staging.rename(root)
    return root


def _gops(paths: list[Path], gop_frames: int) -> tuple[list[Any], float]:
    """Every GOP of the clips, decoded as the pipeline does; (GOPs, seconds)."""
    from pipeline.archive.plan import plan_gops
    from pipeline.sources import media

    started = time.perf_counter()
    gops = []
    for path in paths:
        info = media.probe(str(path))
        for span in plan_gops(info.frame_count, gop_frames, info.frame_pts):
            gops.append(
                media.decode_frames(str(path), span.first_frame, span.frame_count, expected_pts=span.pts)
            )
    return gops, time.perf_counter() - started


def measure_codec_alone(
    paths: list[Path], codec_name: str, model: str | None, device: str, options: dict[str, Any],
    target: RateTarget, gop_frames: int | None,
) -> dict[str, Any]:  # fmt: skip
    import numpy as np
    import torch

    from codec.registry import build_codec

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    codec = build_codec(codec_name, model=model, device=device, options=options)
    load = time.perf_counter() - started
    gop_frames = gop_frames or codec.default_gop_frames(Fraction(FPS))
    gops, source_seconds = _gops(paths, gop_frames)
    fps = Fraction(FPS)
    started = time.perf_counter()
    # Two untimed passes (the tokenizer compiles from its second, see `Tokenizer`) on mirrored copies
    # of a GOP: same shapes, but never what GLVC's latent cache holds for a timed GOP.
    for mirrored in (gops[0][:, ::-1], gops[0][:, :, ::-1]):
        first = codec.encode(np.ascontiguousarray(mirrored), target, fps, reconstruct=False)
        codec.decode(first.payload, *_shape(gops[0]))
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    payloads = [codec.encode(g, target, fps, reconstruct=False).payload for g in gops]
    encode = time.perf_counter() - started
    started = time.perf_counter()
    for gop, payload in zip(gops, payloads, strict=True):
        codec.decode(payload, *_shape(gop))
    decode = time.perf_counter() - started
    tokenizer = getattr(codec, "tokenizer", None) or getattr(
        getattr(codec, "backbone", None), "tokenizer", None
    )
    inner = getattr(tokenizer, "inner", tokenizer)  # GVC wraps the GLVC tokenizer
    result = {
        "gop_frames": gop_frames,
        "frames": sum(len(g) for g in gops),
        "load": load,
        "warmup": warmup,
        "encode": encode,
        "decode": decode,
        "source": source_seconds,
        "tiled": getattr(inner, "last_tiled", None),
        "compiled": getattr(inner, "compiled", None),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    del codec, gops, payloads
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def _shape(gop: Any) -> tuple[int, int, int]:
    count, height, width = gop.shape[:3]
    return count, width, height


def measure_pipeline(src: Path, out: Path, **config: Any) -> dict[str, Any]:
    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig

    # No quality floor: a bench measures speed, and random-weight models (--random-model) code far
    # under the neural codecs' default PSNR floor, which would fail every video.
    cfg = ArchiveConfig(src=str(src), out=str(out), skip_metrics=SKIPPED_METRICS, min_psnr=0, **config)
    started, started_clock = time.perf_counter(), time.time()
    result = run_archive(cfg)
    wall = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"the benchmark's archive run failed: {result.message}")
    configs = list((out / "runs").glob("*/config.json"))
    startup = max(0.0, configs[0].stat().st_mtime - started_clock) if configs else 0.0
    summary = json.loads(next((out / "runs").glob("*/summary.json")).read_text())
    return {"wall": wall, "startup": startup, "frames": int(result.summary["frames"]),
            "actors": summary.get("encode_actors") or []}  # fmt: skip


def run_gpu_bench(
    *,
    codec: str = "glvc",
    model: str | None = None,
    random_model_kind: bool = False,
    videos: int = 2,
    frames: int = 49,
    width: int = 1280,
    height: int = 720,
    gop_frames: int | None = None,
    quality: float | None = None,
    metrics_every: int = 10,
    actors: int = 1,
    num_gpus_per_actor: float = 1.0,
    gops_in_flight: int = 3,
    device: str = "auto",
    options: dict[str, Any] | None = None,
    workdir: str | None = None,
) -> GpuBenchResult:
    import ray
    import torch

    from pipeline.archive.config import DEFAULT_QUALITY

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if num_gpus_per_actor < 0 or actors < 1 or gops_in_flight < 1:
        raise ValueError("need --actors >= 1, --gops-in-flight >= 1 and --num-gpus-per-actor >= 0")
    target = RateTarget("quality", quality if quality is not None else DEFAULT_QUALITY.get(codec, 32))
    options = dict(options or {})
    if random_model_kind and model is None:
        cache = Path(workdir or tempfile.gettempdir()) / f"vidarc-random-{codec}"
        model = str(random_model(codec, cache, device))
    with tempfile.TemporaryDirectory(prefix="vidarc-bench-gpu-", dir=workdir) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        paths = make_clips(src, videos, frames, width, height, fps=FPS)
        alone = measure_codec_alone(paths, codec, model, device, options, target, gop_frames)
        owned = not ray.is_initialized()
        if owned:
            logical_gpu = num_gpus_per_actor > 0 and not torch.cuda.is_available()
            ray.init(num_cpus=os.cpu_count() or 1, num_gpus=1 if logical_gpu else None,
                     include_dashboard=False, log_to_driver=False)  # fmt: skip
        try:
            if ray.cluster_resources().get("GPU", 0.0) < num_gpus_per_actor:
                raise ValueError(
                    f"the Ray cluster has no GPU for --num-gpus-per-actor {num_gpus_per_actor:g}"
                )
            run = measure_pipeline(
                src, root / "out", codec=codec, model=model, device=device, target=target,
                gop_frames=alone["gop_frames"], metrics_every=metrics_every, actors=actors,
                num_gpus_per_actor=num_gpus_per_actor, gops_in_flight_per_actor=gops_in_flight,
                codec_options=options,
            )  # fmt: skip
        finally:
            if owned:
                ray.shutdown()
    n = alone["frames"]
    if run["frames"] != n:
        raise RuntimeError(f"the pipeline archived {run['frames']} frames, the codec run {n}")
    steady = max(1e-9, run["wall"] - run["startup"])
    reports = run["actors"]
    return GpuBenchResult(
        codec=codec, model=model or "bundled", device=device, videos=videos, frames_per_video=frames,
        width=width, height=height, gop_frames=alone["gop_frames"], target=target.describe(),
        metrics_every=metrics_every, actors=actors, num_gpus_per_actor=num_gpus_per_actor,
        gops_in_flight_per_actor=gops_in_flight, codec_load_seconds=alone["load"],
        codec_warmup_seconds=alone["warmup"], codec_encode_seconds=alone["encode"],
        codec_decode_seconds=alone["decode"], source_decode_seconds=alone["source"],
        codec_encode_fps=n / alone["encode"], codec_decode_fps=n / alone["decode"],
        tokenizer_tiled=alone["tiled"], tokenizer_compiled=alone["compiled"], peak_gpu_gib=alone["peak_gpu_gib"],
        pipeline_wall_seconds=run["wall"], pipeline_startup_seconds=run["startup"],
        pipeline_fps=n / run["wall"], pipeline_steady_fps=n / steady,
        actor_busy_fraction=_mean(r.get("actor", {}).get("busy_fraction") for r in reports),
        device_stage_busy_of_wall=_stage_share(reports, steady),
        nvml_busy_fraction=_mean((r.get("nvml") or {}).get("busy_fraction") for r in reports),
        actors_report=reports,
        gpu_name=torch.cuda.get_device_name() if device.startswith("cuda") else None,
        torch_version=torch.__version__,
    )  # fmt: skip


def _mean(values: Any) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _stage_share(reports: list[dict[str, Any]], steady_wall: float) -> float | None:
    stages = [r["device_stage"]["busy_seconds"] for r in reports if r.get("device_stage")]
    return sum(stages) / steady_wall if stages else None


def result_record(result: GpuBenchResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
