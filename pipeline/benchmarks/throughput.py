"""The pipeline benchmark: how much of a codec's own speed survives the whole Ray workflow.

In one run, on the same synthetic clips (real files written with PyAV), it measures
(a) the codec alone: one process decodes each source GOP (`media.decode_frames`, as the pipeline
    does) and encodes it (`codec.encode`) — frames/s of decode + encode, no Ray, no writing; and
(b) the pipeline: `pipeline.archive.run_archive` on the same clips through Ray (probe, decode tasks,
    encode actor, quality metrics, container + manifest + marker commits) — frames/s over its wall time,
and prints pipeline/codec. The pipeline also measures quality (PSNR and MS-SSIM on every
`--metrics-every`-th GOP: the manifest's columns), which the codec alone does not, so the bench also
times those metrics in-process on the same GOPs and prints a like-for-like ratio: pipeline / (codec +
the same metrics in one process), i.e. what Ray, the object store and the commits cost. To explain the
ratios it measures the parts: decode and encode time in (a), the metrics, the actors' own encode time
(the manifest's `encode_seconds`), and the pipeline's start-up (Ray connection + actor build).
The codec alone runs before and after the pipeline; the mean is used and the difference reported, so
a machine shared with other work cannot skew the ratio unnoticed.

Choices: the pipeline runs with the expensive optional metrics (LPIPS, DISTS, VMAF, flicker) off, as
the bench measures the workflow, not the metrics; PSNR and MS-SSIM stay on because the manifest
always has them. The Ray cluster is started before timing (a cluster is already running when a job is
submitted), so (b) includes actor start-up but not cluster start-up.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from codec.base import RateTarget

SKIPPED_METRICS = ("lpips", "dists", "vmaf", "temporal")


@dataclasses.dataclass
class BenchResult:
    codec: str
    videos: int
    frames_per_video: int
    width: int
    height: int
    gop_frames: int
    target: str
    cpus: int
    codec_fps: float
    codec_decode_seconds: float
    codec_encode_seconds: float
    metrics_seconds: float
    metrics_every: int
    codec_with_metrics_fps: float
    pipeline_fps: float
    pipeline_wall_seconds: float
    pipeline_startup_seconds: float
    pipeline_actor_encode_seconds: float
    ratio: float
    ratio_like_for_like: float
    codec_drift: float

    @property
    def steady_ratio(self) -> float:
        """pipeline/codec with the pipeline's fixed start-up (actor + codec build) taken out."""
        steady = self.pipeline_wall_seconds - self.pipeline_startup_seconds
        return (self.videos * self.frames_per_video / steady) / self.codec_fps if steady > 0 else 0.0

    def lines(self) -> list[str]:
        frames = self.videos * self.frames_per_video
        codec_total = self.codec_decode_seconds + self.codec_encode_seconds
        return [
            f"clips: {self.videos} × {self.frames_per_video} frames at {self.width}x{self.height}, "
            f"codec {self.codec} {self.target}, GOP {self.gop_frames}, {self.cpus} CPUs, "
            f"metrics on every {self.metrics_every}. GOP",
            f"codec alone:            {self.codec_fps:7.1f} frames/s  ({frames} frames in {codec_total:.2f} s: "
            f"decode {self.codec_decode_seconds:.2f} s, encode {self.codec_encode_seconds:.2f} s)",
            f"codec + same metrics:   {self.codec_with_metrics_fps:7.1f} frames/s  "
            f"(+ PSNR/MS-SSIM {self.metrics_seconds:.2f} s)",
            f"pipeline through Ray:   {self.pipeline_fps:7.1f} frames/s  "
            f"({frames} frames in {self.pipeline_wall_seconds:.2f} s)",
            f"ratio pipeline/codec: {self.ratio:.2f}",
            f"ratio pipeline/(codec + same metrics): {self.ratio_like_for_like:.2f}",
            f"ratio pipeline/codec excluding the start-up: {self.steady_ratio:.2f}",
            "pipeline time by stage (stages overlap: decode tasks run beside the encode actor):",
            f"  start-up until the encode actor answered: {self.pipeline_startup_seconds:6.2f} s",
            f"  actor encode (manifest encode_seconds):   {self.pipeline_actor_encode_seconds:6.2f} s",
            f"  PSNR/MS-SSIM (timed in-process):          {self.metrics_seconds:6.2f} s",
            f"  source decode (timed in-process):         {self.codec_decode_seconds:6.2f} s",
            f"  wall:                                     {self.pipeline_wall_seconds:6.2f} s",
            f"codec-alone time before vs after the pipeline differs by {100 * self.codec_drift:.0f}%"
            + (
                " — the machine's load changed during the run: treat these numbers as noisy"
                if self.codec_drift > 0.2
                else ""
            ),
        ]


