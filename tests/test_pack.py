"""The pack object (`pipeline/format/pack.py`): members written back to back, each read alone with ranged
reads like a single-video object; the pack index is bounds-checked; a single-video reader refuses a pack
in one line; single-video objects of earlier releases still read."""

from __future__ import annotations

import io

import pytest

from pipeline.format.container import ContainerError, read_index, write_container
from pipeline.format.container_header import ContainerHeader
from pipeline.format.pack import PackWriter, is_pack, read_member_index, read_pack_index


def _header(frames: int, key: str) -> ContainerHeader:
    return ContainerHeader(frame_count=frames, width=8, height=8, codec="x264", video_key=key)


def _pack() -> tuple[bytes, list[tuple[str, list[bytes]]]]:
    videos = [(f"clip-{i}", [bytes([i, g]) * (10 + g) for g in range(1 + i)]) for i in range(4)]
    buffer = io.BytesIO()
    writer = PackWriter(buffer)
    for key, payloads in videos:
        gops = [(2 * g, 2, p) for g, p in enumerate(payloads)]
        writer.add(key, _header(2 * len(payloads), key), gops, [("note.txt", key.encode(), {})])
    size = writer.close()
    data = buffer.getvalue()
    assert size == len(data)
    return data, videos


def _reader(data: bytes):
    reads: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    return read, reads


def test_each_member_reads_alone_with_ranged_reads() -> None:
    data, videos = _pack()
    read, reads = _reader(data)
    assert is_pack(read, len(data))
    index = read_pack_index(read, len(data), name="s3://b/packs/p.vdrc")
    assert [m.video_key for m in index.members] == [k for k, _ in videos]
    for member, (key, payloads) in zip(index.members, videos, strict=True):
        reads.clear()
        member_index = read_member_index(read, member, name="s3://b/packs/p.vdrc")
        assert len(reads) == 1 and member_index.header.video_key == key  # one ranged read: its footer
        for entry, payload in zip(member_index.gops, payloads, strict=True):
            absolute = member.offset + entry.offset
            assert data[absolute : absolute + entry.length] == payload
        # the member's bytes are a complete single-video object
        alone = data[member.offset : member.offset + member.length]
        assert read_index(lambda o, n, b=alone: b[o : o + n], len(alone), name=key).header.video_key == key


def test_single_video_readers_and_writers_are_unchanged() -> None:
    data, _ = _pack()
    with pytest.raises(ContainerError, match=r"no \.vdrc trailer"):  # an earlier release's reader
        read_index(_reader(data)[0], len(data), name="p.vdrc")
    single = io.BytesIO()
    size = write_container(single, _header(2, "one"), [(0, 2, b"payload")])
    read = _reader(single.getvalue())[0]
    assert not is_pack(read, size) and read_index(read, size, name="one.vdrc").header.video_key == "one"
    with pytest.raises(ContainerError, match="no pack trailer"):
        read_pack_index(read, size, name="one.vdrc")


@pytest.mark.parametrize(
    "damage",
    ["truncate", "index_byte", "trailer_offset", "member_offset"],
)
def test_a_damaged_pack_index_is_a_one_line_error(damage: str) -> None:
    data, _ = _pack()
    index = read_pack_index(_reader(data)[0], len(data), name="p")
    last = index.members[-1]
    index_start = last.offset + last.length
    broken = bytearray(data)
    if damage == "truncate":
        broken = broken[:-5]
    elif damage == "index_byte":
        broken[index_start + 10] ^= 0xFF
    elif damage == "trailer_offset":
        broken[-28] ^= 0x01
    else:  # a consistent CRC over a lying index: members no longer tile the pack
        import json
        import struct

        from pipeline.format.container import TRAILER, crc32c

        body = json.dumps(
            {"members": [[m.video_key, m.offset + 1, m.length] for m in index.members]}
        ).encode()
        blob = struct.pack("<I", len(body)) + body
        trailer = TRAILER.pack(index_start, len(blob), crc32c(blob), 2, 0, b"VDRCPAK1")
        broken = bytearray(data[:index_start] + blob + trailer)
    with pytest.raises(ContainerError) as error:
        read_pack_index(_reader(bytes(broken))[0], len(broken), name="s3://b/packs/p.vdrc")
    assert str(error.value).startswith("s3://b/packs/p.vdrc: ") and "\n" not in str(error.value)


def test_a_damaged_pack_part_names_its_members_once(tmp_path) -> None:
    """A committed pack whose manifest part is damaged: `ls` lists each member as damaged (naming the
    part), and `verify` reports the part once, not each member again as a done video without rows."""
    from pipeline.audit.videos import list_archive
    from pipeline.format.runinfo import pack_manifest_path, pack_marker_path, write_json
    from pipeline.format.schema import MANIFEST_SCHEMA
    from pipeline.read.manifest import parquet_bytes
    from pipeline.store.storage import filesystem, write_bytes
    from pipeline.tools.verify import run_verify

    out = str(tmp_path / "out")
    fs, root = filesystem(out)
    members = ["clip-a", "clip-b"]
    rows = [{"run_id": "r1", "video_key": k, "gop_index": 0, "status": "ok"} for k in members]
    data = parquet_bytes(rows, MANIFEST_SCHEMA)
    write_bytes(fs, pack_manifest_path(root, "r1-000001"), data[: len(data) // 2])  # truncated
    write_json(fs, pack_marker_path(root, "r1-000001"), {"pack_id": "r1-000001", "members": members})

    listed = {v.video_key: v for v in list_archive(out)}
    assert sorted(listed) == members and {v.status for v in listed.values()} == {"damaged"}
    assert all("pack-r1-000001.parquet" in (v.error or "") for v in listed.values())
    report = run_verify(out, count=1)
    assert len(report.failures) == 1 and "2 packed videos (clip-a, clip-b)" in report.failures[0]
