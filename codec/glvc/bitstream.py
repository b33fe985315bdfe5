"""GLVC's GOP payload: a small header, then the entropy-coded stream.

Layout (little endian)::

    magic        4s   b"GLVC"
    version      u8   FORMAT_VERSION
    id_len       u8   length of model_id
    model_id     bytes (utf-8), e.g. b"vidarc-tiny@1"
    model_sha256 32s  raw digest of the components the codec uses (tokenizer + latent_codec)
    width, height, padded_width, padded_height   4 × u16  (source size; size actually coded)
    frames       u16  frames of this GOP; coded_frames u16 (1+4k after temporal padding)
    q_index      u8
    body_len     u32; body_crc u32 (CRC32C of the body)
    body         body_len bytes (range-coder words)

Why a CRC inside the payload when the container has one per GOP: a payload can be handed to `decode`
alone (tests, tools, another container), and a range decoder fed damaged bytes returns garbage
silently; the CRC turns that into a clear CorruptPayloadError. Why the full sha256: 32 bytes per GOP is
negligible and makes a model mismatch unambiguous.

Parsing is bounds-checked: a short, long or damaged payload raises CorruptPayloadError, never an
IndexError or a huge allocation.
"""

from __future__ import annotations

import dataclasses
import struct

import crc32c

from codec.errors import CorruptPayloadError

MAGIC = b"GLVC"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<4sBB")
_GEOMETRY = struct.Struct("<32sHHHHHHBII")


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


def pack_payload(header: GlvcHeader, body: bytes) -> bytes:
    model_id = header.model_id.encode()
    if len(model_id) > 255:
        raise ValueError("model id longer than 255 bytes")
    geometry = _GEOMETRY.pack(
        bytes.fromhex(header.model_sha256),
        header.width,
        header.height,
        header.padded_width,
        header.padded_height,
        header.frames,
        header.coded_frames,
        header.q_index,
        len(body),
        crc32c.crc32c(body),
    )
    return _FIXED.pack(MAGIC, FORMAT_VERSION, len(model_id)) + model_id + geometry + body


def unpack_payload(payload: bytes) -> tuple[GlvcHeader, bytes]:
    """Header and body of a payload; CorruptPayloadError for anything malformed."""
    data = memoryview(payload)
    if len(data) < _FIXED.size:
        raise CorruptPayloadError(f"GLVC payload of {len(data)} bytes is too short for a header")
    magic, version, id_len = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptPayloadError("not a GLVC payload (bad magic)")
    if version != FORMAT_VERSION:
        raise CorruptPayloadError(
            f"GLVC payload format {version} is not supported (this decoder reads {FORMAT_VERSION})"
        )
    start = _FIXED.size + id_len
    if len(data) < start + _GEOMETRY.size:
        raise CorruptPayloadError(f"GLVC payload truncated in its header ({len(data)} bytes)")
    try:
        model_id = bytes(data[_FIXED.size : start]).decode()
    except UnicodeDecodeError:
        raise CorruptPayloadError("GLVC payload header is damaged (model id is not text)") from None
    (digest, width, height, pw, ph, frames, coded, q_index, body_len, body_crc) = _GEOMETRY.unpack_from(
        data, start
    )
    body_start = start + _GEOMETRY.size
    if len(data) - body_start != body_len:
        raise CorruptPayloadError(
            f"GLVC payload truncated or padded: body is {len(data) - body_start} bytes, header says {body_len}"
        )
    body = bytes(data[body_start:])
    if crc32c.crc32c(body) != body_crc:
        raise CorruptPayloadError("GLVC payload is damaged (CRC32C of the coded stream does not match)")
    if not (0 < width <= pw and 0 < height <= ph and 0 < frames <= coded):
        raise CorruptPayloadError("GLVC payload header is damaged (inconsistent geometry)")
    header = GlvcHeader(model_id, digest.hex(), width, height, pw, ph, frames, coded, q_index)
    return header, body
