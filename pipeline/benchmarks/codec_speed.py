"""One codec alone, encode and decode frames/s, with x265 (medium) on the same frames in the same run.

What a user restoring, verifying or exporting a neural archive on their own machine waits for is the
codec's decode; what an archive run waits for on a CPU is its encode. Both are measured here on
synthetic GOPs (`pipeline.sources.synthetic`: photographs with moving objects), through the `Codec` interface
exactly as the pipeline calls it:

- **encode**: `encode(frames, target, reconstruct=True)` per GOP, one GOP at a time, as an archive run
  codes them (every GOP keeps its fingerprint, so the reconstruction is part of the work); at a bpp or
  kbps target the rate search's candidates per GOP are reported (`evaluations`; GLVC runs its tokenizer
  once per GOP and only the latent codec per candidate);
- **decode**: `decode_with_digest` per GOP, one at a time; and, with `--gops N` (N > 1), the same N
  GOPs decoded side by side on N threads (`codec.cpu_threads`: how restore and verify use a CPU's cores);
- **encode side by side**: with `--gops N`, the same N GOPs encoded at once on N threads, as an archive
  run's encode actor holds several GOPs in flight (its throughput on a CPU);
- **x265** (medium, vidarc's default CRF 28) encodes and decodes the same frames in the same process, so every
  figure is also a ratio to x265 that survives a busy machine;
- **CPU seconds** per GOP (the process's, all threads) beside the wall seconds: on a shared machine whose
  cores are busy elsewhere (a VM's steal time) the wall time says little about the work, and CPU/wall
  says how many cores a pass really kept busy.

One GOP (two on CUDA, where the second pass compiles) of other frames is coded and decoded first as a
warm-up (weights paged in, kernels chosen) and not timed. Nothing
here asserts a speed; the numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import RateTarget, bits_per_pixel

FPS = Fraction(25)
TARGET_KINDS = ("bpp", "kbps", "quality")


@dataclasses.dataclass
class CodecSpeed:
    """Seconds per GOP of one codec (median over the timed GOPs)."""

    codec: str
    encode_seconds: float
    decode_seconds: float
    bpp: float
    evaluations: float | None = None  # rate-search candidates per GOP (mean)
    parallel_decode_seconds: float | None = None  # wall time of N GOPs decoded side by side, per GOP
    parallel_encode_seconds: float | None = None  # wall time of N GOPs encoded side by side, per GOP
    encode_cpu_seconds: float | None = None  # process CPU time per GOP (median), all threads
    decode_cpu_seconds: float | None = None

    def fps(self, frames: int) -> dict[str, float | None]:
        par, par_encode = self.parallel_decode_seconds, self.parallel_encode_seconds
        return {
            "encode_fps": frames / self.encode_seconds,
            "decode_fps": frames / self.decode_seconds,
            "parallel_decode_fps": frames / par if par else None,
            "parallel_encode_fps": frames / par_encode if par_encode else None,
        }


@dataclasses.dataclass
class CodecBenchResult:
    codec: str
    device: str
    width: int
    height: int
    frames: int
    gops: int
    target: str
    threads: int
    measured: CodecSpeed
    x265: CodecSpeed
    notes: list[str]

    def lines(self) -> list[str]:
        f = self.frames
        out = [
            f"{self.codec} alone vs x265 medium: {self.width}x{self.height}, GOPs of {f} frames, "
            f"{self.gops} GOP(s), device {self.device}, target {self.target}, torch threads {self.threads}",
            f"{'':<28}{self.codec:>12}{'x265':>12}{'ratio':>10}",
        ]
        ours, x265 = self.measured.fps(f), self.x265.fps(f)
        for key, label in (("encode_fps", "encode frames/s"), ("decode_fps", "decode frames/s (1 GOP)")):
            out.append(f"{label:<28}{ours[key]:>12.2f}{x265[key]:>12.1f}{ours[key] / x265[key]:>10.3f}")
        for key, what in (("parallel_encode_fps", "encode"), ("parallel_decode_fps", "decode")):
            if ours[key]:
                label = f"{what} frames/s ({self.gops} side by side)"
                out.append(f"{label:<28}{ours[key]:>12.2f}")
        out.append(f"{'bits per pixel':<28}{self.measured.bpp:>12.4f}{self.x265.bpp:>12.4f}")
        m = self.measured
        for label, cpu, wall in (("encode", m.encode_cpu_seconds, m.encode_seconds),
                                 ("decode", m.decode_cpu_seconds, m.decode_seconds)):  # fmt: skip
            if cpu is not None:
                out.append(f"{label + ' CPU s per GOP':<28}{cpu:>12.2f}   ({cpu / wall:.2f} cores busy)")
        if self.measured.evaluations is not None:
            out.append(f"{'rate-search candidates/GOP':<28}{self.measured.evaluations:>12.1f}")
        out.extend(f"note: {note}" for note in self.notes)
        return out


def parse_target(text: str) -> RateTarget:
    """`bpp=0.05`, `kbps=500` or `quality=32` (the codec's own quality scale)."""
    kind, sep, value = text.partition("=")
    if not sep or kind not in TARGET_KINDS:
        raise ValueError(f"--target {text!r}: expected one of {', '.join(k + '=N' for k in TARGET_KINDS)}")
    try:
        return RateTarget(kind, float(value))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"--target {text!r}: {exc}") from None


def _gops(width: int, height: int, frames: int, count: int) -> list[np.ndarray]:
    """`count` different GOPs of `frames` frames (one clip cut in pieces: real motion, real content)."""
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

    clip = synthetic_clip(EVAL_IMAGES[0], frames * count, width, height, seed=1)
    return [clip[i * frames : (i + 1) * frames] for i in range(count)]


