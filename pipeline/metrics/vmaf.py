"""VMAF through the ffmpeg build that the imageio-ffmpeg package ships (it includes libvmaf).

PyAV's bundled ffmpeg has no libvmaf, and re-implementing VMAF's SVM model would not give the numbers
everyone else reports, so the reference implementation runs as a subprocess: the two GOPs stream in as
raw RGB through two anonymous pipes (`pipe:N`; no temporary video files, no disk traffic), ffmpeg converts both to
full-resolution 4:4:4 BT.709 limited-range YUV (VMAF reads luma; 4:4:4 avoids odd-size chroma issues),
libvmaf scores them with its default model (vmaf_v0.6.1) and writes a JSON log that we parse.

Reported value: the mean of per-frame VMAF (libvmaf's pooled "mean"). Frames smaller than
`VMAF_MIN_SIDE` give null with a note: libvmaf's multi-scale features fail below ~24 px and the model
was never meant for such sizes.

A process killed with SIGKILL (a driver, a Ray worker) leaves nothing running: ffmpeg reads
anonymous pipes, so it sees the end of its input when its parent's write ends close (named pipes
once left it blocked in open() forever), and on Linux it is started with a parent-death signal
(`prctl(PR_SET_PDEATHSIG, SIGKILL)`, set by a tiny exec wrapper: `preexec_fn` is not safe in the
threaded encode actor). The JSON log's temporary folder is named after its owner's pid
(`vidarc-vmaf-<pid>-*`); the first VMAF of a process removes those whose owner is gone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
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


TEMP_PREFIX = "vidarc-vmaf-"
#: A folder of the old naming (no owner pid) counts as stale this long after its last change.
UNOWNED_STALE_S = 24 * 3600.0
#: Runs in the child between fork and ffmpeg's exec: die with the parent (Linux), and not start at
#: all if the parent is already gone (it may die before the signal is armed).
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _feed(fd: int, frames: np.ndarray, errors: list[BaseException]) -> None:
    """Write `frames` into the pipe `fd` (and close it: ffmpeg sees the end of the input)."""
    try:
        with open(fd, "wb", buffering=0) as pipe:
            for frame in frames:  # the frame's own buffer: no bytes copy on the way into the pipe
                view = memoryview(np.ascontiguousarray(frame)).cast("B")
                while view:
                    view = view[pipe.write(view) :]
    except BrokenPipeError:
        pass  # ffmpeg stopped reading; its exit status reports the reason
    except BaseException as exc:
        errors.append(exc)


def _dying_with_parent(command: list[str]) -> list[str]:
    """`command` started through the parent-death wrapper where Linux offers one, else unchanged."""
    if not sys.platform.startswith("linux") or not sys.executable:
        return command
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def remove_stale_temporaries(root: str | None = None) -> list[str]:
    """Remove `vidarc-vmaf-<pid>-*` folders under `root` (the temp folder) whose owner process is gone
    (killed before it could clean up), and unowned ones of the old naming untouched for a day.
    Returns the removed paths."""
    root = root or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if not entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if _stale(entry):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def _stale(entry: os.DirEntry) -> bool:
    owner = re.match(rf"{re.escape(TEMP_PREFIX)}(\d+)-", entry.name)
    if owner is None:
        with contextlib.suppress(OSError):
            return time.time() - entry.stat(follow_symlinks=False).st_mtime > UNOWNED_STALE_S
        return False
    pid = int(owner[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


@functools.lru_cache(maxsize=1)
def _swept_once() -> None:
    """The first VMAF of a process cleans up after killed ones (once: the listing is not free)."""
    remove_stale_temporaries()


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
    _swept_once()
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        log_path = Path(tmp) / "vmaf.json"
        distorted_in, distorted_out = os.pipe()
        reference_in, reference_out = os.pipe()
        raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}"]
        to_yuv = "scale=out_color_matrix=bt709:out_range=tv,format=yuv444p"
        graph = (
            f"[0:v]{to_yuv}[dis];[1:v]{to_yuv}[ref];"
            f"[dis][ref]libvmaf=model={VMAF_MODEL}:log_fmt=json:log_path={log_path}:n_threads={threads}"
        )
        command = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", *raw, "-i", f"pipe:{distorted_in}"]
        command += [*raw, "-i", f"pipe:{reference_in}", "-lavfi", graph, "-f", "null", "-"]
        errors: list[BaseException] = []
        try:
            process = subprocess.Popen(
                _dying_with_parent(command),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(distorted_in, reference_in),
            )
        except BaseException:
            for fd in (distorted_out, reference_out):
                os.close(fd)
            raise
        finally:
            os.close(distorted_in)  # ffmpeg holds the read ends now
            os.close(reference_in)
        feeders = [
            threading.Thread(target=_feed, args=(distorted_out, recon, errors), daemon=True),
            threading.Thread(target=_feed, args=(reference_out, source, errors), daemon=True),
        ]
        for feeder in feeders:
            feeder.start()
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return None, f"vmaf: ffmpeg did not finish within {timeout_s:g} s"
        for feeder in feeders:
            feeder.join(timeout=10)  # ffmpeg is gone: a feeder's write fails at once (broken pipe)
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
