"""The archive job's driver: discover -> probe -> plan GOPs -> decode -> encode -> commit per video.

`run_archive` opens the stream of videos to do (`worklist`: SRC or an input list listed page by page,
minus other shards and done videos), starts Ray and the encode pool (`actors`) once there is one,
writes the run's config record, hands the stream to the `Scheduler` (which pulls from it as slots free
up, so the collection is never held), compacts the manifest parts it committed (`compaction`: also
every `--compact-every` videos during the run), then runs the closing verify (`closing_verify`: with
the run's `--model` and `--device`, progress on stderr, skipped when this run committed nothing and the
last verify passed over the same archive) and writes the summary.

Why plain Ray tasks and actors rather than Ray Data: the unit of commit is a *video* (one container,
one manifest part, one done marker, written in that order), while the unit of work is a *GOP*. The
driver here keeps a small table of videos in progress, so it can
- skip done videos before reading them (resume), and rerun only failed ones (`--retry-failed`);
- hand each finished video's payloads to one writer task, exactly once, so retries never duplicate
  manifest rows;
- retry only the GOPs an actor was holding when it died, on a fresh actor, a bounded number of times;
- bound memory explicitly: at most `actors × gops_in_flight_per_actor` GOPs are decoded or being coded
  at once, and new videos are probed only a few ahead (backpressure through `ray.wait`).
Ray Data would give streaming and autoscaling pools, but per-video grouping after a per-GOP map, and
resumable commits, would have to be rebuilt on top of it.

Stages and resources:
- probe (CPU task): open the source, count frames exactly, read rate/rotation/colour/audio presence;
- decode (CPU task, one per GOP): seek + decode just that GOP's frames from the source (local path or
  ranged reads of the object); frames go to the object store, never one row per frame;
- encode (actor pool, `num_gpus=--num-gpus-per-actor`, fractional allowed): the codec is built once
  per actor; the payload goes straight to the writer, the driver only sees a small metadata dict;
- commit (CPU task, one per video): container, manifest part, done marker (`video_writer`).

Quality targets (`--target-vmaf 93` etc., `config.QualityGoal`): per video, a search task on an encode
actor measures a few sample GOPs at several codec settings (`quality_target`, `searches`) before the video's
GOPs are dispatched, so they all share the chosen setting; the sample GOPs' decoded frames are reused for
the real encode. The search is recorded in the container header and every row's `codec_params`, and
cached at `OUT/quality_search/<video>.json`, so a rerun (e.g. `--retry-failed`) does not search again.
With `--per-gop`, each GOP is searched on itself inside its encode call instead.

A broken video (corrupt, truncated, refused by the codec) becomes a failed manifest row + failed
marker with a one-line error; the run goes on and exits non-zero at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any

from pipeline.archive.actors import EncodePool
from pipeline.archive.closing_verify import closing_verify
from pipeline.archive.compaction import RunCompaction
from pipeline.archive.config import ArchiveConfig, ConfigError
from pipeline.archive.errors import ArchiveError
from pipeline.archive.leases import LEASE_DIR, Leases, lease_ttl
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.scheduler import Scheduler
from pipeline.archive.source_list import SourceList, SourceListError, list_format
from pipeline.archive.tasks import warm_up_task_workers
from pipeline.archive.worklist import WorkList
from pipeline.format.runinfo import new_run_id, run_dir, tool_versions, write_json
from pipeline.read.locate import claim_new_archive
from pipeline.store.storage import (
    StorageError,
    check_reachable,
    check_writable,
    describe,
    filesystem,
    full_uri,
    is_local,
    is_transient,
    join,
    redact,
)
from pipeline.text import format_seconds

log = logging.getLogger("vidarc.archive")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
#: The storage failed during the run (an outage longer than the retries): some videos or the run's
#: summary could not be written. Nothing is marked failed for it: rerunning the same command finishes.
EXIT_STORAGE = 3


@dataclasses.dataclass
class ArchiveResult:
    run_id: str | None
    exit_code: int
    summary: dict[str, Any]
    message: str


def run_archive(config: ArchiveConfig, *, display: ProgressDisplay | None = None) -> ArchiveResult:
    """Run the whole job. Raises ArchiveError (exit 2, nothing written) for unusable inputs."""
    try:
        cfg = config.resolved()
    except ConfigError as exc:
        raise ArchiveError(str(exc)) from None
    src_fs, src_root = _open_store(cfg.src, cfg.endpoint_url)
    out_fs, out_root = _open_store(cfg.out, cfg.endpoint_url)
    try:
        check_reachable(src_fs, src_root, cfg.src, must_exist=True)  # a missing S3 prefix, like a folder
        check_reachable(out_fs, out_root, cfg.out, must_exist=False)
        check_writable(out_fs, out_root, cfg.out)
        selection = _selection(cfg)  # a migration's parent videos, else None (SRC's listing)
        work = WorkList(
            src=cfg.src,
            out_fs=out_fs,
            out_root=out_root,
            endpoint_url=cfg.endpoint_url,
            include=cfg.include,
            exclude=cfg.exclude,
            ignore_prefix=cfg.out,
            shard=cfg.shard,
            retry_failed=cfg.retry_failed,
            sources=selection.entries() if selection is not None else None,
        )
        if cfg.quality_goal is not None and _list_has_targets(cfg):
            raise ArchiveError(
                f"{cfg.src}: the list's per-video rate targets cannot be combined with "
                f"--target-{cfg.quality_goal.metric}; drop one"
            )
        first = work.peek()  # lists only as far as the first video to do
        if selection is not None and not selection.matched:
            raise ArchiveError(f"{cfg.src}: {selection.describe()} matches no archived video")
    except (StorageError, SourceListError) as exc:
        raise ArchiveError(str(exc)) from None
    except ArchiveError:
        raise
    except Exception as exc:  # listing errors from any fsspec backend
        raise ArchiveError(f"{cfg.src}: cannot list ({type(exc).__name__}: {redact(str(exc))})") from None
    if first is None and work.counts.seen == 0:
        return ArchiveResult(None, EXIT_OK, {}, f"{cfg.src}: no files found; nothing to archive")

    run_id = cfg.run_id or new_run_id()
    cfg = dataclasses.replace(cfg, run_id=run_id)
    counters = Counters()
    leases = Leases(out_fs, out_root, run_id, ttl=lease_ttl())
    temporaries = _temporaries(out_root) if is_local(out_fs) else {}  # listed before the leases are read
    busy = leases.live_foreign(remove_dead=True)
    _remove_stale_temporaries(
        temporaries, busy, compacting=bool(temporaries) and _compacting(out_fs, out_root)
    )
    display = display or ProgressDisplay(counters)
    display.counters = counters

    backfill = first is None and cfg.reference is not None and _reference_pending(out_fs, out_root)
    if first is not None:
        _start_ray(cfg)
        warm_up_task_workers(cfg)  # beside the actors' start-up
        pool, identity = EncodePool.start(cfg)
    else:  # nothing left to do: no actors, just the run records (and a killed run's reference rows)
        if backfill:
            _start_ray(cfg)
        pool, identity = EncodePool.empty(cfg), {"codec": cfg.codec}
    config_record = {
        "run_id": run_id,
        "config": cfg.as_record(),
        "codec": identity,
        "versions": tool_versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        write_json(out_fs, join(run_dir(out_root, run_id), "config.json"), config_record)
        claim_new_archive(out_fs, out_root)  # a new archive: every video it holds will be indexed
    except Exception as exc:  # the first write: OUT refuses it (403, read-only), nothing else written
        pool.stop()
        raise ArchiveError(describe(exc, cfg.out)) from None
    scheduler = Scheduler(
        cfg, run_id, identity, pool, counters, display, out_fs=out_fs, out_root=out_root, leases=leases,
        reference_backfill=backfill,
    )  # fmt: skip
    compaction = RunCompaction(cfg, counters, display.log)
    compaction.start()
    try:
        scheduler.run(work)
    except Exception as exc:  # a storage fault met outside the paths that word their own
        if not is_transient(exc):
            compaction.stop()
            raise
        scheduler.stop_for_storage(exc)
    except BaseException:
        compaction.stop()
        raise
    finally:
        leases.release_all()
        display.close()
    summary = scheduler.summary(work.counts)
    if selection is not None:
        summary["migration"] = _migration_record(cfg, selection)
    storage_failures = summary["failures_transient"]
    storage_trouble = bool(storage_failures or summary.get("lease_error") or summary.get("storage_stop"))
    skip = "the storage failed during the run; the rerun compacts" if storage_trouble else None
    summary["compaction"] = compaction.finish(skip=skip)  # before the verify, which then reads it
    leased_elsewhere = summary["videos_leased_elsewhere_total"]
    exit_code = EXIT_FAILURES if summary["videos_failed"] or leased_elsewhere else EXIT_OK
    if summary.get("listing_error"):
        exit_code = EXIT_STORAGE
    if cfg.verify_fraction and not storage_trouble:
        nothing_new = not (summary["videos_ok"] or summary["videos_failed"])
        summary["verify"] = closing_verify(cfg, run_id, committed_nothing=nothing_new, say=display.log)
        if summary["verify"].get("failures"):
            exit_code = EXIT_FAILURES
    summary["wall_seconds"] = counters.elapsed  # the whole run: the closing compaction and verify too
    summary_path = join(run_dir(out_root, run_id), "summary.json")
    try:
        write_json(out_fs, summary_path, summary)
    except Exception as exc:  # the run's work stands; its record could not be stored
        summary["storage_error"] = f"summary not written: {describe(exc, full_uri(out_fs, summary_path))}"
    if storage_trouble or summary.get("storage_error"):
        exit_code = EXIT_STORAGE
    message = (
        f"run {run_id}: {summary['videos_ok']} ok, {summary['videos_failed']} failed, "
        f"{summary['videos_skipped_done']} already done, {summary['videos_skipped_failed']} failed earlier "
        f"(not retried), {summary['not_videos_total']} non-video files skipped"
    )
    if leased_elsewhere:
        message += f", {leased_elsewhere} left to another run working on them (rerun once it is done)"
    if cfg.shard is not None:
        message += (
            f"; shard {cfg.shard[0]}/{cfg.shard[1]} ({summary['files_in_other_shards']} in other shards)"
        )
    if summary.get("verify"):
        message += "; " + _verify_clause(summary["verify"])
    if summary.get("listing_error"):
        message += f"; listing stopped: {summary['listing_error']} (rerun the same command to finish)"
    if storage_trouble or summary.get("storage_error"):
        message += (
            f"; storage failed during the run ({storage_failures} videos not written): "
            "rerun the same command to finish"
        )
    return ArchiveResult(run_id, exit_code, summary, message)


def _selection(cfg: ArchiveConfig) -> Any:
    """A migration's `Selection` of parent videos (its filter checked now), or None."""
    if cfg.migration is None:
        return None
    from pipeline.archive.migration import MigrationError, Selection

    try:
        return Selection(cfg.src, cfg.migration, endpoint_url=cfg.endpoint_url)
    except MigrationError as exc:
        raise ArchiveError(str(exc)) from None


