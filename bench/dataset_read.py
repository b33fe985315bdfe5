"""Training reads from a GLVC archive: clips/s for frames vs latents, and bytes read per clip.

Usage (repository root):

    python bench/dataset_read.py                                   # bundled vidarc-tiny on CPU, 256×144
    python bench/dataset_read.py --device cuda --width 832 --height 480 --videos 4 --gops 4
    python bench/dataset_read.py --ray                             # also through read_archive on Ray

One run builds a GLVC archive of synthetic clips (camera moves over held-out photographs, one
object per video written by the archive's own writer), then reads every GOP of it as clips,
alternating `output="frames"` and `output="latents"` passes (`--repeats` each, after one warm-up pass
that builds the decoder), in this process through `ArchiveClipDataset`. Frames need the entropy
decode plus the tokenizer (VAE) decode; latents need the entropy decode alone. Bytes read per clip
are counted by the reader (index + payload ranged reads) and are the same for both outputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.base import RateTarget
from codec.registry import create_codec
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def build_archive(out: Path, args: argparse.Namespace) -> tuple[int, int]:
    """A GLVC archive of `args.videos` videos × `args.gops` GOPs; returns (GOPs, payload bytes)."""
    from pipeline.archive.gop_result import GopResult
    from pipeline.archive.plan import plan_gops
    from pipeline.archive.video_writer import VideoJob, commit_video
    from pipeline.format.container_header import ContainerHeader

    codec = create_codec("glvc", model=args.model, device=args.device)
    fps, gops, payload_bytes = Fraction(24), 0, 0
    for v in range(args.videos):
        frames = synthetic_clip(
            EVAL_IMAGES[v % len(EVAL_IMAGES)], args.gops * args.gop_frames, args.width, args.height, seed=v
        )
        spans = tuple(plan_gops(len(frames), args.gop_frames, None))
        payloads, metas = [], []
        for span in spans:
            gop = frames[span.first_frame : span.first_frame + span.frame_count]
            payload = codec.encode(gop, RateTarget("quality", args.quality), fps).payload
            payloads.append(payload)
            metas.append(GopResult(payload_bytes=len(payload), bpp=8 * len(payload) / gop[..., 0].size,
                                   device=args.device))  # fmt: skip
        identity = codec.describe()
        key = f"bench-{v:03d}"
        header = ContainerHeader(
            **{k: identity[k] for k in ("codec", "codec_version", "model_id", "model_sha256", "decoder_options")},
            width=args.width, height=args.height, frame_count=len(frames), fps_num=24, fps_den=1, vfr=False,
            rotation=0, target={"kind": "quality", "value": args.quality}, video_key=key,
        )  # fmt: skip
        job = VideoJob(key, f"synthetic://{key}", 0, str(out), "bench", None, header, spans, False)
        commit_video(job, metas, payloads)
        gops += len(spans)
        payload_bytes += sum(len(p) for p in payloads)
    return gops, payload_bytes


def read_pass(out: Path, output: str, args: argparse.Namespace) -> tuple[int, float, int, int]:
    """(clips, seconds, bytes read, bytes of one clip's array) of one pass over the whole archive."""
    from pipeline.dataset import ArchiveClipDataset

    dataset = ArchiveClipDataset(str(out), output=output, shuffle=False, device=args.device, model=args.model)
    start = time.perf_counter()
    clips, item_bytes = 0, 0
    for row in dataset:
        clips += 1
        item_bytes = row[output].numel() * row[output].element_size()
    return clips, time.perf_counter() - start, dataset.reader.bytes_read, item_bytes


def ray_pass(out: Path, output: str, args: argparse.Namespace) -> tuple[int, float]:
    from pipeline.dataset import read_archive

    start = time.perf_counter()
    clips = read_archive(str(out), output=output, device=args.device, model=args.model).materialize().count()
    return clips, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--gops", type=int, default=2, help="GOPs per video")
    parser.add_argument("--gop-frames", type=int, default=17)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--quality", type=float, default=40, help="GLVC quality index")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="GLVC model directory (default: bundled)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--ray", action="store_true", help="also time read_archive on a local Ray cluster")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vidarc-bench-dataset-") as tmp:
        out = Path(tmp) / "archive"
        start = time.perf_counter()
        _, payload_bytes = build_archive(out, args)
        print(f"archive: {args.videos} videos × {args.gops} GOPs of {args.gop_frames} frames at "
              f"{args.width}×{args.height}, {payload_bytes} payload bytes ({time.perf_counter() - start:.1f} s to build)", flush=True)  # fmt: skip
        for output in ("frames", "latents"):
            read_pass(out, output, args)  # warm-up: the decoder is built once per process
        timings: dict[str, list[float]] = {"frames": [], "latents": []}
        facts: dict[str, tuple[int, int, int]] = {}
        for _ in range(args.repeats):
            for output in ("frames", "latents"):  # alternated, so a change of load hits both
                clips, seconds, bytes_read, item_bytes = read_pass(out, output, args)
                print(f"  pass output={output}: {clips} clips in {seconds:.2f} s", flush=True)
                timings[output].append(seconds)
                facts[output] = (clips, bytes_read, item_bytes)
        print("\n| output | clips | best s | clips/s | frames/s | bytes read/clip | array bytes/clip |")
        print("|---|---|---|---|---|---|---|")
        for output in ("frames", "latents"):
            clips, bytes_read, item_bytes = facts[output]
            best = min(timings[output])
            print(f"| {output} | {clips} | {best:.2f} | {clips / best:.2f} | "
                  f"{clips * args.gop_frames / best:.1f} | {bytes_read / clips:.0f} | {item_bytes} |")  # fmt: skip
        ratio = min(timings["frames"]) / min(timings["latents"])
        print(f"\nlatents are {ratio:.1f}× faster than frames (best of {args.repeats}, same run)")
        if args.ray:
            import ray

            ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False)
            for output in ("frames", "latents"):
                ray_pass(out, output, args)  # warm-up: workers import torch and build the decoder
            for output in ("frames", "latents"):
                clips, seconds = ray_pass(out, output, args)
                print(
                    f"ray read_archive output={output}: {clips} clips in {seconds:.2f} s = {clips / seconds:.2f} clips/s"
                )
            ray.shutdown()


if __name__ == "__main__":
    main()
