"""Reading source videos with PyAV: probe, decode one GOP's frames, stream-copy the audio.

The archive's input, used by the write side (discovery, GOP decode tasks, the audio attachment) and by
comparisons against a source that still exists (verify's quality re-check, audit's frame pairs). The
read side (container, reader, restore, inspect) never needs it: restore muxes from the archive alone.

Everything here opens the source through fsspec, so a local file and an `s3://` object behave alike:
for a remote object PyAV reads through a seekable fsspec file, i.e. ranged GETs of the parts the
demuxer needs, never a full download to disk.

Choices where the brief is silent:
- The frame count is exact: `probe` demuxes every video packet (no decoding) and counts them, because
  container headers (`stream.frames`) are missing or wrong for many files. The packets' presentation
  timestamps, sorted, give each frame's pts; a GOP decode seeks to the keyframe before its first pts
  and keeps exactly its frames, so GOPs decode in parallel without re-decoding the whole video.
- Variable frame rate: all frames are kept (never dropped or duplicated to a constant rate); the
  stream's average rate is recorded as a rational and `vfr` notes that frame durations vary.
- Rotation metadata is recorded, frames are decoded as stored (unrotated): restore writes the same
  rotation back, so nothing is resampled.
- Files that do not open are either skipped (not a video) or failed (they look like a video container
  by their magic bytes or extension but cannot be read: truncated or corrupt).
- Nothing is lost silently: the probe records the frames the container *declares* (its frame count,
  else its duration × rate) next to the frames it can read, so a truncated source is archived with a
  warning instead of quietly short; and the source's bit depth and chroma format (from its pixel
  format), so a reduction (10-bit coded at 8, 4:4:4 at 4:2:0) is on record.
- Memory is bounded before anything is decoded: a source whose declared frame size exceeds the pixel
  budget (`max_pixels`, default 8K) fails at probe time, and a decoded frame larger than declared (or
  than the budget) stops the GOP decode after that first frame.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from codec.modeldir import sha256_file
from pipeline.sources.hashing_reader import HashingReader
from pipeline.store.storage import RetryingFile, filesystem, is_local

VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".ogv", ".3gp", ".mxf", ".y4m", ".h264", ".hevc", ".ivf",
)  # fmt: skip
#: Demuxers that read still images; a PNG or JPEG "opens" as a one-frame video but is not one.
IMAGE_FORMAT_SUFFIX = "_pipe"
IMAGE_FORMATS = {"image2", "gif", "apng", "webp_pipe"}
#: Default pixel budget per frame: 8K UHD (7680×4320). A decoded 48-frame GOP of it is ~4.8 GB of RGB.
DEFAULT_MAX_PIXELS = 7680 * 4320


class SourceError(Exception):
    """A source video cannot be read (truncated, corrupt, or missing frames); one-line message."""


class NotAVideo(Exception):
    """The object is not a video (no container, no video stream, or a still image); one-line reason."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about one source video before planning its GOPs."""

    width: int
    height: int
    frame_count: int
    fps: Fraction
    vfr: bool
    rotation: int
    container_format: str
    video_codec: str
    pix_fmt: str | None
    color: dict[str, Any]
    has_audio: bool
    #: Sorted presentation timestamps, one per frame; None when the stream carries none (then GOP
    #: decodes read from the start instead of seeking).
    frame_pts: tuple[int, ...] | None
    time_base: Fraction | None
    #: sha256 of the whole source object, taken while probing (see `hashing_reader`).
    source_sha256: str | None = None
    #: Bits per component of the stored pixels (8, 10, 12, ...) and their chroma format ("4:2:0", ...).
    bit_depth: int = 8
    chroma: str | None = None
    #: Frames the container declares (its count, else duration × rate); None when it does not say.
    declared_frames: int | None = None
    #: Sorted timestamps of the keyframes (where a decode can start); None when the stream has no pts.
    keyframe_pts: tuple[int, ...] | None = None

    @property
    def truncated(self) -> bool:
        """Fewer readable frames than declared (a rounding frame's slack for duration estimates)."""
        if self.declared_frames is None:
            return False
        return self.frame_count < self.declared_frames - max(1, self.declared_frames // 100)

    def source_note(self) -> str | None:
        """One line for the record when the source is not archived whole: truncated."""
        if self.truncated:
            return (
                f"truncated source: {self.frame_count} of {self.declared_frames} declared frames are readable; "
                f"the {self.frame_count} were archived"
            )
        return None

    def header_fields(self) -> dict[str, Any]:
        """Fields recorded in the archive header and run records (no per-frame lists)."""
        return {
            "width": self.width,
            "height": self.height,
            "frame_count": self.frame_count,
            "fps_num": self.fps.numerator,
            "fps_den": self.fps.denominator,
            "vfr": self.vfr,
            "rotation": self.rotation,
            "source_format": self.container_format,
            "source_codec": self.video_codec,
            "pix_fmt": self.pix_fmt,
            "color": self.color,
            "time_base": str(self.time_base) if self.time_base else None,
            "source_sha256": self.source_sha256,
            "source_bit_depth": self.bit_depth,
            "source_chroma": self.chroma,
            "source_frames_declared": self.declared_frames,
        }


@contextlib.contextmanager
def open_source(uri: str, endpoint_url: str | None = None) -> Iterator[Any]:
    """A PyAV input container over a local path or an fsspec object (ranged reads)."""
    import av

    fs, path = filesystem(uri, endpoint_url=endpoint_url)
    handle: BinaryIO | None = None
    try:
        if is_local(fs):
            container = av.open(path, mode="r", metadata_errors="ignore")
        else:
            handle = RetryingFile(
                fs.open(path, "rb", block_size=4 * 1024 * 1024, cache_type="readahead"), uri
            )
            container = av.open(handle, mode="r", metadata_errors="ignore")
        try:
            yield container
        finally:
            container.close()
    finally:
        if handle is not None:
            handle.close()


def probe(
    uri: str,
    *,
    endpoint_url: str | None = None,
    head: bytes = b"",
    sha256: bool = False,
    max_pixels: int | None = None,
) -> VideoInfo:
    """Describe a source video. Raises NotAVideo (skip it) or SourceError (it is a broken video, or
    one whose declared frame size exceeds `max_pixels`, checked before its packets are read).

    `head` (the object's first bytes, if the caller has them) helps tell a broken video from a
    non-video when the container does not open. `sha256=True` also fills `source_sha256` (the
    archive's probe does; a remote object is hashed while it is demuxed, see `hashing_reader`).
    """
    import av

    try:
        if not sha256:
            with open_source(uri, endpoint_url) as container:
                return _describe(container, uri, max_pixels)
        with _open_hashed(uri, endpoint_url) as (container, finish_hash):
            info = _describe(container, uri, max_pixels)
            return dataclasses.replace(info, source_sha256=finish_hash())
    except (NotAVideo, SourceError):
        raise
    except av.FFmpegError as exc:
        if looks_like_video(uri, head):
            raise SourceError(
                f"{uri}: cannot read the video (truncated or corrupt: {exc.strerror})"
            ) from None
        raise NotAVideo(f"{uri}: not a video container") from None
    except (OSError, ValueError, EOFError) as exc:
        raise SourceError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _open_hashed(uri: str, endpoint_url: str | None) -> Iterator[tuple[Any, Callable[[], str]]]:
    """`open_source` that also yields a function returning the object's sha256 (probe reads the whole
    object anyway; a remote object is hashed as PyAV reads it, so it is fetched once, not twice)."""
    import av

    fs, path = filesystem(uri, endpoint_url=endpoint_url)
    if is_local(fs):  # native file I/O for the demuxer; the local re-read is cheap (page cache)
        with open_source(uri, endpoint_url) as container:
            yield container, lambda: sha256_file(Path(path))
        return
    with fs.open(path, "rb", block_size=4 * 1024 * 1024, cache_type="readahead") as handle:
        reader = HashingReader(RetryingFile(handle, uri))
        container = av.open(reader, mode="r", metadata_errors="ignore")
        try:
            yield container, reader.finish
        finally:
            container.close()


def check_pixel_budget(
    uri: str, width: int, height: int, max_pixels: int | None, what: str = "declares"
) -> None:
    """SourceError when a frame of width×height exceeds the pixel budget (a hostile or huge source)."""
    if max_pixels is not None and width * height > max_pixels:
        raise SourceError(
            f"{uri}: {what} {width}x{height} frames ({width * height} pixels), over the pixel budget of "
            f"{max_pixels} (--max-pixels; default 8K, 7680x4320)"
        )


def _describe(container: Any, uri: str, max_pixels: int | None = None) -> VideoInfo:
    fmt = container.format.name.split(",")[0]
    if fmt in IMAGE_FORMATS or fmt.endswith(IMAGE_FORMAT_SUFFIX):
        raise NotAVideo(f"{uri}: a still image ({fmt}), not a video")
    if not container.streams.video:
        raise NotAVideo(f"{uri}: no video stream ({fmt})")
    stream = container.streams.video[0]
    has_audio = bool(container.streams.audio)
    codec_ctx = stream.codec_context
    width, height = int(codec_ctx.width), int(codec_ctx.height)
    check_pixel_budget(uri, width, height, max_pixels)  # before reading a single packet
    declared = _declared_frames(container, stream)
    pts_values: list[int] = []
    keyframes: list[int] = []
    durations: set[int] = set()
    missing_pts = False
    count = 0
    cut: list[Any] = []  # corrupt packets not (yet) followed by a sound one
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet demux yields at the end
            continue
        if packet.is_corrupt:  # the last, partial packet of a cut file is no frame; one mid-stream is
            cut.append(packet)
            continue
        for kept in (*cut, packet):
            count += 1
            ts = kept.pts if kept.pts is not None else kept.dts
            if ts is None:
                missing_pts = True
            else:
                pts_values.append(int(ts))
                if kept.is_keyframe:
                    keyframes.append(int(ts))
            if kept.duration:
                durations.add(int(kept.duration))
        cut.clear()
    if count == 0 or width <= 0 or height <= 0:
        raise SourceError(f"{uri}: the video stream has no frames (truncated or empty)")
    pts_sorted = None if missing_pts or len(set(pts_values)) != count else tuple(sorted(pts_values))
    vfr = len(durations) > 1 or (pts_sorted is not None and _has_uneven_steps(pts_sorted))
    time_base = Fraction(stream.time_base) if stream.time_base else None
    fps = _frame_rate(stream, count, pts_sorted, time_base, vfr=vfr)
    depth, chroma = pixel_format_traits(codec_ctx.pix_fmt)
    return VideoInfo(
        width=width,
        height=height,
        frame_count=count,
        fps=fps,
        vfr=vfr,
        rotation=_rotation(container, stream),
        container_format=fmt,
        video_codec=codec_ctx.name,
        pix_fmt=codec_ctx.pix_fmt,
        color=_colour(codec_ctx),
        has_audio=has_audio,
        frame_pts=pts_sorted,
        time_base=time_base,
        bit_depth=depth,
        chroma=chroma,
        declared_frames=_declared_count(declared, fps),
        keyframe_pts=None if pts_sorted is None else tuple(sorted(keyframes)),
    )


def _declared_frames(container: Any, stream: Any) -> tuple[int | None, float | None]:
    """(frame count the stream header states, duration in seconds the container states)."""
    count = int(stream.frames) if stream.frames else None
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    return count, seconds


def _declared_count(declared: tuple[int | None, float | None], fps: Fraction) -> int | None:
    count, seconds = declared
    if count:
        return count
    if seconds and seconds > 0 and fps > 0:
        return round(seconds * float(fps))
    return None


def pixel_format_traits(pix_fmt: str | None) -> tuple[int, str | None]:
    """(bits per component, chroma format) of a pixel format: ("yuv420p10le") -> (10, "4:2:0")."""
    import av

    if not pix_fmt:
        return 8, None
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        return 8, None
    depth = max((c.bits for c in fmt.components), default=8)
    if fmt.is_rgb:
        return depth, "rgb"
    if len(fmt.components) < 3:
        return depth, "4:0:0"
    wide, tall = fmt.chroma_width(64), fmt.chroma_height(64)
    names = {(32, 32): "4:2:0", (32, 64): "4:2:2", (64, 64): "4:4:4", (16, 64): "4:1:1", (64, 32): "4:4:0"}
    return depth, names.get((wide, tall), f"{wide}/{tall} of 64")


def _has_uneven_steps(pts: tuple[int, ...]) -> bool:
    if len(pts) < 3:
        return False
    steps = np.diff(np.asarray(pts, dtype=np.int64))
    return bool(steps.max() - steps.min() > max(1, int(0.01 * np.median(steps))))


def _frame_rate(
    stream: Any, count: int, pts: tuple[int, ...] | None, time_base: Fraction | None, *, vfr: bool
) -> Fraction:
    """The stream's average rate as a rational.

    For a variable-rate stream the container's nominal rate is often just the muxer's default, so
    the average is measured from the timestamps (frames per second over the span they cover).
    """
    measured = None
    if pts and time_base and count > 1 and pts[-1] > pts[0]:
        measured = (Fraction(count - 1) / ((pts[-1] - pts[0]) * time_base)).limit_denominator(100_000)
    if vfr and measured:
        return measured
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate).limit_denominator(1_000_000)
    return measured or Fraction(25)


