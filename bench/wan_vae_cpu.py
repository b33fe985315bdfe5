"""The official Wan2.1 VAE on a CPU: seconds per decoded frame with diffusers' forwards and with
`codec.wan_cpu`'s kernels, measured at a reduced size and scaled to 480p and 720p.

Random weights (the architecture is what costs; nothing is downloaded). The decode of a GOP of
`--frames` frames at `--size` is timed with each forward, one torch thread for the CPU kernels (as the
codecs run them: `codec.cpu_threads`) and `--threads` for diffusers' (what a user got before). The
scaled figures assume time grows with the pixel count, which holds for a convolutional decoder as long
as the activations stay out of cache at both sizes (they do from 256×144 up for this VAE); they are
estimates, printed as such, never measurements.

    python -m bench.wan_vae_cpu --size 256x144 --frames 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"480p": (832, 480), "720p": (1280, 720)}


def _time_decode(vae, z: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    with torch.no_grad():
        vae.decode(z)  # warm-up: kernels chosen, pages touched
        start = time.perf_counter()
        vae.decode(z)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256x144")
    parser.add_argument("--frames", type=int, default=5, help="1+4k")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for diffusers' forwards")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    from diffusers import AutoencoderKLWan

    from codec.wan_cpu import use_cpu_kernels

    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval()  # the Wan2.1 VAE configuration (base_dim 96, z_dim 16)
    z = torch.randn(1, 16, 1 + (args.frames - 1) // 4, height // 8, width // 8)
    plain = _time_decode(vae, z, args.threads)
    use_cpu_kernels(vae)
    fast = _time_decode(vae, z, 1)
    record = {
        "measured_at": f"{width}x{height}",
        "frames": args.frames,
        "diffusers_seconds_per_frame": plain / args.frames,
        "diffusers_threads": args.threads,
        "cpu_kernels_seconds_per_frame": fast / args.frames,
        "cpu_kernels_threads": 1,
        "speedup": plain / fast,
        "estimated_by_pixel_scaling": {},
    }
    for name, (w, h) in SIZES.items():
        scale = (w * h) / (width * height)
        record["estimated_by_pixel_scaling"][name] = {
            "diffusers_seconds_per_frame": plain / args.frames * scale,
            "cpu_kernels_seconds_per_frame": fast / args.frames * scale,
            "cpu_kernels_seconds_per_81_frame_gop": fast / args.frames * scale * 81,
        }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
