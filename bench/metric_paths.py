"""The metrics' fast paths against the straightforward ones, side by side on the same x264 GOP.

- PSNR, PSNR-Y and flicker: `fidelity.pixel_metrics` (one pass, OpenCV) against the two-image float64
  forms the definitions are written in (what the columns were computed with before);
- MS-SSIM: `msssim_cpu` (OpenCV filters) against pytorch-msssim on the CPU (the same definition);
- VMAF: libvmaf with one thread and with the machine's cores;

each in ms per frame (best of `--repeats`), with the ratio and the largest difference in value, and
the x264 encode of the same GOP as the yardstick.

    python bench/metric_paths.py [--size 640x360] [--frames 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

BT709 = np.array([0.2126, 0.7152, 0.0722])


def best_ms(fn: Callable[[], Any], frames: int, repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up (imports, thread pools)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return 1000 * best / frames, result


def two_image_forms(source: np.ndarray, recon: np.ndarray) -> tuple[float, float, float]:
    from pipeline.metrics.fidelity import psnr_from_mse

    s, r = source.astype(np.float64), recon.astype(np.float64)
    ys, yr = s @ BT709, r @ BT709
    flicker = float(np.abs(np.diff(yr - ys, axis=0)).mean())
    return psnr_from_mse(float(((s - r) ** 2).mean())), psnr_from_mse(float(((ys - yr) ** 2).mean())), flicker


def torch_ms_ssim(source: np.ndarray, recon: np.ndarray) -> float:
    import torch
    from pytorch_msssim import ms_ssim

    values = []
    with torch.inference_mode():
        for start in range(0, len(source), 16):
            x = torch.from_numpy(source[start : start + 16]).permute(0, 3, 1, 2).float()
            y = torch.from_numpy(recon[start : start + 16]).permute(0, 3, 1, 2).float()
            values.append(ms_ssim(x, y, data_range=255.0, size_average=False).double())
    return float(torch.cat(values).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from codec.base import RateTarget
    from codec.registry import create_codec
    from pipeline.metrics.fidelity import pixel_metrics
    from pipeline.metrics.msssim_cpu import ms_ssim_gop
    from pipeline.metrics.vmaf import vmaf
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

    n = args.frames
    source = synthetic_clip(EVAL_IMAGES[0], n, width, height, seed=0)
    codec = create_codec("x264")
    encode_ms, encoded = best_ms(
        lambda: codec.encode(source, RateTarget("quality", 28), Fraction(24)), n, args.repeats
    )
    recon = encoded.reconstruction
    rows: list[tuple[str, float, float, float]] = []

    old_ms, old = best_ms(lambda: two_image_forms(source, recon), n, args.repeats)
    new_ms, new = best_ms(lambda: pixel_metrics(source, recon), n, args.repeats)
    difference = max(abs(old[0] - new.psnr), abs(old[1] - new.psnr_y), abs(old[2] - new.temporal_flicker))
    rows.append(("psnr + psnr_y + flicker", old_ms, new_ms, difference))
    old_ms, old = best_ms(lambda: torch_ms_ssim(source, recon), n, args.repeats)
    new_ms, new = best_ms(lambda: ms_ssim_gop(source, recon), n, args.repeats)
    rows.append(("ms_ssim", old_ms, new_ms, abs(old - new)))
    cores = os.cpu_count() or 1
    old_ms, old = best_ms(lambda: vmaf(source, recon, threads=1), n, args.repeats)
    new_ms, new = best_ms(lambda: vmaf(source, recon, threads=cores), n, args.repeats)
    rows.append((f"vmaf (1 vs {cores} threads)", old_ms, new_ms, abs(old[0] - new[0])))

    print(
        f"{n} frames at {width}x{height}; x264 medium CRF 28 encode + reconstruction: {encode_ms:.2f} ms/frame"
    )
    print(
        f"{'metric':<26}{'before ms/f':>12}{'after ms/f':>12}{'speed-up':>10}{'x encode':>10}{'max |diff|':>12}"
    )
    for name, before, after, diff in rows:
        print(
            f"{name:<26}{before:>12.2f}{after:>12.2f}{before / after:>9.1f}x{after / encode_ms:>10.2f}{diff:>12.2e}"
        )


if __name__ == "__main__":
    main()
