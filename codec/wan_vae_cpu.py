"""The Wan2.1 VAE on the CPU, a whole clip per layer, every frame's work on the pool, without diffusers.

Why a second implementation of the same network:

- **Cores.** diffusers runs the causal VAE chunk by chunk (one latent frame per decoder call; 1, then 4
  frames per encoder call), so on a CPU most layers saw one or two frames at a time, and every
  normalisation, activation and cache copy ran on the calling thread: with `codec.wan_cpu`'s kernels a
  one-GOP pass used about 1.3 of 2 cores. Here each layer takes the whole clip (a list of frames), and
  everything a frame needs (its normalisation, activation, causal convolution, residual add) is one
  `codec.cpu_threads.parallel_map` piece, computed single-threaded whichever core runs it.
- **Import time.** `diffusers.models.autoencoders` imports its whole autoencoder zoo (and through it
  UNets, transformers and `torch._dynamo`): about 5 s of a restore on a small machine. This module
  needs torch and safetensors only.

Same arithmetic, same bits. A causal convolution over the whole clip (zero frames before the first)
gives each output frame exactly the input frames diffusers' cache gives it, including the temporal
resampling layers' first-frame rules (spelled out where they are used), and each output frame is the
same one-frame 2-D convolution over the same stacked input that `codec.wan_cpu.causal_conv3d` runs;
the norms, activations and adds are the same elementwise expressions in the same order. The encoder's
latents and the decoder's pixels are therefore bit-identical to diffusers' forwards with
`codec.wan_cpu`'s kernels on one thread (tested, also against the golden archives). The parameter
names are diffusers' own, so the same safetensors load strictly.

Covers the Wan2.1 layout (`is_residual` false, no `patch_size`, no `attn_scales`) in float32; `supports` says whether a
config is one; anything else, and clips too large to hold whole, stay with diffusers' chunked forwards.
"""

from __future__ import annotations

import itertools
import json
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.cpu_threads import parallel_map

Frames = list[Tensor]  # one [1, C, H, W] contiguous tensor per frame

#: Config values this implementation reproduces (anything else: diffusers' forwards).
_DEFAULTS = {
    "base_dim": 96,
    "decoder_base_dim": None,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
}


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def supports(config: dict[str, Any]) -> bool:
    """Whether `config` (a Wan VAE's config.json) is the layout this module computes."""
    return (
        config.get("_class_name", "AutoencoderKLWan") == "AutoencoderKLWan"
        and not config.get("is_residual", False)
        and config.get("patch_size") is None
        and not config.get("attn_scales")  # diffusers' own encoder cannot run these (no reference)
        and sum(map(bool, config.get("temperal_downsample", _DEFAULTS["temperal_downsample"]))) <= 2
    )


def chunks(frames: Frames, size: int) -> list[Frames]:
    """The frames as diffusers' chunked pass holds them at one layer: the first alone, then `size` at
    a time (the encoder reads 4 frames per call, halved by each temporal downsampling; the decoder one
    latent frame, doubled by each temporal upsampling)."""
    return [frames[:1]] + [frames[i : i + size] for i in range(1, len(frames), size)]


def by_chunks(fn: Callable[[Tensor], Tensor], frames: Frames, size: int) -> Frames:
    """`fn` of each of diffusers' chunks as one batch, back as frames. The layers diffusers runs on a
    chunk's frames as a batch (the 2-D resampling convolution, the attention) run on that same batch
    here: oneDNN may pick other kernels for another batch size, and then other low bits."""
    outputs = parallel_map(lambda group: fn(torch.cat(group) if len(group) > 1 else group[0]),
                           chunks(frames, size))  # fmt: skip
    return [out[i : i + 1] for out in outputs for i in range(out.shape[0])]


