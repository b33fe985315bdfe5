"""The codebook search as one fused GPU kernel: atoms made in registers and reduced on the spot.

`atoms.inner_products` builds every atom in memory (int64 Philox counters, then float32 Gaussians) and
multiplies them with the residual: at K=16384 atoms and a 480p latent that is ~15 G Gaussians per step,
and the search took ~87% of a Wan2.1-1.3B encode on an H100 (docs/BENCHMARKS.md). This Triton kernel
computes the same Philox4x32-10 words with native 32-bit integer instructions (`umulhi` and wrapping
multiplies), maps them through the same inverse-CDF tables, and accumulates ⟨atom, residual⟩ without
writing an atom anywhere: the work becomes integer arithmetic instead of memory traffic.

Why this is safe for the bitstream: only the indices and signs of the chosen atoms travel. The decoder
(and the encoder's own reconstruction) replays them with `atoms.atoms_for`, which is exact on every
device. The kernel may round differently (fused multiply-add in the quantile interpolation, another
summation order), which can at most swap two atoms whose inner products tie to ~1e-6 — a choice
between near-equals, never a wrong decode. `inner_products_fused` checks itself against the reference
on its first call in a process and switches itself off (falling back to the reference) if it
disagrees; it also runs under Triton's CPU interpreter, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import logging
import os

import torch

from codec.gvc import atoms as reference

log = logging.getLogger("vidarc.gvc")

try:  # Triton ships with CUDA builds of PyTorch; without it the reference path is used.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

_state = {"enabled": True, "verified": False, "top_enabled": True, "top_verified": False}
#: Largest M the folded selection keeps in registers (its buffer is M rounded up to a power of two and
#: merged by a bitonic sort); larger M use the products and `torch.topk`.
MAX_FOLDED_TOP = 256
#: Blocks of TOP atoms each program of the folded kernel scores: more blocks, fewer candidates written
#: (K / SUBBLOCKS per frame) but fewer programs to fill the GPU with.
SUBBLOCKS = 4


def available(device: torch.device) -> bool:
    """Whether the fused search will run for tensors on `device`."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and _state["enabled"] and (device.type == "cuda" or interpreted)


def use_fused_search(enabled: bool = True) -> None:
    """Switch the fused search on or off for this process (benchmarks compare both)."""
    _state["enabled"] = enabled
    _state["verified"] = False


def use_folded_selection(enabled: bool = True) -> None:
    """Switch the top-M selection inside the fused kernel on or off (benchmarks compare both)."""
    _state["top_enabled"] = enabled
    _state["top_verified"] = False


