"""The one small interface every vidarc codec implements.

A codec turns one GOP (uint8 frames, T×H×W×3, RGB) plus a rate target into bytes, and bytes back into
frames. It knows nothing of Ray, object storage or containers: the pipeline owns those. Model-backed
codecs are expensive to build, so the pipeline builds each codec once per actor (see `registry`) and
calls `encode`/`decode` many times.

Rate targets use the standard bits-per-pixel definition: bits / (width · height · frames).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np

from codec.errors import UnsupportedInputError

TargetKind = Literal["kbps", "bpp", "quality"]
TARGET_KINDS: tuple[str, ...] = ("kbps", "bpp", "quality")


@dataclasses.dataclass(frozen=True)
class RateTarget:
    """What the user asked for: a bit rate (kbps), a bits-per-pixel budget, or a codec-native quality.

    `quality` means the codec's own knob (CRF for x264/x265/AV1, the quality index for GLVC, atoms per
    step for GVC); the codec documents its range and direction.
    """

    kind: TargetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"rate target kind must be one of {TARGET_KINDS}, got {self.kind!r}")
        if not np.isfinite(self.value) or (self.kind != "quality" and self.value <= 0):
            raise ValueError(f"rate target {self.kind}={self.value} must be a positive finite number")

    def bits_budget(self, width: int, height: int, frames: int, fps: Fraction) -> float | None:
        """Bits this target allows for `frames` frames, or None for a quality target."""
        if self.kind == "kbps":
            return self.value * 1000.0 * frames / float(fps)
        if self.kind == "bpp":
            return self.value * width * height * frames
        return None

    def describe(self) -> str:
        return f"{self.kind}={self.value:g}"

    def to_record(self) -> dict[str, Any]:
        """The target as container headers, config records and summaries store it."""
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RateTarget:
        """The target a record names (ValueError for a kind or value a target cannot have)."""
        return cls(record["kind"], float(record["value"]))


def bits_per_pixel(payload_bytes: int, width: int, height: int, frames: int) -> float:
    """Standard bpp: bits / (width · height · frames). Never divided by 3 for colour channels."""
    return 8.0 * payload_bytes / (width * height * frames)


def kilobits_per_second(payload_bytes: int, frames: int, fps: Fraction) -> float:
    return 8.0 * payload_bytes / (frames / float(fps)) / 1000.0


@dataclasses.dataclass
class EncodedGop:
    """One coded GOP.

    `reconstruction` is what a decoder will produce from `payload`, or None when the caller did not ask
    for it (`encode(..., reconstruct=False)`) and the codec skipped its pixel decode. Every encoder still
    checks its own payload before returning (classic codecs by decoding it; GLVC by entropy-decoding its
    symbols; GVC by parsing its indices back), so a skipped reconstruction never skips the self-check.
    Anything derived from the pixels (quality metrics, reconstruction digests) is null for such a GOP.
    `params` records the settings the rate control chose (e.g. {"crf": 31} or {"q_index": 17}); the
    pipeline stores it in the manifest so a run can be audited and reproduced.
    """

    payload: bytes
    reconstruction: np.ndarray | None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: `Codec.exact_digest` of `payload`, when the encoder already knows it (else computed on demand).
    exact_digest: str | None = None


class Codec(abc.ABC):
    """Frames <-> bytes for one codec configuration (and, for neural codecs, one set of weights)."""

    name: ClassVar[str]
    version: ClassVar[str]
    #: Latent codecs need GOPs of 1+4k frames; they pad a short last GOP internally and crop on decode.
    gop_multiple: ClassVar[int] = 1
    gop_offset: ClassVar[int] = 0

    #: Deepest source precision the codec keeps: 8 means uint8 frames only; more means it also takes
    #: uint16 RGB48 frames (a 10-bit source) and codes them at up to this many bits.
    max_bit_depth: ClassVar[int] = 8
    #: The chroma format the codec stores ("4:2:0" for the classic codecs; None: RGB in, RGB out).
    coded_chroma: ClassVar[str | None] = None

    model_id: str | None = None
    model_sha256: str | None = None
    device: str = "cpu"

    @classmethod
    @abc.abstractmethod
    def default_gop_frames(cls, fps: Fraction) -> int:
        """GOP length used when the user does not set --gop-frames. A class method: the archive driver
        plans GOPs from the codec's class, without asking an encode actor."""

    @classmethod
    def check_gop_frames(cls, gop_frames: int) -> None:
        """Refuse a GOP length this codec cannot use (the last GOP of a video may be shorter)."""
        if gop_frames < 1 or (gop_frames - cls.gop_offset) % cls.gop_multiple != 0:
            raise UnsupportedInputError(
                f"{cls.name} needs GOPs of {cls.gop_offset}+{cls.gop_multiple}k frames, got {gop_frames}"
            )

    @classmethod
    def gop_frames_for(cls, requested: int | None, fps: Fraction) -> int:
        """The GOP length for a video at `fps`: `requested` (checked) or the codec's default."""
        frames = requested if requested is not None else cls.default_gop_frames(fps)
        cls.check_gop_frames(frames)
        return frames

    def check_geometry(self, width: int, height: int) -> None:
        """Raise UnsupportedInputError for a frame size this codec cannot code."""
        if width < 2 or height < 2:
            raise UnsupportedInputError(f"{self.name} cannot code {width}x{height} frames")

    #: True when `encode`/`decode` may be called from several threads at once: the codec serialises its
    #: own device stages (see `codec.device`), so one GOP's CPU work overlaps the next GOP's GPU work.
    #: Codecs without that guarantee are called one at a time by the pipeline.
    thread_safe: ClassVar[bool] = False

    @abc.abstractmethod
    def encode(
        self, frames: np.ndarray, target: RateTarget, fps: Fraction, *, reconstruct: bool = True
    ) -> EncodedGop:
        """Code one GOP (uint8 T×H×W×3) at `target`. The payload must decode without other GOPs.

        `reconstruct=False`: the caller needs no pixels (the GOP's quality is not measured), so a codec
        whose reconstruction costs a pixel decode (GLVC, GVC: the tokenizer's decoder) may skip it and
        return `reconstruction=None`; codecs whose self-check decodes pixels anyway may still return it.
        """

    @abc.abstractmethod
    def decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        """Frames (uint8 frame_count×height×width×3) from a payload made by `encode`.

        Raises CorruptPayloadError for damaged bytes and ModelMismatchError for other weights.
        """

    def exact_digest(self, payload: bytes, frame_count: int, width: int, height: int) -> str | None:
        """sha256 of what this codec decodes exactly on every device, or None when that is the
        reconstruction itself (classic codecs: libav's decoders are bit-exact).

        Neural codecs decode their symbols exactly (GLVC: the entropy-coded latent symbols; GVC: the
        codebook entries and the reference stills' exact parts), but their pixel decode goes through
        float networks that may differ slightly across devices. Verify compares this digest to the
        encoder's for proof that the stored bytes still decode to what was coded.
        """
        return None

    def decode_with_digest(
        self, payload: bytes, frame_count: int, width: int, height: int
    ) -> tuple[np.ndarray, str]:
        """(frames, exact digest): `decode` plus `exact_digest` (the frames' sha256 when the codec
        promises exact pixels). Codecs override it to decode once."""
        frames = self.decode(payload, frame_count, width, height)
        exact = self.exact_digest(payload, frame_count, width, height)
        return frames, exact if exact is not None else frames_sha256(frames)

    def decoder_options(self) -> dict[str, Any]:
        """Options a decoder needs to be rebuilt that are not in the payload (JSON-serialisable).

        The archive stores them in the container header (`decoder_options`) and
        `codec.registry.decoder_for` passes them back to this codec's constructor, so a decoder needs
        only the archive and the model. Most codecs put everything in the payload: none.
        """
        return {}

    def describe(self) -> dict[str, Any]:
        """Identity recorded in archive headers, manifests and run configs."""
        return {
            "codec": self.name,
            "codec_version": self.version,
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "device": self.device,
            "decoder_options": self.decoder_options(),
            "entropy_coder": self.entropy_coder(),
            "max_bit_depth": self.max_bit_depth,
            "coded_chroma": self.coded_chroma,
        }

    def entropy_coder(self) -> dict[str, str] | None:
        """The entropy coder and pinned profile this codec's payloads depend on (library, version,
        profile), recorded in run configs and container headers; None when it uses none."""
        return None


