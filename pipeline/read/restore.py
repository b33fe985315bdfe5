"""Restoring a video (or a frame range of it) from an archive into a playable file.

A restore reads only what it needs: the container's index with one ranged read from the end, then the
payloads of the GOPs that cover the requested frames, one ranged read each (`pipeline.read.reader`). Frames
are decoded with the decoder the header asks for (`codec.registry.decoder_for`: the codec, its
`decoder_options`, the model given with `--model` or the bundled one the header names), re-encoded at
high quality and muxed with the audio attachment, stream-copied back as it was in the source.

Choices where the brief is silent:
- `--frames A:B` is half-open like a Python slice (frames A..B-1; `A:` = to the end, `:B` = from 0).
- DEST `.mkv` is lossless (FFV1 on RGB (bgr0), so the decoded frames come back bit-exactly); `.mp4` is
  H.264 at CRF 10 (visually transparent), 4:2:0 when both sides are even, else 4:4:4 (4:2:0 cannot
  hold odd sizes), so an mp4 plays everywhere and an mkv is an exact copy of the archive's frames.
  An archive coded at more than 8 bits (`coded_bit_depth`, a 10-bit source on a classic codec)
  restores at depth: FFV1 on 16-bit RGB (gbrp16le) or H.264 High 10 (10-bit 4:2:0 / 4:4:4).
- Timing: a constant-rate source is written at its rational rate (time base 1/fps); a variable-rate
  one with its original timestamps from the `frame_pts.i64` attachment. A frame range starts at 0.
- Audio for a frame range: the audio packets overlapping the range's time span, shifted to start at
  0. Packets are kept whole (stream copy cannot cut inside one), so the audio may start up to one
  packet (about 21 ms for AAC at 48 kHz) early and end one packet late.
- Rotation metadata is written back (frames are stored as decoded, unrotated).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import uuid
from collections.abc import Callable
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from codec.base import Codec
from codec.errors import CodecError
from pipeline.format.container import AUDIO_ATTACHMENT, ContainerError, ContainerIndex, GopEntry
from pipeline.format.container_header import ContainerHeader
from pipeline.format.runinfo import manifest_path
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read import locate
from pipeline.read.locate import ArchivedVideo
from pipeline.read.manifest import DamagedPart, PartsError, parse_part
from pipeline.read.manifest_layout import container_location
from pipeline.read.reader import ArchiveReader
from pipeline.store import thaw
from pipeline.store.storage import (
    StorageError,
    describe,
    filesystem,
    frozen_message,
    full_uri,
    head_object,
    is_frozen,
    is_local,
    open_atomic,
    read_bytes,
    retrying,
)
from pipeline.store.storage_class import thaw_state

DEST_FORMATS = {".mp4": "mp4", ".mkv": "matroska"}
MP4_CRF = 10


class RestoreError(Exception):
    """The video cannot be restored (unknown name, damaged archive, bad range, bad DEST): one line."""


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    dest: str
    video_key: str
    archive_uri: str
    first_frame: int
    frame_count: int
    fps: Fraction
    gops_decoded: int
    bytes_read: int
    audio: bool


def restore_video(
    out: str,
    video: str,
    dest: str,
    *,
    frames: tuple[int | None, int | None] | None = None,
    endpoint_url: str | None = None,
    device: str = "cpu",
    model: str | None = None,
    wait: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Write `video` (a video_key or a source name) from archive `out` to `dest` (.mp4 or .mkv).

    Raises RestoreError with a one-line reason; DEST is written atomically (never half a file). An
    object in GLACIER or DEEP_ARCHIVE without a thawed copy is refused in one line (`vidarc thaw`), or
    with `wait` waited for when a thaw was asked for.
    """
    suffix = PurePosixPath(dest).suffix.lower()
    if suffix not in DEST_FORMATS:
        raise RestoreError(f"{dest}: DEST must end in .mp4 or .mkv")
    entry = find_video(out, video, endpoint_url=endpoint_url)
    reader = ArchiveReader(entry.archive_uri, endpoint_url=endpoint_url, member=entry.member)
    try:
        # one HEAD (kept as the index read's size): a missing or frozen object is worded here, before
        # any decoding
        head = head_object(reader.fs, reader.path)
        if head is None:
            raise FileNotFoundError(reader.path)
        if entry.member is None:
            reader.set_size(int(head["ContentLength"]))
        if not is_local(reader.fs) and not thaw_state(head).readable:
            thaw.require_readable(reader.fs, [reader.path], out=out, wait=wait, progress=progress)
    except FileNotFoundError:
        raise RestoreError(f"{entry.archive_uri}: archive object is missing") from None
    except StorageError as exc:
        raise RestoreError(str(exc).splitlines()[0]) from None
    except Exception as exc:
        raise RestoreError(describe(exc, entry.archive_uri)) from None
    try:
        index = reader.index()
        reader.check_preamble()
        fps = _frame_rate(index.header, entry.archive_uri)
        first, stop = _frame_range(frames, index.frame_count, entry.archive_uri)
        gops = [g for g in index.gops if g.first_frame < stop and g.first_frame + g.frame_count > first]
        decoder = reader.decoder_for(model=model, device=device)
        audio = reader.attachment(AUDIO_ATTACHMENT)
        pts = reader.timestamps()
        with _atomic_local_file(fs_dest_uri=dest, endpoint_url=endpoint_url, suffix=suffix) as tmp:
            _write_video(tmp, DEST_FORMATS[suffix], reader, gops, decoder, (first, stop), audio, pts)
    except (ContainerError, CodecError) as exc:
        raise RestoreError(str(exc).splitlines()[0]) from None
    except _av_error() as exc:  # the muxer refusing what a damaged archive decoded to
        raise RestoreError(f"{entry.archive_uri}: cannot write {dest} ({exc})") from None
    except Exception as exc:
        if is_frozen(exc):  # moved to a cold class (a lifecycle rule) since the HEAD above
            raise RestoreError(frozen_message(entry.archive_uri)) from None
        raise
    return RestoreResult(
        dest=dest,
        video_key=entry.video_key,
        archive_uri=entry.archive_uri,
        first_frame=first,
        frame_count=stop - first,
        fps=fps,
        gops_decoded=len(gops),
        bytes_read=reader.bytes_read,
        audio=audio is not None,
    )


