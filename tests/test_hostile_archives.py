"""Hostile `.vdrc` objects whose footer CRC is valid: every reader (read_index, inspect, restore, verify)
refuses them with one line naming the object, never a traceback, and the CLI exits with its error code.

Each case is a finding of issue 11, rebuilt here byte by byte: a header with `Infinity`, attachments
that are not a list, 100 000 nested brackets, a zero width, a frame rate that is a list, and a zeroed
magic (in a small object, caught by the one tail read, and in a large one, caught by the preamble read).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.format.container import (
    GOP_RECORD,
    TAIL_GUESS,
    TIMESTAMPS_ATTACHMENT,
    TRAILER,
    U32,
    ContainerError,
    crc32c,
    json_depth,
    read_index,
    write_container,
)
from pipeline.format.container_header import ContainerHeader
from pipeline.format.schema import MANIFEST_SCHEMA, rows_to_table
from pipeline.read.reader import ArchiveReader

GOOD = {"codec": "x264", "width": 64, "height": 48, "frame_count": 4, "fps_num": 24, "fps_den": 1}
PAYLOAD = b"\x00\x00\x00\x01" + b"p" * 60


def _object(header_json: bytes, payload: bytes = PAYLOAD, magic: bytes = b"VDRC") -> bytes:
    """A container with one GOP of 4 frames, `header_json` as its header, and a valid footer CRC."""
    preamble = magic + b"\x01\x00\x00\x00"
    record = GOP_RECORD.pack(0, 4, len(preamble), len(payload), crc32c(payload))
    footer = U32.pack(len(header_json)) + header_json + U32.pack(1) + record
    footer_offset = len(preamble) + len(payload)
    trailer = TRAILER.pack(footer_offset, len(footer), crc32c(footer), 1, 0, b"VDRCEND1")
    return preamble + payload + footer + trailer


def _header(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


HOSTILE = {
    "infinite frame count": _header().replace(b'"frame_count": 4', b'"frame_count": Infinity'),
    "attachments not a list": _header(attachments=5),
    "100k nested brackets": _header()[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "zero width": _header(width=0),
    "frame rate is a list": _header(fps_num=[1]),
    "huge float": _header().replace(b'"fps_den": 1', b'"fps_den": 1e999'),
    "frame count a string": _header(frame_count="4"),
    "attachment entry not an object": _header(attachments=[7]),
    "geometry beyond any decoder": _header(width=65535, height=65535),
    "header is a list": b"[1, 2, 3]",
}


def test_json_depth_ignores_brackets_in_strings_and_needs_no_recursion() -> None:
    assert json_depth(b'{"a": "[[[[\\"[[", "b": [[1]]}') == 3
    assert json_depth(b"[" * 1_000_000) == 1_000_000
    assert json_depth(b"") == 0


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_read_index_refuses_hostile_headers(case: str) -> None:
    data = _object(HOSTILE[case])
    with pytest.raises(ContainerError) as info:
        read_index(lambda o, n: data[o : o + n], len(data), name="s3://b/evil.vdrc")
    message = str(info.value)
    assert message.startswith("s3://b/evil.vdrc: ") and "\n" not in message


def test_headers_of_earlier_releases_still_read() -> None:
    """A header as every release wrote it (extra fields, nulls, nested search records) passes."""
    header = {
        **GOOD,
        "codec_version": "libx264 core 165",
        "model_id": None,
        "model_sha256": None,
        "rotation": 90,
        "vfr": False,
        "color": {"color_range": 1},
        "time_base": "1/12288",
        "target": {"kind": "quality", "value": 23},
        "quality_search": {"points": [{"knob": 23, "score": [1.0, 2.0]}]},
        "source_bytes": 1234,
        "future_field": {"anything": [1, {"deep": True}]},
    }
    buffer = io.BytesIO()
    size = write_container(buffer, ContainerHeader.from_dict(header), [(0, 4, PAYLOAD)])
    data = buffer.getvalue()
    index = read_index(lambda o, n: data[o : o + n], size, name="old.vdrc")
    assert index.header.extra["quality_search"]["points"][0]["knob"] == 23


def _archive_with(tmp_path: Path, blob: bytes) -> tuple[Path, Path]:
    """OUT with one video (key `k`) whose container is `blob`, and a manifest naming it."""
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    (out / "manifest").mkdir()
    container = out / "videos" / "k.vdrc"
    container.write_bytes(blob)
    row = {
        "video_key": "k",
        "source_uri": "/src/clip.mp4",
        "status": "ok",
        "codec": "x264",
        "gop_index": 0,
        "first_frame": 0,
        "frame_count": 4,
        "offset": 8,
        "length": len(PAYLOAD),
        "crc32c": crc32c(PAYLOAD),
    }
    import pyarrow.parquet as pq

    pq.write_table(rows_to_table([row], MANIFEST_SCHEMA), out / "manifest" / "part-k.parquet")
    return out, container


def _one_line(result, code: int, needle: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    # a hand-made OUT has no video index, so a restore by name also warns that it scanned the manifest
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("warning: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


@pytest.mark.parametrize("case", ["infinite frame count", "100k nested brackets", "frame rate is a list"])
def test_inspect_restore_and_verify_refuse_hostile_objects(tmp_path: Path, case: str) -> None:
    out, container = _archive_with(tmp_path, _object(HOSTILE[case]))
    runner = CliRunner()
    _one_line(runner.invoke(app, ["inspect", str(container)]), 2, str(container))
    dest = tmp_path / "back.mkv"
    _one_line(runner.invoke(app, ["restore", str(out), "k", str(dest)]), 2, str(container))
    assert not dest.exists()
    verify = runner.invoke(app, ["verify", str(out)])
    assert verify.exit_code == 1 and str(container) in verify.stderr and "Traceback" not in verify.output


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_zeroed_magic_is_refused_by_inspect_and_restore(tmp_path: Path, size: str) -> None:
    payload = PAYLOAD if size == "small" else PAYLOAD + b"q" * (TAIL_GUESS + 1000)
    blob = _object(_header(), payload=payload, magic=b"\x00\x00\x00\x00")
    out, container = _archive_with(tmp_path, blob)
    reader = ArchiveReader(str(container))
    with pytest.raises(ContainerError, match="bad magic"):
        reader.index()
        reader.check_preamble()
    runner = CliRunner()
    _one_line(runner.invoke(app, ["inspect", str(container)]), 2, "bad magic")
    _one_line(runner.invoke(app, ["restore", str(out), "k", str(tmp_path / "v.mkv")]), 2, "bad magic")


def test_malformed_frame_timestamps_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pts = (b"\x00" * 8) * 4  # four equal timestamps: not increasing
    header = ContainerHeader.from_dict({**GOOD, "vfr": True})
    write_container(buffer, header, [(0, 4, PAYLOAD)], [(TIMESTAMPS_ATTACHMENT, pts, {"time_base": "1/0"})])
    path = tmp_path / "vfr.vdrc"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ContainerError, match="time base is malformed"):
        ArchiveReader(str(path)).timestamps()
    buffer = io.BytesIO()
    write_container(
        buffer, header, [(0, 4, PAYLOAD)], [(TIMESTAMPS_ATTACHMENT, pts, {"time_base": "1/1000"})]
    )
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ContainerError, match="do not increase"):
        ArchiveReader(str(path)).timestamps()


def test_the_index_scan_checks_attachments_too(tmp_path: Path) -> None:
    """`verify --scan index` once passed a corrupt audio attachment that restore refuses."""
    from pipeline.format.container import AUDIO_ATTACHMENT
    from pipeline.tools.verify import run_verify

    buffer = io.BytesIO()
    write_container(
        buffer,
        ContainerHeader.from_dict(GOOD),
        [(0, 4, PAYLOAD)],
        [(AUDIO_ATTACHMENT, b"\x1a\x45\xdf\xa3" * 50, {})],
    )
    blob = bytearray(buffer.getvalue())
    out, container = _archive_with(tmp_path, bytes(blob))
    index = read_index(lambda o, n: bytes(blob[o : o + n]), len(blob), name="x")
    blob[index.attachment(AUDIO_ATTACHMENT).offset + 10] ^= 0x20
    container.write_bytes(bytes(blob))
    report = run_verify(str(out), scan="index", count=1)
    assert any("attachment 'audio.mka'" in f and str(container) in f for f in report.failures), (
        report.failures
    )


# ---- issue 26: hostile time bases and frame counts -------------------------------------------------
def _vfr_object(time_base: object) -> bytes:
    """A valid container whose timestamps attachment (CRC intact) declares `time_base`."""
    buffer = io.BytesIO()
    pts = b"".join(i.to_bytes(8, "little") for i in range(4))
    write_container(
        buffer,
        ContainerHeader.from_dict({**GOOD, "vfr": True}),
        [(0, 4, PAYLOAD)],
        [(TIMESTAMPS_ATTACHMENT, pts, {"time_base": time_base})],
    )
    return buffer.getvalue()


HOSTILE_TIME_BASES = ["1e-100000000", "1/0", "0", "-1/2", "1/2/3", " 1/2", "1" * 30, "1/4294967296", "½", 1.5]


@pytest.mark.timeout(60, method="thread")  # the first case once computed 10**100000000 (a hang)
@pytest.mark.parametrize("time_base", HOSTILE_TIME_BASES, ids=repr)
def test_a_hostile_time_base_is_refused_before_any_number_is_built(tmp_path: Path, time_base: object) -> None:
    out, container = _archive_with(tmp_path, _vfr_object(time_base))
    with pytest.raises(ContainerError, match="time base is malformed"):
        ArchiveReader(str(container)).timestamps()
    dest = tmp_path / "back.mkv"
    _one_line(CliRunner().invoke(app, ["restore", str(out), "k", str(dest)]), 2, "time base is malformed")
    assert not dest.exists()


@pytest.mark.parametrize("time_base", ["1/90000", "1", "1001/30000", 12288])
def test_time_bases_every_release_wrote_still_read(tmp_path: Path, time_base: object) -> None:
    _, container = _archive_with(tmp_path, _vfr_object(time_base))
    pts, parsed = ArchiveReader(str(container)).timestamps()
    assert list(pts) == [0, 1, 2, 3] and parsed > 0


def _forged(header: dict, gops: list[tuple[int, int, bytes]]) -> bytes:
    """A container with any GOP records (first frame, frame count, payload) and a valid footer CRC."""
    preamble, body, records = b"VDRC\x01\x00\x00\x00", b"", []
    for first, count, payload in gops:
        records.append(
            GOP_RECORD.pack(first, count, len(preamble) + len(body), len(payload), crc32c(payload))
        )
        body += payload
    header_json = json.dumps(header).encode()
    footer = U32.pack(len(header_json)) + header_json + U32.pack(len(records)) + b"".join(records)
    trailer = TRAILER.pack(len(preamble) + len(body), len(footer), crc32c(footer), 1, 0, b"VDRCEND1")
    return preamble + body + footer + trailer


FORGED_COUNTS = {
    "no GOPs and no frames": ({**GOOD, "frame_count": 0}, [], "holds no GOPs"),
    "2^40 frames in empty GOPs": (
        {**GOOD, "frame_count": 256 * (2**32 - 1) + 256},
        [(i * (2**32 - 1), 2**32 - 1, b"") for i in range(256)] + [(256 * (2**32 - 1), 256, b"")],
        "empty payload",
    ),
    "header and index disagree": ({**GOOD, "frame_count": 10**9}, [(0, 4, PAYLOAD)], "GOPs cover 4 frames"),
    "GOPs that overlap": ({**GOOD, "frame_count": 8}, [(0, 4, PAYLOAD), (2, 4, PAYLOAD)], "does not follow"),
}


@pytest.mark.parametrize("case", sorted(FORGED_COUNTS))
def test_forged_frame_counts_are_refused_by_inspect_and_restore(tmp_path: Path, case: str) -> None:
    header, gops, needle = FORGED_COUNTS[case]
    out, container = _archive_with(tmp_path, _forged(header, gops))
    runner = CliRunner()
    _one_line(runner.invoke(app, ["inspect", str(container)]), 2, needle)
    dest = tmp_path / "back.mkv"
    _one_line(runner.invoke(app, ["restore", str(out), "k", str(dest)]), 2, needle)
    assert not dest.exists()


def test_restore_allocates_nothing_from_a_claimed_frame_count(tmp_path: Path) -> None:
    """A 10**7-frame GOP in 64 bytes (header and index agree): restore refuses it when the payload
    decodes to fewer frames, having allocated nothing sized by the claim (it once built every frame's
    timestamp first: 8 GB for 10**9 frames from a 109 KB file)."""
    import tracemalloc

    claimed = 10**7
    out, container = _archive_with(
        tmp_path, _forged({**GOOD, "frame_count": claimed}, [(0, claimed, PAYLOAD)])
    )
    tracemalloc.start()
    try:
        result = CliRunner().invoke(app, ["restore", str(out), "k", str(tmp_path / "back.mkv")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _one_line(result, 2, str(container))
    assert peak < claimed  # bytes: far below one byte per claimed frame
