"""`vidarc bench pipeline --against ffmpeg`: vidarc's archive job against a plain loop of ffmpeg commands.

Users weigh vidarc against the loop they would write themselves, one `ffmpeg -i SRC ... OUT.mp4` per
file. In one run, on the same files, this measures
(a) that loop: imageio-ffmpeg's ffmpeg, one file after another, with vidarc's own encoder settings
    taken from the codec class (encoder, preset, CRF, GOP length, and the private options vidarc passes
    to the encoder, e.g. `open-gop=0`), so the two sides cannot drift apart;
(b) `vidarc archive` on the same files as a user gets it by default: every quality metric on (those
    that cannot run here, e.g. LPIPS without its weights, are listed), compaction at the end; on a
    local Ray cluster started before timing, as a submitted job finds one, with the settings of the
    cluster `vidarc archive` starts itself (`driver.LOCAL_RAY_SYSTEM_CONFIG`; its start-up is reported
    apart and is in no frames/s figure); the run's own start-up (until the encode actors answered) is
    reported too, and frames/s given with and without it;
(c) the loop again. The two loops' mean is used and their difference reported, so a machine whose
    load changed during the run shows up instead of skewing the ratio.
It prints vidarc frames/s / ffmpeg frames/s, and each stage's device-seconds from the run's
summary.json (wall seconds x devices Ray reserved; `pipeline.archive.accounting`) beside the loop's
wall and CPU seconds, so the ratio comes with what it is made of (e.g. metrics / encode).

What stays different by design: vidarc decodes sources to RGB and converts them back to YUV, codes
each GOP with a fresh encoder (closed GOPs), decodes its own output (the self-check that gives the
metrics their reconstruction), and commits a container, a manifest part and markers; the loop writes
an mp4 and measures nothing. The encoder libraries are separate builds (PyAV's and ffmpeg's); both
versions are reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from codec.base import RateTarget

AGAINST = ("ffmpeg",)
CLASSIC_CODECS = ("x264", "x265", "av1")
#: ffmpeg's own version strings of the encoders, as they write them into their streams.
_BUILD_PATTERNS = {
    "libx264": rb"x264 - core \d+(?: r\d+ [0-9a-f]+)?",
    "libx265": rb"x265 \(build \d+\) - [\w.+-]+",
}


@dataclasses.dataclass
class FfmpegBenchResult:
    codec: str
    encoder: str
    preset: str
    quality: float
    gop_frames: int
    sources: str
    files: int
    frames: int
    cpus: int
    ffmpeg: str
    ffmpeg_version: str
    ffmpeg_encoder_build: str | None
    vidarc_encoder_build: str
    #: The loop's command for one file (SRC and OUT stand for each file's paths).
    ffmpeg_command: str
    #: Wall seconds of the loop before and after vidarc; the mean is what the ratios use.
    ffmpeg_runs_seconds: list[float]
    ffmpeg_wall_seconds: float
    #: User + system CPU seconds of the ffmpeg processes (mean of the two loops).
    ffmpeg_cpu_seconds: float
    ffmpeg_fps: float
    ffmpeg_bytes: int
    ffmpeg_drift: float
    #: Seconds of `ray.init` (None: a cluster was already running); in no other figure.
    ray_startup_seconds: float | None
    vidarc_wall_seconds: float
    #: From the call until the encode actors answered (`pipeline.benchmarks.throughput._startup_seconds`).
    vidarc_startup_seconds: float
    vidarc_fps: float
    vidarc_steady_fps: float
    vidarc_archive_bytes: int
    #: Device-seconds per stage (all device kinds added), every stage of `pipeline.format.schema.COMPUTE_STAGES`.
    stage_device_seconds: dict[str, float]
    #: Device-seconds the encode actors held (busy or not), per device kind.
    actors_reserved_device_seconds: dict[str, float]
    metrics_every: int
    #: the archive's --metrics-sample, and the GOPs its expensive metrics ran on (summary.json)
    metrics_sample: float
    gops_sampled: int | None
    #: Quality columns of summary.json with values, and the manifest's notes (e.g. why a metric has none).
    metrics_measured: list[str]
    metrics_notes: list[str]
    ratio: float
    ratio_steady: float
    metrics_to_encode: float | None

    def lines(self) -> list[str]:
        n = self.frames
        before, after = self.ffmpeg_runs_seconds
        lines = [
            f"sources: {self.sources}: {self.files} files, {n} frames; {self.cpus} CPUs",
            f"settings on both sides: {self.encoder} preset {self.preset} CRF {self.quality:g}, "
            f"GOP {self.gop_frames} frames",
            f"ffmpeg loop, per file: {self.ffmpeg_command}",
            f"ffmpeg loop:            {self.ffmpeg_fps:7.1f} frames/s  ({n} frames in "
            f"{self.ffmpeg_wall_seconds:.2f} s: mean of {before:.2f} s before and {after:.2f} s after vidarc; "
            f"CPU {self.ffmpeg_cpu_seconds:.2f} s)",
            f"vidarc archive:         {self.vidarc_fps:7.1f} frames/s  ({n} frames in "
            f"{self.vidarc_wall_seconds:.2f} s, start-up {self.vidarc_startup_seconds:.2f} s included)",
            f"vidarc after start-up:  {self.vidarc_steady_fps:7.1f} frames/s",
            f"ratio vidarc/ffmpeg: {self.ratio:.3g}  (vidarc after its start-up: {self.ratio_steady:.3g})",
            "Ray cluster start-up, in no figure above: "
            + (
                f"{self.ray_startup_seconds:.2f} s"
                if self.ray_startup_seconds is not None
                else "none (a cluster was running)"
            ),
            "vidarc device-seconds by stage (wall s x devices reserved; stages overlap), "
            f"metrics on every {self.metrics_every}. GOP, the expensive ones on {self.gops_sampled} GOPs "
            f"(--metrics-sample {self.metrics_sample:g}):",
        ]
        lines += [
            f"  {stage:<28}{seconds:9.2f} s  {1000 * seconds / n:8.2f} ms/frame"
            for stage, seconds in self.stage_device_seconds.items()
        ]
        total = sum(self.stage_device_seconds.values())
        reserved = sum(self.actors_reserved_device_seconds.values())
        lines += [
            f"  {'all stages':<28}{total:9.2f} s  {1000 * total / n:8.2f} ms/frame",
            f"  {'encode actors reserved':<28}{reserved:9.2f} s",
            f"  {'ffmpeg loop, wall':<28}{self.ffmpeg_wall_seconds:9.2f} s  "
            f"{1000 * self.ffmpeg_wall_seconds / n:8.2f} ms/frame",
            f"  {'ffmpeg loop, CPU':<28}{self.ffmpeg_cpu_seconds:9.2f} s  "
            f"{1000 * self.ffmpeg_cpu_seconds / n:8.2f} ms/frame",
            "ratio metrics/encode device-seconds: "
            + (
                f"{self.metrics_to_encode:.2f}"
                if self.metrics_to_encode is not None
                else "n/a (no encode time)"
            ),
            f"bytes: vidarc archive objects {self.vidarc_archive_bytes:,}, ffmpeg mp4 files {self.ffmpeg_bytes:,}",
            f"quality columns with values in summary.json: {', '.join(self.metrics_measured) or 'none'}",
        ]
        lines += [f"  metrics note: {note}" for note in self.metrics_notes]
        lines += [
            f"encoders: vidarc {self.vidarc_encoder_build}; "
            f"ffmpeg {self.ffmpeg_encoder_build or self.encoder + ' (build not reported)'} ({self.ffmpeg_version})",
            f"ffmpeg loop before vs after vidarc differs by {100 * self.ffmpeg_drift:.0f}%"
            + (
                " — the machine's load changed during the run: treat these numbers as noisy"
                if self.ffmpeg_drift > 0.2
                else ""
            ),
        ]
        return lines


def result_record(result: FfmpegBenchResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


# -- the sources ------------------------------------------------------------------------------------
def source_files(items: Sequence[str]) -> list[Path]:
    """The videos named by `--files`: files as given, folders searched recursively (hidden entries and
    files that are not videos skipped). ValueError in one line for a path that does not exist, a file
    that is not a video, or a folder without any."""
    from pipeline.sources import media

    def is_video(path: Path) -> str | None:
        """None for a video, else why not."""
        try:
            media.probe(str(path))
        except (media.NotAVideo, media.SourceError) as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None

    found: dict[Path, None] = {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            candidates = sorted(
                f
                for f in path.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            videos = [f for f in candidates if is_video(f) is None]
            if not videos:
                raise ValueError(f"--files {item}: no video files in this folder")
            found.update(dict.fromkeys(f.resolve() for f in videos))
        elif path.is_file():
            reason = is_video(path)
            if reason is not None:
                raise ValueError(f"--files {item}: not a video ({reason})")
            found[path.resolve()] = None
        else:
            raise ValueError(f"--files {item}: no such file or folder")
    if not found:
        raise ValueError("--files: no files given")
    return list(found)


@contextlib.contextmanager
def _stable_workdir(parent: Path, name: str) -> Iterator[Path]:
    """An empty folder at the same path on every run of the same bench, removed afterwards.

    The archive's video keys hash the source path, and the expensive metrics' seeded sample is keyed
    by them: in a random temporary folder each run measured other GOPs, so the metrics stage's
    seconds moved between runs with the sample alone. A lock refuses a second bench on the same folder.
    """
    parent.mkdir(parents=True, exist_ok=True)
    root = parent / name
    with open(parent / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another bench is running in {root}") from None
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _files_tag(paths: Sequence[Path]) -> str:
    """A short name for a list of source files (their resolved paths)."""
    digest = hashlib.sha256("\0".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
    return f"files-{digest}"


def _linked_folder(paths: Sequence[Path], folder: Path) -> Path:
    """A folder holding exactly `paths` (as symbolic links, numbered so equal names cannot collide),
    so vidarc archives the files the loop codes, nothing else."""
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        (folder / f"{i:04d}-{path.name}").symlink_to(path)
    return folder


# -- the ffmpeg loop --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FfmpegLoop:
    exe: str
    #: Everything between `-i SRC` and `OUT.mp4`.
    arguments: tuple[str, ...]

    def command(self, src: str, out: str) -> list[str]:
        head = [self.exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", src]
        return [*head, *self.arguments, out]

    def describe(self) -> str:
        return shlex.join(["ffmpeg", *self.command("SRC", "OUT.mp4")[1:]])

    def run(self, paths: Sequence[Path], out_dir: Path) -> tuple[float, float, list[Path]]:
        """(wall seconds, CPU seconds of the ffmpeg processes, outputs): one file after another."""
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = [out_dir / f"{i:04d}.mp4" for i in range(len(paths))]
        cpu_before = _children_cpu_seconds()
        started = time.perf_counter()
        for src, out in zip(paths, outputs, strict=True):
            proc = subprocess.run(self.command(str(src), str(out)), capture_output=True, text=True)
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines()
                raise RuntimeError(
                    f"ffmpeg failed on {src} (exit {proc.returncode}): {lines[-1] if lines else 'no message'}"
                )
        wall = time.perf_counter() - started
        return wall, _children_cpu_seconds() - cpu_before, outputs


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_loop(exe: str, encoder: str, options: dict[str, str], gop_frames: int) -> FfmpegLoop:
    """The loop's arguments from the codec's own encoder options (`ClassicCodec.encoder_options`: the
    preset, the CRF and any private parameters, each an ffmpeg option of the same name)."""
    arguments = ["-c:v", encoder]
    for key in ("preset", "crf"):
        arguments += [f"-{key}", options[key]]
    arguments += ["-g", str(gop_frames)]
    for key, value in options.items():
        if key not in ("preset", "crf"):
            arguments += [f"-{key}", value]
    # every decoded frame coded once, as vidarc does (no frames dropped or duplicated for a frame rate)
    arguments += ["-pix_fmt", "yuv420p", "-fps_mode", "passthrough", "-an"]
    return FfmpegLoop(exe, tuple(arguments))


def check_ffmpeg(exe: str, encoder: str) -> str:
    """ffmpeg's version line; ValueError in one line when it lacks `encoder`."""
    try:
        listing = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60
        ).stdout
        version = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ValueError(f"{exe}: cannot run ffmpeg ({exc})") from None
    names = {fields[1] for fields in (line.split() for line in listing.splitlines()) if len(fields) > 1}
    if encoder not in names:
        raise ValueError(f"{exe} has no {encoder} encoder (set IMAGEIO_FFMPEG_EXE to an ffmpeg that has it)")
    first = version.splitlines()[0] if version else "ffmpeg (version unknown)"
    return " ".join(first.split()[:3])


