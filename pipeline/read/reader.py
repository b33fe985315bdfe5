"""Reading one archive object: its index, one GOP by a ranged read, and the decoder its header asks for.

The read side's entry point: verify, restore, inspect and audit (and a training-data reader) read
archives through `ArchiveReader`. It imports no Ray, no metrics and no quality search, so restoring
one GOP loads only the container format, storage and the codec the header names. Every read is a fresh
ranged GET (no cache layer), counted so a caller can say how many bytes it fetched: the index comes
with one read from the end of the object, each GOP with one more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import Codec
from codec.errors import CodecError, CorruptPayloadError
from codec.registry import decoder_for
from pipeline.format.container import (
    TAIL_GUESS,
    TIMESTAMPS_ATTACHMENT,
    ContainerError,
    ContainerIndex,
    GopEntry,
    parse_time_base,
    read_attachment,
    read_gop,
    read_index,
    read_preamble,
)
from pipeline.format.container_header import ContainerHeader
from pipeline.read.ordered import ordered_map
from pipeline.store.storage import filesystem, full_uri, retrying


class CountingReader:
    """A RangeReader (fresh ranged GETs, transient faults retried) that counts the bytes it fetched."""

    def __init__(self, fs: Any, path: str, *, base: int = 0) -> None:
        self.fs, self.path, self.bytes_read, self.reads = fs, path, 0, 0
        self.base = base  # a pack member's first byte: offsets are relative to it
        self.uri = full_uri(fs, path)

    def __call__(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        start = self.base + offset
        data = retrying(self.uri, lambda: self.fs.cat_file(self.path, start=start, end=start + length))
        self.bytes_read += len(data)
        self.reads += 1
        return data


class ArchiveReader:
    """One `.vdrc` object, read lazily: `index()` on first use, then `gop(i)` per GOP.

    `size` (when a listing already gave it) saves the HEAD request; `member` reads one video of a
    pack. Errors: ContainerError for a damaged or foreign object, CodecError for a decoder that cannot
    be built or holds other weights (both one line, naming the object); storage errors
    (FileNotFoundError, ...) pass through for the caller to word.
    """

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        size: int | None = None,
        member: tuple[int, int] | None = None,
    ) -> None:
        self.uri = uri
        self.fs, self.path = filesystem(uri, endpoint_url=endpoint_url)
        # a video inside a pack (`pipeline.format.pack`): its container is the byte range `member` = (offset,
        # length) of the object, read exactly like a single-video object
        self.member = member
        self.read = CountingReader(self.fs, self.path, base=member[0] if member else 0)
        self._size = member[1] if member else size
        self._index: ContainerIndex | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = int(retrying(self.uri, lambda: self.fs.size(self.path)))
        return self._size

    def set_size(self, size: int) -> None:
        """The object's size from a HEAD the caller made anyway (saves the read's own)."""
        self._size = size

    @property
    def bytes_read(self) -> int:
        return self.read.bytes_read

    def index(self) -> ContainerIndex:
        """Header, GOP index and attachments (one ranged read from the end; cached)."""
        if self._index is None:
            self._index = read_index(self.read, self.size, name=self.uri)
        return self._index

    def check_preamble(self) -> None:
        """The object's first bytes (magic, format version). `index()` checks them for free when the
        object fits in its one tail read; a larger object costs one more 8-byte ranged read."""
        if self.index().size > TAIL_GUESS:
            read_preamble(self.read, name=self.uri)

    @property
    def header(self) -> ContainerHeader:
        return self.index().header

    def entry(self, i: int) -> GopEntry:
        gops = self.index().gops
        if not 0 <= i < len(gops):
            raise ContainerError(f"{self.uri}: no GOP {i} (the index has {len(gops)})")
        return gops[i]

    def gop(self, i: int) -> bytes:
        """GOP `i`'s payload by one ranged read, CRC-checked."""
        return read_gop(self.read, self.entry(i), name=self.uri)

    def attachment(self, name: str) -> bytes | None:
        """An attachment's bytes (CRC-checked), or None when the object has none by that name."""
        attachment = self.index().attachment(name)
        return None if attachment is None else read_attachment(self.read, attachment, name=self.uri)

    def timestamps(self) -> tuple[np.ndarray, Fraction] | None:
        """Per-frame timestamps and their time base for a variable-rate source, else None."""
        index = self.index()
        attachment = index.attachment(TIMESTAMPS_ATTACHMENT)
        if attachment is None or not attachment.info.get("time_base"):
            return None
        time_base = parse_time_base(attachment.info["time_base"], self.uri)
        blob = read_attachment(self.read, attachment, name=self.uri)
        if len(blob) % 8:
            raise ContainerError(f"{self.uri}: the frame timestamps attachment is not whole int64 values")
        pts = np.frombuffer(blob, dtype="<i8")
        if len(pts) != index.frame_count:
            raise ContainerError(f"{self.uri}: {len(pts)} frame timestamps for {index.frame_count} frames")
        if len(pts) > 1 and not (np.diff(pts) > 0).all():
            raise ContainerError(f"{self.uri}: the frame timestamps do not increase")
        return pts, time_base

    def decoder_for(self, *, model: str | None = None, device: str = "cpu") -> Codec:
        """The decoder this object's header asks for (`codec.registry.decoder_for`), errors naming it."""
        return header_decoder(self.header, model=model, device=device, name=self.uri)

    def decode(self, i: int, decoder: Codec) -> np.ndarray:
        """GOP `i`'s frames (uint8 T×H×W×3): one ranged read, CRC check, decode."""
        entry = self.entry(i)
        return decode_payload(decoder, self.gop(i), entry, self.header, name=self.uri)

    def decode_in_order(self, indices: list[int], decoder: Codec) -> Iterator[np.ndarray]:
        """The frames of GOPs `indices`, in that order, decoded side by side where that pays.

        A neural decoder on the CPU runs each pass on one torch thread (`codec.cpu_threads`), so its
        GOPs decode on `decode_workers` threads at once; the payloads are read here, in order, and at
        most one GOP per worker waits decoded ahead of the caller (memory stays a few GOPs). Other
        decoders (libav's, or any on a GPU) decode one GOP at a time, as before."""

        def payloads() -> Iterator[tuple[GopEntry, bytes]]:
            for i in indices:
                yield self.entry(i), self.gop(i)

        def decode(item: tuple[GopEntry, bytes]) -> np.ndarray:
            return decode_payload(decoder, item[1], item[0], self.header, name=self.uri)

        workers = decode_workers(decoder, len(indices))
        yield from ordered_map(decode, payloads(), workers, name="vidarc-decode")


