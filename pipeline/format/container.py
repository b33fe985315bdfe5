"""The `.vdrc` archive object: one per source video, every GOP plus an index footer.

Layout (all integers little-endian):

    preamble   b"VDRC" | u16 format_version | u16 reserved                      (8 bytes)
    payloads   GOP payloads and attachments (e.g. the source's audio), back to back
    footer     u32 header_len | header JSON (utf-8) | u32 gop_count | gop_count × GOP record
    trailer    u64 footer_offset | u32 footer_len | u32 crc32c(footer) | u16 format_version
               | u16 reserved | b"VDRCEND1"                                       (28 bytes)

    GOP record u64 first_frame | u32 frame_count | u64 offset | u64 length | u32 crc32c(payload)

The header (codec id and version, model id and sha256, geometry, frame rate as a rational, frame count,
colour info, source checksum, attachments) lives in the footer, written last, so a reader gets header and
index with one ranged GET from the end (`TAIL_GUESS` bytes; a second read only for huge indexes), and
one GOP restores with a second ranged read. Every length and offset is bounds-checked against the object
size before anything is allocated: a corrupt or hostile file gives `ContainerError`, never a crash, hang
or huge allocation.

The header is untrusted input too: `read_index` parses it once into a `ContainerHeader`
(`pipeline.format.container_header`: nesting bounded, every field a reader uses checked) before anything reads
it. The preamble (magic, version) is checked whenever the bytes are at hand: always when the object is
smaller than the tail read, else by `read_preamble`.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any, BinaryIO

import crc32c as _crc32c

from pipeline.format.container_header import MAX_RATE_TERM, ContainerHeader, HeaderError
from pipeline.format.container_header import json_depth as json_depth  # re-exported: the fuzz tests use it

MAGIC = b"VDRC"
END_MAGIC = b"VDRCEND1"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<4sHH")
TRAILER = struct.Struct("<QIIHH8s")
GOP_RECORD = struct.Struct("<QIQQI")
U32 = struct.Struct("<I")
TAIL_GUESS = 256 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_GOPS = 10_000_000

#: Attachments this format defines: the source's audio, stream-copied into Matroska, and, for a
#: variable-frame-rate source, every frame's timestamp (little-endian int64 in the header's
#: `time_base` units; the attachment's info also holds `time_base`).
AUDIO_ATTACHMENT = "audio.mka"
TIMESTAMPS_ATTACHMENT = "frame_pts.i64"

RangeReader = Callable[[int, int], bytes]
"""read(offset, length) -> exactly `length` bytes of the object (fewer means truncated)."""


def bytes_reader(data: bytes) -> RangeReader:
    """A RangeReader over bytes in memory (an object just written, a downloaded one)."""
    view = memoryview(data)
    return lambda offset, length: bytes(view[offset : offset + length])


class ContainerError(Exception):
    """A .vdrc object is truncated, corrupt, of an unknown version, or not a .vdrc at all."""


def crc32c(data: bytes) -> int:
    return _crc32c.crc32c(data)


@dataclasses.dataclass(frozen=True)
class GopEntry:
    index: int
    first_frame: int
    frame_count: int
    offset: int
    length: int
    crc32c: int


@dataclasses.dataclass(frozen=True)
class Attachment:
    """A non-GOP blob stored in the object (e.g. the source audio, stream-copied into Matroska)."""

    name: str
    offset: int
    length: int
    crc32c: int
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ContainerIndex:
    header: ContainerHeader
    gops: list[GopEntry]
    attachments: list[Attachment]
    size: int

    @property
    def frame_count(self) -> int:
        return self.header.frame_count

    def gop_for_frame(self, frame: int) -> GopEntry:
        for entry in self.gops:
            if entry.first_frame <= frame < entry.first_frame + entry.frame_count:
                return entry
        raise IndexError(f"frame {frame} is outside 0..{self.frame_count - 1}")

    def attachment(self, name: str) -> Attachment | None:
        return next((a for a in self.attachments if a.name == name), None)


def write_container(
    stream: BinaryIO,
    header: ContainerHeader,
    gops: Iterable[tuple[int, int, bytes]],
    attachments: Iterable[tuple[str, bytes, dict[str, Any]]] = (),
) -> int:
    """Write a whole object to `stream`: `gops` yields (first_frame, frame_count, payload) in order.

    Returns the object's size. GOPs must tile the video: consecutive, starting at frame 0, summing to
    `header.frame_count`, so the reader's bounds checks can rely on it. The header's `attachments` are
    those written here.
    """
    position = _write(stream, PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0), 0)
    records: list[bytes] = []
    expected_first = 0
    for first_frame, frame_count, payload in gops:
        if first_frame != expected_first or frame_count < 1:
            raise ValueError(
                f"GOPs must tile the video: got first_frame={first_frame}, want {expected_first}"
            )
        records.append(GOP_RECORD.pack(first_frame, frame_count, position, len(payload), crc32c(payload)))
        position = _write(stream, payload, position)
        expected_first += frame_count
    if expected_first != int(header.frame_count):
        raise ValueError(f"GOPs cover {expected_first} frames, header says {header.frame_count}")
    attachment_info = []
    for name, blob, info in attachments:
        attachment_info.append(
            {"name": name, "offset": position, "length": len(blob), "crc32c": crc32c(blob), "info": info}
        )
        position = _write(stream, blob, position)
    header_bytes = dataclasses.replace(header, attachments=attachment_info).to_json()
    footer = b"".join([U32.pack(len(header_bytes)), header_bytes, U32.pack(len(records)), *records])
    footer_offset = position
    position = _write(stream, footer, position)
    trailer = TRAILER.pack(footer_offset, len(footer), crc32c(footer), FORMAT_VERSION, 0, END_MAGIC)
    return _write(stream, trailer, position)


def read_index(read: RangeReader, size: int, *, name: str) -> ContainerIndex:
    """Header, GOP index and attachments from the end of an object of `size` bytes (and the preamble,
    when the object fits in the one tail read; larger objects: `read_preamble`).

    `name` is the object's URI, used in every error message.
    """
    minimum = PREAMBLE.size + TRAILER.size + 2 * U32.size
    if size < minimum:
        raise ContainerError(f"{name}: {size} bytes is too small to be a .vdrc archive (truncated?)")
    tail_length = min(size, TAIL_GUESS)
    tail = _checked_read(read, size - tail_length, tail_length, name)
    footer_offset, footer_len, footer_crc, version, _, end_magic = TRAILER.unpack(tail[-TRAILER.size :])
    if end_magic != END_MAGIC:
        raise ContainerError(f"{name}: no .vdrc trailer (truncated, or not a vidarc archive)")
    if version != FORMAT_VERSION:
        raise ContainerError(f"{name}: archive format version {version}; this vidarc reads {FORMAT_VERSION}")
    if tail_length == size:  # the whole object is at hand: its preamble costs nothing to check
        _check_preamble(tail[: PREAMBLE.size], name)
    if footer_offset < PREAMBLE.size or footer_offset + footer_len + TRAILER.size != size:
        raise ContainerError(f"{name}: footer position is inconsistent with the object size (truncated?)")
    tail_start = size - tail_length
    if footer_offset >= tail_start:
        footer = tail[footer_offset - tail_start : footer_offset - tail_start + footer_len]
    else:
        footer = _checked_read(read, footer_offset, footer_len, name)
    if crc32c(footer) != footer_crc:
        raise ContainerError(f"{name}: footer checksum mismatch (the index is corrupt)")
    header, gops, attachments = _parse_footer(footer, footer_offset, name)
    return ContainerIndex(header=header, gops=gops, attachments=attachments, size=size)


def read_preamble(read: RangeReader, *, name: str) -> None:
    """Check the first bytes: a cheap sniff that an object is a .vdrc of a version we read."""
    _check_preamble(_checked_read(read, 0, PREAMBLE.size, name), name)


def _check_preamble(preamble: bytes, name: str) -> None:
    magic, version, _ = PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise ContainerError(f"{name}: not a vidarc archive (bad magic)")
    if version != FORMAT_VERSION:
        raise ContainerError(f"{name}: archive format version {version}; this vidarc reads {FORMAT_VERSION}")


def read_gop(read: RangeReader, entry: GopEntry, *, name: str) -> bytes:
    """One GOP's payload, CRC-checked."""
    payload = _checked_read(read, entry.offset, entry.length, name)
    if crc32c(payload) != entry.crc32c:
        raise ContainerError(
            f"{name}: GOP {entry.index} (frames {entry.first_frame}+{entry.frame_count}) "
            "fails its CRC32C check (corrupt bytes)"
        )
    return payload


