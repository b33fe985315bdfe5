"""Counter-based Gaussian atoms: the codebooks GVC's encoder searches and its decoder replays.

Every codebook entry is a pure function of (seed, step, frame, atom, element), so any atom can be made
on its own, in any chunking, on any device, and come out with the same bits. That is what lets a GPU
encode decode on a CPU, and lets the decoder regenerate only the M atoms it was told about instead of
replaying a whole sequential random stream (the reference implementation draws atoms one by one from a
device-specific `torch.Generator`, which pins decoding to the encoder's device type).

Generator: Philox4x32-10 (Salmon et al., SC'11, the counter-based generator behind cuRAND and
`torch.randn` on GPUs), keyed by the 64-bit seed, with counter words
(element quad, atom, frame, step). On GPUs its 32×32→64-bit multiplies are done on int64 tensors split
into 16-bit halves, so no intermediate exceeds 2^50 and the arithmetic is exact on every backend; on the
CPU numpy's unsigned integers do each product in one exact uint64 multiply (`philox4x32_numpy`, the same
words several times faster).

Gaussian: an inverse-CDF lookup rather than Box–Muller, because log/cos are not correctly rounded and
differ by an ulp between CPU and GPU math libraries. The top 16 bits of a uniform word pick one of
65536 equal-probability bins of N(0, 1); the low 16 bits interpolate linearly between the bin's edge
quantiles (tables computed once in float64 on the CPU, stored as float32). The interpolation is one
float32 multiply and one add, both correctly rounded IEEE operations, so every device gives identical
bits. The two open tail bins use the edge that preserves the bin's conditional mean; the resulting
variates have mean 0, variance 1 − 3e−5, and are truncated at |z| ≈ 5.1 — immaterial for codebooks whose
inner products sum thousands of elements.
"""

from __future__ import annotations

import functools
import sys
from statistics import NormalDist

import numpy as np
import torch

from codec.cpu_threads import parallel_map

_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_TABLE_BITS = 16
#: Step counter reserved for the sampler's initial noise x_T (codebook steps are small integers).
INITIAL_NOISE_STEP = _MASK32
#: int64 counters generated per chunk: bounds memory (~40 bytes per counter in flight) on any device.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def _mulhilo(const: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of const × word, exactly, with int64 tensors and 16-bit limbs."""
    p_lo = word * (const & 0xFFFF)  # < 2^48
    p_hi = word * (const >> 16)  # < 2^48
    mid = p_hi + (p_lo >> 16)  # product = (p_lo & 0xFFFF) + mid · 2^16
    low = ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return mid >> 16, low


def _philox_words(c0, c1, c2, c3, seed: int) -> torch.Tensor:
    return torch.stack(philox4x32(c0, c1, c2, c3, seed), dim=-1)


_compiled_words = None
_compiled_verified = False


def use_compiled_generator(enabled: bool = True) -> bool:
    """Fuse the integer Philox rounds of the codebook search with torch.compile.

    Integer arithmetic is exact under any fusion, and the first compiled block is still compared with
    the eager path before it is trusted (a mismatch falls back to eager for good). Shapes are static
    (the search always uses full chunks), because inductor's dynamic-shape C++ path fails on these
    kernels. Costs one compile (~25 s on a CPU) per process. Returns whether it is enabled.
    """
    global _compiled_words, _compiled_verified
    _compiled_verified = False
    _compiled_words = torch.compile(_philox_words, dynamic=False) if enabled else None
    return _compiled_words is not None


def _words(c0, c1, c2, c3, seed: int, fast: bool) -> torch.Tensor:
    global _compiled_words, _compiled_verified
    if not fast or _compiled_words is None:
        return _philox_words(c0, c1, c2, c3, seed)
    try:
        words = _compiled_words(c0, c1, c2, c3, seed)
    except Exception:  # no usable compiler toolchain: the eager path is always correct
        _compiled_words = None
        return _philox_words(c0, c1, c2, c3, seed)
    if not _compiled_verified:
        if not torch.equal(words, _philox_words(c0, c1, c2, c3, seed)):
            _compiled_words = None
            return _philox_words(c0, c1, c2, c3, seed)
        _compiled_verified = True
    return words