# -- modules: parameters named as diffusers names them ----------------------------------------------------
class CausalConv(nn.Module):
    """The parameters of diffusers' `WanCausalConv3d`: weight [O, I, kt, kh, kw], bias [O]."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0) -> None:  # fmt: skip
        super().__init__()
        kt, kh, kw = _triple(kernel)
        self.weight = nn.Parameter(torch.empty(cout, cin, kt, kh, kw))
        self.bias = nn.Parameter(torch.empty(cout))
        self.stride = _triple(stride)
        pt, ph, pw = _triple(padding)
        self.time_padding = 2 * pt  # causal: all of it before the first frame
        self.spatial_padding = (ph, pw)

    def frame(self, window: Sequence[Tensor]) -> Tensor:
        """One output frame from its kt input frames, stacked along channels as `wan_cpu` stacks them
        (input channel i, tap k at i·kt + k)."""
        out_channels, in_channels, kt, kh, kw = self.weight.shape
        if kt == 1:
            stacked = window[0]
        else:
            stacked = torch.stack(list(window), dim=2).reshape(1, in_channels * kt, *window[0].shape[2:])
        flat = self.weight.reshape(out_channels, in_channels * kt, kh, kw)
        return F.conv2d(stacked, flat, self.bias, self.stride[1:], self.spatial_padding)

    def windows(self, frames: Frames, time_padding: int | None = None) -> list[list[Tensor]]:
        """Each output frame's input frames, zero frames before the first (the causal padding)."""
        if not frames:  # a one-frame clip has no frames after its first
            return []
        pad = self.time_padding if time_padding is None else time_padding
        seq = [torch.zeros_like(frames[0])] * pad + list(frames)
        kt, st = self.weight.shape[2], self.stride[0]
        return [seq[t * st : t * st + kt] for t in range((len(seq) - kt) // st + 1)]


class RmsNorm(nn.Module):
    """diffusers' `WanRMS_norm` (no bias) as `codec.wan_cpu`'s CPU forward computes it."""

    def __init__(self, dim: int, images: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim**0.5

    def forward(self, x: Tensor) -> Tensor:
        squares = (x * x).sum(1, keepdim=True)
        normalized = x * torch.rsqrt(squares.clamp_min(1e-24))
        return normalized * self.scale * self.gamma.view(-1, 1, 1) + 0.0


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = RmsNorm(cin, images=False)
        self.conv1 = CausalConv(cin, cout, 3, padding=1)
        self.norm2 = RmsNorm(cout, images=False)
        self.conv2 = CausalConv(cout, cout, 3, padding=1)
        self.conv_shortcut = CausalConv(cin, cout, 1) if cin != cout else None

    def forward(self, frames: Frames) -> Frames:
        def first(x: Tensor) -> tuple[Tensor, Tensor]:
            shortcut = x if self.conv_shortcut is None else self.conv_shortcut.frame([x])
            return F.silu(self.norm1(x)), shortcut

        firsts = parallel_map(first, frames)
        hidden = parallel_map(lambda w: F.silu(self.norm2(self.conv1.frame(w))),
                              self.conv1.windows([a for a, _ in firsts]))  # fmt: skip
        shortcuts = [s for _, s in firsts]
        return parallel_map(lambda tw: self.conv2.frame(tw[1]) + shortcuts[tw[0]],
                            list(enumerate(self.conv2.windows(hidden))))  # fmt: skip


class AttentionBlock(nn.Module):
    """diffusers' `WanAttentionBlock`: one-head self-attention within each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RmsNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def batch(self, x: Tensor) -> Tensor:
        """Frames [N, C, H, W] (one of diffusers' chunks) -> the block's output for each."""
        count, channels, height, width = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(count, 1, channels * 3, -1).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).permute(0, 2, 1).reshape(count, channels, height, width)
        return self.proj(out) + x

    def forward(self, frames: Frames, chunk: int) -> Frames:
        return by_chunks(self.batch, frames, chunk)


class MidBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, frames: Frames, chunk: int) -> Frames:
        return self.resnets[1](self.attentions[0](self.resnets[0](frames), chunk))


class _Upsample2x(nn.Module):
    """diffusers' `WanUpsample` (nearest-exact ×2, in float32); no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """diffusers' `WanResample` (the four resampling modes), frame by frame over a whole clip."""

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        out = dim // 2 if upsample_out_dim is None else upsample_out_dim
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, out, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, frames: Frames, chunk: int) -> tuple[Frames, int]:
        """The resampled frames and the chunk size of diffusers' pass after this layer."""
        if self.mode == "upsample3d":
            # diffusers' cache: the first chunk (frame 0) skips the time convolution ("Rep"); every
            # later frame is one causal convolution over frames 1.. (zeros before frame 1), whose 2c
            # output channels are two frames: [0:c] first, [c:2c] second.
            pairs = parallel_map(self.time_conv.frame, self.time_conv.windows(frames[1:]))
            channels = frames[0].shape[1]
            frames = [frames[0]] + [f for p in pairs for f in (p[:, :channels], p[:, channels:])]
            frames = [f.contiguous() for f in frames]
            chunk *= 2
        frames = by_chunks(self.resample, frames, chunk)
        if self.mode == "downsample3d":
            # diffusers' cache: frame 0 passes as it is; then each chunk's frames with the last frame
            # before them, stride 2: windows starting at frames 0, 2, 4, … of the whole clip.
            frames = [frames[0], *parallel_map(self.time_conv.frame, self.time_conv.windows(frames, 0))]
            chunk //= 2
        return frames, chunk


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_res_blocks: int, mode: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res_blocks + 1)]
        )
        self.upsamplers = nn.ModuleList([Resample(cout, mode)]) if mode else None

    def forward(self, frames: Frames, chunk: int) -> tuple[Frames, int]:
        for resnet in self.resnets:
            frames = resnet(frames)
        return self.upsamplers[0](frames, chunk) if self.upsamplers is not None else (frames, chunk)


def _head(norm: RmsNorm, conv: CausalConv, frames: Frames) -> Frames:
    """norm, SiLU, causal convolution (the encoder's and decoder's last layers)."""
    activated = parallel_map(lambda x: F.silu(norm(x)), frames)
    return parallel_map(conv.frame, conv.windows(activated))


class Encoder(nn.Module):
    def __init__(self, c: types.SimpleNamespace) -> None:
        super().__init__()
        dims = [c.base_dim * u for u in [1, *c.dim_mult]]
        self.conv_in = CausalConv(c.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            for _ in range(c.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(c.dim_mult) - 1:
                blocks.append(Resample(cout, "downsample3d" if c.temperal_downsample[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RmsNorm(dims[-1], images=False)
        self.conv_out = CausalConv(dims[-1], c.z_dim * 2, 3, padding=1)

    def forward(self, frames: Frames) -> Frames:
        frames, chunk = parallel_map(self.conv_in.frame, self.conv_in.windows(frames)), 4
        for block in self.down_blocks:
            if isinstance(block, Resample):
                frames, chunk = block(frames, chunk)
            else:
                frames = block(frames)
        return _head(self.norm_out, self.conv_out, self.mid_block(frames, chunk))


class Decoder(nn.Module):
    def __init__(self, c: types.SimpleNamespace) -> None:
        super().__init__()
        base = c.decoder_base_dim or c.base_dim
        dims = [base * u for u in [c.dim_mult[-1], *c.dim_mult[::-1]]]
        upsample = list(c.temperal_downsample[::-1])
        self.conv_in = CausalConv(c.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            cin = cin // 2 if i > 0 else cin
            mode = None
            if i != len(c.dim_mult) - 1:
                mode = "upsample3d" if upsample[i] else "upsample2d"
            blocks.append(UpBlock(cin, cout, c.num_res_blocks, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RmsNorm(dims[-1], images=False)
        self.conv_out = CausalConv(dims[-1], c.out_channels, 3, padding=1)

    def forward(self, frames: Frames) -> Frames:
        frames, chunk = self.mid_block(parallel_map(self.conv_in.frame, self.conv_in.windows(frames)), 1), 1
        for block in self.up_blocks:
            frames, chunk = block(frames, chunk)
        return _head(self.norm_out, self.conv_out, frames)


class WanVaeCpu(nn.Module):
    """The Wan2.1 VAE (diffusers' `AutoencoderKLWan` parameters) computed a whole clip per layer."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if not supports(config):
            raise ValueError(
                "WanVaeCpu computes the Wan2.1 layout only (no is_residual, patch_size, attn_scales)"
            )
        self.source_config = dict(config)  # config.json as read (diffusers' model is built from it)
        known = {**_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        self.config = types.SimpleNamespace(**known)
        self.encoder = Encoder(self.config)
        self.quant_conv = CausalConv(self.config.z_dim * 2, self.config.z_dim * 2, 1)
        self.post_quant_conv = CausalConv(self.config.z_dim, self.config.z_dim, 1)
        self.decoder = Decoder(self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @torch.no_grad()
    def encode_mode(self, x: Tensor) -> Tensor:
        """Video [1, 3, T, H, W] in [-1, 1] (T = 1+4k) -> the posterior's mode [1, z, F, h, w]."""
        frames = [x[:, :, t].contiguous() for t in range(x.shape[2])]
        moments = parallel_map(lambda f: self.quant_conv.frame([f]), self.encoder(frames))
        return torch.stack(moments, dim=2)[:, : self.config.z_dim]

    @torch.no_grad()
    def decode_frames(self, z: Tensor, finish: Callable[[Tensor], Tensor]) -> list[Tensor]:
        """Latents [1, z, F, h, w] -> `finish` of each decoded frame ([1, 3, H, W], clamped to [-1, 1])."""
        frames = [z[:, :, t].contiguous() for t in range(z.shape[2])]
        frames = parallel_map(lambda f: self.post_quant_conv.frame([f]), frames)
        return parallel_map(lambda f: finish(torch.clamp(f, min=-1.0, max=1.0)), self.decoder(frames))


def read_config(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "config.json").read_text())


def load_cpu_vae(directory: str | Path, config: dict[str, Any] | None = None) -> WanVaeCpu:
    """A Wan2.1 VAE folder (config.json + safetensors) as a `WanVaeCpu` in float32, strictly."""
    from codec.weights import load_weights_into, parameters_on_meta

    with parameters_on_meta():
        model = WanVaeCpu(config if config is not None else read_config(directory))
    return load_weights_into(model, Path(directory), torch.device("cpu"), torch.float32)


def whole_clip_bytes(config: types.SimpleNamespace, frames: int, height: int, width: int) -> int:
    """About the most memory a whole-clip pass holds at once: four float32 activations of the widest
    full-resolution layer (input, activated, convolved, shortcut)."""
    widest = max(config.base_dim, config.decoder_base_dim or 0)
    return 4 * 4 * frames * height * width * widest
