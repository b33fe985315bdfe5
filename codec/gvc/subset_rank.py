"""Exact index coding for GVC: the chosen atoms of each (step, frame) as one combinatorial rank.

The encoder keeps M of K atoms per codebook with a ±1 sign each. The order of the atoms does not matter
(their signed sum is the noise), so the information is which M-subset was chosen — log2 C(K, M) bits —
plus M sign bits. The reference implementation spends M·(log2 K + 1) bits instead; at K = 16384,
M = 64 that is 960 vs 664 bits per codebook (Turbo-DDCM, ICLR 2026, uses the subset rank).

Rank: the combinatorial number system. For sorted indices c_1 < … < c_M,
rank = Σ_i C(c_i, i) ∈ [0, C(K, M)), a bijection (Knuth, TAOCP 7.2.1.3). All codebooks of a GOP are then
packed into one integer in mixed radix (C(K, M) · 2^M per codebook), so the payload wastes less than one
bit per GOP instead of up to one bit per codebook, and its size is an exact function of (K, M, count):
`packed_bytes`. Python integers make all of this exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from codec.errors import CorruptPayloadError


def rank_subset(indices: Sequence[int], universe: int) -> int:
    """Rank of a set of distinct indices in [0, universe) among all subsets of its size."""
    chosen = sorted(int(i) for i in indices)
    if len(set(chosen)) != len(chosen) or (chosen and (chosen[0] < 0 or chosen[-1] >= universe)):
        raise ValueError(f"indices must be distinct and in [0, {universe})")
    return sum(math.comb(c, i + 1) for i, c in enumerate(chosen))


def unrank_subset(rank: int, universe: int, size: int) -> list[int]:
    """Inverse of `rank_subset`: the sorted indices of the subset with this rank."""
    if not 0 <= rank < math.comb(universe, size):
        raise CorruptPayloadError(f"subset rank {rank} out of range for C({universe}, {size})")
    out = [0] * size
    upper = universe  # every index found so far is below this
    for i in range(size, 0, -1):
        # largest c < upper with C(c, i) <= rank (C(i-1, i) = 0 always qualifies)
        lo, hi = i - 1, upper - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if math.comb(mid, i) <= rank:
                lo = mid
            else:
                hi = mid - 1
        out[i - 1] = lo
        rank -= math.comb(lo, i)
        upper = lo
    return out


def entry_radix(universe: int, size: int) -> int:
    """Number of distinct (subset, signs) values of one codebook entry."""
    return math.comb(universe, size) << size


def approximate_bits(universe: int, size: int, entries: int) -> float:
    """Float estimate of `packed_bits`, cheap for any arguments (lgamma): a guard run before the exact
    big-integer size so hostile headers cannot make the decoder build astronomically large numbers."""
    if not 0 <= size <= universe:
        return math.inf
    log2_comb = (
        math.lgamma(universe + 1) - math.lgamma(size + 1) - math.lgamma(universe - size + 1)
    ) / math.log(2)
    return entries * (log2_comb + size)


def packed_bits(universe: int, size: int, entries: int) -> int:
    """Exact bit length of `entries` packed entries (the largest value's bit length)."""
    return (entry_radix(universe, size) ** entries - 1).bit_length()


def packed_bytes(universe: int, size: int, entries: int) -> int:
    return (packed_bits(universe, size, entries) + 7) // 8


def pack_entries(entries: Sequence[tuple[Sequence[int], Sequence[int]]], universe: int, size: int) -> bytes:
    """Pack (indices, signs) pairs — signs as +1/−1 aligned with the sorted indices — into bytes."""
    radix = entry_radix(universe, size)
    value = 0
    for indices, signs in reversed(entries):
        order = sorted(range(len(indices)), key=lambda k: int(indices[k]))
        if len(indices) != size or len(signs) != size:
            raise ValueError(f"every entry needs exactly {size} indices and signs")
        sign_bits = 0
        for bit, k in enumerate(order):
            sign_bits |= (1 if int(signs[k]) < 0 else 0) << bit
        entry = (rank_subset(indices, universe) << size) | sign_bits
        value = value * radix + entry
    return value.to_bytes(packed_bytes(universe, size, len(entries)), "little")


def unpack_entries(data: bytes, universe: int, size: int, entries: int) -> list[tuple[list[int], list[int]]]:
    """Inverse of `pack_entries`: sorted indices and their signs per entry; bounds-checked."""
    if abs(approximate_bits(universe, size, entries) / 8 - len(data)) > 4 + 1e-6 * len(data):
        raise CorruptPayloadError(
            f"codebook section has {len(data)} bytes; K={universe}, M={size} over {entries} codebooks needs "
            f"about {approximate_bits(universe, size, entries) / 8:.0f}"
        )
    if len(data) != packed_bytes(universe, size, entries):
        raise CorruptPayloadError(
            f"codebook section has {len(data)} bytes, expected {packed_bytes(universe, size, entries)}"
        )
    value = int.from_bytes(data, "little")
    radix = entry_radix(universe, size)
    if value >= radix**entries:
        raise CorruptPayloadError("codebook section holds a value outside its range")
    out = []
    for _ in range(entries):
        value, entry = divmod(value, radix)
        sign_bits, rank = entry & ((1 << size) - 1), entry >> size
        indices = unrank_subset(rank, universe, size)
        signs = [-1 if (sign_bits >> k) & 1 else 1 for k in range(size)]
        out.append((indices, signs))
    return out
