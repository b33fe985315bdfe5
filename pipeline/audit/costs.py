"""What an archive cost and what it saved: compute spent, bytes saved, and when it pays for itself.

One streaming pass over the (filtered) manifest's compute columns and sizes, joined to the classic
reference's sampled rows (`reference/*.parquet`, see `pipeline.format.schema.REFERENCE_SCHEMA`), priced with
`prices.Prices`. Definitions, so every figure can be checked by hand:

- compute: device-seconds per stage and device kind, from the manifest (`pipeline.format.schema.
  COMPUTE_STAGES`); cost = Σ device-hours × the kind's price. The reference's own CPU time is the
  *measurement* cost, shown apart and never charged to the archive.
- against the source: bytes saved = Σ source bytes − Σ stored archive objects (`videos/*.vdrc`, audio
  and index included; the GOP payloads when the objects cannot be listed); the extra compute is the
  archive job's whole cost (every stage).
- against the reference: the per-GOP log byte ratio r = ln(archive / reference at equal quality) is
  averaged over the sampled GOPs weighted by frames; "X % smaller" is X = (1 − e^r̄)·100, with a 95 %
  percentile bootstrap interval (`equal_quality_ratio`). The reference's size for the whole group is
  estimated as payload · e^−r̄. The compute compared is the codec's (encode + search of the archive)
  against one reference encode at the equal-quality setting per GOP (measured on the sample, per
  pixel, scaled to the group): probing, decoding, metrics and commits are the same for both, and a
  classic archive needs no search once its setting is known — the reference's cheapest plausible cost,
  so the break-even is conservative.
- break-even (`payback`): with a saving of S GB and an extra compute cost C, storage pays back after
  C / (S · price per GB-month) months: in the archive's own S3 class (`months_in_class`: the rate of the
  class its objects are in, byte-weighted if several, or the one `--storage-class` assumes), and for
  each what-if entry of `storage_gb_month`; downloads after C / (S · (egress + the class's retrieval)
  per GB) downloads of the whole archive. No extra cost: 0 (at once). No saving: never (null, with the
  reason). The colder the class, the less a saved GB earns a month, the longer the compute takes to pay.
- storage in its class (`storage`, `class_costs.storage_costs`): per month with the class's minimum
  object size or overhead per object, the minimum commitment, the PUTs of writing and the cost of
  reading the whole archive back once.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.audit.class_costs import storage_costs, storage_costs_of
from pipeline.audit.prices import BYTES_PER_GB, Prices
from pipeline.audit.video_rows import KEY, OF_THE_ROW, Aggregation, VideoRows
from pipeline.format.runinfo import CONTAINER_SUFFIX
from pipeline.format.schema import (
    COMPUTE_STAGES,
    CPU_DEVICE,
    CPU_STAGES,
    REFERENCE_SCHEMA,
    compute_column,
)

#: Stages of the archive's codec compared against a reference encode (see the module docstring).
CODEC_STAGES: tuple[str, ...] = ("encode", "search")
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
#: With at least this many videos holding sampled GOPs, the bootstrap resamples videos (GOPs of one
#: video are correlated); with fewer, it resamples GOPs and says so.
MIN_VIDEOS_FOR_CLUSTERS = 5


# ---- pure arithmetic -------------------------------------------------------------------------------
def equal_quality_ratio(
    log_ratios: Iterable[float],
    weights: Iterable[float],
    clusters: Iterable[str],
    *,
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Frame-weighted mean of ln(archive/reference bytes), "% smaller", and a bootstrap interval."""
    r = np.asarray(list(log_ratios), dtype=float)
    w = np.asarray(list(weights), dtype=float)
    labels = list(clusters)
    if r.size == 0:
        return None
    mean = float(np.sum(w * r) / np.sum(w))
    result: dict[str, Any] = {
        "gops": int(r.size),
        "videos": len(set(labels)),
        "mean_log_ratio": mean,
        "smaller_percent": (1.0 - math.exp(mean)) * 100.0,
        "ci_percent": None,
        "method": "frame-weighted mean of ln(archive bytes / reference bytes at equal quality)",
    }
    if r.size < 2:
        return result
    if len(set(labels)) >= MIN_VIDEOS_FOR_CLUSTERS:
        index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        wr = np.zeros(len(index))
        ws = np.zeros(len(index))
        np.add.at(wr, [index[x] for x in labels], w * r)
        np.add.at(ws, [index[x] for x in labels], w)
        unit = "videos"
    else:
        wr, ws, unit = w * r, w, "GOPs (treated as independent: few videos)"
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(wr.size, np.full(wr.size, 1.0 / wr.size), size=resamples)
    means = (counts @ wr) / (counts @ ws)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0])
    result["ci_percent"] = [(1.0 - math.exp(high)) * 100.0, (1.0 - math.exp(low)) * 100.0]
    result["method"] += f"; {level:.0%} percentile bootstrap over {unit}, {resamples} resamples, seed {seed}"
    return result


def device_cost(seconds_by_kind: dict[str, float], prices: Prices) -> float:
    """Σ device-hours × price of the device kind."""
    return sum(seconds / 3600.0 * prices.device_hour(kind).value for kind, seconds in seconds_by_kind.items())


