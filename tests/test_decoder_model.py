"""`--model` reaches every decoder: archive's closing verify, verify, restore and inspect decode a GLVC
archive made with weights that are not bundled (a tiny random-weight model built here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec.glvc.random_model import build_random_model
from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.read.inspect import InspectError, inspect_object
from pipeline.read.restore import RestoreError, restore_video
from pipeline.tools.verify import run_verify

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archived(tmp_path_factory, clip: np.ndarray, ray_address: str, fast_metrics) -> tuple[Path, Path]:
    """(OUT, model dir): one 9-frame video archived with GLVC and a model that is not bundled, with a
    closing verify of every GOP."""
    from pipeline.sources.synthetic import write_video

    root = tmp_path_factory.mktemp("model")
    model = build_random_model(root / "model", seed=1).path
    (root / "src").mkdir()
    write_video(root / "src" / "clip.mp4", clip[:9], fps=24)
    config = ArchiveConfig(
        src=str(root / "src"), out=str(root / "out"), codec="glvc", model=str(model), gop_frames=5,
        verify_fraction=1.0, skip_metrics=fast_metrics, min_psnr=0,  # random weights: no quality floor
    )  # fmt: skip
    result = run_archive(config)
    # the closing verify decoded with the run's model: with the default one it would refuse every GOP
    assert result.exit_code == 0, result.summary.get("verify")
    verify = result.summary["verify"]
    assert verify["failures"] == [] and verify["rows"] == 2 and verify["checks"]["exact"] == 2
    return root / "out", model


def test_verify_and_restore_use_the_given_model(archived: tuple[Path, Path], tmp_path: Path) -> None:
    out, model = archived
    report = run_verify(str(out), model=str(model))
    assert report.ok and sum(r["decode_ok"] is True for r in report.rows) == 2
    without = run_verify(str(out))  # the header names a model that is not bundled
    assert not without.ok and all("give --model" in f for f in without.failures)

    result = restore_video(str(out), "clip.mp4", str(tmp_path / "clip.mkv"), model=str(model))
    assert result.frame_count == 9 and (tmp_path / "clip.mkv").stat().st_size > 0
    with pytest.raises(RestoreError, match="give --model"):
        restore_video(str(out), "clip.mp4", str(tmp_path / "other.mkv"))
    assert not (tmp_path / "other.mkv").exists()


def test_inspect_names_the_decoder_and_checks_weights_with_model(archived: tuple[Path, Path]) -> None:
    out, model = archived
    uri = str(next((out / "videos").glob("*.vdrc")))
    plain = inspect_object(uri)
    assert plain["decoder"] == {
        "codec": "glvc",
        "options": {"dtype": "auto"},
        "model_dir": None,
        "weights_checked": False,
    }
    checked = inspect_object(uri, model=str(model))
    assert checked["decoder"]["weights_checked"] and checked["decoder"]["model_dir"] == str(model)
    other = build_random_model(model.parent / "other", seed=2).path
    with pytest.raises(InspectError, match="give --model"):
        inspect_object(uri, model=str(other))

    cmd = [sys.executable, "-m", "jobs.cli", "inspect", uri, "--model", str(other)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "sha256" in done.stderr