def read_attachment(read: RangeReader, attachment: Attachment, *, name: str) -> bytes:
    blob = _checked_read(read, attachment.offset, attachment.length, name)
    if crc32c(blob) != attachment.crc32c:
        raise ContainerError(f"{name}: attachment {attachment.name!r} fails its CRC32C check (corrupt bytes)")
    return blob


def _parse_footer(
    footer: bytes, footer_offset: int, name: str
) -> tuple[ContainerHeader, list[GopEntry], list[Attachment]]:
    if len(footer) < 2 * U32.size:
        raise ContainerError(f"{name}: footer too short")
    (header_len,) = U32.unpack_from(footer, 0)
    if header_len > MAX_HEADER_BYTES or U32.size + header_len + U32.size > len(footer):
        raise ContainerError(f"{name}: header length {header_len} does not fit the footer")
    header = parse_header(bytes(footer[U32.size : U32.size + header_len]), name)
    frame_count = header.frame_count
    cursor = U32.size + header_len
    (gop_count,) = U32.unpack_from(footer, cursor)
    cursor += U32.size
    if gop_count > MAX_GOPS or cursor + gop_count * GOP_RECORD.size != len(footer):
        raise ContainerError(f"{name}: GOP count {gop_count} does not match the footer size")
    if gop_count == 0:  # every archive holds at least one frame; an empty index is a forged one
        raise ContainerError(f"{name}: the index holds no GOPs (index is corrupt)")
    gops: list[GopEntry] = []
    next_first = 0
    for i in range(gop_count):
        first, count, offset, length, crc = GOP_RECORD.unpack_from(footer, cursor + i * GOP_RECORD.size)
        if first != next_first or count < 1:
            raise ContainerError(f"{name}: GOP {i} does not follow GOP {i - 1} (index is corrupt)")
        if length == 0:  # every codec's payload states at least its geometry: frames from no bytes
            raise ContainerError(
                f"{name}: GOP {i} claims {count} frames in an empty payload (index is corrupt)"
            )
        _check_span(offset, length, footer_offset, f"GOP {i}", name)
        gops.append(GopEntry(i, first, count, offset, length, crc))
        next_first = first + count
    if next_first != frame_count:
        raise ContainerError(f"{name}: GOPs cover {next_first} frames but the header says {frame_count}")
    attachments = []
    for item in header.attachments or []:
        att = _attachment(item, name)
        _check_span(att.offset, att.length, footer_offset, f"attachment {att.name!r}", name)
        attachments.append(att)
    return header, gops, attachments


