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

The header JSON is untrusted input too: it is parsed with its nesting depth bounded (a scan before
`json.loads`, so 100 000 nested brackets are refused instead of exhausting the stack), without
`NaN`/`Infinity`, and checked against `HEADER_FIELDS` (types and ranges of every field a reader uses)
before anything reads it. Unknown fields are kept (a later writer may add some); fields a reader uses
must have the type every release wrote. The preamble (magic, version) is checked whenever the bytes
are at hand: always when the object is smaller than the tail read, else by `read_preamble`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any, BinaryIO

import crc32c as _crc32c

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
MAX_HEADER_DEPTH = 32
MAX_ATTACHMENTS = 64
#: Frame geometry a reader accepts: 65535 per side (what every payload format can state) and at most
#: 2^28 pixels per frame (16384×16384), so a hostile header cannot ask a decoder for terabytes.
MAX_DIMENSION = 65_535
MAX_FRAME_PIXELS = 1 << 28
MAX_FRAME_COUNT = 1 << 40
MAX_RATE_TERM = (1 << 31) - 1

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
    header: dict[str, Any]
    gops: list[GopEntry]
    attachments: list[Attachment]
    size: int

    @property
    def frame_count(self) -> int:
        return int(self.header["frame_count"])

    def gop_for_frame(self, frame: int) -> GopEntry:
        for entry in self.gops:
            if entry.first_frame <= frame < entry.first_frame + entry.frame_count:
                return entry
        raise IndexError(f"frame {frame} is outside 0..{self.frame_count - 1}")

    def attachment(self, name: str) -> Attachment | None:
        return next((a for a in self.attachments if a.name == name), None)


def write_container(
    stream: BinaryIO,
    header: dict[str, Any],
    gops: Iterable[tuple[int, int, bytes]],
    attachments: Iterable[tuple[str, bytes, dict[str, Any]]] = (),
) -> int:
    """Write a whole object to `stream`: `gops` yields (first_frame, frame_count, payload) in order.

    Returns the object's size. GOPs must tile the video: consecutive, starting at frame 0, summing to
    header["frame_count"], so the reader's bounds checks can rely on it.
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
    if expected_first != int(header["frame_count"]):
        raise ValueError(f"GOPs cover {expected_first} frames, header says {header['frame_count']}")
    attachment_info = []
    for name, blob, info in attachments:
        attachment_info.append(
            {"name": name, "offset": position, "length": len(blob), "crc32c": crc32c(blob), "info": info}
        )
        position = _write(stream, blob, position)
    full_header = dict(header, attachments=attachment_info)
    # allow_nan=False: a NaN (say, in a quality search's record) would make an archive its own reader
    # refuses; a writer must drop it first (`pipeline.runinfo.finite`)
    header_bytes = json.dumps(full_header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
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
) -> tuple[dict, list[GopEntry], list[Attachment]]:
    if len(footer) < 2 * U32.size:
        raise ContainerError(f"{name}: footer too short")
    (header_len,) = U32.unpack_from(footer, 0)
    if header_len > MAX_HEADER_BYTES or U32.size + header_len + U32.size > len(footer):
        raise ContainerError(f"{name}: header length {header_len} does not fit the footer")
    header = parse_header(bytes(footer[U32.size : U32.size + header_len]), name)
    frame_count = header["frame_count"]
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
    for item in header.get("attachments") or []:
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


# ---- the header: parsed with bounded depth, then checked field by field ---------------------------
def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_rotation(v: Any) -> bool:
    return type(v) in (int, float) and -360 <= v <= 360


_TEXT_FIELDS = (
    "codec", "codec_version", "model_id", "model_sha256", "time_base", "pix_fmt", "source_format",
    "source_codec", "source_sha256", "source_uri", "video_key", "run_id", "created_at", "source_chroma",
    "coded_chroma", "source_note",
)  # fmt: skip

#: field -> (required, check). Types are those every release wrote; a reader may rely on them.
HEADER_FIELDS: dict[str, tuple[bool, Callable[[Any], bool]]] = {
    "frame_count": (True, _int(0, MAX_FRAME_COUNT)),
    "width": (True, _int(1, MAX_DIMENSION)),
    "height": (True, _int(1, MAX_DIMENSION)),
    "fps_num": (False, _optional(_int(1, MAX_RATE_TERM))),
    "fps_den": (False, _optional(_int(1, MAX_RATE_TERM))),
    "rotation": (False, _optional(_is_rotation)),
    "vfr": (False, _optional(lambda v: isinstance(v, bool))),
    "gop_frames": (False, _optional(_int(1, MAX_FRAME_COUNT))),
    "source_bytes": (False, _optional(_int(0, 1 << 62))),
    "attachments": (False, _optional(lambda v: isinstance(v, list) and len(v) <= MAX_ATTACHMENTS)),
    "decoder_options": (False, _optional(_is_dict)),
    "color": (False, _optional(_is_dict)),
    "target": (False, _optional(_is_dict)),
    "coded_bit_depth": (False, _optional(_int(1, 16))),
    "source_bit_depth": (False, _optional(_int(1, 32))),
    "source_frames_declared": (False, _optional(_int(0, MAX_FRAME_COUNT))),
    **{field: (False, _optional(_is_str)) for field in _TEXT_FIELDS},
}


def parse_header(raw: bytes, name: str) -> dict[str, Any]:
    """The header JSON as a dict whose fields have the types and ranges of `HEADER_FIELDS`."""
    depth = json_depth(raw)
    if depth > MAX_HEADER_DEPTH:
        raise ContainerError(f"{name}: unreadable header (nested {depth} deep; at most {MAX_HEADER_DEPTH})")
    try:
        header = json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ContainerError(f"{name}: unreadable header ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise ContainerError(f"{name}: unreadable header (not a JSON object)")
    for field, (required, check) in HEADER_FIELDS.items():
        if field not in header:
            if required:
                raise ContainerError(f"{name}: header has no {field!r}")
            continue
        if not check(header[field]):
            raise ContainerError(f"{name}: header field {field!r} is out of range or of the wrong type")
    if header["width"] * header["height"] > MAX_FRAME_PIXELS:
        raise ContainerError(
            f"{name}: header geometry {header['width']}x{header['height']} exceeds {MAX_FRAME_PIXELS} pixels"
        )
    return header


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in JSON text, brackets inside strings ignored; linear time,
    no recursion (a quote is escaped when an odd run of backslashes precedes it)."""
    import numpy as np

    text = np.frombuffer(raw, dtype=np.uint8)
    if not len(text):
        return 0
    positions = np.arange(len(text))
    last_plain = np.maximum.accumulate(np.where(text != ord("\\"), positions, -1))
    before = np.concatenate(([-1], last_plain[:-1]))  # last non-backslash before each position
    escaped = ((positions - 1 - before) % 2).astype(bool)
    quotes = (text == ord('"')) & ~escaped
    outside = np.cumsum(quotes) % 2 == 0
    steps = (text == ord("[")).astype(np.int64) + (text == ord("{")) - (text == ord("]")) - (text == ord("}"))
    return max(0, int(np.cumsum(np.where(outside, steps, 0)).max()))


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
