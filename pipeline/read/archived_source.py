"""An archived video read as the source of a new encode (`vidarc migrate`): no original source needed.

A migration codes a video again from the frames its archive object decodes to. This module is that
video's "source" for the write side: `describe` stands in for the probe (everything from the container
header and index: one ranged read, never the original source), `decode_spans` for the source decode
(the parent GOPs that cover the requested frames, each decoded once, sliced into the new GOPs), and
`audio` for the stream-copied audio (the parent's attachment). It is read side: Ray-free, and it never
imports `pipeline/archive/`.

A parent in cold storage (GLACIER, DEEP_ARCHIVE) cannot be read until it is thawed; its reads raise the
store's error, which `pipeline.store.storage.describe` words as such (the caller fails the video with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from fractions import Fraction
from typing import Any

import numpy as np

from codec.base import Codec
from pipeline.format.container import AUDIO_ATTACHMENT, ContainerIndex
from pipeline.format.container_header import ContainerHeader
from pipeline.read.reader import ArchiveReader, decoder_key
from pipeline.store.storage import filesystem, retrying

#: Bytes hashed per read when an older parent's object has no recorded sha256.
HASH_CHUNK = 8 * 2**20


@dataclasses.dataclass(frozen=True)
class ParentRef:
    """Where a migrated video's frames come from: one video of the parent archive."""

    out: str  # the parent archive's root
    video_key: str
    archive_uri: str  # the object under the parent's root (a pack for a pack member)
    member: tuple[int, int] | None  # its byte range in a pack, else None
    object_sha256: str | None  # of the whole object (a pack's for a member); None: not recorded
    generation: int  # the parent's own generation (1: coded from its source)
    codec: str | None = None
    #: Weights to decode a neural parent with (None: the bundled model its header names).
    model: str | None = None

    def reader(self, endpoint_url: str | None) -> ArchiveReader:
        return ArchiveReader(self.archive_uri, endpoint_url=endpoint_url, member=self.member)


@dataclasses.dataclass(frozen=True)
class ParentInfo:
    """What the probe of an ordinary source gives, read from the parent's header and index."""

    header: ContainerHeader
    frame_count: int
    fps: Fraction
    frame_pts: tuple[int, ...] | None  # a variable-rate video's timestamps (its attachment), else None
    gop_starts: tuple[int, ...]  # first frame of each parent GOP: where a decode can start
    has_audio: bool


def describe(ref: ParentRef, *, endpoint_url: str | None = None) -> ParentInfo:
    """The parent video's geometry, rate and timing from its container (index read, no payload)."""
    reader = ref.reader(endpoint_url)
    index: ContainerIndex = reader.index()
    header = index.header
    fps = Fraction(header.fps_num or 24, header.fps_den or 1)
    stamps = reader.timestamps() if header.vfr else None
    pts = tuple(int(t) for t in stamps[0]) if stamps is not None else None
    return ParentInfo(
        header=header,
        frame_count=index.frame_count,
        fps=fps,
        frame_pts=pts,
        gop_starts=tuple(g.first_frame for g in index.gops),
        has_audio=index.attachment(AUDIO_ATTACHMENT) is not None,
    )


def object_sha256(ref: ParentRef, *, endpoint_url: str | None = None) -> str:
    """sha256 of the parent's whole object (a pack's, for a member), for archives that did not record
    it: streamed in `HASH_CHUNK` ranged reads, memory flat in the object's size."""
    fs, path = filesystem(ref.archive_uri, endpoint_url=endpoint_url)
    size = int(retrying(ref.archive_uri, lambda: fs.size(path)))
    digest = hashlib.sha256()
    for start in range(0, size, HASH_CHUNK):
        end = min(size, start + HASH_CHUNK)
        digest.update(retrying(ref.archive_uri, lambda s=start, e=end: fs.cat_file(path, start=s, end=e)))
    return digest.hexdigest()


def decode_spans(
    ref: ParentRef,
    spans: list[tuple[int, int]],
    *,
    endpoint_url: str | None = None,
    size: tuple[int, int] | None = None,
    high_bit_depth: bool = False,
) -> list[np.ndarray]:
    """The frames of consecutive `spans` (first frame, frame count) of the parent video, as RGB
    (uint8, or uint16 when `high_bit_depth` and the parent holds more than 8 bits): the parent GOPs
    that cover them are decoded once each, in order, and cut at the spans' bounds."""
    reader = ref.reader(endpoint_url)
    index = reader.index()
    if size is not None and (index.header.width, index.header.height) != tuple(size):
        raise ValueError(f"{ref.archive_uri}: the container's size changed since it was described")
    first = spans[0][0]
    last = spans[-1][0] + spans[-1][1]
    covering = [g.index for g in index.gops if g.first_frame < last and g.first_frame + g.frame_count > first]
    decoder = _decoder(reader, ref.model)
    outputs: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # decoded frames not yet handed to a span
    position = index.gops[covering[0]].first_frame if covering else first
    decoded = reader.decode_in_order(covering, decoder)
    for start, count in spans:
        while position + sum(len(p) for p in pending) < start + count:
            pending.append(_depth(next(decoded), high_bit_depth))
        frames = np.concatenate(pending) if len(pending) > 1 else pending[0]
        outputs.append(np.ascontiguousarray(frames[start - position : start - position + count]))
        rest = frames[start - position + count :]
        position = start + count
        pending = [rest] if len(rest) else []
    decoded.close()
    return outputs


def audio(ref: ParentRef, *, endpoint_url: str | None = None) -> tuple[bytes, dict[str, Any]] | None:
    """The parent's audio attachment (bytes, info) as stored, or None when it has none."""
    reader = ref.reader(endpoint_url)
    attachment = reader.index().attachment(AUDIO_ATTACHMENT)
    if attachment is None:
        return None
    blob = reader.attachment(AUDIO_ATTACHMENT)
    assert blob is not None
    return blob, dict(attachment.info)


def _depth(frames: np.ndarray, high_bit_depth: bool) -> np.ndarray:
    """Frames at the depth asked for: a deep decode (uint16) brought to 8 bits unless kept."""
    if frames.dtype == np.uint16 and not high_bit_depth:
        return ((frames.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if frames.dtype == np.uint8 and high_bit_depth:
        return frames.astype(np.uint16) * 257
    return frames


_DECODERS: dict[tuple[Any, ...], Codec] = {}
_DECODERS_LOCK = threading.Lock()
#: Decoders kept per process: a decode task worker reuses its last one (a neural model loads once).
_KEEP = 2


def _decoder(reader: ArchiveReader, model: str | None) -> Codec:
    """The decoder the parent's header asks for, built once per process and key."""
    key = (*decoder_key(reader.header), model)
    with _DECODERS_LOCK:
        decoder = _DECODERS.get(key)
    if decoder is None:
        decoder = reader.decoder_for(model=model, device="cpu")
        with _DECODERS_LOCK:
            while len(_DECODERS) >= _KEEP:
                _DECODERS.pop(next(iter(_DECODERS)))
            _DECODERS[key] = decoder
    return decoder
