"""`vidarc ls`: every video of an archive with its status, rate, quality and costs, streamed in key order.

Memory does not grow with the archive: the manifest is read as tables of whole videos in key order
(`pipeline.read.manifest_videos`), each aggregated per video with Arrow, and merged with the done and
failed markers (listed page by page, in key order) so that a video with a marker and no rows (a run
stopped between commit steps) is listed too. `after` and `limit` page through millions of videos.

Status: `ok` (done marker and ok rows), `failed` (a failed row or marker), `incomplete` (rows without a
done marker, or a marker without rows), `damaged` (its manifest part does not parse; `error` names it).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from codec.base import bits_per_pixel, kilobits_per_second
from pipeline.audit.costs import OneVideo, _Acc, _reference_rows, figures, stored_bytes
from pipeline.audit.prices import Prices
from pipeline.format.runinfo import MARKERS_DIR, iter_pack_markers
from pipeline.format.schema import COMPUTE_STAGES, CPU_DEVICE, CPU_STAGES, compute_column
from pipeline.read.manifest import ArchiveParts, DamagedPart, PartsError
from pipeline.read.manifest_videos import iter_videos
from pipeline.store.storage import StorageError, check_reachable, filesystem, join, redact

_STAGE_COLUMNS = [compute_column(s) for s in COMPUTE_STAGES]
_COLUMNS = [
    "video_key", "source_uri", "status", "codec", "width", "height", "frame_count", "fps_num", "fps_den",
    "fps", "payload_bytes", "psnr", "ms_ssim", "error", "gop_index", "source_bytes", "compute_device",
    "run_id", "archive_bytes", "target_reached", "archive_uri", "storage_class", *_STAGE_COLUMNS,
]  # fmt: skip
_FIRSTS = ["source_uri", "codec", "width", "height", "fps_num", "fps_den", "fps", "source_bytes",
           "archive_uri", "storage_class"]  # fmt: skip


class ListingError(Exception):
    """The archive cannot be listed (unreachable, not an archive): one line."""


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
    #: GOPs whose bits missed a bitrate target (`target_reached` false; 0 for a quality target).
    rate_target_missed: int = 0


@dataclasses.dataclass
class Listed:
    """One video as `ls` shows it: its listing and its costs (None without prices or rows)."""

    video: VideoListing
    costs: dict[str, Any] | None = None


class ArchiveListing:
    """`for item in ArchiveListing(out, prices=...)`: the archive's videos in key order; `damaged`
    fills in as damaged manifest files are met (and, with prices, damaged reference files)."""

    def __init__(
        self,
        out: str,
        *,
        endpoint_url: str | None = None,
        prices: Prices | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> None:
        self.out, self.endpoint_url, self.prices = out, endpoint_url, prices
        self.after, self.limit = after, limit
        try:
            self.fs, self.root = filesystem(out, endpoint_url=endpoint_url)
            check_reachable(self.fs, self.root, out, must_exist=True)
            self.parts = ArchiveParts(out, "manifest", endpoint_url=endpoint_url)
        except (StorageError, PartsError) as exc:
            raise ListingError(str(exc)) from None
        self.damaged: list[DamagedPart] = []
        self._references: _VideoReferences | None = None
        self._sizes: dict[str, int] | bool | None = False  # False: not listed yet
        #: pack object URI -> its size, from the pack markers: a packed video's share of its pack's
        #: per-object fees and minimums (`class_costs`)
        self._pack_bytes: dict[str, int] = {}

    def __iter__(self) -> Iterator[Listed]:
        try:
            items = self._merged()
            if self.limit is not None:
                items = itertools.islice(items, self.limit)
            yield from items
        except (StorageError, PartsError) as exc:
            raise ListingError(str(exc)) from None
        except ListingError:
            raise
        except Exception as exc:
            raise ListingError(
                f"{self.out}: cannot read the archive ({type(exc).__name__}: {redact(str(exc))})"
            ) from None

    # ---- the merge of rows and markers ------------------------------------------------------------
    def _merged(self) -> Iterator[Listed]:
        damaged_keys: dict[str, DamagedPart] = {}

        def on_damage(path: str, reason: str) -> None:
            self.parts._damage(path, reason)  # the reader's record: named once, with pack members
            part = next(d for d in self.parts.damaged if d.uri == self.parts.uri(path))
            if part not in self.damaged:
                self.damaged.append(part)
                for key in part.video_keys:
                    if self.after is None or key > self.after:
                        damaged_keys[key] = part

        with_runs = self.prices is not None and self._all_references().rows.num_rows > 0

        def per_table(table: pa.Table) -> Iterator[tuple[str, dict[str, Any]]]:
            return _per_video(table, with_runs=with_runs)

        rows = iter_videos(self.parts.plan, _COLUMNS, per_table, on_damage=on_damage, after=self.after)
        done = self._marker_keys("done")
        failed = self._marker_keys("failed")
        packed = self._packed_keys()
        streams = [
            ((r["video_key"], 0, r) for r in rows),
            ((k, 1, "done") for k in done),
            ((k, 1, "done") for k in packed),
            ((k, 2, "failed") for k in failed),
        ]
        merged = heapq.merge(*streams, key=lambda item: item[:2])
        emitted: set[str] = set()
        for key, group in itertools.groupby(merged, key=lambda item: item[0]):
            record: dict[str, Any] | None = None
            is_done = is_failed = False
            for _, _, value in group:
                if isinstance(value, dict):
                    record = _combine(record, value)
                elif value == "done":
                    is_done = True
                else:
                    is_failed = True
            if key in damaged_keys:
                emitted.add(key)
                yield Listed(_damaged_listing(key, damaged_keys[key]))
                continue
            yield self._listed(key, record, is_done, is_failed)
        for key, part in sorted(damaged_keys.items()):  # damaged parts whose keys had no marker
            if key not in emitted:
                yield Listed(_damaged_listing(key, part))

    def _marker_keys(self, state: str) -> Iterator[str]:
        """Keys with a `state` marker, in key order, as the listing pages come."""
        from pipeline.store.listing import iter_objects

        # every "<key>.json" with key > after sorts after `after` itself (S3 starts its listing there)
        folder = join(self.root, MARKERS_DIR, state)
        names = (
            item.path.rsplit("/", 1)[-1] for item in iter_objects(self.fs, folder, start_after=self.after)
        )
        keys = (name[: -len(".json")] for name in names if name.endswith(".json") and ".tmp-" not in name)
        yield from marker_keys_in_key_order(k for k in keys if self.after is None or k > self.after)

    def _packed_keys(self) -> list[str]:
        """Members of committed packs (one marker per pack, so far fewer than videos)."""
        keys = []
        for marker in iter_pack_markers(self.fs, self.root):
            keys += [str(k) for k in marker["members"]]
            if isinstance(marker.get("archive_uri"), str) and isinstance(marker.get("archive_bytes"), int):
                self._pack_bytes[marker["archive_uri"]] = marker["archive_bytes"]
        return sorted(k for k in keys if self.after is None or k > self.after)

    # ---- one video ----------------------------------------------------------------------------------
    def _listed(self, key: str, record: dict[str, Any] | None, done: bool, failed: bool) -> Listed:
        record = record or {}
        ok_gops = record.get("ok_gops", 0)
        if record.get("bad_gops") or (failed and not done):
            status = "failed"
        elif ok_gops and done:
            status = "ok"
        else:
            status = "incomplete"
        frames, payload = record.get("ok_frames", 0), record.get("ok_payload", 0)
        width, height = record.get("width"), record.get("height")
        bpp = kbps = None
        if ok_gops and frames and width and height:
            bpp = bits_per_pixel(payload, width, height, frames)
            if record.get("fps_num") and record.get("fps_den"):
                kbps = kilobits_per_second(payload, frames, Fraction(record["fps_num"], record["fps_den"]))
            elif record.get("fps"):
                kbps = 8.0 * payload / (frames / record["fps"]) / 1000.0
        video = VideoListing(
            video_key=key, source_uri=record.get("source_uri"), status=status, codec=record.get("codec"),
            width=width, height=height, frames=frames, gops=ok_gops, payload_bytes=payload, bpp=bpp,
            kbps=kbps, psnr=_mean(record, "psnr"), ms_ssim=_mean(record, "ms_ssim"), error=record.get("error"),
            rate_target_missed=record.get("rate_missed", 0),
        )  # fmt: skip
        costs = None
        if self.prices is not None and ok_gops:
            costs = figures(
                self._acc(key, record), self.prices, self._sizes_for(key, record), self._pack_bytes
            )
        return Listed(video, costs)

    def _acc(self, key: str, record: dict[str, Any]) -> _Acc:
        video = OneVideo(
            key=key,
            source_bytes=int(record.get("source_bytes") or 0),
            payload_bytes=record["ok_payload"],
            object=record.get("archive_uri") or key,
            storage_class=record.get("storage_class"),
        )
        acc = _Acc(one_video=video)
        acc.gops, acc.frames = record["ok_gops"], record["ok_frames"]
        acc.pixels, acc.payload_bytes = float(record["ok_pixels"]), record["ok_payload"]
        acc.gops_unaccounted = record["unaccounted"]
        for (stage, kind), seconds in record["seconds"].items():
            acc.seconds[stage][kind] += seconds
        acc.reference = self._all_references().of(key, record["gop_runs"])
        return acc

    def _all_references(self) -> _VideoReferences:
        """The classic reference's rows by video (a seeded sample of GOPs), read once."""
        if self._references is None:
            damaged: list[DamagedPart] = []
            self._references = _VideoReferences(_reference_rows(self.out, self.endpoint_url, damaged))
            self.damaged += damaged  # named by ls like a damaged manifest part (no video's rows: no key)
        return self._references

    def _sizes_for(self, key: str, record: dict[str, Any]) -> dict[str, int] | None:
        """The stored size of the video's object: recorded in its rows, else (archives written before
        `archive_bytes`) from one listing of `videos/`, made once."""
        if record.get("archive_bytes"):
            return {key: int(record["archive_bytes"])}
        if self._sizes is False:
            self._sizes = stored_bytes(self.out, self.endpoint_url)
        return self._sizes  # type: ignore[return-value]


