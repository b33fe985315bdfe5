"""What a training read will fetch, decided from the manifest alone: selected GOPs grouped by object.

The plan is the cheap half of reading an archive as training data: it scans the manifest (Parquet,
filter pushed down), keeps the GOPs that are archived (`status == 'ok'`) and match `where`, and groups
them by archive object, so a reader fetches each object's index once and then only the payloads it
needs. Nothing here reads a payload, imports Ray or torch, or needs the sources.

Clips: a row is a whole GOP, or with `clip_frames` the windows of that many frames every `stride`
frames inside one GOP. A window never crosses a GOP boundary (each GOP decodes alone, so one decode
serves all its windows); a GOP shorter than `clip_frames` gives no clip.

A damaged manifest part (one that fails its checksums) would silently drop its videos from a training
set, so planning refuses it by default, naming the part; `allow_damaged=True` reads the rest, warns
once, and lists the damaged parts in `ArchivePlan.damaged`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import pyarrow.compute as pc

from pipeline.audit.filters import FilterError, parse_filter
from pipeline.audit.reader import AuditError, iter_batches, open_manifest
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.read.manifest import DamagedPart
from pipeline.read.manifest_layout import container_location
from pipeline.store.storage import StorageError, filesystem, full_uri

OUTPUTS = ("frames", "latents", "both")
#: Codecs whose entropy decode yields latents a diffusion model trains on (GLVC: Wan2.1 VAE latents).
LATENT_CODECS = frozenset({"glvc"})
#: Manifest columns a clip row carries unless the caller asks for others.
DEFAULT_COLUMNS = (
    "video_key",
    "source_uri",
    "gop_index",
    "first_frame",
    "frame_count",
    "width",
    "height",
    "fps",
    "codec",
    "bpp",
    "psnr",
    "ms_ssim",
    "lpips",
    "dists",
    "vmaf",
)
#: Columns every row has whatever `columns` says: the clip's place (`first_frame`, `frame_count` are the
#: clip's, not the GOP's) and what it cost to fetch.
IDENTITY_COLUMNS = ("video_key", "gop_index", "first_frame", "frame_count")
_PLANNING_COLUMNS = (
    "video_key", "gop_index", "first_frame", "frame_count", "codec", "length", "archive_uri", "member_offset",
    "member_length", "storage_class",
)  # fmt: skip


class DatasetError(Exception):
    """An archive cannot be read as training data (bad options, filter, manifest, object): one line."""


class DamagedManifestWarning(UserWarning):
    """Some manifest parts are damaged and their GOPs are left out of the read (`allow_damaged=True`)."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What one row holds: `output` (frames, latents or both) of a whole GOP or of windows in it."""

    output: str = "frames"
    clip_frames: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise DatasetError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.clip_frames is not None and (not isinstance(self.clip_frames, int) or self.clip_frames < 1):
            raise DatasetError(f"clip_frames must be a positive number of frames, got {self.clip_frames!r}")
        if self.stride is not None:
            if self.clip_frames is None:
                raise DatasetError("stride needs clip_frames (without it a row is a whole GOP)")
            if not isinstance(self.stride, int) or self.stride < 1:
                raise DatasetError(f"stride must be a positive number of frames, got {self.stride!r}")
        if self.clip_frames is not None and self.output != "frames":
            raise DatasetError(
                "clip_frames applies to output='frames' only: latents come per GOP (the causal "
                "tokenizer codes a GOP as one unit, so a window of frames has no latents of its own)"
            )

    @property
    def wants_frames(self) -> bool:
        return self.output in ("frames", "both")

    @property
    def wants_latents(self) -> bool:
        return self.output in ("latents", "both")

    def windows(self, frame_count: int) -> list[tuple[int, int]]:
        """(start inside the GOP, frames) of each clip of a GOP of `frame_count` frames."""
        if self.clip_frames is None:
            return [(0, frame_count)]
        step = self.stride or self.clip_frames
        return [(s, self.clip_frames) for s in range(0, frame_count - self.clip_frames + 1, step)]


@dataclasses.dataclass(frozen=True)
class GopRef:
    """One selected GOP: where it sits in its video, its payload size, and its manifest values."""

    gop_index: int
    first_frame: int
    frame_count: int
    length: int
    values: tuple[tuple[str, Any], ...]  # (column, manifest value) for the requested columns

    def column_values(self) -> dict[str, Any]:
        return dict(self.values)


@dataclasses.dataclass(frozen=True)
class ObjectPlan:
    """The selected GOPs of one archive object (one video), in GOP order."""

    out: str  # the archive root it belongs to
    video_key: str
    archive_uri: str  # the container under `out` (not the manifest's archive_uri: archives move)
    codec: str
    gops: tuple[GopRef, ...]
    #: a packed video (`pipeline.format.pack`): its container's (offset, length) in the pack object
    member: tuple[int, int] | None = None
    #: the S3 class the manifest records for its object (None: a local folder or an older archive)
    storage_class: str | None = None

    @property
    def payload_bytes(self) -> int:
        return sum(g.length for g in self.gops)


@dataclasses.dataclass(frozen=True)
class ArchivePlan:
    """Every selected GOP of one or many archives, grouped by object; `clips()` lists the rows."""

    objects: tuple[ObjectPlan, ...]
    spec: ClipSpec
    columns: tuple[str, ...]
    #: "<part uri>: <reason>" of each damaged manifest part left out (only with `allow_damaged=True`)
    damaged: tuple[str, ...] = ()

    @property
    def gop_count(self) -> int:
        return sum(len(o.gops) for o in self.objects)

    @property
    def payload_bytes(self) -> int:
        return sum(o.payload_bytes for o in self.objects)

    def clips(self) -> list[tuple[int, int, int]]:
        """(object number, GOP number in the object, start inside the GOP) of every row, in plan order."""
        return [
            (o, g, start)
            for o, obj in enumerate(self.objects)
            for g, gop in enumerate(obj.gops)
            for start, _ in self.spec.windows(gop.frame_count)
        ]