def make_clips(folder: Path, videos: int, frames: int, width: int, height: int, fps: int = 24) -> list[Path]:
    """Near-lossless H.264 sources of natural-looking content (synthetic camera moves over photos)."""
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip, write_video

    paths = []
    for i in range(videos):
        clip = synthetic_clip(EVAL_IMAGES[i % len(EVAL_IMAGES)], frames, width, height, seed=i)
        paths.append(write_video(folder / f"clip-{i:02d}.mp4", clip, fps=fps))
    return paths


def measure_codec(
    paths: list[Path], codec_name: str, target: RateTarget, gop_frames: int, metrics_every: int = 1
) -> tuple[float, float, float, int]:
    """(decode seconds, encode seconds, metrics seconds, frames) for decode + encode in one process;
    the metrics the pipeline computes (PSNR, MS-SSIM on the GOPs it measures) are timed apart."""
    from codec.registry import create_codec
    from pipeline.archive.plan import plan_gops
    from pipeline.metrics import should_measure
    from pipeline.metrics.fidelity import ms_ssim, psnr_rgb
    from pipeline.sources import media

    codec = create_codec(codec_name)
    decode_s = encode_s = metrics_s = 0.0
    frames_done = 0
    for path in paths:
        info = media.probe(str(path))
        for span in plan_gops(info.frame_count, gop_frames, info.frame_pts):
            started = time.perf_counter()
            frames = media.decode_frames(str(path), span.first_frame, span.frame_count, expected_pts=span.pts)
            decoded = time.perf_counter()
            encoded = codec.encode(frames, target, info.fps)
            finished = time.perf_counter()
            if should_measure(span.index, metrics_every):
                psnr_rgb(frames, encoded.reconstruction)
                ms_ssim(frames, encoded.reconstruction)
            metrics_s += time.perf_counter() - finished
            decode_s += decoded - started
            encode_s += finished - decoded
            frames_done += span.frame_count
    return decode_s, encode_s, metrics_s, frames_done


def measure_pipeline(
    src: Path, out: Path, codec_name: str, target: RateTarget, gop_frames: int, metrics_every: int = 1
) -> tuple[float, float, float, int]:
    """(wall seconds, start-up seconds, actor encode seconds, frames) of one archive run through Ray."""
    import pyarrow.dataset as ds

    from pipeline.archive.config import ArchiveConfig

    config = ArchiveConfig(
        src=str(src),
        out=str(out),
        codec=codec_name,
        target=target,
        gop_frames=gop_frames,
        skip_metrics=SKIPPED_METRICS,
        metrics_every=metrics_every,
    )
    result, wall, startup = timed_archive_run(config)
    table = ds.dataset(str(out / "manifest"), format="parquet").to_table(
        columns=["encode_seconds", "created_at"]
    )
    actor_encode = float(sum(table.column("encode_seconds").to_pylist()))
    return wall, startup, actor_encode, int(result.summary["frames"])