def philox4x32_numpy(
    c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, seed: int
) -> tuple[np.ndarray, ...]:
    """`philox4x32` on uint32 arrays (broadcastable): the CPU's generator.

    A 32×32-bit product fits a uint64 exactly, so each multiply is one numpy operation instead of the
    16-bit limbs the tensor version needs for backends without unsigned 64-bit arithmetic, and its high
    and low words are read in place as the two uint32 halves of each product. Unsigned arithmetic is
    exact and defined in numpy on every platform. Same words, bit for bit (tested against the tensor
    version and the published known answers); several times faster on one thread, which is what a
    decoder on a CPU regenerates its atoms with and the encoder's search draws its codebooks with."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    high = 1 if sys.byteorder == "little" else 0  # which uint32 of a uint64 holds its high word
    low = 1 - high
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    m0, m1 = np.uint64(_PHILOX_M0), np.uint64(_PHILOX_M1)
    for _ in range(PHILOX_ROUNDS):
        p0 = (c0 * m0)[..., np.newaxis].view(np.uint32)  # [..., 2]: the product's two words
        p1 = (c2 * m1)[..., np.newaxis].view(np.uint32)
        n0 = p1[..., high] ^ c1
        n0 ^= np.uint32(k0)
        n2 = p0[..., high] ^ c3
        n2 ^= np.uint32(k1)
        c0, c1, c2, c3 = n0, p1[..., low], n2, p0[..., low]
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, seed: int
) -> tuple[torch.Tensor, ...]:
    """Philox4x32 with PHILOX_ROUNDS rounds on int64 tensors holding uint32 values (broadcastable)."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


