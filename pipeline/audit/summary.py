"""The audit: per codec/target totals, rates, quality percentiles, failures and the worst GOPs.

One streaming pass over the (filtered) manifest. Groups are (codec, target_kind, target_value).
Definitions, so numbers can be checked by hand:

- bytes: sum of GOP payload bytes (container overhead excluded); bpp = 8·bytes / Σ(width·height·frames)
  (never divided by 3); kbps = 8·bytes / Σ(frames/fps) / 1000.
- compression ratio = Σ source bytes / Σ stored bytes of the group's videos (each counted once): the
  source files against the archive objects that replace them (GOPs, audio, index), the definition
  `summary.json` uses too (`compression_ratio_of` names it). Archives written before the manifest
  recorded object sizes (`archive_bytes`) fall back to Σ GOP payload bytes, and say so. With `--where`
  it relates whole sources to the matching GOPs' videos, so read it on unfiltered audits.
- Quality percentiles are oriented to the bad tail: for metrics where higher is better (PSNR, MS-SSIM,
  VMAF) p1/p5/p50 are the 1st/5th/50th percentiles; for distances (LPIPS, DISTS, flicker) the "p1"
  column is the 99th percentile — in both cases "p1" is the value the worst 1 % of GOPs reach.
  They come from `sketch.Reservoir` (exact up to 100 000 GOPs per group).
- Each metric's `count` is the GOPs it was measured on, `of_gops` the group's GOPs: the expensive
  metrics (MS-SSIM, VMAF, LPIPS, DISTS) are measured on a seeded sample by default
  (`--metrics-sample`), so their figures carry 95 % intervals computed from the sample's size: the
  mean's (normal approximation, z·s/√n) and each percentile's (distribution-free, from order
  statistics; an end the sample is too small to bound is null). The cheap metrics' intervals are
  there too, and are narrow.
- failures: rows whose status is not "ok" (a failed video contributes one row with its error).
- quality targets (groups archived with `--target-vmaf/-psnr/-dists`, target_kind = the metric): the
  manifest's own measurements checked against the target. A GOP falls short when its value is worse
  than the target; a video falls short when its frame-weighted mean is. GOPs whose metric was not
  measured (`--metrics-every`) are counted as unmeasured, never as met.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.audit.filters import FilterError, parse_filter
from pipeline.audit.groups import RATE_TARGETS, group_label
from pipeline.audit.reader import AuditError, iter_batches, open_manifest, open_verify
from pipeline.audit.sketch import Reservoir, WorstRows
from pipeline.audit.video_rows import KEY, Aggregation, VideoRows, reduce_rows
from pipeline.format.schema import MANIFEST_SCHEMA
from pipeline.metrics import HIGHER_IS_BETTER

QUALITY_METRICS: tuple[str, ...] = (
    "psnr",
    "psnr_y",
    "ms_ssim",
    "vmaf",
    "lpips",
    "lpips_vgg",
    "dists",
    "temporal_flicker",
)
PERCENTILES: tuple[int, ...] = (1, 5, 50)
ROW_FIELDS: tuple[str, ...] = (
    "video_key",
    "source_uri",
    "archive_uri",
    "codec",
    "target_kind",
    "target_value",
    "gop_index",
    "first_frame",
    "frame_count",
    "width",
    "height",
    "fps",
    "bpp",
    "kbps",
    "offset",
    "length",
    *QUALITY_METRICS,
)
_NEEDED = (
    *ROW_FIELDS,
    "source_bytes",
    "archive_bytes",
    "payload_bytes",
    "encode_seconds",
    "status",
    "error",
    "target_reached",
)


@dataclasses.dataclass
class _Group:
    codec: str | None
    target_kind: str | None
    target_value: float | None
    #: per video: its OK rows' source_bytes and archive_bytes (the size of its archive object; a pack
    #: member: its length). Arrow, not Python sets and dicts: a million videos are ~70 MB here, not ~350.
    video_rows: VideoRows = dataclasses.field(default_factory=lambda: VideoRows(_VIDEO_SCHEMA, _VIDEO_MAX))
    gops: int = 0
    failures: int = 0
    payload_bytes: int = 0
    pixels: float = 0.0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    quality: dict[str, Reservoir] = dataclasses.field(default_factory=dict)
    #: Quality-target groups only: video -> [Σ value·frames, Σ frames] of the target metric.
    target_sums: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    target_gops_short: int = 0
    target_gops_unmeasured: int = 0
    #: Bitrate-target groups only: GOPs the codec said missed the rate, and those with no verdict
    #: (rows of releases before `target_reached`).
    rate_gops_missed: int = 0
    rate_gops_unknown: int = 0

    @property
    def target_metric(self) -> str | None:
        return self.target_kind if self.target_kind in QUALITY_METRICS else None

    def target_check(self) -> dict[str, Any] | None:
        metric = self.target_metric
        if metric is None or self.target_value is None:
            return None
        higher = HIGHER_IS_BETTER[metric]
        means = {video: total / frames for video, (total, frames) in self.target_sums.items() if frames}
        short = sorted(
            (
                video
                for video, mean in means.items()
                if (mean < self.target_value if higher else mean > self.target_value)
            ),
        )
        worst = (min if higher else max)(means.values()) if means else None
        return {
            "metric": metric,
            "target": self.target_value,
            "gops_measured": self.gops - self.target_gops_unmeasured,
            "gops_short": self.target_gops_short,
            "gops_unmeasured": self.target_gops_unmeasured,
            "videos_measured": len(means),
            "videos_short": len(short),
            "videos_short_listed": short[:50],
            "worst_video_mean": worst,
        }

    def rate_check(self) -> dict[str, Any] | None:
        """A bitrate target's verdicts: how many GOPs missed it (the codec's own `target_reached`)."""
        if self.target_kind not in RATE_TARGETS or self.target_value is None:
            return None
        return {
            "target": f"{self.target_kind} {self.target_value:g}",
            "gops_missed": self.rate_gops_missed,
            "gops_unknown": self.rate_gops_unknown,
            "of_gops": self.gops,
        }

    def add_videos(self, rows: pa.Table) -> None:
        """`rows`: video_key, source, stored (null where no OK row had it), any number per video."""
        self.video_rows.add(reduce_rows(rows, _VIDEO_MAX))

    def _ratio(self, source_total: int, videos: pa.Table) -> dict[str, Any]:
        """Source bytes over stored object bytes, or over GOP payloads for rows of older releases."""
        sizes = videos.select(["source", "stored"])  # not the keys: no copy of a million of them
        with_source = sizes.filter(pc.is_valid(sizes.column("source")))
        if with_source.num_rows and with_source.column("stored").null_count == 0:
            stored = int(pc.sum(with_source.column("stored")).as_py() or 0)
            return {
                "compression_ratio": source_total / stored if stored else None,
                "compression_ratio_of": "source bytes / archive object bytes",
                "stored_bytes": stored,
            }
        return {
            "compression_ratio": source_total / self.payload_bytes if self.payload_bytes else None,
            "compression_ratio_of": "source bytes / GOP payload bytes (object sizes not recorded by the "
            "release that wrote these rows)",
            "stored_bytes": None,
        }

    def result(self) -> dict[str, Any]:
        videos = self.video_rows.table()
        source_total = int(pc.sum(videos.column("source")).as_py() or 0)
        quality: dict[str, dict[str, float | int | None]] = {}
        for metric, reservoir in self.quality.items():
            higher = HIGHER_IS_BETTER[metric]
            interval = reservoir.mean_interval()
            entry: dict[str, Any] = {
                "count": reservoir.count,
                "of_gops": self.gops,
                "mean": reservoir.mean,
                "mean_ci95": list(interval) if interval else None,
            }
            for p in PERCENTILES:
                q = (p if higher else 100 - p) / 100.0
                entry[f"p{p}"] = reservoir.quantile(q)
                entry[f"p{p}_ci95"] = list(reservoir.quantile_interval(q))
            quality[metric] = entry
        return {
            "codec": self.codec,
            "target_kind": self.target_kind,
            "target_value": self.target_value,
            "label": group_label(self.codec, self.target_kind, self.target_value),
            "videos": videos.num_rows,
            "gops": self.gops,
            "failures": self.failures,
            "payload_bytes": self.payload_bytes,
            "source_bytes": source_total,
            **self._ratio(source_total, videos),
            "bpp": 8.0 * self.payload_bytes / self.pixels if self.pixels else None,
            "kbps": 8.0 * self.payload_bytes / self.seconds / 1000.0 if self.seconds else None,
            "encode_seconds": self.encode_seconds,
            "quality": quality,
            "target_check": self.target_check(),
            "rate_check": self.rate_check(),
        }


@dataclasses.dataclass
class AuditResult:
    out: str
    where: str | None
    groups: list[dict[str, Any]]
    worst: dict[str, list[dict[str, Any]]]
    failures: list[dict[str, Any]]
    verify: dict[str, Any] | None
    rows: int
    #: Manifest parts, and with prices reference files, that do not parse (uri, folder, video_key,
    #: reason): their rows are not in the audit.
    damaged_parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Compute spent, the classic reference and the break-even (`costs.cost_report`), when priced.
    costs: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def audit_archive(
    out: str,
    *,
    where: str | None = None,
    worst: int = 10,
    endpoint_url: str | None = None,
    batch_size: int = 65_536,
    prices: Any = None,
) -> AuditResult:
    """Stream the manifest of `out` once and summarise it (see the module docstring for definitions).

    With `prices` (`prices.Prices`), a second pass adds the compute, reference and break-even figures.
    """
    dataset = open_manifest(out, endpoint_url=endpoint_url)
    try:
        expression = parse_filter(where, MANIFEST_SCHEMA)
    except FilterError as exc:
        raise AuditError(str(exc)) from None
    groups: dict[tuple[Any, Any, Any], _Group] = {}
    worst_rows = {m: WorstRows(worst, HIGHER_IS_BETTER[m]) for m in QUALITY_METRICS}
    failures: list[dict[str, Any]] = []
    rows = 0
    collector = None
    reference_damaged: list[Any] = []  # damaged reference files: a finding like a damaged manifest part
    columns: tuple[str, ...] = _NEEDED
    if prices is not None:  # the costs come from the same pass over the manifest
        from pipeline.audit.costs import COST_COLUMNS, CostCollector, _reference_rows

        collector = CostCollector(_reference_rows(out, endpoint_url, reference_damaged))
        columns = tuple(dict.fromkeys([*_NEEDED, *COST_COLUMNS]))
    for batch in iter_batches(dataset, columns, expression, batch_size):
        rows += batch.num_rows
        _accumulate(batch, groups, worst_rows, failures)
        if collector is not None:
            collector.add(batch)
    costs = None
    if collector is not None:
        from pipeline.audit.costs import report_from

        costs = report_from(collector, prices, out, endpoint_url)
    return AuditResult(
        out=out,
        where=where,
        groups=[groups[key].result() for key in sorted(groups, key=_sort_key)],
        worst={metric: tracker.rows() for metric, tracker in worst_rows.items() if tracker.rows()},
        failures=failures,
        verify=summarise_verify(out, endpoint_url=endpoint_url),
        rows=rows,
        damaged_parts=[part.as_record() for part in [*dataset.damaged, *reference_damaged]],
        costs=costs,
    )


def _sort_key(key: tuple[Any, Any, Any]) -> tuple[str, str, float]:
    codec, kind, value = key
    return (codec or "", kind or "", value if value is not None else float("-inf"))


def _column(batch: pa.RecordBatch, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A column as numpy: numbers as float64 with NaN for null, strings as an object array."""
    array = batch.column(name)
    if dtype is object:
        return np.asarray(array.to_pylist(), dtype=object)
    return np.asarray(array.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=dtype)


