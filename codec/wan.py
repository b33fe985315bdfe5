"""What a Wan model directory holds, read from its configs and safetensors headers — no weights loaded.

Two layouts carry a GVC flow model:
- a vidarc bundle: `flow/` (a WanTransformer3DModel with a fixed `null_text_embedding.safetensors`) and
  the VAE under `tokenizer/`;
- an official Wan2.1 Diffusers pipeline folder: `model_index.json`, `transformer/` (sharded safetensors +
  index), `vae/`, `text_encoder/` + `tokenizer/` (UMT5, for the empty prompt), `scheduler/`, and for the
  image-conditioned checkpoints `image_encoder/` + `image_processor/` (CLIP).

The transformer's config says which GVC modes it can drive: 16 input channels = T2V only; 36 (x, a
4-channel mask, a 16-channel condition latent) with a CLIP branch (`image_dim`) = I2V, or FLF2V when
it also has the two-image position embedding (`pos_embed_seq_len`); 36 without CLIP (the bundled
model, trained with random conditioning dropout) = all three. Knowing this from the configs lets a
codec refuse a mode, or a missing component, before it reads gigabytes of weights.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

from codec.errors import ModelLoadError, UnsupportedInputError

#: GVC modes, best first: FLF2V codes a GOP for the fewest bits at a given quality (GVCC's results).
MODES_BEST_FIRST: tuple[str, ...] = ("flf2v", "i2v", "t2v")
NULL_TEXT_FILE = "null_text_embedding.safetensors"
VAE_CLASS = "AutoencoderKLWan"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FlowLayout:
    """Where GVC finds its networks in one directory, and what they can do."""

    root: Path
    flow_dir: Path
    vae_dir: Path
    components: tuple[str, ...]  # the directory's components GVC uses: its identity
    modes: tuple[str, ...]  # best first
    clip: bool  # image-conditioned (needs image_encoder/ + image_processor/)
    fixed_text: bool  # the flow dir carries its null-text embedding; else UMT5 computes it
    flow_shift: float | None  # from scheduler/, when the model ships one

    @property
    def best_mode(self) -> str:
        return self.modes[0]


def check_mode(mode: str, modes: tuple[str, ...], model: str) -> None:
    """Refuse a GVC mode the model cannot condition on (one line). Torch-free, so the archive driver
    can say it before it starts Ray or loads a weight."""
    if mode not in modes:
        raise UnsupportedInputError(
            f"gvc: model {model} supports mode {' | '.join(modes)}, not {mode}; use --gvc-mode {modes[0]}"
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path} ({type(exc).__name__})") from None


def flow_layout(root: Path) -> FlowLayout:
    """The GVC view of a model directory, or ModelLoadError naming what is missing."""
    if (root / "flow").is_dir():
        flow_dir, vae_dir, components = root / "flow", root / "tokenizer", ["tokenizer", "flow"]
    elif (root / "transformer").is_dir():
        flow_dir, vae_dir, components = root / "transformer", root / "vae", ["vae", "transformer"]
    else:
        raise ModelLoadError(f"model {root} has no GVC flow model (neither flow/ nor transformer/)")
    if not (vae_dir / "config.json").is_file():
        raise ModelLoadError(f"model {root} has no {vae_dir.name}/ (the Wan VAE)")
    config = read_json(flow_dir / "config.json")
    try:
        in_ch, out_ch = int(config["in_channels"]), int(config["out_channels"] or config["in_channels"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{flow_dir}/config.json is not a Wan transformer config") from None
    clip = config.get("image_dim") is not None
    if in_ch == out_ch:
        modes: tuple[str, ...] = ("t2v",)
    elif not clip:
        modes = MODES_BEST_FIRST
    else:
        modes = ("flf2v",) if config.get("pos_embed_seq_len") else ("i2v",)
    fixed_text = (flow_dir / NULL_TEXT_FILE).is_file()
    if not fixed_text:
        components += ["text_encoder", "tokenizer"]
        for needed in ("text_encoder", "tokenizer"):
            if not (root / needed).is_dir():
                raise ModelLoadError(
                    f"model {root} has no {needed}/ (UMT5, needed once for the empty-prompt embedding)"
                )
    if clip:
        components += ["image_encoder", "image_processor"]
        for needed in ("image_encoder", "image_processor"):
            if not (root / needed).is_dir():
                raise ModelLoadError(
                    f"model {root}: its transformer is image-conditioned but it has no {needed}/ (CLIP)"
                )
    return FlowLayout(
        root, flow_dir, vae_dir, tuple(components), modes, clip, fixed_text, scheduler_shift(root)
    )


def scheduler_shift(root: Path) -> float | None:
    """The time-grid shift the model was released with: `flow_shift` (UniPC, Wan's default scheduler)
    or `shift` (FlowMatchEulerDiscrete), from scheduler/scheduler_config.json."""
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    for key in ("flow_shift", "shift"):
        value = config.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def glvc_vae_dir(root: Path) -> tuple[Path, str]:
    """(directory, component name) of the Wan VAE a GLVC model uses: `tokenizer/` when it holds the VAE
    (a vidarc model), else `vae/` (an official pipeline folder, whose tokenizer/ is UMT5's)."""
    for name in ("tokenizer", "vae"):
        config = root / name / "config.json"
        if config.is_file() and read_json(config).get("_class_name") == VAE_CLASS:
            return root / name, name
    raise ModelLoadError(f"model {root} has no Wan VAE (neither tokenizer/ nor vae/ holds an {VAE_CLASS})")


def find_vae(path: Path) -> Path:
    """A Wan VAE directory given either the VAE folder itself or a model folder that holds one."""
    config = path / "config.json"
    if config.is_file() and read_json(config).get("_class_name") == VAE_CLASS:
        return path
    if path.is_dir():
        return glvc_vae_dir(path)[0]
    raise ModelLoadError(f"{path}: no such directory")


@dataclasses.dataclass(frozen=True)
class WeightStats:
    parameters: int
    bytes: int
    dtypes: dict[str, int]  # stored dtype -> parameter count

    @property
    def dtype(self) -> str:
        return max(self.dtypes, key=self.dtypes.get) if self.dtypes else "-"


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), read without the tensors."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ModelLoadError(f"{path} is not a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 1024 * 1024:
            raise ModelLoadError(f"{path} has an implausible safetensors header ({size} bytes)")
        try:
            return json.loads(handle.read(size))
        except ValueError:
            raise ModelLoadError(f"{path} has a damaged safetensors header") from None


def weight_stats(directory: Path) -> WeightStats:
    params, total, dtypes = 0, 0, {}
    for shard in sorted(directory.glob("*.safetensors")):
        if shard.name == NULL_TEXT_FILE:
            continue
        for name, info in safetensors_header(shard).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            params += count
            total += count * _DTYPE_BYTES.get(info["dtype"], 4)
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    return WeightStats(params, total, dtypes)


def component_class(directory: Path) -> str:
    """The class a component folder declares (diffusers `_class_name`, transformers `architectures`)."""
    for name in ("config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            config = read_json(path)
            found = config.get("_class_name") or (config.get("architectures") or [None])[0]
            found = found or config.get("image_processor_type") or config.get("tokenizer_class")
            if found:
                return str(found)
    return "-"


def model_summary(model: Any) -> dict[str, Any]:
    """What vidarc sees in a model directory (`vidarc model info`): identity, components, GVC modes,
    GLVC usability, parameters, stored dtypes, and the memory a GVC/GLVC load will take."""
    root: Path = model.path
    components = []
    stats: dict[str, WeightStats] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        stats[sub.name] = weight_stats(sub)
        files = sum(1 for rel in model.card["files"] if rel.startswith(f"{sub.name}/"))
        components.append({
            "name": sub.name, "class": component_class(sub), "files": files,
            "parameters": stats[sub.name].parameters, "stored_dtype": stats[sub.name].dtype,
            "bytes": stats[sub.name].bytes,
        })  # fmt: skip
    summary: dict[str, Any] = {
        "path": str(root), "model_id": model.model_id, "sha256": model.sha256, "pinned": model.pinned,
        "components": components, "gvc": None, "glvc": None,
    }  # fmt: skip
    try:
        layout = flow_layout(root)
    except ModelLoadError as exc:
        summary["gvc"] = {"usable": False, "why": str(exc)}
    else:
        resident = [layout.flow_dir.name, layout.vae_dir.name] + (["image_encoder"] if layout.clip else [])
        params = sum(stats[name].parameters for name in resident if name in stats)
        once = stats["text_encoder"].parameters if not layout.fixed_text and "text_encoder" in stats else 0
        summary["gvc"] = {
            "usable": True, "modes": list(layout.modes), "default_mode": layout.best_mode,
            "flow_shift": layout.flow_shift, "components": list(layout.components),
            "identity": model.components_digest(list(layout.components)),
            "memory_gib": {
                "cuda_bfloat16": round(params * 2 / 2**30, 2), "cpu_float32": round(params * 4 / 2**30, 2),
                "text_encoder_once_cuda_bfloat16": round(once * 2 / 2**30, 2),
            },
        }  # fmt: skip
    try:
        vae_name = glvc_vae_dir(root)[1]
        if not (root / "latent_codec").is_dir():
            raise ModelLoadError(
                f"no latent_codec/ (make one with `vidarc train glvc --tokenizer {root} ...`)"
            )
        params = stats[vae_name].parameters + stats["latent_codec"].parameters
        summary["glvc"] = {
            "usable": True, "components": [vae_name, "latent_codec"],
            "identity": model.components_digest([vae_name, "latent_codec"]),
            "memory_gib": {"cuda_bfloat16": round(params * 2 / 2**30, 2), "cpu_float32": round(params * 4 / 2**30, 2)},
        }  # fmt: skip
    except ModelLoadError as exc:
        summary["glvc"] = {"usable": False, "why": str(exc)}
    return summary