# ---- finding the video ------------------------------------------------------------------------------
def find_video(out: str, video: str, *, endpoint_url: str | None = None) -> ArchivedVideo:
    """The archived video named `video`: its key, its source URI, its source's path relative to SRC
    (any unique trailing path), or its file name. Ambiguous names list the candidates.

    Found from its markers and the archive's video index (`pipeline.read.locate`): a bounded number of
    small reads, whatever the archive holds. An archive written before the index falls back to a
    projected scan of the manifest, with a warning."""
    fs, root = filesystem(out, endpoint_url=endpoint_url)
    try:
        found = retrying(out, lambda: _lookup(fs, root, video))
        if found is None and not locate.index_complete(fs, root):
            found = _scan(out, video, endpoint_url)
    except RestoreError:
        raise
    except (PartsError, StorageError) as exc:
        raise StorageError(str(exc)) from None
    except Exception as exc:
        raise StorageError(describe(exc, out)) from None
    if not found:
        raise RestoreError(f"{out}: no archived video named {video!r} (give a video_key or a source name)")
    if len(found) > 1:
        listed = ", ".join(f"{m.video_key} ({m.source_uri})" for m in found[:10])
        raise RestoreError(f"{out}: {video!r} is ambiguous; candidates: {listed}")
    match = found[0]
    if match.status != "ok":
        reason = f": {match.error}" if match.error else ""
        raise RestoreError(
            f"{out}: {video!r} ({match.video_key}) was not archived (status {match.status}){reason}"
        )
    _check_own_part(fs, root, match)
    return match


def _lookup(fs: Any, root: str, video: str) -> list[ArchivedVideo] | None:
    """Candidates from the markers and the index; None when neither knows the name."""
    if locate.looks_like_key(video):
        entry = locate.by_key(fs, root, video)
        if entry is not None:
            return [entry]
    named = locate.by_name(fs, root, video)
    if not named:
        return None
    found = []
    for key, source_uri in named:
        entry = locate.by_key(fs, root, key)
        found.append(entry or ArchivedVideo(key, source_uri, "", "incomplete"))
    exact = [v for v in found if v.source_uri == video]
    return exact or found


