"""GLVC quality-target search with and without the per-GOP tokenizer reuse, side by side.

A `--target-psnr`/`--target-vmaf` search codes the same GOP at several quality indices. GLVC's
tokenizer output does not depend on the index, and `GlvcCodec` keeps the last GOP's latents, so the
tokenizer runs once per search instead of once per setting tried. This bench runs the same search
twice on the same clip, once as shipped and once with the reuse defeated, and prints both times, the
tokenizer calls and the ratio. Both must choose the same index (asserted: the reuse cannot change a result).

    python bench/glvc_quality_search.py [--model DIR] [--width 256 --height 144 --frames 17] [--target 15]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import torch

from codec.glvc.codec import GlvcCodec
from pipeline.archive.quality_target import find_rate_for_quality
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip


def _timed_search(codec: GlvcCodec, clip, target: float, reuse: bool) -> tuple[float, int, float]:
    calls = []
    original = codec.tokenizer.encode

    def counting(x):
        calls.append(1)
        return original(x)

    codec.tokenizer.encode = counting
    if not reuse:
        encode = codec.encode

        def forgetful(*args, **kwargs):
            codec._latent_cache = None
            return encode(*args, **kwargs)

        codec.encode = forgetful
    codec._latent_cache = None
    started = time.perf_counter()
    result = find_rate_for_quality(codec, [clip], Fraction(24), "psnr", target)
    seconds = time.perf_counter() - started
    return seconds, len(calls), result.chosen.knob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--target", type=float, default=15.0, help="PSNR target, dB")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = synthetic_clip(EVAL_IMAGES[0], args.frames, args.width, args.height, seed=0)
    runs = {}
    for reuse in (True, False):
        codec = GlvcCodec(model=args.model, device=args.device)
        runs[reuse] = _timed_search(codec, clip, args.target, reuse)
    (fast, fast_calls, fast_q), (slow, slow_calls, slow_q) = runs[True], runs[False]
    assert fast_q == slow_q, (fast_q, slow_q)
    print(f"GLVC psnr>={args.target:g} search, {args.width}x{args.height}x{args.frames}, {args.device}")
    print(f"  tokenizer reused : {fast:7.2f} s, {fast_calls} tokenizer call(s), chose q={fast_q:g}")
    print(f"  tokenizer per try: {slow:7.2f} s, {slow_calls} tokenizer call(s), chose q={slow_q:g}")
    print(f"  speed-up         : {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
