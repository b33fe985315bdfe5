"""The networks GVC drives: a latent tokenizer (Wan VAE) and a rectified-flow Wan transformer.

Two directory layouts load here (`codec.wan.flow_layout` tells them apart from their configs):

- the bundled `vidarc-tiny`: `tokenizer/` (AutoencoderKLWan) and `flow/` (a small
  WanTransformer3DModel with 36 input channels, conditioned like Wan I2V — mask + reference latent — but
  without CLIP, and with a fixed null text embedding in `flow/null_text_embedding.safetensors`);
- an official Wan2.1 Diffusers folder: `vae/`, `transformer/`, `text_encoder/` + `tokenizer/` (UMT5) for
  the empty prompt, and for I2V/FLF2V `image_encoder/` + `image_processor/` (CLIP), whose embedding of
  the *decoded* reference frame(s) conditions the transformer as in diffusers' `WanImageToVideoPipeline`
  (so the decoder, which holds the same decoded frames, computes the same conditioning).

Every network is read straight onto its device in the requested dtype (`codec.weights`). The codec's
identity is the digest of exactly the components it uses, so adding components to a bundle does not
change it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from codec.errors import ModelLoadError
from codec.gvc.conditioning import build_condition
from codec.modeldir import ModelDir
from codec.wan import MODES_BEST_FIRST, NULL_TEXT_FILE, FlowLayout
from codec.weights import free, load_diffusers_model, load_transformers_model


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
class Conditioning:
    """What the flow model sees besides x_t: the condition latent y (mask + reference latent, 20
    channels) and, for CLIP-conditioned Wan checkpoints, the reference frames' image embedding."""

    latent: torch.Tensor | None = None
    image: torch.Tensor | None = None


