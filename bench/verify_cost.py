"""What the decode proof costs: manifest bytes per GOP and verify throughput, side by side.

Archives a small collection with the bundled GLVC model (a real `vidarc archive` on a local Ray
cluster, CPU), then

- bytes: the manifest's Parquet parts written with and without the three proof columns
  (`recon_sha256`, `exact_sha256`, `fingerprint`), and their raw sizes per GOP;
- throughput: `run_verify` over every GOP (CRC scan, index, decode, proof; in-process on CPU) against a
  bare decode of the same GOPs with `decoder.decode` (no proof), in GOPs/s, and their ratio;
- at a bigger frame size (`--big 1920x1080`, 33 frames of a synthetic clip, no codec): the fingerprint's
  bytes, and the time to take it beside the time to sha256 the same frames.

    python bench/verify_cost.py [--videos 4] [--frames 17] [--width 64 --height 48] [--threads 2] [--big WxH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--big", default="1920x1080", help="frame size of the fingerprint-only measurement")
    args = parser.parse_args()
    _big_fingerprint(*map(int, args.big.split("x")))

    import av
    import ray
    import torch

    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig
    from pipeline.archive.progress import Counters, ProgressDisplay
    from pipeline.format.schema import MANIFEST_SCHEMA, PROOF_COLUMNS
    from pipeline.read.manifest import parquet_bytes
    from pipeline.read.reader import ArchiveReader
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip
    from pipeline.tools.verify import run_verify

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vidarc-verify-cost-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        for i in range(args.videos):
            clip = synthetic_clip(
                EVAL_IMAGES[i % len(EVAL_IMAGES)], args.frames, args.width, args.height, seed=i
            )
            with av.open(str(src / f"v{i}.mkv"), mode="w") as container:
                stream = container.add_stream("ffv1", rate=24)
                stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv444p"
                for image in clip:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                container.mux(stream.encode())
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        config = ArchiveConfig(
            src=str(src),
            out=str(out),
            codec="glvc",
            device="cpu",
            skip_metrics=("lpips", "dists", "vmaf", "temporal"),
            min_psnr=0,  # the cost of verify, whatever the quality of these small frames
        )
        result = run_archive(config, display=ProgressDisplay(Counters(), live=False, interval=3600))
        ray.shutdown()  # verify in-process: the throughput of one CPU process
        assert result.exit_code == 0, result.message
        parts = sorted((out / "manifest").glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        gops = table.num_rows
        proof = list(PROOF_COLUMNS)
        with_proof = sum(p.stat().st_size for p in parts)  # as the archive wrote them
        bare = pa.schema([field for field in MANIFEST_SCHEMA if field.name not in proof])
        without = sum(
            len(parquet_bytes(pq.read_table(p).drop_columns(proof).to_pylist(), bare)) for p in parts
        )
        raw = sum(len(v or b"") for c in proof for v in table.column(c).to_pylist())
        print(f"GLVC (bundled), {gops} GOPs of {args.frames} frames at {args.width}x{args.height}")
        print(
            f"manifest bytes per GOP: {with_proof / gops:.0f} with the proof columns, {without / gops:.0f} "
            f"without (+{(with_proof - without) / gops:.0f}); raw proof {raw / gops:.0f} B/GOP "
            f"(fingerprint {sum(len(v) for v in table.column('fingerprint').to_pylist()) / gops:.0f})"
        )

        started = time.perf_counter()
        report = run_verify(str(out), fraction=1.0, scan="full")
        verify_s = time.perf_counter() - started
        assert report.ok and report.checks()["exact"] == gops, (report.failures, report.checks())

        started = time.perf_counter()
        decoders: dict = {}
        for container in sorted((out / "videos").glob("*.vdrc")):
            reader = ArchiveReader(str(container))
            key = reader.header.model_sha256
            decoders.setdefault(key, reader.decoder_for())
            for entry in reader.index().gops:
                reader.decode(entry.index, decoders[key])
        decode_s = time.perf_counter() - started
        print(
            f"verify (scan + decode + proof): {gops / verify_s:.2f} GOPs/s; bare decode: "
            f"{gops / decode_s:.2f} GOPs/s; verify/decode time ratio {verify_s / decode_s:.2f} "
            f"(both build the decoder once; {args.threads} torch threads)"
        )


def _big_fingerprint(width: int, height: int, frames: int = 33) -> None:
    from pipeline.format.digests import fingerprint, frames_sha256
    from pipeline.sources.synthetic import synthetic_clip

    clip = synthetic_clip("astronaut", frames, width, height, seed=3)
    started = time.perf_counter()
    blob = fingerprint(clip)
    fingerprint_s = time.perf_counter() - started
    started = time.perf_counter()
    frames_sha256(clip)
    sha_s = time.perf_counter() - started
    print(
        f"{frames} frames of {width}x{height}: fingerprint {len(blob)} B in {fingerprint_s:.2f} s; "
        f"sha256 of the frames {sha_s:.2f} s (ratio {fingerprint_s / sha_s:.2f})"
    )


if __name__ == "__main__":
    main()
