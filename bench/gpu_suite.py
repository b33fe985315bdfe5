"""The GPU run: every measurement the project wants from one GPU, in one go, into one JSON file.

Run it through `bench/gpu_suite.sh` (which sets the environment up); see docs/BENCHMARKS.md ("The GPU
suite"). Each step is one existing benchmark command, run in its own process group with its own time
limit, so a step that fails or hangs loses only itself; the file is rewritten after every step, so
even a suite cut from outside keeps what finished. Nothing is downloaded: the models are full-size
configurations with random weights, built here (valid for timing, never for quality).

Steps, most important first (the whole run is cut at `--budget`, 465 s by default: a step starts
only with 20 s left and is cut at its own limit or at the budget, whichever comes first):

- `environment`: nvidia-smi, torch/CUDA/cuDNN/Triton versions, the GPU, the git commit;
- `glvc-random-model`: the full-size random GLVC model (Wan2.1 VAE + the default latent codec),
  written where `vidarc bench gpu --random-model --workdir` looks for it, so the next steps reuse it;
- `glvc-720p`: `vidarc bench gpu --codec glvc --random-model` at 1280x720, one clip of 147 frames
  (three 49-frame GOPs): the codec alone (encode without reconstruction, decode) and the whole pipeline
  through Ray, GPU busy, peak memory, load time;
- `glvc-codec-720p`: `vidarc bench codec --codec glvc --device cuda` at 1280x720 (encode with
  reconstruction and decode frames/s, beside x265 on the same frames);
- `gvc-speed-480p`, then after `load-cuda` `gvc-speed-720p`: `python -m bench.gvc_speed --config
  wan-1.3b` (Wan 1.3B transformer configuration, full Wan2.1 VAE), one 33-frame GOP, K=16384, M=64,
  split into VAE, transformer and codebook search;
- `load-cuda`: `python -m bench.wan_official load --config wan-1.3b --device cuda`: seconds and peak
  memory of loading the 1.3B transformer onto the GPU, vidarc's loader against from_config + state dict;
- `bench-gpu-default`: `vidarc bench gpu` with its defaults (bundled model).

Each step's record also has the GPU memory in use after it (nvidia-smi), which shows a step that left
a process holding the GPU.

`--dry-run` runs every step's command on the CPU at the smallest sizes (random tiny models, 64x64,
5-frame GOPs): the plumbing, not the speed. There a step's `python -m MODULE ARGS` runs in a child
forked from the suite after it imported torch and diffusers once (`PRELOAD`): the same module, the same
arguments, its own process group, limit and output files, without a start-up (about 8 CPU seconds of
imports) per step. A real run starts every step as a fresh process: load times are among what it
measures. The exit code is 0 when every step ran and its JSON has
every field the step is expected to fill, 1 otherwise (2: bad arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import math
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 465  # the whole run, so that it ends within 8 minutes with the kill grace and start-up
MIN_START_S = 20  # a step starts only with this much of the budget left
KILL_GRACE_S = 10  # after SIGTERM to a step's process group, SIGKILL
DRY_SLACK = 4  # a dry run's steps get 4x their limits (a slow, shared CPU machine)
TAIL_LINES = 40  # stderr lines kept per step
LINE_CHARS = 500  # and characters per line
BOX = "│╭╮╰╯─┃━┏┓┗┛ "  # the frame of a command-line error box
VERSION = 1


@dataclasses.dataclass
class Step:
    name: str
    title: str
    budget_s: int
    command: list[str]
    #: Fields (dotted paths into the step's JSON) a real run fills; the key must be present (a value
    #: may be null where the dry run cannot fill it, e.g. GPU memory on a CPU).
    expect: tuple[str, ...]


GLVC_ALONE = ("codec_load_seconds", "codec_warmup_seconds", "codec_encode_fps", "codec_decode_fps")
GLVC_PIPELINE = (
    "pipeline_fps", "pipeline_steady_fps", "pipeline_startup_seconds", "device_stage_busy_of_wall",
    "nvml_busy_fraction", "actor_busy_fraction", "peak_gpu_gib", "tokenizer_tiled", "tokenizer_compiled",
    "gpu_name", "torch_version", "device", "model",
)  # fmt: skip
GVC_SPEED = (
    "encode_s", "decode_s", "encode_breakdown_s", "decode_breakdown_s", "decode_matches_encoder", "search",
    "select", "bpp", "device", "geometry",
)  # fmt: skip


def steps(dry: bool, work: Path, python: str) -> list[Step]:
    """The suite's steps: the real run's commands, or with `dry` the same commands on a CPU, tiny."""
    py, cli = [python, "-m"], [python, "-m", "jobs.cli"]
    suite = [*py, "bench.gpu_suite"]
    glvc_model = work / ("glvc-random-tiny" if dry else "vidarc-random-glvc")  # bench gpu's cache name
    if dry:
        model = [*suite, "_random_glvc", str(glvc_model), "--tiny"]
        tiny = ["--size", "64x64", "--videos", "1", "--frames", "5", "--gop-frames", "5", "--device", "cpu"]
        glvc_720p = [*cli, "bench", "gpu", "--codec", "glvc", "--model", str(glvc_model), *tiny,
                     "--metrics-every", "10", "--workdir", str(work), "--json"]  # fmt: skip
        glvc_codec = [*cli, "bench", "codec", "--codec", "glvc", "--device", "cpu", "--size", "64x64",
                      "--frames", "5", "--gops", "2", "--model", str(glvc_model), "--json"]  # fmt: skip
        gvc = [*py, "bench.gvc_speed", "--config", "tiny", "--device", "cpu", "--frames", "5", "--atoms", "64",
               "--m", "4", "--steps", "3", "--ode-tail", "1", "--warmup", "1", "--threads", "1"]  # fmt: skip
        gvc_480p, gvc_720p = (
            [*gvc, "--width", "48", "--height", "32"],
            [*gvc, "--width", "64", "--height", "48"],
        )
        load = [*py, "bench.wan_official", "load", "--config", "tiny", "--device", "cpu",
                "--dtype", "bfloat16", "--stored-dtype", "bfloat16", "--work", str(work / "wan"), "--json"]  # fmt: skip
        default = [*cli, "bench", "gpu", *tiny, "--workdir", str(work), "--json"]
    else:
        model = [*suite, "_random_glvc", str(glvc_model)]
        glvc_720p = [*cli, "bench", "gpu", "--codec", "glvc", "--random-model", "--workdir", str(work),
                     "--size", "1280x720", "--videos", "1", "--frames", "147", "--metrics-every", "10",
                     "--device", "cuda", "--json"]  # fmt: skip
        # --gops 3, so that the median is a plain GOP: the bench warms up on its first GOP and then times
        # that GOP again (GLVC reuses its tokenizer latents: a fast outlier), and the tokenizer compiles
        # on its second encode, the second timed GOP (a slow outlier).
        glvc_codec = [*cli, "bench", "codec", "--codec", "glvc", "--device", "cuda", "--size", "1280x720",
                      "--frames", "17", "--gops", "3", "--model", str(glvc_model), "--json"]  # fmt: skip
        gvc = [*py, "bench.gvc_speed", "--config", "wan-1.3b", "--device", "cuda", "--frames", "33",
               "--atoms", "16384", "--m", "64", "--warmup", "1", "--threads", "8"]  # fmt: skip
        gvc_480p = [*gvc, "--width", "832", "--height", "480"]
        gvc_720p = [*gvc, "--width", "1280", "--height", "720"]
        load = [*py, "bench.wan_official", "load", "--config", "wan-1.3b", "--device", "cuda",
                "--dtype", "bfloat16", "--stored-dtype", "bfloat16", "--work", str(work / "wan"), "--json"]  # fmt: skip
        default = [*cli, "bench", "gpu", "--json"]
    load_fields = (
        "parameters", "peak_rss_ratio", "methods.vidarc.seconds", "methods.vidarc.peak_gpu_gib",
        "methods.vidarc.peak_rss_gib", "methods.state-dict.seconds", "methods.state-dict.peak_gpu_gib",
    )  # fmt: skip
    codec_fields = (
        "device", "size", "codec_speed.encode_fps", "codec_speed.decode_fps", "codec_speed.parallel_decode_fps",
        "codec_speed.bpp", "x265.encode_fps", "x265.decode_fps", "encode_ratio_to_x265", "decode_ratio_to_x265",
    )  # fmt: skip
    env_fields = (
        "nvidia_smi", "torch", "cuda", "cudnn", "cuda_available", "gpus", "triton", "diffusers", "python",
        "cpu_count", "git_commit", "git_dirty",
    )  # fmt: skip
    return [
        Step("environment", "GPU, driver, torch/CUDA versions, git commit", 30,
             [*suite, "_environment"], env_fields),
        Step("glvc-random-model", "full-size random GLVC model (Wan2.1 VAE + latent codec), written once", 60,
             model, ("path", "bytes", "seconds", "reused")),
        Step("glvc-720p", "GLVC 720p, random Wan2.1 VAE: codec alone and the whole pipeline (vidarc bench gpu)",
             210, glvc_720p, GLVC_ALONE + GLVC_PIPELINE),
        Step("glvc-codec-720p", "GLVC 720p alone, encode/decode frames/s beside x265 (vidarc bench codec)", 75,
             glvc_codec, codec_fields),
        Step("gvc-speed-480p", "GVC 832x480, Wan 1.3B config, one 33-frame GOP (bench.gvc_speed)", 100,
             gvc_480p, GVC_SPEED),
        Step("load-cuda", "loading the Wan 1.3B transformer onto the GPU, two ways (bench.wan_official load)",
             90, load, load_fields),
        Step("gvc-speed-720p", "GVC 1280x720, Wan 1.3B config, one 33-frame GOP (bench.gvc_speed)", 150,
             gvc_720p, GVC_SPEED),
        Step("bench-gpu-default", "vidarc bench gpu with its defaults (bundled model)", 100, default,
             GLVC_ALONE + GLVC_PIPELINE),
    ]  # fmt: skip


# -- running one step -------------------------------------------------------------------------------


def last_json(text: str) -> Any:
    """The last JSON object printed (a one-line report or an indented one), or None."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                try:  # one JSON line followed by other output
                    return json.loads(lines[i])
                except json.JSONDecodeError:
                    continue
    return None


