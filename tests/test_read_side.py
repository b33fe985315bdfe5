"""The read side: `ArchiveReader`, `codec.registry.decoder_for`, and the rule that reading an archive
never imports the write side (Ray, the scheduler, metrics, quality search)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codec.base import RateTarget
from codec.errors import CodecError, ModelMismatchError
from codec.registry import create_codec, decoder_for
from pipeline.container import ContainerError
from pipeline.reader import ArchiveReader

REPO = Path(__file__).resolve().parents[1]

#: The read side: container format, schemas, keys, storage, run records, the reader, restore, inspect.
READ_SIDE = [
    "pipeline/container.py",
    "pipeline/schema.py",
    "pipeline/manifest.py",
    "pipeline/keys.py",
    "pipeline/storage.py",
    "pipeline/runinfo.py",
    "pipeline/reader.py",
    "pipeline/restore.py",
    "pipeline/inspect.py",
    "pipeline/locate.py",
    "pipeline/manifest_videos.py",
    "pipeline/manifest_layout.py",
    "pipeline/archived_source.py",
    "pipeline/dataset/__init__.py",
    "pipeline/dataset/plan.py",
    "pipeline/dataset/clips.py",
    "pipeline/dataset/export.py",
    "codec/registry.py",
    "codec/base.py",
]
#: Tools over the read side: they may add Ray (verify's fan-out), metrics and source reading (checks
#: against a source that still exists), but never the archive job itself.
READ_SIDE_TOOLS = [
    "pipeline/verify.py",
    "pipeline/verify_progress.py",
    "pipeline/verify_record.py",
    "pipeline/dataset/ray_source.py",  # a Ray Data datasource: Ray, but never the archive job
    "pipeline/dataset/torch_dataset.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "pipeline/audit").glob("*.py")),
]
WRITE_SIDE = ("pipeline.archive",)
FORBIDDEN_ON_READ_SIDE = (
    *WRITE_SIDE,
    "ray",
    "pipeline.metrics",
    "pipeline.sources",
    "pipeline.training",
    "torch",
)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (`from a import b` gives a.b too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _hits(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("module", READ_SIDE)
def test_read_side_imports_nothing_of_the_write_side(module: str) -> None:
    assert _hits(_imports(REPO / module), FORBIDDEN_ON_READ_SIDE) == []


@pytest.mark.parametrize("module", READ_SIDE_TOOLS)
def test_read_side_tools_never_import_the_archive_job(module: str) -> None:
    assert _hits(_imports(REPO / module), WRITE_SIDE) == []


def test_the_rule_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import ray\n    from pipeline.archive.scheduler import Scheduler\n")
    assert _hits(_imports(sample), FORBIDDEN_ON_READ_SIDE) == [
        "pipeline.archive.scheduler",
        "pipeline.archive.scheduler.Scheduler",
        "ray",
    ]


def _write_archive(out: Path, clip: np.ndarray, *, gop_frames: int = 4) -> str:
    """A real x264 archive of `clip` made by the writer itself (no Ray): container, manifest, marker."""
    from pipeline.archive.plan import plan_gops
    from pipeline.archive.video_writer import VideoJob, commit_video

    codec = create_codec("x264")
    fps = Fraction(24)
    spans = tuple(plan_gops(len(clip), gop_frames, None))
    metas, payloads = [], []
    for span in spans:
        encoded = codec.encode(
            clip[span.first_frame : span.first_frame + span.frame_count], RateTarget("quality", 23), fps
        )
        payloads.append(encoded.payload)
        metas.append(
            {"payload_bytes": len(encoded.payload), "bpp": 0.1, "kbps": 1.0, "encode_seconds": 0.0,
             "device": "cpu", "params": encoded.params}
        )  # fmt: skip
    identity = codec.describe()
    header = {
        **{k: identity[k] for k in ("codec", "codec_version", "model_id", "model_sha256", "decoder_options")},
        "width": clip.shape[2], "height": clip.shape[1], "frame_count": len(clip), "fps_num": 24, "fps_den": 1,
        "vfr": False, "rotation": 0, "target": {"kind": "quality", "value": 23}, "video_key": "clip-0001",
    }  # fmt: skip
    job = VideoJob(
        video_key="clip-0001", source_uri=str(out / "clip.mp4"), source_bytes=1, out=str(out), run_id="r1",
        endpoint_url=None, header=header, spans=spans, has_audio=False,
    )  # fmt: skip
    commit_video(job, metas, payloads)
    return str(out / "videos" / "clip-0001.vdrc")


def test_restoring_one_gop_loads_no_ray_metrics_search_or_torch(tmp_path: Path, clip: np.ndarray) -> None:
    uri = _write_archive(tmp_path / "out", clip[:12])
    script = f"""
