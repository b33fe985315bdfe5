"""Exact fixed-point arithmetic for the part of the latent codec that selects probability tables.

Why: an entropy decoder returns wrong symbols silently when its model parameters differ by one ulp from
the encoder's. Everything that decides a table (means, scale indices, and what they depend on: hyper
synthesis, spatial context, temporal prior, memory update) therefore runs on integers, so a GPU encode
decodes on a CPU, or with another thread count, to the same symbols.

Representation: an activation of real value v is held as the integer ``round(v · 2^ACT_BITS)`` and a
weight w as ``round(w · 2^WEIGHT_BITS)``. Integers are stored in float64 tensors: a convolution is
``unfold`` + ``matmul`` on integer-valued float64 data, every product and partial sum is an exact integer
below 2^53 (activations are clamped to ±ACT_LIMIT, weights to ±WEIGHT_LIMIT, fan-in ≤ MAX_FAN_IN), so any
summation order, BLAS kernel or device gives the same result. No cuDNN convolution is involved (its
FFT/Winograd algorithms are not exact). Rescaling divides by powers of two and rounds with
``torch.round`` (half to even, everywhere). Nonlinearities are piecewise linear with power-of-two slopes
(LeakyReLU 1/8, hard-sigmoid gates), never exp/tanh/sigmoid.

Training runs the same graph through :class:`TrainOps`: float32 with fake quantisation (weights and
activations rounded to the same grids with a straight-through gradient), so the exact path computes what
training optimised, up to float32 rounding at exact ties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACT_BITS = 8
WEIGHT_BITS = 8
ACT_SCALE = float(2**ACT_BITS)
WEIGHT_SCALE = float(2**WEIGHT_BITS)
#: |activation| < 2^16 integer units, i.e. |v| < 256.
ACT_LIMIT = float(2**16 - 1)
#: |weight| < 2^12 integer units, i.e. |w| < 16.
WEIGHT_LIMIT = float(2**12 - 1)
#: 2^16 · 2^12 · MAX_FAN_IN plus a bias stays below 2^53 with a wide margin.
MAX_FAN_IN = 4096
LEAKY_SLOPE_SHIFT = 3  # LeakyReLU slope 2^-3


def ste_round(x: Tensor) -> Tensor:
    """round() in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def quantize_weight(w: Tensor) -> Tensor:
    """Real-valued weight on the 2^-WEIGHT_BITS grid (fake quantisation for training)."""
    return torch.clamp(ste_round(w * WEIGHT_SCALE), -WEIGHT_LIMIT, WEIGHT_LIMIT) / WEIGHT_SCALE


def quantize_act(x: Tensor) -> Tensor:
    """Real-valued activation on the 2^-ACT_BITS grid, clamped like the exact path."""
    return torch.clamp(ste_round(x * ACT_SCALE), -ACT_LIMIT, ACT_LIMIT) / ACT_SCALE


class FixedConv2d(nn.Module):
    """A convolution usable both in float training (fake-quantised) and in exact integer inference.

    Zero padding (exact), square kernel, stride 1: downsampling is never needed on the decoder side and
    upsampling is a convolution followed by pixel shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if in_channels * kernel_size * kernel_size > MAX_FAN_IN:
            raise ValueError("fan-in too large for exact float64 accumulation")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=0.125)
        self.weight.data.clamp_(-WEIGHT_LIMIT / WEIGHT_SCALE, WEIGHT_LIMIT / WEIGHT_SCALE)
        self._exact_cache: tuple[torch.device, int, Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        w = quantize_weight(self.weight)
        b = quantize_act(self.bias)
        return quantize_act(F.conv2d(x, w, b, padding=self.kernel_size // 2))

    def integer_params(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(W as [out, in·k·k], B scaled to 2^(ACT+WEIGHT)) in float64, cached per device and version."""
        version = self.weight._version + self.bias._version
        cache = self._exact_cache
        if cache is None or cache[0] != device or cache[1] != version:
            with torch.no_grad():
                w = torch.clamp(
                    torch.round(self.weight.detach().double() * WEIGHT_SCALE), -WEIGHT_LIMIT, WEIGHT_LIMIT
                )
                b = torch.clamp(torch.round(self.bias.detach().double() * ACT_SCALE), -ACT_LIMIT, ACT_LIMIT)
                cache = (
                    device,
                    version,
                    w.reshape(self.out_channels, -1).to(device),
                    (b * WEIGHT_SCALE).to(device),
                )
            self._exact_cache = cache
        return cache[2], cache[3]

    def exact(self, a: Tensor) -> Tensor:
        """Integer activations [N, C, H, W] (float64) -> integer activations, bit-exact on any device."""
        n, _, h, w = a.shape
        weight, bias = self.integer_params(a.device)
        pad = self.kernel_size // 2
        cols = F.unfold(a, self.kernel_size, padding=pad)  # [N, C·k·k, H·W], exact copies
        out = torch.matmul(weight, cols) + bias[:, None]  # exact: integers below 2^53
        out = torch.round(out / WEIGHT_SCALE)  # division by a power of two is exact; round half-even
        return torch.clamp(out, -ACT_LIMIT, ACT_LIMIT).reshape(n, self.out_channels, h, w)