def _rotation(container: Any, stream: Any) -> int:
    """Display rotation in degrees (0, 90, 180, 270), from the stream metadata or the first frame."""
    raw = stream.metadata.get("rotate")
    if raw is None:
        container.seek(0)
        with contextlib.suppress(Exception):
            for frame in container.decode(stream):
                raw = getattr(frame, "rotation", 0) or 0
                break
    try:
        return round(float(raw or 0)) % 360
    except (TypeError, ValueError):
        return 0


def _colour(codec_ctx: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in ("color_range", "color_primaries", "color_trc", "colorspace"):
        value = getattr(codec_ctx, attr, None)
        if value is not None:
            out[attr] = int(value) if not isinstance(value, str) else value
    return out


def looks_like_video(uri: str, head: bytes) -> bool:
    """Does a file that failed to open look like a video (so it is a failure, not a skip)?"""
    if uri.lower().endswith(VIDEO_EXTENSIONS):
        return True
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM (EBML)
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith((b"FLV", b"OggS", b"\x00\x00\x01\xba", b"YUV4MPEG2"))
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS sync bytes
    )


def decode_frames(
    uri: str,
    first_frame: int,
    frame_count: int,
    *,
    expected_pts: tuple[int, ...] | None,
    endpoint_url: str | None = None,
    size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    high_bit_depth: bool = False,
) -> np.ndarray:
    """Frames `first_frame`..+`frame_count` as RGB T×H×W×3, decoded as stored: uint8, or with
    `high_bit_depth` uint16 (RGB48, full 16-bit scale) so a 10-bit source keeps its precision.

    With `expected_pts` (the GOP's frames' timestamps from `probe`) the decoder seeks to the keyframe
    before the first one and keeps exactly those frames; without, it decodes from the start.
    Every decoded frame must be `size` (width, height; the probe's) and within `max_pixels`: the first
    one that is not stops the decode (SourceError) before it is converted or more are decoded.
    Raises SourceError when frames are missing (a truncated or corrupt source).
    """
    (frames,) = decode_spans(
        uri,
        [(first_frame, frame_count, expected_pts)],
        endpoint_url=endpoint_url,
        size=size,
        max_pixels=max_pixels,
        high_bit_depth=high_bit_depth,
    )
    return frames


