"""The .vdrc container: round trip, and corrupt or hostile bytes give ContainerError, never a crash."""

from __future__ import annotations

import io
import random
import struct

import pytest

from pipeline.format.container import (
    GOP_RECORD,
    TRAILER,
    U32,
    ContainerError,
    crc32c,
    read_attachment,
    read_gop,
    read_index,
    read_preamble,
    write_container,
)
from pipeline.format.container_header import ContainerHeader

HEADER = ContainerHeader(codec="x264", codec_version="1", width=64, height=48, frame_count=37)
GOPS = [(0, 16, b"first-gop-" * 7), (16, 16, b"second" * 11), (32, 5, b"tail")]
AUDIO = ("audio.mka", b"\x1a\x45\xdf\xa3-audio-bytes", {"codec": "aac"})


def _build(gops=GOPS, header=HEADER, attachments=(AUDIO,)) -> bytes:
    buffer = io.BytesIO()
    size = write_container(buffer, header, gops, attachments)
    data = buffer.getvalue()
    assert size == len(data)
    return data


def _reader(data: bytes):
    return lambda offset, length: data[offset : offset + length]


def _read_everything(data: bytes) -> tuple[ContainerHeader, list[bytes]]:
    index = read_index(_reader(data), len(data), name="mem://x.vdrc")
    read_preamble(_reader(data), name="mem://x.vdrc")
    blobs = [read_gop(_reader(data), entry, name="mem://x.vdrc") for entry in index.gops]
    blobs += [read_attachment(_reader(data), a, name="mem://x.vdrc") for a in index.attachments]
    return index.header, blobs


def test_round_trip_keeps_header_gops_and_attachments() -> None:
    data = _build()
    index = read_index(_reader(data), len(data), name="x.vdrc")
    assert index.header.codec == "x264" and index.frame_count == 37
    assert [(g.first_frame, g.frame_count) for g in index.gops] == [(0, 16), (16, 16), (32, 5)]
    assert [read_gop(_reader(data), g, name="x.vdrc") for g in index.gops] == [p for _, _, p in GOPS]
    assert index.gop_for_frame(33).index == 2
    audio = index.attachment("audio.mka")
    assert audio is not None and audio.info == {"codec": "aac"}
    assert read_attachment(_reader(data), audio, name="x.vdrc") == AUDIO[1]


def test_writer_refuses_gops_that_do_not_tile_the_video() -> None:
    with pytest.raises(ValueError):
        _build(gops=[(0, 16, b"a"), (17, 20, b"b")])
    with pytest.raises(ValueError):
        _build(gops=[(0, 16, b"a")])


def test_every_truncation_is_a_clear_error() -> None:
    data = _build()
    for cut in range(len(data)):
        truncated = data[:cut]
        with pytest.raises(ContainerError) as info:
            read_index(_reader(truncated), len(truncated), name="s3://b/v.vdrc")
        assert "s3://b/v.vdrc" in str(info.value)


def test_a_short_read_is_reported_as_truncation() -> None:
    data = _build()
    index = read_index(_reader(data), len(data), name="v.vdrc")
    short = lambda offset, length: data[offset : offset + length - 1]  # noqa: E731
    with pytest.raises(ContainerError, match="truncated"):
        read_gop(short, index.gops[0], name="v.vdrc")


def test_random_byte_flips_never_crash() -> None:
    data = _build()
    original = _read_everything(data)
    rng = random.Random(7)
    caught = 0
    for _ in range(400):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
        try:
            result = _read_everything(bytes(corrupt))
        except ContainerError:
            caught += 1
            continue
        # only the reserved preamble/trailer fields are unchecked: the content must be untouched
        assert result == original
    assert caught > 350


def test_flip_in_a_gop_payload_fails_only_that_gops_crc() -> None:
    data = bytearray(_build())
    index = read_index(_reader(bytes(data)), len(data), name="v.vdrc")
    data[index.gops[1].offset + 3] ^= 0x40
    index = read_index(_reader(bytes(data)), len(data), name="v.vdrc")  # the index is still intact
    read_gop(_reader(bytes(data)), index.gops[0], name="v.vdrc")
    with pytest.raises(ContainerError, match=r"GOP 1 .*CRC32C"):
        read_gop(_reader(bytes(data)), index.gops[1], name="v.vdrc")


def _with_footer(footer: bytes, payload_area: bytes = b"VDRC\x01\x00\x00\x00") -> bytes:
    trailer = TRAILER.pack(len(payload_area), len(footer), crc32c(footer), 1, 0, b"VDRCEND1")
    return payload_area + footer + trailer


def test_hostile_footer_with_huge_counts_is_refused_without_allocating() -> None:
    header = b'{"frame_count": 1, "width": 2, "height": 2}'
    huge_gops = U32.pack(len(header)) + header + U32.pack(0xFFFFFFFF)
    with pytest.raises(ContainerError, match="GOP count"):
        read_index(_reader(_with_footer(huge_gops)), len(_with_footer(huge_gops)), name="evil.vdrc")
    huge_header = U32.pack(0xFFFFFFF0) + b"{}" + U32.pack(0)
    with pytest.raises(ContainerError, match="header length"):
        read_index(_reader(_with_footer(huge_header)), len(_with_footer(huge_header)), name="evil.vdrc")


def test_hostile_offsets_and_lengths_are_refused() -> None:
    header = b'{"frame_count": 1, "width": 2, "height": 2}'
    record = GOP_RECORD.pack(0, 1, 8, 2**62, 0)
    footer = U32.pack(len(header)) + header + U32.pack(1) + record
    data = _with_footer(footer)
    with pytest.raises(ContainerError, match="outside the payload area"):
        read_index(_reader(data), len(data), name="evil.vdrc")
    evil_trailer = (
        b"VDRC\x01\x00\x00\x00" + b"\x00" * 32 + struct.pack("<QIIHH8s", 2**63, 2**31, 0, 1, 0, b"VDRCEND1")
    )
    with pytest.raises(ContainerError, match="inconsistent"):
        read_index(_reader(evil_trailer), len(evil_trailer), name="evil.vdrc")


def test_not_a_container_and_other_versions_are_named() -> None:
    junk = b"\x00" * 200
    with pytest.raises(ContainerError, match=r"junk\.bin: no \.vdrc trailer"):
        read_index(_reader(junk), len(junk), name="junk.bin")
    data = bytearray(_build())
    data[-12:-10] = struct.pack("<H", 9)  # the trailer's format version
    with pytest.raises(ContainerError, match="version 9"):
        read_index(_reader(bytes(data)), len(data), name="future.vdrc")