def decode_workers(decoder: Codec, gops: int) -> int:
    """How many GOPs `decoder` should decode at once here: the usable cores for a thread-safe neural
    decoder on the CPU (one torch thread each), else one."""
    if gops < 2 or not decoder.thread_safe or decoder.model_id is None or decoder.device != "cpu":
        return 1
    from codec.cores import usable_cores

    return max(1, min(gops, usable_cores()))


def header_decoder(header: ContainerHeader, *, model: str | None, device: str, name: str) -> Codec:
    """`decoder_for` with the object's name in front of any error."""
    try:
        return decoder_for(header, model=model, device=device)
    except CodecError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def decoder_key(header: ContainerHeader) -> tuple[Any, ...]:
    """What decides a decoder: objects with the same key can share one (verify builds one per key)."""
    options = json.dumps(header.decoder_options or {}, sort_keys=True, default=str)
    return (header.codec, header.model_id, header.model_sha256, options)


def decode_payload(
    codec: Codec, payload: bytes, entry: GopEntry, header: ContainerHeader, *, name: str
) -> np.ndarray:
    """One GOP's frames from its payload; a decoder's refusal names the object and the GOP."""
    where = f"{name}: GOP {entry.index} (frames {entry.first_frame}+{entry.frame_count})"
    try:
        return codec.decode(payload, entry.frame_count, header.width, header.height)
    except CodecError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except (MemoryError, RecursionError, ArithmeticError, ValueError, TypeError, IndexError) as exc:
        # a decoder must refuse bad bytes with CorruptPayloadError; anything else is still one line
        raise CorruptPayloadError(f"{where}: the decoder failed ({type(exc).__name__}: {exc})") from None
