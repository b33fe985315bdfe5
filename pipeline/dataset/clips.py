"""Fetching selected GOPs by ranged reads and turning them into clip rows (frames and/or latents).

The shared engine of the Ray datasource, the torch dataset and `vidarc export`: Ray-free and
torch-free itself (a neural decoder brings torch with it). Reads go through `pipeline.read.reader`: an
object's index with one ranged read from its end (kept while the object is in use), then one ranged
read per selected GOP, CRC-checked, so every selected GOP is fetched exactly once and nothing else.
Decoders are the ones the header asks for (`decoder_for`), built once per process and reused.

Latents (`output="latents"`) come from GLVC's entropy decode alone (`GlvcCodec.decode_latents`): no
tokenizer decode. They are normalised as Wan pipelines expect ((z - latents_mean) / latents_std) and
cropped to the frame area (ceil(H/8) x ceil(W/8) for the Wan VAE; the codec codes a 32-pixel-padded
picture), shaped [C, F, h, w] with F = 1 + ceil((frames - 1) / 4) latent frames.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from codec.base import Codec
from codec.errors import CodecError
from pipeline.dataset.plan import ClipSpec, DatasetError, GopRef, ObjectPlan
from pipeline.format.container import ContainerError, GopEntry
from pipeline.format.container_header import ContainerHeader
from pipeline.read.reader import ArchiveReader, decode_payload, decoder_key, header_decoder
from pipeline.store.storage import redact

_READERS_KEPT = 64  # indexes kept per process (a few KB each) while reading GOPs in shuffled order
_DECODERS_KEPT = 4  # decoders kept per process (a neural one holds its weights)
_DECODERS: collections.OrderedDict[tuple[Any, ...], Codec] = collections.OrderedDict()
_DECODERS_LOCK = threading.Lock()
#: Held while a decoder that is not `thread_safe` decodes (GOPs may be decoded on several threads).
_ONE_AT_A_TIME = threading.Lock()


@dataclasses.dataclass(frozen=True)
class GopPayload:
    """One fetched GOP: its payload, its object's header, and the bytes its fetch cost."""

    archive_uri: str
    video_key: str
    gop: GopRef
    entry: GopEntry
    header: ContainerHeader
    payload: bytes
    bytes_read: int  # this GOP's ranged read, plus the index read if this GOP triggered it

    def to_row(self) -> dict[str, Any]:
        """Plain values for a Ray block: the manifest columns as themselves, the rest packed (the decode
        stage rebuilds the payload with `from_row`)."""
        gop = {k: v for k, v in dataclasses.asdict(self.gop).items() if k != "values"}
        return {
            **self.gop.column_values(),
            "_archive_uri": self.archive_uri,
            "_video_key": self.video_key,
            "_gop": json.dumps(gop),
            "_entry": json.dumps(dataclasses.asdict(self.entry)),
            "_header": self.header.to_json().decode(),
            "_payload": self.payload,
            "_bytes_read": self.bytes_read,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], columns: tuple[str, ...]) -> GopPayload:
        gop = GopRef(**json.loads(row["_gop"]), values=tuple((c, row[c]) for c in columns))
        return cls(
            archive_uri=row["_archive_uri"],
            video_key=row["_video_key"],
            gop=gop,
            entry=GopEntry(**json.loads(row["_entry"])),
            header=ContainerHeader.from_dict(json.loads(row["_header"])),
            payload=bytes(row["_payload"]),
            bytes_read=int(row["_bytes_read"]),
        )