def _scan(out: str, video: str, endpoint_url: str | None) -> list[ArchivedVideo] | None:
    """The lookup of an archive written before the index: a projected scan of its manifest."""
    rows, damaged = locate.scan_manifest(out, video, endpoint_url=endpoint_url)
    for part in damaged:
        if video in part.video_keys:
            raise RestoreError(part.line())
    fs, root = filesystem(out, endpoint_url=endpoint_url)
    videos: dict[str, ArchivedVideo] = {}
    for row in rows:
        key = row["video_key"]
        # the object under OUT (not the manifest's archive_uri): an archive may have been moved
        path, member = container_location(fs, root, row)
        previous = videos.get(key)
        status = row["status"] or "unknown"
        if previous is not None and previous.status != "ok":
            status = previous.status
        videos[key] = ArchivedVideo(key, row["source_uri"], full_uri(fs, path), status, member)
    for tier in (
        [v for v in videos.values() if v.video_key == video],
        [v for v in videos.values() if v.source_uri == video],
        list(videos.values()),
    ):
        if tier:
            return sorted(tier, key=lambda v: v.video_key)
    if damaged:
        more = ", ..." if len(damaged) > 1 else ""
        raise RestoreError(
            f"{out}: no archived video named {video!r} ({len(damaged)} damaged manifest parts could not "
            f"be searched: {damaged[0].uri}{more})"
        )
    return None


def _check_own_part(fs: Any, root: str, video: ArchivedVideo) -> None:
    """A single video's own manifest part (one read; gone once compacted) must parse: a video whose rows
    are damaged is refused as `ls`, `audit` and `verify` name it, not restored as if all were well."""
    if video.member is not None:
        return
    path = manifest_path(root, video.video_key)
    try:
        data = read_bytes(fs, path, small=True)
    except FileNotFoundError:
        return
    try:
        parse_part(data, MANIFEST_SCHEMA, ["video_key"])
    except ValueError as exc:
        raise RestoreError(DamagedPart(full_uri(fs, path), "manifest", str(exc)).line()) from None


def _frame_rate(header: ContainerHeader, name: str) -> Fraction:
    if not header.fps_num or not header.fps_den:
        raise RestoreError(f"{name}: the header records no frame rate (fps_num/fps_den)")
    return Fraction(header.fps_num, header.fps_den)


def _av_error() -> type[Exception]:
    import av

    return av.FFmpegError


def _frame_range(frames: tuple[int | None, int | None] | None, total: int, name: str) -> tuple[int, int]:
    if frames is None:
        return 0, total
    first = 0 if frames[0] is None else int(frames[0])
    stop = total if frames[1] is None else int(frames[1])
    if not 0 <= first < stop <= total:
        raise RestoreError(f"{name}: frames {first}:{stop} are outside 0:{total} (A:B is half-open, A < B)")
    return first, stop


def parse_frame_range(text: str) -> tuple[int | None, int | None]:
    """'A:B', 'A:' or ':B' -> (A, B); RestoreError for anything else."""
    head, sep, tail = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(head) if head.strip() else None, int(tail) if tail.strip() else None)
    except ValueError:
        raise RestoreError(f"--frames {text!r}: expected A:B (half-open, e.g. 0:48)") from None


