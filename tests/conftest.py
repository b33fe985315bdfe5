"""Shared fixtures: real sample videos (PyAV), one local Ray cluster per session, a moto S3 server.

Fake AWS credentials are set for the whole session before Ray starts (workers inherit them), so
S3 tests reach the local moto server and leak tests have known strings to look for; so is a short
storage-retry backoff, so fault-injection tests wait milliseconds between attempts.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

FAKE_KEY_ID = "AKIAVIDARCTESTKEY0042"
FAKE_SECRET = "vidarcFakeSecretNeverLeak0123456789abcdEF"

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_AUTH_MODE": "disabled",
        # storage retries keep their count but wait milliseconds, not seconds (fault-injection tests)
        "VIDARC_STORAGE_BACKOFF_S": "0.01",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def clip() -> np.ndarray:
    """40 natural-looking 64×48 frames (camera move over a photograph)."""
    from pipeline.sources.synthetic import synthetic_clip

    return synthetic_clip("astronaut", 40, 64, 48, seed=3)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory, clip: np.ndarray) -> Path:
    """A small collection: two videos (one with audio, in a subfolder) and a text file."""
    from pipeline.sources.synthetic import write_video

    root = tmp_path_factory.mktemp("samples")
    (root / "sub").mkdir()
    write_video(root / "sub" / "with-audio.mp4", clip[:37], fps=24, audio_seconds=1.5)
    write_video(root / "short.mkv", clip[:12], fps=Fraction(30000, 1001))
    (root / "notes.txt").write_text("not a video\n")
    return root


@pytest.fixture
def samples(tmp_path: Path, sample_dir: Path) -> Path:
    """A private copy of `sample_dir` a test may modify."""
    target = tmp_path / "src"
    shutil.copytree(sample_dir, target)
    return target


def write_odd_video(path: Path, frames: np.ndarray, fps: int = 24) -> Path:
    """A lossless FFV1/Matroska file of any size (odd widths/heights included)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


#: The session cluster keeps idle workers (as the archive job's own local cluster does, for a minute):
#: a task worker that imported the codecs and metrics serves the next test instead of a new process.
_SYSTEM_CONFIG = {
    "idle_worker_killing_time_threshold_ms": int(os.environ.get("VIDARC_TEST_IDLE_MS", "600000"))
}


@pytest.fixture(scope="session")
def ray_address() -> str:
    """One small local Ray cluster for the whole session; returns its address for subprocess drivers.

    It declares one logical GPU (there is none): actors asking for fractional GPUs
    (`--num-gpus-per-actor 0.5`) then schedule as on a GPU node, and run on the CPU."""
    import ray

    ray.init(
        num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
        _system_config=_SYSTEM_CONFIG,
    )  # fmt: skip
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A moto S3 server on 127.0.0.1 (real HTTP, real s3fs/botocore on the client side)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the moto server; returns its name."""
    import boto3

    name = f"vidarc-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def fake_credentials() -> tuple[str, str]:
    """(access key id, secret) set in the environment for this session; must never appear in output."""
    return FAKE_KEY_ID, FAKE_SECRET


@pytest.fixture(scope="session")
def odd_video_writer():
    """`write_odd_video(path, frames, fps=24)`: lossless files of any size, as a fixture."""
    return write_odd_video


FAST_METRICS = ("lpips", "dists", "vmaf")
"""Metrics the pipeline tests switch off: they cost seconds per GOP and are tested with the metrics."""


@pytest.fixture(scope="session")
def fast_metrics() -> tuple[str, ...]:
    return FAST_METRICS


def write_vfr_video(
    path: Path,
    frames: np.ndarray,
    pts=(0, 40, 80, 200, 240, 400, 440, 480, 700, 740),
    rotation: int | None = None,
) -> Path:
    """A variable-frame-rate H.264/Matroska file (ms timestamps), optionally with display rotation."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image, ts in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def vfr_writer():
    """`write_vfr_video(path, frames, pts=..., rotation=None)` as a fixture."""
    return write_vfr_video


@pytest.fixture(scope="session")
def wan_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Wan2.1 T2V, I2V and FLF2V folders in the official Diffusers layout (`wan_layouts`)."""
    from wan_layouts import build_wan_dir

    root = tmp_path_factory.mktemp("wan")
    return {kind: build_wan_dir(root / f"Wan2.1-{kind}", kind) for kind in ("t2v", "i2v", "flf2v")}
