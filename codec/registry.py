"""Codec names -> factories.

Factories are referenced as "module:attribute" strings and imported on first use, so listing or using
the classic codecs never imports torch, and a worker only loads what it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from codec.base import Codec

_FACTORIES: dict[str, str] = {
    "x264": "codec.classic:X264Codec",
    "x265": "codec.classic:X265Codec",
    "av1": "codec.classic:Av1Codec",
    "glvc": "codec.glvc.codec:GlvcCodec",
    "gvc": "codec.gvc.codec:GvcCodec",
}


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
