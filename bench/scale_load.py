"""Load figures: the whole archive job on many tiny videos (32×32, 8 frames, x264), at several collection
sizes, side by side in one run: does the cost per video stay flat, and does the driver's memory?

Usage (repository root; a benchmark, not a test — it keeps both cores busy for many minutes):

    nice -n 19 python bench/scale_load.py --sizes 100 1000 10000
    nice -n 19 python bench/scale_load.py --sizes 1000 --pack 1          # packed: 1 MB objects

Each size runs in a fresh process (its own embedded Ray cluster, as `vidarc archive SRC OUT` starts
one) over its own folder of generated videos (written once with PyAV, reused by later runs in the same
`--work` folder). Reported per size: wall seconds of `run_archive`, seconds per video after the first
commit (steady state: the encode actor's start-up left out), the driver process's peak RSS
(ru_maxrss of that process alone: Ray's own daemons and workers are other processes), the CPU
seconds the driver process spent per video (its own work: robust to other load on the machine), and
the objects written under OUT by kind.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_videos(folder: Path, count: int) -> None:
    """`count` distinct 32×32, 8-frame x264 videos (a moving gradient, one phase per video)."""
    from pipeline.sources.synthetic import write_video

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:32, 0:32]
    for i in range(count):
        name = f"d{i // 1000:03d}/clip-{i:06d}.mp4"
        if (folder / name).exists():
            continue
        (folder / name).parent.mkdir(exist_ok=True)
        frames = np.stack(
            [
                np.stack([(x * 8 + t * 5 + i) % 256, (y * 8 + i * 3) % 256, (x + y + t * 9) % 256], axis=-1)
                for t in range(8)
            ]
        ).astype(np.uint8)
        write_video(folder / name, frames, fps=24, crf=18)


def measure(src: str, out: str, pack_mb: float | None) -> dict:
    """One archive run in this process; prints its figures."""
    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig
    from pipeline.archive.progress import Counters, ProgressDisplay

    first_commit: list[float] = []

    class Clock(ProgressDisplay):
        def refresh(self, force: bool = False) -> None:
            if not first_commit and self.counters.videos_ok >= 1:
                first_commit.append(time.perf_counter())
            super().refresh(force=force)

    options = {"pack_mb": pack_mb} if pack_mb else {}
    config = ArchiveConfig(src=src, out=out, codec="x264", skip_metrics=("lpips", "dists", "vmaf"), **options)
    started = time.perf_counter()
    result = run_archive(config, display=Clock(Counters(), live=False, interval=3600))
    ended = time.perf_counter()
    videos = result.summary["videos_ok"]
    steady = (ended - first_commit[0]) / (videos - 1) if first_commit and videos > 1 else None
    return {
        "videos_ok": videos,
        "videos_failed": result.summary["videos_failed"],
        "wall_seconds": round(ended - started, 2),
        "seconds_per_video": round((ended - started) / max(videos, 1), 4),
        "steady_seconds_per_video": round(steady, 4) if steady else None,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # CPU the driver process itself spent per video: its own work, robust to a loaded machine
        "driver_cpu_ms_per_video": round(1000 * _cpu_seconds() / max(videos, 1), 2),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def objects_written(out: Path) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for path in out.rglob("*"):
        if path.is_file():
            kind = path.relative_to(out).parts[0]
            if kind == "markers":
                kind = "/".join(path.relative_to(out).parts[:2])
            kinds[kind] += 1
    return dict(sorted(kinds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "vidarc-scale-load"),
        help="folder for the generated sources and the archives",
    )
    parser.add_argument("--pack", type=float, default=None, help="--pack N_MB for the archive runs")
    parser.add_argument("--measure", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.pack)))
        return
    work = Path(args.work).resolve()
    rows = []
    for size in args.sizes:
        src, out = work / f"src-{size}", work / (f"out-{size}" + ("-pack" if args.pack else ""))
        started = time.perf_counter()
        make_videos(src, size)
        made = time.perf_counter() - started
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, __file__, "--measure", str(src), str(out)]
        if args.pack:
            command += ["--pack", str(args.pack)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"size {size} failed: {done.stderr[-3000:]}")
        row = {
            "videos": size,
            **json.loads(done.stdout.strip().splitlines()[-1]),
            "objects": objects_written(out),
        }
        row["objects_per_video"] = round(sum(row["objects"].values()) / size, 3)
        row["sources_written_seconds"] = round(made, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "videos | wall s | s/video | steady s/video | driver CPU ms/video | driver peak RSS MB | objects/video"
    )
    for row in rows:
        print(
            f"{row['videos']} | {row['wall_seconds']} | {row['seconds_per_video']} | "
            f"{row['steady_seconds_per_video']} | {row['driver_cpu_ms_per_video']} | "
            f"{row['driver_peak_rss_mb']} | {row['objects_per_video']}"
        )


if __name__ == "__main__":
    main()
