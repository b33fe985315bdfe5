"""A classic reference on a sample: what the same GOPs would cost with x264/x265/AV1 at equal quality.

`vidarc archive --reference x265 --reference-fraction 0.05` picks a seeded sample of each video's GOPs
(`choose_gops`), and once a sampled GOP is coded by the archive's codec, a CPU task beside the encode
actors codes the same source frames with the reference codec at the archive GOP's *own measured
quality*: the reference's CRF is searched per GOP exactly as a `--per-gop` quality target is
(`quality_target.find_rate_for_quality`), the search is completed to the two adjacent CRFs that
bracket the archive's score, and the reference's size at equal quality is interpolated between them
in log(bytes) (`bracket`). Rows go to `reference/part-<video_key>.parquet` (`pipeline.format.schema.
REFERENCE_SCHEMA`) once the video is committed and all its sampled GOPs are done; `summary.json` and
`vidarc audit` turn them into "X % smaller than x265 at equal VMAF" with a confidence interval
(`pipeline.audit.costs.equal_quality_ratio`).

A video may be committed while its references still run (a CRF search takes longer than a GOP's
encode). So that a driver killed in that window loses no rows, the video's sampled GOPs (their spans
and archive scores) are written to `markers/reference/<video_key>.json` before its commit; the part's
write deletes it (two small requests per sampled video). The next run with the same `--reference`
finds the markers of done videos, decodes those GOPs from their sources again and completes the part (`References.resume`; counted as
`backfilled_videos` in the summary). A run with another reference codec or metric leaves them, and
says so.

The metric is the quality target's (`--target-vmaf/-psnr/-dists`), else VMAF. When VMAF cannot be
measured (switched off by `--skip-metric vmaf`, or an ffmpeg without libvmaf) the reference falls back
to PSNR and says so: the reason is logged, and stored in every row's `metric_note` and in the summary.
Only GOPs whose metric the archive measured are eligible (`--metrics-every`).

Sampling: each video gets ⌊F·n⌋ or ⌈F·n⌉ of its n eligible GOPs (randomised rounding, so the expected
total is exactly F·N), chosen without replacement by a generator seeded with (seed, video_key): the
same video gets the same sample in every run, whatever the scheduling.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from codec.registry import CLASSIC_CODECS
from pipeline.archive import accounting
from pipeline.archive.gop_result import GopResult
from pipeline.archive.plan import GopSpan
from pipeline.archive.video_writer import gop_identity
from pipeline.format.keys import shard_of
from pipeline.format.runinfo import MARKERS_DIR, iter_marker_keys, json_text, utc_now, write_json
from pipeline.format.schema import REFERENCE_SCHEMA
from pipeline.read.manifest import parquet_bytes
from pipeline.store.storage import join, read_bytes, remove, write_bytes

if TYPE_CHECKING:
    from pipeline.archive.run_context import RunContext
    from pipeline.archive.video_state import GopTask, Video
    from pipeline.store.keyset import KeySet

REFERENCE_CODECS: tuple[str, ...] = CLASSIC_CODECS
#: Reference tasks in flight per encode actor; sampled GOPs beyond it wait (without their frames,
#: which are decoded again when they start) so the reference never holds more than this many GOPs.
IN_FLIGHT_PER_ACTOR = 2


def reference_path(out_root: str, video_key: str) -> str:
    return join(out_root, "reference", f"part-{video_key}.parquet")


#: `markers/reference/<video_key>.json`: a committed video's sampled GOPs whose part is not written yet.
PENDING_FOLDER = "reference"


def pending_path(out_root: str, video_key: str) -> str:
    return join(out_root, MARKERS_DIR, PENDING_FOLDER, f"{video_key}.json")


def choose_gops(video_key: str, eligible: list[int], fraction: float, seed: int) -> list[int]:
    """⌊F·n⌋ or ⌈F·n⌉ of the `eligible` GOP indices (randomised rounding), seeded by video and seed."""
    digest = int.from_bytes(hashlib.sha256(video_key.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, digest])
    expected = fraction * len(eligible)
    count = math.floor(expected)
    if rng.random() < expected - count:
        count += 1
    count = min(count, len(eligible))
    return sorted(int(i) for i in rng.choice(eligible, size=count, replace=False)) if count else []


def resolve_metric(
    goal_metric: str | None, skip_metrics: tuple[str, ...], vmaf_reason: Any
) -> tuple[str, str | None]:
    """(metric, note): the quality target's metric, else VMAF, else PSNR with the reason VMAF is out.

    `vmaf_reason()` is asked only when VMAF would be used: None if it can be measured, else why not.
    """
    if goal_metric is not None:
        return goal_metric, f"the archive's quality target metric ({goal_metric})"
    if "vmaf" in skip_metrics:
        return "psnr", "vmaf unavailable (switched off by --skip-metric vmaf): reference matched on psnr"
    reason = vmaf_reason()
    if reason:
        return "psnr", f"vmaf unavailable ({reason}): reference matched on psnr"
    return "vmaf", None


# ---- the reference task (runs on a CPU worker) --------------------------------------------------------
def code_reference_gop(frames: np.ndarray, spec: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Code one GOP with the reference codec at the archive's score; returns its reference row."""
    from codec.errors import CodecError
    from codec.registry import codec_class
    from pipeline.archive.quality_target import QualityTargetError

    codec_class(spec["codec"])  # imported before the clock starts: a worker's imports are not the search

    row = dict(row, created_at=utc_now())
    try:
        with accounting.stopwatch() as wall:
            found = bracket(
                frames,
                spec["codec"],
                Fraction(row["fps_num"], row["fps_den"]),
                spec["metric"],
                float(row["archive_score"]),
                preset=spec.get("preset"),
                weights_dir=spec.get("weights_dir"),
            )
    except (CodecError, QualityTargetError) as exc:
        return dict(row, status="failed", error=f"{row['source_uri']} GOP {row['gop_index']}: {exc}")
    # The encoder runs one thread: charged one CPU, whatever fraction of a CPU Ray reserved.
    return dict(row, **found, cpu_seconds=wall[0])


