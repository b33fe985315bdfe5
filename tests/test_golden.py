"""Golden archives: every committed `.vdrc` under tests/golden/<version>/ still decodes bit for bit.

The archives were made by earlier releases (`tests/golden/make_goldens.py`, never run by CI) with every
codec; neural ones with the frozen model in tests/golden/model/. A change that makes any of them decode
differently fails here: a deliberate format change bumps a version and keeps decoding the old ones.

What "bit for bit" covers: classic codecs' pixels (libav's decoders are exact) and neural codecs' exact
part (GLVC's latent symbols; GVC's codebook entries and reference stills), always. A neural pixel decode
runs float networks whose last bits depend on the CPU's vector unit (measured: with oneDNN and ATen
limited to SSE4.1 instead of AVX-512, 1-3 of 67,584 values of each golden moved by one level). So
neural pixels must equal the recorded digest, or else stay within `PIXEL_DRIFT` of the recorded frames.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from codec.base import frames_sha256
from pipeline.read.reader import ArchiveReader

GOLDEN = Path(__file__).resolve().parent / "golden"
MODEL = GOLDEN / "model"
NEURAL = ("glvc", "gvc")
#: Neural pixels off the recorded digest: at most this many levels apart, on at most this share of values.
PIXEL_DRIFT = (1, 0.001)


def _goldens() -> list[tuple[str, str, dict]]:
    found = []
    for record_path in sorted(GOLDEN.glob("v*/goldens.json")):
        record = json.loads(record_path.read_text())
        for name, entry in sorted(record["archives"].items()):
            found.append((record_path.parent.name, name, entry))
    return found


GOLDENS = _goldens()


def test_every_codec_has_a_golden_in_the_first_version() -> None:
    first = {name for version, name, _ in GOLDENS if version == "v1"}
    assert {"x264", "x265", "av1", "glvc", "gvc-t2v", "gvc-flf2v"} <= first


@pytest.fixture(scope="module")
def decoders() -> dict:
    return {}


@pytest.mark.parametrize(("version", "name", "entry"), GOLDENS, ids=[f"{v}-{n}" for v, n, _ in GOLDENS])
def test_golden_archive_decodes_bit_for_bit(version: str, name: str, entry: dict, decoders: dict) -> None:
    path = GOLDEN / version / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["file_sha256"], "goldens are never edited"
    reader = ArchiveReader(str(path))
    header = reader.header
    assert header.codec == entry["codec"]
    model = str(MODEL) if entry["codec"] in NEURAL else None
    key = (entry["codec"], json.dumps(header.decoder_options or {}, sort_keys=True))
    if key not in decoders:
        decoders[key] = reader.decoder_for(model=model, device="cpu")
    decoder = decoders[key]
    gops = reader.index().gops
    assert len(gops) == len(entry["gops"])
    reference = None
    if entry.get("frames_file"):
        reference = np.load(GOLDEN / version / entry["frames_file"])["frames"]
    for gop, expected in zip(gops, entry["gops"], strict=True):
        payload = reader.gop(gop.index)
        frames, exact = decoder.decode_with_digest(
            payload, gop.frame_count, int(header.width), int(header.height)
        )
        label = f"{name} GOP {gop.index}"
        assert frames.shape == (gop.frame_count, header.height, header.width, 3)
        assert exact == expected["exact_sha256"], f"{label}: the exact part decodes differently"
        if frames_sha256(frames) == expected["frames_sha256"]:
            continue
        assert entry["codec"] in NEURAL, f"{label}: a classic decoder gave other pixels"
        assert reference is not None, f"{label}: other pixels, and no reference frames to measure the drift"
        recorded = reference[gop.first_frame : gop.first_frame + gop.frame_count].astype(np.int16)
        assert frames_sha256(recorded.astype(np.uint8)) == expected["frames_sha256"]
        delta = np.abs(frames.astype(np.int16) - recorded)
        levels, share = PIXEL_DRIFT
        assert delta.max() <= levels and np.mean(delta > 0) <= share, (
            f"{label}: pixels drifted by up to {delta.max()} levels on {np.mean(delta > 0):.3%} of values"
        )