class _VideoReferences:
    """The reference rows (`costs._reference_rows`) sorted by video, each video's in the order read
    (the order its bootstrap resamples), and where each video's rows are: one entry per video, not a
    dict per row (hundreds of thousands of rows in a million-video archive)."""

    def __init__(self, rows: pa.Table) -> None:
        self.rows = rows.take(pc.sort_indices(rows, [("video_key", "ascending")]))  # a stable sort
        positions = pa.array(range(self.rows.num_rows), pa.int64())
        spans = (
            pa.table({"video_key": self.rows.column("video_key"), "at": positions})
            .group_by("video_key", use_threads=False)
            .aggregate([("at", "min"), ("at", "count")])
        )
        self._spans: dict[str, tuple[int, int]] = {
            key: (start, count)
            for key, start, count in zip(
                spans.column("video_key").to_pylist(),
                spans.column("at_min").to_pylist(),
                spans.column("at_count").to_pylist(),
                strict=True,
            )
        }

    def of(self, key: str, gop_runs: frozenset[tuple[int, str]]) -> pa.Table:
        """The video's rows of the GOPs it holds (`gop_runs`: (gop_index, run_id) of its manifest rows)."""
        start, count = self._spans.get(key, (0, 0))
        rows = self.rows.slice(start, count)
        if not count:
            return rows
        pairs = zip(rows.column("gop_index").to_pylist(), rows.column("run_id").to_pylist(), strict=True)
        held = [i for i, pair in enumerate(pairs) if pair in gop_runs]
        return rows if len(held) == count else rows.take(pa.array(held, pa.int64()))