def bracket(
    frames: np.ndarray,
    codec_name: str,
    fps: Fraction,
    metric: str,
    target: float,
    *,
    preset: str | None = None,
    weights_dir: str | None = None,
) -> dict[str, Any]:
    """Search the reference codec's CRF for `target`, complete it to two adjacent CRFs that bracket
    the target, and interpolate the size at exactly the target (log-linear between the two)."""
    from codec.base import RateTarget
    from codec.registry import build_codec
    from pipeline.archive.quality_target import find_rate_for_quality, knob_range, measure_metric
    from pipeline.metrics import HIGHER_IS_BETTER

    options: dict[str, Any] = {"threads": 1}
    if preset is not None:
        options["preset"] = preset
    codec = build_codec(codec_name, model=None, device="cpu", options=options)
    result = find_rate_for_quality(codec, [frames], fps, metric, target, per_gop=True, device="cpu",
                                   weights_dir=weights_dir)  # fmt: skip
    higher = HIGHER_IS_BETTER[metric]
    worst, best = knob_range(codec)
    cheaper = 1.0 if worst > best else -1.0  # knob direction of fewer bits
    points = {p.knob: (p.score, p.payload_bytes, p.encode_seconds) for p in result.points}

    def measure(knob: float) -> tuple[float, int, float]:
        if knob not in points:
            started = time.perf_counter()
            encoded = codec.encode(frames, RateTarget("quality", knob), fps)
            seconds = time.perf_counter() - started
            score = measure_metric(metric, frames, encoded.reconstruction, float(fps), "cpu", weights_dir)
            points[knob] = (score, len(encoded.payload), seconds)
        return points[knob]

    def meets(score: float) -> bool:
        return score >= target if higher else score <= target

    record: dict[str, Any] = {
        "reference_codec": codec.name,
        "reference_codec_version": codec.version,
        "reference_preset": getattr(codec, "preset", None),
    }
    high = result.chosen.knob if result.chosen is not None and result.reached else None
    low = None
    while high is not None:
        neighbour = high + cheaper
        if not min(worst, best) <= neighbour <= max(worst, best):
            break  # the target is met even at the codec's cheapest setting: no bracket
        if meets(measure(neighbour)[0]):
            high = neighbour  # the search assumed monotone quality; the neighbour is cheaper and good
            continue
        low = neighbour
        break
    if high is not None:
        record.update(high_quality=high, high_score=points[high][0], high_bytes=points[high][1])
        record["encode_cpu_seconds"] = points[high][2]
    if low is not None:
        record.update(low_quality=low, low_score=points[low][0], low_bytes=points[low][1])
    search = [{"quality": k, "score": round(v[0], 4), "bytes": v[1]} for k, v in sorted(points.items())]
    record["search"] = json_text(search)
    if high is None or low is None:
        where = "above the best" if high is None else "below the cheapest"
        record.update(status="unreachable", error=f"{metric} {target:.4g} is {where} {codec.name} reaches")
        return record
    s_low, s_high = points[low][0], points[high][0]
    t = (target - s_low) / (s_high - s_low)  # in (0, 1]: both orientations, since low misses and high meets
    log_bytes = math.log(points[low][1]) + t * (math.log(points[high][1]) - math.log(points[low][1]))
    record.update(status="ok", error=None, reference_bytes=math.exp(log_bytes))
    return record


