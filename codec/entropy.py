"""Deterministic Gaussian entropy coding on constriction's range coder, under pinned entropy profiles.

Symbols are integers coded with zero-mean quantised Gaussians whose standard deviation is chosen from a
fixed, log-spaced table by an integer *scale index*. Encoder and decoder must build bit-identical
models (a decoder whose parameters differ by one ulp can return wrong symbols silently), so everything
that defines the probabilities is pinned as an **entropy profile** (`EntropyProfile`), named by every
payload that uses one:

- the scale table, as binary64 constants written in hex (`GAUSS64_V1_STDS`), never recomputed with
  floating point at load. Profile ``gauss64-v1``: σ_i = 0.11 · (64 / 0.11)^(i / 63), i = 0..63, each
  the real value rounded to the nearest binary64 (``tests/test_entropy.py`` recomputes them in 60-digit
  decimal arithmetic and compares exactly);
- the symbol range ([-255, 255]) and the quantiser: constriction's ``QuantizedGaussian`` (leaky
  quantisation to its default 24-bit precision) with the first-in-first-out ``RangeEncoder``;
- a conformance digest: the sha256 of the range coder's output for a sweep of every symbol of the range
  under every table entry. The quantised probabilities are computed inside constriction, so a profile
  also pins *how* they are computed; the first use of a profile in a process codes the sweep and
  refuses to go on (`EntropyProfileError`, one line) if the installed constriction quantises any
  table entry differently.

What is and is not guaranteed (constriction 0.5.0, pinned exactly in pyproject.toml and recorded in
run configs and container headers): its Gaussian CDF comes from the `probability` crate's erf, which
since `special` 0.10 is the pure-Rust `libm` crate (a port of musl), not the platform's C library, and
Rust never contracts a·b+c into a fused multiply-add on its own; so one constriction build gives the
same quantised tables on any CPU, thread count or operating system. Nothing promises the same across
constriction releases (a new erf, or another quantiser, would move some probabilities by one unit):
that is what the conformance digest catches. Archives made before profiles existed (GLVC payload
format 1) computed their table with ``np.exp`` at load, which differs from the pinned constants in the
last bit for some entries and, with and without numpy's AVX-512 path, between machines; constriction
0.5.0 quantises every such neighbour (and ±1 ulp around each constant) to the same probabilities,
which ``tests/test_entropy.py`` checks, so those archives decode exactly under ``gauss64-v1``.

Coding: symbols are coded in raster order with constriction's per-symbol ``QuantizedGaussian`` whose
parameters are (0, table[index]) — exact float64 constants looked up by integer. We also measured the
alternative of grouping symbols by index and coding each group with one fixed model; it was slower
(6.3 vs 10.9 Msym/s on 200k symbols, same bytes; ``bench/glvc_speed.py`` prints the comparison), because
the per-group gathers cost more than constriction's per-symbol model construction.

Range: symbols must lie in ``[-symbol_range, symbol_range]``. The caller clamps on the encoder side
(``clamp_symbols``) *before* reconstructing, so the reconstruction equals what a decoder produces; values
outside the range are refused here rather than silently wrapped. With the table's largest std 64 and
range 255, clamping only touches values more than 4σ out.

The first-in-first-out range coder (``constriction.stream.queue``) is used so encoding and decoding walk
the data in the same order, which the two-step spatial context needs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
from collections.abc import Iterable

import constriction
import numpy as np

#: The constriction release the pinned profiles were made with (also pinned in pyproject.toml).
CONSTRICTION_VERSION = "0.5.0"

DEFAULT_SCALE_MIN = 0.11
DEFAULT_SCALE_MAX = 64.0
DEFAULT_SCALE_LEVELS = 64
DEFAULT_SYMBOL_RANGE = 255

#: gauss64-v1: σ_i = 0.11 · (64 / 0.11)^(i / 63), correctly rounded to binary64 (see the module docstring).
GAUSS64_V1_STDS: tuple[float, ...] = tuple(
    float.fromhex(h)
    for h in (
        "0x1.c28f5c28f5c29p-4", "0x1.f2780fb7492c2p-4", "0x1.13bc727545602p-3", "0x1.310e43c5a8913p-3",
        "0x1.517e311334417p-3", "0x1.756117b6e6e95p-3", "0x1.9d14db23cd4cep-3", "0x1.c9015a8a5453bp-3",
        "0x1.f999809a1ec91p-3", "0x1.17ae3814ae625p-2", "0x1.356b686a1e305p-2", "0x1.56521f7d579e5p-2",
        "0x1.7ab8716fa473bp-2", "0x1.a2fd99882ce10p-2", "0x1.cf8af35ad60dep-2", "0x1.006a8736a59bep-1",
        "0x1.1bae6f95ad6bep-1", "0x1.39d8882440057p-1", "0x1.5b37bc00a34c2p-1", "0x1.80235a8689b82p-1",
        "0x1.a8fbfbbc58ec8p-1", "0x1.d62c7d0a7337fp-1", "0x1.04158c68d84b2p+0", "0x1.1fbd4dde40d0cp+0",
        "0x1.3e55dd79ff39dp+0", "0x1.602f475c1826dp+0", "0x1.85a21a9d0c051p+0", "0x1.af1050ffa300bp+0",
        "0x1.dce64f45aed49p+0", "0x1.07ce0063322b6p+1", "0x1.23db08961ef6fp+1", "0x1.42e3a3c79e438p+1",
        "0x1.6539033bd2487p+1", "0x1.8b34fa5af22e1p+1", "0x1.b53ae9b392c71p+1", "0x1.e3b8c2fa1dd7dp+1",
        "0x1.0b941456d8db8p+2", "0x1.2807d6297bc1dp+2", "0x1.47821742c1bf7p+2", "0x1.6a55323c6d578p+2",
        "0x1.90dc4372152e9p+2", "0x1.bb7c17600cc98p+2", "0x1.eaa4325afef0cp+2", "0x1.0f67fa291748ap+3",
        "0x1.2c43edcbd8226p+3", "0x1.4c3174fd8c857p+3", "0x1.6f8417ee75414p+3", "0x1.969840a22e8a3p+3",
        "0x1.c1d42cb7886e3p+3", "0x1.f1a8f8e5e3257p+3", "0x1.1349e475f1639p+4", "0x1.308f877adbf3cp+4",
        "0x1.50f1fae9c71fbp+4", "0x1.74c5f8d9e38d2p+4", "0x1.9c693dbcb49dap+4", "0x1.c8437d9b555fap+4",
        "0x1.f8c77367677e7p+4", "0x1.173a0692c1472p+5", "0x1.34eadc013a47bp+5", "0x1.55c3e7dc12cf4p+5",
        "0x1.7a1b1a81a977dp+5", "0x1.a24f87a8c512dp+5", "0x1.ceca5f1ff0982p+5", "0x1.0000000000000p+6",
    )
)  # fmt: skip


class EntropyCodingError(ValueError):
    """Symbols outside the coder's range, or a stream that cannot be decoded."""


