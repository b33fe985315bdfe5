"""VMAF through the ffmpeg build that the imageio-ffmpeg package ships (it includes libvmaf).

PyAV's bundled ffmpeg has no libvmaf, and re-implementing VMAF's SVM model would not give the numbers
everyone else reports, so the reference implementation runs as a subprocess: the two GOPs stream in as
raw RGB through two named pipes (no temporary video files, no disk traffic), ffmpeg converts both to
full-resolution 4:4:4 BT.709 limited-range YUV (VMAF reads luma; 4:4:4 avoids odd-size chroma issues),
libvmaf scores them with its default model (vmaf_v0.6.1) and writes a JSON log that we parse.

Reported value: the mean of per-frame VMAF (libvmaf's pooled "mean"). Frames smaller than
`VMAF_MIN_SIDE` give null with a note: libvmaf's multi-scale features fail below ~24 px and the model
was never meant for such sizes.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from pipeline.metrics.fidelity import check_pair

VMAF_MIN_SIDE = 32
VMAF_MODEL = "version=vmaf_v0.6.1"


@functools.lru_cache(maxsize=1)
def ffmpeg_with_vmaf() -> tuple[str | None, str | None]:
    """(path of an ffmpeg that lists the libvmaf filter, None) or (None, why not)."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # package missing or no binary for this platform
        return None, f"vmaf: no ffmpeg binary from imageio-ffmpeg ({exc})"
    try:
        filters = subprocess.run(
            [exe, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"vmaf: cannot run {exe} ({exc})"
    if " libvmaf " not in filters:
        return None, f"vmaf: {exe} was built without libvmaf"
    return exe, None


def _feed(path: Path, frames: np.ndarray, errors: list[BaseException]) -> None:
    try:
        with path.open("wb") as pipe:
            for frame in frames:
                pipe.write(np.ascontiguousarray(frame).tobytes())
    except BrokenPipeError:
        pass  # ffmpeg stopped reading; its exit status reports the reason
    except BaseException as exc:
        errors.append(exc)


def vmaf(
    source: np.ndarray, recon: np.ndarray, *, fps: float = 25.0, threads: int = 1, timeout_s: float = 600.0
) -> tuple[float | None, str | None]:
    """(mean VMAF of `recon` against `source`, None) or (None, note)."""
    check_pair(source, recon)
    frames, height, width = source.shape[:3]
    if min(height, width) < VMAF_MIN_SIDE:
        return None, f"vmaf: {width}x{height} frames are below VMAF's {VMAF_MIN_SIDE}-px minimum side"
    exe, reason = ffmpeg_with_vmaf()
    if exe is None:
        return None, reason
    with tempfile.TemporaryDirectory(prefix="vidarc-vmaf-") as tmp:
        tmpdir = Path(tmp)
        distorted, reference, log_path = tmpdir / "distorted", tmpdir / "reference", tmpdir / "vmaf.json"
        os.mkfifo(distorted)
        os.mkfifo(reference)
        raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}"]
        to_yuv = "scale=out_color_matrix=bt709:out_range=tv,format=yuv444p"
        graph = (
            f"[0:v]{to_yuv}[dis];[1:v]{to_yuv}[ref];"
            f"[dis][ref]libvmaf=model={VMAF_MODEL}:log_fmt=json:log_path={log_path}:n_threads={threads}"
        )
        command = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", *raw, "-i", str(distorted)]
        command += [*raw, "-i", str(reference), "-lavfi", graph, "-f", "null", "-"]
        errors: list[BaseException] = []
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        feeders = [
            threading.Thread(target=_feed, args=(distorted, recon, errors), daemon=True),
            threading.Thread(target=_feed, args=(reference, source, errors), daemon=True),
        ]
        for feeder in feeders:
            feeder.start()
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            _unblock(distorted, reference)
            return None, f"vmaf: ffmpeg did not finish within {timeout_s:g} s"
        _unblock(distorted, reference)
        for feeder in feeders:
            feeder.join(timeout=10)
        if errors:
            return None, f"vmaf: could not stream frames to ffmpeg ({errors[0]})"
        message = stderr.decode(errors="replace").strip().splitlines()
        if process.returncode != 0 or not log_path.is_file():
            detail = message[-1] if message else f"exit status {process.returncode}"
            return None, f"vmaf: ffmpeg libvmaf failed ({detail})"
        report = json.loads(log_path.read_text())
    scored = len(report.get("frames", []))
    if scored != frames:
        return None, f"vmaf: libvmaf scored {scored} of {frames} frames"
    return float(report["pooled_metrics"]["vmaf"]["mean"]), None


def _unblock(*fifos: Path) -> None:
    """Open each FIFO for reading without blocking so a writer stuck in open() returns."""
    for fifo in fifos:
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
