"""The read side: `ArchiveReader`, `codec.registry.decoder_for`, and the rule that reading an archive
never imports the write side (Ray, the scheduler, metrics, quality search).

The rule is checked twice: statically, for every module by the group its folder puts it in, as
contracts of `layers.toml` (tests/test_layers.py, transitive, with the chain that breaks one); and
here, at run time, by restoring GOPs — x264, GLVC and GVC — in a fresh process and looking at
`sys.modules`, which also sees what third-party packages import."""

from __future__ import annotations

import dataclasses
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
from pipeline.format.container import ContainerError
from pipeline.format.container_header import ContainerHeader
from pipeline.read.reader import ArchiveReader

REPO = Path(__file__).resolve().parents[1]

#: What restoring GOPs must never load, checked in a fresh process (`sys.modules` afterwards). The
#: static side of the same rule — every read-side module, by its folder, transitively — is a contract
#: of `layers.toml` (tests/test_layers.py); these runs see what third-party packages import too.
NEVER_ON_RESTORE = (
    "ray",  # the cluster
    "pipeline.archive",  # the write side: scheduler, encode worker, quality search (quality_target, searches)
    "pipeline.metrics",
    "pipeline.sources",
    "pipeline.tools",  # verify, compact
    "pipeline.audit",
    "pipeline.training",
    "pipeline.benchmarks",
    "pipeline.dataset.ray_source",
    "codec.ratecontrol",  # the encoders' rate search
    "codec.gvc.atoms_fused",  # GVC's codebook search, the one module of ours that imports Triton
)

#: Run first in the fresh process: records the stack that executes `import triton` (a check such as
#: `importlib.util.find_spec("triton")` is not an import), so a test can say who loaded it.
TRITON_SPY = """
import importlib.machinery, sys, traceback
TRITON_STACK = []
class _TritonSpy:
    def find_spec(self, name, path=None, target=None):
        if name != "triton" or TRITON_STACK:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        def exec_module(module):
            TRITON_STACK.extend(
                f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<")
            )
            run(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _TritonSpy())
"""


def _loaded(prefixes: tuple[str, ...]) -> str:
    """Python source: the loaded modules that are, or are under, one of `prefixes`."""
    return f"sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {prefixes!r}))"


def _fresh(script: str) -> dict:
    """Run `script` in a new interpreter (nothing of this test process preloaded); its last line is JSON."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", TRITON_SPY + script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_archive(out: Path, clip: np.ndarray, *, gop_frames: int = 4) -> str:
    """A real x264 archive of `clip` made by the writer itself (no Ray): container, manifest, marker."""
    from pipeline.archive.gop_result import GopResult
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
            GopResult(
                payload_bytes=len(encoded.payload), bpp=0.1, kbps=1.0, device="cpu", params=encoded.params
            )
        )
    identity = codec.describe()
    header = ContainerHeader(
        **{k: identity[k] for k in ("codec", "codec_version", "model_id", "model_sha256", "decoder_options")},
        width=clip.shape[2], height=clip.shape[1], frame_count=len(clip), fps_num=24, fps_den=1,
        vfr=False, rotation=0, target={"kind": "quality", "value": 23}, video_key="clip-0001",
    )  # fmt: skip
    job = VideoJob(
        video_key="clip-0001", source_uri=str(out / "clip.mp4"), source_bytes=1, out=str(out), run_id="r1",
        endpoint_url=None, header=header, spans=spans, has_audio=False,
    )  # fmt: skip
    commit_video(job, metas, payloads)
    return str(out / "videos" / "clip-0001.vdrc")


def test_restoring_one_gop_loads_no_ray_metrics_search_or_torch(tmp_path: Path, clip: np.ndarray) -> None:
    uri = _write_archive(tmp_path / "out", clip[:12])
    never = (*NEVER_ON_RESTORE, "torch", "triton", "diffusers")
    report = _fresh(f"""
