"""The seeded sample of GOPs that `verify` decodes from an archive too large to hold (issue 24).

A GOP's place in the sample depends only on a seeded 64-bit hash of (video key, GOP index): by count,
the `k` rows with the smallest hash; by fraction, every row whose hash, read as a fraction of 2**64,
falls under it. So the sample does not depend on how the manifest is laid out or batched, and a seed
names the same sample on every machine.

The hash is computed for a whole batch with numpy — a polynomial over each key's UTF-8 bytes with a
seed-chosen odd multiplier (wrapping at 2**64), then splitmix64's finaliser over it, the key's length
and the GOP index — because a scan of a million-video archive meets millions of rows, and one
Python-level hash per row (blake2b, as before) was most of `verify`'s time at that size. It only has
to spread rows evenly, not resist an adversary choosing keys. Only the few rows that can enter the
sample become Python objects.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NULL_GOP = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # a row without a GOP index (a failed video) hashes apart
_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with full avalanche), elementwise."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58_476D_1CE4_E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D0_49BB_1331_11EB)
        z ^= z >> np.uint64(31)
    return z


def _seed_word(seed: int, salt: int) -> np.uint64:
    mixed = splitmix64(np.array([(seed * 0x100 + salt) & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))
    return mixed[0]


def _run_starts(keys: pa.Array) -> np.ndarray:
    """Positions where a run of equal keys starts."""
    if len(keys) < 2:
        return np.arange(len(keys), dtype=np.int64)
    same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.concatenate([[True], ~same]))


def _key_polynomials(keys: pa.Array, multiplier: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Per key (a large_string array without nulls): sum of (byte + 1) * multiplier**position (mod 2**64), and its length in bytes."""
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int64)[keys.offset : keys.offset + len(keys) + 1]
    data_buffer = keys.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    sums = np.zeros(len(keys), dtype=np.uint64)
    total = int(offsets[-1] - offsets[0]) if len(keys) else 0
    if total == 0:
        return sums, lengths.astype(np.uint64)
    starts = offsets[:-1] - offsets[0]
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    powers = np.empty(int(lengths.max()), dtype=np.uint64)
    powers[0] = 1
    with np.errstate(over="ignore"):
        np.cumprod(np.full(len(powers) - 1, multiplier, dtype=np.uint64), out=powers[1:])
        contributions = (data[offsets[0] : offsets[-1]].astype(np.uint64) + np.uint64(1)) * powers[positions]
    nonempty = lengths > 0
    sums[nonempty] = np.add.reduceat(contributions, starts[nonempty])
    return sums, lengths.astype(np.uint64)


def row_hashes(keys: pa.Array | pa.ChunkedArray, gops: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """The seeded uint64 hash of each (video key, GOP index) row."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if isinstance(gops, pa.ChunkedArray):
        gops = gops.combine_chunks()
    multiplier = _seed_word(seed, 1) | np.uint64(1)  # odd: every byte position still counts
    keys = pc.fill_null(keys.cast(pa.large_string()), "")
    firsts = _run_starts(keys)  # a video's GOPs follow one another: each key is hashed once a run
    polynomial, lengths = _key_polynomials(keys.take(pa.array(firsts, type=pa.int64())), multiplier)
    runs = np.diff(np.append(firsts, len(keys)))
    polynomial, lengths = np.repeat(polynomial, runs), np.repeat(lengths, runs)
    gop_values = pc.fill_null(gops.cast(pa.int64()), -1).to_numpy(zero_copy_only=False).astype(np.uint64)
    gop_values[np.asarray(gops.is_null(), dtype=bool)] = _NULL_GOP
    with np.errstate(over="ignore"):
        key_hash = splitmix64(polynomial ^ splitmix64(lengths + _seed_word(seed, 2)))
        return splitmix64(key_hash ^ (gop_values * _GOLDEN + _seed_word(seed, 3)))


class SeededSample:
    """The sample of a stream of GOP rows (Arrow batches): by `count` (or `default_count` when neither
    is given) the rows with the smallest hash; by `fraction` the rows whose
    hash is under `fraction` * 2**64. `offer(batch)` keeps what may enter; `rows()` gives the sample
    as records sorted by (video key, GOP index). Equal hashes mean the same (key, GOP) (a row offered
    twice): the first one offered stays."""

    def __init__(self, fraction: float | None, count: int | None, seed: int, default_count: int) -> None:
        self.seed = seed
        self.k = count if count is not None else (None if fraction is not None else default_count)
        #: the fraction mode's bound on the hash (None: every row, a fraction of 1 or more)
        self.threshold = _hash_bound(fraction) if fraction is not None else None
        self.heap: list[tuple[int, int, dict[str, Any]]] = []  # max-heap by hash: (-hash, order, row)
        self.offered = 0
        self.kept: list[dict[str, Any]] = []

    def offer(self, batch: pa.Table) -> None:
        """Offer a batch's rows (it must hold `video_key` and `gop_index`)."""
        if not batch.num_rows:
            return
        hashes = row_hashes(batch.column("video_key"), batch.column("gop_index"), self.seed)
        if self.k is None:
            if self.threshold is None:
                self.kept.extend(batch.to_pylist())
                return
            chosen = np.flatnonzero(hashes < self.threshold)
            self.kept.extend(batch.take(pa.array(chosen, type=pa.int64())).to_pylist())
            return
        if self.k <= 0:
            return
        chosen = self._may_enter(hashes)
        records = batch.take(pa.array(chosen, type=pa.int64())).to_pylist()
        for position, record in zip(chosen.tolist(), records, strict=True):
            self.offered += 1
            item = (-int(hashes[position]), -self.offered, record)
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif -item[0] < -self.heap[0][0]:
                heapq.heapreplace(self.heap, item)

    def _may_enter(self, hashes: np.ndarray) -> np.ndarray:
        """Positions of the batch's rows that may enter: its `k` smallest hashes (more only on ties)
        that are below the worst kept one once `k` are kept."""
        assert self.k is not None
        if len(hashes) > self.k:
            kth = np.partition(hashes, self.k - 1)[self.k - 1]
            positions = np.flatnonzero(hashes <= kth)
        else:
            positions = np.arange(len(hashes))
        if len(self.heap) >= self.k:
            worst = np.uint64(-self.heap[0][0])
            positions = positions[hashes[positions] < worst]
        return positions

    def rows(self) -> list[dict[str, Any]]:
        chosen = self.kept if self.k is None else [item[2] for item in self.heap]
        return sorted(
            chosen, key=lambda r: (r["video_key"], -1 if r["gop_index"] is None else r["gop_index"])
        )


def _hash_bound(fraction: float) -> np.uint64 | None:
    """`fraction` of 2**64 as a uint64 bound (None past 2**64 - 1: every row)."""
    bound = int(max(fraction, 0.0) * 2.0**64)
    return np.uint64(bound) if bound < 2**64 else None
