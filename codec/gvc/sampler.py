"""GVC's Euler–Maruyama loop: a rectified-flow video model turned into an SDE whose noise is coded.

Interpolant x_t = (1−t)·x0 + t·ε (t = 1 is noise); the model predicts the velocity u ≈ ε − x0.
With g(t) = g·t², the marginal-preserving SDE has drift f = u − ½g²·score, score = −(x + (1−t)u)/t
(Kim et al. 2025, as GVCC uses it), and one Euler–Maruyama step is

    x_{t−Δ} = x_t − f·Δ + g(t)·√Δ·z.

On the first `steps − ode_tail` steps, z is chosen by the encoder: for every latent frame, the top-M of
K counter-based Gaussian atoms by |⟨atom, x0 − x̂0⟩| (x̂0 = x_t − t·u), combined with ±1 signs and
normalised to unit RMS. The last `ode_tail` steps (always including the one reaching t = 0) are plain
Euler ODE steps and cost no bits. x_T comes from the same counter-based generator and the header's
seed, so the decoder replays the exact loop from the indices alone.

Normalisation: GVCC and Turbo-DDCM divide the combined atoms by their standard deviation; we divide by
the root mean square (the atoms have zero mean, so the two agree to O(1/D)), computed the same way on
both sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from codec.cpu_threads import parallel_map
from codec.gvc import atoms as atom_gen

#: The flow model: (x_t [C, F, H, W] float32, t in (0, 1]) -> velocity, same shape, float32.
Velocity = Callable[[torch.Tensor, float], torch.Tensor]
#: Sanity limits (the paper's largest sweep is K = 65536, M = 256); a header beyond them is corrupt.
MAX_ATOMS = 1 << 24
MAX_ATOMS_PER_STEP = 4096
MIN_SHIFT, MAX_SHIFT = 1e-2, 1e2
MAX_G_SCALE = 1e2
#: One codebook entry: (sorted atom indices, ±1 signs aligned with them).
Entry = tuple[list[int], list[int]]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Everything the decoder must know to replay the loop (all of it is in the bitstream header)."""

    steps: int = 20
    ode_tail: int = 3
    shift: float = 3.0
    g_scale: float = 3.0
    num_atoms: int = 1024
    atoms_per_step: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or not 0 <= self.ode_tail <= self.steps:
            raise ValueError(f"need steps >= 1 and 0 <= ode_tail <= steps, got {self.steps}, {self.ode_tail}")
        if not 1 <= self.atoms_per_step <= self.num_atoms:
            raise ValueError(f"need 1 <= M <= K, got M={self.atoms_per_step}, K={self.num_atoms}")
        if self.num_atoms > MAX_ATOMS or self.atoms_per_step > MAX_ATOMS_PER_STEP:
            raise ValueError(
                f"K <= {MAX_ATOMS} and M <= {MAX_ATOMS_PER_STEP} (got K={self.num_atoms}, M={self.atoms_per_step})"
            )
        # Ranges, not just signs: a decoder replays these from the bitstream, and a shift of 6e-22
        # (or NaN) makes the time grid divide by zero. Real schedules use shifts of about 1..20.
        if not (MIN_SHIFT <= self.shift <= MAX_SHIFT and 0 <= self.g_scale <= MAX_G_SCALE):
            raise ValueError(
                f"need {MIN_SHIFT} <= shift <= {MAX_SHIFT} and 0 <= g <= {MAX_G_SCALE}, "
                f"got shift={self.shift}, g={self.g_scale}"
            )

    @property
    def coded_steps(self) -> int:
        """Steps that carry codebook noise (the step reaching t = 0 never does)."""
        return min(self.steps - self.ode_tail, self.steps - 1)


def time_grid(steps: int, shift: float) -> list[float]:
    """Shifted grid t_i = s·τ/(1 + (s−1)·τ), τ = linspace(1, 0, steps+1) (SD3 / Wan sampling sigmas)."""
    taus = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * tau / (1.0 + (shift - 1.0) * tau) for tau in taus]


