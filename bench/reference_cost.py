"""What the classic reference costs, and whether its sample tells the truth about the whole archive.

The same held-out clips (`pipeline.sources.synthetic.EVAL_IMAGES`, several camera paths each) are archived
three times through the real pipeline on a local Ray cluster, side by side in one run:

1. without a reference (the baseline wall time and compute);
2. with `--reference R --reference-fraction F` (what a user runs);
3. with `--reference R --reference-fraction 1` (every GOP: the population the sample estimates).

Printed: wall time of runs 1 and 2 and their ratio, the reference's CPU-seconds against the archive's
device-seconds in run 2, the sample's statement with its 95 % interval next to the population's ratio
(run 3), and the break-even at the documented default prices. VMAF is the metric when this machine's
ffmpeg has libvmaf, else PSNR (said in the statement). LPIPS/DISTS are switched off.

    python -m bench.reference_cost --out docs/bench/reference_cost
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _archive(src: Path, out: Path, args: argparse.Namespace, reference: str | None, fraction: float) -> dict:
    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig

    shutil.rmtree(out, ignore_errors=True)
    config = ArchiveConfig(
        src=str(src),
        out=str(out),
        codec=args.codec,
        gop_frames=args.gop_frames,
        skip_metrics=("lpips", "dists"),
        reference=reference,
        reference_fraction=fraction,
    )
    started = time.perf_counter()
    result = run_archive(config)
    wall = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"archive failed: {result.summary.get('failures')}")
    return {"wall_seconds": wall, "summary": result.summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="x264")
    parser.add_argument("--reference", default="x265")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--clips-per-image", type=int, default=2)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="256x144")
    parser.add_argument("--gop-frames", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import ray

    from pipeline.audit.costs import cost_report
    from pipeline.audit.prices import load_prices
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip, write_video

    work = Path(tempfile.mkdtemp(prefix="vidarc-reference-bench-"))
    src = work / "src"
    src.mkdir()
    for image in EVAL_IMAGES:
        for seed in range(args.clips_per_image):
            clip = synthetic_clip(image, args.frames, width, height, seed=seed)
            write_video(src / f"{image}-{seed}.mp4", clip, fps=24)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        plain = _archive(src, work / "plain", args, None, args.fraction)
        sampled = _archive(src, work / "sampled", args, args.reference, args.fraction)
        full = _archive(src, work / "full", args, args.reference, 1.0)
    finally:
        ray.shutdown()

    compute = sampled["summary"]["compute"]
    archive_seconds = sum(compute["archive_by_device"].values())
    reference_seconds = compute["by_stage"]["reference"]["cpu"]
    prices = load_prices()
    costs = cost_report(str(work / "sampled"), prices)["total"]
    ref = costs["references"][0]
    population = full["summary"]["reference"]["ratio"]
    results = {
        "command": "python -m bench.reference_cost "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "clips": len(EVAL_IMAGES) * args.clips_per_image,
        "gops": sampled["summary"]["gops"],
        "gops_sampled": sampled["summary"]["reference"]["gops_sampled"],
        "wall_seconds_without_reference": plain["wall_seconds"],
        "wall_seconds_with_reference": sampled["wall_seconds"],
        "wall_ratio": sampled["wall_seconds"] / plain["wall_seconds"],
        "archive_device_seconds": archive_seconds,
        "reference_cpu_seconds": reference_seconds,
        "reference_share_of_compute": reference_seconds / archive_seconds,
        "sample": sampled["summary"]["reference"],
        "population": full["summary"]["reference"],
        "population_inside_sample_ci": (
            ref["ratio"]["ci_percent"] is not None
            and ref["ratio"]["ci_percent"][0]
            <= population["smaller_percent"]
            <= ref["ratio"]["ci_percent"][1]
        ),
        "break_even_default_prices": {
            "compute_cost": costs["compute_cost"],
            "vs_source": costs["vs_source"],
            "vs_reference": ref.get("vs_reference"),
        },
    }
    print(f"{results['clips']} clips {args.size}, {args.frames} frames, GOPs of {args.gop_frames}: "
          f"{results['gops']} GOPs, {results['gops_sampled']} sampled ({args.fraction:g})")  # fmt: skip
    print(f"wall: {plain['wall_seconds']:.1f} s without the reference, {sampled['wall_seconds']:.1f} s with "
          f"(x{results['wall_ratio']:.2f})")  # fmt: skip
    print(f"compute: archive {archive_seconds:.1f} device-s, reference {reference_seconds:.1f} CPU-s "
          f"({results['reference_share_of_compute']:.1%} of the archive's)")  # fmt: skip
    print(f"sample:     {sampled['summary']['reference']['statement']}")
    print(f"population: {full['summary']['reference']['statement']}")
    print(f"population ratio inside the sample's 95 % CI: {results['population_inside_sample_ci']}")
    months = costs["vs_source"]["months"]["standard"]
    print(f"break-even vs source at default prices: {costs['compute_cost']:.3g} USD of compute, "
          f"{months if months is None else round(months, 1)} months of standard storage")  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