def _encoder_build(encoder: str, output: Path) -> str | None:
    """The encoder's version as it wrote it into `output` (x264's SEI; None where none is written)."""
    pattern = _BUILD_PATTERNS.get(encoder)
    if pattern is None:
        return None
    with open(output, "rb") as f:
        match = re.search(pattern, f.read(1 << 20))
    return match.group(0).decode() if match else None


def _frames_in(paths: Sequence[Path]) -> int:
    """Video packets (= coded frames) in the loop's outputs, read without decoding."""
    import av

    total = 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total += sum(1 for packet in container.demux(stream) if packet.size)
    return total


# -- the vidarc side --------------------------------------------------------------------------------
def _run_vidarc(
    src: Path,
    out: Path,
    codec: str,
    target: RateTarget,
    gop_frames: int,
    metrics_every: int,
    metrics_sample: float,
) -> tuple[float, float, dict[str, Any], list[str]]:
    """(wall seconds, start-up seconds, summary.json, the manifest's distinct metrics notes) of one
    archive run with the default metrics."""
    import pyarrow.dataset as ds

    from pipeline.archive.config import ArchiveConfig
    from pipeline.benchmarks.throughput import timed_archive_run

    config = ArchiveConfig(
        src=str(src),
        out=str(out),
        codec=codec,
        target=target,
        gop_frames=gop_frames,
        metrics_every=metrics_every,
        metrics_sample=metrics_sample,
    )
    result, wall, startup = timed_archive_run(config)
    summary = json.loads((out / "runs" / result.run_id / "summary.json").read_text())
    notes = ds.dataset(str(out / "manifest"), format="parquet").to_table(columns=["metrics_note"])
    distinct: dict[str, None] = {}
    for note in notes.column("metrics_note").to_pylist():
        distinct.update(dict.fromkeys(part.strip() for part in (note or "").split(";") if part.strip()))
    return wall, startup, summary, list(distinct)