def marker_keys_in_key_order(keys: Iterator[str]) -> Iterator[str]:
    """Keys of markers listed in name order ("<key>.json"), in key order. The two orders differ only
    where one key is a prefix of another ("a-0123456789ab" and "a-0123456789ab-ffffffffffff": the
    longer one's marker lists first), so a key is held back only while such a prefix of it may still
    be listed: a handful of keys, not the listing."""
    held: list[str] = []
    for key in keys:
        heapq.heappush(held, key)
        while held and _settled(held[0], key):
            yield heapq.heappop(held)
    while held:
        yield heapq.heappop(held)


def _settled(key: str, latest: str) -> bool:
    """Whether no key listed after `latest` can sort before `key`. Only a prefix of `key` can: one
    that is itself a key (`<slug>-<12 hex digits>`, `pipeline.format.keys`) and is followed in `key`
    by "-" or "." (any other character puts its marker's name first)."""
    latest_name = latest + ".json"
    return all(key[: m.end()] + ".json" <= latest_name for m in _KEY_INSIDE.finditer(key))


#: Where a key's prefix ends like a key and is followed by "-" or ".".
_KEY_INSIDE = re.compile(r"-[0-9a-f]{12}(?=[-.])")


def list_archive(out: str, *, endpoint_url: str | None = None) -> list[VideoListing]:
    """Every video of a (small) archive, in key order (`ArchiveListing` streams large ones)."""
    return [item.video for item in ArchiveListing(out, endpoint_url=endpoint_url)]


