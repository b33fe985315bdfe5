"""Rate–distortion of GLVC against x264, x265 and SVT-AV1 at low rates, on content no model saw.

Clips are synthesised from `pipeline.sources.synthetic.EVAL_IMAGES` (held out from every training run). Each
classic codec is driven to each target bpp by its own rate control; GLVC sweeps its quality index (its
natural operating points) and also runs its rate control at the same targets. Achieved bpp comes from
the real payload bytes (bits / (width·height·frames)); quality from the decoded frames: PSNR (RGB) and
MS-SSIM (frames must be ≥ 161 px on the short side for standard 5-scale MS-SSIM) and VMAF (libvmaf
through imageio-ffmpeg's ffmpeg; null with a note where that is missing). LPIPS/DISTS are left null
here: their official backbone weights are not available where this runs.

Prints a table, the BD-rate of every codec against x265 (PSNR and MS-SSIM), writes JSON and a PNG.

    python -m bench.glvc_rd --out docs/bench/glvc_rd
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from codec.base import RateTarget, bits_per_pixel
from codec.registry import create_codec
from pipeline.audit.bdrate import bd_rate
from pipeline.metrics.fidelity import ms_ssim, psnr_rgb
from pipeline.metrics.vmaf import vmaf
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

FPS = Fraction(24)


def _measure(codec, clip: np.ndarray, target: RateTarget) -> dict:
    started = time.perf_counter()
    encoded = codec.encode(clip, target, FPS)
    seconds = time.perf_counter() - started
    count, height, width = clip.shape[:3]
    decoded = codec.decode(encoded.payload, count, width, height)
    score, _ = ms_ssim(clip, decoded)
    vmaf_score, _ = vmaf(clip, decoded, fps=float(FPS))
    return {
        "target": target.describe(),
        "bpp": bits_per_pixel(len(encoded.payload), width, height, count),
        "psnr": psnr_rgb(clip, decoded),
        "ms_ssim": score,
        "vmaf": vmaf_score,
        "encode_seconds": round(seconds, 3),
        **{k: v for k, v in encoded.params.items() if isinstance(v, (int, float, str, bool))},
    }


def _mean_curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average over clips per operating point (rows grouped by their target)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["target"], []).append(row)
    points = sorted(
        (np.mean([r["bpp"] for r in g]), np.mean([r["psnr"] for r in g]), np.mean([r[key] for r in g]))
        for g in groups.values()
        if all(r[key] is not None for r in g)
    )
    bpp, psnr, other = (np.array(v) for v in zip(*points, strict=True)) if points else ([], [], [])
    return np.asarray(bpp), np.asarray(psnr), np.asarray(other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GLVC model directory (default: bundled vidarc-tiny)")
    parser.add_argument("--out", default="docs/bench/glvc_rd")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=176)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--images", nargs="+", default=list(EVAL_IMAGES))
    parser.add_argument("--bpp", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--q-indices", type=int, nargs="+", default=[0, 10, 20, 30, 40, 50, 63])
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["x264", "x265", "av1"],
        help="classic codecs beside GLVC (none: GLVC only)",
    )
    args = parser.parse_args()

    clips = {
        image: synthetic_clip(image, args.frames, args.width, args.height, seed=500 + i)
        for i, image in enumerate(args.images)
    }
    codecs = {name: create_codec(name) for name in args.baselines}
    codecs["glvc"] = create_codec("glvc", model=args.model)
    results: dict[str, list[dict]] = {name: [] for name in codecs}
    results["glvc-rc"] = []
    for image, clip in clips.items():
        for name, codec in codecs.items():
            targets = (
                [RateTarget("quality", q) for q in args.q_indices]
                if name == "glvc"
                else [RateTarget("bpp", b) for b in args.bpp]
            )
            for target in targets:
                results[name].append({"clip": image, **_measure(codec, clip, target)})
        for bpp in args.bpp:
            results["glvc-rc"].append(
                {"clip": image, **_measure(codecs["glvc"], clip, RateTarget("bpp", bpp))}
            )
        print(f"measured {image}", flush=True)

    print(f"\n{'codec':9} {'target':14} {'bpp':>8} {'PSNR':>7} {'MS-SSIM':>8} {'VMAF':>6}")
    curves = {}
    for name, rows in results.items():
        curves[name] = _mean_curve(rows, "ms_ssim")
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["target"], []).append(row)
        for target, group in groups.items():
            ssim = [r["ms_ssim"] for r in group]
            ssim_text = f"{np.mean(ssim):8.4f}" if None not in ssim else "    null"
            scores = [r["vmaf"] for r in group]
            vmaf_text = f"{np.mean(scores):6.1f}" if None not in scores else "  null"
            print(
                f"{name:9} {target:14} {np.mean([r['bpp'] for r in group]):8.4f} "
                f"{np.mean([r['psnr'] for r in group]):7.2f} {ssim_text} {vmaf_text}"
            )
    summary = {"bd_rate_vs_x265": {}}
    anchor = curves.get("x265")
    for name in ("x264", "av1", "glvc") if anchor is not None else ():
        if name not in curves:
            continue
        bpp, psnr, ssim = curves[name]
        entry = {}
        for label, quality_a, quality_b in (("psnr", anchor[1], psnr), ("ms_ssim", anchor[2], ssim)):
            try:
                entry[label] = round(bd_rate(anchor[0], quality_a, bpp, quality_b), 1)
            except ValueError as exc:  # curves that do not overlap in quality
                entry[label] = None
                entry[f"{label}_note"] = str(exc)
        summary["bd_rate_vs_x265"][name] = entry
    print("\nBD-rate against x265 (negative = fewer bits for the same quality):")
    print(json.dumps(summary["bd_rate_vs_x265"], indent=2))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    setup["glvc_model"] = codecs["glvc"].model_id
    out.with_suffix(".json").write_text(json.dumps({"setup": setup, "results": results, **summary}, indent=1))
    _plot(curves, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (bpp, psnr, ssim) in curves.items():
        axes[0].plot(bpp, psnr, marker="o", label=name)
        if len(ssim):
            axes[1].plot(bpp, ssim, marker="o", label=name)
    for ax, label in zip(axes, ("PSNR (dB)", "MS-SSIM"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("GLVC (bundled vidarc-tiny) vs classic codecs, held-out clips")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