def plan_archive(
    out: str | Sequence[str],
    *,
    where: str | None = None,
    spec: ClipSpec | None = None,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    endpoint_url: str | None = None,
    allow_damaged: bool = False,
) -> ArchivePlan:
    """Scan the manifest(s) of `out` (one archive root or several) and select the GOPs to read.

    Raises DatasetError (one line) for an unknown column, a bad filter, a missing manifest, a damaged
    manifest part (unless `allow_damaged`), an empty selection, or latents asked of a codec that has
    none — all before any payload is read.
    """
    spec = spec or ClipSpec()
    roots = [out] if isinstance(out, str) else list(out)
    if not roots:
        raise DatasetError("no archive given")
    columns = tuple(dict.fromkeys(columns))
    unknown = [c for c in columns if c not in MANIFEST_SCHEMA.names]
    if unknown:
        raise DatasetError(
            f"unknown manifest column(s) {', '.join(unknown)}; columns: {', '.join(MANIFEST_SCHEMA.names)}"
        )
    objects: list[ObjectPlan] = []
    damaged: list[DamagedPart] = []
    for root in roots:
        planned, lost = _plan_root(root, where, columns, endpoint_url)
        objects.extend(planned)
        damaged.extend(lost)
    if damaged:
        _handle_damaged(damaged, allow_damaged)
    if not objects:
        condition = f" matches where={where!r}" if where else " is archived (status 'ok')"
        raise DatasetError(f"{', '.join(roots)}: no GOP{condition}")
    if spec.wants_latents:
        _refuse_codecs_without_latents(objects, spec.output)
    # GOPs too short for one window give no clip: never read them
    objects = [
        dataclasses.replace(o, gops=kept)
        for o in objects
        if (kept := tuple(g for g in o.gops if spec.windows(g.frame_count)))
    ]
    if not objects:
        raise DatasetError(
            f"{', '.join(roots)}: no selected GOP has {spec.clip_frames} frames (clip_frames is longer "
            "than every GOP; windows never cross GOPs)"
        )
    return ArchivePlan(tuple(objects), spec, columns, tuple(f"{d.uri}: {d.reason}" for d in damaged))


def _handle_damaged(damaged: list[DamagedPart], allow_damaged: bool) -> None:
    first = damaged[0]
    videos = f" (video {first.video_key})" if first.video_key else ""
    named = f"{len(damaged)} damaged manifest part(s), first {first.uri}{videos}: {first.reason}"
    if not allow_damaged:
        raise DatasetError(
            f"{named}; their GOPs would be missing from the read — pass allow_damaged=True "
            "(export: --allow-damaged) to read the rest"
        )
    warnings.warn(f"{named}; their GOPs are left out", DamagedManifestWarning, stacklevel=3)


def _plan_root(
    root: str, where: str | None, columns: tuple[str, ...], endpoint_url: str | None
) -> tuple[list[ObjectPlan], list[DamagedPart]]:
    try:
        manifest = open_manifest(root, endpoint_url=endpoint_url)
        expression = parse_filter(where, MANIFEST_SCHEMA)
    except (AuditError, StorageError, FilterError) as exc:
        raise DatasetError(str(exc).splitlines()[0]) from None
    archived = pc.field("status") == "ok"
    expression = archived if expression is None else (expression & archived)
    wanted = list(dict.fromkeys((*_PLANNING_COLUMNS, *columns)))
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for batch in iter_batches(manifest, wanted, expression):
            for row in batch.to_pylist():
                rows[(row["video_key"], int(row["gop_index"]))] = row  # a rewritten part wins
    except AuditError as exc:
        raise DatasetError(f"{root}: {exc}") from None
    fs, base = filesystem(root, endpoint_url=endpoint_url)
    by_video: dict[str, list[dict[str, Any]]] = {}
    for (key, _), row in sorted(rows.items()):
        by_video.setdefault(key, []).append(row)
    located = {key: container_location(fs, base, gops[0]) for key, gops in by_video.items()}
    planned = [
        ObjectPlan(
            out=root,
            video_key=key,
            archive_uri=full_uri(fs, located[key][0]),
            member=located[key][1],
            codec=str(gops[0]["codec"]),
            storage_class=gops[0].get("storage_class"),
            gops=tuple(
                GopRef(
                    gop_index=int(r["gop_index"]),
                    first_frame=int(r["first_frame"]),
                    frame_count=int(r["frame_count"]),
                    length=int(r["length"] or 0),
                    values=tuple((c, r[c]) for c in columns),
                )
                for r in gops
            ),
        )
        for key, gops in by_video.items()
    ]
    return planned, list(manifest.damaged)


def _refuse_codecs_without_latents(objects: list[ObjectPlan], output: str) -> None:
    others = [o for o in objects if o.codec not in LATENT_CODECS]
    if others:
        codecs = ", ".join(sorted({o.codec for o in others}))
        raise DatasetError(
            f"output={output!r}: {len(others)} selected video(s) ({others[0].video_key}, ...) are coded with "
            f"{codecs}, which has no latents (only {', '.join(sorted(LATENT_CODECS))} archives hold "
            "tokenizer latents); select them out with where=\"codec == 'glvc'\" or read frames"
        )