_MAX_LISTED_FAILURES = 1000


def _accumulate(
    batch: pa.RecordBatch,
    groups: dict[tuple[Any, Any, Any], _Group],
    worst_rows: dict[str, WorstRows],
    failures: list[dict[str, Any]],
) -> None:
    codec = _column(batch, "codec", object)
    kind = _column(batch, "target_kind", object)
    value = _column(batch, "target_value")
    status = _column(batch, "status", object)
    video = _column(batch, "video_key", object)
    key_column = batch.column("video_key")
    source_bytes = _column(batch, "source_bytes")
    stored = _column(batch, "archive_bytes")
    payload = _column(batch, "payload_bytes")
    pixels = _column(batch, "width") * _column(batch, "height") * _column(batch, "frame_count")
    frames = _column(batch, "frame_count")
    seconds = frames / _column(batch, "fps")
    encode = _column(batch, "encode_seconds")
    metrics = {m: _column(batch, m) for m in QUALITY_METRICS}
    reached = _column(batch, "target_reached")  # 1.0 / 0.0, NaN where the row has no verdict
    ok = status == "ok"
    keys = [(c, k, None if np.isnan(v) else float(v)) for c, k, v in zip(codec, kind, value, strict=True)]
    for key in dict.fromkeys(keys):
        mask = np.fromiter((k == key for k in keys), dtype=bool, count=len(keys))
        group = groups.setdefault(key, _Group(*key))
        good = mask & ok
        group.add_videos(
            pa.table(
                {
                    "video_key": key_column.filter(pa.array(mask)),
                    "source": pa.array(np.where(good, source_bytes, np.nan)[mask], from_pandas=True),
                    "stored": pa.array(np.where(good, stored, np.nan)[mask], from_pandas=True),
                }
            )
        )
        group.gops += int(good.sum())
        group.failures += int((mask & ~ok).sum())
        group.payload_bytes += int(np.nansum(payload[good]))
        group.pixels += float(np.nansum(pixels[good]))
        group.seconds += float(np.nansum(seconds[good]))
        group.encode_seconds += float(np.nansum(encode[good]))
        for metric, values in metrics.items():
            selected = values[good]
            if np.isfinite(selected).any():
                group.quality.setdefault(metric, Reservoir()).add(selected)
        if group.target_metric is not None and group.target_value is not None:
            _check_target(group, metrics[group.target_metric][good], video[good], frames[good])
        if group.target_kind in RATE_TARGETS:
            verdicts = reached[good]
            group.rate_gops_missed += int((verdicts == 0.0).sum())
            group.rate_gops_unknown += int(np.isnan(verdicts).sum())
    for metric, values in metrics.items():
        masked = np.where(ok, values, np.nan)
        worst_rows[metric].offer(masked, lambda i: _row(batch, i, ROW_FIELDS))
    for i in np.flatnonzero(~ok)[: max(0, _MAX_LISTED_FAILURES - len(failures))]:
        failures.append(
            _row(batch, int(i), ("video_key", "source_uri", "codec", "gop_index", "status", "error"))
        )


