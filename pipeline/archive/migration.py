"""`vidarc migrate OUT NEW_OUT`: an archive run whose sources are another archive's videos.

A migration is an ordinary `run_archive` (resumable, sharded, leased, verified) with two differences,
both here:
- the work stream (`Selection`) is the parent archive's done videos, selected by `--where` (a video is
  migrated whole when any of its manifest rows matches) and `--video KEY`, read from its manifest in
  key order (`manifest_videos.iter_videos`: memory flat in the archive's size), never from a listing of
  sources. Entries keep the parent's video key, so NEW_OUT's done markers, leases and shards work
  unchanged, and the original `source_uri`, so the lineage reaches back to the source;
- each entry is "probed" from its parent's container (`probe_parent`: header, index and timestamps in
  one ranged read; the original source is not read), and its GOPs are decoded from the parent's GOPs
  (`pipeline.read.archived_source`), so the new encode's quality columns measure it against the frames it
  was given: the parent's decode. `source_quality` adds `source_psnr` against the original source
  where it still exists.

Lineage (`VideoJob.lineage`, on every manifest row and in the container header): `generation` (the
parent's + 1; 1 for a parent that predates the column), `parent_archive_uri` (its object under OUT),
`parent_object_sha256` (from its manifest row; computed from the object for an archive that did not
record it) and `parent_video_key`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.archive.config import MigrationSpec
from pipeline.archive.discovery import ProbeOutcome, SourceEntry
from pipeline.format.runinfo import marker_keyset
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.archived_source import ParentRef, describe, object_sha256
from pipeline.read.manifest import ArchiveParts, DamagedPart, PartsError
from pipeline.read.manifest_layout import container_location
from pipeline.sources import media
from pipeline.store.storage import describe as describe_error
from pipeline.store.storage import filesystem, full_uri, is_transient

_COLUMNS = [
    "status", "source_uri", "source_bytes", "generation", "object_sha256", "archive_uri", "member_offset",
    "member_length", "codec",
]  # fmt: skip
_FIRSTS = [c for c in _COLUMNS if c != "status"]
#: Header fields a migrated video keeps from its parent: what is known of the original source.
INHERITED = (
    "source_sha256", "source_bit_depth", "source_chroma", "source_frames_declared", "source_format",
    "source_codec", "pix_fmt", "source_metadata",
)  # fmt: skip


class MigrationError(Exception):
    """The parent archive cannot be migrated as asked (not an archive, bad filter): one line."""


class Selection:
    """The parent archive's done videos that match, in key order (`entries()`); `matched` and
    `damaged` fill in as the stream is consumed."""

    def __init__(self, parent: str, spec: MigrationSpec, *, endpoint_url: str | None = None) -> None:
        from pipeline.audit.filters import FilterError, parse_filter

        self.parent, self.spec, self.endpoint_url = parent, spec, endpoint_url
        try:
            self.expression = parse_filter(spec.where, MANIFEST_SCHEMA) if spec.where else None
        except FilterError as exc:
            raise MigrationError(str(exc)) from None
        if spec.keys:
            keys = ds.field("video_key").isin(list(spec.keys))
            self.expression = keys if self.expression is None else self.expression & keys
        self.fs, self.root = filesystem(parent, endpoint_url=endpoint_url)
        try:
            self.parts = ArchiveParts(parent, "manifest", endpoint_url=endpoint_url)
        except PartsError as exc:
            raise MigrationError(str(exc)) from None
        if not len(self.parts):
            raise MigrationError(f"{parent}: not a vidarc archive (no manifest/*.parquet)")
        self.matched = 0
        self.damaged: list[DamagedPart] = []

    def describe(self) -> str:
        """The selection in words, for messages."""
        parts = [f"--where {self.spec.where!r}"] if self.spec.where else []
        parts += [f"--video {k}" for k in self.spec.keys[:3]] + (["..."] if len(self.spec.keys) > 3 else [])
        return " ".join(parts) or "(every video)"

    def entries(self) -> Iterator[SourceEntry]:
        """One `SourceEntry` per selected done video of the parent, in key order."""
        from pipeline.read.manifest_videos import iter_videos

        done = marker_keyset(self.fs, self.root, "done")
        columns = list(_COLUMNS)
        if self.expression is not None:
            from pipeline.read.manifest import referenced_columns

            columns += [c for c in referenced_columns(self.expression, MANIFEST_SCHEMA) if c not in columns]
        records = iter_videos(self.parts.plan, columns, self._per_table, on_damage=self._on_damage)
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= 1000:
                yield from self._done_only(batch, done)
                batch = []
        yield from self._done_only(batch, done)

    def _done_only(self, records: list[dict[str, Any]], done: Any) -> Iterator[SourceEntry]:
        flags = done.contains_many([r["video_key"] for r in records]) if records else []
        for record, is_done in zip(records, flags, strict=True):
            if is_done:
                self.matched += 1
                yield self._entry(record)

    def _entry(self, record: dict[str, Any]) -> SourceEntry:
        key = record["video_key"]
        path, member = container_location(self.fs, self.root, {"video_key": key, **record})
        parent = ParentRef(
            out=self.parent,
            video_key=key,
            archive_uri=full_uri(self.fs, path),
            member=member,
            object_sha256=record.get("object_sha256"),
            generation=int(record.get("generation") or 1),
            codec=record.get("codec"),
            model=self.spec.parent_model,
        )
        uri = record.get("source_uri") or parent.archive_uri
        size = int(record.get("source_bytes") or 0)
        return SourceEntry(uri=uri, relative=uri, size=size, key=key, parent=parent)

    def _per_table(self, table: pa.Table) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, first row's columns) of each video of `table` whose rows are all ok and match."""
        table = table.append_column("_ok", pc.fill_null(pc.equal(table["status"], "ok"), False))
        if self.expression is not None:
            matching = table.filter(self.expression).column("video_key")
            table = table.filter(pc.is_in(table["video_key"], value_set=pc.unique(matching)))
        if not table.num_rows:
            return
        grouped = table.group_by("video_key", use_threads=False).aggregate(
            [("_ok", "all"), *((c, "first") for c in _FIRSTS)]
        )
        grouped = grouped.filter(grouped["_ok_all"]).sort_by("video_key")
        for row in grouped.to_pylist():
            yield row["video_key"], {"video_key": row["video_key"], **{c: row[f"{c}_first"] for c in _FIRSTS}}

    def _on_damage(self, path: str, reason: str) -> None:
        self.parts._damage(path, reason)
        self.damaged = list(self.parts.damaged)


