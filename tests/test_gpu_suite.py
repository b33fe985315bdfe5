"""`bench/gpu_suite.sh`, the GPU run: its plumbing on the CPU (`--dry-run`: every step's real tool at
tiny sizes) and its runner (a failed, hung or incomplete step is recorded and the others still run).

The dry run imports torch and diffusers once and forks every step's tool from there (`ForkedModule`:
the same module and arguments, a process group of its own); `load-cuda`'s two measurements still start
fresh processes, and the two `bench gpu` steps a Ray cluster each. The suite runs the steps whose tools
no other test runs (`CORE_STEPS`: `bench codec` on a model path, GVC's speed bench, `wan_official load`, the
environment); the two `bench gpu` steps (each its own Ray cluster; `run_gpu_bench` is tested in
test_gpu_throughput.py) join them with VIDARC_FULL_DRY_RUN=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from bench import gpu_suite
from bench.gpu_suite import Step

ROOT = Path(__file__).resolve().parents[1]
CORE_STEPS = ("environment", "glvc-random-model", "glvc-codec-720p", "gvc-speed-720p", "load-cuda")
FULL = os.environ.get("VIDARC_FULL_DRY_RUN") == "1"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-finite {name}"))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dry_run_runs_every_step_and_fills_the_fields_of_the_real_run(tmp_path: Path) -> None:
    out = tmp_path / "result" / "gpu_suite.json"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(out), "--workdir",
         str(tmp_path / "work"), *([] if FULL else ["--only", ",".join(CORE_STEPS)])],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    seconds = time.monotonic() - started
    report = _read(out)
    problems = {
        name: (e["status"], e.get("error")) for name, e in report["steps"].items() if e["status"] != "ok"
    }
    assert done.returncode == 0 and report["ok"] is True, (problems, done.stderr[-3000:])
    assert report["dry_run"] is True and report["finished_at"] and 0 < report["seconds"] <= seconds
    real = [s for s in gpu_suite.steps(False, tmp_path, sys.executable) if FULL or s.name in CORE_STEPS]
    assert list(report["steps"]) == [s.name for s in real]
    for step in real:
        entry = report["steps"][step.name]
        assert entry["status"] == "ok" and entry["error"] is None and entry["exit_code"] == 0
        assert entry["seconds"] > 0 and entry["command"] and entry["limit_s"] > 0
        assert entry["expect"] == list(step.expect)  # the dry run checks what the real run fills
        for path in step.expect:
            assert gpu_suite.lookup(entry["output"], path)[0], (step.name, path)
    steps = report["steps"]
    assert (
        steps["environment"]["output"]["torch"] and steps["environment"]["output"]["cuda_available"] is False
    )
    assert steps["glvc-codec-720p"]["output"]["codec_speed"]["decode_fps"] > 0
    assert steps["gvc-speed-720p"]["output"]["decode_matches_encoder"] is True
    assert steps["load-cuda"]["output"]["methods"]["vidarc"]["seconds"] > 0
    assert set(report["headlines"]) == set(gpu_suite.HEADLINES)
    assert report["headlines"]["gvc_720p_encode_s"] == steps["gvc-speed-720p"]["output"]["encode_s"]
    if FULL:
        assert (
            steps["glvc-720p"]["output"]["codec_encode_fps"] > 0
            and steps["glvc-720p"]["output"]["pipeline_fps"] > 0
        )
        assert steps["bench-gpu-default"]["output"]["model"] == "bundled"


def _fake_steps(pid_file: Path):
    """Steps that print JSON among other output, fail with an error line, hang with a child process,
    print JSON short of a field, and succeed after all that."""
    indented = (
        "import json; print('progress'); print(json.dumps({'a': {'b': 1.5}, 'n': float('nan')}, indent=2))"
    )
    hang = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', file=sys.stderr, flush=True); "
        "time.sleep(120)"
    )

    def fake(dry: bool, work: Path, python: str) -> list[Step]:
        return [
            Step("prints", "JSON after a progress line", 30, [python, "-c", indented], ("a.b", "n")),
            Step("fails", "an error line", 30,
                 [python, "-c", "import sys; print('error: the tool said no', file=sys.stderr); sys.exit(2)"], ()),
            Step("hangs", "cut at its limit", 1, [python, "-c", hang], ()),
            Step("lacks", "a field short", 30, [python, "-c", "print('{\"x\": 1}')"], ("x", "y.z")),
            Step("after", "still runs", 30, [python, "-c", "print('{}')"], ()),
        ]  # fmt: skip

    return fake


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_failed_hung_or_incomplete_step_is_recorded_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_suite, "steps", _fake_steps(tmp_path / "child.pid"))
    monkeypatch.setattr(gpu_suite, "KILL_GRACE_S", 2)
    out = tmp_path / "suite.json"
    args = Namespace(dry_run=True, out=str(out), workdir=str(tmp_path / "work"), only=None, budget=None)
    assert gpu_suite.run_suite(args) == 1
    report = _read(out)
    assert report["ok"] is False and report["finished_at"]
    steps = report["steps"]
    assert [(name, e["status"]) for name, e in steps.items()] == [
        ("prints", "ok"), ("fails", "failed"), ("hangs", "timeout"), ("lacks", "failed"), ("after", "ok"),
    ]  # fmt: skip
    assert steps["prints"]["output"] == {"a": {"b": 1.5}, "n": None}  # strict JSON: NaN written as null
    assert steps["fails"]["error"] == "error: the tool said no" and steps["fails"]["exit_code"] == 2
    assert steps["hangs"]["error"].startswith("timed out after 4 s") and "started" in steps["hangs"]["error"]
    assert steps["hangs"]["seconds"] < 30
    assert not _alive(int((tmp_path / "child.pid").read_text()))  # the step's whole process group went
    assert steps["lacks"]["error"] == "the output lacks y.z" and steps["lacks"]["missing"] == ["y.z"]
    assert all(e["gpu_memory_used_after"] is None for e in steps.values())  # no nvidia-smi here


FORKED_DRIVER = """
import sys
from pathlib import Path
from bench import gpu_suite
from bench.gpu_suite import Step

