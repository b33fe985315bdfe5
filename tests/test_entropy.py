"""Deterministic Gaussian entropy coding (codec/entropy.py) on the real constriction range coder."""

from __future__ import annotations

import dataclasses
from decimal import Decimal, getcontext

import numpy as np
import pytest

from codec.entropy import (
    GAUSS64_V1,
    EntropyCodingError,
    EntropyDecoder,
    EntropyEncoder,
    EntropyProfile,
    EntropyProfileError,
    GaussianTables,
    check_conformance,
    clamp_symbols,
    conformance_stream,
    decode_symbols,
    encode_symbols,
    profile_by_id,
    profile_for,
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
    tables = GaussianTables(dataclasses.replace(GAUSS64_V1, id=0, symbol_range=15, conformance_sha256=None))
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


def test_pinned_table_is_the_documented_formula_correctly_rounded() -> None:
    """σ_i = 0.11 · (64 / 0.11)^(i / 63) in 60-digit decimal arithmetic, rounded once to binary64."""
    getcontext().prec = 60
    low, high = Decimal("0.11"), Decimal(64)
    exact = [float((low.ln() + (high.ln() - low.ln()) * i / 63).exp()) for i in range(64)]
    assert list(GAUSS64_V1.stds) == exact
    assert GAUSS64_V1.stds[0] == 0.11 and GAUSS64_V1.stds[-1] == 64.0


def _sweep_digest(stds) -> bytes:
    return conformance_stream(dataclasses.replace(GAUSS64_V1, stds=tuple(float(s) for s in stds)))


def test_format1_tables_and_one_ulp_neighbours_quantise_like_the_pinned_constants() -> None:
    """Format-1 payloads were coded with tables computed by np.exp at load (some entries differ from the
    constants in the last bit, and between machines): the installed coder maps each of those, and each
    constant ±1 ulp, to exactly the same probabilities, so they decode under gauss64-v1."""
    pinned = _sweep_digest(GAUSS64_V1.stds)
    computed = np.exp(np.linspace(np.log(0.11), np.log(64.0), 64, dtype=np.float64))
    assert np.any(computed != np.asarray(GAUSS64_V1.stds))  # the case that matters is exercised
    stds = np.asarray(GAUSS64_V1.stds)
    assert _sweep_digest(computed) == pinned
    assert _sweep_digest(np.nextafter(stds, 0.0)) == pinned
    assert _sweep_digest(np.nextafter(stds, np.inf)) == pinned
    # ...while a real change of the table changes the code
    assert _sweep_digest(stds * 1.01) != pinned


def test_the_installed_coder_conforms_and_a_different_one_is_refused() -> None:
    check_conformance(GAUSS64_V1)  # constriction as pinned in pyproject.toml
    wrong = dataclasses.replace(GAUSS64_V1, conformance_sha256="0" * 64)
    with pytest.raises(EntropyProfileError, match=r"install constriction==0\.5\.0"):
        GaussianTables(wrong)


def test_profiles_are_found_by_id_and_by_scale_settings() -> None:
    assert profile_by_id(1) is GAUSS64_V1 and GAUSS64_V1.name == "gauss64-v1"
    assert profile_for(64, 0.11, 64.0, 255) is GAUSS64_V1
    with pytest.raises(EntropyProfileError, match="unknown"):
        profile_by_id(9)
    with pytest.raises(EntropyProfileError, match="no pinned entropy profile"):
        profile_for(32, 0.11, 64.0, 255)
    record = GAUSS64_V1.record()
    assert record == {"library": "constriction", "version": record["version"], "profile": "gauss64-v1"}


def test_an_unpinned_profile_is_not_a_payload_profile() -> None:
    custom = EntropyProfile(0, "test", GAUSS64_V1.stds, 15, None)
    GaussianTables(custom)  # usable for experiments
    with pytest.raises(EntropyProfileError):
        profile_by_id(custom.id)


def test_malformed_streams_and_indices() -> None:
    tables = GaussianTables()
    with pytest.raises(EntropyCodingError, match="32-bit"):
        EntropyDecoder(tables, b"\x01\x02\x03")
    with pytest.raises(EntropyCodingError, match="scale index"):
        encode_symbols(np.zeros(3, np.int32), np.array([0, 1, 64]), tables)
    with pytest.raises(EntropyCodingError, match="shape"):
        encode_symbols(np.zeros(3, np.int32), np.zeros(4, np.int64), tables)