def _migration_record(cfg: ArchiveConfig, selection: Any) -> dict[str, Any]:
    """The migration's part of `summary.json`: its parent, selection and what it could not read."""
    return {
        "parent": cfg.src,
        "selection": selection.describe(),
        "matched_videos": selection.matched,
        "damaged_parent_parts": [f"{d.uri}: {d.reason}" for d in selection.damaged],
    }


def _reference_pending(out_fs: Any, out_root: str) -> bool:
    from pipeline.archive.reference import has_pending

    try:
        return has_pending(out_fs, out_root)
    except Exception as exc:  # the measurement waits for a run that can list it
        log.warning("cannot list pending reference rows: %s", redact(str(exc)))
        return False


def _list_has_targets(cfg: ArchiveConfig) -> bool:
    if list_format(cfg.src) is None:
        return False
    try:
        return SourceList(cfg.src, endpoint_url=cfg.endpoint_url).has_targets
    except SourceListError:
        return False  # not a list after all (a folder named *.csv): iter_sources lists it


def _open_store(uri: str, endpoint_url: str | None):
    try:
        return filesystem(uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise ArchiveError(str(exc)) from None


_VIDEO_FOLDERS = (
    "videos",
    "markers/done",
    "markers/failed",
    "markers/reference",
    "quality_search",
    LEASE_DIR,
)


def _temporaries(out_root: str) -> dict[str, tuple[str, str]]:
    """`*.tmp-*` files under OUT (local outputs only: S3 uploads never appear unfinished), path ->
    their owner: ("video", key), ("run", run_id), or ("other", "") for packs, compacted manifests and
    verify parts, which no lease names."""
    found: dict[str, tuple[str, str]] = {}

    def scan(sub: str, owner: Any) -> None:
        folder = os.path.join(out_root, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if ".tmp-" in name:
                    found[os.path.join(folder, name)] = owner(name.split(".tmp-", 1)[0])

    for sub in _VIDEO_FOLDERS:
        scan(sub, lambda stem: ("video", stem.rsplit(".", 1)[0]))
    scan(  # part-<key>.parquet is a video's; pack-*, compacted-* are not
        "manifest",
        lambda stem: (
            ("video", stem[len("part-") :].rsplit(".", 1)[0]) if stem.startswith("part-") else ("other", "")
        ),
    )
    for sub in ("packs", "markers/packs", "verify"):
        scan(sub, lambda stem: ("other", ""))
    runs = os.path.join(out_root, "runs")
    for run_id in os.listdir(runs) if os.path.isdir(runs) else []:
        scan(os.path.join("runs", run_id), lambda stem, run_id=run_id: ("run", run_id))
    return found


def _compacting(out_fs: Any, out_root: str) -> bool:
    """Whether a compaction holds OUT's lock now (its compacted file may be half written)."""
    from pipeline.tools.compact import lock_holder

    try:
        return lock_holder(out_fs, out_root) is not None
    except Exception:  # unreadable: leave the temporaries, a later run removes them
        return True


def _remove_stale_temporaries(
    temporaries: dict[str, tuple[str, str]], busy: dict[str, Any], *, compacting: bool = False
) -> None:
    """Remove temporaries a killed run left behind, except those a live run may still be writing: its
    leased videos', its run folder's, and (while any other run is live, e.g. another shard, or a
    compaction holds its lock: it runs after a run's leases are gone) those no lease names. Listed
    before the leases were read, so a run that started since has its leases in `busy`."""
    live_runs = {info.run_id for info in busy.values()}
    for path, (kind, owner) in temporaries.items():
        if (
            (kind == "video" and owner in busy)
            or (kind == "run" and owner in live_runs)
            or (kind == "other" and (live_runs or compacting))
        ):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


#: Ray settings of the local cluster `vidarc archive` starts when it finds none (and of the cluster the
#: benchmarks start, so they time what a user's run gets). Ray keeps about one idle task worker per CPU
#: and kills the others after one second idle. The archive's probe, decode and commit tasks hold a
#: quarter or half of a CPU, so on a small machine more of them run at once than it has CPUs, and the
#: workers they need again a few seconds later were gone: each restart is a Python start plus vidarc's
#: imports (~0.7 CPU-seconds). Measured on 2 CPUs, 6 videos of 200 frames (x264): 13 worker processes
#: instead of 6, and about 8 of the run's 43 CPU-seconds. Idle workers are kept for a minute instead; a
#: running archive reuses them long before that. A cluster of your own takes the same setting:
#: `ray start --system-config='{"idle_worker_killing_time_threshold_ms": 60000}'`.
LOCAL_RAY_SYSTEM_CONFIG: dict[str, Any] = {"idle_worker_killing_time_threshold_ms": 60_000}


def _start_ray(cfg: ArchiveConfig) -> None:
    """Connect to `--address` (or RAY_ADDRESS, or a cluster started on this machine), or start an
    embedded local cluster with `LOCAL_RAY_SYSTEM_CONFIG`."""
    import ray

    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # we handle every task error ourselves
    if ray.is_initialized():
        return
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        try:  # a copy: Ray adds its own keys to the dict it is given
            ray.init(address=cfg.address, _system_config=dict(LOCAL_RAY_SYSTEM_CONFIG), **options)
        except ValueError as exc:  # an existing cluster was found: its own settings apply
            if "_system_config" not in str(exc):
                raise
            ray.init(address=cfg.address, **options)
    except Exception as exc:
        raise ArchiveError(
            f"cannot start or reach the Ray cluster {cfg.address or '(local)'}: {redact(str(exc)).splitlines()[0]}"
        ) from None


def _verify_clause(verify: dict[str, Any]) -> str:
    """The closing verify in the run's one-line message."""
    if verify.get("skipped"):
        return "closing verify skipped (nothing archived since the last one passed)"
    failures = len(verify.get("failures") or [])
    return (
        f"closing verify: {verify.get('gops_decoded', 0)} GOPs decoded, {failures} failures "
        f"in {format_seconds(verify.get('wall_seconds') or 0)}"
    )
