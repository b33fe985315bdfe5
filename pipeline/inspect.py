"""Looking inside an archive: one object's header and GOP index (`inspect`), or its videos (`ls`).

`inspect_object` reads the object's tail (one ranged GET for the index), and of a payload that ends
with its own CRC-32C (GLVC format 2, GVC) those 4 bytes: the index's CRC of such a payload is the
CRC-32C residue, the same for every GOP, so the payload's own CRC is what tells the GOPs apart. It
names the decoder the header asks for (codec, `decoder_options`, the model directory it would load);
with `model` it also builds that decoder, which refuses weights other than the header's sha256.
`list_archive` reads the manifest and the done/failed markers, never the containers.

Rates follow the standard definitions: bpp = bits / (width · height · frames); kbps over the frames'
duration at the recorded rate. A video's mean PSNR / MS-SSIM in `ls` is the frame-weighted mean of its
GOPs' values over the GOPs that were measured (null when none was: never a made-up value).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from fractions import Fraction
from typing import Any

from codec.base import bits_per_pixel, kilobits_per_second
from codec.errors import CodecError
from codec.registry import resolve_model
from pipeline.container import ContainerError
from pipeline.manifest import ArchiveParts, DamagedPart, PartsError
from pipeline.manifest_layout import done_keys
from pipeline.pack import is_pack, read_member_index, read_pack_index
from pipeline.reader import ArchiveReader
from pipeline.runinfo import list_markers
from pipeline.storage import StorageError, check_reachable, filesystem, redact


class InspectError(Exception):
    """The object or archive cannot be read; one line naming it."""


def inspect_object(
    uri: str,
    *,
    endpoint_url: str | None = None,
    model: str | None = None,
    device: str = "cpu",
    video: str | None = None,
) -> dict[str, Any]:
    """Header, model, decoder, attachments, GOP index with per-GOP rates, and totals of one `.vdrc`
    object. With `model`, the decoder is built on `device` (loads and checks the weights).

    A pack object (`pipeline.pack`) gives its member list (one ranged read per member's index); with
    `video` (a member's key), that member is inspected like a single-video object, its GOP offsets
    absolute in the pack."""
    try:
        reader = ArchiveReader(uri, endpoint_url=endpoint_url)
        size = reader.size
        packed = is_pack(reader.read, size)
    except FileNotFoundError:
        raise InspectError(f"{uri}: no such object") from None
    except StorageError as exc:
        raise InspectError(str(exc)) from None
    except Exception as exc:
        raise InspectError(f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})") from None
    member = None
    try:
        if packed:
            pack = read_pack_index(reader.read, size, name=uri)
            if video is None:
                return _pack_report(uri, reader, pack)
            member = pack.member(video)
            if member is None:
                raise InspectError(f"{uri}: no video {video!r} in this pack ({len(pack.members)} videos)")
            reader = ArchiveReader(uri, endpoint_url=endpoint_url, member=(member.offset, member.length))
        elif video is not None:
            raise InspectError(f"{uri}: --video applies to a pack object; this one holds a single video")
        index = reader.index()
        reader.check_preamble()
    except ContainerError as exc:
        raise InspectError(str(exc)) from None
    except Exception as exc:  # storage errors while reading the tail
        raise InspectError(f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})") from None
    decoder = _decoder(reader, model, device)
    own_crcs = _own_crcs(reader, index.gops, uri)
    header = {k: v for k, v in index.header.items() if k != "attachments"}
    width, height = int(header["width"]), int(header["height"])
    fps = Fraction(int(header.get("fps_num") or 25), int(header.get("fps_den") or 1))
    gops = [
        {
            "index": g.index,
            "first_frame": g.first_frame,
            "frame_count": g.frame_count,
            "offset": g.offset + (member.offset if member else 0),
            "length": g.length,
            "crc32c": f"{g.crc32c:08x}",
            "payload_crc32c": own_crcs.get(g.index),  # the payload's own CRC, where it ends with one
            "bpp": bits_per_pixel(g.length, width, height, g.frame_count),
            "kbps": kilobits_per_second(g.length, g.frame_count, fps),
        }
        for g in index.gops
    ]
    payload = sum(g.length for g in index.gops)
    frames = index.frame_count
    return {
        "uri": uri,
        "object_bytes": size,
        **(
            {"pack_member": {"video_key": video, "offset": member.offset, "length": member.length}}
            if member
            else {}
        ),
        "header": header,
        "model": {k: header.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
        "decoder": decoder,
        "attachments": [
            {"name": a.name, "bytes": a.length, "crc32c": f"{a.crc32c:08x}", "info": a.info}
            for a in index.attachments
        ],
        "gops": gops,
        "totals": {
            "frames": frames,
            "gops": len(gops),
            "payload_bytes": payload,
            "bpp": bits_per_pixel(payload, width, height, frames),
            "kbps": kilobits_per_second(payload, frames, fps),
            "object_bpp": bits_per_pixel(member.length if member else size, width, height, frames),
            "seconds": float(frames / fps),
        },
    }


#: crc32c(data + crc32c(data) as 4 little-endian bytes) is this constant, whatever the data.
CRC32C_RESIDUE = 0x48674BC7


def _own_crcs(reader: ArchiveReader, gops: list[Any], uri: str) -> dict[int, str]:
    """GOP index -> the CRC-32C a payload stores in its last 4 bytes, for GOPs whose index CRC is the
    residue (the payload ends with its own CRC): 4 bytes per such GOP, read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = [g for g in gops if g.crc32c == CRC32C_RESIDUE and g.length >= 4]
    if not wanted:
        return {}

    def tail(entry: Any) -> str:
        data = reader.read(entry.offset + entry.length - 4, 4)
        return f"{int.from_bytes(data, 'little'):08x}" if len(data) == 4 else "?"

    try:
        with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
            return {g.index: crc for g, crc in zip(wanted, pool.map(tail, wanted), strict=True)}
    except Exception as exc:  # storage errors while reading the tails
        raise InspectError(f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})") from None


def _pack_report(uri: str, reader: ArchiveReader, pack: Any) -> dict[str, Any]:
    """A pack's members: each one's key, range, codec, geometry, frames, GOPs and rates."""
    members = []
    for member in pack.members:
        index = read_member_index(reader.read, member, name=uri)
        header = index.header
        width, height, frames = int(header["width"]), int(header["height"]), index.frame_count
        fps = Fraction(int(header.get("fps_num") or 25), int(header.get("fps_den") or 1))
        payload = sum(g.length for g in index.gops)
        members.append(
            {
                "video_key": member.video_key,
                "offset": member.offset,
                "length": member.length,
                "codec": header.get("codec"),
                "width": width,
                "height": height,
                "frames": frames,
                "gops": len(index.gops),
                "source_uri": header.get("source_uri"),
                "bpp": bits_per_pixel(payload, width, height, frames),
                "kbps": kilobits_per_second(payload, frames, fps),
            }
        )
    return {
        "uri": uri,
        "object_bytes": pack.size,
        "kind": "pack",
        "members": members,
        "totals": {
            "videos": len(members),
            "frames": sum(m["frames"] for m in members),
            "member_bytes": sum(m["length"] for m in members),
        },
    }


def _decoder(reader: ArchiveReader, model: str | None, device: str) -> dict[str, Any]:
    """The decoder the header asks for; built only when the user names a model (weights load then)."""
    header = reader.header
    record: dict[str, Any] = {
        "codec": header.get("codec"),
        "options": header.get("decoder_options") or {},
        "model_dir": resolve_model(header, model),
        "weights_checked": False,
    }
    if model is not None:
        try:
            reader.decoder_for(model=model, device=device)
        except CodecError as exc:
            raise InspectError(str(exc).splitlines()[0]) from None
        record["weights_checked"] = True
    return record


@dataclasses.dataclass(frozen=True)
class VideoListing:
    video_key: str
    source_uri: str | None
    status: str  # ok | failed | incomplete | damaged
    codec: str | None
    width: int | None
    height: int | None
    frames: int
    gops: int
    payload_bytes: int
    bpp: float | None
    kbps: float | None
    psnr: float | None
    ms_ssim: float | None
    error: str | None


def list_archive(out: str, *, endpoint_url: str | None = None) -> list[VideoListing]:
    """Every video the archive knows of, from its manifest rows and markers.

    Status: `ok` (done marker and ok rows), `failed` (a failed row or marker), `incomplete` (rows
    without a done marker, or a marker without rows: a run stopped between commit steps), `damaged`
    (its manifest part does not parse; `error` names the part — the other videos list normally).
    """
    try:
        fs, root = filesystem(out, endpoint_url=endpoint_url)
        check_reachable(fs, root, out, must_exist=True)
        parts = ArchiveParts(out, "manifest", endpoint_url=endpoint_url)
        done, failed = done_keys(fs, root), list_markers(fs, root, "failed")
        columns = [
            "video_key", "source_uri", "status", "codec", "width", "height", "frame_count", "fps_num",
            "fps_den", "fps", "payload_bytes", "psnr", "ms_ssim", "error", "gop_index",
        ]  # fmt: skip
        rows = parts.read(columns).to_pylist()  # each row once: parts, packs, compacted files
    except (StorageError, PartsError) as exc:
        raise InspectError(str(exc)) from None
    except Exception as exc:
        raise InspectError(
            f"{out}: cannot read the archive ({type(exc).__name__}: {redact(str(exc))})"
        ) from None
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_video[row["video_key"]].append(row)
    damaged = parts.damaged_keys()
    for key in done | failed | set(damaged):
        by_video.setdefault(key, [])
    listings = []
    for key in sorted(by_video):
        if key in damaged:
            listings.append(_damaged_listing(key, damaged[key]))
        else:
            listings.append(_listing(key, by_video[key], key in done, key in failed))
    return listings


def _damaged_listing(key: str, part: DamagedPart) -> VideoListing:
    return VideoListing(
        video_key=key, source_uri=None, status="damaged", codec=None, width=None, height=None, frames=0,
        gops=0, payload_bytes=0, bpp=None, kbps=None, psnr=None, ms_ssim=None, error=part.line(),
    )  # fmt: skip


def _listing(key: str, rows: list[dict[str, Any]], done: bool, failed: bool) -> VideoListing:
    ok_rows = [r for r in rows if r["status"] == "ok"]
    failed_rows = [r for r in rows if r["status"] != "ok"]
    if failed_rows or (failed and not done):
        status = "failed"
    elif ok_rows and done:
        status = "ok"
    else:
        status = "incomplete"
    first = (ok_rows or rows or [{}])[0]
    frames = sum(r["frame_count"] or 0 for r in ok_rows)
    payload = sum(r["payload_bytes"] or 0 for r in ok_rows)
    width, height = first.get("width"), first.get("height")
    bpp = kbps = None
    if ok_rows and frames and width and height:
        bpp = bits_per_pixel(payload, width, height, frames)
        if first.get("fps_num") and first.get("fps_den"):
            kbps = kilobits_per_second(payload, frames, Fraction(first["fps_num"], first["fps_den"]))
        elif first.get("fps"):
            kbps = 8.0 * payload / (frames / first["fps"]) / 1000.0
    return VideoListing(
        video_key=key,
        source_uri=first.get("source_uri"),
        status=status,
        codec=first.get("codec"),
        width=width,
        height=height,
        frames=frames,
        gops=len(ok_rows),
        payload_bytes=payload,
        bpp=bpp,
        kbps=kbps,
        psnr=_weighted_mean(ok_rows, "psnr"),
        ms_ssim=_weighted_mean(ok_rows, "ms_ssim"),
        error=next((r["error"] for r in failed_rows if r.get("error")), None),
    )


def _weighted_mean(rows: list[dict[str, Any]], column: str) -> float | None:
    measured = [(r[column], r["frame_count"] or 0) for r in rows if r.get(column) is not None]
    weight = sum(w for _, w in measured)
    if not measured or weight == 0:
        return None
    return sum(v * w for v, w in measured) / weight
