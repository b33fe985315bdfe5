"""GLVC's GOP payload: a small header, then the entropy-coded stream.

Format 2 (written since the entropy profiles were pinned; little endian)::

    magic        4s   b"GLVC"
    version      u8   2
    profile      u8   entropy profile id (`codec.entropy.PROFILES`: 1 = gauss64-v1)
    id_len       u8   length of model_id
    model_id     bytes (utf-8), e.g. b"vidarc-tiny@1"
    model_sha256 32s  raw digest of the components the codec uses (tokenizer + latent_codec)
    width, height, padded_width, padded_height   4 × u16  (source size; size actually coded)
    frames       u16  frames of this GOP; coded_frames u16 (1+4k after temporal padding)
    q_index      u8
    body_len     u32
    body         body_len bytes (range-coder words)
    crc          u32  CRC32C of every byte before it, header included

Format 1 (archives made before): the same fields without `profile` (implied gauss64-v1), with
``body_len u32 | body_crc u32`` before the body and the CRC over the body only. It still decodes.

Every format from 2 on ends with the CRC32C of all bytes before it, so a payload of a *newer* format
can be told from a damaged one: an unknown version whose CRC holds is refused as "newer than this
decoder" (`UnsupportedFormatError`), anything else as damaged (`CorruptPayloadError`).

Why a CRC inside the payload when the container has one per GOP: a payload can be handed to `decode`
alone (tests, tools, another container), and a range decoder fed damaged bytes returns garbage
silently; the CRC turns that into a clear CorruptPayloadError. Format 1 covered only the body, so a
flipped bit in its header (quality index, padded size) could decode to other frames; format 2 covers
the header too. Why the full sha256: 32 bytes per GOP is negligible and makes a model mismatch
unambiguous.

Parsing is bounds-checked: a short, long or damaged payload raises CorruptPayloadError, never an
IndexError or a huge allocation.
"""

from __future__ import annotations

import dataclasses
import struct

import crc32c

from codec.errors import CorruptPayloadError, UnsupportedFormatError

MAGIC = b"GLVC"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<4sB")
_V1_FIXED = struct.Struct("<4sBB")
_V1_GEOMETRY = struct.Struct("<32sHHHHHHBII")
_V2_FIXED = struct.Struct("<4sBBB")
_V2_GEOMETRY = struct.Struct("<32sHHHHHHBI")
_CRC = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class GlvcHeader:
    model_id: str
    model_sha256: str  # hex
    width: int
    height: int
    padded_width: int
    padded_height: int
    frames: int
    coded_frames: int
    q_index: int
    profile: int = 1  # entropy profile id (format 1 payloads: always 1)
    version: int = FORMAT_VERSION  # the format it was read from (pack_payload always writes the newest)


def pack_payload(header: GlvcHeader, body: bytes) -> bytes:
    """A format-2 payload (the header's `version` is ignored: new payloads are always the newest)."""
    model_id = header.model_id.encode()
    if len(model_id) > 255:
        raise ValueError("model id longer than 255 bytes")
    head = _V2_FIXED.pack(MAGIC, FORMAT_VERSION, header.profile, len(model_id)) + model_id
    geometry = _V2_GEOMETRY.pack(
        bytes.fromhex(header.model_sha256),
        header.width,
        header.height,
        header.padded_width,
        header.padded_height,
        header.frames,
        header.coded_frames,
        header.q_index,
        len(body),
    )
    data = head + geometry + body
    return data + _CRC.pack(crc32c.crc32c(data))


