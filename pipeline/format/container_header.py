"""The `.vdrc` container header as a typed record: built once by the writer, parsed once by a reader.

The header is untrusted input: `ContainerHeader.parse` reads its JSON with the nesting depth bounded (a
scan before `json.loads`, so 100 000 nested brackets are refused instead of exhausting the stack),
without `NaN`/`Infinity`, and checks every field of `HEADER_FIELDS` (types and ranges of every field a
reader uses) before anything reads it; past that, readers use attributes, never `header["..."]`.

Two things keep `to_json` byte for byte what the header held (golden archives and object digests depend
on it): fields outside `HEADER_FIELDS` (the writer's records — `entropy_coder`, `lineage`, `quality_*`,
`source_metadata` — and whatever a later writer adds) are kept in `extra` and written back as they came;
and a known field an older writer never wrote (`absent`) reads as None and is not written back as null.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

MAX_HEADER_DEPTH = 32
MAX_ATTACHMENTS = 64
#: Frame geometry a reader accepts: 65535 per side (what every payload format can state) and at most
#: 2^28 pixels per frame (16384×16384), so a hostile header cannot ask a decoder for terabytes.
MAX_DIMENSION = 65_535
MAX_FRAME_PIXELS = 1 << 28
MAX_FRAME_COUNT = 1 << 40
MAX_RATE_TERM = (1 << 31) - 1


class HeaderError(ValueError):
    """A header a reader must refuse; one line, without the object's name (the container adds it)."""


def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_rotation(v: Any) -> bool:
    return type(v) in (int, float) and -360 <= v <= 360


_TEXT_FIELDS = (
    "codec", "codec_version", "model_id", "model_sha256", "time_base", "pix_fmt", "source_format",
    "source_codec", "source_sha256", "source_uri", "video_key", "run_id", "created_at", "source_chroma",
    "coded_chroma", "source_note",
)  # fmt: skip

#: field -> (required, check). Types are those every release wrote; a reader may rely on them.
HEADER_FIELDS: dict[str, tuple[bool, Callable[[Any], bool]]] = {
    "frame_count": (True, _int(0, MAX_FRAME_COUNT)),
    "width": (True, _int(1, MAX_DIMENSION)),
    "height": (True, _int(1, MAX_DIMENSION)),
    "fps_num": (False, _optional(_int(1, MAX_RATE_TERM))),
    "fps_den": (False, _optional(_int(1, MAX_RATE_TERM))),
    "rotation": (False, _optional(_is_rotation)),
    "vfr": (False, _optional(lambda v: isinstance(v, bool))),
    "gop_frames": (False, _optional(_int(1, MAX_FRAME_COUNT))),
    "source_bytes": (False, _optional(_int(0, 1 << 62))),
    "attachments": (False, _optional(lambda v: isinstance(v, list) and len(v) <= MAX_ATTACHMENTS)),
    "decoder_options": (False, _optional(_is_dict)),
    "color": (False, _optional(_is_dict)),
    "target": (False, _optional(_is_dict)),
    "coded_bit_depth": (False, _optional(_int(1, 16))),
    "source_bit_depth": (False, _optional(_int(1, 32))),
    "source_frames_declared": (False, _optional(_int(0, MAX_FRAME_COUNT))),
    **{field: (False, _optional(_is_str)) for field in _TEXT_FIELDS},
}


