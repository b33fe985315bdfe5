"""Deterministic Gaussian entropy coding (codec/entropy.py) on the real constriction range coder."""

from __future__ import annotations

import numpy as np
import pytest

from codec.entropy import (
    EntropyCodingError,
    EntropyDecoder,
    EntropyEncoder,
    GaussianTables,
    clamp_symbols,
    decode_symbols,
    encode_symbols,
    scale_table,
)


def _symbols(rng: np.random.Generator, indices: np.ndarray, tables: GaussianTables) -> np.ndarray:
    raw = rng.normal(0.0, tables.stds[indices])
    return clamp_symbols(np.round(raw).astype(np.int32), tables.symbol_range)


def test_round_trip_over_several_groups() -> None:
    rng = np.random.default_rng(0)
    tables = GaussianTables()
    encoder = EntropyEncoder(tables)
    batches = []
    for shape in [(4, 8, 8), (3, 5, 7), (1,)]:
        indices = rng.integers(0, tables.levels, size=shape)
        symbols = _symbols(rng, indices, tables)
        encoder.encode(symbols, indices)
        batches.append((symbols, indices))
    data = encoder.finish()
    decoder = EntropyDecoder(tables, data)
    for symbols, indices in batches:
        np.testing.assert_array_equal(decoder.decode(indices), symbols)


def test_rate_follows_the_model() -> None:
    """Symbols drawn from a narrow Gaussian cost fewer bits under a matching narrow table."""
    rng = np.random.default_rng(1)
    tables = GaussianTables()
    indices = np.full(4000, 10)
    symbols = _symbols(rng, indices, tables)
    matched = len(encode_symbols(symbols, indices, tables))
    wide = len(encode_symbols(symbols, np.full(4000, 60), tables))
    assert matched < wide
    # Near the entropy of the quantised Gaussian: far below a fixed-length code of the range.
    assert 8 * matched < 4000 * 9


def test_out_of_range_symbols_are_refused_and_clamp_makes_them_codable() -> None:
    tables = GaussianTables(symbol_range=15)
    symbols = np.array([0, 3, -40, 99], dtype=np.int32)
    indices = np.full(4, 20)
    with pytest.raises(EntropyCodingError, match="clamp"):
        encode_symbols(symbols, indices, tables)
    clamped = clamp_symbols(symbols, 15)
    np.testing.assert_array_equal(clamped, [0, 3, -15, 15])
    np.testing.assert_array_equal(
        decode_symbols(encode_symbols(clamped, indices, tables), indices, tables), clamped
    )


def test_table_selection_must_match() -> None:
    """Same indices decode exactly; indices off by one (what float drift would cause) give other symbols."""
    rng = np.random.default_rng(2)
    tables = GaussianTables()
    indices = rng.integers(5, 50, size=2000)
    symbols = _symbols(rng, indices, tables)
    data = encode_symbols(symbols, indices, tables)
    np.testing.assert_array_equal(decode_symbols(data, indices, tables), symbols)
    assert not np.array_equal(decode_symbols(data, indices + 1, tables), symbols)


def test_scale_table_is_log_spaced_constants() -> None:
    table = scale_table(64, 0.11, 64.0)
    assert table[0] == pytest.approx(0.11) and table[-1] == pytest.approx(64.0)
    ratios = table[1:] / table[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    np.testing.assert_array_equal(table, scale_table(64, 0.11, 64.0))


def test_malformed_streams_and_indices() -> None:
    tables = GaussianTables()
    with pytest.raises(EntropyCodingError, match="32-bit"):
        EntropyDecoder(tables, b"\x01\x02\x03")
    with pytest.raises(EntropyCodingError, match="scale index"):
        encode_symbols(np.zeros(3, np.int32), np.array([0, 1, 64]), tables)
    with pytest.raises(EntropyCodingError, match="shape"):
        encode_symbols(np.zeros(3, np.int32), np.zeros(4, np.int64), tables)