class StageTimer:
    """Wall time per stage ("transformer", "search", …); synchronises CUDA so GPU time is attributed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def combine_atoms(
    seed: int, step: int, entries: Sequence[Entry], dim: int, device: torch.device
) -> torch.Tensor:
    """The step's noise z [frames, dim]: per frame, Σ sign·atom over the chosen atoms, unit RMS.

    Frames are independent: on the CPU they are spread over the cores (`parallel_map`), each frame the
    same single-threaded arithmetic on any core, so encoder and decoder get the same bits anywhere."""

    def frame_noise(frame: int) -> torch.Tensor:
        indices, signs = entries[frame]
        idx = torch.tensor(indices, dtype=torch.int64, device=device)
        chosen = atom_gen.atoms_for(seed, step, frame, idx, dim)
        sgn = torch.tensor(signs, dtype=torch.float32, device=device).unsqueeze(1)
        z = (chosen * sgn).sum(dim=0)
        return z / z.square().mean().sqrt()

    frames = range(len(entries))
    on_cpu = torch.device(device).type == "cpu"
    return torch.stack(parallel_map(frame_noise, frames) if on_cpu else [frame_noise(f) for f in frames])


def select_atoms(seed: int, step: int, residuals: torch.Tensor, num_atoms: int, m: int) -> list[Entry]:
    """Top-M atoms by |⟨atom, r_f⟩| per frame, with the signs of the inner products; indices sorted.

    On a GPU the search (and, for M ≤ 256, the selection itself) runs in the fused kernel
    (`atoms_fused`), elsewhere the reference products and `torch.topk`; either way only the choice
    travels, and the atoms are replayed exactly."""
    from codec.gvc.atoms_fused import select_top_atoms  # the encoder's search: a decoder never loads Triton

    top, negative = select_top_atoms(seed, step, residuals, num_atoms, m)
    signs = torch.where(negative, -1, 1)
    return [(row.tolist(), sgn.tolist()) for row, sgn in zip(top.cpu(), signs.cpu(), strict=True)]


def run_sampler(
    velocity: Velocity,
    shape: tuple[int, int, int, int],
    config: SamplerConfig,
    *,
    target: torch.Tensor | None = None,
    entries: Sequence[Sequence[Entry]] | None = None,
    device: torch.device | str = "cpu",
    timer: StageTimer | None = None,
) -> tuple[torch.Tensor, list[list[Entry]]]:
    """Run the loop; encode (pass `target` x0) or decode (pass the `entries` of every coded step).

    shape = (C, F, H, W) of the latent. Returns the final latent x_0 (float32) and the entries used,
    one list of per-frame entries per coded step. Encoder and decoder execute the same operations in
    the same order, so on one device their final latents are identical.
    """
    if (target is None) == (entries is None):
        raise ValueError("pass exactly one of target (encode) or entries (decode)")
    device = torch.device(device)
    timer = timer or StageTimer()
    channels, frames, height, width = shape
    dim = channels * height * width
    grid = time_grid(config.steps, config.shift)
    seed = atom_gen.codebook_seed(config.seed)
    x = atom_gen.initial_noise(seed, frames, dim, device)
    x = x.view(frames, channels, height, width).permute(1, 0, 2, 3).contiguous()
    used: list[list[Entry]] = []
    for i in range(config.steps):
        t, t_next = grid[i], grid[i + 1]
        delta = t - t_next
        with timer.stage("transformer", device):
            u = velocity(x, t).to(torch.float32)
        if i >= config.coded_steps:
            x = x - u * delta
            continue
        with timer.stage("search", device):
            if target is not None:
                residual = (target - (x - t * u)).permute(1, 0, 2, 3).reshape(frames, dim)
                step_entries = select_atoms(seed, i, residual, config.num_atoms, config.atoms_per_step)
            else:
                step_entries = [(list(idx), list(sgn)) for idx, sgn in entries[i]]  # type: ignore[index]
            z = combine_atoms(seed, i, step_entries, dim, device)
        used.append(step_entries)
        z = z.view(frames, channels, height, width).permute(1, 0, 2, 3)
        g = config.g_scale * t * t
        score = -(x + (1.0 - t) * u) / t
        drift = u - (0.5 * g * g) * score
        x = x - drift * delta + (g * math.sqrt(delta)) * z
    return x, used
