"""The networks GVC drives: a latent tokenizer (Wan VAE) and a rectified-flow Wan transformer.

Two directory layouts load here (both diffusers format, both behind a vidarc model card):

- the bundled `vidarc-tiny`: `tokenizer/` (AutoencoderKLWan) and `flow/` (a small
  WanTransformer3DModel with 36 input channels, conditioned like Wan I2V — mask + reference latent — but
  without CLIP, and with a fixed null text embedding in `flow/null_text_embedding.safetensors`);
- a real Wan2.1 directory: `vae/`, `transformer/`, and `text_encoder/` + `tokenizer/` (UMT5) for the
  empty prompt (the embedding of "" is computed once at load time; it needs `transformers`).

The codec's identity is the digest of exactly the components it uses, so adding components to a bundle
does not change it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from codec.errors import ModelLoadError
from codec.gvc.conditioning import build_condition

NULL_TEXT_FILE = "null_text_embedding.safetensors"


class WanTokenizer:
    """AutoencoderKLWan: uint8 frames T×H×W×3 <-> normalised latents [16, F, H/8, W/8]."""

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, vae, device: torch.device, dtype: torch.dtype) -> None:
        self.vae, self.device, self.dtype = vae, device, dtype
        cfg = vae.config
        z = cfg.z_dim
        self.channels = z
        mean = getattr(cfg, "latents_mean", None) or [0.0] * z
        std = getattr(cfg, "latents_std", None) or [1.0] * z
        if len(mean) != z or len(std) != z:
            raise ModelLoadError(f"Wan VAE config has {len(mean)}/{len(std)} latent statistics for z_dim {z}")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(z, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(z, 1, 1, 1)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        video = video.permute(3, 0, 1, 2).unsqueeze(0).to(self.dtype) / 127.5 - 1.0
        latents = self.vae.encode(video).latent_dist.mode()[0].to(torch.float32)
        return (latents - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        raw = (latents.to(self.device, torch.float32) * self.std + self.mean).unsqueeze(0).to(self.dtype)
        video = self.vae.decode(raw).sample[0].to(torch.float32)
        video = ((video.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).cpu().numpy()


@dataclasses.dataclass
class FlowBackbone:
    """Tokenizer + flow transformer + fixed text embedding; `velocity` is what the sampler calls."""

    tokenizer: object
    transformer: torch.nn.Module
    text_embedding: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    conditioned: bool  # True: 36-channel I2V-style input (tiny model, real I2V/FLF2V); False: real T2V

    @property
    def modes(self) -> tuple[str, ...]:
        return ("t2v", "i2v", "flf2v") if self.conditioned else ("t2v",)

    def condition(self, mode, first, last, pixel_frames, latent_shape) -> torch.Tensor | None:
        if not self.conditioned:
            return None
        return build_condition(mode, first, last, pixel_frames, latent_shape, self.tokenizer.encode).to(
            self.device
        )

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, condition: torch.Tensor | None) -> torch.Tensor:
        inp = x if condition is None else torch.cat([x, condition], dim=0)
        timestep = torch.tensor([t * 1000.0], device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=inp.unsqueeze(0).to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=self.text_embedding,
            return_dict=False,
        )[0]
        return out[0].to(torch.float32)


def tiny_flow_config(
    latent_channels: int = 16, text_dim: int = 32, width: int = 128, layers: int = 4
) -> dict:
    """A small WanTransformer3DModel config with Wan I2V's input layout (x, 4 mask channels, condition
    latent) and no CLIP branch: the bundled flow model's architecture (≈1M parameters at the defaults)."""
    heads = max(1, width // 32)
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "in_channels": 2 * latent_channels + 4,
        "out_channels": latent_channels,
        "text_dim": text_dim,
        "freq_dim": 64,
        "ffn_dim": 2 * width,
        "num_layers": layers,
        "image_dim": None,
        "rope_max_seq_len": 1024,
    }


def save_flow(transformer: torch.nn.Module, text_embedding: torch.Tensor, directory: Path) -> None:
    """Write a flow model directory: diffusers config + safetensors, and the fixed null text embedding."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(str(directory), safe_serialization=True)
    save_file({"embedding": text_embedding.detach().cpu().contiguous()}, str(directory / NULL_TEXT_FILE))


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device/dtype but keep the modules diffusers pins to float32 (Wan's rope, time
    embedding, norms) in float32, as `from_pretrained(torch_dtype=...)` would."""
    model = model.to(device, dtype).eval()
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32:
        for name, module in model.named_modules():
            if any(k in name.split(".") for k in keep):
                module.to(torch.float32)
    return model


