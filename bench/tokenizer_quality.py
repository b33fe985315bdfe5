"""The tokenizer alone (encode, then decode, no latent codec) on held-out clips: PSNR and colour error.

GLVC and GVC cannot be better than their tokenizer, so this is the ceiling of both codecs. Clips are the
ones `bench/glvc_rd.py` codes (`pipeline.sources.synthetic.EVAL_IMAGES`, 256×176×17 by default, seed
500 + i), content no bundled model saw. Several models (`--model DIR` per model, each a bundle with a
`tokenizer/` or a tokenizer directory itself) are measured side by side in one run.

Colour error: the mean signed difference decoded − source per RGB channel over the whole clip, in 8-bit
levels (a tint shows as one channel far from zero); reported per clip and as the largest |mean| of the
three channels.

    python -m bench.tokenizer_quality --model codec/models/vidarc-tiny --out docs/bench/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.metrics.fidelity import psnr_rgb
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def tokenizer_directory(path: str) -> Path:
    root = Path(path)
    return root / "tokenizer" if (root / "tokenizer" / "config.json").is_file() else root


def measure(tokenizer, clip: np.ndarray) -> dict:
    started = time.perf_counter()
    latents = tokenizer.encode(clip)
    encoded = time.perf_counter()
    decoded = tokenizer.decode(latents)
    finished = time.perf_counter()
    error = decoded.reshape(-1, 3).astype(np.float64) - clip.reshape(-1, 3)
    mean_error = error.mean(axis=0)
    return {
        "psnr": psnr_rgb(clip, decoded),
        "colour_error_rgb": [round(float(v), 2) for v in mean_error],
        "colour_error_max": round(float(np.abs(mean_error).max()), 2),
        "latent_shape": list(latents.shape[1:]),
        "encode_seconds": round(encoded - started, 2),
        "decode_seconds": round(finished - encoded, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=None, help="bundle or tokenizer directory (repeat)"
    )
    parser.add_argument("--label", action="append", default=None, help="a name per --model")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=176)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--images", nargs="+", default=list(EVAL_IMAGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from codec.glvc.tokenizer import load_tokenizer
    from codec.modeldir import bundled_model_path

    torch.set_num_threads(args.threads)
    models = args.model or [str(bundled_model_path())]
    labels = args.label or [Path(m).name for m in models]
    if len(labels) != len(models):
        parser.error("give one --label per --model")
    clips = {
        image: synthetic_clip(image, args.frames, args.width, args.height, seed=500 + i)
        for i, image in enumerate(args.images)
    }
    results: dict[str, dict] = {}
    for label, model in zip(labels, models, strict=True):
        tokenizer = load_tokenizer(tokenizer_directory(model))
        rows = {image: measure(tokenizer, clip) for image, clip in clips.items()}
        results[label] = {
            "model": model,
            "clips": rows,
            "mean_psnr": float(np.mean([r["psnr"] for r in rows.values()])),
            "mean_colour_error_max": float(np.mean([r["colour_error_max"] for r in rows.values()])),
            "worst_colour_error_max": float(np.max([r["colour_error_max"] for r in rows.values()])),
        }
    size = f"{args.width}x{args.height}x{args.frames}"
    print(f"tokenizer alone, held-out clips {size} ({', '.join(args.images)})")
    print(f"{'model':24} {'clip':8} {'PSNR':>7} {'mean error R/G/B (levels)':>28} {'enc s':>6} {'dec s':>6}")
    for label, result in results.items():
        for image, row in result["clips"].items():
            rgb = " / ".join(f"{v:+6.2f}" for v in row["colour_error_rgb"])
            print(
                f"{label:24} {image:8} {row['psnr']:7.2f} {rgb:>28} "
                f"{row['encode_seconds']:6.1f} {row['decode_seconds']:6.1f}"
            )
        print(
            f"{label:24} {'mean':8} {result['mean_psnr']:7.2f}   largest |mean error|: "
            f"mean {result['mean_colour_error_max']:.2f}, worst {result['worst_colour_error_max']:.2f} levels"
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        setup = {k: v for k, v in vars(args).items() if k not in ("out", "model", "label")}
        out.write_text(json.dumps({"setup": setup, "results": results}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