@dataclasses.dataclass(frozen=True)
class ContainerHeader:
    """One archive object's header: geometry, rate, the source, the codec that decodes it (one field per
    entry of `HEADER_FIELDS`), plus `extra` (fields this reader does not check) and `absent`."""

    frame_count: int
    width: int
    height: int
    fps_num: int | None = None
    fps_den: int | None = None
    rotation: float | None = None  # degrees; an int as every release wrote it
    vfr: bool | None = None
    gop_frames: int | None = None
    source_bytes: int | None = None
    #: The attachments' entries as stored (name, offset, length, crc32c, info); `write_container` sets them.
    attachments: list[dict[str, Any]] | None = None
    #: What `codec.registry.decoder_for` rebuilds the decoder with (None: an earlier release's, none).
    decoder_options: dict[str, Any] | None = None
    color: dict[str, Any] | None = None
    #: The rate target as `RateTarget.to_record` wrote it ({"kind", "value"}).
    target: dict[str, Any] | None = None
    coded_bit_depth: int | None = None
    source_bit_depth: int | None = None
    source_frames_declared: int | None = None
    codec: str | None = None
    codec_version: str | None = None
    model_id: str | None = None
    model_sha256: str | None = None
    time_base: str | None = None
    pix_fmt: str | None = None
    source_format: str | None = None
    source_codec: str | None = None
    source_sha256: str | None = None
    source_uri: str | None = None
    video_key: str | None = None
    run_id: str | None = None
    created_at: str | None = None
    source_chroma: str | None = None
    coded_chroma: str | None = None
    source_note: str | None = None
    #: Fields outside `HEADER_FIELDS`, kept and written back as they came.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Known fields the header did not hold (an older writer's): None here, and not written back.
    absent: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: bytes) -> ContainerHeader:
        """The header JSON, checked: nesting bounded, numbers finite, `HEADER_FIELDS` types and ranges,
        geometry within `MAX_FRAME_PIXELS`. Raises `HeaderError` (one line)."""
        depth = json_depth(raw)
        if depth > MAX_HEADER_DEPTH:
            raise HeaderError(f"unreadable header (nested {depth} deep; at most {MAX_HEADER_DEPTH})")
        try:
            fields = json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise HeaderError(f"unreadable header ({_first_line(exc)})") from None
        if not isinstance(fields, dict):
            raise HeaderError("unreadable header (not a JSON object)")
        for field, (required, check) in HEADER_FIELDS.items():
            if field not in fields:
                if required:
                    raise HeaderError(f"header has no {field!r}")
                continue
            if not check(fields[field]):
                raise HeaderError(f"header field {field!r} is out of range or of the wrong type")
        if fields["width"] * fields["height"] > MAX_FRAME_PIXELS:
            raise HeaderError(
                f"header geometry {fields['width']}x{fields['height']} exceeds {MAX_FRAME_PIXELS} pixels"
            )
        return cls.from_dict(fields)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ContainerHeader:
        """A header from fields as the writer assembles them (or `parse` checked them): unchecked, so a
        test can forge a hostile one. A known field not in `fields` is `absent`."""
        known = {name: fields[name] for name in HEADER_FIELDS if name in fields}
        extra = {name: value for name, value in fields.items() if name not in HEADER_FIELDS}
        return cls(**known, extra=extra, absent=frozenset(HEADER_FIELDS) - fields.keys())

    def to_dict(self) -> dict[str, Any]:
        """The header's fields as JSON values, in the stored (sorted) order: what `from_dict` took (an
        absent field left out unless it was given a value since)."""
        fields = {
            name: getattr(self, name)
            for name in HEADER_FIELDS
            if getattr(self, name) is not None or name not in self.absent
        }
        fields.update((k, v) for k, v in self.extra.items() if k not in HEADER_FIELDS)
        return dict(sorted(fields.items()))

    def updated(self, **fields: Any) -> ContainerHeader:
        """This header with `fields` set, known ones and extra alike (the writer amending a video's
        header: a quality search's record, a fallback's codec)."""
        return ContainerHeader.from_dict({**self.to_dict(), **fields})

    def to_json(self) -> bytes:
        """The header as the container stores it: sorted keys, no spaces, finite numbers only (a NaN
        would make an archive its own reader refuses: a writer drops it first, `runinfo.finite`)."""
        return header_json(self.to_dict())


def header_json(fields: Mapping[str, Any]) -> bytes:
    """Header fields as the container stores them (`ContainerHeader.to_json`)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in JSON text, brackets inside strings ignored; linear time,
    no recursion (a quote is escaped when an odd run of backslashes precedes it)."""
    import numpy as np

    text = np.frombuffer(raw, dtype=np.uint8)
    if not len(text):
        return 0
    positions = np.arange(len(text))
    last_plain = np.maximum.accumulate(np.where(text != ord("\\"), positions, -1))
    before = np.concatenate(([-1], last_plain[:-1]))  # last non-backslash before each position
    escaped = ((positions - 1 - before) % 2).astype(bool)
    quotes = (text == ord('"')) & ~escaped
    outside = np.cumsum(quotes) % 2 == 0
    steps = (text == ord("[")).astype(np.int64) + (text == ord("{")) - (text == ord("]")) - (text == ord("}"))
    return max(0, int(np.cumsum(np.where(outside, steps, 0)).max()))


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