if triton is not None:

    @triton.jit
    def _block_products(
        row,
        base_ptr,
        slope_ptr,
        key0,
        key1,
        frame,
        step,
        dim,
        atom,
        ROUNDS: tl.constexpr,
        BLOCK_ATOMS: tl.constexpr,
        BLOCK_QUADS: tl.constexpr,
    ):
        """⟨atom, residual row⟩ for the BLOCK_ATOMS atoms `atom` of codebook (step, frame)."""
        quad_offsets = tl.arange(0, BLOCK_QUADS)
        m0 = tl.full((1, 1), 0xD2511F53, tl.uint32)
        m1 = tl.full((1, 1), 0xCD9E8D57, tl.uint32)
        w0 = tl.full((1, 1), 0x9E3779B9, tl.uint32)
        w1 = tl.full((1, 1), 0xBB67AE85, tl.uint32)
        k0_init = tl.full((1, 1), 0, tl.uint32) + key0.to(tl.uint32)
        k1_init = tl.full((1, 1), 0, tl.uint32) + key1.to(tl.uint32)
        atom_word = atom.to(tl.uint32)[:, None]
        frame_word = tl.full((BLOCK_ATOMS, BLOCK_QUADS), 0, tl.uint32) + frame.to(tl.uint32)
        step_word = tl.full((BLOCK_ATOMS, BLOCK_QUADS), 0, tl.uint32) + step.to(tl.uint32)
        acc = tl.zeros((BLOCK_ATOMS, BLOCK_QUADS), dtype=tl.float32)
        quads = (dim + 3) // 4
        for first in range(0, quads, BLOCK_QUADS):
            quad = first + quad_offsets
            c0 = tl.full((BLOCK_ATOMS, BLOCK_QUADS), 0, tl.uint32) + quad.to(tl.uint32)[None, :]
            c1 = tl.full((BLOCK_ATOMS, BLOCK_QUADS), 0, tl.uint32) + atom_word
            c2 = frame_word
            c3 = step_word
            k0 = k0_init
            k1 = k1_init
            for _ in tl.static_range(ROUNDS):
                hi0 = tl.umulhi(c0, m0)
                lo0 = c0 * m0
                hi1 = tl.umulhi(c2, m1)
                lo1 = c2 * m1
                c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
                k0 = k0 + w0
                k1 = k1 + w1
            element = quad * 4
            acc += (
                _gaussian(c0, base_ptr, slope_ptr)
                * tl.load(row + element, mask=element < dim, other=0.0)[None, :]
            )
            acc += (
                _gaussian(c1, base_ptr, slope_ptr)
                * tl.load(row + element + 1, mask=element + 1 < dim, other=0.0)[None, :]
            )
            acc += (
                _gaussian(c2, base_ptr, slope_ptr)
                * tl.load(row + element + 2, mask=element + 2 < dim, other=0.0)[None, :]
            )
            acc += (
                _gaussian(c3, base_ptr, slope_ptr)
                * tl.load(row + element + 3, mask=element + 3 < dim, other=0.0)[None, :]
            )
        return tl.sum(acc, axis=1)

    # Scalars are never specialised: Triton would turn a value of 1 into a compile-time constant.
    @triton.jit(do_not_specialize=["key0", "key1", "step", "dim", "num_atoms"])
    def _search_kernel(
        residual_ptr,
        out_ptr,
        base_ptr,
        slope_ptr,
        key0,
        key1,
        step,
        dim,
        num_atoms,
        residual_stride,
        out_stride,
        ROUNDS: tl.constexpr,
        BLOCK_ATOMS: tl.constexpr,
        BLOCK_QUADS: tl.constexpr,
    ):
        frame = tl.program_id(1)
        atom = tl.program_id(0) * BLOCK_ATOMS + tl.arange(0, BLOCK_ATOMS)
        row = residual_ptr + frame * residual_stride
        products = _block_products(
            row, base_ptr, slope_ptr, key0, key1, frame, step, dim, atom, ROUNDS, BLOCK_ATOMS, BLOCK_QUADS
        )
        tl.store(out_ptr + frame * out_stride + atom, products, mask=atom < num_atoms)

    @triton.jit(do_not_specialize=["key0", "key1", "step", "dim", "num_atoms"])
    def _search_top_kernel(
        residual_ptr,
        out_ptr,
        base_ptr,
        slope_ptr,
        key0,
        key1,
        step,
        dim,
        num_atoms,
        residual_stride,
        out_stride,
        ROUNDS: tl.constexpr,
        TOP: tl.constexpr,
        SUBBLOCKS: tl.constexpr,
        BLOCK_QUADS: tl.constexpr,
    ):
        """The search with the top-M selection folded in: each program scores SUBBLOCKS × TOP atoms and
        keeps only its TOP best as sortable keys (|product| bits, then atom index and sign), merging
        each block into a running buffer with one bitonic sort; the host picks the final M among
        programs × TOP candidates instead of among all K products."""
        frame = tl.program_id(1)
        row = residual_ptr + frame * residual_stride
        best = tl.full((TOP,), -1, tl.int64)
        first_atom = tl.program_id(0) * (SUBBLOCKS * TOP)
        for block in tl.static_range(SUBBLOCKS):
            atom = first_atom + block * TOP + tl.arange(0, TOP)
            products = _block_products(
                row, base_ptr, slope_ptr, key0, key1, frame, step, dim, atom, ROUNDS, TOP, BLOCK_QUADS
            )
            magnitude = tl.abs(products).to(tl.int32, bitcast=True).to(tl.int64)
            label = atom.to(tl.int64) * 2 + (products < 0).to(tl.int64)
            keys = tl.where(atom < num_atoms, (magnitude << 32) | label, -1)
            merged = tl.sort(tl.reshape(tl.join(best, keys), (2 * TOP,)), descending=True)
            halves = tl.reshape(merged, (2, TOP))
            best = tl.sum(tl.where(tl.arange(0, 2)[:, None] == 0, halves, 0), axis=0)
        slot = tl.program_id(0) * TOP + tl.arange(0, TOP)
        tl.store(out_ptr + frame * out_stride + slot, best)

    @triton.jit
    def _gaussian(word, base_ptr, slope_ptr):
        """The inverse-CDF lookup of `atoms._uniform_words_to_normal`."""
        index = (word >> 16).to(tl.int32)
        frac = ((word & 0xFFFF).to(tl.float32) + 0.5) * (1.0 / 65536.0)
        return tl.load(base_ptr + index) + tl.load(slope_ptr + index) * frac


def _launch(
    seed: int, step: int, residuals: torch.Tensor, num_atoms: int, block_atoms: int = 32
) -> torch.Tensor:
    frames, dim = residuals.shape
    residuals = residuals.to(torch.float32).contiguous()
    out = torch.empty(frames, num_atoms, dtype=torch.float32, device=residuals.device)
    base, slope = (t.to(residuals.device) for t in reference._quantile_tables())
    seed = reference.codebook_seed(seed)
    grid = (triton.cdiv(num_atoms, block_atoms), frames)
    _search_kernel[grid](
        residuals,
        out,
        base,
        slope,
        seed & 0xFFFFFFFF,
        (seed >> 32) & 0xFFFFFFFF,
        step & 0xFFFFFFFF,
        dim,
        num_atoms,
        residuals.stride(0),
        out.stride(0),
        ROUNDS=reference.PHILOX_ROUNDS,
        BLOCK_ATOMS=block_atoms,
        BLOCK_QUADS=64,
        num_warps=4,
    )
    return out


