"""The tokenizer: diffusers' `AutoencoderKLWan` (Wan2.1 VAE architecture) behind a frames <-> latents API.

Why a wrapper: the codec needs a few conventions the VAE leaves to callers —
- frames are uint8 T×H×W×3 RGB; the VAE wants [-1, 1] float [B, 3, T, H, W];
- T must be 1+4k (a causal VAE silently drops frames otherwise) and H, W multiples of its 8× stride;
- each GOP is coded independently: diffusers' `encode`/`decode` call `clear_cache()` first, which resets
  the causal feature cache, so one call per GOP is one GOP with a fresh cache;
- latents are normalised per channel with the config's `latents_mean`/`latents_std` (as Wan pipelines
  do), so the latent codec sees roughly unit-variance data whatever tokenizer it is paired with;
- the posterior *mode* is used (a codec wants a deterministic latent, not a sample);
- the VAE runs untiled whenever the untiled pass fits the memory this process can still get (decided
  per call from the padded size, `codec.gpu.vae_needs_tiling`); only frames too large for that use the
  VAE's spatial tiling, which is slower and blends tile seams;
- on CUDA the VAE may run in bf16 (its convolutions are well conditioned; the normalisation stays fp32).
  Nothing downstream of the VAE's encoder selects entropy-coding tables without going through the
  latent codec's exact integer path, so bf16 here cannot desynchronise a decoder;
- on CUDA, by default, cuDNN autotuning is on and the encoder and decoder are `torch.compile`d (eager
  if that fails, logged); channels-last (3-D) memory format is an option. All three change the float
  pixels slightly from run to run or device to device, never the entropy-coded symbols;
- on the CPU, by default, the VAE's causal 3-D convolutions and RMS norms run as the CPU kernels of
  `codec.wan_cpu` (the same network: 3-4× faster, pixels within one level of diffusers' forwards);
- on the CPU, by default, a Wan2.1-layout float32 VAE is loaded as `codec.wan_vae_cpu.WanVaeCpu`: the
  same weights and bits as those kernels, a whole clip per layer with every frame's work on the cores,
  and no diffusers import (a restore starts seconds sooner). diffusers' model is built from the same
  weight tensors when something asks for `Tokenizer.vae` (training) or a pass must tile or does not fit
  whole, and from then on the passes that need it use it;
- several threads may run passes at once (the codecs decode GOPs side by side on a CPU): diffusers keeps
  a pass's causal feature cache on the VAE object, so each thread runs a shallow copy of it of its own
  (same modules and weights, its own cache).
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from codec.gpu import CompiledOrEager, free_memory_bytes, vae_needs_tiling
from codec.wan_vae_cpu import WanVaeCpu, load_cpu_vae, read_config, supports, whole_clip_bytes


class Tokenizer:
    """A loaded `AutoencoderKLWan` with GLVC's frame/latent conventions.

    `compile` wraps the VAE's encoder and decoder in `torch.compile` from their second pass on (a
    one-off restore stays eager rather than paying a compile; a job compiles once per process; the
    codecs turn it on for CUDA, training code keeps the plain modules, whose state dict it saves);
    `channels_last` stores activations channels-last (3-D); `autotune` (default: on CUDA) turns on
    cuDNN's algorithm search for the VAE's fixed shapes; `cpu_kernels` (default: on the CPU) runs the
    VAE with `codec.wan_cpu`'s forwards.
    """

    def __init__(
        self,
        vae,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        compile: bool = False,
        channels_last: bool = False,
        autotune: bool | None = None,
        cpu_kernels: bool | None = None,
    ) -> None:
        self.whole_clip: WanVaeCpu | None = None
        if isinstance(vae, WanVaeCpu):  # diffusers' model only when something needs it (`vae`)
            self.whole_clip, self._cpu_model, self._cpu_kernels = vae, vae, cpu_kernels
            self.device, self.dtype, self.channels_last = torch.device("cpu"), torch.float32, False
            self.compiled, self._vae = False, None
            self._setup(vae.config)
            return
        if vae.dtype != dtype:
            vae = vae.to(dtype=dtype)
        self._vae = vae.to(device=device).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.channels_last = channels_last
        if channels_last:  # the 3-D convolutions' weights (the VAE also has 2-D ones, left as they are)
            for module in self._vae.modules():
                if isinstance(module, torch.nn.Conv3d):
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
        if autotune if autotune is not None else self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if cpu_kernels if cpu_kernels is not None else self.device.type == "cpu":
            from codec.wan_cpu import use_cpu_kernels

            use_cpu_kernels(self._vae)
        self.compiled = compile
        self._setup(vae.config)

    def _setup(self, cfg) -> None:
        self._local = threading.local()  # this thread's view of the VAE (its own feature cache)
        self._vae_lock = threading.Lock()
        self._passes = {"encoder": 0, "decoder": 0}
        #: Whether the last encode/decode ran tiled (benchmarks report it).
        self.last_tiled: bool | None = None
        self.base_dim = int(getattr(cfg, "base_dim", 96))
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = 2 ** sum(1 for _ in cfg.dim_mult[1:])
        self.temporal_factor = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32)
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise ValueError("latents_mean/latents_std must have one entry per latent channel")
        self.mean = mean.view(1, -1, 1, 1, 1).to(self.device)
        self.std = std.view(1, -1, 1, 1, 1).to(self.device)

    @property
    def vae(self):
        """diffusers' `AutoencoderKLWan`. A tokenizer loaded as `WanVaeCpu` builds it on first use from
        the same weight tensors (with `codec.wan_cpu`'s kernels) and from then on runs every pass through
        it: whoever asked may train or change it, and the passes must see what it sees."""
        self.whole_clip = None
        return self._diffusers_vae()

    def _diffusers_vae(self):
        with self._vae_lock:
            if self._vae is None:
                self._vae = _diffusers_from(self._cpu_model, self._cpu_kernels)
            return self._vae

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor

    def needs_tiling(self, height: int, width: int, frames: int) -> bool:
        """Whether a pass at this padded size must tile to fit (`codec.gpu.vae_needs_tiling`)."""
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        free = free_memory_bytes(self.device)
        return vae_needs_tiling(free, height, width, frames, self.base_dim, itemsize)

    def _thread_vae(self):
        """This thread's VAE: a shallow copy sharing every module (and so the weights, and any compiled
        part) but holding its own causal cache and tiling switch, so passes on several threads never
        read each other's cache."""
        vae = getattr(self._local, "vae", None)
        if vae is None:
            vae = self._local.vae = copy.copy(self._diffusers_vae())
        return vae

    def _whole_clip_for(self, height: int, width: int, frames: int) -> WanVaeCpu | None:
        """The whole-clip model for a pass of this size, or None: diffusers' chunked forwards then (a
        pass that must tile, or whose whole clip would not fit the memory this process can get)."""
        model = self.whole_clip
        if model is None or self.needs_tiling(height, width, frames):
            return None
        free = free_memory_bytes(self.device)
        if free is not None and whole_clip_bytes(model.config, frames, height, width) > free:
            return None
        self.last_tiled = False
        return model

    def _tiling_for(self, vae, height: int, width: int, frames: int) -> None:
        self.last_tiled = self.needs_tiling(height, width, frames)
        if self.last_tiled:
            vae.enable_tiling()
        else:
            vae.disable_tiling()

    def _count_pass(self, part: str) -> None:
        """Wrap `part` (encoder/decoder) in `torch.compile` as its second pass starts."""
        self._passes[part] += 1
        if self.compiled and self._passes[part] == 2:
            vae = self._diffusers_vae()
            setattr(vae, part, CompiledOrEager(getattr(vae, part), f"the tokenizer's {part}"))

    def _as_input(self, x: Tensor) -> Tensor:
        x = x.permute(3, 0, 1, 2)[None].to(self.dtype) / 127.5 - 1.0
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    @torch.no_grad()
    def encode(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 [T, H, W, 3] (T = 1+4k, H, W multiples of the stride; an array, or a tensor already on
        the device) -> normalised latents [1, C, F, h, w]."""
        count, height, width, _ = frames.shape
        if (count - 1) % self.temporal_factor or height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"tokenizer needs 1+{self.temporal_factor}k frames and sizes divisible by "
                f"{self.spatial_factor}, got {count}×{height}×{width}"
            )
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        x = self._as_input(frames.to(self.device))
        self._count_pass("encoder")
        whole = self._whole_clip_for(height, width, count)
        if whole is not None:
            mode = whole.encode_mode(x)
        else:
            vae = self._thread_vae()
            self._tiling_for(vae, height, width, count)
            mode = vae.encode(x).latent_dist.mode()
        return (mode.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Normalised latents [1, C, F, h, w] -> uint8 frames [1+4(F-1), 8h, 8w, 3]."""
        z = (latents.to(self.device).float() * self.std + self.mean).to(self.dtype)
        frames = 1 + (latents.shape[2] - 1) * self.temporal_factor
        s = self.spatial_factor
        height, width = latents.shape[-2] * s, latents.shape[-1] * s
        self._count_pass("decoder")
        whole = self._whole_clip_for(height, width, frames)
        if whole is not None:  # each frame finished to uint8 on the core that decoded it
            done = whole.decode_frames(z, lambda f: _to_uint8(f[0]).permute(1, 2, 0))
            return torch.stack(done).numpy()
        vae = self._thread_vae()
        self._tiling_for(vae, height, width, frames)
        video = vae.decode(z).sample[0]  # [3, T, H, W] in about [-1, 1]
        return _to_uint8(video).permute(1, 2, 3, 0).cpu().numpy()


def _to_uint8(video: Tensor) -> Tensor:
    return ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def load_tokenizer(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **options: bool | None,  # compile, channels_last, autotune
) -> Tokenizer:
    """Load a diffusers-format `AutoencoderKLWan` directory (safetensors only) as a Tokenizer, its
    weights read straight onto `device` in `dtype` (`codec.weights`); `options` are the Tokenizer's
    (compile, channels_last, autotune)."""
    dtype = dtype or torch.float32
    plain = (
        not any(options.get(k) for k in ("compile", "channels_last"))
        and options.get("cpu_kernels") is not False
    )
    if torch.device(device).type == "cpu" and dtype == torch.float32 and plain:
        config = read_config(directory)
        if supports(config):
            return Tokenizer(load_cpu_vae(directory, config), cpu_kernels=options.get("cpu_kernels"))
    from diffusers import AutoencoderKLWan

    from codec.weights import load_diffusers_model

    vae = load_diffusers_model(AutoencoderKLWan, Path(directory), torch.device(device), dtype)
    return Tokenizer(vae, device=device, dtype=dtype, **options)


def _diffusers_from(model: WanVaeCpu, cpu_kernels: bool | None):
    """diffusers' `AutoencoderKLWan` holding `model`'s very weight tensors (nothing copied)."""
    from diffusers import AutoencoderKLWan

    from codec.weights import parameters_on_meta

    with parameters_on_meta():
        vae = AutoencoderKLWan.from_config(model.source_config)
    vae.load_state_dict(model.state_dict(), strict=True, assign=True)
    vae = vae.eval().requires_grad_(False)
    if cpu_kernels is not False:
        from codec.wan_cpu import use_cpu_kernels

        use_cpu_kernels(vae)
    return vae
