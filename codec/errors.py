"""Exceptions a codec raises. Each carries a one-line message fit to show a user as is."""

from __future__ import annotations


class CodecError(Exception):
    """Base class: anything a codec refuses or cannot do, explained in one line."""


class CorruptPayloadError(CodecError):
    """The bytes handed to `decode` are truncated, damaged or not this codec's."""


class ModelMismatchError(CodecError):
    """The payload was made with other weights than the decoder holds; decoding would give garbage."""


class UnsupportedInputError(CodecError):
    """The frames cannot be coded by this codec (geometry, frame count, rate out of range)."""


class ModelLoadError(CodecError):
    """A model directory is missing files, has a wrong hash, or holds weights in an unsafe format."""


class UnsupportedFormatError(CorruptPayloadError):
    """A payload format or entropy profile this decoder does not know (made by a newer release), or an
    installed entropy coder that does not reproduce a pinned profile: decoding would give garbage.
    A CorruptPayloadError for callers that only ask whether a payload can be decoded."""
