"""Every JSON the project writes passes a strict parser: a non-finite number (NaN, ±Infinity, from a
measurement that failed or divided by zero) is written as null, never as the `NaN`/`Infinity` tokens
`json.dumps` emits by default and no strict parser reads."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pipeline.archive.summary import RunTally
from pipeline.format.container import read_index, write_container
from pipeline.format.container_header import ContainerHeader
from pipeline.format.runinfo import finite, json_text, write_json
from pipeline.store.storage import filesystem


def _refuse(token: str) -> None:
    raise ValueError(f"not JSON: {token}")


def strict(text: str | bytes) -> object:
    return json.loads(text, parse_constant=_refuse)


BAD = {
    "nan": float("nan"),
    "inf": float("inf"),
    "minus_inf": -float("inf"),
    "numpy": np.float32("nan"),
    "nested": [{"score": np.float64("inf")}, (1.5, float("nan"))],
    "fine": 2.5,
    "fraction": "30000/1001",
}


def test_write_json_writes_null_for_every_non_finite_number(tmp_path) -> None:
    fs, root = filesystem(str(tmp_path))
    write_json(fs, f"{root}/summary.json", BAD)
    record = strict((tmp_path / "summary.json").read_text())
    assert record == {
        "nan": None,
        "inf": None,
        "minus_inf": None,
        "numpy": None,
        "nested": [{"score": None}, [1.5, None]],
        "fine": 2.5,
        "fraction": "30000/1001",
    }


def test_json_text_cleans_what_default_returns_too() -> None:
    text = json_text({"value": {1, 2}}, default=lambda _: float("nan"))
    assert strict(text) == {"value": None}


def test_a_summary_column_without_frames_has_no_nan_mean() -> None:
    tally = RunTally()
    column = tally.columns["kbps"]
    column.add(12.0, 0)  # a value, but no frame weight
    stats = column.stats()
    assert stats is not None and stats["mean_per_frame"] is None
    strict(json_text(stats))


def test_a_header_with_nan_is_refused_by_the_writer_and_finite_makes_it_readable() -> None:
    header = {"codec": "x264", "width": 64, "height": 48, "frame_count": 4, "search": {"score": float("nan")}}
    with pytest.raises(ValueError):
        write_container(io.BytesIO(), ContainerHeader.from_dict(header), [(0, 4, b"\x00\x00\x00\x01p")])
    buffer = io.BytesIO()
    size = write_container(buffer, ContainerHeader.from_dict(finite(header)), [(0, 4, b"\x00\x00\x00\x01p")])
    data = buffer.getvalue()
    index = read_index(lambda o, n: data[o : o + n], size, name="x.vdrc")
    assert index.header.extra["search"] == {"score": None}
