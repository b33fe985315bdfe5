"""GLVC payload formats: format 2 covers its header by the CRC and names its entropy profile; format 1
(golden archives) still decodes; a newer format or an unknown profile is refused in one line."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import crc32c
import pytest

from codec.errors import CorruptPayloadError, UnsupportedFormatError
from codec.glvc.bitstream import FORMAT_VERSION, GlvcHeader, pack_payload, unpack_payload
from pipeline.read.reader import ArchiveReader

GOLDEN = Path(__file__).resolve().parent / "golden"
HEADER = GlvcHeader("vidarc-golden@1", "ab" * 32, 60, 30, 64, 32, 5, 5, 17, 1)
BODY = bytes(range(16))


def test_format2_round_trip_names_version_and_profile() -> None:
    payload = pack_payload(HEADER, BODY)
    assert payload[4] == FORMAT_VERSION == 2 and payload[5] == 1
    header, body = unpack_payload(payload)
    assert body == BODY and header == dataclasses.replace(HEADER, version=2)


def test_every_single_bit_flip_of_a_format2_payload_is_refused() -> None:
    """Issue 11 found 12.7% of byte flips in format-1 headers accepted (the CRC covered only the body)."""
    payload = pack_payload(HEADER, BODY)
    for bit in range(8 * len(payload)):
        damaged = bytearray(payload)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptPayloadError):
            unpack_payload(bytes(damaged))


def _format1(header: GlvcHeader, body: bytes) -> bytes:
    """A format-1 payload, laid out as bitstream.py documents it (CRC over the body only)."""
    model_id = header.model_id.encode()
    geometry = struct.pack(
        "<32sHHHHHHBII",
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
    return struct.pack("<4sBB", b"GLVC", 1, len(model_id)) + model_id + geometry + body


def test_format1_still_parses_with_the_implied_profile() -> None:
    header, body = unpack_payload(_format1(HEADER, BODY))
    assert body == BODY and (header.version, header.profile) == (1, 1)
    assert dataclasses.replace(header, version=2) == HEADER


def test_a_newer_format_is_told_from_a_damaged_payload() -> None:
    payload = bytearray(pack_payload(HEADER, BODY)[:-4])
    payload[4] = 3
    newer = bytes(payload) + struct.pack("<I", crc32c.crc32c(bytes(payload)))
    with pytest.raises(UnsupportedFormatError, match=r"format 3 is newer than this decoder.*upgrade"):
        unpack_payload(newer)
    damaged = newer[:-1] + bytes([newer[-1] ^ 1])
    with pytest.raises(CorruptPayloadError, match="damaged") as caught:
        unpack_payload(damaged)
    assert not isinstance(caught.value, UnsupportedFormatError)


@pytest.fixture(scope="module")
def golden_glvc():
    reader = ArchiveReader(str(GOLDEN / "v1" / "glvc.vdrc"))
    decoder = reader.decoder_for(model=str(GOLDEN / "model"))
    return reader, decoder


def test_a_format1_golden_payload_repacked_as_format2_decodes_to_the_same_symbols(golden_glvc) -> None:
    reader, decoder = golden_glvc
    entry = reader.entry(0)
    v1 = reader.gop(0)
    header, body = unpack_payload(v1)
    assert header.version == 1
    v2 = pack_payload(header, body)
    args = (entry.frame_count, reader.header.width, reader.header.height)
    assert decoder.exact_digest(v2, *args) == decoder.exact_digest(v1, *args)


def test_an_unknown_entropy_profile_is_refused_in_one_line(golden_glvc) -> None:
    reader, decoder = golden_glvc
    header, body = unpack_payload(reader.gop(0))
    payload = pack_payload(dataclasses.replace(header, profile=7), body)
    with pytest.raises(UnsupportedFormatError, match="entropy profile 7 is unknown") as caught:
        decoder.decode(payload, reader.entry(0).frame_count, reader.header.width, reader.header.height)
    assert "\n" not in str(caught.value)
