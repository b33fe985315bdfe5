"""Seeded fuzzing of everything that parses archive bytes: the `.vdrc` container, the GLVC and GVC payload
parsers, and the GLVC, GVC and x264 decoders; and of `vidarc inspect`, which prints what it parsed.

Every target starts from a valid input and mutates it, blindly (bit flips, interesting bytes, cuts,
insertions) and with knowledge of the format (a header field set to a hostile value, or a body byte
changed, and the checksum recomputed so the mutation reaches the parser behind it). The container's
knowing mutations include the hostile cases of issue 26: a timestamps time base such as
"1e-100000000" (a hang once), frame counts that agree with the index but no payload could hold (2^40,
10^9, none at all) and header strings with rich markup and terminal escape sequences, which the
`inspect` target prints (no markup error, no raw control byte may come out). A target may accept an
input or refuse it with its documented error (`ContainerError`, `CodecError`, exit 2 for `inspect`);
any other exception is a crash, reported with the seed and iteration that reproduce it.

    python -m bench.fuzz --seconds 60            # every target for 60 s each, one JSON line per target
    python -m bench.fuzz --targets container --iterations 100000 --seed 3

The test suite runs the same harness with a fixed number of iterations (`tests/test_fuzz.py`).
Random-weight tiny models stand in for trained ones: the decoders' code paths do not depend on the
values of the weights, only their shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import struct
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import CodecError
from pipeline.format.container import (
    AUDIO_ATTACHMENT,
    GOP_RECORD,
    TIMESTAMPS_ATTACHMENT,
    TRAILER,
    U32,
    ContainerError,
    crc32c,
    read_attachment,
    read_gop,
    read_index,
    read_preamble,
)

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x5B, 0x7B, 0x22)
HOSTILE_JSON = (
    "Infinity", "-Infinity", "NaN", "1e999", "-1", "0", "18446744073709551616", "[]", "{}", '"x"', "null",
    "true", "-0.0", "1.5", "[1]", '{"a": 1}', "[" * 5000 + "]" * 5000, '"' + "\\u0000" * 10 + '"',
)  # fmt: skip
HOSTILE_TIME_BASES = (
    "1e-100000000", "1e100000000", "1/0", "0", "-1/2", "1/-2", "1.5", "nan", "inf", " 1/2", "1/2 ", "1//2",
    "9" * 40, "1/" + "9" * 40, "4294967296/1", "½", "١/٢", "", 0, -1, 1.5, None, [1, 2], {"a": 1},
)  # fmt: skip
#: Frame counts a forged index may claim while still tiling the header's count.
HOSTILE_COUNTS = (0, 1, 2**31, 2**32 - 1, 10**9, 2**40)
HOSTILE_TEXT = (
    "[/x]bad.mp4", "[bold red]x[/]", "\x1b]0;title\x07", "\x1b[2J", "\x1b[31mred", "\x9b2J", "a\nb\rc",
    "\u202etxt.exe", ":smile:", "\x00", "\\[escaped]",
)  # fmt: skip


@dataclasses.dataclass
class FuzzStats:
    target: str
    seed: int
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0
    slowest_input_seconds: float = 0.0
    crashes: list[str] = dataclasses.field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["inputs_per_second"] = round(self.inputs / self.seconds, 1) if self.seconds else None
        return record


@dataclasses.dataclass
class Target:
    """A valid `seed_input`, a mutator, and the function under test with the errors it may raise."""

    name: str
    seed_input: bytes
    mutate: Callable[[bytes, random.Random], bytes]
    run: Callable[[bytes], Any]
    refusals: tuple[type[BaseException], ...]


def run_target(
    target: Target, *, seed: int, iterations: int | None = None, seconds: float | None = None
) -> FuzzStats:
    """Fuzz one target for `iterations` inputs (deterministic) or `seconds` of wall time."""
    rng = random.Random(f"{target.name}:{seed}")
    stats = FuzzStats(target.name, seed)
    started = time.perf_counter()
    while True:
        if iterations is not None and stats.inputs >= iterations:
            break
        if seconds is not None and time.perf_counter() - started >= seconds:
            break
        data = target.mutate(target.seed_input, rng)
        stats.inputs += 1
        begun = time.perf_counter()
        try:
            target.run(data)
            stats.accepted += 1
        except target.refusals as exc:
            stats.refused += 1
            if "\n" in str(exc).strip():
                stats.crashes.append(f"input {stats.inputs}: multi-line refusal: {str(exc)[:200]!r}")
        except Exception as exc:  # anything else is a crash of the parser or decoder
            stats.crashes.append(f"input {stats.inputs}: {type(exc).__name__}: {str(exc)[:200]}")
        stats.slowest_input_seconds = max(stats.slowest_input_seconds, time.perf_counter() - begun)
    stats.seconds = time.perf_counter() - started
    return stats


# ---- blind mutations --------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four blind edits: bit flips, interesting bytes, a cut, an insertion, a zeroed range."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out += bytes([rng.randrange(256)])
        kind = rng.randrange(6)
        at = rng.randrange(len(out))
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice(INTERESTING_BYTES)
        elif kind == 2:
            del out[rng.randrange(len(out)) :]
        elif kind == 3:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4:
            width = rng.randint(1, 32)
            out[at : at + width] = bytes(len(out[at : at + width]))
        else:
            value = rng.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1))
            out[at : at + 8] = value.to_bytes(8, "little")
    return bytes(out)


# ---- the container ----------------------------------------------------------------------------------
def sample_container() -> bytes:
    """A valid object: three GOPs, audio and VFR timestamps, a header with nested records."""
    from pipeline.format.container import write_container
    from pipeline.format.container_header import ContainerHeader

    header = {
        "codec": "x264", "codec_version": "1", "width": 64, "height": 48, "frame_count": 10,
        "fps_num": 24, "fps_den": 1, "vfr": True, "rotation": 90, "time_base": "1/1000",
        "decoder_options": {}, "quality_search": {"points": [{"knob": 23, "score": 91.5}]},
    }  # fmt: skip
    gops = [(0, 4, b"g0" * 40), (4, 4, b"g1" * 30), (8, 2, b"g2" * 10)]
    pts = np.array([0, 40, 80, 200, 240, 400, 440, 480, 700, 740], dtype="<i8").tobytes()
    attachments = [
        (AUDIO_ATTACHMENT, b"\x1a\x45\xdf\xa3audio" * 5, {"codec": "aac"}),
        (TIMESTAMPS_ATTACHMENT, pts, {"time_base": "1/1000", "dtype": "<i8", "count": 10}),
    ]
    buffer = io.BytesIO()
    write_container(buffer, ContainerHeader.from_dict(header), gops, attachments)
    return buffer.getvalue()


def _split_container(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(payload area, header JSON, GOP records) of a valid object."""
    footer_offset, footer_len = TRAILER.unpack(data[-TRAILER.size :])[:2]
    footer = data[footer_offset : footer_offset + footer_len]
    (header_len,) = U32.unpack_from(footer, 0)
    header = footer[U32.size : U32.size + header_len]
    records_at = U32.size + header_len + U32.size
    records = [footer[i : i + GOP_RECORD.size] for i in range(records_at, len(footer), GOP_RECORD.size)]
    return data[:footer_offset], header, records


