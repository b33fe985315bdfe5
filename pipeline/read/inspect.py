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

from fractions import Fraction
from typing import Any

from codec.base import bits_per_pixel, kilobits_per_second
from codec.errors import CodecError
from codec.registry import resolve_model
from pipeline.format.container import ContainerError
from pipeline.format.pack import is_pack, read_member_index, read_pack_index
from pipeline.read.reader import ArchiveReader
from pipeline.store.storage import StorageError, redact


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

    A pack object (`pipeline.format.pack`) gives its member list (one ranged read per member's index); with
    `video` (a member's key), that member is inspected like a single-video object, its GOP offsets
    absolute in the pack.

    `uri` may also be an archive root with `video` a key or source name of one of its videos: the
    video is found as `restore` finds it (`pipeline.read.locate`: a few small reads, however large the
    archive) and its object inspected."""
    if video is not None and not uri.rstrip("/").endswith(".vdrc") and _is_archive_root(uri, endpoint_url):
        from pipeline.read.restore import RestoreError, find_video

        try:
            found = find_video(uri, video, endpoint_url=endpoint_url)
        except (RestoreError, StorageError) as exc:
            raise InspectError(str(exc)) from None
        packed_key = found.video_key if found.member is not None else None
        return inspect_object(
            found.archive_uri, endpoint_url=endpoint_url, model=model, device=device, video=packed_key
        )
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
    header = index.header
    width, height = header.width, header.height
    fps = Fraction(header.fps_num or 25, header.fps_den or 1)
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
        "header": {k: v for k, v in header.to_dict().items() if k != "attachments"},
        "model": {k: getattr(header, k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
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
        width, height, frames = header.width, header.height, index.frame_count
        fps = Fraction(header.fps_num or 25, header.fps_den or 1)
        payload = sum(g.length for g in index.gops)
        members.append(
            {
                "video_key": member.video_key,
                "offset": member.offset,
                "length": member.length,
                "codec": header.codec,
                "width": width,
                "height": height,
                "frames": frames,
                "gops": len(index.gops),
                "source_uri": header.source_uri,
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
        "codec": header.codec,
        "options": header.decoder_options or {},
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


def _is_archive_root(uri: str, endpoint_url: str | None) -> bool:
    """Whether `uri` is an archive's root folder (it has markers/ or manifest/), not an object."""
    from pipeline.store.storage import filesystem, join

    try:
        fs, root = filesystem(uri, endpoint_url=endpoint_url)
        return any(fs.isdir(join(root, name)) for name in ("markers", "manifest"))
    except Exception:
        return False