#: Per video: its source and stored bytes (every row of a video carries the same; null where none of
#: its OK rows had one), as float64 (exact for the byte counts of any archive).
_VIDEO_SCHEMA = pa.schema([(KEY, pa.string()), ("source", pa.float64()), ("stored", pa.float64())])
_VIDEO_MAX: tuple[Aggregation, ...] = (("source", "max", None), ("stored", "max", None))


def _check_target(group: _Group, values: np.ndarray, videos: np.ndarray, frames: np.ndarray) -> None:
    """Accumulate the target metric: GOPs short of the target, per-video frame-weighted sums."""
    measured = np.isfinite(values)
    group.target_gops_unmeasured += int((~measured).sum())
    target = float(group.target_value)  # type: ignore[arg-type]
    worse = values < target if HIGHER_IS_BETTER[group.target_metric] else values > target  # type: ignore[index]
    group.target_gops_short += int((worse & measured).sum())
    for video, value, count in zip(videos[measured], values[measured], frames[measured], strict=True):
        sums = group.target_sums.setdefault(video, [0.0, 0.0])
        sums[0] += float(value) * float(count)
        sums[1] += float(count)


def _row(batch: pa.RecordBatch, index: int, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: batch.column(name)[index].as_py() for name in fields}


def summarise_verify(out: str, *, endpoint_url: str | None = None, listed: int = 50) -> dict[str, Any] | None:
    """Counts of verify rows and failures (None when the archive was never verified)."""
    dataset = open_verify(out, endpoint_url=endpoint_url)
    if dataset is None:
        return None
    columns = ["verify_run_id", "video_key", "gop_index", "codec", "device", "crc_ok", "decode_ok"]
    columns += ["recon_digest_ok", "quality_ok", "psnr_manifest", "psnr_verify", "status", "error"]
    summary: dict[str, Any] = {
        "rows": 0,
        "failed": 0,
        "crc_failed": 0,
        "decode_failed": 0,
        "quality_failed": 0,
    }
    summary["runs"], failed_rows, deltas = set(), [], []
    for batch in iter_batches(dataset, columns):
        table = pa.Table.from_batches([batch])
        summary["rows"] += table.num_rows
        summary["runs"].update(v for v in table.column("verify_run_id").to_pylist() if v)
        for name in ("crc", "decode", "quality"):
            summary[f"{name}_failed"] += sum(1 for v in table.column(f"{name}_ok").to_pylist() if v is False)
        for row in table.to_pylist():
            if row["psnr_manifest"] is not None and row["psnr_verify"] is not None:
                deltas.append(abs(row["psnr_verify"] - row["psnr_manifest"]))
            if row["status"] != "ok":
                summary["failed"] += 1
                if len(failed_rows) < listed:
                    failed_rows.append(row)
    summary["runs"] = sorted(summary["runs"])
    summary["failures"] = failed_rows
    summary["damaged_parts"] = [part.as_record() for part in dataset.damaged]
    summary["max_psnr_delta"] = max(deltas) if deltas else None
    return summary