class ClipImageEncoder:
    """CLIP vision tower + its processor, as diffusers' Wan I2V pipeline uses them: the penultimate
    hidden states of the processed reference image(s), [images, tokens, dim]."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        return out.hidden_states[-2]


@dataclasses.dataclass
class FlowBackbone:
    """Tokenizer + flow transformer + fixed text embedding; `velocity` is what the sampler calls."""

    tokenizer: object
    transformer: torch.nn.Module
    text_embedding: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    conditioned: bool  # True: 36-channel I2V-style input (tiny model, real I2V/FLF2V); False: real T2V
    image_encoder: ClipImageEncoder | None = None  # real Wan I2V/FLF2V checkpoints
    supported: tuple[str, ...] | None = None  # modes, best first (default: from `conditioned`)

    @property
    def modes(self) -> tuple[str, ...]:
        if self.supported is not None:
            return self.supported
        return MODES_BEST_FIRST if self.conditioned else ("t2v",)

    def condition(self, mode, first, last, pixel_frames, latent_shape) -> Conditioning | None:
        """The decoded reference frames -> what the transformer is conditioned on (both sides alike)."""
        if not self.conditioned:
            return None
        latent = build_condition(mode, first, last, pixel_frames, latent_shape, self.tokenizer.encode)
        image = None
        if self.image_encoder is not None:
            refs = [first] if mode == "i2v" else [first, last]
            image = self.image_encoder(refs).to(self.dtype)
        return Conditioning(latent.to(self.device), image)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: float, condition) -> torch.Tensor:
        if isinstance(condition, torch.Tensor):  # a bare condition latent (older callers)
            condition = Conditioning(condition)
        condition = condition or Conditioning()
        inp = x if condition.latent is None else torch.cat([x, condition.latent], dim=0)
        timestep = torch.tensor([t * 1000.0], device=self.device, dtype=torch.float32)
        extra = {} if condition.image is None else {"encoder_hidden_states_image": condition.image}
        out = self.transformer(
            hidden_states=inp.unsqueeze(0).to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=self.text_embedding,
            return_dict=False,
            **extra,
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
    """The project's tokenizer (`codec.glvc.tokenizer`, one implementation for both codecs)."""
    from codec.glvc.tokenizer import load_tokenizer

    try:
        return _UnbatchedTokenizer(load_tokenizer(directory, device, dtype))
    except (OSError, ValueError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load the tokenizer from {directory}: {first_line}") from None


def load_backbone(
    layout: FlowLayout, model: ModelDir, device: torch.device, dtype: torch.dtype
) -> FlowBackbone:
    """The networks of `layout`, each read straight onto `device` in `dtype` (`codec.weights`).

    Order matters for memory: the empty-prompt embedding first (UMT5 runs once, or never when the
    embedding is cached, and is freed before anything else loads), then the VAE and CLIP, then the
    transformer.
    """
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    if layout.fixed_text:
        text = load_file(str(layout.flow_dir / NULL_TEXT_FILE))["embedding"]
    else:
        text = empty_prompt_embedding(
            layout.root, model.components_digest(["text_encoder", "tokenizer"]), device, dtype
        )
    tokenizer = load_tokenizer_dir(layout.vae_dir, device, dtype)
    image_encoder = load_image_encoder(layout.root, device, dtype) if layout.clip else None
    transformer = load_diffusers_model(WanTransformer3DModel, layout.flow_dir, device, dtype)
    if device.type == "cpu":
        from codec.wan_cpu import use_cpu_attention

        use_cpu_attention()  # heads side by side on the cores, each on one thread
    conditioned = transformer.config.in_channels > transformer.config.out_channels
    return FlowBackbone(
        tokenizer,
        transformer,
        text.to(device, dtype),
        device,
        dtype,
        conditioned,
        image_encoder,
        layout.modes,
    )


def load_image_encoder(root: Path, device: torch.device, dtype: torch.dtype) -> ClipImageEncoder:
    """CLIPVisionModel (image_encoder/) + CLIPImageProcessor (image_processor/) of a Wan I2V/FLF2V folder."""
    transformers = _transformers(root, "the CLIP image encoder")
    try:
        processor = transformers.CLIPImageProcessor.from_pretrained(str(root / "image_processor"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {root}: cannot read image_processor/ ({_line(exc)})") from None
    model = load_transformers_model(transformers.CLIPVisionModel, root / "image_encoder", device, dtype)
    return ClipImageEncoder(model, processor, device, dtype)


#: Wan's text length: the pipelines pad every prompt embedding to 512 tokens.
TEXT_LENGTH = 512


def empty_prompt_embedding(root: Path, digest: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """UMT5 embedding of "" (Wan's unconditional text) [1, 512, dim], as diffusers' `WanPipeline.encode_prompt`
    makes it: the encoder's output over the prompt's real tokens, zero-padded to 512.

    It is computed once per model and cached next to it (`<model>/.vidarc/`, hidden so never hashed;
    `~/.cache/vidarc/embeddings/` when the model folder is read-only), keyed by the digest of the text
    encoder and tokenizer files. Then UMT5 — 5.7B parameters for Wan2.1 — is freed: it is never needed
    again. The cache keeps the first computation (bf16 on a GPU, float32 on a CPU): encoders and
    decoders sharing the model folder use the very same tensor; elsewhere the same device class
    recomputes the same values, another one differs within that dtype's rounding. The encoder runs on the real tokens only (for "" that is one EOS token): with the attention
    mask the pipeline uses, padded positions cannot change them, so the result is the same.
    """
    from safetensors.torch import load_file, save_file

    name = f"null_text-{digest[:16]}-{TEXT_LENGTH}.safetensors"
    places = [root / ".vidarc" / name, embedding_cache_dir() / name]
    for path in places:
        if path.is_file():
            return load_file(str(path))["embedding"]
    transformers = _transformers(root, "Wan's empty-prompt embedding")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {root}: cannot read the text tokenizer/ ({_line(exc)})") from None
    encoder = load_transformers_model(transformers.UMT5EncoderModel, root / "text_encoder", device, dtype)
    ids = tokenizer([""], return_tensors="pt", add_special_tokens=True)
    with torch.no_grad():
        hidden = encoder(
            ids.input_ids.to(device), attention_mask=ids.attention_mask.to(device)
        ).last_hidden_state
    hidden = hidden.to(torch.float32).cpu()[:, :TEXT_LENGTH]
    embedding = torch.cat(
        [hidden, hidden.new_zeros(1, TEXT_LENGTH - hidden.shape[1], hidden.shape[-1])], dim=1
    )
    free(encoder)
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"embedding": embedding.contiguous()}, str(tmp), metadata={"dtype": str(dtype)})
            tmp.replace(path)
            break
        except OSError:
            continue
    return embedding


def embedding_cache_dir() -> Path:
    return Path(os.environ.get("VIDARC_EMBEDDING_CACHE", "~/.cache/vidarc/embeddings")).expanduser()


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _transformers(root: Path, purpose: str):
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            f"model {root}: {purpose} needs the 'transformers' package (pip install 'vidarc[wan]')"
        ) from None
    return transformers