def error_line(stderr: str, stdout: str) -> str | None:
    """The one line that says why a tool failed: its `error:` line, else the last line of stderr (a
    traceback's exception), else of stdout."""
    found = [[line for line in map(_plain, text.splitlines()) if line] for text in (stderr, stdout)]
    for lines in found:
        errors = [line for line in lines if line.startswith("error:")]
        if errors:
            return errors[-1][:LINE_CHARS]
    lines = found[0] or found[1]
    return lines[-1][:LINE_CHARS] if lines else None


def _plain(line: str) -> str:
    """A line without the frame of a rich/typer error box (`│ No such option … │`)."""
    return line.strip().strip(BOX).strip()


def lookup(record: Any, path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted path in a JSON record."""
    for key in path.split("."):
        if not isinstance(record, dict) or key not in record:
            return False, None
        record = record[key]
    return True, record


def run_step(step: Step, limit_s: float, logs: Path, *, forked: bool = False) -> dict[str, Any]:
    """Run one step in its own process group (a timeout ends Ray's processes with it); its record.
    `forked`: a `python -m` step runs in a child forked from this process (`ForkedModule`)."""
    out_path, err_path = logs / f"{step.name}.out", logs / f"{step.name}.err"
    started = time.monotonic()
    record: dict[str, Any] = {"started_at": _now(), "limit_s": round(limit_s, 1)}
    timed_out, stopped = False, None
    with out_path.open("wb") as out, err_path.open("wb") as err:
        try:
            if forked and ForkedModule.runs(step.command):
                proc = ForkedModule(step.command, out, err)
            else:
                proc = subprocess.Popen(
                    step.command,
                    cwd=ROOT,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError as exc:
            return {**record, "status": "failed", "exit_code": None, "seconds": 0.0,
                    "error": f"could not start: {exc}", "output": None, "missing": [], "stderr_tail": []}  # fmt: skip
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            code = proc.returncode
        except Stopped as stop:  # the suite itself is being stopped: take the step down with it
            stopped = stop.signum
            _kill_group(proc)
            code = proc.returncode
        _kill_group(proc)  # anything the step left running in its group (Ray's processes)
    seconds = round(time.monotonic() - started, 2)
    record["gpu_memory_used_after"] = gpu_memory_used()
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    output = last_json(stdout)
    missing = (
        [path for path in step.expect if not lookup(output, path)[0]] if isinstance(output, dict) else []
    )
    tail = [line[:LINE_CHARS] for line in stderr.splitlines()[-TAIL_LINES:]]
    if stopped is not None:
        status, error = "stopped", f"the suite was stopped (signal {stopped}) while this step ran"
    elif timed_out:
        status = "timeout"
        last = error_line(stderr, "")
        error = f"timed out after {limit_s:.0f} s" + (f" (last line: {last})" if last else "")
    elif code != 0:
        status, error = "failed", error_line(stderr, stdout) or f"exit code {code}"
    elif not isinstance(output, dict):
        status, error = "failed", "no JSON object in the output"
    elif missing:
        status, error = "failed", f"the output lacks {', '.join(missing)}"
    else:
        status, error = "ok", None
    return {**record, "status": status, "exit_code": code, "seconds": seconds, "error": error,
            "output": output, "missing": missing, "stderr_tail": tail}  # fmt: skip


#: What a dry run imports once before forking its steps (MODULE or MODULE:ATTRIBUTE, for diffusers'
#: lazy classes): what every step's tool spends its start-up on. Importing them runs no torch kernel, so
#: no OpenMP thread pool exists to break in a forked child (only OpenBLAS's, which is fork-safe).
PRELOAD = (
    "torch", "diffusers:AutoencoderKLWan", "diffusers:WanTransformer3DModel", "safetensors.torch", "jobs.cli",
)  # fmt: skip


def preload() -> None:
    for spec in PRELOAD:
        module, _, attribute = spec.partition(":")
        loaded = importlib.import_module(module)
        if attribute:
            getattr(loaded, attribute)


class ForkedModule:
    """`python -m MODULE ARGS` run as a child forked from this process, in a session of its own (so
    `_kill_group` ends it and what it started), with the step's stdin, stdout, stderr and working
    directory; what `run_step` needs of a `subprocess.Popen` (pid, poll, wait, returncode)."""

    def __init__(self, command: list[str], stdout, stderr) -> None:
        module, args = command[2], command[3:]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written twice
        pid = os.fork()
        if pid == 0:
            self._child(module, args, stdout.fileno(), stderr.fileno())
        self.pid, self.returncode, self.args = pid, None, command

    @staticmethod
    def runs(command: list[str]) -> bool:
        return len(command) >= 3 and command[0] == sys.executable and command[1] == "-m"

    @staticmethod
    def _child(module: str, args: list[str], out: int, err: int) -> None:
        code = 1
        try:
            os.setsid()
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)  # not the suite's `_stop`
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(ROOT)
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:  # what `python -m` makes of it
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode


class Stopped(Exception):
    """The suite got SIGTERM, SIGHUP or SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (lets Ray shut down), then SIGKILL after a grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def gpu_memory_used() -> list[str] | None:
    """nvidia-smi's memory.used per GPU (None without nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else None
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- the suite -----------------------------------------------------------------------------------------


HEADLINES = {  # the numbers the GPU goals ask for (docs/BENCHMARKS.md), picked out of the steps
    "glvc_720p_encode_alone_fps": ("glvc-720p", "codec_encode_fps"),
    "glvc_720p_decode_fps": ("glvc-720p", "codec_decode_fps"),
    "glvc_720p_pipeline_fps": ("glvc-720p", "pipeline_fps"),
    "glvc_720p_pipeline_steady_fps": ("glvc-720p", "pipeline_steady_fps"),
    "glvc_720p_gpu_busy": ("glvc-720p", "device_stage_busy_of_wall"),
    "glvc_720p_nvml_busy": ("glvc-720p", "nvml_busy_fraction"),
    "glvc_720p_load_s": ("glvc-720p", "codec_load_seconds"),
    "glvc_codec_720p_encode_fps": ("glvc-codec-720p", "codec_speed.encode_fps"),
    "glvc_codec_720p_decode_fps": ("glvc-codec-720p", "codec_speed.decode_fps"),
    "gvc_480p_encode_s": ("gvc-speed-480p", "encode_s"),
    "gvc_480p_decode_s": ("gvc-speed-480p", "decode_s"),
    "gvc_720p_encode_s": ("gvc-speed-720p", "encode_s"),
    "gvc_720p_decode_s": ("gvc-speed-720p", "decode_s"),
    "wan_1_3b_load_s": ("load-cuda", "methods.vidarc.seconds"),
    "wan_1_3b_load_state_dict_s": ("load-cuda", "methods.state-dict.seconds"),
    "default_encode_alone_fps": ("bench-gpu-default", "codec_encode_fps"),
    "default_pipeline_fps": ("bench-gpu-default", "pipeline_fps"),
}


def run_suite(args: argparse.Namespace) -> int:
    dry = args.dry_run
    out = Path(
        args.out
        or (Path(os.environ["OUT"]) / "gpu_suite.json" if os.environ.get("OUT") else "gpu_suite.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.workdir:
        work = Path(args.workdir)
    elif dry:
        work = scratch = Path(tempfile.mkdtemp(prefix="vidarc-gpu-suite-dry-"))
    else:
        work = Path(tempfile.gettempdir()) / "vidarc-gpu-suite"
    work.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="logs-", dir=work))
    plan = steps(dry, work.resolve(), sys.executable)
    names = [s.name for s in plan]
    if args.only:
        wanted = [n.strip() for n in ",".join(args.only).split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"error: --only {', '.join(unknown)}: the steps are {', '.join(names)}", file=sys.stderr)
            return 2
        plan = [s for s in plan if s.name in wanted]
    budget = args.budget if args.budget is not None else (BUDGET_S if not dry else 1800)
    report: dict[str, Any] = {
        "suite": "vidarc gpu suite", "version": VERSION, "dry_run": dry, "started_at": _now(),
        "finished_at": None, "seconds": None, "budget_s": budget, "ok": None, "workdir": str(work),
        "headlines": {}, "steps": {},
    }  # fmt: skip
    for step in plan:
        report["steps"][step.name] = {
            "title": step.title, "command": shlex.join(step.command), "budget_s": step.budget_s,
            "expect": list(step.expect), "status": "pending",
        }  # fmt: skip
    _write(out, report)
    begun = time.monotonic()
    handlers = {
        signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    }
    try:
        preloaded = dry and getattr(args, "preload", False)
        if preloaded:
            print(
                f"[{_clock(begun)}] dry run: importing {', '.join(PRELOAD) or 'nothing'} once",
                file=sys.stderr,
            )
            preload()
        _run_steps(plan, report, out, logs, dry, budget, begun, preloaded)
    except Stopped:  # between two steps
        pass
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    for entry in report["steps"].values():
        if entry["status"] == "pending":
            entry.update(status="skipped", error="the suite was stopped before this step")
    report["ok"] = all(entry["status"] == "ok" for entry in report["steps"].values())
    report["finished_at"] = _now()
    report["seconds"] = round(time.monotonic() - begun, 1)
    _write(out, report)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    failed = [f"{name} ({e['status']})" for name, e in report["steps"].items() if e["status"] != "ok"]
    print(f"{out}: {len(plan) - len(failed)}/{len(plan)} steps ok in {report['seconds']:.0f} s"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), file=sys.stderr)  # fmt: skip
    return 0 if report["ok"] else 1


def _run_steps(
    plan: list[Step],
    report: dict[str, Any],
    out: Path,
    logs: Path,
    dry: bool,
    budget: float,
    begun: float,
    preloaded: bool = False,
) -> None:
    """Run the steps in order, within the budget, writing the report after each."""
    no_gpu = None
    forked = dry and preloaded
    for step in plan:
        entry = report["steps"][step.name]
        left = budget - (time.monotonic() - begun)
        if no_gpu is not None:
            entry.update(status="skipped", error=no_gpu)
        elif left < MIN_START_S:
            entry.update(status="skipped", error=f"the suite's budget was spent ({left:.0f} s left)")
        else:
            limit = min(step.budget_s * (DRY_SLACK if dry else 1), left)
            print(f"[{_clock(begun)}] {step.name}: {entry['command']}", file=sys.stderr, flush=True)
            entry.update(run_step(step, limit, logs, forked=forked))
            line = f"[{_clock(begun)}] {step.name}: {entry['status']} in {entry['seconds']:.1f} s"
            print(line + (f": {entry['error']}" if entry["error"] else ""), file=sys.stderr, flush=True)
            output = entry["output"] or {}
            if (
                step.name == "environment"
                and not dry
                and entry["status"] == "ok"
                and not output["cuda_available"]
            ):
                no_gpu = "no CUDA device (torch.cuda.is_available() is false); use --dry-run on a CPU"
        report["headlines"] = _headlines(report["steps"])
        report["seconds"] = round(time.monotonic() - begun, 1)
        _write(out, report)
        if entry["status"] == "stopped":
            return


def _headlines(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, (name, path) in HEADLINES.items():
        output = entries.get(name, {}).get("output")
        result[key] = lookup(output, path)[1] if isinstance(output, dict) else None
    return result


def _write(path: Path, report: dict[str, Any]) -> None:
    """Strict JSON (non-finite floats as null), replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _clock(begun: float) -> str:
    return f"{time.monotonic() - begun:6.1f} s"


# -- helper steps (run as `python -m bench.gpu_suite _name ...` by the steps above) ---------------------


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md
    import platform

    def run(*command: str) -> str | None:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    smi = None
    if shutil.which("nvidia-smi"):
        for fields in (
            "name,memory.total,memory.used,driver_version,utilization.gpu,power.limit,clocks.max.sm,"
            "mig.mode.current,compute_cap",
            "name,memory.total,memory.used,driver_version",
        ):
            text = run("nvidia-smi", f"--query-gpu={fields}", "--format=csv")
            if text:
                header, *rows = text.splitlines()
                keys = [k.strip() for k in header.split(",")]
                smi = [dict(zip(keys, (v.strip() for v in row.split(",")), strict=False)) for row in rows]
                break
    import torch

    versions = {}
    for dist in ("triton", "diffusers", "ray", "transformers", "numpy", "av"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    cuda = torch.cuda.is_available()
    gpus = []
    for index in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count})  # fmt: skip
    commit = os.environ.get("VIDARC_COMMIT") or run("git", "rev-parse", "HEAD")
    status = run("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpus": gpus,
        **versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


def random_glvc(directory: Path, tiny: bool) -> dict[str, Any]:
    """The full-size random GLVC model where `vidarc bench gpu --random-model` caches it (or, `tiny`,
    the tiny random one); reused when already there."""
    started = time.perf_counter()
    reused = (directory / "model_card.json").is_file()
    if not reused:
        if tiny:
            from codec.glvc.random_model import build_random_model

            staging = directory.with_name(directory.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            build_random_model(staging, name="glvc-random-tiny")
            staging.rename(directory)
        else:
            from pipeline.benchmarks.gpu_goals import random_model

            random_model("glvc", directory, "cuda")
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return {"path": str(directory), "bytes": size, "seconds": round(time.perf_counter() - started, 2),
            "reused": reused, "tiny": tiny}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_environment"]:
        print(json.dumps(_finite(environment())))
        return 0
    if argv[:1] == ["_random_glvc"]:
        print(json.dumps(random_glvc(Path(argv[1]), "--tiny" in argv[2:])))
        return 0
    parser = argparse.ArgumentParser(
        prog="bench/gpu_suite.sh",
        description=__doc__.split("\n\n")[0],
        epilog="Steps: " + ", ".join(s.name for s in steps(False, Path("W"), "python")),
    )
    parser.add_argument("--out", help="the JSON file (default: $OUT/gpu_suite.json, else ./gpu_suite.json)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--only", action="append", help="run these steps only (comma-separated, repeatable)")
    parser.add_argument("--budget", type=float, help=f"seconds for the whole run (default {BUDGET_S})")
    parser.add_argument(
        "--workdir", help="random models, clips (default: $TMPDIR/vidarc-gpu-suite; dry run: a temp dir)"
    )
    args = parser.parse_args(argv)
    args.preload = args.dry_run  # a dry run's steps fork from this process: see `ForkedModule`
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
