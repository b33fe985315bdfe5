"""`ContainerHeader`: parsed once, written back byte for byte (golden archives and digests depend on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.format.container import TRAILER, U32
from pipeline.format.container_header import ContainerHeader, HeaderError

GOLDEN = Path(__file__).resolve().parent / "golden"


def _stored_header(path: Path) -> bytes:
    """The header JSON exactly as the object stores it in its footer."""
    data = path.read_bytes()
    footer_offset = TRAILER.unpack(data[-TRAILER.size :])[0]
    (length,) = U32.unpack_from(data, footer_offset)
    return data[footer_offset + U32.size : footer_offset + U32.size + length]


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("v*/*.vdrc")), ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_a_golden_header_round_trips_to_its_stored_bytes(path: Path) -> None:
    raw = _stored_header(path)
    header = ContainerHeader.parse(raw)
    assert header.to_json() == raw
    assert ContainerHeader.from_dict(header.to_dict()) == header


def test_absent_fields_read_as_none_and_stay_absent_extra_fields_are_kept() -> None:
    raw = b'{"codec":"x264","frame_count":4,"future":{"a":[1,2]},"height":48,"model_id":null,"width":64}'
    header = ContainerHeader.parse(raw)
    assert (header.codec, header.model_id, header.source_note, header.extra) == (
        "x264",
        None,
        None,
        {"future": {"a": [1, 2]}},
    )
    assert "source_note" in header.absent and "model_id" not in header.absent
    assert header.to_json() == raw  # model_id: written back as the null it was; source_note: not at all
    amended = header.updated(source_note="cut short", lineage={"generation": 2})
    assert amended.source_note == "cut short" and amended.extra["lineage"] == {"generation": 2}
    assert b'"source_note":"cut short"' in amended.to_json() and b'"future"' in amended.to_json()


def test_a_header_built_by_the_writer_writes_every_known_field() -> None:
    fields = ContainerHeader(frame_count=1, width=2, height=2).to_dict()
    assert fields["model_id"] is None and fields["source_note"] is None and len(fields) == 32


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"width": 2, "height": 2}', "header has no 'frame_count'"),
        (
            b'{"frame_count": 1, "width": 0, "height": 2}',
            "header field 'width' is out of range or of the wrong type",
        ),
        (b"[1]", "unreadable header (not a JSON object)"),
        (b'{"frame_count": 1, "width": 65535, "height": 65535}', "header geometry 65535x65535 exceeds"),
    ],
)
def test_a_bad_header_is_refused_in_one_line(raw: bytes, message: str) -> None:
    with pytest.raises(HeaderError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        ContainerHeader.parse(raw)