def _join_container(area: bytes, header: bytes, records: list[bytes]) -> bytes:
    """An object whose footer CRC and trailer are right for whatever `header` and `records` hold."""
    footer = U32.pack(len(header)) + header + U32.pack(len(records)) + b"".join(records)
    trailer = TRAILER.pack(len(area), len(footer), crc32c(footer), 1, 0, b"VDRCEND1")
    return area + footer + trailer


def mutate_container(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    area, header, records = _split_container(data)
    choice = rng.randrange(7)
    if choice == 0:  # one header field set to a hostile JSON value
        fields = json.loads(header)
        key = rng.choice([*fields, "attachments", "frame_count", "width"])
        text = json.dumps({k: v for k, v in fields.items() if k != key})
        header = (text[:-1] + f', "{key}": {rng.choice(HOSTILE_JSON)}}}').encode()
    elif choice == 1:  # blind edits inside the header JSON
        header = mutate_bytes(header, rng)
    elif choice == 2 and records:  # one GOP record field set to an extreme value
        i = rng.randrange(len(records))
        fields = list(GOP_RECORD.unpack(records[i]))
        j = rng.randrange(len(fields))
        fields[j] = rng.choice((0, 1, 2**31, 2**32 - 1)) if j in (1, 4) else rng.choice((0, 7, 8, 2**63))
        records[i] = GOP_RECORD.pack(*fields)
    elif choice == 3:  # blind edits in the payload area (the preamble, GOPs, attachments)
        area = mutate_bytes(area, rng)[: len(area)].ljust(len(area), b"\x00")
    elif choice == 4:  # the timestamps' time base, as text no reader may parse blindly
        fields = json.loads(header)
        for attachment in fields.get("attachments") or []:
            if attachment.get("name") == TIMESTAMPS_ATTACHMENT:
                attachment["info"]["time_base"] = rng.choice(HOSTILE_TIME_BASES)
        header = json.dumps(fields).encode()
    elif choice == 5:  # frame counts that agree with the index, but no payload could hold
        header, records = _forged_counts(json.loads(header), records, rng)
    else:  # a header string with markup or terminal control codes
        fields = json.loads(header)
        key = rng.choice(("source_uri", "codec_version", "model_id", "pix_fmt", "source_note", "video_key"))
        fields[key] = "".join(rng.choice(HOSTILE_TEXT) for _ in range(rng.randint(1, 3)))
        header = json.dumps(fields).encode()
    return _join_container(area, header, records)


def _forged_counts(
    fields: dict[str, Any], records: list[bytes], rng: random.Random
) -> tuple[bytes, list[bytes]]:
    """Header and GOP records whose frame counts tile (so the tiling check passes) but are hostile: one
    huge GOP, many GOPs of 2^32-1 frames up to 2^40, empty payloads, or no GOP at all."""
    kind = rng.randrange(3)
    gops = [list(GOP_RECORD.unpack(r)) for r in records]
    if kind == 0:  # one GOP claims a huge count
        gops[rng.randrange(len(gops))][1] = rng.choice(HOSTILE_COUNTS[1:5])
    elif kind == 1:  # 2^40 frames in 257 GOPs, payloads empty or the first GOP's
        first = gops[0]
        length = rng.choice((0, first[3]))
        gops = [[i * (2**32 - 1), 2**32 - 1, first[2], length, crc32c(b"") if not length else first[4]]
                for i in range(256)]  # fmt: skip
        gops.append([256 * (2**32 - 1), 256, first[2], length, gops[0][4]])
    else:  # no GOP and no frame
        gops = []
    first_frame = 0
    for gop in gops:  # contiguous first frames, whatever the counts
        gop[0] = first_frame
        first_frame += gop[1]
    fields["frame_count"] = first_frame
    return json.dumps(fields).encode(), [GOP_RECORD.pack(*gop) for gop in gops]


def parse_container(data: bytes) -> None:
    """Everything a reader does with an object: index, preamble, every GOP and attachment."""
    from pipeline.read.reader import ArchiveReader

    def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    index = read_index(read, len(data), name="fuzz.vdrc")
    read_preamble(read, name="fuzz.vdrc")
    for entry in index.gops:
        read_gop(read, entry, name="fuzz.vdrc")
    for attachment in index.attachments:
        read_attachment(read, attachment, name="fuzz.vdrc")
    reader = ArchiveReader.__new__(ArchiveReader)  # the timestamps check without a filesystem
    reader.uri, reader.read, reader._index = "fuzz.vdrc", read, index
    reader.timestamps()


def inspect_target(workdir: Path) -> Target:
    """`vidarc inspect` on a mutated object (its table printer included): exit 0 or a one-line exit 2,
    and nothing from the object reaches the terminal as markup or control codes."""
    path = workdir / "inspect.vdrc"

    def run(data: bytes) -> None:
        import contextlib

        import typer

        from jobs.inspect_archive import inspect_command

        path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                inspect_command(str(path))
            except typer.Exit as stop:
                code = stop.exit_code
        printed = out.getvalue() + err.getvalue()
        if any(ch in printed for ch in ("\x1b", "\x07", "\x9b")):
            raise AssertionError(f"a raw control character was printed: {printed[:200]!r}")
        if code not in (0, 2) or (code == 2 and len(err.getvalue().strip().splitlines()) != 1):
            raise AssertionError(f"exit {code}: {err.getvalue()[:200]!r}")
        if code == 2:
            raise InspectRefused(err.getvalue().strip())

    return Target("inspect", sample_container(), mutate_container, run, (InspectRefused,))


class InspectRefused(Exception):
    """`vidarc inspect` refused an object (exit 2, one line): the documented outcome of a bad one."""


# ---- payload parsers ----------------------------------------------------------------------------------
def mutate_fields(
    unpack: Callable[[bytes], Any],
    pack: Callable[[Any], bytes],
    fields: dict[str, Callable[[random.Random], Any]],
) -> Callable[[bytes, random.Random], bytes]:
    """A mutator that sets one or two parsed fields to random values and packs again (fresh checksums,
    whatever the format version), or edits the bytes blindly."""

    def mutate(data: bytes, rng: random.Random) -> bytes:
        if rng.random() < 0.3:
            return mutate_bytes(data, rng)
        parsed = unpack(data)
        for name in rng.sample(sorted(fields), k=min(len(fields), rng.randint(1, 2))):
            parsed = _replace(parsed, name, fields[name](rng))
        try:
            return pack(parsed)
        except (struct.error, ValueError, OverflowError):
            return mutate_bytes(data, rng)

    return mutate


def _replace(parsed: Any, name: str, value: Any) -> Any:
    if isinstance(parsed, tuple):  # (header, body)
        header, body = parsed
        if name == "body":
            return header, value(body) if callable(value) else value
        return dataclasses.replace(header, **{name: value}), body
    if name == "codebook" and callable(value):
        return dataclasses.replace(parsed, codebook=value(parsed.codebook))
    return dataclasses.replace(parsed, **{name: value})


def _any_u(bits: int) -> Callable[[random.Random], int]:
    return lambda rng: rng.choice((0, 1, 2, 3, 31, 64, 2 ** (bits - 1), 2**bits - 1, rng.randrange(2**bits)))


def _blind(rng: random.Random) -> Callable[[bytes], bytes]:
    return lambda body: mutate_bytes(body, rng)


def _float(rng: random.Random) -> float:
    return rng.choice((0.0, -1.0, 6e-22, 1e-45, 3.0, 1e30, float("inf"), float("nan"), rng.uniform(-10, 10)))


def glvc_fields() -> dict[str, Callable[[random.Random], Any]]:
    return {
        **{name: _any_u(16) for name in ("width", "height", "padded_width", "padded_height")},
        "frames": _any_u(16),
        "coded_frames": _any_u(16),
        "q_index": _any_u(8),
        "body": _blind,
    }


def gvc_fields() -> dict[str, Callable[[random.Random], Any]]:
    return {
        "width": _any_u(16),
        "height": _any_u(16),
        "frames": _any_u(16),
        "seed": _any_u(64),
        "steps": _any_u(8),
        "ode_tail": _any_u(8),
        "num_atoms": _any_u(32),
        "atoms_per_step": _any_u(16),
        "shift": _float,
        "g_scale": _float,
        "codebook": _blind,
    }


def with_gvc_checksum(data: bytes) -> bytes:
    """`data` with GVC's trailing CRC32C recomputed (so blind edits reach the parser)."""
    return data[:-4] + U32.pack(crc32c(data[:-4])) if len(data) > 4 else data


# ---- targets ----------------------------------------------------------------------------------------
def container_target() -> Target:
    return Target("container", sample_container(), mutate_container, parse_container, (ContainerError,))


def glvc_payload_target(payload: bytes) -> Target:
    from codec.glvc.bitstream import pack_payload, unpack_payload

    mutate = mutate_fields(unpack_payload, lambda p: pack_payload(*p), glvc_fields())
    return Target("glvc-payload", payload, mutate, unpack_payload, (CodecError,))


def gvc_payload_target(payload: bytes) -> Target:
    from codec.gvc.bitstream import GvcPayload

    fields = mutate_fields(GvcPayload.from_bytes, lambda p: p.to_bytes(), gvc_fields())

    def mutate(data: bytes, rng: random.Random) -> bytes:
        if rng.random() < 0.3:
            return with_gvc_checksum(mutate_bytes(data, rng))
        return fields(data, rng)

    return Target("gvc-payload", payload, mutate, GvcPayload.from_bytes, (CodecError,))


def decoder_target(name: str, codec: Any, payload: bytes, frames: int, width: int, height: int) -> Target:
    """Decode mutated payloads of one GOP: frames of the right shape, or a CodecError."""

    def run(data: bytes) -> None:
        out = codec.decode(data, frames, width, height)
        if out.shape != (frames, height, width, 3) or out.dtype != np.uint8:
            raise AssertionError(f"decoded {out.shape} {out.dtype}")

    if name.startswith("glvc"):
        mutate = glvc_payload_target(payload).mutate
    elif name.startswith("gvc"):
        mutate = gvc_payload_target(payload).mutate
    else:
        mutate = mutate_bytes
    return Target(name, payload, mutate, run, (CodecError,))


# ---- tiny models and payloads ---------------------------------------------------------------------------
def tiny_gvc_model(root: Path) -> Path:
    """A random-weight Wan VAE + Wan transformer in the layout `GvcCodec(model=...)` loads."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from codec.gvc.backbone import save_flow, tiny_flow_config
    from codec.modeldir import write_model_card

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    vae.save_pretrained(str(root / "tokenizer"), safe_serialization=True)
    flow = WanTransformer3DModel(**tiny_flow_config(latent_channels=4, text_dim=8, width=32, layers=1))
    save_flow(flow, torch.randn(1, 4, 8), root / "flow")
    write_model_card(root, name="fuzz-tiny", version="0", kind="bundle", config={})
    return root


def codec_targets(workdir: Path, names: set[str]) -> list[Target]:
    """Payload-parser and decoder targets; models and payloads built once here (random weights)."""
    from codec.base import RateTarget
    from pipeline.sources.synthetic import synthetic_clip

    fps = Fraction(24)
    targets: list[Target] = []
    if names & {"glvc-payload", "glvc-decode"}:
        from codec.glvc.codec import GlvcCodec
        from codec.glvc.random_model import build_random_model

        glvc = GlvcCodec(model=str(build_random_model(workdir / "glvc", seed=0).path))
        frames = synthetic_clip("astronaut", 1, 32, 32, seed=1)
        payload = glvc.encode(frames, RateTarget("quality", 40), fps).payload
        targets += [glvc_payload_target(payload), decoder_target("glvc-decode", glvc, payload, 1, 32, 32)]
    if names & {"gvc-payload", "gvc-decode"}:
        from codec.gvc.codec import GvcCodec

        gvc = GvcCodec(model=str(tiny_gvc_model(workdir / "gvc")), mode="i2v", steps=3, ode_tail=1, atoms=32)
        frames = synthetic_clip("astronaut", 5, 16, 16, seed=2)
        payload = gvc.encode(frames, RateTarget("quality", 2), fps).payload
        targets += [gvc_payload_target(payload), decoder_target("gvc-decode", gvc, payload, 5, 16, 16)]
    if "x264-decode" in names:
        from codec.classic import X264Codec

        x264 = X264Codec(preset="ultrafast")
        frames = synthetic_clip("astronaut", 4, 32, 16, seed=3)
        payload = x264.encode(frames, RateTarget("quality", 30), fps).payload
        targets.append(decoder_target("x264-decode", x264, payload, 4, 32, 16))
    return [t for t in targets if t.name in names]


ALL_TARGETS = (
    "container", "inspect", "glvc-payload", "gvc-payload", "glvc-decode", "gvc-decode", "x264-decode",
)  # fmt: skip


def build_targets(names: set[str], workdir: Path) -> list[Target]:
    targets = [container_target()] if "container" in names else []
    targets += [inspect_target(workdir)] if "inspect" in names else []
    return targets + codec_targets(workdir, names)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", nargs="+", default=list(ALL_TARGETS), choices=ALL_TARGETS)
    parser.add_argument("--seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help="wall time per target")
    budget.add_argument("--iterations", type=int, help="inputs per target")
    args = parser.parse_args()
    seconds = args.seconds if args.iterations is None and args.seconds is not None else None
    if args.iterations is None and seconds is None:
        seconds = 30.0
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vidarc-fuzz-") as tmp:
        for target in build_targets(set(args.targets), Path(tmp)):
            stats = run_target(target, seed=args.seed, iterations=args.iterations, seconds=seconds)
            print(json.dumps(stats.as_record()), flush=True)


if __name__ == "__main__":
    main()