def _measure(
    codec: Any, warm_ups: list[np.ndarray], gops: list[np.ndarray], target: RateTarget, parallel: bool
) -> CodecSpeed:
    """Warm up on GOPs of their own (a GOP coded twice would reuse GLVC's cached tokenizer pass; on CUDA
    the second pass compiles), then time encode and decode of each GOP, and optionally all at once."""
    count, height, width = gops[0].shape[:3]
    for frames in warm_ups:
        warm = codec.encode(frames, target, FPS)
        codec.decode_with_digest(warm.payload, count, width, height)
    encoded, enc_times, enc_cpu, evaluations = [], [], [], []
    for frames in gops:
        start, cpu = time.perf_counter(), time.process_time()
        gop = codec.encode(frames, target, FPS)
        enc_times.append(time.perf_counter() - start)
        enc_cpu.append(time.process_time() - cpu)
        encoded.append(gop)
        if "evaluations" in gop.params:
            evaluations.append(gop.params["evaluations"])
    dec_times, dec_cpu = [], []
    for gop in encoded:
        start, cpu = time.perf_counter(), time.process_time()
        codec.decode_with_digest(gop.payload, count, width, height)
        dec_times.append(time.perf_counter() - start)
        dec_cpu.append(time.process_time() - cpu)
    side_by_side = encode_side_by_side = None
    if parallel and len(encoded) > 1:
        with ThreadPoolExecutor(len(encoded)) as pool:
            start = time.perf_counter()
            list(pool.map(lambda g: codec.decode_with_digest(g.payload, count, width, height), encoded))
            side_by_side = (time.perf_counter() - start) / len(encoded)
        # as an archive run codes a video's GOPs: several in flight on one codec (GLVC's tokenizer cache
        # holds one GOP, so each encode here runs its tokenizer again, as in a run)
        with ThreadPoolExecutor(len(gops)) as pool:
            start = time.perf_counter()
            list(pool.map(lambda frames: codec.encode(frames, target, FPS), gops))
            encode_side_by_side = (time.perf_counter() - start) / len(gops)
    payload_bytes = sum(len(g.payload) for g in encoded)
    return CodecSpeed(
        codec=codec.name,
        encode_seconds=statistics.median(enc_times),
        decode_seconds=statistics.median(dec_times),
        bpp=bits_per_pixel(payload_bytes, width, height, count * len(encoded)),
        evaluations=statistics.mean(evaluations) if evaluations else None,
        parallel_decode_seconds=side_by_side,
        parallel_encode_seconds=encode_side_by_side,
        encode_cpu_seconds=statistics.median(enc_cpu),
        decode_cpu_seconds=statistics.median(dec_cpu),
    )


def run_codec_bench(
    *,
    codec: str,
    width: int,
    height: int,
    frames: int,
    gops: int = 1,
    device: str = "cpu",
    target: str | None = None,
    model: str | None = None,
    options: dict[str, Any] | None = None,
) -> CodecBenchResult:
    """Build `codec` (and x265), code `gops` GOPs of `frames` frames with each, and time them."""
    from codec.registry import build_codec, codec_class
    from pipeline.archive.config import DEFAULT_QUALITY

    # What can be refused without a model is refused before one is loaded (a bad option: one line, fast).
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"--size {width}x{height}: expected even sides of at least 16")
    rate = parse_target(target) if target else RateTarget("quality", DEFAULT_QUALITY.get(codec, 23))
    codec_class(codec).check_gop_frames(frames)
    import torch

    built = build_codec(codec, model=model, device=device, options=dict(options or {}))
    built.check_geometry(width, height)
    warm_count = 2 if getattr(built, "device", "cpu") == "cuda" else 1
    clips = _gops(width, height, frames, gops + warm_count)
    warm_ups, clips = clips[gops:], clips[:gops]
    measured = _measure(built, warm_ups, clips, rate, parallel=gops > 1)
    x265 = build_codec("x265", model=None, device="cpu", options={})
    baseline = _measure(
        x265, warm_ups[:1], clips, RateTarget("quality", DEFAULT_QUALITY["x265"]), parallel=False
    )
    notes = [
        "a warm-up GOP of other frames is coded and decoded first, untimed; medians over the GOPs",
        "encode includes the reconstruction (as an archive run, which fingerprints every GOP)",
    ]
    if getattr(built, "device", "cpu") == "cpu" and codec in ("glvc", "gvc"):
        notes.append(
            "a neural pass on the CPU runs one torch thread; cores decode GOPs side by side (--gops N)"
        )
    return CodecBenchResult(
        codec=codec,
        device=str(getattr(built, "device", "cpu")),
        width=width,
        height=height,
        frames=frames,
        gops=gops,
        target=rate.describe(),
        threads=torch.get_num_threads(),
        measured=measured,
        x265=baseline,
        notes=notes,
    )


def result_record(result: CodecBenchResult) -> dict[str, Any]:
    f = result.frames
    return {
        "codec": result.codec,
        "device": result.device,
        "size": f"{result.width}x{result.height}",
        "frames_per_gop": f,
        "gops": result.gops,
        "target": result.target,
        "torch_threads": result.threads,
        "codec_speed": {**dataclasses.asdict(result.measured), **result.measured.fps(f)},
        "x265": {**dataclasses.asdict(result.x265), **result.x265.fps(f)},
        "encode_ratio_to_x265": result.measured.fps(f)["encode_fps"] / result.x265.fps(f)["encode_fps"],
        "decode_ratio_to_x265": result.measured.fps(f)["decode_fps"] / result.x265.fps(f)["decode_fps"],
        "notes": result.notes,
    }
