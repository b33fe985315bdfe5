"""Rate–distortion of GVC's three modes with the bundled model, against x265 and AV1 at the same rates.

Clips are synthesised from `pipeline.sources.synthetic.EVAL_IMAGES`, which the bundled models never saw. For
every clip and target bpp, each codec encodes one GOP with its own rate control; the achieved bpp comes
from the real payload bytes (bits / (width·height·frames)) and the quality from the decoded frames
(PSNR over RGB; MS-SSIM where the frame is large enough). LPIPS/DISTS/VMAF are left to the archive
job's audit, which has the weight checks.

It also reports the FLF2V-vs-I2V marginal efficiency the GVCC paper uses, ΔPSNR/Δbpp of each mode
relative to T2V at the same target (the paper compares at the same M; with rate control on, the bpp
often match and ΔPSNR alone is the comparison — dB/bpp is then reported as null), and FLF2V twice: as coded (both boundary stills in every
GOP, which a standalone GOP needs) and with the paper's shared-boundary accounting (one still per GOP).

    python -m bench.gvc_rd --out docs/bench/gvc_rd            # JSON + PNG
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from codec.base import RateTarget, bits_per_pixel
from codec.registry import create_codec
from pipeline.metrics.fidelity import ms_ssim, psnr_rgb
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

FPS = Fraction(24)


def measure(codec, clip: np.ndarray, target: RateTarget) -> dict:
    enc = codec.encode(clip, target, FPS)
    count, height, width = clip.shape[:3]
    decoded = codec.decode(enc.payload, count, width, height)
    if not np.array_equal(decoded, enc.reconstruction):
        raise SystemExit(f"{codec.name}: decode differs from the encoder's reconstruction")
    ssim, _ = ms_ssim(clip, decoded)
    row = {
        "bpp": bits_per_pixel(len(enc.payload), width, height, count),
        "bytes": len(enc.payload),
        "psnr": psnr_rgb(clip, decoded),
        "ms_ssim": ssim,
    }
    row.update({k: v for k, v in enc.params.items() if isinstance(v, (int, float, str, bool))})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="GVC model directory (default: the bundled vidarc-tiny)"
    )
    parser.add_argument("--out", default="docs/bench/gvc_rd")
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--height", type=int, default=176)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--bpp", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--images", nargs="+", default=list(EVAL_IMAGES))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ode-tail", type=int, default=2)
    parser.add_argument("--atoms", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gvc_opts = dict(model=args.model, steps=args.steps, ode_tail=args.ode_tail, atoms=args.atoms)
    codecs = {f"gvc-{m}": create_codec("gvc", mode=m, **gvc_opts) for m in ("t2v", "i2v", "flf2v")}
    codecs["x265"] = create_codec("x265")
    codecs["av1"] = create_codec("av1")
    rows = []
    for i, image in enumerate(args.images):
        clip = synthetic_clip(image, args.frames, args.width, args.height, seed=100 + i)
        for bpp in args.bpp:
            for name, codec in codecs.items():
                row = {"codec": name, "image": image, "target_bpp": bpp}
                row.update(measure(codec, clip, RateTarget("bpp", bpp)))
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = summarise(rows, args)
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    plot(rows, out / "rd.png", args)
    print(json.dumps(summary, indent=2))


def summarise(rows: list[dict], args) -> dict:
    """Mean bpp/PSNR per codec and target, and the marginal efficiency of I2V and FLF2V over T2V."""
    table: dict[str, dict[float, dict[str, float]]] = {}
    for name in sorted({r["codec"] for r in rows}):
        for bpp in args.bpp:
            sel = [r for r in rows if r["codec"] == name and r["target_bpp"] == bpp]
            table.setdefault(name, {})[bpp] = {
                "bpp": float(np.mean([r["bpp"] for r in sel])),
                "psnr": float(np.mean([r["psnr"] for r in sel])),
            }
    marginal = {}
    for bpp in args.bpp:
        base = table["gvc-t2v"][bpp]
        for mode in ("i2v", "flf2v"):
            cur = table[f"gvc-{mode}"][bpp]
            d_bpp = cur["bpp"] - base["bpp"]
            marginal[f"{mode}@{bpp}"] = {
                "d_psnr": cur["psnr"] - base["psnr"],
                "d_bpp": d_bpp,
                "db_per_bpp": (cur["psnr"] - base["psnr"]) / d_bpp if d_bpp > 0 else None,
            }
        # Shared-boundary accounting: one of FLF2V's two stills per GOP would be the neighbour's.
        flf = [r for r in rows if r["codec"] == "gvc-flf2v" and r["target_bpp"] == bpp]
        shared_bpp = float(
            np.mean(
                [
                    r["bpp"] - 8 * r["reference_bytes"] / 2 / (args.width * args.height * args.frames)
                    for r in flf
                ]
            )
        )
        marginal[f"flf2v-shared@{bpp}"] = {"bpp": shared_bpp, "psnr": table["gvc-flf2v"][bpp]["psnr"]}
    return {"table": table, "marginal_vs_t2v": marginal}


def plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r["codec"] for r in rows}):
        pts = sorted(
            (float(np.mean([r["bpp"] for r in rows if r["codec"] == name and r["target_bpp"] == b])),
             float(np.mean([r["psnr"] for r in rows if r["codec"] == name and r["target_bpp"] == b])))
            for b in args.bpp
        )  # fmt: skip
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bpp (bits / (width·height·frames))")
    ax.set_ylabel("PSNR RGB (dB)")
    ax.set_title(f"GVC (vidarc-tiny) vs x265/AV1, {args.width}x{args.height}x{args.frames}, EVAL_IMAGES")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