class ClipReader:
    """Reads selected GOPs (`read_object`, `read_gop`) and decodes them into clip rows (`clips`).

    `reads` and `bytes_read` count every ranged read this reader made (indexes and payloads), so a
    caller can check that a filter pruned GOPs before any payload was fetched.
    """

    def __init__(
        self,
        spec: ClipSpec,
        columns: tuple[str, ...],
        *,
        endpoint_url: str | None = None,
        device: str = "cpu",
        model: str | None = None,
    ) -> None:
        self.spec, self.columns = spec, columns
        self.endpoint_url, self.device, self.model = endpoint_url, device, model
        self._readers: collections.OrderedDict[tuple[str, Any], ArchiveReader] = collections.OrderedDict()
        self.reads = 0
        self.bytes_read = 0

    # -- fetching ---------------------------------------------------------------------------------------
    def read_object(self, obj: ObjectPlan) -> Iterator[GopPayload]:
        """Every selected GOP of one object: one index read, then one ranged read per GOP."""
        try:
            for gop in obj.gops:
                yield self.read_gop(obj, gop)
        finally:
            self._readers.pop((obj.archive_uri, obj.member), None)  # done with this object

    def header(self, uri: str, member: tuple[int, int] | None = None) -> ContainerHeader:
        """An object's container header (its index is read on first use and kept); `member`: a packed
        video's range in its pack."""
        reader = self._reader(uri, member)
        with self._reading(reader, uri):
            return reader.header

    def read_gop(self, obj: ObjectPlan, gop: GopRef) -> GopPayload:
        """One selected GOP (the object's index is read on first use and kept for the next GOPs)."""
        uri = obj.archive_uri
        reader = self._reader(uri, obj.member)
        before = reader.bytes_read
        with self._reading(reader, uri):
            header = reader.header
            entry = reader.entry(gop.gop_index)
            if (entry.first_frame, entry.frame_count) != (gop.first_frame, gop.frame_count):
                raise DatasetError(
                    f"{uri}: GOP {gop.gop_index} holds frames {entry.first_frame}+{entry.frame_count} but "
                    f"the manifest says {gop.first_frame}+{gop.frame_count} (manifest and archive disagree)"
                )
            payload = reader.gop(gop.gop_index)
        return GopPayload(uri, obj.video_key, gop, entry, header, payload, reader.bytes_read - before)

    @contextlib.contextmanager
    def _reading(self, reader: ArchiveReader, uri: str) -> Iterator[None]:
        """Count the block's ranged reads; word its errors as one line naming the object."""
        before_reads, before_bytes = reader.read.reads, reader.bytes_read
        try:
            yield
        except DatasetError:
            raise
        except ContainerError as exc:
            raise DatasetError(str(exc).splitlines()[0]) from None
        except FileNotFoundError:
            raise DatasetError(f"{uri}: archive object is missing") from None
        except Exception as exc:  # storage errors: unreachable endpoint, no rights, ...
            raise DatasetError(f"{uri}: cannot read ({type(exc).__name__}: {redact(str(exc))})") from None
        finally:
            self.reads += reader.read.reads - before_reads
            self.bytes_read += reader.bytes_read - before_bytes

    def _reader(self, uri: str, member: tuple[int, int] | None = None) -> ArchiveReader:
        key = (uri, member)
        reader = self._readers.pop(key, None) or ArchiveReader(
            uri, endpoint_url=self.endpoint_url, member=member
        )
        self._readers[key] = reader
        while len(self._readers) > _READERS_KEPT:
            self._readers.popitem(last=False)
        return reader

    # -- decoding ---------------------------------------------------------------------------------------
    def clips(self, fetched: GopPayload) -> list[dict[str, Any]]:
        """The clip rows of one fetched GOP: manifest columns, the clip's place, frames and/or latents.

        `bytes_read` is the GOP's fetch cost, counted on its first clip (0 on the others), so a sum
        over rows is the bytes the read fetched.
        """
        decoder = self.decoder(fetched.header, fetched.archive_uri)
        frames = latents = None
        space: dict[str, Any] = {}
        with contextlib.nullcontext() if decoder.thread_safe else _ONE_AT_A_TIME:
            if self.spec.wants_frames:
                frames = decode_payload(
                    decoder, fetched.payload, fetched.entry, fetched.header, name=fetched.archive_uri
                )
            if self.spec.wants_latents:
                latents, space = self._latents(decoder, fetched)
        base = fetched.gop.column_values()
        rows = []
        for number, (start, count) in enumerate(self.spec.windows(fetched.gop.frame_count)):
            row = dict(base)
            row.update(
                video_key=fetched.video_key,
                gop_index=fetched.gop.gop_index,
                first_frame=fetched.gop.first_frame + start,
                frame_count=count,
                bytes_read=fetched.bytes_read if number == 0 else 0,
            )
            if frames is not None:
                row["frames"] = frames[start : start + count]
            if latents is not None:
                row["latents"] = latents
                row.update(space)
            rows.append(row)
        return rows

    def decoder(self, header: ContainerHeader, uri: str) -> Codec:
        """The decoder `header` asks for, built once per process (per model and device) and reused.

        Thread-safe: GOPs decoded side by side (`vidarc export`) ask at once, and a decoder that is not
        built yet must be built once, not once per thread (a neural one loads its weights)."""
        key = (*decoder_key(header), self.model, self.device)
        with _DECODERS_LOCK:
            decoder = _DECODERS.pop(key, None)
            if decoder is None:
                try:
                    decoder = header_decoder(header, model=self.model, device=self.device, name=uri)
                except CodecError as exc:
                    raise DatasetError(str(exc).splitlines()[0]) from None
            _DECODERS[key] = decoder
            while len(_DECODERS) > _DECODERS_KEPT:
                _DECODERS.popitem(last=False)
        return decoder

    def _latents(self, decoder: Codec, fetched: GopPayload) -> tuple[np.ndarray, dict[str, Any]]:
        decode_latents = getattr(decoder, "decode_latents", None)
        if decode_latents is None:
            raise DatasetError(
                f"{fetched.archive_uri}: {decoder.name} archives hold no latents (only GLVC's entropy "
                "decode yields tokenizer latents); read frames instead"
            )
        width, height = fetched.header.width, fetched.header.height
        try:
            coded = decode_latents(fetched.payload, fetched.entry.frame_count, width, height)
        except CodecError as exc:
            raise DatasetError(
                f"{fetched.archive_uri}: GOP {fetched.entry.index}: {str(exc).splitlines()[0]}"
            ) from None
        space = decoder.latent_space()
        factor = int(space["spatial_factor"])
        cropped = coded[0, :, :, : math.ceil(height / factor), : math.ceil(width / factor)]
        values = {
            "tokenizer_id": space["tokenizer_id"],
            "latents_mean": np.asarray(space["latents_mean"], dtype=np.float32),
            "latents_std": np.asarray(space["latents_std"], dtype=np.float32),
        }
        return np.ascontiguousarray(cropped.detach().float().cpu().numpy()), values
