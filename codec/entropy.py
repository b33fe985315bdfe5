"""Deterministic Gaussian entropy coding on constriction's range coder.

Symbols are integers coded with zero-mean quantised Gaussians whose standard deviation is chosen from a
fixed, log-spaced table by an integer *scale index*. The table is computed in float64 from three
constants (``scale_table``), never from network outputs, so encoder and decoder build identical models
as long as they agree on the indices — which the latent codec guarantees with exact integer arithmetic.
Means are handled by the caller (it codes ``round(y - mean)`` and adds the mean back).

Coding: symbols are coded in raster order with constriction's per-symbol ``QuantizedGaussian`` whose
parameters are (0, table[index]) — exact float64 constants looked up by integer. We also measured the
alternative of grouping symbols by index and coding each group with one fixed model; it was slower
(6.3 vs 10.9 Msym/s on 200k symbols, same bytes; ``bench/glvc_speed.py`` prints the comparison), because
the per-group gathers cost more than constriction's per-symbol model construction.

Range: symbols must lie in ``[-symbol_range, symbol_range]``. The caller clamps on the encoder side
(``clamp_symbols``) *before* reconstructing, so the reconstruction equals what a decoder produces; values
outside the range are refused here rather than silently wrapped. With the default table (largest std
64) and range 255, clamping only touches values more than 4σ out.

The first-in-first-out range coder (``constriction.stream.queue``) is used so encoding and decoding walk
the data in the same order, which the two-step spatial context needs.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import constriction
import numpy as np

DEFAULT_SCALE_MIN = 0.11
DEFAULT_SCALE_MAX = 64.0
DEFAULT_SCALE_LEVELS = 64
DEFAULT_SYMBOL_RANGE = 255


class EntropyCodingError(ValueError):
    """Symbols outside the coder's range, or a stream that cannot be decoded."""


def scale_table(
    levels: int = DEFAULT_SCALE_LEVELS, smin: float = DEFAULT_SCALE_MIN, smax: float = DEFAULT_SCALE_MAX
) -> np.ndarray:
    """Standard deviations exp(linspace(log smin, log smax, levels)) in float64 (identical everywhere)."""
    return np.exp(np.linspace(np.log(smin), np.log(smax), levels, dtype=np.float64))


def clamp_symbols(symbols: np.ndarray, symbol_range: int = DEFAULT_SYMBOL_RANGE) -> np.ndarray:
    """Encoder-side clamp into the codable range (apply before reconstructing)."""
    return np.clip(symbols, -symbol_range, symbol_range)


@functools.lru_cache(maxsize=32)
def _model_family(symbol_range: int):
    """constriction's quantised Gaussian over [-range, range], parameterised per symbol."""
    return constriction.stream.model.QuantizedGaussian(-symbol_range, symbol_range)


class GaussianTables:
    """The shared table of quantised Gaussians (levels × std, symbol range)."""

    def __init__(
        self,
        levels: int = DEFAULT_SCALE_LEVELS,
        smin: float = DEFAULT_SCALE_MIN,
        smax: float = DEFAULT_SCALE_MAX,
        symbol_range: int = DEFAULT_SYMBOL_RANGE,
    ) -> None:
        self.levels, self.smin, self.smax, self.symbol_range = levels, smin, smax, symbol_range
        self.stds = scale_table(levels, smin, smax)
        self.model = _model_family(symbol_range)

    def parameters(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(means, stds) per symbol, float64, from integer scale indices (exact table look-up)."""
        flat = np.asarray(indices).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.levels):
            raise EntropyCodingError(f"scale index out of [0, {self.levels - 1}]")
        return np.zeros(flat.size, dtype=np.float64), self.stds[flat.astype(np.int64)]


class EntropyEncoder:
    """Accumulates symbol batches; `finish()` returns the bytes."""

    def __init__(self, tables: GaussianTables) -> None:
        self.tables = tables
        self._coder = constriction.stream.queue.RangeEncoder()
        self.symbol_count = 0

    def encode(self, symbols: np.ndarray, indices: np.ndarray) -> None:
        """Code `symbols` (ints, any shape, raster order) with stds `tables.stds[indices]` (same shape)."""
        flat = np.asarray(symbols).reshape(-1)
        if flat.shape != np.asarray(indices).reshape(-1).shape:
            raise EntropyCodingError("symbols and scale indices differ in shape")
        r = self.tables.symbol_range
        if flat.size and (flat.min() < -r or flat.max() > r):
            raise EntropyCodingError(f"symbol outside [-{r}, {r}]: clamp with clamp_symbols first")
        means, stds = self.tables.parameters(indices)
        if flat.size:
            self._coder.encode(flat.astype(np.int32), self.tables.model, means, stds)
        self.symbol_count += flat.size

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class EntropyDecoder:
    """Decodes batches in the order an `EntropyEncoder` wrote them."""

    def __init__(self, tables: GaussianTables, data: bytes) -> None:
        if len(data) % 4:
            raise EntropyCodingError(f"entropy-coded stream of {len(data)} bytes is not whole 32-bit words")
        self.tables = tables
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self._coder = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction raises plain exceptions for malformed streams
            raise EntropyCodingError(f"unreadable entropy-coded stream ({exc})") from None

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Symbols shaped like `indices` (int32)."""
        indices = np.asarray(indices)
        means, stds = self.tables.parameters(indices)
        if not indices.size:
            return np.zeros(indices.shape, dtype=np.int32)
        try:
            out = self._coder.decode(self.tables.model, means, stds)
        except Exception as exc:
            raise EntropyCodingError(f"entropy decoding failed ({exc})") from None
        return np.asarray(out, dtype=np.int32).reshape(indices.shape)


def encode_symbols(symbols: np.ndarray, indices: np.ndarray, tables: GaussianTables | None = None) -> bytes:
    """One-shot helper: a single group of symbols to bytes."""
    encoder = EntropyEncoder(tables or GaussianTables())
    encoder.encode(symbols, indices)
    return encoder.finish()


def decode_symbols(data: bytes, indices: np.ndarray, tables: GaussianTables | None = None) -> np.ndarray:
    """Inverse of `encode_symbols`."""
    return EntropyDecoder(tables or GaussianTables(), data).decode(indices)


def symbols_sha256(groups: Iterable[np.ndarray]) -> str:
    """sha256 of symbol groups in coding order, each as little-endian int32 (C order).

    The exact part of a decode: a decoder that selects other probability tables, or a damaged stream
    the CRC missed, gives other symbols and so another digest, on any device.
    """
    digest = hashlib.sha256()
    for group in groups:
        digest.update(np.ascontiguousarray(group, dtype="<i4").tobytes())
    return digest.hexdigest()