class EntropyProfileError(RuntimeError):
    """The installed entropy coder does not reproduce a pinned profile, or a profile is unknown."""


@dataclasses.dataclass(frozen=True)
class EntropyProfile:
    """Everything that defines the probability tables of a payload (see the module docstring)."""

    id: int  # as stored in payloads (u8)
    name: str
    stds: tuple[float, ...]
    symbol_range: int
    #: sha256 of `conformance_stream(self)` under the constriction release the profile was made with;
    #: None for an unpinned profile (tests only: never stored in a payload).
    conformance_sha256: str | None

    @property
    def levels(self) -> int:
        return len(self.stds)

    def record(self) -> dict[str, str]:
        """What run configs and container headers record about the coder."""
        return {"library": "constriction", "version": constriction_version(), "profile": self.name}


GAUSS64_V1 = EntropyProfile(
    id=1,
    name="gauss64-v1",
    stds=GAUSS64_V1_STDS,
    symbol_range=DEFAULT_SYMBOL_RANGE,
    conformance_sha256="d0f9260f0f3ab06d962a4045edaeda623a1a4bf27c6494dc066a539489753c1d",
)
#: Profiles a payload may name, by id. Never remove or change one: archives depend on them.
PROFILES: dict[int, EntropyProfile] = {GAUSS64_V1.id: GAUSS64_V1}