py = sys.executable
gpu_suite.PRELOAD, gpu_suite.DRY_SLACK, gpu_suite.KILL_GRACE_S = (), 1, 2
gpu_suite.steps = lambda dry, work, python: [
    Step("prints", "JSON after a line", 30, [py, "-m", "step_prints", "--n", "3"], ("argv", "main")),
    Step("fails", "an error line", 30, [py, "-m", "step_fails"], ()),
    Step("raises", "a traceback", 30, [py, "-m", "step_raises"], ()),
    Step("hangs", "cut at its limit", 2, [py, "-m", "step_hangs", sys.argv[1]], ()),
    Step("after", "still runs", 30, [py, "-c", "print('{}')"], ()),
]
sys.exit(gpu_suite.main(["--dry-run", "--out", sys.argv[2], "--workdir", sys.argv[3]]))
"""
FORKED_STEPS = {
    "step_prints": "import json, os, sys\nprint('progress')\n"
    "print(json.dumps({'argv': sys.argv[1:], 'main': __name__, 'cwd': os.getcwd()}))",
    "step_fails": "import sys\nprint('error: the tool said no', file=sys.stderr)\nsys.exit(2)",
    "step_raises": "raise ValueError('bad input')",
    "step_hangs": "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\ntime.sleep(120)",
}


def test_a_dry_runs_forked_steps_run_their_module_and_fail_hang_and_exit_like_processes(
    tmp_path: Path,
) -> None:
    """A dry run forks each `python -m` step from the suite (`ForkedModule`): the module runs as
    __main__ with its arguments in the repository, and its exit code, error line, traceback and limit
    (its whole process group ended) are recorded as for a fresh process."""
    for name, text in FORKED_STEPS.items():
        (tmp_path / f"{name}.py").write_text(text + "\n")
    out, pid_file = tmp_path / "suite.json", tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", FORKED_DRIVER, str(pid_file), str(out), str(tmp_path / "work")],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    steps = _read(out)["steps"]
    assert [(name, e["status"]) for name, e in steps.items()] == [
        ("prints", "ok"), ("fails", "failed"), ("raises", "failed"), ("hangs", "timeout"), ("after", "ok"),
    ]  # fmt: skip
    assert steps["prints"]["output"] == {"argv": ["--n", "3"], "main": "__main__", "cwd": str(ROOT)}
    assert steps["fails"]["error"] == "error: the tool said no" and steps["fails"]["exit_code"] == 2
    assert steps["raises"]["error"] == "ValueError: bad input" and steps["raises"]["exit_code"] == 1
    assert steps["hangs"]["error"].startswith("timed out after 2 s") and steps["hangs"]["seconds"] < 30
    assert not _alive(int(pid_file.read_text()))  # the forked step's whole process group went


def test_only_and_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_suite, "steps", _fake_steps(tmp_path / "child.pid"))
    out = tmp_path / "suite.json"
    args = Namespace(dry_run=True, out=str(out), workdir=str(tmp_path), only=["prints,after"], budget=None)
    assert gpu_suite.run_suite(args) == 0
    assert {name: e["status"] for name, e in _read(out)["steps"].items()} == {"prints": "ok", "after": "ok"}
    args = Namespace(dry_run=True, out=str(out), workdir=str(tmp_path), only=["prints"], budget=5)
    assert gpu_suite.run_suite(args) == 1  # under 20 s left: nothing starts
    entry = _read(out)["steps"]["prints"]
    assert entry["status"] == "skipped" and "budget" in entry["error"]
    args = Namespace(dry_run=True, out=str(out), workdir=str(tmp_path), only=["nope"], budget=None)
    assert gpu_suite.run_suite(args) == 2


def test_the_real_run_measures_on_cuda_at_the_sizes_asked_for(tmp_path: Path) -> None:
    commands = {s.name: s.command for s in gpu_suite.steps(False, tmp_path, "python")}
    text = {name: " ".join(command) for name, command in commands.items()}
    assert (
        "bench gpu --codec glvc --random-model" in text["glvc-720p"]
        and "--size 1280x720" in text["glvc-720p"]
    )
    assert "bench codec --codec glvc --device cuda --size 1280x720" in text["glvc-codec-720p"]
    assert f"--model {tmp_path / 'vidarc-random-glvc'}" in text["glvc-codec-720p"]  # bench gpu's cache
    for name, size in (
        ("gvc-speed-480p", "--width 832 --height 480"),
        ("gvc-speed-720p", "--width 1280 --height 720"),
    ):
        assert (
            "--config wan-1.3b --device cuda --frames 33 --atoms 16384 --m 64" in text[name]
            and size in text[name]
        )
    assert "load --config wan-1.3b --device cuda" in text["load-cuda"]
    assert commands["bench-gpu-default"][-4:] == ["jobs.cli", "bench", "gpu", "--json"]
    assert gpu_suite.BUDGET_S + gpu_suite.KILL_GRACE_S <= 8 * 60 - 5


def test_a_stopped_suite_ends_the_running_step_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to the suite (an outer timeout): the running step's process group goes, the file says
    which step was cut and that the rest never ran."""
    import signal
    import threading

    fake = _fake_steps(tmp_path / "child.pid")
    monkeypatch.setattr(
        gpu_suite, "steps", lambda *a: [s for s in fake(*a) if s.name in ("prints", "hangs", "after")]
    )
    monkeypatch.setattr(gpu_suite, "KILL_GRACE_S", 2)
    out = tmp_path / "suite.json"
    args = Namespace(dry_run=True, out=str(out), workdir=str(tmp_path / "work"), only=None, budget=None)
    pid_file = tmp_path / "child.pid"

    def stop_when_the_child_runs() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_the_child_runs, daemon=True).start()
    assert gpu_suite.run_suite(args) == 1
    steps = _read(out)["steps"]
    assert [e["status"] for e in steps.values()] == ["ok", "stopped", "skipped"]
    assert (
        steps["hangs"]["error"] == f"the suite was stopped (signal {int(signal.SIGTERM)}) while this step ran"
    )
    assert steps["after"]["error"] == "the suite was stopped before this step"
    assert not _alive(int(pid_file.read_text()))
    assert signal.getsignal(signal.SIGTERM) is not gpu_suite._stop  # the handlers are put back
