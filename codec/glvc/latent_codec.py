"""GLVC's latent codec: conditional coding of tokenizer latents in the DCVC-RT lineage.

The GLVC paper (digest: papers/GLVC.md) names the ingredients but not their design, so the choices
below are ours; each is the smallest faithful version of what the paper and DCVC-RT describe.

Per latent frame x_t (normalised tokenizer latents, [B, 16, h, w]; one GOP = 1 intra + k inter frames):

1. **One network, switchable layers.** Frame 0 of a GOP is coded *intra*, later frames *inter*. The same
   modules serve both; a few layers (`Switchable*`) hold an intra and an inter weight set. Inter layers
   additionally see the temporal context; intra layers do not (there is none).
2. **Recurrent memory** m_t ([B, memory_channels, h/2, w/2], integer fixed point). State: a feature map at
   the resolution of y. Update (gated, GRU-like, all exact integer arithmetic):
   ``c = LReLU(Wc·[ŷ_t, m_{t-1}] + e_q)``, ``g = hardsigmoid(Wg·[ŷ_t, m_{t-1}])``,
   ``m_t = m_{t-1} + g ⊙ (c − m_{t-1})`` with m_{-1} = 0 (reset per GOP). It is built from decoded
   symbols only, so encoder and decoder hold the same memory bit for bit. Injection points: (a) the
   temporal prior of the entropy model, (b) the analysis transform (encoder), and (c) the synthesis
   transform, both through a context feature upsampled to latent resolution — DCVC-style conditional
   coding where the whole history, not just the previous frame, is the context.
3. **Analysis** (float, encoder only): x_t (+ context) -> y_t at h/2 × w/2, multiplied by a learned
   per-channel gain for the quality index (variable rate, as DCVC-RT's q_encoder).
4. **Hyperprior**: z_t = round(hyper_analysis(y)) at h/4, coded with a zero-mean Gaussian per channel
   whose scale index is a learned per-(quality, channel) parameter ("parametric Gaussian hyperprior").
5. **Entropy parameters** (exact fixed point, see fixed_point.py): hyper synthesis of ẑ, temporal prior
   from m_{t-1}, fusion (switchable), plus a learned per-quality offset; outputs a mean and a scale index
   per element of y. **Two-step checkerboard**: anchors ((i+j) even) are coded first; their decoded
   values feed a context layer that refines mean/scale for the other half.
6. **Symbols**: r = clamp(round(y·g_q − μ), ±range); ŷ = r + μ (exact). Scale = table[index] from the
   pinned entropy profile's constants (codec/entropy.py: ``gauss64-v1``, named in every payload).
7. **Synthesis** (float): ŷ·g'_q (+ memory, context) -> x̂_t. It feeds nothing back into the entropy
   path, so its float noise cannot desynchronise a decoder.

Training (stage 1): ``forward_train`` returns estimated bits (Gaussian likelihood of noisy residuals;
straight-through rounding for what the decoder sees) and latent MSE; the loss is
``bits / pixels + lmbda(q) · mse`` with pixels = 64·h·w·(1 + 4·(F−1)), λ spread log-uniformly over the
quality indices (the paper trains with plain latent MSE).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.entropy import EntropyDecoder, EntropyEncoder, EntropyProfile, GaussianTables, profile_for
from codec.glvc.fixed_point import ACT_SCALE, ExactOps, FixedConv2d, Ops, TrainOps

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The codec's own spatial stride on latents (y at 1/2, z at 1/4): latent sizes must be multiples of it.
LATENT_STRIDE = 4
TEMPORAL_CONTEXTS = ("memory", "previous", "none")


@dataclasses.dataclass
class LatentCodecConfig:
    """Sizes and rate range of a latent codec; stored as config.json beside the weights."""

    latent_channels: int = 16
    hidden_channels: int = 64
    y_channels: int = 64
    z_channels: int = 32
    memory_channels: int = 32
    num_q: int = 64
    lambda_min: float = 0.004
    lambda_max: float = 2.0
    scale_levels: int = 64
    scale_min: float = 0.11
    scale_max: float = 64.0
    symbol_range: int = 255
    #: Ablation switches (`bench/glvc_ablation.py`); the defaults are GLVC as designed, and with them the
    #: bitstream is exactly that of a model saved before the switches existed.
    #: "memory": recurrent memory m_t = f(ŷ_t, m_{t-1}); "previous": the same layers with m_{t-1} = 0, so
    #: the context is built from the previous latent frame alone (DCVC-style); "none": every latent frame
    #: is coded intra.
    temporal_context: str = "memory"
    #: False: the non-anchor half of the checkerboard uses the same means/scales as the anchors (no
    #: spatial context from decoded neighbours).
    spatial_context: bool = True

    def __post_init__(self) -> None:
        if self.temporal_context not in TEMPORAL_CONTEXTS:
            raise ValueError(
                f"temporal_context must be one of {', '.join(TEMPORAL_CONTEXTS)}, got {self.temporal_context!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentCodecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"_class_name"}
        if unknown:
            raise ValueError(f"unknown latent codec config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class CompressedLatents:
    """Entropy-coded GOP plus the symbols (for the encoder's self-check)."""

    data: bytes
    symbols: list[np.ndarray]


@dataclasses.dataclass
class DecodedLatents:
    latents: Tensor | None  # [1, C, F, h, w] float32; None when only the symbols were decoded
    symbols: list[np.ndarray]


class SwitchableConv2d(nn.Module):
    """A float conv with an intra and an inter weight set (inter sees extra context channels)."""

    def __init__(self, in_intra: int, in_inter: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.intra = nn.Conv2d(in_intra, out, 3, stride=stride, padding=1)
        self.inter = nn.Conv2d(in_inter, out, 3, stride=stride, padding=1)

    def forward(self, x: Tensor, inter: bool) -> Tensor:
        return self.inter(x) if inter else self.intra(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


def checkerboard(h: int, w: int, device: torch.device) -> Tensor:
    """1 at anchor positions ((i+j) even, coded first), 0 elsewhere; [1, 1, h, w]."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j) % 2 == 0).to(torch.float32)[None, None]


class LatentCodec(nn.Module):
    """The GLVC latent codec (see the module docstring for the design)."""

    def __init__(self, config: LatentCodecConfig) -> None:
        super().__init__()
        self.config = config
        c, hid, cy, cz, cm, nq = (
            config.latent_channels,
            config.hidden_channels,
            config.y_channels,
            config.z_channels,
            config.memory_channels,
            config.num_q,
        )
        # -- float, encoder only / synthesis ---------------------------------------------------------
        self.context_up = nn.Conv2d(cm, hid * 4, 3, padding=1)  # memory -> context at latent resolution
        self.analysis_in = SwitchableConv2d(c, c + hid, hid)
        self.analysis_down = nn.Conv2d(hid, hid, 3, stride=2, padding=1)
        self.analysis_res = ResBlock(hid)
        self.analysis_out = nn.Conv2d(hid, cy, 3, padding=1)
        self.hyper_analysis1 = nn.Conv2d(cy, hid, 3, padding=1)
        self.hyper_analysis2 = nn.Conv2d(hid, cz, 3, stride=2, padding=1)
        self.synthesis_in = SwitchableConv2d(cy, cy + cm, hid)
        self.synthesis_res = ResBlock(hid)
        self.synthesis_up = nn.Conv2d(hid, hid * 4, 3, padding=1)
        self.synthesis_fuse = SwitchableConv2d(hid, 2 * hid, hid)
        self.synthesis_out = nn.Conv2d(hid, c, 3, padding=1)
        # Variable rate: per-quality, per-channel gains (log domain), DCVC-RT's q_encoder/q_decoder.
        log_gain = torch.linspace(math.log(0.25), math.log(4.0), nq)[:, None].repeat(1, cy)
        self.q_gain_encoder = nn.Parameter(log_gain.clone())
        self.q_gain_decoder = nn.Parameter(-log_gain.clone())
        # -- exact fixed point: everything that selects probability tables -------------------------------
        self.hyper_synthesis1 = FixedConv2d(cz, hid * 4)
        self.hyper_synthesis2 = FixedConv2d(hid, hid)
        self.temporal_prior = FixedConv2d(cm, hid)
        self.fuse_intra = FixedConv2d(hid, hid)
        self.fuse_inter = FixedConv2d(2 * hid, hid)
        self.q_embed_prior = nn.Parameter(torch.zeros(nq, hid))
        self.params_anchor = FixedConv2d(hid, 2 * cy)
        self.context = FixedConv2d(cy, hid)
        self.params_nonanchor = FixedConv2d(2 * hid, 2 * cy, kernel_size=1)
        self.memory_candidate = FixedConv2d(cy + cm, cm)
        self.memory_gate = FixedConv2d(cy + cm, cm)
        self.q_embed_memory = nn.Parameter(torch.zeros(nq, cm))
        mid = (config.scale_levels - 1) / 2.0
        for layer in (self.params_anchor, self.params_nonanchor):
            layer.bias.data[cy:] = mid  # start every scale index mid-table
        z_index = (math.log(2.0) - math.log(config.scale_min)) / self._log_scale_step
        self.z_scale_index = nn.Parameter(torch.full((nq, cz), z_index))
        self._tables: GaussianTables | None = None

    # -- small helpers ------------------------------------------------------------------------------------
    @property
    def _log_scale_step(self) -> float:
        cfg = self.config
        return (math.log(cfg.scale_max) - math.log(cfg.scale_min)) / (cfg.scale_levels - 1)

    @property
    def entropy_profile(self) -> EntropyProfile:
        """The pinned entropy profile of this codec's scale settings (EntropyProfileError if none)."""
        cfg = self.config
        return profile_for(cfg.scale_levels, cfg.scale_min, cfg.scale_max, cfg.symbol_range)

    @property
    def tables(self) -> GaussianTables:
        """The profile's tables: pinned constants, never recomputed (`codec.entropy`)."""
        if self._tables is None:
            self._tables = GaussianTables(self.entropy_profile)
        return self._tables

    def lmbda(self, q_index: Tensor) -> Tensor:
        """λ of each quality index: log-uniform from lambda_min (q=0) to lambda_max (q=num_q-1)."""
        cfg = self.config
        frac = q_index.to(torch.float32) / max(cfg.num_q - 1, 1)
        return torch.exp(
            math.log(cfg.lambda_min) + frac * (math.log(cfg.lambda_max) - math.log(cfg.lambda_min))
        )

    def _scale_of_index(self, index: Tensor) -> Tensor:
        return self.config.scale_min * torch.exp(index * self._log_scale_step)

    def z_indices(self, q_index: int) -> np.ndarray:
        """Integer scale index per z channel for one quality (rounded from stored weights: exact)."""
        top = self.config.scale_levels - 1
        row = self.z_scale_index.detach()[q_index].double().cpu()
        return torch.clamp(torch.round(row), 0, top).to(torch.int64).numpy()

    def _context(self, memory_real: Tensor) -> Tensor:
        return F.leaky_relu(F.pixel_shuffle(self.context_up(memory_real), 2), 0.1)

    # -- float transforms ------------------------------------------------------------------------------
    def analysis(self, x: Tensor, context: Tensor | None, gain: Tensor) -> Tensor:
        inp = x if context is None else torch.cat([x, context], 1)
        h = F.leaky_relu(self.analysis_in(inp, context is not None), 0.1)
        h = self.analysis_res(F.leaky_relu(self.analysis_down(h), 0.1))
        return self.analysis_out(h) * gain[:, :, None, None]

    def hyper_analysis(self, y: Tensor) -> Tensor:
        return self.hyper_analysis2(F.leaky_relu(self.hyper_analysis1(y), 0.1))

    def synthesis(
        self, y_hat: Tensor, memory_real: Tensor | None, context: Tensor | None, gain: Tensor
    ) -> Tensor:
        inter = memory_real is not None
        y = y_hat * gain[:, :, None, None]
        h = self.synthesis_in(y if not inter else torch.cat([y, memory_real], 1), inter)
        h = self.synthesis_res(F.leaky_relu(h, 0.1))
        h = F.leaky_relu(F.pixel_shuffle(self.synthesis_up(h), 2), 0.1)
        h = self.synthesis_fuse(h if not inter else torch.cat([h, context], 1), inter)
        return self.synthesis_out(F.leaky_relu(h, 0.1))

    # -- the entropy-parameter path (one graph, two arithmetics) -------------------------------------------
    def prior(
        self, ops: Ops, z_hat: Tensor, memory: Tensor | None, q: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(fused feature, anchor means, anchor scale-index values) from ẑ and the memory."""
        h = F.pixel_shuffle(ops.conv(self.hyper_synthesis1, ops.from_real(z_hat)), 2)
        h = ops.conv(self.hyper_synthesis2, ops.lrelu(h))
        if memory is None:
            f = ops.conv(self.fuse_intra, ops.lrelu(h))
        else:
            t = ops.lrelu(ops.conv(self.temporal_prior, memory))
            f = ops.conv(self.fuse_inter, torch.cat([ops.lrelu(h), t], 1))
        f = ops.lrelu(f + ops.embed(self.q_embed_prior, q))
        means, index_values = ops.conv(self.params_anchor, f).chunk(2, 1)
        return f, means, index_values

    def refine(
        self, ops: Ops, fused: Tensor, anchors_hat: Tensor, anchor_params: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Means and scale-index values for the non-anchors from the decoded anchors (masked ŷ); without
        spatial context (ablation), the anchors' own parameters."""
        if not self.config.spatial_context:
            return anchor_params
        c = ops.lrelu(ops.conv(self.context, anchors_hat))
        means, index_values = ops.conv(self.params_nonanchor, torch.cat([fused, c], 1)).chunk(2, 1)
        return means, index_values

    def update_memory(self, ops: Ops, y_hat: Tensor, memory: Tensor | None, q: Tensor) -> Tensor | None:
        """m_t from ŷ_t and m_{t-1}; the ablations forget m_{t-1} ("previous") or keep none ("none")."""
        if self.config.temporal_context == "none":
            return None
        if memory is None or self.config.temporal_context == "previous":
            memory = torch.zeros_like(y_hat[:, : self.config.memory_channels])
        inp = torch.cat([y_hat, memory], 1)
        cand = ops.lrelu(ops.conv(self.memory_candidate, inp) + ops.embed(self.q_embed_memory, q))
        gate = ops.gate(ops.conv(self.memory_gate, inp))
        return memory + ops.mul(gate, cand - memory)

    # -- training -----------------------------------------------------------------------------------------
    def forward_train(self, latents: Tensor, q_index: Tensor) -> dict[str, Tensor]:
        """Stage-1 pass over whole GOPs: latents [B, C, F, h, w], q_index [B] -> bits, mse, latents_hat."""
        b, _, frames, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"latent size {h}x{w} must be even")
        q = q_index.to(latents.device).long()
        gain_enc, gain_dec = torch.exp(self.q_gain_encoder[q]), torch.exp(self.q_gain_decoder[q])
        anchor = checkerboard((h + 1) // 2, (w + 1) // 2, latents.device)
        top = self.config.scale_levels - 1
        z_scale = self._scale_of_index(TrainOps.round_index(self.z_scale_index[q], top))[:, :, None, None]
        bits_y = latents.new_zeros(b)
        bits_z = latents.new_zeros(b)
        outs, memory = [], None
        for t in range(frames):
            x = latents[:, :, t]
            context = None if memory is None else self._context(memory)
            y = self.analysis(x, context, gain_enc)
            z = self.hyper_analysis(y)
            z_hat = TrainOps.from_real(torch.round(z) + (z - z.detach()))  # straight-through
            bits_z = bits_z + _gaussian_bits(z + torch.empty_like(z).uniform_(-0.5, 0.5), z_scale).sum(
                (1, 2, 3)
            )
            fused, mu1, v1 = self.prior(TrainOps, z_hat, memory, q)
            anchors_hat = (torch.round(y - mu1) + (y - mu1) - (y - mu1).detach() + mu1) * anchor
            mu2, v2 = self.refine(TrainOps, fused, anchors_hat, (mu1, v1))
            mu = anchor * mu1 + (1 - anchor) * mu2
            v = anchor * v1 + (1 - anchor) * v2
            scale = self._scale_of_index(TrainOps.round_index(v, top))
            residual = y - mu
            noisy = residual + torch.empty_like(residual).uniform_(-0.5, 0.5)
            bits_y = bits_y + _gaussian_bits(noisy, scale).sum((1, 2, 3))
            y_hat = torch.round(residual) + (residual - residual.detach()) + mu
            outs.append(self.synthesis(y_hat, memory, context, gain_dec))
            memory = self.update_memory(TrainOps, y_hat, memory, q)
        latents_hat = torch.stack(outs, 2)
        mse = (latents_hat - latents).pow(2).mean((1, 2, 3, 4))
        return {
            "bits": bits_y + bits_z,
            "bits_y": bits_y,
            "bits_z": bits_z,
            "mse": mse,
            "latents_hat": latents_hat,
        }

    # -- inference: exact entropy path ---------------------------------------------------------------------
    def _check_shape(self, h: int, w: int) -> None:
        if h % LATENT_STRIDE or w % LATENT_STRIDE:
            raise ValueError(f"latent size {h}x{w} must be a multiple of {LATENT_STRIDE}")

    @torch.no_grad()
    def compress(self, latents: Tensor, q_index: int) -> CompressedLatents:
        """Code one GOP of latents [1, C, F, h, w] at quality `q_index` (memory reset at its start)."""
        _, _, frames, h, w = latents.shape
        self._check_shape(h, w)
        dev = latents.device
        q = torch.tensor([q_index], device=dev)
        gain = torch.exp(self.q_gain_encoder[q]).float()
        anchor = checkerboard(h // 2, w // 2, dev).bool()
        top, rng = self.config.scale_levels - 1, self.config.symbol_range
        z_idx = self.z_indices(q_index)
        encoder = EntropyEncoder(self.tables)
        symbols: list[np.ndarray] = []
        memory = None
        for t in range(frames):
            context = None if memory is None else self._context(ExactOps.to_real(memory).float())
            y = self.analysis(latents[:, :, t].float(), context, gain).double()
            z = torch.clamp(torch.round(self.hyper_analysis(y.float()).double()), -rng, rng)
            z_sym = z.cpu().numpy().astype(np.int32)[0]
            encoder.encode(z_sym, np.broadcast_to(z_idx[:, None, None], z_sym.shape))
            fused, mu1, v1 = self.prior(ExactOps, z, memory, q)
            r1 = torch.clamp(torch.round(y - mu1 / ACT_SCALE), -rng, rng)
            anchors_hat = (r1 * ACT_SCALE + mu1) * anchor
            mu2, v2 = self.refine(ExactOps, fused, anchors_hat, (mu1, v1))
            r2 = torch.clamp(torch.round(y - mu2 / ACT_SCALE), -rng, rng)
            idx1, idx2 = ExactOps.round_index(v1, top), ExactOps.round_index(v2, top)
            s1, s2 = _pick(r1, anchor), _pick(r2, ~anchor)
            encoder.encode(s1, _pick(idx1, anchor))
            encoder.encode(s2, _pick(idx2, ~anchor))
            symbols += [z_sym, s1, s2]
            y_hat = torch.where(anchor, r1 * ACT_SCALE + mu1, r2 * ACT_SCALE + mu2)
            memory = self.update_memory(ExactOps, y_hat, memory, q)
        return CompressedLatents(encoder.finish(), symbols)

    @torch.no_grad()
    def decompress(
        self,
        data: bytes,
        q_index: int,
        frames: int,
        h: int,
        w: int,
        device: str | torch.device = "cpu",
        *,
        synthesize: bool = True,
    ) -> DecodedLatents:
        """Inverse of `compress`: latents [1, C, F, h, w] and the decoded symbols.

        `synthesize=False` decodes the symbols only (the exact, integer part: what verify digests) and
        skips the float synthesis transform; `latents` is then None.
        """
        self._check_shape(h, w)
        dev = torch.device(device)
        q = torch.tensor([q_index], device=dev)
        gain = torch.exp(self.q_gain_decoder[q]).float()
        anchor = checkerboard(h // 2, w // 2, dev).bool()
        top, cz = self.config.scale_levels - 1, self.config.z_channels
        z_idx = self.z_indices(q_index)
        decoder = EntropyDecoder(self.tables, data)
        z_shape = (cz, h // 4, w // 4)
        symbols: list[np.ndarray] = []
        outs, memory = [], None
        for _ in range(frames):
            z_sym = decoder.decode(np.broadcast_to(z_idx[:, None, None], z_shape))
            z = torch.from_numpy(z_sym).double().to(dev)[None]
            fused, mu1, v1 = self.prior(ExactOps, z, memory, q)
            idx1 = _pick(ExactOps.round_index(v1, top), anchor)
            s1 = decoder.decode(idx1)
            r1 = _place(s1, anchor, mu1)
            anchors_hat = (r1 * ACT_SCALE + mu1) * anchor
            mu2, v2 = self.refine(ExactOps, fused, anchors_hat, (mu1, v1))
            s2 = decoder.decode(_pick(ExactOps.round_index(v2, top), ~anchor))
            r2 = _place(s2, ~anchor, mu2)
            symbols += [z_sym, s1, s2]
            y_hat = torch.where(anchor, r1 * ACT_SCALE + mu1, r2 * ACT_SCALE + mu2)
            if synthesize:
                memory_real = None if memory is None else ExactOps.to_real(memory).float()
                context = None if memory_real is None else self._context(memory_real)
                outs.append(self.synthesis(ExactOps.to_real(y_hat).float(), memory_real, context, gain))
            memory = self.update_memory(ExactOps, y_hat, memory, q)
        return DecodedLatents(torch.stack(outs, 2) if synthesize else None, symbols)

    # -- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(root / WEIGHTS_NAME))
        config = {"_class_name": "LatentCodec", **self.config.to_dict()}
        (root / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LatentCodec:
        from safetensors.torch import load_file

        root = Path(directory)
        config = LatentCodecConfig.from_dict(json.loads((root / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(root / WEIGHTS_NAME)), strict=True)
        return model.eval()


def _gaussian_bits(residual: Tensor, scale: Tensor) -> Tensor:
    """-log2 P(residual) under a zero-mean Gaussian integrated over its unit bin."""
    dist = torch.distributions.Normal(torch.zeros_like(scale), scale)
    upper = dist.cdf(residual.abs() + 0.5)
    lower = dist.cdf(residual.abs() - 0.5)
    # The upper tail form (1 - cdf) loses precision; the symmetric |r| form keeps small bins accurate.
    return -torch.log2(torch.clamp(upper - lower, min=1e-9))


def _pick(values: Tensor, mask: Tensor) -> np.ndarray:
    """Elements of a [1, C, h, w] tensor at mask [1, 1, h, w] positions, channel-major, as int32."""
    picked = values[0][mask[0].expand(values.shape[1], -1, -1)]
    return picked.cpu().numpy().astype(np.int32)


def _place(symbols: np.ndarray, mask: Tensor, like: Tensor) -> Tensor:
    """Scatter decoded symbols back into a [1, C, h, w] tensor (zeros elsewhere)."""
    out = torch.zeros_like(like)
    out[0][mask[0].expand(like.shape[1], -1, -1)] = torch.from_numpy(symbols).to(like)
    return out