def decode_spans(
    uri: str,
    spans: list[tuple[int, int, tuple[int, ...] | None]],
    *,
    endpoint_url: str | None = None,
    size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    high_bit_depth: bool = False,
) -> list[np.ndarray]:
    """`decode_frames` of consecutive spans (first frame, frame count, their pts) in one pass: one seek
    to the keyframe before the first span, then each decoded frame goes to the span that wants it.

    What GOPs that share a keyframe interval cost together: decoded one by one, each would decode
    again from that keyframe (a source with one keyframe every 250 frames, cut into 40-frame GOPs,
    would be decoded ~3 times over). The spans must all have pts, or none (then frames are counted
    from the start). Checks and errors as `decode_frames`.
    """
    import av

    rgb = "rgb48le" if high_bit_depth else "rgb24"

    def convert(frame: Any) -> np.ndarray:
        check_pixel_budget(uri, frame.width, frame.height, max_pixels, what="decodes to")
        if size is not None and (frame.width, frame.height) != tuple(size):
            raise SourceError(
                f"{uri}: a frame decodes to {frame.width}x{frame.height}, the stream declares "
                f"{size[0]}x{size[1]} (corrupt, or the size changes mid-stream)"
            )
        return frame.to_ndarray(format=rgb)

    with_pts = spans[0][2] is not None
    if any((pts is not None) != with_pts for _, _, pts in spans):
        raise ValueError("decode_spans: give pts for every span or for none")
    outputs: list[np.ndarray | None] = [None] * len(spans)  # filled in place: no stacking copy
    filled = [0] * len(spans)
    owner: dict[int, int] = {}  # pts (or frame index) -> span
    for number, (first, count, pts) in enumerate(spans):
        owner.update(dict.fromkeys(pts if pts is not None else range(first, first + count), number))
    wanted = sum(count for _, count, _ in spans)
    found = 0
    try:
        with open_source(uri, endpoint_url) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first_pts = spans[0][2]
            last = max(owner) if owner else -1
            if first_pts is not None and spans[0][0] > 0:
                container.seek(first_pts[0], stream=stream, backward=True, any_frame=False)
            for index, frame in enumerate(_decoded(container, stream)):
                key = frame.pts if with_pts else index
                number = owner.pop(key, None) if key is not None else None
                if number is not None:
                    image = convert(frame)
                    if outputs[number] is None:
                        outputs[number] = np.empty((spans[number][1], *image.shape), dtype=image.dtype)
                    outputs[number][filled[number]] = image
                    filled[number] += 1
                    found += 1
                if found == wanted or (with_pts and key is not None and key > last and not owner):
                    break
                if not with_pts and index >= last:
                    break
    except av.FFmpegError as exc:
        first, count, _ = spans[0]
        raise SourceError(
            f"{uri}: decoding frames {first}+{count} failed ({exc.strerror}; truncated or corrupt?)"
        ) from None
    for (first, count, _), done in zip(spans, filled, strict=True):
        if done != count:
            raise SourceError(
                f"{uri}: decoded {done} of frames {first}+{count} (truncated or corrupt source)"
            )
    return outputs  # type: ignore[return-value]  # every span is complete, so none is None


