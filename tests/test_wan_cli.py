"""The official Wan2.1 layouts through the command line: `archive` → `verify` → `restore` with GVC in
T2V, I2V and FLF2V, each decoder rebuilt from the archive alone plus `--model`; a swapped component
and an unsupported mode are refused in one line. Tiny random-weight models in the official layouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from wan_layouts import write_vae

REPO = Path(__file__).resolve().parents[1]
#: Random weights: their quality means nothing, so no quality floor (`--min-psnr 0`).
FAST = ["--gvc-steps", "4", "--gvc-atoms", "64", "--quality", "4", "--gop-frames", "9", "--min-psnr", "0"]


def _run(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _run_side_by_side(*commands: tuple[str, ...], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """`_run` of each (module, *args) at the same time: for commands that do not depend on each other
    (each is mostly its own start-up), so the test waits for the slowest rather than for the sum."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([sys.executable, "-m", *c], cwd=REPO, env=env, **pipes) for c in commands]
    try:
        done = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        return done
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def source(tmp_path_factory, clip: np.ndarray) -> Path:
    from pipeline.sources.synthetic import write_video

    root = tmp_path_factory.mktemp("wan-src")
    write_video(root / "clip.mp4", clip[:9], fps=24)
    return root


@pytest.fixture(scope="module")
def archives(source, wan_dirs, tmp_path_factory, ray_address, fast_metrics) -> dict[str, Path]:
    """One archive per checkpoint, default mode (the model's best), closing verify of every GOP. T2V goes
    through the command line; I2V and FLF2V through the same `run_archive` in this process (a CLI
    process per mode would only repeat the start-up)."""
    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig, rate_target_from_options

    outs = {}
    skips = [a for m in fast_metrics for a in ("--skip-metric", m)]
    for kind, model in wan_dirs.items():
        out = tmp_path_factory.mktemp(f"arc-{kind}")
        if kind == "t2v":
            proc = _run("jobs.archive", str(source), str(out), "--codec", "gvc", "--model", str(model), *FAST,
                        "--verify-fraction", "1", "--address", ray_address, *skips)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            config = ArchiveConfig(
                src=str(source), out=str(out), codec="gvc", model=str(model), gop_frames=9,
                target=rate_target_from_options(None, None, 4), codec_options={"steps": 4, "atoms": 64},
                verify_fraction=1.0, address=ray_address, skip_metrics=tuple(fast_metrics), min_psnr=0,
            )  # fmt: skip
            result = run_archive(config)
            assert result.exit_code == 0, result.message
        outs[kind] = out
    return outs


@pytest.mark.parametrize("kind", ["t2v", "i2v", "flf2v"])
def test_archive_verify_restore_with_the_official_layout(archives, wan_dirs, tmp_path, kind):
    from pipeline.read.restore import restore_video
    from pipeline.tools.verify import run_verify

    out, model = archives[kind], wan_dirs[kind]
    summary = json.loads(next((out / "runs").glob("*/summary.json")).read_text())
    assert summary["verify"]["failures"] == [] and summary["verify"]["rows"] == 1  # with the run's model
    row = pq.read_table(next((out / "manifest").glob("*.parquet"))).to_pylist()[0]
    params = json.loads(row["codec_params"])
    assert params["mode"] == kind and params["steps"] == 4 and params["K"] == 64
    assert (params["reference_bytes"] > 0) == (kind != "t2v")
    dest = tmp_path / "restored.mkv"
    if kind == "t2v":  # the whole chain on the command line once; the same functions in-process after
        # verify and restore only read the archive (verify writes its rows under verify/): side by side
        verified, restored = _run_side_by_side(
            ("jobs.verify", str(out), "--model", str(model)),
            ("jobs.restore", str(out), "clip.mp4", str(dest), "--model", str(model)),
        )
        assert verified.returncode == 0, verified.stderr[-2000:]
        assert restored.returncode == 0, restored.stderr[-2000:]
    else:
        report = run_verify(str(out), model=str(model))
        assert report.ok and [r["decode_ok"] for r in report.rows] == [True]
        restore_video(str(out), "clip.mp4", str(dest), model=str(model))
    with av.open(str(dest)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (48, 64, 3)


def test_a_swapped_component_is_refused_at_decode(archives, wan_dirs, tmp_path):
    from pipeline.read.restore import RestoreError, restore_video

    swapped = tmp_path / "swapped"
    shutil.copytree(wan_dirs["t2v"], swapped, ignore=shutil.ignore_patterns(".vidarc"))
    shutil.rmtree(swapped / "vae")
    write_vae(swapped / "vae", seed=3)
    with pytest.raises(RestoreError, match=r"sha256.*give --model"):
        restore_video(str(archives["t2v"]), "clip.mp4", str(tmp_path / "x.mkv"), model=str(swapped))
    assert not (tmp_path / "x.mkv").exists()


def test_an_unsupported_mode_is_refused_before_loading(source, wan_dirs, tmp_path):
    proc = _run("jobs.archive", str(source), str(tmp_path / "out"), "--codec", "gvc", "--model",
                str(wan_dirs["flf2v"]), "--gvc-mode", "t2v", *FAST)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert any("supports mode flf2v, not t2v" in line for line in lines), proc.stderr[-2000:]
