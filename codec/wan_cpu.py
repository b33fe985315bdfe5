"""CPU kernels for the Wan VAE: the same network, computed the way a CPU is fast at.

PyTorch has no fast CPU path for `conv3d` (it falls back to `slow_conv3d`: an im2col and a GEMM per
frame), and the Wan VAE is almost nothing but causal 3-D convolutions: on the bundled tokenizer they are
81 % of a decode. Two rewrites, both the same arithmetic in another summation order (outputs agree with
diffusers' to float rounding, about 1e-6 relative; a decoded pixel moves by at most one level):

- **A causal 3-D convolution as one 2-D convolution.** A kernel of depth kt over time is a 2-D
  convolution over kt frames stacked along channels: output frame t sees input frames t·s … t·s+kt−1.
  The weight [O, I, kt, kh, kw] is read as [O, I·kt, kh, kw] (no copy) and oneDNN's 2-D kernels do
  the rest; spatial zero padding is the 2-D convolution's own, so frames are never padded in memory.
  One call per output frame, its stacked input built by that call (the extra memory is kt input
  frames per core, not kt times the clip), the frames spread over the cores with
  `codec.cpu_threads.parallel_map`: each frame is the same single-threaded computation on any core,
  so the output does not depend on the core count. At the bundled tokenizer's 16-64 channels a layer
  is 7× faster; at the full Wan VAE's 96-384 channels `slow_conv3d` was never slow and this is about
  as fast (docs/BENCHMARKS.md, "The neural codecs on a CPU").
- **The RMS norm as a sum of squares and an `rsqrt`** instead of `F.normalize` (`linalg_vector_norm`,
  9 % of a decode): the same per-position reduction over channels, in one pass.
- **The flow transformer's attention one head per call** (`use_cpu_attention`, for GVC): heads are
  independent, so they spread over the cores with the same property.

`use_cpu_kernels(vae)` switches a loaded VAE's modules to these forwards in place (their classes become
subclasses of diffusers' own; parameters and state dict are untouched, so training, saving and GPU code
see the same model). On CUDA the codecs keep diffusers' forwards (cuDNN has real 3-D kernels). On the
CPU the tokenizer now runs a Wan2.1-layout VAE through `codec.wan_vae_cpu` (these same computations, a
whole clip per layer, without diffusers); these forwards serve diffusers' model where it is still used
(training, tiling, other layouts) and define the bits `codec.wan_vae_cpu` reproduces.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from codec.cpu_threads import parallel_map

log = logging.getLogger("vidarc.wan_cpu")


def _diffusers_wan():
    from diffusers.models.autoencoders import autoencoder_kl_wan

    return autoencoder_kl_wan


def causal_conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int, int],
    spatial_padding: tuple[int, int],
) -> Tensor:
    """`conv3d(x, weight, bias, stride)` of an input [1, I, T, H, W] already padded in time, with zero
    spatial padding (ph, pw), computed as one 2-D convolution per output frame over its kt input frames
    stacked along channels -> [1, O, T', H', W'].

    One output frame per call, always: the frames are spread over the process's cores
    (`codec.cpu_threads.parallel_map`) and each is the same single-threaded computation whichever
    core runs it, so the result does not depend on the core count."""
    if x.shape[0] != 1:  # the VAE codes one clip at a time; a batch goes through the 3-D convolution
        return F.conv3d(x, weight, bias, stride, (0, *spatial_padding))
    out_channels, in_channels, kt, kh, kw = weight.shape
    st = stride[0]
    frames_out = (x.shape[2] - kt) // st + 1
    flat_weight = weight.reshape(out_channels, in_channels * kt, kh, kw)
    clip = x[0]  # [I, T, H, W]
    height, width = clip.shape[2:]

    def frame(t: int) -> Tensor:  # input channel i, tap k at i·kt + k, as the weight reads them
        stacked = clip[:, t * st : t * st + kt].reshape(1, in_channels * kt, height, width)
        return F.conv2d(stacked, flat_weight, bias, stride[1:], spatial_padding)

    outputs = parallel_map(frame, range(frames_out))
    y = outputs[0] if frames_out == 1 else torch.cat(outputs)
    return y.transpose(0, 1)[None]


def _make_classes():
    wan = _diffusers_wan()

    class CpuCausalConv3d(wan.WanCausalConv3d):
        """diffusers' `WanCausalConv3d` (cache, causal padding) with `causal_conv3d` as its convolution
        (diffusers builds them without dilation or groups, which `causal_conv3d` does not take)."""

        def forward(self, x: Tensor, cache_x: Tensor | None = None) -> Tensor:
            time_padding = self._padding[4]
            if cache_x is not None and time_padding > 0:
                x = torch.cat([cache_x.to(x.device), x], dim=2)
                time_padding -= cache_x.shape[2]
            if time_padding > 0:
                x = F.pad(x, (0, 0, 0, 0, time_padding, 0))
            spatial = (self._padding[2], self._padding[0])  # (height, width), as conv2d takes them
            return causal_conv3d(x, self.weight, self.bias, self.stride, spatial)

    class CpuRmsNorm(wan.WanRMS_norm):
        """diffusers' `WanRMS_norm` as x·rsqrt(Σx²) (F.normalize's max(‖x‖, 1e-12) kept as a clamp)."""

        def forward(self, x: Tensor) -> Tensor:
            dim = 1 if self.channel_first else -1
            work = x.float() if x.dtype != torch.float32 else x
            squares = (work * work).sum(dim, keepdim=True)
            normalized = (work * torch.rsqrt(squares.clamp_min(1e-24))).to(x.dtype)
            return normalized * self.scale * self.gamma + self.bias

    return {wan.WanCausalConv3d: CpuCausalConv3d, wan.WanRMS_norm: CpuRmsNorm}


_CLASSES: dict[type, type] | None = None


def use_cpu_kernels(model: torch.nn.Module) -> int:
    """Switch every causal convolution and RMS norm of a Wan VAE to the CPU forwards, in place.

    Returns how many modules were switched. Idempotent; modules of other classes are left alone."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _make_classes()
    switched = 0
    for module in model.modules():
        fast = _CLASSES.get(type(module))
        if fast is not None:
            module.__class__ = fast
            switched += 1
    return switched


