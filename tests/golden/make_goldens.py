"""Regenerate the golden archives (never run by CI; see tests/golden/README.md).

    PYTHONPATH=. python tests/golden/make_goldens.py --version v2   # a new set beside the old ones

Each golden is a real `vidarc archive` run (the same driver, actors and commit as users get) over one
tiny lossless clip, with one codec; its `.vdrc` object is copied to `tests/golden/<version>/`, then
decoded here with `ArchiveReader` + `decoder_for`, and the sha256 of every GOP's decoded frames and
of its exact part (`Codec.exact_digest`: GLVC's latent symbols, GVC's codebook entries and stills)
is written to `tests/golden/<version>/goldens.json`. Neural goldens use the frozen random-weight model
in `tests/golden/model/` (built by `--build-model` once, then never changed: the archives name its
sha256), not the bundled model, which is retrained from time to time.

Existing versions are never overwritten: a format change adds a new version and `tests/test_golden.py`
keeps decoding every old one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent
MODEL = GOLDEN / "model"
FRAMES, WIDTH, HEIGHT, GOP_FRAMES = 11, 64, 32, 5
SKIP_METRICS = ("lpips", "dists", "vmaf", "temporal")
NEURAL = ("glvc", "gvc")

#: name -> (codec, codec options, rate target as (kind, value))
SPECS: dict[str, tuple[str, dict, tuple[str, float]]] = {
    "x264": ("x264", {}, ("quality", 30)),
    "x265": ("x265", {}, ("quality", 32)),
    "av1": ("av1", {}, ("quality", 40)),
    "glvc": ("glvc", {}, ("quality", 40)),
    "gvc-t2v": ("gvc", {"mode": "t2v"}, ("quality", 4)),
    "gvc-flf2v": ("gvc", {"mode": "flf2v"}, ("bpp", 1.0)),
}

#: The frozen model: tiny random-weight configs in the vidarc layout (tokenizer/, latent_codec/, flow/).
TOKENIZER = {
    "base_dim": 4,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
LATENT_CODEC = {"hidden_channels": 8, "y_channels": 8, "z_channels": 4, "memory_channels": 4}
FLOW = {"latent_channels": 16, "text_dim": 16, "width": 32, "layers": 1}
GVC_SETTINGS = {"steps": 4, "ode_tail": 1, "num_atoms": 64, "shift": 3.0, "g_scale": 3.0}


def build_model(root: Path) -> None:
    """Write the frozen golden model (random weights, seeded). Only for a new model: archives name
    its sha256, so the committed one must never be rebuilt in place."""
    import torch
    from diffusers import WanTransformer3DModel

    from codec.glvc.random_model import build_random_model
    from codec.gvc.backbone import save_flow, tiny_flow_config
    from codec.modeldir import write_model_card

    if root.exists():
        raise SystemExit(f"{root} exists: the golden model is frozen (delete it only for a new golden set)")
    build_random_model(root, seed=10, tokenizer=TOKENIZER, latent_codec=LATENT_CODEC, name="vidarc-golden")
    torch.manual_seed(11)
    flow = WanTransformer3DModel(**tiny_flow_config(**FLOW))
    text = torch.randn(1, 4, FLOW["text_dim"], generator=torch.Generator().manual_seed(12))
    save_flow(flow, text, root / "flow")
    write_model_card(
        root,
        name="vidarc-golden",
        version="1",
        kind="bundle",
        config={"tokenizer": TOKENIZER, "latent_codec": LATENT_CODEC, "flow": FLOW, "gvc": GVC_SETTINGS},
        notes="random weights, frozen: decodes the golden archives in tests/golden (never for quality)",
    )


def write_source(path: Path) -> None:
    """The clip every golden codes: a camera move over a photograph, stored losslessly (FFV1)."""
    import av

    from pipeline.sources.synthetic import synthetic_clip

    frames = synthetic_clip("astronaut", FRAMES, WIDTH, HEIGHT, seed=5)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def archive_one(name: str, source: Path, work: Path) -> Path:
    """One `vidarc archive` run; returns the path of its only `.vdrc`."""
    from codec.base import RateTarget
    from pipeline.archive import run_archive
    from pipeline.archive.config import ArchiveConfig
    from pipeline.archive.progress import Counters, ProgressDisplay

    codec, options, (kind, value) = SPECS[name]
    out = work / name
    config = ArchiveConfig(
        src=str(source),
        out=str(out),
        codec=codec,
        target=RateTarget(kind, value),  # type: ignore[arg-type]
        gop_frames=GOP_FRAMES,
        model=str(MODEL) if codec in ("glvc", "gvc") else None,
        device="cpu",
        codec_options=options,
        skip_metrics=SKIP_METRICS,
        run_id=f"golden-{name}",
        min_psnr=0,  # a random model: its quality means nothing (no quality floor)
    )
    result = run_archive(config, display=ProgressDisplay(Counters(), live=False, interval=3600))
    if result.exit_code != 0:
        raise SystemExit(f"{name}: archive failed: {result.message} {result.summary.get('failures')}")
    (container,) = (out / "videos").glob("*.vdrc")
    return container


def decode_all(path: Path, codec: str) -> tuple[list[dict[str, str]], np.ndarray]:
    """Per GOP: sha256 of the decoded frames and of the exact part, decoded the way readers do; and
    all decoded frames (kept for neural codecs: the reference their pixel drift is measured against)."""
    from codec.base import frames_sha256
    from pipeline.read.reader import ArchiveReader

    reader = ArchiveReader(str(path))
    decoder = reader.decoder_for(model=str(MODEL) if codec in NEURAL else None, device="cpu")
    out, decoded = [], []
    for entry in reader.index().gops:
        payload = reader.gop(entry.index)
        frames, exact = decoder.decode_with_digest(
            payload, entry.frame_count, reader.header.width, reader.header.height
        )
        out.append({"frames_sha256": frames_sha256(frames), "exact_sha256": exact})
        decoded.append(frames)
    return out, np.concatenate(decoded)


def save_frames(path: Path, frames: np.ndarray) -> None:
    np.savez_compressed(path, frames=frames)


def add_frames(version: str) -> None:
    """Write the reference frames of an existing version's neural goldens that lack them, only if
    this machine decodes them to exactly the recorded digests (a golden is never changed)."""
    folder = GOLDEN / version
    record_path = folder / "goldens.json"
    record = json.loads(record_path.read_text())
    for name, entry in record["archives"].items():
        if entry["codec"] not in NEURAL or entry.get("frames_file"):
            continue
        gops, frames = decode_all(folder / entry["file"], entry["codec"])
        if gops != entry["gops"]:
            raise SystemExit(f"{name}: this machine decodes other pixels than recorded; not adding frames")
        entry["frames_file"] = f"{name}.frames.npz"
        save_frames(folder / entry["frames_file"], frames)
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def environment() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("torch", "numpy", "av", "diffusers", "constriction"):
        versions[dist] = md.version(dist)
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True, help="folder under tests/golden/ (e.g. v2); must be new")
    parser.add_argument(
        "--add-frames", action="store_true", help="only add missing reference frames to an existing version"
    )
    parser.add_argument(
        "--build-model", action="store_true", help="create tests/golden/model/ (first set only)"
    )
    parser.add_argument("--only", nargs="*", default=list(SPECS), help="golden names to make")
    args = parser.parse_args(argv)
    target = GOLDEN / args.version
    if args.add_frames:
        add_frames(args.version)
        return 0
    if target.exists():
        raise SystemExit(f"{target} exists: goldens are never regenerated in place; choose a new version")
    if args.build_model:
        build_model(MODEL)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    records = {}
    with tempfile.TemporaryDirectory(prefix="vidarc-golden-") as tmp:
        work = Path(tmp)
        source = work / "source.mkv"
        write_source(source)
        staged = work / "staged"
        staged.mkdir()
        for name in args.only:
            container = archive_one(name, source, work)
            shutil.copy(container, staged / f"{name}.vdrc")
            codec = SPECS[name][0]
            gops, frames = decode_all(staged / f"{name}.vdrc", codec)
            records[name] = {
                "file": f"{name}.vdrc",
                "codec": codec,
                "options": SPECS[name][1],
                "target": list(SPECS[name][2]),
                "file_sha256": hashlib.sha256(container.read_bytes()).hexdigest(),
                "gops": gops,
            }
            if codec in NEURAL:
                records[name]["frames_file"] = f"{name}.frames.npz"
                save_frames(staged / records[name]["frames_file"], frames)
            print(f"{name}: {container.stat().st_size} bytes, {len(records[name]['gops'])} GOPs", flush=True)
        record = {
            "clip": {
                "frames": FRAMES,
                "width": WIDTH,
                "height": HEIGHT,
                "gop_frames": GOP_FRAMES,
                "fps": "24",
            },
            "model": "tests/golden/model",
            "made_with": environment(),
            "archives": records,
        }
        (staged / "goldens.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shutil.copytree(staged, target)
    ray.shutdown()
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
