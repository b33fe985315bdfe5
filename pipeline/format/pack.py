"""Pack objects: many short videos in one archive object (`vidarc archive --pack N_MB`).

Archive storage classes charge a minimum object size (e.g. 128 KB) or a fee per object, and a tiny
clip's `.vdrc` is a few kilobytes; a pack holds many of them. Each member is a complete `.vdrc`
container (`pipeline.format.container`, format version 1, its offsets relative to its own first byte), so a
member restores alone with ranged reads exactly like a single-video object: one read for its footer
(its own index), one per GOP. Layout (little-endian):

    preamble   b"VDRC" | u16 format_version = 2 | u16 kind = 1 (pack)                      (8 bytes)
    members    complete .vdrc containers, back to back
    pack index u32 index_len | index JSON {"members": [[video_key, offset, length], ...]}
    trailer    u64 index_offset | u32 index_len | u32 crc32c(index) | u16 2 | u16 0 | b"VDRCPAK1"

The trailer has the size and layout of a container's, with its own end magic, so a release that
predates packs refuses a pack in one line ("no .vdrc trailer") instead of misreading it, and a reader
tells the two kinds apart from the last 8 bytes. The manifest rows of a packed video name the pack as
`archive_uri`, give absolute `offset`s (what a ranged GET needs) and the member's range
(`member_offset`, `member_length`); `markers/packs/<pack_id>.json` (written last) lists the members.
Every number is bounds-checked before use, like the container's.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, BinaryIO

from pipeline.format.container import (
    MAGIC,
    PREAMBLE,
    TRAILER,
    ContainerError,
    ContainerIndex,
    RangeReader,
    crc32c,
    read_index,
    write_container,
)
from pipeline.format.container_header import ContainerHeader

PACK_FORMAT_VERSION = 2
PACK_KIND = 1
PACK_END_MAGIC = b"VDRCPAK1"
MAX_PACK_INDEX_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 1_000_000
U32 = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class PackMember:
    video_key: str
    offset: int  # of the member's first byte in the pack
    length: int


@dataclasses.dataclass(frozen=True)
class PackIndex:
    members: list[PackMember]
    size: int

    def member(self, video_key: str) -> PackMember | None:
        return next((m for m in self.members if m.video_key == video_key), None)


def is_pack(read: RangeReader, size: int) -> bool:
    """Whether the object ends with a pack trailer (one 8-byte ranged read)."""
    return size >= PREAMBLE.size + TRAILER.size and read(size - 8, 8) == PACK_END_MAGIC


def member_reader(read: RangeReader, offset: int) -> RangeReader:
    """A RangeReader over one member: its offsets start at the member's first byte."""

    def read_member(position: int, length: int) -> bytes:
        return read(offset + position, length)

    return read_member


def read_member_index(read: RangeReader, member: PackMember, *, name: str) -> ContainerIndex:
    """A member's own container index (one ranged read from the end of its range)."""
    return read_index(member_reader(read, member.offset), member.length, name=f"{name}#{member.video_key}")


class PackWriter:
    """Writes a pack to a stream: `add(...)` per video, then `close()`; positions are tracked here, so
    the stream need not be seekable (an S3 upload)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.members: list[PackMember] = []
        self.position = self._write(PREAMBLE.pack(MAGIC, PACK_FORMAT_VERSION, PACK_KIND))

    def add(
        self,
        video_key: str,
        header: ContainerHeader,
        gops: list[tuple[int, int, bytes]],
        attachments: list[tuple[str, bytes, dict[str, Any]]] = (),  # type: ignore[assignment]
    ) -> PackMember:
        """Append one video as a complete container; returns where it lies."""
        offset = self.position
        length = write_container(self.stream, header, gops, attachments)
        self.position += length
        member = PackMember(video_key, offset, length)
        self.members.append(member)
        return member

    def close(self) -> int:
        """Write the pack index and trailer; returns the pack's size."""
        index = json.dumps(
            {"members": [[m.video_key, m.offset, m.length] for m in self.members]}, separators=(",", ":")
        ).encode()
        index_offset = self.position
        self._write(U32.pack(len(index)) + index)
        body = U32.pack(len(index)) + index
        trailer = TRAILER.pack(index_offset, len(body), crc32c(body), PACK_FORMAT_VERSION, 0, PACK_END_MAGIC)
        return self._write(trailer)

    def _write(self, data: bytes) -> int:
        self.stream.write(data)
        self.position = getattr(self, "position", 0) + len(data)
        return self.position


def read_pack_index(read: RangeReader, size: int, *, name: str) -> PackIndex:
    """The member list of a pack of `size` bytes (one ranged read from the end, bounds-checked)."""
    if size < PREAMBLE.size + TRAILER.size + U32.size:
        raise ContainerError(f"{name}: {size} bytes is too small to be a vidarc pack (truncated?)")
    tail = _checked(read, size - TRAILER.size, TRAILER.size, name)
    index_offset, index_len, index_crc, version, reserved, end_magic = TRAILER.unpack(tail)
    if end_magic != PACK_END_MAGIC:
        raise ContainerError(f"{name}: no pack trailer (not a vidarc pack, or truncated)")
    if version != PACK_FORMAT_VERSION or reserved != 0:
        raise ContainerError(
            f"{name}: pack format version {version}; this vidarc reads {PACK_FORMAT_VERSION}"
        )
    if (
        index_len > MAX_PACK_INDEX_BYTES
        or index_offset < PREAMBLE.size
        or index_offset + index_len + TRAILER.size != size
    ):
        raise ContainerError(f"{name}: pack index position is inconsistent with the object size (truncated?)")
    body = _checked(read, index_offset, index_len, name)
    if crc32c(body) != index_crc:
        raise ContainerError(f"{name}: pack index checksum mismatch (the index is corrupt)")
    (json_len,) = U32.unpack_from(body, 0)
    if U32.size + json_len != len(body):
        raise ContainerError(f"{name}: pack index length {json_len} does not fit")
    try:
        entries = json.loads(body[U32.size :].decode())["members"]
        if not isinstance(entries, list) or len(entries) > MAX_MEMBERS:
            raise ValueError("members is not a list of a sane length")
        members = [PackMember(str(k), int(o), int(n)) for k, o, n in entries]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ContainerError(f"{name}: unreadable pack index ({exc})") from None
    position = PREAMBLE.size
    for member in members:  # members tile the pack, in order: nothing unaccounted for
        if member.offset != position or member.length < PREAMBLE.size + TRAILER.size:
            raise ContainerError(
                f"{name}: pack member {member.video_key!r} is out of place (index is corrupt)"
            )
        position += member.length
    if position != index_offset:
        raise ContainerError(f"{name}: pack members end at {position}, the index starts at {index_offset}")
    magic, version, kind = PREAMBLE.unpack(_checked(read, 0, PREAMBLE.size, name))
    if magic != MAGIC or version != PACK_FORMAT_VERSION or kind != PACK_KIND:
        raise ContainerError(f"{name}: corrupt pack preamble (magic, version or kind)")
    return PackIndex(members=members, size=size)


def _checked(read: RangeReader, offset: int, length: int, name: str) -> bytes:
    data = read(offset, length)
    if len(data) != length:
        raise ContainerError(
            f"{name}: wanted {length} bytes at offset {offset}, got {len(data)} (truncated?)"
        )
    return data