@functools.lru_cache(maxsize=1)
def _quantile_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(base, slope) float32 tables: z = base[i] + slope[i] · f for bin i and fraction f ∈ (0, 1)."""
    n = 1 << _TABLE_BITS
    normal = NormalDist()
    edges = [0.0] * (n + 1)
    for j in range(1, n):
        edges[j] = normal.inv_cdf(j / n)
    # Open tail bins: pick the outer edge so the linear ramp has the tail's conditional mean.
    q = edges[1]
    tail_mean = -normal.pdf(q) / normal.cdf(q)
    edges[0] = 2.0 * tail_mean - q
    edges[n] = -edges[0]
    base = torch.tensor(edges[:n], dtype=torch.float64).to(torch.float32)
    slope = (torch.tensor(edges[1:], dtype=torch.float64) - torch.tensor(edges[:n], dtype=torch.float64)).to(
        torch.float32
    )
    return base, slope


def _uniform_words_to_normal(words: torch.Tensor) -> torch.Tensor:
    base, slope = _quantile_tables()
    base, slope = base.to(words.device), slope.to(words.device)
    index = words >> 16
    frac = ((words & 0xFFFF).to(torch.float32) + 0.5) * (1.0 / 65536.0)  # exact: 17 significant bits
    return base[index] + slope[index] * frac  # two correctly rounded float32 ops: identical everywhere


#: Philox counters per numpy slab: large enough that numpy's per-call cost is small, small enough to
#: bound the temporaries (a few MB).
_SLAB_QUADS = 1 << 16


def _normal_into(words: np.ndarray, dest: np.ndarray, table: np.ndarray) -> None:
    """`_uniform_words_to_normal` for one lane of uint32 words, written into `dest` (float32).

    `table` holds base + i·slope per bin (complex64), so one gather fetches both."""
    index = (words >> np.uint32(16)).astype(np.intp)
    frac = (words & np.uint32(0xFFFF)).astype(np.float32)
    frac += np.float32(0.5)
    frac *= np.float32(1.0 / 65536.0)  # exact: 17 significant bits
    entry = np.take(table, index, mode="clip")  # index < 2^16 by construction
    normal = entry.imag * frac
    np.add(normal, entry.real, out=dest)  # base + slope·frac: two correctly rounded float32 ops, as elsewhere


@functools.lru_cache(maxsize=1)
def _complex_table() -> np.ndarray:
    base, slope = (t.numpy() for t in _quantile_tables())
    table = np.empty(base.shape, dtype=np.complex64)
    table.real, table.imag = base, slope
    return table


def _gaussian_block_numpy(
    seed: int, step: int, frames: torch.Tensor, atoms: torch.Tensor, dim: int
) -> torch.Tensor:
    """`gaussian_block` on the CPU with numpy's exact Philox: the same float32 bits, made in slabs of
    counters (a few atoms' quads at a time), each of the four lanes written straight into its place."""
    quads = (dim + 3) // 4
    out = np.empty((len(frames), len(atoms), quads, 4), dtype=np.float32)
    table = _complex_table()
    atom_words = (atoms.numpy() & _MASK32).astype(np.uint32).reshape(-1, 1)
    step_word = np.uint32(step & _MASK32)
    rows = max(1, _SLAB_QUADS // max(quads, 1))
    width = min(quads, _SLAB_QUADS)
    for f, frame in enumerate(frames.tolist()):
        frame_word = np.uint32(frame & _MASK32)
        for a in range(0, len(atoms), rows):
            for q in range(0, quads, width):
                c0 = np.arange(q, min(q + width, quads), dtype=np.uint32).reshape(1, -1)
                words = philox4x32_numpy(c0, atom_words[a : a + rows], frame_word, step_word, seed)
                slab = out[f, a : a + rows, q : q + width]
                for lane, lane_words in enumerate(words):
                    _normal_into(lane_words, slab[..., lane], table)
    flat = out.reshape(len(frames), len(atoms), quads * 4)
    return torch.from_numpy(flat if quads * 4 == dim else np.ascontiguousarray(flat[..., :dim]))


def gaussian_block(
    seed: int,
    step: int,
    frames: torch.Tensor,
    atoms: torch.Tensor,
    dim: int,
    *,
    fast: bool = False,
) -> torch.Tensor:
    """float32 [len(frames), len(atoms), dim] Gaussians: atoms `atoms` of codebooks (step, frame).

    `frames` and `atoms` are 1-D int64 tensors on the device to compute on. Counter layout:
    c0 = element // 4 (lane = element % 4), c1 = atom, c2 = frame, c3 = step; key = seed (64 bits).
    The CPU computes it with numpy, other devices with torch ops; the bits are the same (tested).
    """
    if atoms.device.type == "cpu" and not (fast and _compiled_words is not None):
        return _gaussian_block_numpy(seed, step, frames, atoms, dim)
    return _gaussian_block_tensor(seed, step, frames, atoms, dim, fast)


def _gaussian_block_tensor(
    seed: int, step: int, frames: torch.Tensor, atoms: torch.Tensor, dim: int, fast: bool = False
) -> torch.Tensor:
    """`gaussian_block` in torch ops on the atoms' device (GPUs; a CPU with the compiled generator)."""
    device = atoms.device
    quads = torch.arange((dim + 3) // 4, dtype=torch.int64, device=device)
    shape = (len(frames), len(atoms), len(quads))
    c0 = quads.view(1, 1, -1).expand(shape)
    c1 = atoms.to(torch.int64).view(1, -1, 1).expand(shape)
    c2 = frames.to(torch.int64).view(-1, 1, 1).expand(shape) & _MASK32
    c3 = torch.full((1, 1, 1), step & _MASK32, dtype=torch.int64, device=device).expand(shape)
    words = _words(c0, c1, c2, c3, seed, fast)
    return _uniform_words_to_normal(words.reshape(shape[0], shape[1], -1)[..., :dim])


def atoms_for(
    seed: int,
    step: int,
    frame: int,
    indices: torch.Tensor,
    dim: int,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """The atoms `indices` of codebook (step, frame): float32 [len(indices), dim], made in chunks."""
    rows = max(1, chunk_elements // max(dim, 1))
    frame_t = torch.tensor([frame], dtype=torch.int64, device=indices.device)
    parts = [
        gaussian_block(seed, step, frame_t, indices[i : i + rows], dim)[0]
        for i in range(0, len(indices), rows)
    ]
    if not parts:
        return torch.empty(0, dim, dtype=torch.float32, device=indices.device)
    return torch.cat(parts)


def initial_noise(seed: int, frames: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T for the sampler: float32 [frames, dim], from the step counter reserved for it."""
    frame_t = torch.arange(frames, dtype=torch.int64, device=device)
    return gaussian_block(
        seed, INITIAL_NOISE_STEP, frame_t, torch.zeros(1, dtype=torch.int64, device=device), dim
    )[:, 0]


def inner_products(
    seed: int,
    step: int,
    residuals: torch.Tensor,
    num_atoms: int,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """⟨atom_k, r_f⟩ for every atom k < num_atoms of codebook (step, f), all frames at once.

    `residuals` is float32 [frames, dim]; returns float32 [frames, num_atoms]. Atoms are made on the
    residuals' device in chunks and never leave it; all frames share one batched matmul per chunk.
    """
    frames, dim = residuals.shape
    device = residuals.device
    frame_t = torch.arange(frames, dtype=torch.int64, device=device)
    out = torch.empty(frames, num_atoms, dtype=torch.float32, device=device)
    rows = max(1, chunk_elements // max(dim * frames, 1))
    rhs = residuals.to(torch.float32).unsqueeze(-1)
    rows = min(rows, num_atoms)

    def chunk(start: int) -> None:
        # Always a full chunk (one static shape for a compiled generator); extra atoms are dropped.
        idx = torch.arange(start, start + rows, dtype=torch.int64, device=device)
        block = gaussian_block(seed, step, frame_t, idx, dim, fast=True)  # [F, rows, D]
        keep = min(rows, num_atoms - start)
        out[:, start : start + keep] = torch.bmm(block[:, :keep], rhs).squeeze(-1)

    starts = range(0, num_atoms, rows)
    if device.type == "cpu":  # chunks are independent: spread over the cores (the search, not the decode)
        parallel_map(chunk, starts)
    else:
        for start in starts:
            chunk(start)
    return out


def codebook_seed(seed: int) -> int:
    """The 64-bit Philox key for a bitstream seed (kept as a function so the mapping is documented)."""
    return seed & ((1 << 64) - 1)


__all__ = [
    "INITIAL_NOISE_STEP",
    "atoms_for",
    "codebook_seed",
    "gaussian_block",
    "initial_noise",
    "inner_products",
    "philox4x32",
    "philox4x32_numpy",
]
