"""Codec names -> factories, and rebuilding the decoder an archive header asks for.

Factories are referenced as "module:attribute" strings and imported on first use, so listing or using
the classic codecs never imports torch, and a worker only loads what it runs.

`decoder_for` is the one way every reader (verify, restore, inspect, audit, training data) gets a
decoder: a decoder needs only the archive and the model, so everything else it needs is in the header
(`codec`, `decoder_options`) or the payload.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Protocol

from codec.base import Codec
from codec.errors import CodecError, ModelMismatchError

_FACTORIES: dict[str, str] = {
    "x264": "codec.classic:X264Codec",
    "x265": "codec.classic:X265Codec",
    "av1": "codec.classic:Av1Codec",
    "glvc": "codec.glvc.codec:GlvcCodec",
    "gvc": "codec.gvc.codec:GvcCodec",
}


#: The codec families other parts name (a reference or a fallback must be classic; a quality floor is on
#: by default for the neural ones): kept here, beside the codecs themselves.
CLASSIC_CODECS: tuple[str, ...] = ("x264", "x265", "av1")
NEURAL_CODECS: tuple[str, ...] = ("glvc", "gvc")


def available_codecs() -> list[str]:
    return sorted(_FACTORIES)


def codec_class(name: str) -> type[Codec]:
    try:
        target = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(available_codecs())}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def create_codec(name: str, **options: Any) -> Codec:
    """Build a codec once (per actor): loads weights, picks the device, validates options.

    Common options: `model` (directory or fsspec URL, neural codecs), `device` ("cpu", "cuda", "auto").
    Codec-specific options are passed through (e.g. `preset` for classic codecs, `mode` for GVC).
    """
    return codec_class(name)(**options)


def build_codec(name: str, *, model: str | None, device: str, options: dict[str, Any]) -> Codec:
    """`create_codec` with only the options this codec's constructor takes (classic codecs have no
    model or device), so one call site serves every codec."""
    wanted = dict(options)
    if model is not None:
        wanted["model"] = model
    wanted["device"] = device
    params = inspect.signature(codec_class(name).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        dropped = {k for k in ("device",) if k not in params}
        wanted = {k: v for k, v in wanted.items() if k not in dropped}
    return create_codec(name, **wanted)


class DecoderSpec(Protocol):
    """What a container header says of its decoder (`pipeline.format.container_header.ContainerHeader` has
    these attributes; codec/ never imports pipeline/, so it names them here)."""

    @property
    def codec(self) -> str | None: ...
    @property
    def model_id(self) -> str | None: ...
    @property
    def model_sha256(self) -> str | None: ...
    @property
    def decoder_options(self) -> dict[str, Any] | None: ...


def resolve_model(header: DecoderSpec, model: str | None) -> str | None:
    """The model directory to decode with: the user's `model`, else the bundled model the header's
    model_id ("name@version") names, else None (classic codecs, or the codec's own default)."""
    if model is not None or not header.model_id:
        return model
    from codec.modeldir import bundled_model_path

    bundled = bundled_model_path(str(header.model_id).split("@", 1)[0])
    return str(bundled) if bundled.is_dir() else None


def decoder_for(header: DecoderSpec, *, model: str | None = None, device: str = "cpu") -> Codec:
    """The decoder an archive header asks for: its codec, built with the header's `decoder_options`
    (absent in archives of earlier releases: then none) and the weights it was made with.

    `model` overrides the model directory (else the bundled model the header names). Raises
    CodecError (one line, without the object's name: callers prefix it) when the header names no or an
    unknown codec or the codec cannot be built, and ModelMismatchError when the weights differ from
    the header's `model_sha256` (decoding would give garbage).
    """
    codec_name = header.codec
    if not codec_name:
        raise CodecError("the header names no codec")
    options = header.decoder_options or {}
    if not isinstance(options, dict):
        raise CodecError(f"the header's decoder_options is not an object: {options!r}")
    try:
        codec = build_codec(
            str(codec_name), model=resolve_model(header, model), device=device, options=dict(options)
        )
    except ValueError as exc:  # unknown codec name
        raise CodecError(str(exc)) from None
    except CodecError as exc:
        raise type(exc)(f"cannot build the {codec_name} decoder ({exc})") from None
    wanted = header.model_sha256
    if wanted and codec.model_sha256 != wanted:
        raise ModelMismatchError(
            f"made with model {header.model_id} sha256 {str(wanted)[:12]}…, but the decoder "
            f"holds {codec.model_id} sha256 {str(codec.model_sha256)[:12]}… (give --model with the right weights)"
        )
    return codec
