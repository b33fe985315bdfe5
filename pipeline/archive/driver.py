"""The archive job's driver: discover -> probe -> plan GOPs -> decode -> encode -> commit per video.

`run_archive` lists SRC, skips done videos, starts Ray and the encode pool (`actors`), writes the run's
config record, hands the videos to the `Scheduler`, then writes the summary and runs the closing
verify (with the run's `--model` and `--device`).

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

from pipeline.archive import discovery
from pipeline.archive.actors import EncodePool
from pipeline.archive.config import ArchiveConfig, ConfigError
from pipeline.archive.errors import ArchiveError
from pipeline.archive.leases import LEASE_DIR, Leases
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.scheduler import Scheduler
from pipeline.runinfo import list_markers, new_run_id, run_dir, tool_versions, write_json
from pipeline.storage import StorageError, check_reachable, filesystem, is_local, join, redact

log = logging.getLogger("vidarc.archive")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


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
        check_reachable(src_fs, src_root, cfg.src, must_exist=is_local(src_fs))
        check_reachable(out_fs, out_root, cfg.out, must_exist=False)
        entries = discovery.list_sources(
            cfg.src,
            endpoint_url=cfg.endpoint_url,
            include=cfg.include,
            exclude=cfg.exclude,
            ignore_prefix=cfg.out,
        )
    except StorageError as exc:
        raise ArchiveError(str(exc)) from None
    except Exception as exc:  # listing errors from any fsspec backend
        raise ArchiveError(f"{cfg.src}: cannot list ({type(exc).__name__}: {redact(str(exc))})") from None
    if not entries:
        return ArchiveResult(None, EXIT_OK, {}, f"{cfg.src}: no files found; nothing to archive")

    done = list_markers(out_fs, out_root, "done")
    failed_before = list_markers(out_fs, out_root, "failed")
    todo = [e for e in entries if e.key not in done and (cfg.retry_failed or e.key not in failed_before)]
    run_id = cfg.run_id or new_run_id()
    cfg = dataclasses.replace(cfg, run_id=run_id)
    counters = Counters(videos_skipped=len(entries) - len(todo))
    leases = Leases(out_fs, out_root, run_id)
    temporaries = _temporaries(out_root) if is_local(out_fs) else {}  # listed before the leases are read
    busy = leases.live_foreign(remove_dead=True)
    _refuse_second_writer(cfg, todo, busy, leases)
    _remove_stale_temporaries(temporaries, keep=set(busy))
    display = display or ProgressDisplay(counters)
    display.counters = counters

    if todo:
        _start_ray(cfg)
        pool, identity = EncodePool.start(cfg)
    else:  # nothing left to do: no cluster, no actors, just the run records
        pool, identity = EncodePool.empty(cfg), {"codec": cfg.codec}
    config_record = {
        "run_id": run_id,
        "config": cfg.as_record(),
        "codec": identity,
        "versions": tool_versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out_fs, join(run_dir(out_root, run_id), "config.json"), config_record)
    scheduler = Scheduler(
        cfg, run_id, identity, pool, counters, display, out_fs=out_fs, out_root=out_root, leases=leases
    )
    try:
        scheduler.run(todo)
    finally:
        leases.release_all()
        display.close()
    summary = scheduler.summary(
        entries_total=len(entries),
        already_done=sum(e.key in done for e in entries),
        previously_failed=sum(e.key in failed_before and e.key not in done for e in entries),
    )
    exit_code = EXIT_FAILURES if summary["videos_failed"] or summary["videos_leased_elsewhere"] else EXIT_OK
    if cfg.verify_fraction:
        summary["verify"] = _verify(cfg)
        if summary["verify"].get("failures"):
            exit_code = EXIT_FAILURES
    write_json(out_fs, join(run_dir(out_root, run_id), "summary.json"), summary)
    message = (
        f"run {run_id}: {summary['videos_ok']} ok, {summary['videos_failed']} failed, "
        f"{summary['videos_skipped_done']} already done, {summary['videos_skipped_failed']} failed earlier "
        f"(not retried), {len(summary['not_videos'])} non-video files skipped"
    )
    if summary["videos_leased_elsewhere"]:
        message += f", {len(summary['videos_leased_elsewhere'])} left to another run working on them"
    return ArchiveResult(run_id, exit_code, summary, message)


def _open_store(uri: str, endpoint_url: str | None):
    try:
        return filesystem(uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise ArchiveError(str(exc)) from None


def _refuse_second_writer(cfg: ArchiveConfig, todo: list, busy: dict, leases: Leases) -> None:
    """Exit 2 before any work when another live run holds the lease of a video this run would do."""
    clash = [e for e in todo if e.key in busy]
    if not clash:
        return
    first = clash[0]
    raise ArchiveError(
        f"{cfg.out}: {len(clash)} of the videos to archive are being archived by another run "
        f"({first.uri}: {busy[first.key].describe(leases.clock())}); a second writer over the same videos "
        "is refused: wait for that run, or archive a disjoint part of SRC (--include/--exclude)"
    )


_TEMP_FOLDERS = ("videos", "manifest", "markers/done", "markers/failed", "quality_search", LEASE_DIR)


def _temporaries(out_root: str) -> dict[str, str]:
    """`*.tmp-*` files under OUT's folders (local outputs only: S3 uploads never appear unfinished),
    path -> the video key they belong to."""
    found = {}
    for sub in _TEMP_FOLDERS:
        folder = os.path.join(out_root, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if ".tmp-" in name:
                    stem = name.split(".tmp-", 1)[0].removeprefix("part-")
                    found[os.path.join(folder, name)] = stem.rsplit(".", 1)[0]
    return found


def _remove_stale_temporaries(temporaries: dict[str, str], *, keep: set[str]) -> None:
    """Remove temporaries a killed run left behind, except those of videos a live run holds the lease
    of (they may be that run's writes in flight). Listed before the leases were read, so a temporary
    of a run that started since has its lease in `keep`."""
    for path, key in temporaries.items():
        if key not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _start_ray(cfg: ArchiveConfig) -> None:
    """Connect to `--address` (or RAY_ADDRESS), or start an embedded local cluster."""
    import ray

    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # we handle every task error ourselves
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=cfg.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
    except Exception as exc:
        raise ArchiveError(
            f"cannot start or reach the Ray cluster {cfg.address or '(local)'}: {redact(str(exc)).splitlines()[0]}"
        ) from None


def _verify(cfg: ArchiveConfig) -> dict[str, Any]:
    """Decode a sample of the archive (pipeline.verify) where the codec's device is: GPU Ray tasks when
    the run used GPUs (the encode actors are gone by now, so their GPUs are free), else CPU; with no
    GPU reachable it decodes on CPU and says so in `notes`, never failing for a CPU-only head."""
    from pipeline.verify import VerifyError, run_verify

    try:
        report = run_verify(
            cfg.out,
            fraction=cfg.verify_fraction,
            count=None,
            seed=0,
            device=cfg.device,
            endpoint_url=cfg.endpoint_url,
            model=cfg.model,
        )
    except VerifyError as exc:
        return {"failures": [str(exc)], "rows": 0, "notes": [], "checks": {}}
    return {
        "failures": [str(f) for f in report.failures],
        "rows": len(report.rows),
        "notes": list(report.warnings),
        "checks": report.checks(),
    }
