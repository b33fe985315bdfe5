"""The neural codecs through the whole pipeline: archive -> verify -> restore with GLVC and GVC (bundled
model, tiny clips), on the moto S3 server and locally, including a driver killed with SIGKILL mid-run
and the rerun that finishes its work. Every verify here proves the decode from the digests recorded at
encode time (no source read), so each GOP must come back "exact" on the machine that encoded it (or
"exact-part" where it was archived without its pixel proof, `fingerprint_every`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq

from codec.registry import codec_class
from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.read.reader import ArchiveReader
from pipeline.read.restore import restore_video
from pipeline.sources.synthetic import synthetic_clip
from pipeline.store.storage import filesystem
from pipeline.tools.verify import run_verify

REPO = Path(__file__).resolve().parents[1]
SKIP = ("lpips", "dists", "vmaf", "temporal")
W, H = 32, 32  # GLVC's smallest frame (one latent block); GVC takes it too
#: Frames this small are under the neural codecs' default quality floor (tests/test_floor.py covers it).
NO_FLOOR = ("--min-psnr", "0")


def _write(path: Path, frames: np.ndarray) -> None:
    """A lossless FFV1 source (so the codec, not the source, decides every pixel)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _restored_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _archived_frames(uri: str, endpoint_url: str | None = None) -> np.ndarray:
    reader = ArchiveReader(uri, endpoint_url=endpoint_url)
    decoder = reader.decoder_for()
    return np.concatenate([reader.decode(g.index, decoder) for g in reader.index().gops])


def _assert_proven(report, gops: int) -> None:
    assert report.ok, report.failures
    checks = report.checks()
    assert checks["exact"] == gops and checks["drift"] == checks["mismatch"] == checks["unproven"] == 0
    assert all(r["exact_ok"] and r["recon_digest_ok"] for r in report.rows)


def _done_markers(fs, out_root: str) -> list[str]:
    """Committed videos: done markers in place (never a marker's temporary file)."""
    try:
        names = fs.ls(f"{out_root}/markers/done", detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return [n for n in names if n.endswith(".json") and ".tmp-" not in n]


def test_glvc_on_s3_survives_a_killed_driver_then_verifies_and_restores(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, ray_address: str
) -> None:
    fs, _ = filesystem(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    copies = 3
    for i in range(copies):
        local = tmp_path / f"clip-{i}.mkv"
        _write(local, synthetic_clip("astronaut", 5, W, H, seed=i))
        fs.put(str(local), f"{s3_bucket}/src/clip-{i}.mkv")
    out = f"s3://{s3_bucket}/archive"
    command = [sys.executable, "-m", "jobs.archive", f"s3://{s3_bucket}/src", out, "--codec", "glvc"]
    command += ["--endpoint-url", s3_endpoint, "--address", ray_address, "--quality", "40", *NO_FLOOR]
    command += [arg for m in SKIP for arg in ("--skip-metric", m)]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out_root = f"{s3_bucket}/archive"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None and not _done_markers(fs, out_root):
        time.sleep(0.05)
    if driver.poll() is None:
        os.kill(driver.pid, signal.SIGKILL)  # after its first committed video
    driver.wait(timeout=60)
    done_at_kill = len(_done_markers(fs, out_root))
    assert done_at_kill >= 1, f"the driver exited with {driver.returncode} before committing a video"

    # the killed driver's leases name a process that is gone: the rerun takes them over at once
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # a commit whose last request was in flight at the kill may land after it: count what the rerun found
    counts = re.search(r"(\d+) ok, 0 failed, (\d+) already done", rerun.stdout)
    assert counts, rerun.stdout
    encoded, already_done = int(counts[1]), int(counts[2])
    assert already_done >= done_at_kill and encoded + already_done == copies
    fs.invalidate_cache()
    assert len(_done_markers(fs, out_root)) == copies and not fs.find(f"{out_root}/leases")
    rows = [r for p in fs.find(f"{out_root}/manifest") for r in pq.read_table(p, filesystem=fs).to_pylist()]
    assert len(rows) == copies and all(r["codec"] == "glvc" and r["exact_sha256"] for r in rows)

    report = run_verify(out, endpoint_url=s3_endpoint)

    _assert_proven(report, copies)
    dest = tmp_path / "restored.mkv"
    restored = restore_video(out, "clip-1.mkv", str(dest), endpoint_url=s3_endpoint)
    archived = _archived_frames(restored.archive_uri, s3_endpoint)
    assert restored.frame_count == 5 and np.array_equal(_restored_frames(dest), archived)


def test_gvc_archives_verifies_and_restores_locally(tmp_path: Path, ray_address: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    clip = synthetic_clip("coffee", 6, W, H, seed=4)
    _write(src / "flf.mkv", clip)
    out = tmp_path / "out"
    config = ArchiveConfig(
        src=str(src),
        out=str(out),
        codec="gvc",
        gop_frames=5,  # GOPs of 5 and 1 frames
        codec_options={"mode": "flf2v"},
        skip_metrics=SKIP,
        min_psnr=0,
        metrics_every=2,
        fingerprint_every=2,  # GOP 1: no pixel decode at encode, so no pixel proof
        verify_fraction=1.0,  # the closing verify proves both GOPs too
    )

    result = run_archive(config)

    assert result.exit_code == 0 and result.summary["gops"] == 2, result.summary.get("failures")
    checks = result.summary["verify"]["checks"]
    assert checks["exact"] == checks["exact-part"] == 1 and result.summary["codec"]["codec"] == "gvc"
    manifest = pq.read_table(next((out / "manifest").glob("*.parquet"))).to_pylist()  # compacted by the run
    assert [
        (r["recon_sha256"] is None, r["fingerprint"] is None, bool(r["exact_sha256"])) for r in manifest
    ] == [
        (False, False, True),
        (True, True, True),
    ]
    rows = pq.read_table(next((out / "verify").glob("part-*.parquet"))).to_pylist()
    assert [(r["decode_check"], r["exact_ok"], r["recon_digest_ok"]) for r in rows] == [
        ("exact", True, True),
        ("exact-part", True, None),
    ]
    container = next((out / "videos").glob("*.vdrc"))
    header = ArchiveReader(str(container)).header
    assert codec_class("gvc").gop_frames_for(None, Fraction(24)) == 33 and header.gop_frames == 5
    # what defines the decode of its GLVC stills is recorded: coder, version, pinned profile
    assert header.extra["entropy_coder"] == {
        "library": "constriction",
        "version": "0.5.0",
        "profile": "gauss64-v1",
    }
    run_config = json.loads(next((out / "runs").glob("*/config.json")).read_text())
    assert run_config["versions"]["constriction"] == "0.5.0"
    dest = tmp_path / "restored.mkv"
    restore_video(str(out), "flf.mkv", str(dest), frames=(1, 6))
    assert np.array_equal(_restored_frames(dest), _archived_frames(str(container))[1:6])
