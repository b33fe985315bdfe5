"""A flow model whose velocity is exact: the posterior mean of a known small set of latent clips.

For data x0 drawn from a Gaussian mixture Σ_n (1/N)·N(X_n, σ²I) (σ = 0: the empirical distribution of
the clips X_n) and the rectified-flow interpolant x_t = (1−t)·x0 + t·ε, everything is closed form:
x_t | n ~ N((1−t)X_n, v_t·I) with v_t = (1−t)²σ² + t², the responsibilities are a softmax of
−‖x_t − (1−t)X_n‖²/(2v_t), E[x0 | x_t, n] = X_n + (1−t)σ²/v_t · (x_t − (1−t)X_n), and the optimal
velocity is u = (x_t − E[x0 | x_t]) / t. With it, the codec's mechanism can be tested without a trained
network: a clip from the set must come back near-exactly, and error must fall as M grows.
"""

from __future__ import annotations

import torch


class PosteriorMeanFlow:
    """Callable velocity(x_t [C, F, H, W], t) for the mixture of `clips` [N, C, F, H, W] with width σ."""

    def __init__(self, clips: torch.Tensor, sigma: float = 0.0) -> None:
        self.clips = clips.to(torch.float64)
        self.sigma = float(sigma)

    def posterior_mean(self, x: torch.Tensor, t: float) -> torch.Tensor:
        xt = x.to(torch.float64)
        clips = self.clips.to(xt.device)
        var = (1.0 - t) ** 2 * self.sigma**2 + t * t
        diff = xt.unsqueeze(0) - (1.0 - t) * clips
        logits = -diff.flatten(1).square().sum(1) / (2.0 * var)
        weights = torch.softmax(logits, dim=0)
        means = clips + ((1.0 - t) * self.sigma**2 / var) * diff
        return torch.einsum("n,n...->...", weights, means)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return ((x.to(torch.float64) - self.posterior_mean(x, t)) / t).to(torch.float32)


class PoolingTokenizer:
    """A fast, exactly invertible-in-expectation stand-in for the Wan VAE, for tests and benchmarks.

    Latent frame 0 is pixel frame 0; latent frame k > 0 averages pixel frames 4k−3..4k (the causal
    4× temporal layout of Wan's VAE); space is 8×8 average pooling; the 3 colour channels are the latent
    channels, scaled to [−1, 1]. Decoding repeats each latent frame and pixel block.
    """

    spatial_factor = 8
    temporal_factor = 4
    channels = 3

    def encode(self, frames) -> torch.Tensor:
        video = torch.as_tensor(frames).to(torch.float32).permute(3, 0, 1, 2) / 127.5 - 1.0  # C, T, H, W
        first, rest = video[:, :1], video[:, 1:]
        channels, count, height, width = rest.shape
        rest = rest.reshape(channels, count // 4, 4, height, width).mean(2)
        video = torch.cat([first, rest], dim=1)
        return torch.nn.functional.avg_pool2d(video, 8)

    def decode(self, latents: torch.Tensor):
        up = latents.to(torch.float32).cpu().repeat_interleave(8, -1).repeat_interleave(8, -2)
        up = torch.cat([up[:, :1], up[:, 1:].repeat_interleave(4, 1)], dim=1)
        return ((up.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


class OracleBackbone:
    """Tokenizer + exact posterior-mean flow: a backbone for GvcCodec whose behaviour is known.

    The oracle ignores the reference-frame condition (it knows the clips already), so all modes run and
    differ only in their side information.
    """

    modes = ("flf2v", "i2v", "t2v")  # best first, like every backbone

    def __init__(self, clip_videos, sigma: float = 0.0) -> None:
        self.tokenizer = PoolingTokenizer()
        clips = torch.stack([self.tokenizer.encode(v) for v in clip_videos])
        self.flow = PosteriorMeanFlow(clips, sigma)

    def condition(self, mode, first, last, pixel_frames, latent_shape):
        return None

    def velocity(self, x: torch.Tensor, t: float, condition) -> torch.Tensor:
        return self.flow(x, t)