def frames_sha256(frames: np.ndarray) -> str:
    """sha256 of frames (T×H×W×3, C order): the digest of a reconstruction. uint8 frames as bytes;
    uint16 RGB48 frames (a 10-bit stream's decode) as little-endian 16-bit values, every bit covered.

    The array's buffer is hashed in place (no `tobytes` copy: that copy of a GOP cost as much as the
    hash itself); the digest is the same as that of the bytes."""
    dtype = np.dtype("<u2") if frames.dtype == np.uint16 else np.dtype(np.uint8)
    data = np.ascontiguousarray(frames, dtype=dtype)  # no copy when already contiguous of that type
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def check_frames(frames: np.ndarray, codec_name: str, *, high_bit_depth: bool = False) -> None:
    """Validate the frame array every encoder receives (uint16 RGB48 too, for `high_bit_depth` codecs)."""
    dtypes = (np.uint8, np.uint16) if high_bit_depth else (np.uint8,)
    if frames.dtype not in dtypes or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        deep = " (or uint16 RGB48 for sources deeper than 8 bits)" if high_bit_depth else ""
        raise UnsupportedInputError(
            f"{codec_name} expects uint8 frames shaped T×H×W×3{deep}, got {frames.dtype} {frames.shape}"
        )


def to_8bit(frames: np.ndarray) -> np.ndarray:
    """uint16 RGB48 frames rounded to uint8 (what metrics measure and 8-bit codecs code); uint8 as is."""
    if frames.dtype == np.uint8:
        return frames
    return ((frames.astype(np.uint32) + 128) // 257).clip(0, 255).astype(np.uint8)