def _decoded(container: Any, stream: Any) -> Iterator[Any]:
    """`container.decode(stream)`, except that corrupt packets at the very end of the stream (the
    partial last packet of a cut file: no frame, as `probe` counts it) never reach the decoder: an
    error there would make a frame-threaded decoder drop the frames it still holds (B-frames)."""
    held: list[Any] = []  # corrupt packets not (yet) followed by a sound one
    for packet in container.demux(stream):
        if packet.size == 0:  # the end: flush, without the trailing corrupt packets
            held.clear()
        elif packet.is_corrupt:
            held.append(packet)
            continue
        for sent in (*held, packet):
            yield from sent.decode()
        held.clear()


def extract_audio(uri: str, *, endpoint_url: str | None = None) -> tuple[bytes, dict[str, Any]] | None:
    """The source's first audio stream, packets stream-copied (lossless) into a Matroska audio blob.

    Returns (blob, info) or None when the source has no audio. Restore muxes the blob's stream back
    next to the decoded video.
    """
    import av

    with open_source(uri, endpoint_url) as source:
        if not source.streams.audio:
            return None
        in_stream = source.streams.audio[0]
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="matroska") as out:
            out_stream = out.add_stream_from_template(in_stream)
            packets = 0
            for packet in source.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                out.mux(packet)
                packets += 1
        info = {
            "codec": in_stream.codec_context.name,
            "sample_rate": in_stream.codec_context.sample_rate,
            "channels": in_stream.codec_context.channels,
            "packets": packets,
            "format": "matroska",
        }
    return buffer.getvalue(), info