# ---- writing --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_local_file(*, fs_dest_uri: str, endpoint_url: str | None, suffix: str):
    """A local temporary path whose content becomes DEST only if the block succeeds.

    Local DEST: a hidden temp file beside it, renamed. Remote DEST: a local temp file, then an atomic
    upload (`open_atomic`), because the mp4 muxer must seek back to write its index.
    """
    fs, path = filesystem(fs_dest_uri, endpoint_url=endpoint_url)
    local = is_local(fs)
    if local:
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise RestoreError(f"{fs_dest_uri}: folder {folder} does not exist")
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}{suffix}")
    else:
        handle, tmp = tempfile.mkstemp(suffix=suffix, prefix="vidarc-restore-")
        os.close(handle)
    try:
        yield tmp
        if local:
            os.replace(tmp, path)
        else:
            with open(tmp, "rb") as source, open_atomic(fs, path) as target:
                for block in iter(lambda: source.read(8 << 20), b""):
                    target.write(block)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _write_video(
    tmp: str,
    fmt: str,
    reader: ArchiveReader,
    gops: list[GopEntry],
    codec: Codec,
    span: tuple[int, int],
    audio: bytes | None,
    vfr_pts: tuple[np.ndarray, Fraction] | None,
) -> None:
    import av

    index: ContainerIndex = reader.index()
    header = index.header
    first, stop = span
    width, height = header.width, header.height
    fps = _frame_rate(header, reader.uri)
    deep = header.coded_bit_depth is not None and header.coded_bit_depth > 8
    # a frame's timestamp is computed when it is written: nothing is sized by the header's frame count
    time_base = vfr_pts[1] if vfr_pts is not None else 1 / fps
    origin = int(vfr_pts[0][first]) if vfr_pts is not None else first
    start_seconds = float(first / fps) if vfr_pts is None else float(vfr_pts[0][first] * vfr_pts[1])
    end_seconds = start_seconds + _span_seconds(first, stop, fps, vfr_pts)
    if first == 0 and stop == index.frame_count:
        end_seconds = float("inf")  # a whole video keeps all its audio, even a tail past the last frame
    audio_in = av.open(io.BytesIO(audio), mode="r", format="matroska") if audio else None
    try:
        # bitexact: no random segment UID nor library version in the container, so a restore of the same
        # archive gives the same bytes each time (and on another machine with the same libraries)
        with av.open(tmp, mode="w", format=fmt, options={"fflags": "+bitexact"}) as container:
            stream = _video_stream(container, fmt, width, height, fps, time_base, deep=deep)
            if header.rotation:
                with contextlib.suppress(AttributeError, ValueError):
                    stream.set_display_rotation(int(header.rotation))
            audio_out = None
            audio_packets: Any = iter(())
            if audio_in is not None and audio_in.streams.audio:
                source_audio = audio_in.streams.audio[0]
                audio_out = container.add_stream_from_template(source_audio)
                audio_packets = _audio_packets(audio_in, source_audio, start_seconds, end_seconds)
            pending_audio = None
            decoded = reader.decode_in_order([entry.index for entry in gops], codec)
            for entry, frames in zip(gops, decoded, strict=True):
                for offset, image in enumerate(frames):
                    number = entry.first_frame + offset
                    if not first <= number < stop:
                        continue
                    picture = _picture(image, deep)
                    stamp = int(vfr_pts[0][number]) if vfr_pts is not None else number
                    picture.pts, picture.time_base = stamp - origin, time_base
                    container.mux(stream.encode(picture))
                # interleave: audio up to the end of this GOP's frames (restored-file time)
                gop_end = min(stop, entry.first_frame + entry.frame_count)
                until = _span_seconds(first, gop_end, fps, vfr_pts)
                pending_audio = _mux_audio_until(container, audio_out, audio_packets, pending_audio, until)
            container.mux(stream.encode())
            _mux_audio_until(container, audio_out, audio_packets, pending_audio, float("inf"))
    finally:
        if audio_in is not None:
            audio_in.close()


def _span_seconds(first: int, stop: int, fps: Fraction, vfr: tuple[np.ndarray, Fraction] | None) -> float:
    if vfr is None or stop >= len(vfr[0]):
        return float((stop - first) / fps)
    return float((vfr[0][stop] - vfr[0][first]) * vfr[1])


def _picture(image: np.ndarray, deep: bool) -> Any:
    """A decoded frame as a PyAV picture at the stream's depth (uint16 RGB48 when `deep`)."""
    import av

    from codec.base import to_8bit

    if deep:
        wide = image if image.dtype == np.uint16 else image.astype(np.uint16) * 257
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(wide), format="rgb48le")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(to_8bit(image)), format="rgb24")


def _video_stream(
    container: Any, fmt: str, width: int, height: int, fps: Fraction, time_base: Fraction, *, deep: bool
) -> Any:
    even = width % 2 == 0 and height % 2 == 0
    if fmt == "matroska":
        stream = container.add_stream("ffv1", rate=fps)
        stream.pix_fmt = "gbrp16le" if deep else "bgr0"  # RGB kept as RGB: lossless for the decoded frames
        stream.options = {"level": "3", "slicecrc": "1"}
    else:
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = ("yuv420p" if even else "yuv444p") + ("10le" if deep else "")
        stream.options = {"crf": str(MP4_CRF), "preset": "medium"}
    stream.width, stream.height = width, height
    stream.codec_context.time_base = time_base
    return stream


def _audio_packets(source: Any, stream: Any, start: float, end: float):
    """Audio packets overlapping [start, end) seconds, as (packet, shifted pts)."""
    time_base = stream.time_base
    shift = None
    for packet in source.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        begin = float(packet.pts * time_base)
        finish = begin + float((packet.duration or 0) * time_base)
        before = finish <= start if packet.duration else begin < start
        if before or begin >= end:
            continue
        if shift is None:
            shift = packet.pts if start > 0 else 0
        yield packet, shift


def _mux_audio_until(container: Any, out_stream: Any, packets: Any, pending: Any, until: float) -> Any:
    """Mux audio packets that start before `until` seconds (of the restored file); returns the first
    packet not yet due, to be muxed after the next GOP."""
    if out_stream is None:
        return None
    while True:
        if pending is None:
            pending = next(packets, None)
            if pending is None:
                return None
        packet, shift = pending
        if float((packet.pts - shift) * packet.time_base) >= until:
            return pending
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = out_stream
        container.mux(packet)
        pending = None