def constriction_version() -> str:
    try:
        return importlib.metadata.version("constriction")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def profile_by_id(profile_id: int) -> EntropyProfile:
    """The pinned profile a payload names; EntropyProfileError (one line) for an unknown one."""
    try:
        return PROFILES[profile_id]
    except KeyError:
        known = ", ".join(f"{p.id} ({p.name})" for p in PROFILES.values())
        raise EntropyProfileError(
            f"entropy profile {profile_id} is unknown to this decoder (it knows {known}); upgrade vidarc"
        ) from None


def profile_for(levels: int, smin: float, smax: float, symbol_range: int) -> EntropyProfile:
    """The pinned profile of a latent codec's scale settings (its config), or EntropyProfileError."""
    for profile in PROFILES.values():
        if (levels, symbol_range) == (profile.levels, profile.symbol_range) and (
            profile.stds[0] == smin and profile.stds[-1] == smax
        ):
            return profile
    raise EntropyProfileError(
        f"no pinned entropy profile has {levels} scale levels from {smin:g} to {smax:g} over ±{symbol_range}; "
        f"the exact coding path supports {', '.join(p.name for p in PROFILES.values())}"
    )


def conformance_stream(profile: EntropyProfile) -> bytes:
    """The range coder's bytes for every symbol of the range under every table entry, in order."""
    r = profile.symbol_range
    symbols = np.tile(np.arange(-r, r + 1, dtype=np.int32), profile.levels)
    stds = np.repeat(np.asarray(profile.stds, dtype=np.float64), 2 * r + 1)
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(symbols, _model_family(r), np.zeros(symbols.size), stds)
    return coder.get_compressed().astype("<u4").tobytes()


@functools.lru_cache(maxsize=8)
def check_conformance(profile: EntropyProfile) -> None:
    """Refuse (once per process and profile) an entropy coder that quantises the tables differently."""
    if profile.conformance_sha256 is None:
        return
    if hashlib.sha256(conformance_stream(profile)).hexdigest() != profile.conformance_sha256:
        raise EntropyProfileError(
            f"constriction {constriction_version()} quantises entropy profile {profile.name} differently "
            f"from constriction {CONSTRICTION_VERSION}, which it was pinned with; install "
            f"constriction=={CONSTRICTION_VERSION} (decoding would return wrong symbols)"
        )


def clamp_symbols(symbols: np.ndarray, symbol_range: int = DEFAULT_SYMBOL_RANGE) -> np.ndarray:
    """Encoder-side clamp into the codable range (apply before reconstructing)."""
    return np.clip(symbols, -symbol_range, symbol_range)


@functools.lru_cache(maxsize=32)
def _model_family(symbol_range: int):
    """constriction's quantised Gaussian over [-range, range], parameterised per symbol."""
    return constriction.stream.model.QuantizedGaussian(-symbol_range, symbol_range)


class GaussianTables:
    """A profile's quantised Gaussians (levels × std, symbol range), checked against its pin."""

    def __init__(self, profile: EntropyProfile = GAUSS64_V1) -> None:
        check_conformance(profile)
        self.profile = profile
        self.levels, self.symbol_range = profile.levels, profile.symbol_range
        self.stds = np.asarray(profile.stds, dtype=np.float64)
        self.model = _model_family(profile.symbol_range)

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