class TrainOps:
    """Float32 arithmetic with fake quantisation: values are real numbers on the activation grid."""

    exact = False

    @staticmethod
    def conv(layer: FixedConv2d, x: Tensor) -> Tensor:
        return layer(x)

    @staticmethod
    def lrelu(x: Tensor) -> Tensor:
        return quantize_act(F.leaky_relu(x, 2.0**-LEAKY_SLOPE_SHIFT))

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        """Hard sigmoid clamp(x/4 + 1/2, 0, 1)."""
        return quantize_act(torch.clamp(x / 4.0 + 0.5, 0.0, 1.0))

    @staticmethod
    def mul(a: Tensor, b: Tensor) -> Tensor:
        return quantize_act(a * b)

    @staticmethod
    def embed(table: Tensor, index: Tensor) -> Tensor:
        """Rows of a learned table (e.g. per-quality offsets) on the grid, shaped [B, C, 1, 1]."""
        return quantize_act(table[index])[:, :, None, None]

    @staticmethod
    def from_real(x: Tensor) -> Tensor:
        return x

    @staticmethod
    def to_real(x: Tensor) -> Tensor:
        return x

    @staticmethod
    def round_index(x: Tensor, top: int) -> Tensor:
        """Table index from an index-valued activation (straight-through rounding)."""
        return ste_round(torch.clamp(x, 0.0, float(top)))


class ExactOps:
    """Integer arithmetic in float64: values are integers meaning v · 2^ACT_BITS."""

    exact = True

    @staticmethod
    def conv(layer: FixedConv2d, x: Tensor) -> Tensor:
        return layer.exact(x)

    @staticmethod
    def lrelu(x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, torch.round(x / float(2**LEAKY_SLOPE_SHIFT)))

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        return torch.clamp(torch.round(x / 4.0) + ACT_SCALE / 2, 0.0, ACT_SCALE)

    @staticmethod
    def mul(a: Tensor, b: Tensor) -> Tensor:
        return torch.clamp(torch.round(a * b / ACT_SCALE), -ACT_LIMIT, ACT_LIMIT)

    @staticmethod
    def embed(table: Tensor, index: Tensor) -> Tensor:
        rows = torch.round(table.detach().double()[index.to(table.device)] * ACT_SCALE)
        return torch.clamp(rows, -ACT_LIMIT, ACT_LIMIT)[:, :, None, None]

    @staticmethod
    def from_real(x: Tensor) -> Tensor:
        """Real values already on the grid (e.g. decoded symbols + means) -> integer units."""
        return torch.clamp(torch.round(x.double() * ACT_SCALE), -ACT_LIMIT, ACT_LIMIT)

    @staticmethod
    def to_real(x: Tensor) -> Tensor:
        return x / ACT_SCALE

    @staticmethod
    def round_index(x: Tensor, top: int) -> Tensor:
        return torch.clamp(torch.round(x / ACT_SCALE), 0.0, float(top))


Ops = type[TrainOps] | type[ExactOps]
