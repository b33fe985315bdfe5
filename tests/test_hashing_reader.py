"""`HashingReader`: the sha256 of the whole object whatever the demuxer's read order, in about one pass."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import av
import pytest

from pipeline.sources.hashing_reader import HashingReader

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_any_read_and_seek_order_gives_the_whole_objects_digest():
    data = random.Random(0).randbytes(100_000)
    want = hashlib.sha256(data).hexdigest()
    rng = random.Random(1)
    for _ in range(50):
        reader = HashingReader(io.BytesIO(data))
        for _ in range(rng.randrange(0, 30)):
            if rng.random() < 0.3:
                reader.seek(rng.randrange(0, len(data)))
            reader.read(rng.choice([-1, 1, 7, 4096, 50_000]))
        assert reader.finish() == want
    empty = HashingReader(io.BytesIO(b""))
    assert empty.finish() == hashlib.sha256(b"").hexdigest()


def test_sequential_reading_needs_no_second_pass():
    data = random.Random(2).randbytes(10_000)
    reader = HashingReader(io.BytesIO(data))
    while reader.read(1000):
        pass
    assert reader.finish() == hashlib.sha256(data).hexdigest()
    assert reader.bytes_read == len(data)  # finish read nothing more
    assert reader.tell() == len(data)


@pytest.mark.parametrize("name", ["cat-pan.mp4", "coins-drift.mp4"])
def test_demuxing_a_real_file_hashes_it_in_about_one_pass(name: str):
    """What the probe does: demux every packet through the reader, then finish the hash. An MP4 with
    its index at the end is read out of order, yet the object is read about once in all."""
    data = (SAMPLES / name).read_bytes()
    reader = HashingReader(io.BytesIO(data))
    with av.open(reader, mode="r") as container:
        packets = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    assert packets > 0
    assert reader.finish() == hashlib.sha256(data).hexdigest()
    assert reader.bytes_read < 1.1 * len(data) + 65_536, (reader.bytes_read, len(data))