import json, sys
from pipeline.read.reader import ArchiveReader
from pipeline.read.restore import restore_video
reader = ArchiveReader({uri!r})
frames = reader.decode(1, reader.decoder_for())
result = restore_video({str(tmp_path / "out")!r}, "clip-0001", {str(tmp_path / "gop.mkv")!r}, frames=(4, 8))
print(json.dumps({{"shape": list(frames.shape), "gops": result.gops_decoded, "loaded": {_loaded(never)}}}))
""")
    assert report["shape"] == [4, clip.shape[1], clip.shape[2], 3] and report["gops"] == 1
    assert report["loaded"] == []  # no Ray, torch, Triton, metrics, search code, scheduler, source reading


def test_archive_reader_reads_index_and_one_gop_with_two_ranged_reads(
    tmp_path: Path, clip: np.ndarray
) -> None:
    uri = _write_archive(tmp_path / "out", clip[:12])
    reader = ArchiveReader(uri)
    index = reader.index()
    assert [g.frame_count for g in index.gops] == [4, 4, 4] and reader.read.reads == 1
    payload = reader.gop(2)
    assert reader.read.reads == 2 and len(payload) == index.gops[2].length
    assert reader.header.decoder_options == {}  # the writer always records them
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
    base = ContainerHeader.from_dict({"codec": "x264", "width": 64, "height": 48, "frame_count": 4})
    old = decoder_for(base)  # an archive of an earlier release: no decoder_options
    assert old.name == "x264" and old.preset == old.default_preset
    rebuilt = decoder_for(base.updated(decoder_options={"preset": "veryfast", "threads": 1}))
    assert (rebuilt.preset, rebuilt.threads) == ("veryfast", 1)
    with pytest.raises(CodecError, match=r"cannot build the x264 decoder .*does not understand"):
        decoder_for(base.updated(decoder_options={"bogus": 1}))
    with pytest.raises(CodecError, match="unknown codec 'h266'"):
        decoder_for(base.updated(codec="h266"))
    with pytest.raises(CodecError, match="names no codec"):
        decoder_for(ContainerHeader(frame_count=4, width=64, height=48))
    with pytest.raises(ModelMismatchError, match="give --model"):
        decoder_for(base.updated(model_id="m@1", model_sha256="ab" * 32))


def test_reader_errors_name_the_object(tmp_path: Path, clip: np.ndarray) -> None:
    uri = _write_archive(tmp_path / "out", clip[:4])
    reader = ArchiveReader(uri)
    index = reader.index()
    reader._index = dataclasses.replace(index, header=index.header.updated(codec="h266"))
    with pytest.raises(CodecError, match="^" + re.escape(uri) + ": unknown codec"):
        reader.decoder_for()


def test_restoring_neural_gops_loads_no_ray_metrics_or_search_code(tmp_path: Path) -> None:
    """A GLVC and a GVC GOP (the golden archives) decoded the way restore decodes them
    (`decode_in_order`), in a fresh process: torch and diffusers, nothing of the write side, no Ray, no
    metrics, no rate or quality search, and not GVC's Triton codebook search.

    Triton itself: where it is installed, `import diffusers` loads it (diffusers imports
    `torch._dynamo`, whose `torch.utils._triton` imports triton to see what it can compile). The test
    records the stack that ran `import triton` and asserts it is that one — torch's import, entered
    from diffusers — not a module of ours; it does not pretend the package stays unloaded."""
    golden = REPO / "tests" / "golden"
    report = _fresh(f"""
import json, sys
from pipeline.read.reader import ArchiveReader
shapes = []
for name in ("glvc", "gvc-flf2v"):
    reader = ArchiveReader({str(golden / "v2")!r} + "/" + name + ".vdrc")
    decoder = reader.decoder_for(model={str(golden / "model")!r})
    shapes += [list(frames.shape) for frames in reader.decode_in_order([0], decoder)]
print(json.dumps({{"shapes": shapes, "loaded": {_loaded(NEVER_ON_RESTORE)}, "torch": "torch" in sys.modules,
                  "triton": "triton" in sys.modules, "triton_stack": TRITON_STACK}}))
""")
    assert len(report["shapes"]) == 2 and all(shape[-1] == 3 for shape in report["shapes"])
    assert report["torch"] and report["loaded"] == []
    if report["triton"]:
        stack = report["triton_stack"]
        why = "triton imported by:\n" + "\n".join(stack[-16:])

        def package(frame: str) -> str | None:  # the installed package a frame runs in, None for ours
            parts = re.split(r"[/\\]", frame)
            return next((parts[i + 1] for i, p in enumerate(parts) if p.endswith("-packages")), None)

        assert stack and package(stack[-1]) == "torch", why
        last_ours = max(i for i, frame in enumerate(stack) if package(frame) is None)
        assert package(stack[last_ours + 1]) == "diffusers", why