def timed_archive_run(config: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, start-up seconds) of one `run_archive(config)`; RuntimeError in one line
    when the run cannot start or fails (a benchmark measures successful runs only)."""
    from pipeline.archive import ArchiveError, run_archive

    started, started_clock = time.perf_counter(), time.time()
    try:
        result = run_archive(config)
    except ArchiveError as exc:
        raise RuntimeError(f"the benchmark's archive run could not start: {exc}") from None
    wall = time.perf_counter() - started
    if result.exit_code != 0 or result.run_id is None:
        raise RuntimeError(f"the benchmark's archive run failed: {result.message}")
    return result, wall, _startup_seconds(Path(config.out), started_clock)


def _startup_seconds(out: Path, started_clock: float) -> float:
    """Time from the call until the run's config.json appeared (written once the encode actors built
    their codec and answered), read from the file's modification time."""
    configs = list((out / "runs").glob("*/config.json"))
    return max(0.0, configs[0].stat().st_mtime - started_clock) if configs else 0.0


def run_pipeline_bench(
    *,
    codec: str = "x264",
    videos: int = 4,
    frames: int = 96,
    width: int = 640,
    height: int = 360,
    gop_frames: int = 48,
    quality: float | None = None,
    metrics_every: int = 1,
    cpus: int | None = None,
    workdir: str | None = None,
) -> BenchResult:
    """Make clips, measure the codec alone and the pipeline on them; returns both and the ratio."""
    import ray

    from pipeline.archive.config import DEFAULT_QUALITY
    from pipeline.archive.driver import LOCAL_RAY_SYSTEM_CONFIG

    target = RateTarget("quality", quality if quality is not None else DEFAULT_QUALITY.get(codec, 23))
    cpus = cpus or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="vidarc-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        paths = make_clips(src, videos, frames, width, height)
        before = measure_codec(paths, codec, target, gop_frames, metrics_every)
        owned = not ray.is_initialized()
        if owned:
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                _system_config=dict(LOCAL_RAY_SYSTEM_CONFIG),  # a copy: Ray adds to it
            )
        try:
            wall, startup, actor_encode, n_pipeline = measure_pipeline(
                src, root / "out", codec, target, gop_frames
            )
        finally:
            if owned:
                ray.shutdown()
        after = measure_codec(paths, codec, target, gop_frames, metrics_every)
    # The codec alone is measured before and after the pipeline and averaged, so a change of machine
    # load during the run shows up (as `codec_drift`) instead of silently skewing the ratio.
    decode_s, encode_s, metrics_s = ((b + a) / 2 for b, a in zip(before[:3], after[:3], strict=True))
    n = before[3]
    codec_drift = abs(sum(before[:2]) - sum(after[:2])) / max(sum(before[:2]), sum(after[:2]))
    if n_pipeline != n:
        raise RuntimeError(f"the pipeline archived {n_pipeline} frames, the codec run {n}")
    codec_fps = n / (decode_s + encode_s)
    pipeline_fps = n / wall
    return BenchResult(
        codec=codec,
        videos=videos,
        frames_per_video=frames,
        width=width,
        height=height,
        gop_frames=gop_frames,
        target=target.describe(),
        cpus=cpus,
        codec_fps=codec_fps,
        codec_decode_seconds=decode_s,
        codec_encode_seconds=encode_s,
        metrics_seconds=metrics_s,
        metrics_every=metrics_every,
        codec_with_metrics_fps=n / (decode_s + encode_s + metrics_s),
        pipeline_fps=pipeline_fps,
        pipeline_wall_seconds=wall,
        pipeline_startup_seconds=startup,
        pipeline_actor_encode_seconds=actor_encode,
        ratio=pipeline_fps / codec_fps,
        ratio_like_for_like=pipeline_fps / (n / (decode_s + encode_s + metrics_s)),
        codec_drift=codec_drift,
    )


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); ValueError otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WxH, e.g. 640x360") from None
    if w < 16 or h < 16:
        raise ValueError(f"--size {text!r}: both sides must be at least 16")
    return w, h


def result_record(result: BenchResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