def unpack_payload(payload: bytes) -> tuple[GlvcHeader, bytes]:
    """Header and body of a payload of any readable format; CorruptPayloadError for anything
    malformed, UnsupportedFormatError for an intact payload of a format this decoder does not know."""
    data = memoryview(payload)
    if len(data) < _PREFIX.size:
        raise CorruptPayloadError(f"GLVC payload of {len(data)} bytes is too short for a header")
    magic, version = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptPayloadError("not a GLVC payload (bad magic)")
    if version == 1:
        return _unpack_v1(data)
    if version == 2:
        return _unpack_v2(data)
    if len(data) >= _PREFIX.size + _CRC.size and _crc_holds(data):
        raise UnsupportedFormatError(
            f"GLVC payload format {version} is newer than this decoder, which reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}; upgrade vidarc to decode it"
        )
    raise CorruptPayloadError(f"GLVC payload is damaged (unknown format {version} and no valid checksum)")


def _crc_holds(data: memoryview) -> bool:
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    return crc32c.crc32c(bytes(data[: len(data) - _CRC.size])) == stored


def _unpack_v2(data: memoryview) -> tuple[GlvcHeader, bytes]:
    if len(data) < _V2_FIXED.size + _V2_GEOMETRY.size + _CRC.size:
        raise CorruptPayloadError(f"GLVC payload truncated in its header ({len(data)} bytes)")
    if not _crc_holds(data):
        raise CorruptPayloadError(
            "GLVC payload is damaged (CRC32C of header and coded stream does not match)"
        )
    _, _, profile, id_len = _V2_FIXED.unpack_from(data, 0)
    start = _V2_FIXED.size + id_len
    if len(data) < start + _V2_GEOMETRY.size + _CRC.size:
        raise CorruptPayloadError(f"GLVC payload truncated in its header ({len(data)} bytes)")
    model_id = _text(data[_V2_FIXED.size : start])
    digest, width, height, pw, ph, frames, coded, q_index, body_len = _V2_GEOMETRY.unpack_from(data, start)
    body_start = start + _V2_GEOMETRY.size
    if len(data) - _CRC.size - body_start != body_len:
        raise CorruptPayloadError(
            f"GLVC payload truncated or padded: body is {len(data) - _CRC.size - body_start} bytes, "
            f"header says {body_len}"
        )
    header = GlvcHeader(model_id, digest.hex(), width, height, pw, ph, frames, coded, q_index, profile, 2)
    _check_geometry(header)
    return header, bytes(data[body_start : len(data) - _CRC.size])


def _unpack_v1(data: memoryview) -> tuple[GlvcHeader, bytes]:
    if len(data) < _V1_FIXED.size:
        raise CorruptPayloadError(f"GLVC payload of {len(data)} bytes is too short for a header")
    _, _, id_len = _V1_FIXED.unpack_from(data, 0)
    start = _V1_FIXED.size + id_len
    if len(data) < start + _V1_GEOMETRY.size:
        raise CorruptPayloadError(f"GLVC payload truncated in its header ({len(data)} bytes)")
    model_id = _text(data[_V1_FIXED.size : start])
    fields = _V1_GEOMETRY.unpack_from(data, start)
    digest, width, height, pw, ph, frames, coded, q_index, body_len, body_crc = fields
    body_start = start + _V1_GEOMETRY.size
    if len(data) - body_start != body_len:
        raise CorruptPayloadError(
            f"GLVC payload truncated or padded: body is {len(data) - body_start} bytes, header says {body_len}"
        )
    body = bytes(data[body_start:])
    if crc32c.crc32c(body) != body_crc:
        raise CorruptPayloadError("GLVC payload is damaged (CRC32C of the coded stream does not match)")
    header = GlvcHeader(model_id, digest.hex(), width, height, pw, ph, frames, coded, q_index, 1, 1)
    _check_geometry(header)
    return header, body


def _text(raw: memoryview) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        raise CorruptPayloadError("GLVC payload header is damaged (model id is not text)") from None


def _check_geometry(header: GlvcHeader) -> None:
    if not (
        0 < header.width <= header.padded_width
        and 0 < header.height <= header.padded_height
        and 0 < header.frames <= header.coded_frames
    ):
        raise CorruptPayloadError("GLVC payload header is damaged (inconsistent geometry)")