def inner_products_fused(seed: int, step: int, residuals: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """`atoms.inner_products` (float32 [frames, num_atoms]) computed by the fused kernel.

    The first call in a process is checked against the reference on the first 64 atoms; on a mismatch
    (or a kernel that cannot compile) the fused path switches itself off and the reference answers.
    """
    if not available(residuals.device):
        return reference.inner_products(seed, step, residuals, num_atoms)
    try:
        fused = _launch(seed, step, residuals, num_atoms)
    except Exception as exc:  # no compiler for this GPU, Triton/driver mismatch, …
        log.warning(
            "fused GVC search unavailable (%s: %s); using the reference search", type(exc).__name__, exc
        )
        _state["enabled"] = False
        return reference.inner_products(seed, step, residuals, num_atoms)
    if not _state["verified"]:
        head = min(num_atoms, 64)
        expected = reference.inner_products(seed, step, residuals, head)
        scale = float(residuals.norm(dim=1).max()) + 1e-12
        if not torch.allclose(fused[:, :head], expected, rtol=0, atol=1e-4 * scale):
            worst = float((fused[:, :head] - expected).abs().max())
            log.warning("fused GVC search disagrees with the reference (max |Δ| %.3g); switched off", worst)
            _state["enabled"] = False
            return reference.inner_products(seed, step, residuals, num_atoms)
        _state["verified"] = True
    return fused


def _launch_top(
    seed: int, step: int, residuals: torch.Tensor, num_atoms: int, m: int, subblocks: int = SUBBLOCKS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, negative): the top-`m` atoms per frame by |⟨atom, r⟩| from the folded kernel, indices
    sorted ascending (int64 [frames, m]) and whether each one's inner product is negative."""
    frames, dim = residuals.shape
    residuals = residuals.to(torch.float32).contiguous()
    top = max(16, triton.next_power_of_2(m))
    programs = triton.cdiv(num_atoms, top * subblocks)
    out = torch.empty(frames, programs * top, dtype=torch.int64, device=residuals.device)
    base, slope = (t.to(residuals.device) for t in reference._quantile_tables())
    seed = reference.codebook_seed(seed)
    _search_top_kernel[(programs, frames)](
        residuals,
        out,
        base,
        slope,
        seed & 0xFFFFFFFF,
        (seed >> 32) & 0xFFFFFFFF,
        step & 0xFFFFFFFF,
        dim,
        num_atoms,
        residuals.stride(0),
        out.stride(0),
        ROUNDS=reference.PHILOX_ROUNDS,
        TOP=top,
        SUBBLOCKS=subblocks,
        BLOCK_QUADS=max(8, 2048 // top),
        num_warps=4,
    )
    labels = out.topk(m, dim=1).values & 0xFFFFFFFF
    indices, order = (labels >> 1).sort(dim=1)
    return indices, (labels & 1).gather(1, order).bool()


def _top_from_products(products: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices = products.abs().topk(m, dim=1).indices.sort(dim=1).values
    return indices, products.gather(1, indices) < 0


def select_top_atoms(
    seed: int, step: int, residuals: torch.Tensor, num_atoms: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices sorted ascending, negative) of the top-`m` atoms per frame by |⟨atom, r_f⟩|.

    On a GPU (or under Triton's interpreter) with m ≤ MAX_FOLDED_TOP the selection runs inside the
    fused kernel; its first use in a process is checked against the top-M of the fused products, and a
    disagreement beyond near-ties (or a kernel that cannot build) switches it off for good. Otherwise
    the products (`inner_products_fused`) and `torch.topk` answer.
    """
    if available(residuals.device) and _state["top_enabled"] and m <= MAX_FOLDED_TOP:
        try:
            folded = _launch_top(seed, step, residuals, num_atoms, m)
        except Exception as exc:
            log.warning(
                "folded top-M selection unavailable (%s: %s); using torch.topk", type(exc).__name__, exc
            )
            _state["top_enabled"] = False
        else:
            if _state["top_verified"]:
                return folded
            expected = _top_from_products(inner_products_fused(seed, step, residuals, num_atoms), m)
            same = folded[0] == expected[0]
            if float(same.float().mean()) >= 0.99 and torch.equal(folded[1][same], expected[1][same]):
                _state["top_verified"] = True
                return folded
            log.warning("folded top-M selection disagrees with torch.topk; switched off")
            _state["top_enabled"] = False
            return expected
    return _top_from_products(inner_products_fused(seed, step, residuals, num_atoms), m)
