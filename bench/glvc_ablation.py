"""What each part of GLVC's latent codec is worth: full model against its ablations, as BD-rate.

Variants (each a latent codec trained the same way on the same tokenizer; `LatentCodecConfig` switches):
- full: recurrent memory + checkerboard spatial context (GLVC as designed);
- intra-only (`temporal_context="none"`): every latent frame coded without temporal context;
- no recurrent memory (`temporal_context="previous"`): the context is built from the previous latent
  frame alone, as in DCVC-style codecs, instead of a memory carried across the GOP;
- no spatial context (`spatial_context=False`): the second checkerboard half uses the first half's
  means and scales.

Every variant codes the same held-out clips (`pipeline.sources.synthetic.EVAL_IMAGES`, 256×176×17, seed
500 + i as in `bench/glvc_rd.py`) at the same quality indices; the tokenizer encodes each clip once.
Bits are the real entropy-coded bytes (plus nothing else: the GLVC header is the same for all), bpp =
bits / (width·height·frames). Quality twice: latent PSNR = 10·log10(1 / latent MSE) on the normalised
(unit-variance) latents, what the codec is trained on, and RGB PSNR after the tokenizer's decoder.
BD-rate of each ablation against the full model (PCHIP, `pipeline.audit.bdrate`) on the curves of
means over clips: positive = the ablation needs that many % more bits for the same quality, i.e. what
the removed part saves. Reported whatever the sign. Intra bits (the GOP's first latent frame coded
alone) are shown beside the totals, to see where a change lands.

    python -m bench.glvc_ablation --tokenizer codec/models/vidarc-tiny/tokenizer \\
        --variant full=codec/models/vidarc-tiny/latent_codec --variant intra-only=DIR ... \\
        --out docs/bench/glvc_ablation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.audit.bdrate import BdRateError, bd_rate
from pipeline.metrics.fidelity import psnr_rgb
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def measure_variant(codec, tokenizer, clips: dict, latents: dict, q_indices: list[int]) -> list[dict]:
    rows = []
    for image, clip in clips.items():
        x = latents[image]
        _, _, frames, h, w = x.shape
        pixels = clip.shape[0] * clip.shape[1] * clip.shape[2]
        for q in q_indices:
            coded = codec.compress(x, q)
            intra = codec.compress(x[:, :, :1], q)
            decoded = codec.decompress(coded.data, q, frames, h, w)
            mse = float(torch.mean((decoded.latents - x) ** 2))
            video = tokenizer.decode(decoded.latents)[: clip.shape[0], : clip.shape[1], : clip.shape[2]]
            rows.append({
                "clip": image, "q": q, "bits": 8 * len(coded.data), "intra_bits": 8 * len(intra.data),
                "bpp": 8 * len(coded.data) / pixels, "latent_mse": mse,
                "latent_psnr": 10 * np.log10(1.0 / max(mse, 1e-12)), "psnr": psnr_rgb(clip, video),
            })  # fmt: skip
    return rows


def mean_curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    qs = sorted({r["q"] for r in rows})
    bpp = np.array([np.mean([r["bpp"] for r in rows if r["q"] == q]) for q in qs])
    quality = np.array([np.mean([r[key] for r in rows if r["q"] == q]) for q in qs])
    return bpp, quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="the tokenizer directory all variants share")
    parser.add_argument(
        "--variant", action="append", required=True, help="NAME=LATENT_CODEC_DIR; first = anchor"
    )
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=176)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--images", nargs="+", default=list(EVAL_IMAGES))
    parser.add_argument("--q-indices", type=int, nargs="+", default=[0, 10, 21, 31, 42, 52, 63])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from codec.glvc.latent_codec import LatentCodec
    from codec.glvc.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    variants = dict(v.split("=", 1) for v in args.variant)
    tokenizer = load_tokenizer(args.tokenizer)
    block = tokenizer.spatial_factor * 4
    if args.width % block or args.height % block or (args.frames - 1) % tokenizer.temporal_factor:
        parser.error(f"size must be a multiple of {block} and frames 1 + {tokenizer.temporal_factor}k")
    clips = {
        image: synthetic_clip(image, args.frames, args.width, args.height, seed=500 + i)
        for i, image in enumerate(args.images)
    }
    latents = {image: tokenizer.encode(clip) for image, clip in clips.items()}
    results, configs = {}, {}
    for name, directory in variants.items():
        started = time.perf_counter()
        codec = LatentCodec.from_pretrained(directory).eval()
        configs[name] = {
            "temporal_context": codec.config.temporal_context,
            "spatial_context": codec.config.spatial_context,
        }
        results[name] = measure_variant(codec, tokenizer, clips, latents, args.q_indices)
        print(f"measured {name} ({configs[name]}) in {time.perf_counter() - started:.0f} s", flush=True)

    anchor = next(iter(variants))
    print(f"\n{'variant':14} {'q':>3} {'bpp':>8} {'intra share':>11} {'latent PSNR':>11} {'PSNR':>7}")
    for name, rows in results.items():
        for q in args.q_indices:
            sel = [r for r in rows if r["q"] == q]
            share = sum(r["intra_bits"] for r in sel) / sum(r["bits"] for r in sel)
            print(
                f"{name:14} {q:3d} {np.mean([r['bpp'] for r in sel]):8.4f} {share:11.2f} "
                f"{np.mean([r['latent_psnr'] for r in sel]):11.2f} {np.mean([r['psnr'] for r in sel]):7.2f}"
            )
    summary = {}
    for name, rows in results.items():
        if name == anchor:
            continue
        entry = {}
        for key, label in (("latent_psnr", "equal_latent_mse"), ("psnr", "equal_psnr")):
            a_bpp, a_q = mean_curve(results[anchor], key)
            b_bpp, b_q = mean_curve(rows, key)
            try:
                entry[label] = round(bd_rate(a_bpp, a_q, b_bpp, b_q), 1)
            except BdRateError as exc:
                entry[label], entry[f"{label}_note"] = None, str(exc)
        summary[name] = entry
    print(f"\nBD-rate against {anchor} (+ = the ablation needs more bits; that part saves them):")
    for name, entry in summary.items():
        print(
            f"  {name:14} at equal latent MSE {entry['equal_latent_mse']}%, at equal PSNR {entry['equal_psnr']}%"
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        out.write_text(json.dumps({"setup": setup, "configs": configs, "results": results,
                                   "bd_rate_vs_" + anchor: summary}, indent=1))  # fmt: skip
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
