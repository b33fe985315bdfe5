"""Classic codecs through PyAV: x264 (H.264), x265 (HEVC) and SVT-AV1, as baselines and a fallback.

Each GOP is coded by a fresh encoder, so it is a closed GOP that starts with a key frame and decodes
alone. The payload is the bare elementary stream, the smallest form PyAV's parsers split reliably:

- H.264 / HEVC: Annex-B byte stream (start codes, parameter sets in band). x264 writes a ~700-byte
  SEI with its version and full option string into every stream; that is dropped with FFmpeg's
  `filter_units` bitstream filter (it would be ~10% of a 2-second 320×180 GOP at 0.02 bpp). x265's
  equivalent SEI is switched off with `info=0`.
- AV1: the low-overhead OBU stream (AV1 spec §5: concatenated temporal units, each opened by a 2-byte
  temporal delimiter). IVF costs 32 bytes per stream plus 12 per frame instead; dropping the temporal
  delimiters would save the last 2 bytes per frame but leaves a non-conformant stream whose frame
  boundaries depend on parser heuristics, so they are kept. Decoded with dav1d.

Colour: RGB is converted to yuv420p with the BT.709 matrix in limited ("TV"/MPEG) range, and the stream
is tagged BT.709 (primaries, transfer, matrix) and limited range so other players agree. The inverse
uses the same matrix and range. Both directions go through swscale with bilinear chroma filtering and
BITEXACT (same output on every CPU; ACCURATE_RND measured ~2 dB worse chroma on natural images).

Bit depth: uint8 frames are coded as 8-bit 4:2:0; uint16 RGB48 frames (a 10-bit source, decoded by the
pipeline at 16-bit scale) as 10-bit 4:2:0 — x264 High 10, x265 Main 10, SVT-AV1 10-bit — and decode back
to uint16, so a 10-bit source keeps its 10 bits. The decoder follows the stream: a 10-bit stream gives
uint16 frames, an 8-bit one uint8.

Geometry: frames are padded by edge replication to what the encoder accepts (even sizes; x265 also
needs width ≥ 64 and height ≥ 16 — narrower inputs crash libx265 4.1 with heap corruption; SVT-AV1
needs ≥ 16×16 — SVT-AV1 4.3 (PyAV 18's wheels) corrupts its heap at 8×8, which 2.x took) and cropped
back on decode. Payloads coded at an older minimum still decode: the decoder follows the stream's size.

Rate control: `quality` is the CRF itself. `kbps`/`bpp` search the CRF on the actual bytes
(`codec.ratecontrol.search_rate`), warm-started from the previous GOP's choice.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from codec.base import Codec, EncodedGop, RateTarget, check_frames
from codec.errors import CodecError, CorruptPayloadError, UnsupportedInputError

# SVT-AV1 prints its whole configuration to stderr for every encoder it opens (once per CRF tried);
# keep errors only, unless the user asked for something else. Read when the first encoder opens.
os.environ.setdefault("SVT_LOG", "1")

import av
from av.video.reformatter import ColorRange, Colorspace, Interpolation

_SCALE_FLAGS = Interpolation.BILINEAR | Interpolation.BITEXACT
#: ITU-T H.273 code points written into the streams: BT.709 primaries, transfer and matrix.
_BT709 = 1
_RATE_TOLERANCE = 0.10


class ClassicCodec(Codec):
    """Shared machinery; subclasses only describe their library (names, ranges, options)."""

    max_bit_depth = 10
    coded_chroma = "4:2:0"
    #: Every encode and decode opens its own libav context, and PyAV leaves the GIL while the library
    #: codes or converts, so an actor's GOPs in flight code at once (the only shared state, the rate
    #: search's warm start, is a starting guess: any value gives a correct search).
    thread_safe = True

    encoder_name: ClassVar[str]
    decoder_name: ClassVar[str]
    crf_range: ClassVar[tuple[int, int]]
    default_preset: ClassVar[str]
    #: Smallest coded size the encoder handles; smaller frames are padded up to it.
    min_size: ClassVar[tuple[int, int]] = (2, 2)
    #: FFmpeg bitstream filter applied to the encoder's packets (e.g. to drop bulky SEI), or None.
    packet_filter: ClassVar[str | None] = None
    #: Whether a `quality` target may be a fractional CRF (x264/x265 take one; SVT-AV1 does not).
    fractional_crf: ClassVar[bool] = True
    #: libavcodec's threading of the encoder, or None for PyAV's default (`SLICE`). Only libx264's
    #: wrapper reads it (x265 and SVT-AV1 run their own thread pools whatever it says).
    encoder_thread_type: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        device: str = "cpu",
        preset: str | None = None,
        threads: int | None = None,
        model: str | None = None,
        **unknown: Any,
    ) -> None:
        if model is not None:
            raise UnsupportedInputError(f"{self.name} is a classic codec and takes no model (got {model!r})")
        if unknown:
            raise UnsupportedInputError(
                f"{self.name} does not understand option(s) {', '.join(sorted(unknown))}; "
                "it takes preset and threads"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise UnsupportedInputError(
                f"{self.name}: threads must be a non-negative integer, got {threads!r}"
            )
        self.device = "cpu"  # software encoders; a "cuda"/"auto" request still runs here on CPU
        self.preset = str(preset) if preset is not None else self.default_preset
        self.threads = threads
        self._last_crf: int | None = None
        self._check_preset()
        self.version = _library_version(type(self))

    # -- Codec interface ---------------------------------------------------------------------------
    @classmethod
    def default_gop_frames(cls, fps: Fraction) -> int:
        """About two seconds: long enough for inter coding to pay off, short enough that restoring
        one frame decodes little and a damaged GOP loses little."""
        return max(1, round(2 * float(fps)))

    def encode(
        self, frames: np.ndarray, target: RateTarget, fps: Fraction, *, reconstruct: bool = True
    ) -> EncodedGop:
        """`reconstruct` is ignored: the self-check decodes the stream anyway, so the frames are free."""
        check_frames(frames, self.name, high_bit_depth=True)
        count, height, width = frames.shape[:3]
        self.check_geometry(width, height)
        fps = Fraction(fps)
        if fps <= 0:
            raise UnsupportedInputError(f"{self.name}: frame rate must be positive, got {fps}")
        pictures = _to_yuv_frames(_pad(frames, *self._coded_size(width, height)))

        def encode_at(crf: int | float) -> bytes:
            return self._encode_stream(pictures, crf, fps)

        budget = target.bits_budget(width, height, count, fps)
        if budget is None:
            crf = self._quality_to_crf(target.value)
            payload, reached, evaluations = encode_at(crf), True, 1
        else:
            lo, hi = self.crf_range
            from codec.ratecontrol import search_rate  # the encoder's: a decoder never loads it

            found = search_rate(
                encode_at,
                lambda data: 8.0 * len(data),
                budget,
                lo,
                hi,
                bits_increase_with_param=False,
                tolerance=_RATE_TOLERANCE,
                start=self._last_crf,
            )
            crf, payload, reached, evaluations = found.param, found.result, found.reached, found.evaluations
            self._last_crf = found.param
        try:
            reconstruction = self.decode(payload, count, width, height)
        except CorruptPayloadError as exc:  # our own bytes must decode: a library fault, not bad input
            raise CodecError(
                f"{self.name} self-check failed: the encoder's output does not decode ({exc})"
            ) from None
        params = {"crf": crf, "preset": self.preset, "target_reached": reached, "evaluations": evaluations}
        return EncodedGop(payload=payload, reconstruction=reconstruction, params=params)

    def decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        coded_w, coded_h = self._coded_size(width, height)
        if not payload:
            raise CorruptPayloadError(f"{self.name} payload is empty")
        pictures = self._decode_stream(bytes(payload))
        if len(pictures) != frame_count:
            raise CorruptPayloadError(
                f"{self.name} payload decodes to {len(pictures)} frames, expected {frame_count} (damaged or truncated)"
            )
        deep = pictures[0].format.name in _TEN_BIT if pictures else False
        out = np.empty((frame_count, height, width, 3), dtype=np.uint16 if deep else np.uint8)
        for i, picture in enumerate(pictures):
            if (picture.width, picture.height) != (coded_w, coded_h):
                raise CorruptPayloadError(
                    f"{self.name} payload frame {i} is {picture.width}x{picture.height}, "
                    f"expected {coded_w}x{coded_h} (not this video's stream)"
                )
            if (picture.format.name in _TEN_BIT) != deep:
                raise CorruptPayloadError(f"{self.name} payload frame {i} changes bit depth (damaged stream)")
            out[i] = _to_rgb(picture)[:height, :width]
        return out

    # -- library specifics (overridden) -------------------------------------------------------------
    def encoder_options(self, crf: int | float, frame_count: int) -> dict[str, str]:
        raise NotImplementedError

    # -- internals ----------------------------------------------------------------------------------
    def _coded_size(self, width: int, height: int) -> tuple[int, int]:
        min_w, min_h = self.min_size
        return max(width + width % 2, min_w), max(height + height % 2, min_h)

    def _quality_to_crf(self, value: float) -> int | float:
        lo, hi = self.crf_range
        if not lo <= value <= hi:
            raise UnsupportedInputError(
                f"{self.name} quality is a CRF in {lo}..{hi} (lower is better), got {value:g}"
            )
        if not self.fractional_crf and value != int(value):
            raise UnsupportedInputError(f"{self.name} quality (CRF) must be an integer, got {value:g}")
        return int(value) if value == int(value) else float(value)

    def _check_preset(self) -> None:
        """Open an encoder once so a bad preset fails here, in one line, not on the first GOP."""
        try:
            self._encode_stream(
                _to_yuv_frames(np.zeros((1, 16, 64, 3), np.uint8)), self.crf_range[1], Fraction(25)
            )
        except av.error.FFmpegError as exc:
            raise UnsupportedInputError(
                f"{self.name} refuses preset {self.preset!r} ({_ffmpeg_reason(exc)})"
            ) from None

    def _open_encoder(
        self, crf: int | float, width: int, height: int, frame_count: int, fps: Fraction, pix_fmt: str
    ):
        ctx = av.CodecContext.create(self.encoder_name, "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = pix_fmt
        ctx.framerate = fps
        ctx.time_base = 1 / fps
        ctx.gop_size = frame_count  # one key frame, at the start: the GOP is the whole stream
        ctx.color_range = ColorRange.MPEG
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
        if self.threads is not None:
            ctx.thread_count = self.threads
        if self.encoder_thread_type is not None:
            ctx.thread_type = self.encoder_thread_type
        ctx.options = self.encoder_options(crf, frame_count)
        return ctx

    def _encode_stream(self, pictures: list[av.VideoFrame], crf: int | float, fps: Fraction) -> bytes:
        first = pictures[0]
        ctx = self._open_encoder(crf, first.width, first.height, len(pictures), fps, first.format.name)
        packets = []
        for index, picture in enumerate(pictures):
            # Both set, always: x264's rate control uses frame durations, and a frame without a
            # time base gets timestamps that vary from call to call (so would the bytes).
            picture.pts, picture.time_base = index, ctx.time_base
            packets.extend(ctx.encode(picture))
        packets.extend(ctx.encode(None))
        if self.packet_filter is not None:
            bsf = av.bitstream.BitStreamFilterContext(self.packet_filter, self.decoder_name)
            packets = [out for packet in [*packets, None] for out in bsf.filter(packet)]
        return b"".join(bytes(packet) for packet in packets)

    def _decode_stream(self, payload: bytes) -> list[av.VideoFrame]:
        try:
            ctx = av.CodecContext.create(self.decoder_name, "r")
            ctx.thread_count = self.threads or 0
            ctx.options = self.libav_decoder_options()
            pictures = []
            for packet in [*ctx.parse(payload), *ctx.parse(None)]:
                pictures.extend(ctx.decode(packet))
            pictures.extend(ctx.decode(None))
        except av.error.FFmpegError as exc:
            raise CorruptPayloadError(
                f"{self.name} payload does not decode ({_ffmpeg_reason(exc)})"
            ) from None
        return pictures

    def libav_decoder_options(self) -> dict[str, str]:
        """Options of the libav decoder context (not `Codec.decoder_options`: nothing to store)."""
        return {}


class X264Codec(ClassicCodec):
    """H.264 with libx264. Quality = CRF 0..51 (0 is lossless; about +6 halves the bits)."""

    name = "x264"
    version = "libx264"
    encoder_name = "libx264"
    decoder_name = "h264"
    crf_range = (0, 51)
    default_preset = "medium"
    packet_filter = "filter_units=remove_types=6"  # SEI: x264's version/options banner
    #: Frame threads, as ffmpeg's command line gives x264 (`sliced_threads=0`), not PyAV's sliced
    #: threads: every frame whole in one slice, so the same CRF costs ~3% fewer bytes (640×360, 3
    #: threads), at the same CPU time per frame. Each GOP still has its own encoder: a closed GOP that
    #: decodes alone (frame threads only pipeline the frames of that one stream).
    encoder_thread_type = "FRAME"

    def encoder_options(self, crf: int | float, frame_count: int) -> dict[str, str]:
        return {"preset": self.preset, "crf": str(crf), "x264-params": "open-gop=0"}

    def libav_decoder_options(self) -> dict[str, str]:
        return {"err_detect": "explode"}  # stop at the first inconsistency instead of concealing it


class X265Codec(ClassicCodec):
    """HEVC with libx265. Quality = CRF 0..51."""

    name = "x265"
    version = "libx265"
    encoder_name = "libx265"
    decoder_name = "hevc"
    crf_range = (0, 51)
    default_preset = "medium"
    min_size = (64, 16)

    def encoder_options(self, crf: int | float, frame_count: int) -> dict[str, str]:
        params = ["log-level=error", "info=0", "open-gop=0", f"keyint={frame_count}"]
        if self.threads:
            params.append(f"pools={self.threads}")
        return {"preset": self.preset, "crf": str(crf), "x265-params": ":".join(params)}

    def libav_decoder_options(self) -> dict[str, str]:
        return {"err_detect": "explode"}


class Av1Codec(ClassicCodec):
    """AV1 with SVT-AV1 (libaom is not in PyAV's wheels); decoded with dav1d. Quality = CRF 1..63."""

    name = "av1"
    version = "libsvtav1"
    encoder_name = "libsvtav1"
    decoder_name = "libdav1d"
    crf_range = (1, 63)
    default_preset = "8"
    min_size = (16, 16)
    fractional_crf = False

    def encoder_options(self, crf: int | float, frame_count: int) -> dict[str, str]:
        options = {"preset": self.preset, "crf": str(int(crf))}
        if self.threads:
            options["svtav1-params"] = f"lp={self.threads}"
        return options


# -- colour and geometry ---------------------------------------------------------------------------
def _pad(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Edge-replicate frames up to width×height (replicated edges cost almost no bits)."""
    pad_h, pad_w = height - frames.shape[1], width - frames.shape[2]
    if pad_h == 0 and pad_w == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


_TEN_BIT = frozenset({"yuv420p10le", "yuv420p10be"})


def _to_yuv_frames(frames: np.ndarray) -> list[av.VideoFrame]:
    """RGB (full range) -> yuv420p (uint8) or yuv420p10le (uint16 RGB48), BT.709 matrix, limited range.

    swscale reads each RGB frame where it lies (`from_numpy_buffer`, no copy into a libav frame first:
    ~0.2 ms of a 640×360 frame's ~1 ms here); the array outlives the call, so the view stays valid."""
    deep = frames.dtype == np.uint16
    frames = frames.astype("<u2", copy=False) if deep else frames  # rgb48le: little-endian samples
    out = []
    for image in frames:
        rgb = av.VideoFrame.from_numpy_buffer(
            np.ascontiguousarray(image), format="rgb48le" if deep else "rgb24"
        )
        out.append(
            rgb.reformat(
                format="yuv420p10le" if deep else "yuv420p",
                src_colorspace=Colorspace.ITU709,
                dst_colorspace=Colorspace.ITU709,
                src_color_range=ColorRange.JPEG,
                dst_color_range=ColorRange.MPEG,
                interpolation=_SCALE_FLAGS,
                threads=1,
            )
        )
    return out


def _to_rgb(picture: av.VideoFrame) -> np.ndarray:
    """The exact inverse convention of `_to_yuv_frames`, whatever the stream's own tags say."""
    return picture.reformat(
        format="rgb48le" if picture.format.name in _TEN_BIT else "rgb24",
        src_colorspace=Colorspace.ITU709,
        dst_colorspace=Colorspace.ITU709,
        src_color_range=ColorRange.MPEG,
        dst_color_range=ColorRange.JPEG,
        interpolation=_SCALE_FLAGS,
        threads=1,
    ).to_ndarray()


# -- identity ----------------------------------------------------------------------------------------
def _ffmpeg_reason(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


@functools.cache
def _library_version(cls: type[ClassicCodec]) -> str:
    """e.g. "libx264 core 165 r3222 / libavcodec 62.28.102": what made the bytes, for manifests."""
    avcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    return f"{_encoder_build(cls) or cls.encoder_name} / libavcodec {avcodec} / PyAV {av.__version__}"


def _encoder_build(cls: type[ClassicCodec]) -> str | None:
    """The encoder library's own version string (x264/x265 write it into an SEI; SVT-AV1 exports it)."""
    if cls.encoder_name == "libsvtav1":
        return _svt_version()
    ctx = av.CodecContext.create(cls.encoder_name, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 16, "yuv420p"
    ctx.time_base = Fraction(1, 25)
    ctx.options = {"x265-params": "log-level=error"} if cls.encoder_name == "libx265" else {}
    picture = _to_yuv_frames(np.zeros((1, 16, 64, 3), np.uint8))[0]
    stream = b"".join(bytes(p) for p in [*ctx.encode(picture), *ctx.encode(None)])
    pattern = (
        rb"x264 - core \d+(?: r\d+ [0-9a-f]+)?"
        if cls.encoder_name == "libx264"
        else rb"x265 \(build \d+\) - [\w.+-]+"
    )
    match = re.search(pattern, stream)
    return match.group(0).decode() if match else None


def _svt_version() -> str | None:
    """SVT-AV1's `svt_av1_get_version()`, from the library PyAV loaded (wheel or system)."""
    candidates = sorted(Path(av.__file__).resolve().parent.parent.glob("av.libs/libSvtAv1Enc*"))
    for path in [*map(str, candidates), "libSvtAv1Enc.so"]:
        try:
            get_version = ctypes.CDLL(path).svt_av1_get_version
        except (OSError, AttributeError):
            continue
        get_version.restype = ctypes.c_char_p
        return "SVT-AV1 " + get_version().decode()
    return None
