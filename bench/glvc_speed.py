"""GLVC speed: tokenizer vs latent codec time, encode and decode frames/s, and the entropy coder.

Usage (repository root):

    python bench/glvc_speed.py                                 # bundled vidarc-tiny on CPU, 256×144
    python bench/glvc_speed.py --model DIR --width 320 --height 192 --frames 17
    python bench/glvc_speed.py --full-size --device cuda --width 1280 --height 720 --frames 17
    python bench/glvc_speed.py --random-tiny                   # random tiny weights (no bundle needed)

`--full-size` builds the Wan2.1 VAE default configuration (127M parameters) and the default latent codec
with random weights: valid for timing only. The latent codec's share is its time divided by the
tokenizer's (goal: < 30%). Encode time counts one latent-codec pass per quality index tried; the rate
search usually tries 3–5, so it is reported for one pass and the self-check decode is listed separately.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.entropy import EntropyEncoder, GaussianTables
from codec.glvc.latent_codec import LATENT_STRIDE, LatentCodec, LatentCodecConfig
from codec.glvc.tokenizer import Tokenizer, load_tokenizer
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def _timed(fn, device: torch.device, repeats: int):
    """(result, best seconds) over `repeats` runs after one warm-up."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def _load(args, device: torch.device) -> tuple[Tokenizer, LatentCodec, str]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.full_size:
        from diffusers import AutoencoderKLWan

        torch.manual_seed(0)
        return (
            Tokenizer(AutoencoderKLWan(), device, dtype),
            LatentCodec(LatentCodecConfig()),
            "Wan2.1 VAE (random)",
        )
    if args.random_tiny:
        from codec.glvc.random_model import build_random_model

        root = build_random_model(Path(tempfile.mkdtemp()) / "m").path
        label = "tiny (random)"
    else:
        from codec.modeldir import bundled_model_path, load_model_dir

        root = load_model_dir(args.model or bundled_model_path()).path
        label = root.name
    return (
        load_tokenizer(root / "tokenizer", device, dtype),
        LatentCodec.from_pretrained(root / "latent_codec"),
        label,
    )


def bench_codec(args) -> None:
    device = torch.device(args.device)
    tokenizer, latent_codec, label = _load(args, device)
    latent_codec.to(device).eval()
    frames = synthetic_clip(EVAL_IMAGES[0], args.frames, args.width, args.height, seed=1)
    block = tokenizer.spatial_factor * LATENT_STRIDE  # pad like GlvcCodec does (replicate)
    pad_h, pad_w = -args.height % block, -args.width % block
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    latents, t_enc = _timed(lambda: tokenizer.encode(frames).to(device), device, args.repeats)
    _, f, h, w = latents.shape[1:]
    coded, t_lc_enc = _timed(lambda: latent_codec.compress(latents, args.q), device, args.repeats)
    decoded, t_lc_dec = _timed(
        lambda: latent_codec.decompress(coded.data, args.q, f, h, w, device=device), device, args.repeats
    )
    _, t_dec = _timed(lambda: tokenizer.decode(decoded.latents), device, args.repeats)
    n = args.frames
    bpp = 8 * len(coded.data) / (args.width * args.height * n)
    print(f"\nGLVC speed — {label}, {args.width}x{args.height}, {n} frames, device {device}, q={args.q}")
    print(f"{'stage':<34}{'seconds':>10}{'frames/s':>10}{'share':>9}")
    rows = [
        ("tokenizer encode", t_enc, None),
        ("latent codec compress (1 pass)", t_lc_enc, t_lc_enc / t_enc),
        ("latent codec decompress", t_lc_dec, t_lc_dec / t_dec),
        ("tokenizer decode", t_dec, None),
        ("encode total (1 pass + self-check)", t_enc + t_lc_enc + t_lc_dec + t_dec, None),
        ("decode total", t_lc_dec + t_dec, None),
    ]
    for name, sec, share in rows:
        share_text = f"{100 * share:7.1f}%" if share is not None else ""
        print(f"{name:<34}{sec:>10.3f}{n / sec:>10.2f}{share_text:>9}")
    print(f"payload {len(coded.data)} bytes = {bpp:.4f} bpp (weights: {label})")


def bench_entropy(symbols: int = 200_000) -> None:
    """Per-symbol Gaussians from the table (what vidarc uses) vs grouping by index with one fixed model
    per group (the alternative), same data."""
    import constriction

    rng = np.random.default_rng(0)
    tables = GaussianTables()
    indices = rng.integers(0, 40, size=symbols)
    values = np.clip(np.round(rng.normal(0, tables.stds[indices])), -255, 255).astype(np.int32)

    fixed = [constriction.stream.model.QuantizedGaussian(-255, 255, 0.0, float(s)) for s in tables.stds]

    def grouped() -> np.ndarray:
        coder = constriction.stream.queue.RangeEncoder()
        order = np.argsort(indices, kind="stable")
        bounds = np.searchsorted(indices[order], np.arange(tables.levels + 1))
        for level in range(tables.levels):
            if bounds[level + 1] > bounds[level]:
                coder.encode(values[order[bounds[level] : bounds[level + 1]]], fixed[level])
        return coder.get_compressed()

    def per_symbol() -> bytes:
        encoder = EntropyEncoder(tables)
        encoder.encode(values, indices)
        return encoder.finish()

    cpu = torch.device("cpu")
    data_g, t_g = _timed(grouped, cpu, 3)
    data_p, t_p = _timed(per_symbol, cpu, 3)
    print(f"\nentropy coder, {symbols} symbols: per-symbol Gaussians (used) {symbols / t_p / 1e6:.1f} Msym/s "
          f"({len(data_p)} B); grouped fixed tables {symbols / t_g / 1e6:.1f} Msym/s ({4 * len(data_g)} B); "
          f"grouped/per-symbol time {t_g / t_p:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="GLVC model directory (default: bundled vidarc-tiny)")
    parser.add_argument("--random-tiny", action="store_true", help="random tiny weights (timing only)")
    parser.add_argument("--full-size", action="store_true", help="Wan2.1 VAE config, random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--q", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if (args.frames - 1) % 4:
        parser.error("frames must be 1+4k (one GOP)")
    bench_codec(args)
    bench_entropy()


if __name__ == "__main__":
    main()
