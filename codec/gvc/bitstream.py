"""The GVC payload of one GOP: a small header, the packed codebook indices, and reference sections.

Layout (integers little-endian):

    b"GV" | u8 format_version | u8 mode (0 t2v, 1 i2v, 2 flf2v)
    u8 len | model_id (utf-8) | model_sha256 (32 raw bytes)
    u16 width | u16 height | u16 frames              pixel geometry of the GOP as coded
    u64 seed | u8 steps | u8 ode_tail | u32 K | u16 M | f32 shift | f32 g
    u16 len | prompt (utf-8; empty by default, counted in the rate when given)
    u8 section_count, then per section: u8 kind | u8 len | codec name | u32 len | bytes
    u32 len | packed codebook entries (see `subset_rank`)
    u32 crc32c of everything before it

Sections carry what the sampler does not: coded reference frames ("first", "last") and I2V's tail
latent residual ("tail"). Every length is checked against the bytes actually present before anything is
sliced or allocated, so a truncated or hostile payload gives `CorruptPayloadError`, never a crash. The
crc catches flipped bits that would otherwise decode into a different but valid subset rank.
"""

from __future__ import annotations

import dataclasses
import struct

import crc32c as _crc32c

from codec.errors import CorruptPayloadError

MAGIC = b"GV"
FORMAT_VERSION = 1
MODES: tuple[str, ...] = ("t2v", "i2v", "flf2v")
SECTION_KINDS: tuple[str, ...] = ("first", "last", "tail")
_GEOMETRY = struct.Struct("<HHH")
_SAMPLER = struct.Struct("<QBBIHff")
_U8, _U16, _U32 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class Section:
    kind: str  # one of SECTION_KINDS
    codec: str  # how `data` is coded, e.g. "av1", "glvc-intra", "q8-zlib"
    data: bytes


@dataclasses.dataclass(frozen=True)
class GvcPayload:
    mode: str
    model_id: str
    model_sha256: str  # hex
    width: int
    height: int
    frames: int
    seed: int
    steps: int
    ode_tail: int
    num_atoms: int
    atoms_per_step: int
    shift: float
    g_scale: float
    codebook: bytes
    sections: tuple[Section, ...] = ()
    prompt: str = ""

    def section(self, kind: str) -> Section | None:
        return next((s for s in self.sections if s.kind == kind), None)

    def to_bytes(self) -> bytes:
        model_id = self.model_id.encode()
        prompt = self.prompt.encode()
        parts = [
            MAGIC,
            _U8.pack(FORMAT_VERSION),
            _U8.pack(MODES.index(self.mode)),
            _U8.pack(len(model_id)),
            model_id,
            bytes.fromhex(self.model_sha256),
            _GEOMETRY.pack(self.width, self.height, self.frames),
            _SAMPLER.pack(
                self.seed,
                self.steps,
                self.ode_tail,
                self.num_atoms,
                self.atoms_per_step,
                self.shift,
                self.g_scale,
            ),
            _U16.pack(len(prompt)),
            prompt,
            _U8.pack(len(self.sections)),
        ]
        for sec in self.sections:
            name = sec.codec.encode()
            parts += [_U8.pack(SECTION_KINDS.index(sec.kind)), _U8.pack(len(name)), name]
            parts += [_U32.pack(len(sec.data)), sec.data]
        parts += [_U32.pack(len(self.codebook)), self.codebook]
        body = b"".join(parts)
        return body + _U32.pack(_crc32c.crc32c(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> GvcPayload:
        if len(data) < len(MAGIC) + 4 or data[:2] != MAGIC:
            raise CorruptPayloadError("not a GVC payload (bad magic or too short)")
        body, (crc,) = data[:-4], _U32.unpack(data[-4:])
        if _crc32c.crc32c(body) != crc:
            raise CorruptPayloadError("GVC payload is damaged (checksum mismatch)")
        reader = _Reader(body, 2)
        version = reader.unpack(_U8)[0]
        if version != FORMAT_VERSION:
            raise CorruptPayloadError(f"GVC payload format version {version} is not supported")
        mode_index = reader.unpack(_U8)[0]
        if mode_index >= len(MODES):
            raise CorruptPayloadError(f"GVC payload has unknown mode {mode_index}")
        model_id = reader.text(reader.unpack(_U8)[0])
        sha = reader.take(32).hex()
        width, height, frames = reader.unpack(_GEOMETRY)
        seed, steps, ode_tail, k, m, shift, g = reader.unpack(_SAMPLER)
        prompt = reader.text(reader.unpack(_U16)[0])
        sections = []
        for _ in range(reader.unpack(_U8)[0]):
            kind = reader.unpack(_U8)[0]
            if kind >= len(SECTION_KINDS):
                raise CorruptPayloadError(f"GVC payload has unknown section kind {kind}")
            codec_name = reader.text(reader.unpack(_U8)[0])
            sections.append(Section(SECTION_KINDS[kind], codec_name, reader.take(reader.unpack(_U32)[0])))
        codebook = reader.take(reader.unpack(_U32)[0])
        if reader.pos != len(body):
            raise CorruptPayloadError(f"GVC payload has {len(body) - reader.pos} unexpected trailing bytes")
        return cls(
            mode=MODES[mode_index],
            model_id=model_id,
            model_sha256=sha,
            width=width,
            height=height,
            frames=frames,
            seed=seed,
            steps=steps,
            ode_tail=ode_tail,
            num_atoms=k,
            atoms_per_step=m,
            shift=shift,
            g_scale=g,
            codebook=codebook,
            sections=tuple(sections),
            prompt=prompt,
        )


def header_bytes(model_id: str, prompt: str = "", sections: tuple[tuple[str, int], ...] = ()) -> int:
    """Bytes of everything but the codebook and section data (for exact rate planning).

    `sections` lists (codec name, data length) pairs; only the names' lengths matter here.
    """
    fixed = 2 + 1 + 1 + 1 + 32 + _GEOMETRY.size + _SAMPLER.size + 2 + 1 + 4 + 4
    per_section = sum(1 + 1 + len(name.encode()) + 4 for name, _ in sections)
    return fixed + len(model_id.encode()) + len(prompt.encode()) + per_section


class _Reader:
    """Bounds-checked cursor over a bytes object."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptPayloadError(
                f"GVC payload is truncated (needs {n} bytes at offset {self.pos}, has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise CorruptPayloadError("GVC payload holds invalid text") from None
