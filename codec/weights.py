"""Load a diffusers or transformers model straight onto its device, in the dtype asked for, strictly.

Why not `from_pretrained`: without `accelerate` it builds the model with random fp32 weights on the host
and then reads a full state dict beside it — about 2 × 56 GB of host memory for Wan's 14B transformer
before anything reaches the GPU. Here the module tree is built with its parameters on the meta device
(no memory; buffers stay real, they are small and some are not in the checkpoint), then every tensor is
read from the safetensors shards directly onto the target device (`safe_open(device=...)`), cast there,
and put in place. Peak host memory is one tensor, peak device memory the model plus one tensor.

Strict, like `load_state_dict(strict=True)`: a tensor the model does not have, or a parameter or buffer
the shards do not provide, is a ModelLoadError naming it — a wrong or partial checkpoint never leaves
silently random layers. Modules a model keeps in float32 (`_keep_in_fp32_modules`, e.g. Wan's time
embedding and norms) stay float32 whatever dtype the rest gets, as `from_pretrained(torch_dtype=...)`
would do.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from codec.errors import ModelLoadError

#: Files in a component folder that hold something other than the model's weights.
NON_WEIGHT_FILES = ("null_text_embedding.safetensors",)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules whose parameters live on the meta device (no storage); buffers stay real."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def weight_shards(directory: Path) -> list[Path]:
    """The safetensors files of one component: those its index names, else every *.safetensors."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            raise ModelLoadError(f"{indexes[0]} is not a valid safetensors index") from None
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise ModelLoadError(f"{directory}: shard {missing[0]} named in {indexes[0].name} is missing")
        return shards
    shards = [p for p in sorted(directory.glob("*.safetensors")) if p.name not in NON_WEIGHT_FILES]
    if not shards:
        raise ModelLoadError(f"{directory}: no .safetensors weights")
    return shards


def load_weights_into(
    model: torch.nn.Module, directory: Path, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Fill a model built under `parameters_on_meta` from `directory`'s shards, on `device`."""
    from safetensors import safe_open

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    what = f"{type(model).__name__} from {directory}"
    modules = dict(model.named_modules())
    target = "cpu" if device.type == "cpu" else str(device)
    for shard in weight_shards(directory):
        try:
            handle = safe_open(str(shard), framework="pt", device=target)
        except Exception:  # safetensors raises its own error types for damaged files
            raise ModelLoadError(
                f"cannot load {what}: {shard.name} is not a readable safetensors file"
            ) from None
        with handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                owner, _, attr = key.rpartition(".")
                module = modules.get(owner)
                if module is None or (attr not in module._parameters and attr not in module._buffers):
                    raise ModelLoadError(f"cannot load {what}: weight {key} does not belong to this config")
                tensor = handle.get_tensor(key)
                existing = module._parameters.get(attr)
                existing = existing if existing is not None else module._buffers.get(attr)
                if existing is not None and tuple(existing.shape) != tuple(tensor.shape):
                    raise ModelLoadError(
                        f"cannot load {what}: weight {key} has shape {tuple(tensor.shape)}, "
                        f"the config needs {tuple(existing.shape)}"
                    )
                if tensor.is_floating_point():
                    fp32 = dtype != torch.float32 and any(k in owner.split(".") for k in keep)
                    tensor = tensor.to(torch.float32 if fp32 else dtype)
                if attr in module._parameters:
                    module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
                else:
                    module._buffers[attr] = tensor
    if callable(getattr(model, "tie_weights", None)):  # transformers: shared embeddings, stored once
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    left += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:
        more = f" and {len(left) - 1} more" if len(left) > 1 else ""
        raise ModelLoadError(f"cannot load {what}: the checkpoint lacks weight {left[0]}{more}")
    for module in model.modules():  # buffers the checkpoint does not carry (rotary tables, ids)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
    return model.eval().requires_grad_(False)


def load_diffusers_model(cls: Any, directory: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers model (config.json + safetensors, sharded or not) on `device` in `dtype`."""
    try:
        config = cls.load_config(str(directory))
        with parameters_on_meta():
            model = cls.from_config(config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot build {cls.__name__} from {directory}/config.json ({_line(exc)})"
        ) from None
    return load_weights_into(model, directory, device, dtype)


def load_transformers_model(cls: Any, directory: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A transformers model (UMT5 encoder, CLIP vision tower) on `device` in `dtype`."""
    try:
        config = cls.config_class.from_pretrained(str(directory))
        with parameters_on_meta():
            model = cls(config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot build {cls.__name__} from {directory}/config.json ({_line(exc)})"
        ) from None
    return load_weights_into(model, directory, device, dtype)


def free(*models: Any) -> None:
    """Drop models' device memory now (encoders used once), not at the next garbage collection."""
    import gc

    for model in models:
        if isinstance(model, torch.nn.Module):
            model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