def _vmaf_reason() -> str | None:
    from pipeline.metrics.vmaf import ffmpeg_with_vmaf

    return ffmpeg_with_vmaf()[1]


def has_pending(fs: Any, out_root: str) -> bool:
    """Whether any video's reference part is pending (a killed run's `markers/reference/`)."""
    return next(iter_marker_keys(fs, out_root, PENDING_FOLDER), None) is not None


def _reference_remote(frames: np.ndarray, spec: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return code_reference_gop(frames, spec, row)


# ---- bookkeeping in the driver loop --------------------------------------------------------------------
class References:
    """The reference sample of one run: planned GOPs, tasks running or waiting, rows per video.

    Disabled (every method a no-op) when the run has no `--reference`.
    """

    def __init__(
        self, ctx: RunContext, *, backfill: bool = False, on_cpu_seconds: Callable[[float], None]
    ) -> None:
        """`backfill`: no video to do, but reference parts a killed run left to complete;
        `on_cpu_seconds(s)`: the loop counts the CPU-seconds of reference rows written."""
        self.ctx, self.on_cpu_seconds = ctx, on_cpu_seconds
        cfg = ctx.cfg
        self.enabled = cfg.reference is not None and (len(ctx.pool) > 0 or backfill)
        self.planned: dict[str, list[int]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.committed: set[str] = set()
        self.running: dict[Any, tuple[str, int]] = {}  # result ref -> video key, GOP index
        self._pending: dict[Any, dict[str, Any]] = {}  # result ref -> the row it will complete
        self.waiting: collections.deque[tuple[Any, dict[str, Any]]] = collections.deque()
        self.written: list[dict[str, Any]] = []
        # video key -> {GOP index: (span, the row its reference task starts from)}, until the part is written
        self.inputs: dict[str, dict[int, tuple[GopSpan, dict[str, Any]]]] = {}
        self.pending: set[str] = set()  # keys whose markers/reference/ marker this run wrote or found
        self.backfilled = 0
        self.metric, self.note = "", None
        if not self.enabled:
            return
        import ray

        goal = cfg.quality_goal.metric if cfg.quality_goal else None
        check = ray.remote(num_cpus=0.25, max_retries=2)(_vmaf_reason)  # where reference tasks run
        self.metric, self.note = resolve_metric(
            goal, cfg.skip_metrics, lambda: ray.get(check.remote(), timeout=600)
        )
        spare = float(ray.cluster_resources().get("CPU", 1.0)) - len(ctx.pool) * ctx.pool.cpus
        self.cpus = round(min(1.0, max(0.25, spare)), 2)
        self.task = ray.remote(num_cpus=self.cpus, max_retries=1, retry_exceptions=False)(_reference_remote)
        self.limit = max(2, IN_FLIGHT_PER_ACTOR * len(ctx.pool))
        self.spec = {
            "codec": cfg.reference,
            "metric": self.metric,
            "preset": cfg.reference_preset,
            "weights_dir": cfg.metric_weights,
        }
        ctx.display.log(
            f"reference: {cfg.reference} on {cfg.reference_fraction:.3g} of the GOPs at equal {self.metric}"
            + (f" ({self.note})" if self.note and cfg.quality_goal is None else "")
        )

    def __len__(self) -> int:
        return len(self.running) + len(self.waiting)

    def plan(self, video: Video) -> None:
        """Choose the video's sampled GOPs (among those whose metric the archive measures)."""
        if not self.enabled:
            return
        from pipeline.metrics import should_measure

        cfg = self.ctx.cfg
        eligible = [s.index for s in video.job.spans if should_measure(s.index, cfg.metrics_every)]
        self.planned[video.job.video_key] = choose_gops(
            video.job.video_key, eligible, cfg.reference_fraction, cfg.reference_seed
        )

    def on_encoded(self, video: Video, task: GopTask, result: GopResult) -> None:
        """A GOP is coded: if it is sampled, start (or queue) its reference at the GOP's own score."""
        key = video.job.video_key
        if not self.enabled or task.span.index not in self.planned.get(key, ()):
            return
        if task.span.index in self.inputs.get(key, {}):
            return  # coded again (payloads lost with a node): its reference is already under way
        row = self._row(video, task, result)
        if row["archive_score"] is None:
            note = result.metrics_note or "not measured"
            row = dict(row, status="unmeasured", error=f"archive {self.metric}: {note}")
        self.inputs.setdefault(key, {})[task.span.index] = (task.span, row)
        self._start_gop(key, task.span, row, task.frames_ref)

    def before_commit(self, video: Video) -> None:
        """The video is about to be committed: record its sampled GOPs durably first
        (`markers/reference/`), so a driver killed before its part is written loses none of them."""
        key = video.job.video_key
        if not self.enabled or not self.planned.get(key):
            return
        gops = [
            {"span": [span.index, span.first_frame, span.frame_count, span.pts], "row": row}
            for _, (span, row) in sorted(self.inputs.get(key, {}).items())
        ]
        record = {
            "video_key": key,
            "source_uri": video.job.source_uri,
            "reference_codec": self.spec["codec"],
            "metric": self.metric,
            "gops": gops,
        }
        try:
            write_json(self.ctx.out_fs, pending_path(self.ctx.out_root, key), record)
        except Exception as exc:  # a measurement: the archive goes on without the safeguard
            self.ctx.display.log(f"could not record the pending reference of {video.job.source_uri}: {exc}")
            return
        self.pending.add(key)

    def resume(self, done: KeySet, shard: tuple[int, int] | None) -> None:
        """Complete the reference parts a killed run left pending (its markers under
        `markers/reference/`), for the done videos of this shard, when this run's reference codec
        and metric are the ones they were sampled with."""
        if not self.enabled:
            return
        ctx = self.ctx
        other = 0
        for keys in iter_marker_keys(ctx.out_fs, ctx.out_root, PENDING_FOLDER):
            if shard is not None:
                keys = [key for key in keys if shard_of(key, shard[1]) == shard[0]]
            for key, is_done in zip(keys, done.contains_many(keys), strict=True):
                if not is_done or key in self.planned:
                    continue  # not committed (it is redone, and sampled again) or already in hand
                path = pending_path(ctx.out_root, key)
                try:
                    record = json.loads(read_bytes(ctx.out_fs, path))
                except Exception as exc:
                    ctx.display.log(f"reference: cannot read {path}: {exc}")
                    continue
                if (record.get("reference_codec"), record.get("metric")) != (self.spec["codec"], self.metric):
                    other += 1
                    continue
                self._backfill(key, record)
        if other:
            ctx.display.log(
                f"reference: {other} videos have reference rows pending for another reference codec or "
                "metric; left for a run with those"
            )

    def _backfill(self, key: str, record: dict[str, Any]) -> None:
        gops = [(GopSpan(s[0], s[1], s[2], None if s[3] is None else tuple(s[3])), g["row"])
                for g in record["gops"] for s in [g["span"]]]  # fmt: skip
        self.planned[key] = [span.index for span, _ in gops]
        self.inputs[key] = {span.index: (span, row) for span, row in gops}
        self.committed.add(key)
        self.pending.add(key)
        self.backfilled += 1
        self.ctx.display.log(
            f"reference: completing {len(gops)} sampled GOPs of {record.get('source_uri')} (left by a killed run)"
        )
        for span, row in gops:
            self._start_gop(key, span, row, None)
        self._maybe_write(key)

    def on_done(self, ref: Any) -> None:
        key, _ = self.running.pop(ref)
        planned = self._pending.pop(ref)
        try:
            row = self.ctx.ray.get(ref)
        except Exception as exc:  # the task died (worker lost): the GOP is counted as failed
            from pipeline.archive.errors import one_line

            row = dict(planned, status="failed", error=one_line(planned["source_uri"], exc))
        self._add(key, row)
        self._pump()

    def on_committed(self, key: str) -> None:
        if self.enabled and key in self.planned:
            self.committed.add(key)
            self._maybe_write(key)

    def discard(self, key: str) -> None:
        """A failed video: its reference rows are dropped (there is no archive to compare)."""
        self.planned.pop(key, None)
        self.rows.pop(key, None)
        self.inputs.pop(key, None)
        self._drop_marker(key)

    def summary(self) -> dict[str, Any] | None:
        """The `reference` section of summary.json (this run's written rows)."""
        if not self.enabled:
            return None
        from pipeline.audit.costs import equal_quality_ratio, statement

        rows = self.written
        cfg = self.ctx.cfg
        status = collections.Counter(r["status"] for r in rows)
        ok = [r for r in rows if r["status"] == "ok"]
        ratio = equal_quality_ratio(
            [r["log_ratio"] for r in ok], [r["frame_count"] for r in ok], [r["video_key"] for r in ok]
        )
        return {
            "codec": cfg.reference,
            "preset": cfg.reference_preset,
            "metric": self.metric,
            "metric_note": self.note,
            "fraction": cfg.reference_fraction,
            "seed": cfg.reference_seed,
            "gops_sampled": len(rows),
            "backfilled_videos": self.backfilled,
            "gops": dict(status),
            "cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in rows),
            "ratio": ratio,
            "statement": statement(ratio, cfg.reference, self.metric),
        }

    # ---- internals -------------------------------------------------------------------------------
    def _row(self, video: Video, task: GopTask, result: GopResult) -> dict[str, Any]:
        score = result.metric(self.metric)
        return {
            **gop_identity(video.job, task.span),
            "archive_codec": video.job.header.codec,
            "archive_bytes": result.payload_bytes,
            "metric": self.metric,
            "metric_note": self.note,
            "archive_score": None if score is None or not math.isfinite(score) else float(score),
            "reference_codec": self.ctx.cfg.reference,
        }

    def _start_gop(self, key: str, span: GopSpan, row: dict[str, Any], frames_ref: Any) -> None:
        """Run (or queue) one sampled GOP's reference; `frames_ref` None: decode it again first."""
        if row.get("status") == "unmeasured":
            self._add(key, dict(row))
            return
        if frames_ref is not None and len(self.running) < self.limit:
            self._submit(frames_ref, row)
        else:
            self.waiting.append((span, row))
            self._pump()

    def _pump(self) -> None:
        """Start waiting GOPs (decoding their frames again) while there is room."""
        while self.waiting and len(self.running) < self.limit:
            span, row = self.waiting.popleft()
            if row["video_key"] in self.planned:
                frames_ref, _ = self.ctx.tasks.decode.remote(
                    row["source_uri"], span, self.ctx.cfg.endpoint_url
                )
                self._submit(frames_ref, row)

    def _drop_marker(self, key: str) -> None:
        if key not in self.pending:
            return
        self.pending.discard(key)
        try:
            remove(self.ctx.out_fs, pending_path(self.ctx.out_root, key))
        except Exception as exc:  # a stale marker costs the next run one read, nothing else
            self.ctx.display.log(f"could not remove the pending reference marker of {key}: {exc}")

    def _submit(self, frames_ref: Any, row: dict[str, Any]) -> None:
        ref = self.task.remote(frames_ref, self.spec, row)
        self.running[ref] = (row["video_key"], row["gop_index"])
        self._pending[ref] = row

    def _add(self, key: str, row: dict[str, Any]) -> None:
        if key not in self.planned:
            return  # the video failed meanwhile
        if row.get("status") == "ok":
            row["log_ratio"] = math.log(row["archive_bytes"] / row["reference_bytes"])
        self.rows[key].append(row)
        self._maybe_write(key)

    def _maybe_write(self, key: str) -> None:
        rows = self.rows.get(key, [])
        if key not in self.committed or len(rows) < len(self.planned.get(key, ())):
            return
        self.planned.pop(key)
        self.rows.pop(key, None)
        self.inputs.pop(key, None)
        if not rows:
            self._drop_marker(key)
            return
        columns = set(REFERENCE_SCHEMA.names)
        clean = [
            {k: v for k, v in r.items() if k in columns} for r in sorted(rows, key=lambda r: r["gop_index"])
        ]
        ctx = self.ctx
        try:  # with page and column checksums, like every part (pipeline.read.manifest)
            write_bytes(ctx.out_fs, reference_path(ctx.out_root, key), parquet_bytes(clean, REFERENCE_SCHEMA))
        except Exception as exc:  # the reference is a measurement: the archive does not depend on it
            ctx.display.log(f"could not write the reference rows of {rows[0]['source_uri']}: {exc}")
            return  # a marker written before the commit stays: the next run completes the part
        self._drop_marker(key)
        self.written.extend(clean)
        self.on_cpu_seconds(sum(r.get("cpu_seconds") or 0.0 for r in clean))