def _stage_seconds(compute: dict[str, Any]) -> dict[str, float]:
    """Device-seconds per stage, device kinds added; every compute stage listed (0 where none ran)."""
    from pipeline.format.schema import COMPUTE_STAGES

    by_stage: dict[str, dict[str, float]] = compute.get("by_stage") or {}
    stages = [*COMPUTE_STAGES, *(s for s in sorted(by_stage) if s not in COMPUTE_STAGES)]
    return {stage: float(sum((by_stage.get(stage) or {}).values())) for stage in stages}


# -- the benchmark ----------------------------------------------------------------------------------
def run_ffmpeg_bench(
    *,
    codec: str = "x264",
    files: Sequence[str] | None = None,
    videos: int = 4,
    frames: int = 96,
    width: int = 640,
    height: int = 360,
    gop_frames: int = 48,
    quality: float | None = None,
    metrics_every: int = 1,
    metrics_sample: float = 0.1,
    cpus: int | None = None,
    workdir: str | None = None,
) -> FfmpegBenchResult:
    """The ffmpeg loop, vidarc, the loop again, on the same files (`files`, else synthetic clips)."""
    import imageio_ffmpeg
    import ray

    from codec.registry import codec_class, create_codec
    from pipeline.archive.config import DEFAULT_QUALITY
    from pipeline.archive.driver import LOCAL_RAY_SYSTEM_CONFIG
    from pipeline.benchmarks.throughput import make_clips

    if codec not in CLASSIC_CODECS:
        raise ValueError(
            f"--against ffmpeg compares the classic codecs ({', '.join(CLASSIC_CODECS)}); got {codec!r}"
        )
    codec_class(codec).check_gop_frames(gop_frames)
    q = quality if quality is not None else DEFAULT_QUALITY[codec]
    coder = create_codec(codec)
    crf = coder._quality_to_crf(q)  # the codec's own check of the range (and of a fractional CRF)
    encoder = coder.encoder_name
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    ffmpeg_version = check_ffmpeg(exe, encoder)
    loop = ffmpeg_loop(exe, encoder, coder.encoder_options(crf, gop_frames), gop_frames)
    paths = source_files(files) if files else None
    cpus = cpus or os.cpu_count() or 1

    name = f"{codec}-{width}x{height}-{videos}x{frames}" if paths is None else _files_tag(paths)
    with _stable_workdir(Path(workdir or tempfile.gettempdir()), f"vidarc-bench-ffmpeg-{name}") as root:
        if paths is None:
            src = root / "src"
            src.mkdir()
            paths = make_clips(src, videos, frames, width, height)
            described = f"{videos} synthetic clips × {frames} frames at {width}x{height}"
        else:
            src = _linked_folder(paths, root / "src")
            described = "--files " + " ".join(files or [])

        wall_before, cpu_before, outputs = loop.run(paths, root / "ffmpeg")
        n_ffmpeg = _frames_in(outputs)
        ffmpeg_bytes = sum(p.stat().st_size for p in outputs)
        encoder_build = _encoder_build(encoder, outputs[0])

        owned = not ray.is_initialized()
        ray_startup = None
        if owned:
            started = time.perf_counter()
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                _system_config=dict(LOCAL_RAY_SYSTEM_CONFIG),  # a copy: Ray adds to it
            )
            ray_startup = time.perf_counter() - started
        try:
            wall, startup, summary, notes = _run_vidarc(
                src, root / "out", codec, RateTarget("quality", q), gop_frames, metrics_every, metrics_sample
            )
        finally:
            if owned:
                ray.shutdown()

        wall_after, cpu_after, outputs = loop.run(paths, root / "ffmpeg")
        if _frames_in(outputs) != n_ffmpeg:
            raise RuntimeError("the two ffmpeg loops coded different numbers of frames")

    n = int(summary["frames"])
    if n != n_ffmpeg:
        raise RuntimeError(f"vidarc archived {n} frames, the ffmpeg loop coded {n_ffmpeg}")
    if n == 0:
        raise RuntimeError("the sources hold no frames")
    ffmpeg_wall = (wall_before + wall_after) / 2
    ffmpeg_fps = n / ffmpeg_wall
    vidarc_fps = n / wall
    steady = wall - startup
    vidarc_steady_fps = n / steady if steady > 0 else 0.0
    stages = _stage_seconds(summary.get("compute") or {})
    quality_stats: dict[str, Any] = summary.get("quality") or {}
    return FfmpegBenchResult(
        codec=codec,
        encoder=encoder,
        preset=coder.preset,
        quality=float(q),
        gop_frames=gop_frames,
        sources=described,
        files=len(paths),
        frames=n,
        cpus=cpus,
        ffmpeg=exe,
        ffmpeg_version=ffmpeg_version,
        ffmpeg_encoder_build=encoder_build,
        vidarc_encoder_build=coder.version,
        ffmpeg_command=loop.describe(),
        ffmpeg_runs_seconds=[wall_before, wall_after],
        ffmpeg_wall_seconds=ffmpeg_wall,
        ffmpeg_cpu_seconds=(cpu_before + cpu_after) / 2,
        ffmpeg_fps=ffmpeg_fps,
        ffmpeg_bytes=ffmpeg_bytes,
        ffmpeg_drift=abs(wall_before - wall_after) / max(wall_before, wall_after),
        ray_startup_seconds=ray_startup,
        vidarc_wall_seconds=wall,
        vidarc_startup_seconds=startup,
        vidarc_fps=vidarc_fps,
        vidarc_steady_fps=vidarc_steady_fps,
        vidarc_archive_bytes=int(summary.get("archive_bytes") or 0),
        stage_device_seconds=stages,
        actors_reserved_device_seconds={
            kind: float(s)
            for kind, s in ((summary.get("compute") or {}).get("actors_reserved") or {}).items()
        },
        metrics_every=metrics_every,
        metrics_sample=metrics_sample,
        gops_sampled=(summary.get("quality_sample") or {}).get("gops_sampled"),
        metrics_measured=[name for name, stats in quality_stats.items() if stats],
        metrics_notes=notes,
        ratio=vidarc_fps / ffmpeg_fps,
        ratio_steady=vidarc_steady_fps / ffmpeg_fps,
        metrics_to_encode=stages["metrics"] / stages["encode"] if stages.get("encode") else None,
    )