import json, sys
from pipeline.reader import ArchiveReader
from pipeline.restore import restore_video
reader = ArchiveReader({uri!r})
frames = reader.decode(1, reader.decoder_for())
result = restore_video({str(tmp_path / "out")!r}, "clip-0001", {str(tmp_path / "gop.mkv")!r}, frames=(4, 8))
write_side = ("pipeline.metrics", "pipeline.archive", "pipeline.sources", "pipeline.verify")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch") or m.startswith(write_side))
print(json.dumps({{"shape": list(frames.shape), "gops": result.gops_decoded, "loaded": loaded}}))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == [4, clip.shape[1], clip.shape[2], 3] and report["gops"] == 1
    assert report["loaded"] == []  # no Ray, torch, metrics, quality search, scheduler, source reading


def test_archive_reader_reads_index_and_one_gop_with_two_ranged_reads(
    tmp_path: Path, clip: np.ndarray
) -> None:
    uri = _write_archive(tmp_path / "out", clip[:12])
    reader = ArchiveReader(uri)
    index = reader.index()
    assert [g.frame_count for g in index.gops] == [4, 4, 4] and reader.read.reads == 1
    payload = reader.gop(2)
    assert reader.read.reads == 2 and len(payload) == index.gops[2].length
    assert reader.header["decoder_options"] == {}  # the writer always records them
    frames = reader.decode(2, reader.decoder_for())
    reference = create_codec("x264").decode(payload, 4, clip.shape[2], clip.shape[1])
    assert np.array_equal(frames, reference)
    with pytest.raises(ContainerError, match="no GOP 3"):
        reader.gop(3)

    data = bytearray(Path(uri).read_bytes())
    data[index.gops[1].offset + 3] ^= 0xFF
    Path(uri).write_bytes(bytes(data))
    damaged = ArchiveReader(uri)
    damaged.gop(0)
    with pytest.raises(ContainerError, match=r"GOP 1 .* CRC32C"):
        damaged.gop(1)


def test_decoder_for_rebuilds_from_header_options_and_reads_old_headers() -> None:
    base = {"codec": "x264", "width": 64, "height": 48, "frame_count": 4}
    old = decoder_for(base)  # an archive of an earlier release: no decoder_options
    assert old.name == "x264" and old.preset == old.default_preset
    rebuilt = decoder_for(dict(base, decoder_options={"preset": "veryfast", "threads": 1}))
    assert (rebuilt.preset, rebuilt.threads) == ("veryfast", 1)
    with pytest.raises(CodecError, match=r"cannot build the x264 decoder .*does not understand"):
        decoder_for(dict(base, decoder_options={"bogus": 1}))
    with pytest.raises(CodecError, match="unknown codec 'h266'"):
        decoder_for(dict(base, codec="h266"))
    with pytest.raises(CodecError, match="names no codec"):
        decoder_for({"width": 64})
    with pytest.raises(ModelMismatchError, match="give --model"):
        decoder_for(dict(base, model_id="m@1", model_sha256="ab" * 32))


def test_reader_errors_name_the_object(tmp_path: Path, clip: np.ndarray) -> None:
    uri = _write_archive(tmp_path / "out", clip[:4])
    reader = ArchiveReader(uri)
    reader.index().header["codec"] = "h266"
    with pytest.raises(CodecError, match="^" + re.escape(uri) + ": unknown codec"):
        reader.decoder_for()


def test_restoring_neural_gops_loads_no_ray_metrics_or_search_code(tmp_path: Path) -> None:
    """GLVC and GVC decodes (the golden archives, a fresh process): torch and diffusers, nothing of the
    write side, no Ray, no rate or quality search, and not GVC's Triton search kernels (the encoder's;
    torch itself may still import the triton package for its compiler)."""
    golden = REPO / "tests" / "golden" / "v2"
    script = f"""
import json, sys
from pipeline.reader import ArchiveReader
shapes = []
for name in ("glvc", "gvc-flf2v"):
    reader = ArchiveReader({str(golden)!r} + "/" + name + ".vdrc")
    shapes.append(list(reader.decode(0, reader.decoder_for(model={str(REPO / "tests" / "golden" / "model")!r})).shape))
write_side = ("pipeline.metrics", "pipeline.archive", "pipeline.sources", "pipeline.verify",
              "pipeline.quality_target", "codec.gvc.atoms_fused", "codec.ratecontrol")
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "ray" or m.startswith(write_side))
print(json.dumps({{"shapes": shapes, "loaded": loaded, "torch": "torch" in sys.modules}}))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["shapes"]) == 2 and all(shape[-1] == 3 for shape in report["shapes"])
    assert report["torch"] and report["loaded"] == []