def use_cpu_attention() -> None:
    """Wan transformer attention on the CPU, one head per call, heads spread over the cores.

    The flow transformer's attention is most of a GVC decode on a CPU (the bundled model at 256×144:
    2,880 tokens, 4 heads), and with one torch thread per pass (`codec.cpu_threads`) it would run on
    one core. Each head is an independent attention; computed one head per call, single-threaded, on
    whichever core `parallel_map` gives it, its bits do not depend on the core count. diffusers'
    `WanAttnProcessor` reaches attention through its module's `dispatch_attention_fn`, so that name is
    wrapped (once per process); the wrapper hands everything that is not a plain CPU self- or
    cross-attention (a mask, a GPU tensor, one head) to the original unchanged."""
    from diffusers.models.transformers import transformer_wan

    original = getattr(transformer_wan, "dispatch_attention_fn", None)
    if original is None:  # another diffusers: attention stays as it is (one core), said once
        log.warning("diffusers' Wan transformer has no dispatch_attention_fn; its attention runs on one core")
        return
    if getattr(original, "vidarc_by_heads", False):
        return

    def by_heads(query: Tensor, key: Tensor, value: Tensor, *args, **kwargs) -> Tensor:
        heads = query.shape[2] if query.dim() == 4 else 1  # [batch, tokens, heads, head dim]
        if query.device.type != "cpu" or heads < 2 or kwargs.get("attn_mask") is not None or args:
            return original(query, key, value, *args, **kwargs)

        def head(h: int) -> Tensor:
            return original(query[:, :, h : h + 1], key[:, :, h : h + 1], value[:, :, h : h + 1], **kwargs)

        return torch.cat(parallel_map(head, range(heads)), dim=2)

    by_heads.vidarc_by_heads = True  # type: ignore[attr-defined]
    transformer_wan.dispatch_attention_fn = by_heads