def load_diffusers_model(cls, directory: Path) -> torch.nn.Module:
    """A diffusers model from config.json + safetensors shards, strictly (every weight present, none
    extra): `from_pretrained` without `accelerate` refuses Wan's fp32-pinned modules, and this path
    also makes a wrong or partial checkpoint a clear error instead of silently random layers."""
    from safetensors.torch import load_file

    try:
        model = cls.from_config(cls.load_config(str(directory)))
        shards = sorted(directory.glob("*.safetensors"))
        shards = [p for p in shards if p.name != NULL_TEXT_FILE]
        if not shards:
            raise OSError("no .safetensors weights")
        state = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        model.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {cls.__name__} from {directory}: {first_line}") from None
    return model


class _UnbatchedTokenizer:
    """Adapts the GLVC tokenizer ([1, C, F, h, w] latents) to GVC's unbatched [C, F, h, w] view."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.channels = inner.latent_channels
        self.spatial_factor = inner.spatial_factor
        self.temporal_factor = inner.temporal_factor

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.inner.encode(frames)[0]

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return self.inner.decode(latents.unsqueeze(0))


def load_tokenizer_dir(directory: Path, device: torch.device, dtype: torch.dtype):
    """The project's tokenizer (`codec.glvc.tokenizer`, one implementation for both codecs) when
    present, else AutoencoderKLWan wrapped here."""
    try:
        from codec.glvc.tokenizer import load_tokenizer
    except ImportError:
        load_tokenizer = None
    if load_tokenizer is not None:
        try:
            return _UnbatchedTokenizer(load_tokenizer(directory, device, dtype))
        except (OSError, ValueError, RuntimeError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"cannot load the tokenizer from {directory}: {first_line}") from None
    from diffusers import AutoencoderKLWan

    vae = load_diffusers_model(AutoencoderKLWan, directory).to(device, dtype).eval()
    return WanTokenizer(vae, device, dtype)


def load_backbone(root: Path, device: torch.device) -> tuple[FlowBackbone, list[str]]:
    """(backbone, names of the components used) from a bundle (`flow/`) or a Wan2.1 directory."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if (root / "flow").is_dir():
        flow_dir, vae_dir, components = root / "flow", root / "tokenizer", ["tokenizer", "flow"]
    elif (root / "transformer").is_dir():
        flow_dir, vae_dir, components = root / "transformer", root / "vae", ["vae", "transformer"]
    else:
        raise ModelLoadError(f"model {root} has no GVC flow model (neither flow/ nor transformer/)")
    if not vae_dir.is_dir():
        raise ModelLoadError(f"model {root} has no {vae_dir.name}/ (the Wan VAE)")
    transformer = place(load_diffusers_model(WanTransformer3DModel, flow_dir), device, dtype)
    if (flow_dir / NULL_TEXT_FILE).is_file():
        text = load_file(str(flow_dir / NULL_TEXT_FILE))["embedding"]
    else:
        text = _empty_prompt_embedding(root, device)
        components += ["text_encoder", "tokenizer"]
    if transformer.config.image_dim is not None:
        raise ModelLoadError(
            f"model {root}: CLIP-conditioned Wan I2V/FLF2V transformers are not supported yet; "
            "use a T2V transformer or the bundled flow model"
        )
    conditioned = transformer.config.in_channels > transformer.config.out_channels
    tokenizer = load_tokenizer_dir(vae_dir, device, dtype)
    backbone = FlowBackbone(tokenizer, transformer, text.to(device, dtype), device, dtype, conditioned)
    return backbone, components


def _empty_prompt_embedding(root: Path, device: torch.device, max_length: int = 512) -> torch.Tensor:
    """UMT5 embedding of "" (Wan's unconditional text), as diffusers' WanPipeline.encode_prompt makes it."""
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError:
        raise ModelLoadError(
            f"model {root}: computing Wan's empty-prompt embedding needs the 'transformers' package"
        ) from None
    if not (root / "text_encoder").is_dir():
        raise ModelLoadError(f"model {root} has no text_encoder/ for the empty prompt")
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    enc = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), use_safetensors=True).eval()
    ids = tok([""], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    length = int(ids.attention_mask.sum())
    hidden = hidden[:, :length]
    return torch.cat([hidden, hidden.new_zeros(1, max_length - length, hidden.shape[-1])], dim=1)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
