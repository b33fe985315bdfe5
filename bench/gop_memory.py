"""Peak resident memory (RSS) of coding one GOP, per codec: what an encode actor needs for one GOP in flight.

Each codec runs in a fresh process: build the codec, load the GOP's frames (made once by the parent and
saved as .npy, so making them does not set the peak), note the resident size, reset the peak mark
(`/proc/self/clear_refs`), then encode (the codec's own self-check decode included) and decode the
payload once more, and read the peak (`VmHWM`). The difference is what one GOP costs on top of an idle actor
holding its frames; the decoded RGB frames themselves are `frames_mb`.

    python -m bench.gop_memory --width 1920 --height 1080 --frames 48            # all codecs, one line each
    python -m bench.gop_memory --codecs x264 --width 1280 --height 720 --frames 48

A fixed codec-native quality is used (no rate search: one encode per GOP, the common case). GLVC uses
the bundled model and pads a 48-frame GOP to 49 (1+4k) internally. Nothing is asserted; numbers and
commands are recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

QUALITY = {"x264": 23, "x265": 28, "av1": 35, "glvc": 32}
CODECS = tuple(QUALITY)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB (VmRSS: now; VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Reset the peak-RSS mark to the current RSS (Linux `clear_refs` 5). `ru_maxrss` cannot be used:
    it survives exec, so a child started by a big parent reports the parent's peak."""
    Path("/proc/self/clear_refs").write_text("5")


def make_frames(path: str, width: int, height: int, frames: int) -> None:
    import numpy as np

    from pipeline.sources.synthetic import synthetic_clip

    # no moving patches: they are cut from the 512-pixel photograph, too small for 1080p
    np.save(path, synthetic_clip("astronaut", frames, width, height, seed=0, objects=0))


def measure(codec_name: str, frames_path: str, threads: int | None) -> dict:
    import numpy as np
    import torch

    from codec.base import RateTarget
    from codec.registry import build_codec

    if threads:
        torch.set_num_threads(threads)
    options = {"threads": threads} if threads and codec_name in ("x264", "x265", "av1") else {}
    codec = build_codec(codec_name, model=None, device="cpu", options=options)
    clip = np.ascontiguousarray(np.load(frames_path))
    frames, height, width = clip.shape[:3]
    ready = _status_mb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    encoded = codec.encode(clip, RateTarget("quality", QUALITY[codec_name]), Fraction(24))
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    codec.decode(encoded.payload, frames, width, height)
    decode_seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    return {
        "codec": codec_name,
        "size": f"{width}x{height}",
        "frames": frames,
        "frames_mb": round(clip.nbytes / 2**20, 1),
        "rss_ready_mb": round(ready, 1),
        "rss_peak_mb": round(peak, 1),
        "gop_cost_mb": round(peak - ready, 1),
        "payload_bytes": len(encoded.payload),
        "encode_seconds": round(encode_seconds, 2),
        "decode_seconds": round(decode_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument(
        "--threads", type=int, default=None, help="encoder/torch threads (default: library's)"
    )
    parser.add_argument("--frames-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames_file:
        print(json.dumps(measure(args.codecs[0], args.frames_file, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="vidarc-gop-memory-") as tmp:
        frames_file = str(Path(tmp) / "frames.npy")
        make_frames(frames_file, args.width, args.height, args.frames)
        for name in args.codecs:  # one fresh process per codec: peak RSS is per process
            command = [
                sys.executable,
                "-m",
                "bench.gop_memory",
                "--codecs",
                name,
                "--frames-file",
                frames_file,
            ]
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            if done.returncode != 0 or not line.startswith("{"):
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                line = json.dumps({"codec": name, "error": reason})
            print(line, flush=True)


if __name__ == "__main__":
    main()
