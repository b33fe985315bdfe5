"""vidarc codecs: frames <-> bytes. No Ray and no object storage here; importable and testable alone."""

from codec.base import Codec, EncodedGop, RateTarget, bits_per_pixel, kilobits_per_second
from codec.errors import (
    CodecError,
    CorruptPayloadError,
    ModelLoadError,
    ModelMismatchError,
    UnsupportedInputError,
)
from codec.registry import available_codecs, create_codec

__all__ = [
    "Codec",
    "CodecError",
    "CorruptPayloadError",
    "EncodedGop",
    "ModelLoadError",
    "ModelMismatchError",
    "RateTarget",
    "UnsupportedInputError",
    "available_codecs",
    "bits_per_pixel",
    "create_codec",
    "kilobits_per_second",
]