def probe_parent(
    entry: SourceEntry, *, endpoint_url: str | None = None, max_pixels: int | None = None
) -> ProbeOutcome:
    """The probe of a migrated video: its info from the parent's container (no source read), its
    lineage, and the header fields it keeps. A parent that cannot be read (frozen in GLACIER, gone,
    damaged) fails the video with one line."""
    parent = entry.parent
    assert parent is not None
    try:
        info = describe(parent, endpoint_url=endpoint_url)
        sha256 = parent.object_sha256 or object_sha256(parent, endpoint_url=endpoint_url)
    except Exception as exc:  # frozen, missing, unreachable, damaged: this video fails, the run goes on
        return ProbeOutcome(entry, "failed", reason=_parent_error(parent, exc), transient=is_transient(exc))
    header = info.header
    width, height = header.width, header.height
    if max_pixels is not None and width * height > max_pixels:
        return ProbeOutcome(
            entry, "failed", reason=f"{parent.archive_uri}: {width}x{height} is over the pixel budget"
        )
    starts = set(info.gop_starts)
    keyframes = tuple(t for i, t in enumerate(info.frame_pts) if i in starts) if info.frame_pts else None
    video = media.VideoInfo(
        width=width,
        height=height,
        frame_count=info.frame_count,
        fps=info.fps,
        vfr=bool(header.vfr),
        rotation=int(header.rotation or 0),
        container_format=str(header.source_format or "vdrc"),
        video_codec=str(header.source_codec or header.codec or ""),
        pix_fmt=header.pix_fmt,
        color=dict(header.color or {}),
        has_audio=info.has_audio,
        frame_pts=info.frame_pts,
        time_base=_fraction(header.time_base),
        source_sha256=header.source_sha256,
        bit_depth=int(header.coded_bit_depth or 8),  # the depth of the frames it decodes to
        chroma=header.source_chroma,
        declared_frames=header.source_frames_declared,
        keyframe_pts=keyframes,
    )
    lineage = {
        "generation": parent.generation + 1,
        "parent_archive_uri": parent.archive_uri,
        "parent_object_sha256": sha256,
        "parent_video_key": parent.video_key,
    }
    fields = header.to_dict()
    inherited = {k: fields[k] for k in INHERITED if fields.get(k) is not None}
    metadata = header.extra.get("source_metadata")
    if isinstance(metadata, dict) and not entry.metadata:  # caption / license / split, into the rows
        entry = dataclasses.replace(entry, metadata={str(k): str(v) for k, v in metadata.items()})
    return ProbeOutcome(entry, "video", info=video, lineage=lineage, inherited=inherited)


def _parent_error(parent: ParentRef, exc: Exception) -> str:
    """One line for a parent that cannot be read; a frozen one says how to thaw it."""
    from pipeline.format.container import ContainerError

    if isinstance(exc, ContainerError):
        return str(exc).splitlines()[0]
    return describe_error(exc, parent.archive_uri)


def _fraction(text: Any) -> Fraction | None:
    try:
        return Fraction(str(text)) if text else None
    except (ValueError, ZeroDivisionError):
        return None