def payback(
    extra_cost: float, bytes_saved: float, prices: Prices, storage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Months of storage in the archive's class and per what-if class, and downloads, after which
    `bytes_saved` repay `extra_cost`. `storage`: the archive's `storage_costs` (its class and rates);
    None: the assumed class, else STANDARD."""
    gb = bytes_saved / BYTES_PER_GB
    if storage is None:
        default = prices.storage_class(None)
        storage = {"storage_class": default.name, "gb_month_rate": default["gb_month"],
                   "retrieval_gb_rate": default["retrieval_gb"]}  # fmt: skip
    rate, per_gb_read = storage["gb_month_rate"], prices.egress_gb.value + storage["retrieval_gb_rate"]
    result: dict[str, Any] = {
        "extra_cost": extra_cost,
        "bytes_saved": bytes_saved,
        "gb_saved": gb,
        "storage_class": storage["storage_class"],
        "class_assumed": prices.assumed_class is not None,  # --storage-class, not the recorded class
        "class_gb_month": rate,
        "saving_per_month_in_class": gb * rate,
        "months_in_class": None,
        "saving_per_month": {name: gb * p.value for name, p in prices.storage_gb_month.items()},
        "saving_per_download": gb * per_gb_read,
        "download_per_gb": per_gb_read,
        "months": dict.fromkeys(prices.storage_gb_month),
        "downloads": None,
        "note": None,
    }
    if bytes_saved <= 0:
        result["note"] = "not smaller: never pays back"
        return result
    if extra_cost <= 0:
        result["months_in_class"] = 0.0
        result["months"] = dict.fromkeys(prices.storage_gb_month, 0.0)
        result["downloads"] = 0.0
        result["note"] = "smaller and no extra compute: pays back at once"
        return result
    result["months_in_class"] = extra_cost / (gb * rate) if rate > 0 else None
    result["months"] = {
        name: extra_cost / (gb * p.value) if p.value > 0 else None
        for name, p in prices.storage_gb_month.items()
    }
    result["downloads"] = extra_cost / (gb * per_gb_read) if per_gb_read > 0 else None
    return result


# ---- accumulation over an archive ------------------------------------------------------------------
#: Per video of a group: its source bytes (the latest batch's), its OK rows' payload bytes, and the size
#: of its archive object (`archive_bytes`, the latest batch's that recorded it).
_VIDEO_SCHEMA = pa.schema(
    [(KEY, pa.string()), ("source", pa.int64()), ("payload", pa.int64()), ("stored", pa.int64())]
)
_VIDEO_SUMS: tuple[Aggregation, ...] = (
    ("source", "last", None),
    ("payload", "sum", None),
    ("stored", "last", None),
)
#: Per video not in its own unclassed object: its object (null: its own) and recorded class, both of
#: the latest batch that recorded either.
_OBJECT_SCHEMA = pa.schema([(KEY, pa.string()), ("object", pa.string()), ("storage_class", pa.string())])
_OBJECT_SUMS: tuple[Aggregation, ...] = (
    ("object", "last", OF_THE_ROW),
    ("storage_class", "last", OF_THE_ROW),
)
#: Per video, over every group: the size of its archive object, the latest batch's that recorded it.
_SIZE_SCHEMA = pa.schema([(KEY, pa.string()), ("stored", pa.int64())])
_SIZE_SUMS: tuple[Aggregation, ...] = (("stored", "last", None),)


def _video_rows() -> VideoRows:
    return VideoRows(_VIDEO_SCHEMA, _VIDEO_SUMS)


def _object_rows() -> VideoRows:
    return VideoRows(_OBJECT_SCHEMA, _OBJECT_SUMS)


@dataclasses.dataclass(frozen=True)
class OneVideo:
    """What `ls` knows of one video: figures for it need no Arrow (a million of them, one at a time)."""

    key: str
    source_bytes: int
    payload_bytes: int
    object: str  # its archive object (a pack's URI for a member)
    storage_class: str | None


@dataclasses.dataclass
class _Acc:
    """Sizes and compute of one group (a codec/target label, or one video)."""

    gops: int = 0
    gops_unaccounted: int = 0
    frames: int = 0
    pixels: float = 0.0
    payload_bytes: int = 0
    seconds: dict[str, dict[str, float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(float))
    )
    #: The group's classic-reference rows (`REFERENCE_ROWS_SCHEMA`), in the order its GOPs were met.
    reference: pa.Table = dataclasses.field(default_factory=lambda: REFERENCE_ROWS_SCHEMA.empty_table())
    #: Arrow rows per video (`_VIDEO_SCHEMA`), not dicts: a million videos were much of a large audit's memory.
    videos: VideoRows = dataclasses.field(default_factory=_video_rows)
    #: Only the videos not in their own object with no recorded class (`_OBJECT_SCHEMA`).
    objects: VideoRows = dataclasses.field(default_factory=_object_rows)
    #: Set by `ls` instead of `videos` and `objects`.
    one_video: OneVideo | None = None

    def add(self, other: _Acc) -> None:
        """Another group's figures into this one (the total): its videos' rows after this one's."""
        self.gops += other.gops
        self.gops_unaccounted += other.gops_unaccounted
        self.frames += other.frames
        self.pixels += other.pixels
        self.payload_bytes += other.payload_bytes
        for stage, kinds in other.seconds.items():
            for kind, seconds in kinds.items():
                self.seconds[stage][kind] += seconds
        self.reference = pa.concat_tables([self.reference, other.reference])
        self.videos.add(other.videos.table())
        self.objects.add(other.objects.table())


def group_key_label(row: dict[str, Any]) -> str:
    from pipeline.audit.groups import group_label

    return group_label(row["codec"], row["target_kind"], row["target_value"])


class CostCollector:
    """Accumulates compute and sizes per group from manifest batches, with Arrow (no per-row Python:
    a million-video manifest is millions of rows). `label`: "group" (codec/target, `group_key_label`)
    or "video". `add(batch)` takes any batch holding `COST_COLUMNS`; `groups` and `sizes` hold the
    result (`sizes`: the archive object's bytes per video, from the rows' `archive_bytes`, as a table
    of `video_key`, `stored`)."""

    def __init__(
        self,
        references: pa.Table,
        *,
        label: str = "group",
        source_uris: set[str] | None = None,
    ) -> None:
        #: The reference rows (`_reference_rows`: one per key, `REFERENCE_ROWS_SCHEMA`).
        self.references = references
        self.reference_videos = pc.unique(references.column(KEY).combine_chunks())
        self.label = label
        self.source_uris = (
            pa.array(sorted(source_uris), type=pa.string()) if source_uris is not None else None
        )
        self._groups: dict[str, _Acc] = collections.defaultdict(_Acc)
        #: The sampled manifest rows met so far (`label`, and the reference key), per batch in the order
        #: met: joined to `references` at once when `groups` is read (`_join_references`).
        self._sampled: list[pa.Table] = []
        #: Object sizes over all groups, held apart only once a second group is met: until then the
        #: one group's rows hold them (no second copy of a million keys).
        self._sizes: VideoRows | None = None
        #: damaged reference files (`DamagedPart`), set by whoever read `references`: their rows are out
        self.damaged: list[Any] = []
        self.sizes_known = True  # False once a row of an earlier release (no archive_bytes) is met

    @property
    def groups(self) -> dict[str, _Acc]:
        """The figures per group, their reference rows joined (in the order the manifest rows came)."""
        self._join_references()
        return self._groups

    @property
    def sizes(self) -> pa.Table:
        """`video_key`, `stored`: each video's object size (the latest batch's that recorded it)."""
        if self._sizes is not None:
            return self._sizes.table()
        if not self._groups:
            return _SIZE_SCHEMA.empty_table()
        sizes = next(iter(self._groups.values())).videos.table().select(_SIZE_SCHEMA.names)
        return (
            sizes
            if not sizes.column("stored").null_count
            else sizes.filter(pc.is_valid(sizes.column("stored")))
        )

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        keep = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        if self.source_uris is not None:
            keep = pc.and_(
                keep, pc.fill_null(pc.is_in(table.column("source_uri"), value_set=self.source_uris), False)
            )
        table = table.filter(keep)
        if not table.num_rows:
            return
        labels = self._labels(table)
        derived = _derived(table, labels)
        self._add_compute(derived)
        per_video = derived.group_by(["label", KEY], use_threads=False).aggregate(
            [("source_bytes", "first"), ("archive_bytes", "max"), ("archive_uri", "first"),
             ("storage_class", "first"), ("payload", "sum")]
        )  # fmt: skip
        self._add_videos(per_video)
        if len(self.reference_videos):
            self._add_references(table, labels)

    def _add_compute(self, derived: pa.Table) -> None:
        """Counts, sizes and device-seconds per group (a few rows: one per group and device)."""
        stage_columns = [compute_column(s) for s in COMPUTE_STAGES]
        sums = [("frames", "sum"), ("pixels", "sum"), ("payload", "sum"), ("unaccounted", "sum"),
                (KEY, "count"), *((column, "sum") for column in stage_columns)]  # fmt: skip
        for row in derived.group_by(["label", "device"], use_threads=False).aggregate(sums).to_pylist():
            acc = self._groups[row["label"]]
            acc.gops += row[f"{KEY}_count"]
            acc.frames += int(row["frames_sum"] or 0)
            acc.pixels += float(row["pixels_sum"] or 0.0)
            acc.payload_bytes += int(row["payload_sum"] or 0)
            acc.gops_unaccounted += int(row["unaccounted_sum"] or 0)
            for stage, column in zip(COMPUTE_STAGES, stage_columns, strict=True):
                value = row[f"{column}_sum"]
                if value is not None:
                    kind = CPU_DEVICE if stage in CPU_STAGES else row["device"]
                    acc.seconds[stage][kind] += float(value)

    def _add_videos(self, per_video: pa.Table) -> None:
        """One batch's rows per (group, video) into the groups' and the sizes' Arrow rows."""
        keys = per_video.column(KEY)
        stored = per_video.column("archive_bytes_max")
        if stored.null_count:
            self.sizes_known = False
        self._add_sizes(pa.table({KEY: keys, "stored": stored}).filter(pc.is_valid(stored)))
        videos = pa.table(
            {
                "label": per_video.column("label"),
                KEY: keys,
                "source": pc.fill_null(pc.cast(per_video.column("source_bytes_first"), pa.int64()), 0),
                "payload": pc.cast(per_video.column("payload_sum"), pa.int64(), safe=False),
                "stored": stored,
            }
        )
        for label, rows in _by_label(videos):
            self._groups[label].videos.add(rows)
        for label, rows in _by_label(_object_entries(per_video)):
            self._groups[label].objects.add(rows)

    def _add_sizes(self, rows: pa.Table) -> None:
        """One batch's object sizes over all groups: apart from the groups' rows once there are two
        (seeded with the first group's, every earlier batch's rows being that group's)."""
        if self._sizes is None and len(self._groups) > 1:
            first = next(iter(self._groups.values()))
            self._sizes = VideoRows(_SIZE_SCHEMA, _SIZE_SUMS)
            earlier = first.videos.table().select(_SIZE_SCHEMA.names)
            self._sizes.add(earlier.filter(pc.is_valid(earlier.column("stored"))))
        if self._sizes is not None:
            self._sizes.add(rows)

    def _labels(self, table: pa.Table) -> pa.Array:
        if self.label == "video":
            return table.column(KEY).combine_chunks()
        codec = table.column("codec").to_pylist()
        kind = table.column("target_kind").to_pylist()
        value = table.column("target_value").to_pylist()
        cache: dict[tuple[Any, Any, Any], str] = {}
        labels = []
        for key in zip(codec, kind, value, strict=True):
            label = cache.get(key)
            if label is None:
                label = cache[key] = group_key_label(
                    dict(zip(("codec", "target_kind", "target_value"), key, strict=True))
                )
            labels.append(label)
        return pa.array(labels, type=pa.string())

    def _add_references(self, table: pa.Table, labels: pa.Array) -> None:
        """The sampled GOPs' keys (a few per cent of the rows) with their group, kept in the order met:
        joined to the reference rows once, not per batch (`_join_references`)."""
        sampled = pc.fill_null(pc.is_in(table.column(KEY), value_set=self.reference_videos), False)
        if not pc.any(sampled).as_py():
            return
        keys = table.filter(sampled).select(list(REFERENCE_KEY))
        self._sampled.append(keys.append_column("label", pc.dictionary_encode(labels.filter(sampled))))

    def _join_references(self) -> None:
        """Each sampled manifest row's reference row (if any) appended to its group's, in the order the
        rows came: the bootstrap's resamples depend on that order, so the join is re-sorted by it."""
        if not self._sampled:
            return
        sampled = pa.concat_tables(self._sampled)
        self._sampled = []
        met = pa.table(
            {
                **{column: sampled.column(column) for column in REFERENCE_KEY},
                "label": pc.cast(sampled.column("label"), pa.string()),
                "met": pa.array(np.arange(sampled.num_rows, dtype=np.int64)),
            }
        )
        joined = met.join(
            _keys_with_rows(self.references), list(REFERENCE_KEY), join_type="inner", use_threads=False
        )
        joined = joined.select(["label", "met", "row"])
        joined = joined.take(pc.sort_indices(joined, [("met", "ascending")]))
        for label, rows in _by_label(joined):
            acc = self._groups[label]
            acc.reference = pa.concat_tables([acc.reference, self.references.take(rows.column("row"))])

    def stored_sizes(self, out: str, endpoint_url: str | None) -> pa.Table | None:
        """Object sizes per video (`video_key`, `stored`): from the rows, or (an archive written before
        `archive_bytes`) from one listing of `videos/`."""
        if self.sizes_known:
            return self.sizes
        listed = stored_bytes(out, endpoint_url)
        return None if listed is None else _size_table(listed)


def _keys_with_rows(references: pa.Table) -> pa.Table:
    """The reference rows' keys and their row numbers (`row`), to join the manifest's rows to."""
    positions = pa.array(np.arange(references.num_rows, dtype=np.int64))
    return references.select(list(REFERENCE_KEY)).append_column("row", positions)


def _derived(table: pa.Table, labels: pa.Array) -> pa.Table:
    """The columns the sums need, per OK row: frames, pixels, payload as float64, compute accounted."""
    frames = pc.cast(pc.fill_null(table.column("frame_count"), 0), pa.float64())
    stage_columns = [compute_column(s) for s in COMPUTE_STAGES]
    unaccounted = pc.is_null(table.column(stage_columns[0]))
    for column in stage_columns[1:]:
        unaccounted = pc.and_(unaccounted, pc.is_null(table.column(column)))
    pixels = pc.multiply(
        pc.multiply(
            pc.cast(pc.fill_null(table.column("width"), 0), pa.float64()),
            pc.cast(pc.fill_null(table.column("height"), 0), pa.float64()),
        ),
        frames,
    )
    return pa.table(
        {
            "label": labels,
            "device": pc.fill_null(table.column("compute_device"), CPU_DEVICE),
            KEY: table.column(KEY),
            "frames": frames,
            "pixels": pixels,
            "payload": pc.cast(pc.fill_null(table.column("payload_bytes"), 0), pa.float64()),
            "unaccounted": pc.cast(unaccounted, pa.int64()),
            "source_bytes": table.column("source_bytes"),
            "archive_bytes": table.column("archive_bytes"),
            "archive_uri": table.column("archive_uri"),
            "storage_class": table.column("storage_class"),
            **{column: table.column(column) for column in stage_columns},
        }
    )


def _object_entries(per_video: pa.Table) -> pa.Table:
    """The (group, video) rows whose object is not their own unclassed one: a pack's member (its
    object's URI) or a recorded class (object null: its own)."""
    keys, uris = per_video.column(KEY), per_video.column("archive_uri_first")
    recorded = per_video.column("storage_class_first")
    own = _own_object(keys, uris)
    entries = pa.table(
        {
            "label": per_video.column("label"),
            KEY: keys,
            "object": pc.if_else(own, pa.scalar(None, pa.string()), uris),
            "storage_class": recorded,
        }
    )
    return entries.filter(pc.or_(pc.invert(own), pc.is_valid(recorded)))


def _own_object(keys: pa.ChunkedArray, uris: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whether each video's object is its own: `uri is None or uri == key or
    uri.endswith(f"/{key}{CONTAINER_SUFFIX}")`, as Arrow kernels (a key holds no "/"; were one to, row
    by row)."""
    if pc.any(pc.match_substring(keys, "/")).as_py():
        pairs = zip(keys.to_pylist(), uris.to_pylist(), strict=True)
        return pa.chunked_array(
            [pa.array([u is None or u == k or u.endswith(f"/{k}{CONTAINER_SUFFIX}") for k, u in pairs])]
        )
    name = pc.struct_field(pc.extract_regex(uris, r"/(?P<name>[^/]*)\z"), [0])  # after the last "/"
    named = pc.equal(name, pc.binary_join_element_wise(keys, CONTAINER_SUFFIX, ""))
    return pc.fill_null(pc.or_kleene(pc.or_kleene(pc.is_null(uris), pc.equal(uris, keys)), named), False)


def _by_label(rows: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """`rows` split by their `label` column (dropped), each part in its rows' order."""
    if not rows.num_rows:
        return
    labels = rows.column("label")
    rows = rows.drop_columns(["label"])
    encoded = pc.dictionary_encode(labels.combine_chunks())
    if len(encoded.dictionary) == 1:
        yield encoded.dictionary[0].as_py(), rows
        return
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    for part in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        yield encoded.dictionary[codes[part[0]]].as_py(), rows.take(part)


def _size_table(sizes: Mapping[str, int]) -> pa.Table:
    return pa.table(
        {KEY: pa.array(list(sizes), pa.string()), "stored": pa.array(list(sizes.values()), pa.int64())}
    )


COST_COLUMNS = (
    "run_id", "video_key", "source_uri", "source_bytes", "gop_index", "codec", "target_kind", "target_value",
    "status", "payload_bytes", "width", "height", "frame_count", "compute_device", "archive_bytes",
    "archive_uri", "storage_class", *(compute_column(s) for s in COMPUTE_STAGES),
)  # fmt: skip


def collect(
    out: str,
    *,
    label: str = "group",
    where_expression: Any = None,
    source_uris: set[str] | None = None,
    endpoint_url: str | None = None,
) -> CostCollector:
    """One pass over the manifest (and the reference rows) into per-group accumulators."""
    from pipeline.audit.reader import iter_batches, open_manifest

    damaged: list[Any] = []
    collector = CostCollector(
        _reference_rows(out, endpoint_url, damaged), label=label, source_uris=source_uris
    )
    collector.damaged = damaged
    dataset = open_manifest(out, endpoint_url=endpoint_url)
    for batch in iter_batches(dataset, COST_COLUMNS, where_expression):
        collector.add(batch)
    return collector


#: The reference columns the figures read (`_by_reference`, `_reference_figures`) and the row's key:
#: a million-video archive samples hundreds of thousands of reference GOPs, held as one Arrow table.
REFERENCE_COST_COLUMNS = (
    "video_key", "gop_index", "run_id", "reference_codec", "metric", "metric_note", "status",
    "log_ratio", "frame_count", "width", "height", "cpu_seconds", "encode_cpu_seconds",
)  # fmt: skip
#: What identifies a reference row: rows of an earlier encoding (another run) never match.
REFERENCE_KEY = ("video_key", "gop_index", "run_id")
#: Columns with few distinct values (the same codec, metric and note on every row): dictionary-encoded.
_REPEATED_COLUMNS = ("reference_codec", "metric", "metric_note", "status")
#: The reference rows as held (`_reference_rows`, `_Acc.reference`).
REFERENCE_ROWS_SCHEMA = pa.schema(
    [
        pa.field(name, pa.dictionary(pa.int32(), pa.string()))
        if name in _REPEATED_COLUMNS
        else REFERENCE_SCHEMA.field(name)
        for name in REFERENCE_COST_COLUMNS
    ]
)


def _reference_rows(out: str, endpoint_url: str | None, damaged: list[Any] | None = None) -> pa.Table:
    """Reference rows (`REFERENCE_ROWS_SCHEMA`), one per (video_key, gop_index, run_id): rows of an
    earlier encoding never match.

    The files are read in name order, `reference/compacted-*` (`pipeline.tools.compact_reference`,
    oldest first) before `reference/part-*`, and the last copy of a row is kept: a row both in a compacted
    file and in a part (a compaction killed before it deleted the parts) counts once, and a part written
    after its rows were compacted wins. Rows are in the order their key was first read (as a dict keyed
    by it would hold them: `ls` bootstraps a video's rows in that order). Damaged files (`DamagedPart`)
    are appended to `damaged`."""
    from pipeline.audit.reader import iter_batches, open_reference

    dataset = open_reference(out, endpoint_url=endpoint_url)
    if dataset is None:
        return REFERENCE_ROWS_SCHEMA.empty_table()
    tables = [_held_batch(batch) for batch in iter_batches(dataset, list(REFERENCE_COST_COLUMNS))]
    if damaged is not None:
        damaged.extend(dataset.damaged)
    if not tables:
        return REFERENCE_ROWS_SCHEMA.empty_table()
    return _last_copies(pa.concat_tables(tables).unify_dictionaries())


def _held_batch(batch: pa.RecordBatch) -> pa.Table:
    """One batch as held: the repeated columns dictionary-encoded (a few bytes a row, not the note's
    forty), right after it is read, so the whole is never held with plain strings."""
    columns = [
        pc.dictionary_encode(batch.column(name)) if name in _REPEATED_COLUMNS else batch.column(name)
        for name in REFERENCE_COST_COLUMNS
    ]
    return pa.Table.from_arrays(columns, schema=REFERENCE_ROWS_SCHEMA)


def _last_copies(rows: pa.Table) -> pa.Table:
    """One row per key: the last copy's values, at the place of the first (a dict's update order).
    By a stable sort of the keys and a look at neighbours, not a hash of them: a group-by's hash table
    held more memory than the rows themselves."""
    order = pc.sort_indices(rows, [(column, "ascending") for column in REFERENCE_KEY])
    keys = rows.select(list(REFERENCE_KEY)).take(order)
    repeats = _same_as_previous(keys)
    if not repeats.any():  # no key twice
        return rows
    starts = np.flatnonzero(~repeats)  # each key's first copy in `order`; the copies of a key follow it
    ends = np.append(starts[1:], len(repeats)) - 1
    positions = order.to_numpy()
    first, last = positions[starts], positions[ends]
    return rows.take(pa.array(last[np.argsort(first, kind="stable")]))


def _same_as_previous(keys: pa.Table) -> np.ndarray:
    """Per row of `keys`, whether it equals the row before (null equal to null, as in a dict)."""
    same = np.zeros(keys.num_rows, dtype=bool)
    if keys.num_rows < 2:
        return same
    same[1:] = True
    for column in keys.columns:
        before, after = column.slice(0, len(column) - 1), column.slice(1)
        equal = pc.fill_null(pc.equal(before, after), False)
        both_null = pc.and_(pc.is_null(before), pc.is_null(after))
        same[1:] &= np.asarray(pc.or_(equal, both_null).to_numpy(zero_copy_only=False), dtype=bool)
    return same


def stored_bytes(out: str, endpoint_url: str | None) -> dict[str, int] | None:
    """video key -> size of its archive object, from one listing of `videos/` (None if unlistable)."""
    from pipeline.store import storage

    try:
        fs, root = storage.filesystem(out, endpoint_url=endpoint_url)
        folder = storage.join(root, "videos")
        if not fs.exists(folder):
            return {}
        listing = fs.find(folder, detail=True)
    except Exception:
        return None
    sizes = {}
    for path, info in listing.items():
        name = path.rsplit("/", 1)[-1]
        if name.endswith(CONTAINER_SUFFIX) and ".tmp-" not in name:
            sizes[name[: -len(CONTAINER_SUFFIX)]] = int(info.get("size") or 0)
    return sizes


# ---- figures ---------------------------------------------------------------------------------------
#: Video key -> the size of its archive object: a mapping, or a table of `video_key`, `stored`.
Sizes = Mapping[str, int] | pa.Table | None


class _Held(NamedTuple):
    """What a group's videos hold: their count, source bytes, stored bytes (None where an object's size
    is unknown) and the storage of their objects in their classes (`class_costs`)."""

    videos: int
    source_bytes: int
    stored_bytes: int | None
    storage: dict[str, Any]


def figures(
    acc: _Acc, prices: Prices, sizes: Sizes, object_bytes: dict[str, int] | None = None
) -> dict[str, Any]:
    """Compute, its cost, storage in its class, and the break-even against the source and the
    reference, for one group. `object_bytes`: whole objects' sizes where known (packs, for `ls`)."""
    by_device: dict[str, float] = collections.defaultdict(float)
    codec_by_device: dict[str, float] = collections.defaultdict(float)
    for stage, kinds in acc.seconds.items():
        for kind, seconds in kinds.items():
            by_device[kind] += seconds
            if stage in CODEC_STAGES:
                codec_by_device[kind] += seconds
    cost = device_cost(by_device, prices)
    if acc.one_video is not None:
        held = _one_video_held(acc.one_video, prices, sizes, object_bytes or {})
    else:
        held = _held(acc, prices, sizes, object_bytes or {})
    if held.stored_bytes is not None:
        stored, stored_note = held.stored_bytes, "archive objects (videos/*.vdrc)"
    else:
        stored, stored_note = acc.payload_bytes, "GOP payloads (archive objects could not be listed)"
    storage = held.storage
    result: dict[str, Any] = {
        "videos": held.videos,
        "gops": acc.gops,
        "gops_without_accounting": acc.gops_unaccounted,
        "frames": acc.frames,
        "payload_bytes": acc.payload_bytes,
        "source_bytes": held.source_bytes,
        "stored_bytes": stored,
        "stored_bytes_are": stored_note,
        "device_seconds": {stage: dict(kinds) for stage, kinds in sorted(acc.seconds.items())},
        "device_seconds_by_kind": dict(by_device),
        "device_hours_by_kind": {kind: s / 3600.0 for kind, s in by_device.items()},
        "compute_cost": cost,
        "cost_by_kind": {kind: device_cost({kind: s}, prices) for kind, s in by_device.items()},
        "codec_compute_cost": device_cost(codec_by_device, prices),
        "storage": storage,
        "vs_source": payback(cost, held.source_bytes - stored, prices, storage),
        "references": [],
    }
    if acc.gops_unaccounted:
        result["note"] = (
            f"{acc.gops_unaccounted} of {acc.gops} GOPs carry no compute accounting "
            "(archived by an earlier release): their compute is not in the cost"
        )
    for (codec, metric), rows in sorted(_by_reference(acc.reference).items()):
        result["references"].append(_reference_figures(codec, metric, rows, acc, result, prices))
    return result


def _one_video_held(video: OneVideo, prices: Prices, sizes: Sizes, object_bytes: dict[str, int]) -> _Held:
    """`_held` of one video, in plain Python (`ls` asks once per video)."""
    stored = _size_of(sizes, video.key)
    size = float(stored if stored is not None else video.payload_bytes)
    whole = max(size, float(object_bytes.get(video.object, 0)))
    storage = storage_costs([(video.storage_class, size, whole)], prices)
    return _Held(1, video.source_bytes, stored, storage)


def _size_of(sizes: Sizes, key: str) -> int | None:
    if sizes is None:
        return None
    if isinstance(sizes, pa.Table):
        found = sizes.filter(pc.equal(sizes.column(KEY), key)).column("stored").to_pylist()
        return found[-1] if found else None
    return sizes.get(key)


def _held(acc: _Acc, prices: Prices, sizes: Sizes, object_bytes: dict[str, int]) -> _Held:
    """A group's videos with Arrow kernels: sums, their object sizes looked up, and their objects'
    storage (a pack's members add up to one object)."""
    videos = acc.videos.table()
    stored = _stored_of(videos.column(KEY), sizes)
    source = int(pc.sum(videos.column("source")).as_py() or 0)
    known = stored is not None and stored.null_count == 0
    stored_total = int(pc.sum(stored).as_py() or 0) if known else None
    recorded, size, whole = _objects(videos, stored, acc.objects.table(), object_bytes)
    return _Held(videos.num_rows, source, stored_total, storage_costs_of(recorded, size, whole, prices))


def _stored_of(keys: pa.ChunkedArray, sizes: Sizes) -> pa.ChunkedArray | pa.Array | None:
    """Each video's object size from `sizes` (null where it has none), or None without `sizes`."""
    if sizes is None:
        return None
    if not isinstance(sizes, pa.Table):
        return pa.array([sizes.get(key) for key in keys.to_pylist()], pa.int64())
    if sizes.num_rows == len(keys) and sizes.column(KEY).equals(keys):  # one group: its own videos
        return sizes.column("stored")
    index = pc.index_in(keys, value_set=sizes.column(KEY).combine_chunks())
    return pc.take(sizes.column("stored"), index)


def _objects(
    videos: pa.Table,
    stored: pa.ChunkedArray | pa.Array | None,
    objects: pa.Table,
    object_bytes: dict[str, int],
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(recorded class, bytes in scope, whole object's bytes) per object of the group, as columns, in
    the order their first video was met: a pack's members add up to one object. A video's bytes: its
    object's size (a member's length), else its payload (objects that could not be listed). `objects`
    holds only what differs from a video in its own object with no recorded class."""
    payload = videos.column("payload")
    size = payload if stored is None else pc.coalesce(stored, payload)
    keys = videos.column(KEY)
    if not objects.num_rows and not object_bytes:  # each video in its own object, no class recorded
        return pa.nulls(len(keys), pa.string()), _floats(size), _floats(size)
    index = pc.index_in(keys, value_set=objects.column(KEY).combine_chunks())
    shared = pc.take(objects.column("object"), index)  # null: the video's own object
    recorded = pc.take(objects.column("storage_class"), index)
    if shared.null_count == len(shared) and not object_bytes:  # own objects, some with a class
        return recorded, _floats(size), _floats(size)
    rows = pa.table(
        {
            "object": pc.coalesce(shared, keys),
            "storage_class": recorded,
            "size": size,
            "first": pa.array(np.arange(len(keys), dtype=np.int64)),
        }
    )
    rows = _one_row_per_object(rows, pc.is_valid(shared))
    sizes = _floats(rows.column("size"))
    whole = sizes
    if object_bytes:
        listed = [float(object_bytes.get(uri, 0)) for uri in rows.column("object").to_pylist()]
        whole = np.maximum(sizes, np.asarray(listed, dtype=np.float64))
    return rows.column("storage_class"), sizes, whole


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _one_row_per_object(rows: pa.Table, shared: pa.ChunkedArray | pa.Array) -> pa.Table:
    """Videos sharing an object (pack members, or one named like another's key) -> one row: their
    summed size, the first one's class and position; objects ordered by that position."""
    if not pc.any(shared).as_py():
        return rows
    named = rows.column("object").filter(shared).combine_chunks()
    grouped = pc.or_(shared, pc.is_in(rows.column("object"), value_set=named))
    merged = (
        rows.filter(grouped)
        .group_by("object", use_threads=False)
        .aggregate([("storage_class", "first", OF_THE_ROW), ("size", "sum"), ("first", "min")])
        .rename_columns({"storage_class_first": "storage_class", "size_sum": "size", "first_min": "first"})
    )
    together = pa.concat_tables([rows.filter(pc.invert(grouped)), merged.select(rows.column_names)])
    return together.take(pc.sort_indices(together, [("first", "ascending")]))


def _by_reference(rows: pa.Table) -> dict[tuple[str, str], pa.Table]:
    """The rows per (reference codec, metric), each part in the rows' order. In Python over the two
    columns: `ls` asks for one video's few rows at a time, where a group-by costs a millisecond."""
    positions: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    pairs = zip(rows.column("reference_codec").to_pylist(), rows.column("metric").to_pylist(), strict=True)
    for i, pair in enumerate(pairs):
        positions[pair].append(i)
    if len(positions) == 1:
        return {pair: rows for pair in positions}
    return {pair: rows.take(pa.array(at, pa.int64())) for pair, at in positions.items()}


#: The reference columns `_reference_figures` reads, as Python lists (one codec and metric at a time).
_FIGURE_COLUMNS = ("status", "log_ratio", "frame_count", "width", "height", "video_key", "metric_note",
                   "cpu_seconds", "encode_cpu_seconds")  # fmt: skip


def _reference_figures(
    codec: str, metric: str, rows: pa.Table, acc: _Acc, group: dict[str, Any], prices: Prices
) -> dict[str, Any]:
    """The equal-quality ratio and break-even against one reference codec at one metric. The rows'
    columns become Python lists here, one group at a time, and are summed in the rows' order, so the
    figures are those of a sum over one dict per row, to the last bit."""
    column = {name: rows.column(name).to_pylist() for name in _FIGURE_COLUMNS}
    status, log_ratio, frames = column["status"], column["log_ratio"], column["frame_count"]
    ok = [i for i, (s, r) in enumerate(zip(status, log_ratio, strict=True)) if s == "ok" and r is not None]
    keys = column["video_key"]
    ratio = equal_quality_ratio([log_ratio[i] for i in ok], [frames[i] for i in ok], [keys[i] for i in ok])
    notes = sorted({note for note in column["metric_note"] if note})
    entry: dict[str, Any] = {
        "codec": codec,
        "metric": metric,
        "metric_note": "; ".join(notes) or None,
        "gops_sampled": rows.num_rows,
        "gops_by_status": dict(collections.Counter(status)),
        "ratio": ratio,
        "statement": statement(ratio, codec, metric),
        "measurement_cost": _sum_of(column["cpu_seconds"]) / 3600.0 * prices.cpu_hour.value,
    }
    if ratio is None:
        return entry
    width, height = column["width"], column["height"]
    sampled_pixels = sum(width[i] * height[i] * frames[i] for i in ok) or 1
    encode_cpu_seconds = column["encode_cpu_seconds"]
    encode_seconds = _sum_of([encode_cpu_seconds[i] for i in ok])
    reference_cost = encode_seconds / sampled_pixels * acc.pixels / 3600.0 * prices.cpu_hour.value
    extra = group["codec_compute_cost"] - reference_cost
    reference_bytes = acc.payload_bytes * math.exp(-ratio["mean_log_ratio"])
    entry.update(
        reference_bytes_estimate=reference_bytes,
        reference_compute_cost_estimate=reference_cost,
        codec_compute_cost=group["codec_compute_cost"],
        vs_reference=payback(extra, reference_bytes - acc.payload_bytes, prices, group["storage"]),
    )
    if ratio["ci_percent"] is not None:  # the break-even at both ends of the interval
        ends = []
        for percent in ratio["ci_percent"]:
            saved = acc.payload_bytes / (1.0 - percent / 100.0) - acc.payload_bytes
            ends.append(payback(extra, saved, prices, group["storage"]))
        entry["vs_reference_ci"] = {
            "months_in_class": [end["months_in_class"] for end in ends],
            "months": {name: [end["months"][name] for end in ends] for name in prices.storage_gb_month},
            "downloads": [end["downloads"] for end in ends],
        }
    return entry


def _sum_of(values: list[float | None]) -> float:
    """Σ values (None as 0), one by one in their order, as `sum` over the rows always added them."""
    return sum(value or 0.0 for value in values)


def statement(ratio: dict[str, Any] | None, codec: str, metric: str) -> str:
    """Like "this archive is 23.4 % smaller than x265 at equal VMAF (95 % CI 18.0 % to 28.1 % smaller;
    40 GOPs of 12 videos)"; an interval across zero reads "(95 % CI 3.0 % larger to 9.1 % smaller; …)"."""
    if ratio is None:
        return f"no {codec} reference GOP could be compared at equal {metric.upper()}"
    text = f"this archive is {_smaller(ratio['smaller_percent'])} than {codec} at equal {metric.upper()}"
    ci = ratio["ci_percent"]
    if ci is None:
        return text + " (1 GOP sampled: no interval)"
    low, high = ci
    if (low >= 0) == (high >= 0):  # one direction: say it once
        word = "smaller" if low >= 0 else "larger"
        ends = sorted((abs(low), abs(high)))
        interval = f"{ends[0]:.1f} % to {ends[1]:.1f} % {word}"
    else:
        interval = f"{_smaller(low)} to {_smaller(high)}"
    return text + f" (95 % CI {interval}; {ratio['gops']} GOPs of {ratio['videos']} videos)"


def _smaller(percent: float) -> str:
    return f"{abs(percent):.1f} % {'smaller' if percent >= 0 else 'larger'}"


def relative_payback(a: dict[str, Any], b: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """B's break-even against A (two archives of the same videos, `figures` of each): B's extra codec
    compute (encode + search) against the payload bytes it saves. Quality is not equalised here: read
    it with compare's quality delta or BD-rate."""
    result = payback(
        b["codec_compute_cost"] - a["codec_compute_cost"],
        a["payload_bytes"] - b["payload_bytes"],
        prices,
        b.get("storage"),
    )
    result["definition"] = (
        "B's codec compute (encode + search) minus A's, against A's payload bytes minus B's"
    )
    return result


def cost_report(
    out: str,
    prices: Prices,
    *,
    where_expression: Any = None,
    source_uris: set[str] | None = None,
    endpoint_url: str | None = None,
    damaged: list[Any] | None = None,
) -> dict[str, Any]:
    """Figures per codec/target group and for the whole (filtered) archive, with the prices used;
    damaged reference files (`DamagedPart`, their rows left out) are appended to `damaged`."""
    collector = collect(
        out, where_expression=where_expression, source_uris=source_uris, endpoint_url=endpoint_url
    )
    if damaged is not None:
        damaged.extend(collector.damaged)
    return report_from(collector, prices, out, endpoint_url)


def report_from(
    collector: CostCollector, prices: Prices, out: str, endpoint_url: str | None
) -> dict[str, Any]:
    """`cost_report`'s figures from an already filled collector (audit fills it in its own pass)."""
    groups = collector.groups
    sizes = collector.stored_sizes(out, endpoint_url)
    by_group = {label: figures(acc, prices, sizes) for label, acc in sorted(groups.items())}
    if len(by_group) == 1:  # the total is the one group: no second copy of its per-video state
        return {
            "prices": prices.to_json(),
            "uses_default_prices": prices.uses_defaults(),
            "groups": by_group,
            "total": copy.deepcopy(next(iter(by_group.values()))),
        }
    total = _Acc()
    for acc in groups.values():
        total.add(acc)
    return {
        "prices": prices.to_json(),
        "uses_default_prices": prices.uses_defaults(),
        "groups": by_group,
        "total": figures(total, prices, sizes),
    }
