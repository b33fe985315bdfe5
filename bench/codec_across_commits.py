"""One neural codec's CPU speed measured the same way on any commit, for before/after pairs.

`vidarc bench codec` is the benchmark; older commits lack it, or lack its CPU-second columns. This
script uses only what every commit since the codecs landed has (`codec.registry.build_codec`, the
`Codec` interface, the synthetic clips under either of their module paths) and times what the benchmark
times: encode with the reconstruction, one GOP at a time; decode (`decode_with_digest`) one GOP at a
time; the same GOPs decoded two side by side, then encoded two side by side (as an archive run's encode
actor holds several GOPs in flight). A warm-up GOP of other frames is coded first, untimed.
It prints one JSON line with (wall, CPU) seconds per GOP and the payload sizes, which must be equal
between the two commits of a pair (same payloads: only the speed differs).

Run it from outside the repository so `PYTHONPATH` (not the working directory) picks the commit:

    git worktree add /tmp/before <commit>
    cd /tmp && PYTHONPATH=/tmp/before python <repo>/bench/codec_across_commits.py glvc bpp 0.05
    cd /tmp && PYTHONPATH=<repo> python <repo>/bench/codec_across_commits.py glvc bpp 0.05
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

GOP_FRAMES = 17
FPS = Fraction(25)


def _clip(width: int, height: int, frames: int):
    try:
        from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip
    except ImportError:  # before the pipeline was grouped into folders
        from pipeline.synthetic import EVAL_IMAGES, synthetic_clip  # type: ignore[no-redef]
    return synthetic_clip(EVAL_IMAGES[0], frames, width, height, seed=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("codec", choices=("glvc", "gvc"))
    parser.add_argument("kind", choices=("bpp", "quality"))
    parser.add_argument("value", type=float)
    parser.add_argument("--size", default="256x144")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from codec.base import RateTarget
    from codec.registry import build_codec

    clip = _clip(width, height, GOP_FRAMES * 3)
    gops = [clip[i * GOP_FRAMES : (i + 1) * GOP_FRAMES] for i in range(3)]
    codec = build_codec(args.codec, model=None, device="cpu", options={})
    target = RateTarget(args.kind, args.value)

    def decode(encoded):
        return codec.decode_with_digest(encoded.payload, GOP_FRAMES, width, height)

    decode(codec.encode(gops[2], target, FPS))  # warm-up, untimed
    encoded, encode_times = [], []
    for gop in gops[:2]:
        wall, cpu = time.perf_counter(), time.process_time()
        encoded.append(codec.encode(gop, target, FPS))
        encode_times.append((time.perf_counter() - wall, time.process_time() - cpu))
    decode_times = []
    for gop in encoded:
        wall, cpu = time.perf_counter(), time.process_time()
        decode(gop)
        decode_times.append((time.perf_counter() - wall, time.process_time() - cpu))
    with ThreadPoolExecutor(2) as pool:
        wall = time.perf_counter()
        list(pool.map(decode, encoded))
        side_by_side = (time.perf_counter() - wall) / 2
    with ThreadPoolExecutor(2) as pool:  # as an archive run's encode actor holds several GOPs in flight
        wall = time.perf_counter()
        list(pool.map(lambda gop: codec.encode(gop, target, FPS), gops[:2]))
        encode_side_by_side = (time.perf_counter() - wall) / 2
    record = {
        "codec": args.codec,
        "target": f"{args.kind}={args.value:g}",
        "size": args.size,
        "encode_wall_cpu": encode_times,
        "decode_wall_cpu": decode_times,
        "side_by_side_decode_wall_per_gop": side_by_side,
        "side_by_side_encode_wall_per_gop": encode_side_by_side,
        "payload_bytes": [len(gop.payload) for gop in encoded],
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
