"""Combinatorial subset ranking and the mixed-radix packing of a GOP's codebook entries."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from codec.errors import CorruptPayloadError
from codec.gvc import subset_rank as sr


def test_rank_is_a_bijection_onto_the_binomial_range():
    ranks = {sr.rank_subset(c, 9) for c in itertools.combinations(range(9), 4)}
    assert ranks == set(range(math.comb(9, 4)))
    for subset in itertools.combinations(range(9), 4):
        assert sr.unrank_subset(sr.rank_subset(subset, 9), 9, 4) == list(subset)


def test_large_subsets_round_trip():
    rng = random.Random(1)
    for k, m in ((16384, 64), (65536, 256), (256, 255), (2, 1)):
        subset = rng.sample(range(k), m)
        assert sr.unrank_subset(sr.rank_subset(subset, k), k, m) == sorted(subset)


def test_rank_refuses_bad_subsets_and_unrank_bad_ranks():
    with pytest.raises(ValueError):
        sr.rank_subset([1, 1, 2], 10)
    with pytest.raises(ValueError):
        sr.rank_subset([3, 10], 10)
    with pytest.raises(CorruptPayloadError):
        sr.unrank_subset(math.comb(10, 3), 10, 3)


def test_packing_round_trips_and_has_the_predicted_size():
    rng = random.Random(2)
    k, m, n = 1024, 12, 37
    entries = []
    for _ in range(n):
        idx = rng.sample(range(k), m)
        entries.append((idx, [rng.choice((-1, 1)) for _ in idx]))
    data = sr.pack_entries(entries, k, m)
    assert len(data) == sr.packed_bytes(k, m, n)
    back = sr.unpack_entries(data, k, m, n)
    for (idx, signs), (got_idx, got_signs) in zip(entries, back, strict=True):
        assert sorted(zip(idx, signs, strict=True)) == list(zip(got_idx, got_signs, strict=True))


def test_subset_rank_beats_fixed_width_indices():
    # The reference bitstream spends M·(log2 K + 1) bits per codebook; the subset rank ~30% less.
    k, m, n = 16384, 64, 17 * 9
    fixed = n * m * (14 + 1) / 8
    assert sr.packed_bytes(k, m, n) < 0.72 * fixed
    assert sr.packed_bits(k, m, n) == math.ceil(n * (math.log2(math.comb(k, m)) + m) - 1e-9)


def test_unpack_refuses_wrong_length_and_out_of_range_values():
    k, m, n = 64, 3, 2
    size = sr.packed_bytes(k, m, n)
    with pytest.raises(CorruptPayloadError):
        sr.unpack_entries(b"\x00" * (size - 1), k, m, n)
    with pytest.raises(CorruptPayloadError):
        sr.unpack_entries(b"\xff" * size, k, m, n)


def test_hostile_sizes_are_refused_before_any_big_integer_work():
    # K = 2^32 − 1, M = 65535 over a million codebooks would be a number of ~10^12 bits.
    with pytest.raises(CorruptPayloadError, match="needs about"):
        sr.unpack_entries(b"\x00" * 100, 2**32 - 1, 65535, 1_000_000)
    assert abs(sr.approximate_bits(16384, 64, 153) - sr.packed_bits(16384, 64, 153)) < 1.0