def _mean(record: dict[str, Any], column: str) -> float | None:
    weight = record.get(f"{column}_frames") or 0
    return record[f"{column}_sum"] / weight if weight else None


def _combine(first: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """Two aggregates of one video (rows met in two tables, e.g. split by compute device)."""
    if first is None:
        return other
    merged = dict(first)
    for name in ("ok_gops", "bad_gops", "ok_frames", "ok_payload", "ok_pixels", "unaccounted",
                 "psnr_sum", "psnr_frames", "ms_ssim_sum", "ms_ssim_frames", "rate_missed"):  # fmt: skip
        merged[name] = first.get(name, 0) + other.get(name, 0)
    for name in [*_FIRSTS, "error", "archive_bytes"]:
        if merged.get(name) is None:
            merged[name] = other.get(name)
    seconds = dict(first["seconds"])
    for stage_kind, value in other["seconds"].items():
        seconds[stage_kind] = seconds.get(stage_kind, 0.0) + value
    merged["seconds"] = seconds
    merged["gop_runs"] = first["gop_runs"] | other["gop_runs"]
    return merged


def _per_video(table: pa.Table, *, with_runs: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """A table of whole videos -> (key, aggregate) per video, in key order (Arrow does the sums)."""
    status = table.column("status")
    ok = pc.fill_null(pc.equal(status, "ok"), False)
    frames = pc.fill_null(table.column("frame_count"), 0)
    zero = pa.scalar(0, pa.int64())
    columns: dict[str, Any] = {
        "video_key": table.column("video_key"),
        "ok": pc.cast(ok, pa.int64()),
        "bad": pc.cast(pc.invert(ok), pa.int64()),
        "ok_frames": pc.if_else(ok, pc.cast(frames, pa.int64()), zero),
        "ok_payload": pc.if_else(
            ok, pc.cast(pc.fill_null(table.column("payload_bytes"), 0), pa.int64()), zero
        ),
        "ok_pixels": pc.if_else(
            ok,
            pc.multiply(
                pc.multiply(
                    pc.cast(pc.fill_null(table.column("width"), 0), pa.float64()),
                    pc.cast(pc.fill_null(table.column("height"), 0), pa.float64()),
                ),
                pc.cast(frames, pa.float64()),
            ),
            pa.scalar(0.0),
        ),
        "error": pc.if_else(ok, pa.scalar(None, pa.string()), table.column("error")),
        "archive_bytes": table.column("archive_bytes"),
        "unaccounted": pc.cast(pc.and_(ok, _all_null([table.column(c) for c in _STAGE_COLUMNS])), pa.int64()),
        "rate_missed": pc.cast(
            pc.and_(ok, pc.fill_null(pc.equal(table.column("target_reached"), False), False)), pa.int64()
        ),
    }
    for metric in ("psnr", "ms_ssim"):
        value = table.column(metric)
        valid = pc.and_(ok, pc.is_valid(value))
        weight = pc.cast(frames, pa.float64())
        columns[f"{metric}_sum"] = pc.if_else(valid, pc.multiply(value, weight), pa.scalar(0.0))
        columns[f"{metric}_frames"] = pc.if_else(valid, weight, pa.scalar(0.0))
    for name in _FIRSTS:  # the first ok row's value, else any row's
        columns[f"{name}_ok"] = pc.if_else(ok, table.column(name), pa.scalar(None, table.column(name).type))
        columns[name] = table.column(name)
    device = pc.fill_null(table.column("compute_device"), CPU_DEVICE)
    columns["device"] = device
    for column in _STAGE_COLUMNS:
        columns[column] = pc.if_else(ok, table.column(column), pa.scalar(None, pa.float64()))
    derived = pa.table(columns)
    sums = ["ok", "bad", "ok_frames", "ok_payload", "ok_pixels", "unaccounted", "psnr_sum", "psnr_frames",
            "ms_ssim_sum", "ms_ssim_frames", "rate_missed"]  # fmt: skip
    aggregations = [(name, "sum") for name in sums]
    aggregations += [(name, "first") for name in [*_FIRSTS, *(f"{n}_ok" for n in _FIRSTS), "error"]]
    aggregations += [("archive_bytes", "max")]
    aggregations += [(column, "sum") for column in _STAGE_COLUMNS]
    grouped = derived.group_by(["video_key", "device"], use_threads=False).aggregate(aggregations)
    grouped = grouped.sort_by("video_key")
    runs = _gop_runs(table) if with_runs else {}
    previous: tuple[str, dict[str, Any]] | None = None
    for row in grouped.to_pylist():
        key = row["video_key"]
        record = {
            "video_key": key,
            "ok_gops": row["ok_sum"] or 0,
            "bad_gops": row["bad_sum"] or 0,
            "ok_frames": row["ok_frames_sum"] or 0,
            "ok_payload": row["ok_payload_sum"] or 0,
            "ok_pixels": row["ok_pixels_sum"] or 0.0,
            "unaccounted": row["unaccounted_sum"] or 0,
            "rate_missed": row["rate_missed_sum"] or 0,
            "psnr_sum": row["psnr_sum_sum"] or 0.0,
            "psnr_frames": row["psnr_frames_sum"] or 0.0,
            "ms_ssim_sum": row["ms_ssim_sum_sum"] or 0.0,
            "ms_ssim_frames": row["ms_ssim_frames_sum"] or 0.0,
            "error": row["error_first"],
            "archive_bytes": row["archive_bytes_max"],
            "gop_runs": runs.get(key, frozenset()),
            "seconds": {},
        }
        for name in _FIRSTS:
            ok_value = row[f"{name}_ok_first"]
            record[name] = ok_value if ok_value is not None else row[f"{name}_first"]
        for stage, column in zip(COMPUTE_STAGES, _STAGE_COLUMNS, strict=True):
            value = row[f"{column}_sum"]
            if value is not None and (row["ok_sum"] or 0):
                kind = CPU_DEVICE if stage in CPU_STAGES else row["device"]
                record["seconds"][(stage, kind)] = record["seconds"].get((stage, kind), 0.0) + value
        if previous is not None and previous[0] == key:
            previous = (key, _combine(previous[1], record))
            continue
        if previous is not None:
            yield previous
        previous = (key, record)
    if previous is not None:
        yield previous


def _all_null(columns: list[Any]) -> Any:
    result = pc.is_null(columns[0])
    for column in columns[1:]:
        result = pc.and_(result, pc.is_null(column))
    return result


def _gop_runs(table: pa.Table) -> dict[str, frozenset[tuple[int, str]]]:
    """(gop_index, run_id) of the ok rows per video: which reference rows belong to this encoding."""
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
    kept = table.filter(ok).select(["video_key", "gop_index", "run_id"])
    found: dict[str, set[tuple[int, str]]] = {}
    for key, gop, run in zip(*(kept.column(n).to_pylist() for n in kept.column_names), strict=True):
        found.setdefault(key, set()).add((gop, run))
    return {key: frozenset(v) for key, v in found.items()}


def _damaged_listing(key: str, part: DamagedPart) -> VideoListing:
    return VideoListing(
        video_key=key, source_uri=None, status="damaged", codec=None, width=None, height=None, frames=0,
        gops=0, payload_bytes=0, bpp=None, kbps=None, psnr=None, ms_ssim=None, error=part.line(),
    )  # fmt: skip