def parse_time_base(value: Any, name: str) -> Fraction:
    """A time base as the writer stores it ("1/90000", or "1"), checked before any number is built:
    `Fraction("1e-100000000")` would compute a hundred-million-digit integer (a hang), so the text
    must be at most two decimal terms of 1..2^31-1 (what an AVRational holds)."""
    text = str(value) if type(value) is int else value
    match = _TIME_BASE.fullmatch(text) if isinstance(text, str) and len(text) <= 21 else None
    numerator, denominator = (int(match[1]), int(match[2] or 1)) if match else (0, 0)
    if not (1 <= numerator <= MAX_RATE_TERM and 1 <= denominator <= MAX_RATE_TERM):
        raise ContainerError(
            f"{name}: the frame timestamps' time base is malformed (want N/D, terms 1..{MAX_RATE_TERM})"
        )
    return Fraction(numerator, denominator)


_TIME_BASE = re.compile(r"([0-9]{1,10})(?:/([0-9]{1,10}))?")


def parse_header(raw: bytes, name: str) -> ContainerHeader:
    """The header JSON checked once (`ContainerHeader.parse`); a refusal names the object."""
    try:
        return ContainerHeader.parse(raw)
    except HeaderError as exc:
        raise ContainerError(f"{name}: {exc}") from None


def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _attachment(item: Any, name: str) -> Attachment:
    checks = {
        "name": lambda v: isinstance(v, str) and 0 < len(v) <= 255,
        "offset": _int(0, 1 << 62),
        "length": _int(0, 1 << 62),
        "crc32c": _int(0, 0xFFFFFFFF),
    }
    if not isinstance(item, dict) or not all(k in item and ok(item[k]) for k, ok in checks.items()):
        raise ContainerError(f"{name}: malformed attachment entry in the header")
    info = item.get("info", {})
    if not isinstance(info, dict):
        raise ContainerError(f"{name}: attachment {item['name']!r} has malformed info")
    return Attachment(item["name"], item["offset"], item["length"], item["crc32c"], info)


def _check_span(offset: int, length: int, limit: int, what: str, name: str) -> None:
    if offset < PREAMBLE.size or length < 0 or offset + length > limit:
        raise ContainerError(f"{name}: {what} points outside the payload area (index is corrupt)")


def _checked_read(read: RangeReader, offset: int, length: int, name: str) -> bytes:
    data = read(offset, length)
    if len(data) != length:
        raise ContainerError(
            f"{name}: wanted {length} bytes at offset {offset}, got {len(data)} (truncated?)"
        )
    return data


def _write(stream: BinaryIO, data: bytes, position: int) -> int:
    stream.write(data)
    return position + len(data)
