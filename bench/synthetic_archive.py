"""Synthetic archives of N videos made from a real small archive, for `bench/scale_reads.py`.

The base archive is real: a few tiny videos written with PyAV and archived by the real CLI
(`python -m jobs.cli archive SRC BASE --codec x264 ...`). Synthetic video i is base video i % B under a
new name: a new `video_key` (same shape, `<slug>-<12 hex>`, from `pipeline.format.keys.video_key` of a made-up
source URI, so deterministic in i) and `source_uri`, and everything that names it rewritten:

- `videos/<key>.vdrc`: a hard link to the base object (local; a fresh copy of the base object is made
  when a file reaches the file system's link limit) or a server-side copy (S3: CopyObject);
- `manifest/part-<key>.parquet`: the base video's rows with `video_key`, `source_uri` and `archive_uri`
  replaced (every other string value naming the base key too), written by
  `pipeline.read.manifest.parquet_bytes` so page and column checksums are valid;
- `index/...`: whatever `pipeline.read.locate.write_index_entries` writes, when that module exists;
- `markers/done/<key>.json`: the base marker's fields with the names substituted, written last.

Writing streams (bounded memory: one window of videos in flight, the done markers as a `KeySet` of 16
bytes per video) and is resumable and idempotent: a video whose done marker exists is skipped, anything
else is (re)written under the same names, so a stopped 1M build continues where it was. A finished
archive gets a stamp beside it (`<root>.built.json`) so later runs do not even list it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BASE_VIDEOS = 20
#: what the base videos look like: small, several GOPs each (one manifest row per GOP), some with audio
BASE_FRAMES = 40
BASE_GOP_FRAMES = 8
BASE_SIZE = (64, 48)
#: photographs scikit-image ships in its wheel (no download); each base video has its own camera path
BASE_IMAGES = ("astronaut", "coffee", "camera", "chelsea", "rocket")


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every vidarc subprocess: this checkout first on the path, fake AWS credentials
    (moto accepts any), Ray without auth or usage stats."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("AWS_ACCESS_KEY_ID", "scale-reads")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "scale-reads")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.pop("AWS_ENDPOINT_URL", None)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra or {})
    return env


# ---- the base archive ----------------------------------------------------------------------------------
def make_base(work: Path, *, videos: int = BASE_VIDEOS, rebuild: bool = False) -> Path:
    """The real base archive under `work/base/out` (made once, cached; `rebuild` makes it again)."""
    base = work / "base"
    out = base / "out"
    meta_path = base / "meta.json"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if meta.get("commit") != git_commit():
            print(f"note: base archive made at commit {meta.get('commit')}, code now at {git_commit()} "
                  "(--rebuild-base makes it again)")  # fmt: skip
        return out
    shutil.rmtree(base, ignore_errors=True)
    src = base / "src"
    src.mkdir(parents=True)
    _write_sources(src, videos)
    started = time.perf_counter()
    command = [
        sys.executable, "-m", "jobs.cli", "archive", str(src), str(out), "--codec", "x264", "--quality", "30",
        "--gop-frames", str(BASE_GOP_FRAMES), "--verify-fraction", "0", "--skip-metric", "lpips",
        "--skip-metric", "dists", "--skip-metric", "vmaf", "--no-compact",
    ]  # fmt: skip
    # options this code may not take yet: dropped (and said so) when refused
    optional = {"--no-compact": ("--no-compact",), "--verify-fraction": ("--verify-fraction", "0")}
    while True:
        print("base archive: vidarc " + " ".join(command[3:]), flush=True)
        run = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True)
        refused = [o for o in optional if run.returncode == 2 and o in run.stderr]
        if run.returncode == 0 or not refused:
            break
        print(
            f"base archive: {refused[0]} refused by this code ({run.stderr.strip()[-200:]}); without it",
            flush=True,
        )
        for word in optional.pop(refused[0]):
            command.remove(word)
        shutil.rmtree(out, ignore_errors=True)
    if run.returncode != 0:
        raise SystemExit(
            f"base archive failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    done = list((out / "markers" / "done").glob("*.json"))
    if len(done) != videos:
        raise SystemExit(f"base archive: {len(done)} done markers, expected {videos}")
    meta = {
        "commit": git_commit(),
        "command": ["vidarc", *command[3:]],
        "seconds": round(time.perf_counter() - started, 1),
        "videos": videos,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"base archive: {videos} videos in {meta['seconds']} s -> {out}", flush=True)
    return out


def _write_sources(folder: Path, videos: int) -> None:
    """`videos` tiny real videos (camera moves over different photographs), every fourth with audio."""
    from pipeline.sources.synthetic import synthetic_clip, write_video

    width, height = BASE_SIZE
    for j in range(videos):
        image = BASE_IMAGES[j % len(BASE_IMAGES)]
        try:
            frames = synthetic_clip(image, BASE_FRAMES - (j % 3) * 4, width, height, seed=j)
        except Exception:  # an image scikit-image would have to download
            frames = synthetic_clip("astronaut", BASE_FRAMES - (j % 3) * 4, width, height, seed=j)
        audio = 1.5 if j % 4 == 0 else None
        write_video(folder / f"clip-{j:02d}.mp4", frames, fps=Fraction(24), audio_seconds=audio)


# ---- one base video, as the replicas copy it -------------------------------------------------------------
@dataclasses.dataclass
class BaseVideo:
    key: str
    source_uri: str
    source_bytes: int
    archive_uri: str
    object_path: str  # local path of its .vdrc
    rows: list[dict[str, Any]]
    marker: dict[str, Any]


def load_base(out: Path) -> list[BaseVideo]:
    """The base archive's videos (sorted by key) with their manifest rows, read from whatever manifest
    files it has (parts or compacted) with pyarrow, and their done markers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.format.schema import MANIFEST_SCHEMA

    tables = []
    for path in sorted((out / "manifest").glob("*.parquet")):
        table = pq.read_table(path)
        tables.append(table.select([n for n in MANIFEST_SCHEMA.names if n in table.column_names]))
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for row in pa.concat_tables(tables, promote_options="default").to_pylist():
        rows_of.setdefault(row["video_key"], []).append(row)
    videos = []
    for key in sorted(rows_of):
        rows = sorted(rows_of[key], key=lambda r: r["gop_index"])
        marker = json.loads((out / "markers" / "done" / f"{key}.json").read_text())
        source = rows[0]["source_uri"]
        videos.append(
            BaseVideo(
                key,
                source,
                int(rows[0]["source_bytes"] or 0),
                rows[0]["archive_uri"],
                str(out / "videos" / f"{key}.vdrc"),
                rows,
                marker,
            )
        )
    if not videos:
        raise SystemExit(f"{out}: the base archive has no manifest rows")
    return videos


def base_fingerprint(out: Path) -> str:
    """Identifies the base archive's manifest and markers (a replica built from another base is stale)."""
    digest = hashlib.sha256()
    for folder in ("manifest", "markers/done"):
        for path in sorted((out / folder).glob("*")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def synthetic_name(base: BaseVideo, i: int) -> tuple[str, str]:
    """(video_key, source_uri) of synthetic video i: the base source's folder + `synthetic/<i//1000>/`
    + `<stem>-<i>.<ext>`; the key as the archive would derive it (same shape as every real key)."""
    from pipeline.format.keys import video_key

    folder, _, name = base.source_uri.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    relative = f"synthetic/{i // 1000:04d}/{stem}-{i:07d}{dot}{ext}"
    uri = f"{folder}/{relative}"
    return video_key(uri, base.source_bytes, relative), uri


# ---- writing replicas ----------------------------------------------------------------------------------
class LinkPool:
    """Hard links to a few base files, many times over: when a file reaches the file system's link limit
    (ext4: 65 000), a fresh copy of it becomes the link source (a new inode)."""

    def __init__(self, pool_dir: Path) -> None:
        self.pool_dir = pool_dir
        self.current: dict[str, str] = {}
        self.lock = threading.Lock()

    def link(self, src: str, dst: str) -> None:
        with self.lock:
            source = self.current.get(src, src)
        try:
            os.link(source, dst)
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            with self.lock:
                if self.current.get(src, src) == source:  # not already replaced by another thread
                    self.pool_dir.mkdir(parents=True, exist_ok=True)
                    fresh = self.pool_dir / f"{Path(src).name}.{time.time_ns()}"
                    shutil.copyfile(src, fresh)
                    self.current[src] = str(fresh)
                source = self.current[src]
            with contextlib.suppress(FileExistsError):
                os.link(source, dst)


class Replicator:
    """Writes synthetic videos [start, stop) into the archive at `out` (local folder or s3:// URL), with
    `processes` worker processes of `threads` threads each (S3 requests wait; local writes compute)."""

    def __init__(
        self,
        bases: list[BaseVideo],
        base_out: Path,
        out: str,
        *,
        endpoint_url: str | None,
        pool_dir: Path,
        processes: int = 1,
        threads: int = 1,
        base_objects: dict[str, str] | None = None,
        parts: bool = True,
    ) -> None:
        from pipeline.store.storage import filesystem, is_local

        self.args = dict(bases=bases, base_out=base_out, out=out, endpoint_url=endpoint_url, pool_dir=pool_dir,
                         threads=threads, parts=parts)  # fmt: skip
        #: write each video's manifest part (False: the direct build writes the rows as compacted files)
        self.parts = parts
        self.bases = bases
        self.base_out = base_out
        self.out = out
        self.endpoint_url = endpoint_url
        self.fs, self.root = filesystem(out, endpoint_url=endpoint_url)
        self.local = is_local(self.fs)
        self.links = LinkPool(pool_dir)
        self.processes = max(1, processes)
        self.threads = max(1, threads)
        self.locate = _locate_module()
        self.base_objects: dict[str, str] = dict(base_objects or {})

    # one-off archive-level files and, on S3, the base objects the copies come from
    def prepare(self) -> None:
        from pipeline.store.storage import join, write_bytes

        for path in sorted(self.base_out.rglob("*")):
            rel = path.relative_to(self.base_out).as_posix()
            if path.is_file() and rel.split("/", 1)[0] not in (
                "videos",
                "manifest",
                "markers",
                "index",
                "leases",
            ):
                write_bytes(self.fs, join(self.root, rel), path.read_bytes())  # runs/<run_id>/*.json
        for base in self.bases:
            if self.local:
                self.base_objects[base.key] = base.object_path
            else:
                bucket_root = self.root.split("/", 1)[0]
                target = join(bucket_root, "_base", "videos", f"{base.key}.vdrc")
                if not self.fs.exists(target):
                    write_bytes(self.fs, target, Path(base.object_path).read_bytes())
                self.base_objects[base.key] = target
        if self.local:
            for folder in ("videos", "manifest", "markers/done"):
                os.makedirs(join(self.root, folder), exist_ok=True)

    def _put(self, path: str, data: bytes) -> None:
        """Atomic write; locally without the fsync `storage.write_bytes` does (a benchmark's archive need
        not survive a power cut, and the fsyncs would cost more than the rest of the build)."""
        from pipeline.store.storage import write_bytes

        if not self.local:
            write_bytes(self.fs, path, data)
            return
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def write(self, i: int) -> None:
        from pipeline.format.runinfo import container_path, manifest_path, marker_path
        from pipeline.format.schema import MANIFEST_SCHEMA
        from pipeline.read.manifest import parquet_bytes
        from pipeline.store.storage import full_uri, redact, retrying

        base = self.bases[i % len(self.bases)]
        key, source_uri = synthetic_name(base, i)
        obj = container_path(self.root, key)
        archive_uri = full_uri(self.fs, obj)
        if self.local:
            self.links.link(self.base_objects[base.key], obj)
        else:
            retrying(archive_uri, lambda: self.fs.copy(self.base_objects[base.key], obj))
        names = rename_pairs(base, key, source_uri, archive_uri)
        if self.parts:
            rows = [_renamed(row, names) for row in base.rows]
            for row in rows:
                row.update(video_key=key, source_uri=source_uri, archive_uri=archive_uri)
            self._put(manifest_path(self.root, key), parquet_bytes(rows, MANIFEST_SCHEMA))
        if self.locate is not None:
            self.locate.write_index_entries(self.fs, self.root, key, source_uri)
        marker = _renamed(base.marker, names)
        marker.update({k: v for k, v in (("video_key", key), ("source_uri", source_uri),
                                          ("archive_uri", archive_uri)) if k in marker})  # fmt: skip
        # as `runinfo.write_json` writes it (marker_path, same text), last
        text = redact(json.dumps(marker, indent=2, sort_keys=True, default=str)) + "\n"
        self._put(marker_path(self.root, "done", key), text.encode())

    def write_many(self, ids: list[int]) -> int:
        if self.threads == 1 or len(ids) == 1:
            for i in ids:
                self.write(i)
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(self.write, ids))
        return len(ids)

    def run(self, start: int, stop: int, *, label: str = "") -> dict[str, int]:
        """Write videos [start, stop) not done yet; returns counts. Progress every 10 s."""
        import multiprocessing

        from pipeline.format.runinfo import iter_marker_keys
        from pipeline.store.keyset import KeySet

        done = KeySet()
        for page in iter_marker_keys(self.fs, self.root, "done"):
            done.add(page)
        done = done.freeze()
        self.prepare()
        counts = {"written": 0, "skipped": 0}
        started = last = time.perf_counter()
        chunk = 64 if self.local else 256
        if self.processes > 1:
            executor: Any = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(dict(self.args, base_objects=self.base_objects),),
            )  # fmt: skip
            submit = lambda ids: executor.submit(_write_many, ids)  # noqa: E731
        else:
            executor = ThreadPoolExecutor(1)
            submit = lambda ids: executor.submit(self.write_many, ids)  # noqa: E731
        with executor:
            pending: set = set()
            for lo in range(start, stop, chunk):
                hi = min(stop, lo + chunk)
                ids = list(range(lo, hi))
                keys = [synthetic_name(self.bases[i % len(self.bases)], i)[0] for i in ids]
                if len(done):
                    ids = [i for i, there in zip(ids, done.contains_many(keys), strict=True) if not there]
                counts["skipped"] += hi - lo - len(ids)
                if ids:
                    while len(pending) >= 2 * self.processes:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        counts["written"] += sum(f.result() for f in finished)
                    pending.add(submit(ids))
                now = time.perf_counter()
                if now - last >= 10:
                    last = now
                    _progress(label, counts, stop - start, now - started)
            for f in pending:
                counts["written"] += f.result()
        _progress(label, counts, stop - start, time.perf_counter() - started)
        return counts


_WORKER: Replicator | None = None


def _init_worker(args: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = Replicator(**args)


def _write_many(ids: list[int]) -> int:
    assert _WORKER is not None
    return _WORKER.write_many(ids)


def _progress(label: str, counts: dict[str, int], total: int, seconds: float) -> None:
    done = counts["written"] + counts["skipped"]
    rate = counts["written"] / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    print(f"  {label}: {done}/{total} ({counts['skipped']} already there), {rate:.0f} videos/s, "
          f"{seconds:.0f} s, ETA {eta:.0f} s", flush=True)  # fmt: skip


def rename_pairs(base: BaseVideo, key: str, source_uri: str, archive_uri: str) -> tuple[tuple[str, str], ...]:
    """(base name, replica's name) pairs, in the order `_renamed` applies them."""
    return ((base.archive_uri, archive_uri), (base.source_uri, source_uri), (base.key, key))


def _renamed(value: Any, names: Iterable[tuple[str, str]]) -> Any:
    """`value` (a row or marker) with every string naming the base video rewritten for the replica."""
    if isinstance(value, str):
        for old, new in names:
            if old and old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def _locate_module() -> Any:
    """`pipeline.read.locate` if this checkout has it (with `write_index_entries`), else None (noted once)."""
    try:
        module = importlib.import_module("pipeline.read.locate")
    except ModuleNotFoundError:
        module = None
    if module is not None and not Path(module.__file__).resolve().is_relative_to(REPO):
        module = None  # an editable install's copy from another checkout: not this code
    if module is None or not hasattr(module, "write_index_entries"):
        if not getattr(_locate_module, "noted", False):
            print("note: pipeline.read.locate.write_index_entries is not in this checkout: no OUT/index/ "
                  "entries written for the synthetic videos")  # fmt: skip
            _locate_module.noted = True  # type: ignore[attr-defined]
        return None
    return module


def index_entries_available() -> bool:
    return _locate_module() is not None


# ---- whole layouts ---------------------------------------------------------------------------------------
def stamp_path(fs: Any, root: str) -> str:
    return root.rstrip("/") + ".built.json"


def read_stamp(fs: Any, root: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(stamp_path(fs, root)))
    except FileNotFoundError:
        return None


def write_stamp(fs: Any, root: str, record: dict[str, Any]) -> None:
    from pipeline.store.storage import write_bytes

    write_bytes(fs, stamp_path(fs, root), (json.dumps(record, indent=2) + "\n").encode())


def link_tree(src: Path, dst: Path, links: LinkPool) -> int:
    """`cp -al src dst`, resumable (existing names kept): every file a hard link, none read."""
    count = 0
    stack = [(src, dst)]
    while stack:
        folder, target = stack.pop()
        target.mkdir(parents=True, exist_ok=True)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), target / entry.name))
                elif entry.is_file(follow_symlinks=False):
                    links.link(entry.path, str(target / entry.name))
                    count += 1
    return count


def disk_usage(paths: list[str]) -> int | None:
    """Bytes `du` counts for these local folders together (hard links once)."""
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        return None
    run = subprocess.run(["du", "-sck", *existing], capture_output=True, text=True)
    try:
        return int(run.stdout.strip().splitlines()[-1].split()[0]) * 1024
    except (IndexError, ValueError):
        return None


def build_parts(
    replicator_for: Callable[[str], Replicator], out: str, n: int, meta: dict[str, Any], *, label: str
) -> dict[str, Any]:
    """The parts layout of `n` videos at `out` (skipped when its stamp says it is complete)."""
    replicator = replicator_for(out)
    stamp = read_stamp(replicator.fs, replicator.root)
    if stamp and stamp.get("n") == n:
        _check_stamp(stamp, meta, out)
        print(f"{label}: complete ({stamp.get('seconds')} s to build), reused", flush=True)
        return stamp
    started = time.perf_counter()
    counts = replicator.run(0, n, label=label)
    record = dict(meta, n=n, layout="parts", seconds=round(time.perf_counter() - started, 1), **counts)
    write_stamp(replicator.fs, replicator.root, record)
    return record


class StaleArchive(SystemExit):
    pass


def _check_stamp(stamp: dict[str, Any], meta: dict[str, Any], out: str) -> None:
    """A finished archive built from another base archive, or without the index entries this code writes,
    is refused unless `reuse`; one built by another commit is only noted."""
    differs = [k for k in ("base", "index_entries") if stamp.get(k) != meta.get(k)]
    if differs and not meta.get("reuse"):
        raise StaleArchive(
            f"{out} was built with {', '.join(f'{k}={stamp.get(k)}' for k in differs)}, now "
            f"{', '.join(f'{k}={meta.get(k)}' for k in differs)}: rerun with --fresh to build it again, or "
            "--reuse to measure it as it is"
        )
    if stamp.get("commit") != meta.get("commit"):
        print(f"note: {out} was built at commit {stamp.get('commit')}, the code is at {meta.get('commit')}")


# ---- the compacted layout, built directly ----------------------------------------------------------------
#: Videos per compacted file of a direct build (as `bench/scale_reads.py --compact-every 100000` compacts).
DIRECT_BATCH = 100_000
#: What a direct build stores as a row's `source_sha256`: sha256(PLACEHOLDER_PREFIX + part name).
PLACEHOLDER_PREFIX = b"vidarc synthetic archive, direct build, no part was written: "


def placeholder_sha256(part_name: str) -> str:
    """The `source_sha256` a direct build records for the part `part_name` that was never written
    (`build_compacted_direct`): 64 hex digits like a real digest (same column size), never equal to
    the sha256 of real part bytes."""
    return hashlib.sha256(PLACEHOLDER_PREFIX + part_name.encode()).hexdigest()


def _template(value: Any, olds: list[str]) -> list[Any] | None:
    """`value` split around the base names it holds, as `_renamed` would replace them (in order):
    [text, name index, text, name index, ..., text]; None for None."""
    if value is None:
        return None
    marked = value
    for index, old in enumerate(olds):
        if old and old in marked:
            marked = marked.replace(old, f"\0{index}\0")
    pieces: list[Any] = marked.split("\0")
    return [int(p) if k % 2 else p for k, p in enumerate(pieces)]


class DirectRows:
    """The manifest rows of synthetic videos made with Arrow kernels from the base archive's rows: the
    same values `Replicator.write` puts in each video's part (every string naming the base video
    renamed, as `_renamed` does, then `video_key`, `source_uri` and `archive_uri` set), plus the two
    columns compaction adds (`source_part`: the part's name; `source_sha256`: `placeholder_sha256`)."""

    def __init__(self, bases: list[BaseVideo], fs: Any, root: str) -> None:
        import pyarrow as pa

        from pipeline.format.schema import MANIFEST_SCHEMA

        self.bases, self.fs, self.root = bases, fs, root
        self.tables = [pa.Table.from_pylist(b.rows, schema=MANIFEST_SCHEMA) for b in bases]
        nested = [f.name for f in MANIFEST_SCHEMA if pa.types.is_nested(f.type)]
        if any(row[name] is not None for b in bases for row in b.rows for name in nested):
            raise SystemExit(f"direct build: nested columns {nested} are not renamed here (DirectRows)")
        strings = [
            f.name for f in MANIFEST_SCHEMA if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        #: per base video: {string column: its rows' templates} for the columns that name the video
        self.templates: list[dict[str, list[list[Any] | None]]] = []
        for base in bases:
            olds = [old for old, _ in rename_pairs(base, "", "", "")]
            columns = {}
            for column in strings:
                pieces = [_template(row[column], olds) for row in base.rows]
                if any(p is not None and len(p) > 1 for p in pieces):
                    columns[column] = pieces
            self.templates.append(columns)

    def batch(self, ids: Iterable[int]) -> Any:
        """The rows (a pyarrow Table, `COMPACTED_SCHEMA` columns, not sorted) of synthetic videos `ids`."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from pipeline.format.runinfo import container_path
        from pipeline.store.storage import full_uri
        from pipeline.tools.compact import COMPACTED_SCHEMA

        ids = np.fromiter(ids, dtype=np.int64)
        count = len(self.bases)
        tables = []
        for b, base in enumerate(self.bases):
            mine = ids[ids % count == b]
            if not len(mine):
                continue
            names = [synthetic_name(base, int(i)) for i in mine]
            keys = [key for key, _ in names]
            sources = [uri for _, uri in names]
            archives = [full_uri(self.fs, container_path(self.root, key)) for key in keys]
            m, table = len(mine), self.tables[b]
            r = table.num_rows
            base_row = np.tile(np.arange(r), m)
            replica = np.repeat(np.arange(m), r)
            table = table.take(pa.array(base_row))
            # name index 0, 1, 2: archive URI, source URI, key (rename_pairs' order); 3: "" (padding)
            new = pa.array(archives + sources + keys + [""], pa.string())
            for column, pieces in self.templates[b].items():
                width = max(len(p) for p in pieces if p is not None)
                arrays = []
                for k in range(width):
                    if k % 2 == 0:
                        texts = [None if p is None else (p[k] if k < len(p) else "") for p in pieces]
                        arrays.append(pa.array(texts, pa.string()).take(pa.array(base_row)))
                    else:
                        which = np.array([p[k] if p is not None and k < len(p) else 3 for p in pieces])[
                            base_row
                        ]
                        arrays.append(new.take(pa.array(np.where(which == 3, 3 * m, which * m + replica))))
                joined = pc.binary_join_element_wise(*arrays, "")  # null where the base value is null
                table = table.set_column(table.schema.get_field_index(column), column, joined)
            take = pa.array(replica)
            for column, values in (("video_key", keys), ("source_uri", sources), ("archive_uri", archives)):
                table = table.set_column(
                    table.schema.get_field_index(column), column, pa.array(values, pa.string()).take(take)
                )
            part_names = [f"part-{key}.parquet" for key in keys]
            table = table.append_column("source_part", pa.array(part_names, pa.string()).take(take))
            table = table.append_column(
                "source_sha256", pa.array([placeholder_sha256(p) for p in part_names], pa.string()).take(take)
            )
            tables.append(table)
        return pa.concat_tables(tables).select(COMPACTED_SCHEMA.names).cast(COMPACTED_SCHEMA)


def direct_progress_path(root: str) -> Path:
    return Path(root.rstrip("/") + ".direct.json")


def build_compacted_direct(
    rep: Replicator, n: int, meta: dict[str, Any], *, batch: int = DIRECT_BATCH, label: str = "direct"
) -> dict[str, Any]:
    """The compacted layout of `n` synthetic videos at `rep`'s local folder, built without writing a
    single manifest part: for each batch of `batch` videos, their rows (`DirectRows`, vectorised) are
    written as one compacted file by `pipeline.tools.compact.write_compacted_table` (the writer
    `vidarc compact` uses: key-sorted, row groups of `ROW_GROUP_ROWS` with statistics, the
    `vidarc.sorted_by` metadata, `source_part`/`source_sha256`, atomic), named
    `compacted-<build stamp>-<first video, 8 hex>.parquet`; then each video's object (hard link),
    index entries (`locate.write_index_entries`) and done marker are written exactly as the parts
    layout writes them (`Replicator(parts=False)`), the marker last. Unlike the parts layout (whose
    first `vidarc compact` then backfills the whole index, as for an archive older than the index:
    about 60 s at 100,000 videos, measured as part of that compaction), `index/FORMAT.json` says the
    index is complete, as the archive job's `locate.claim_new_archive` makes it when a run starts a
    new archive (the base archive has it). The result is what
    `bench/scale_reads.py --compact-every <batch>` leaves before its compactions merge their files
    (the caller then runs the real `vidarc compact`, which merges them as the archive job's would).

    `source_sha256` (the sha256 of the part's bytes a compaction absorbed) holds `placeholder_sha256`
    of the part's name: no part was ever written, so no digest of one exists, and computing the bytes
    the parts layout would write (12 ms a video) is what this build avoids. Readers compare the column
    only with a part of that name still in `manifest/` (a crash between a compaction's write and its
    deletes); no such part exists here, and a placeholder never equals a real part's digest, so a
    part written later (a video redone) would win over these rows as it should.

    Resumable: progress (build stamp, batch size, batches finished) is kept beside the archive in
    `<root>.direct.json`; a batch's file is written once (its name is fixed), its videos with a done
    marker are skipped. Returns the build's record (seconds, files, rows, counts)."""
    from pipeline.store.storage import join
    from pipeline.tools.compact import compacted_name, write_compacted_table

    if not rep.local or rep.parts:
        raise SystemExit("build_compacted_direct: a local folder, and a Replicator(parts=False)")
    progress_path = direct_progress_path(rep.root)
    progress_path.parent.mkdir(parents=True, exist_ok=True)
    progress: dict[str, Any] = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    wanted = {"n": n, "batch": batch, "base": meta.get("base")}
    clash = {k: progress[k] for k in wanted if k in progress and progress[k] != wanted[k]}
    if clash:
        raise SystemExit(f"{rep.root}: a direct build with {clash} was started there, not {wanted}: --fresh")
    progress = {**wanted, "stamp": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "batches": {}, **progress}

    def save() -> None:
        tmp = progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress, indent=2) + "\n")
        tmp.replace(progress_path)

    save()
    # a new archive's index is complete from its first run on, as the archive job claims it
    if rep.locate is not None:
        rep.locate.claim_new_archive(rep.fs, rep.root)
    rows = DirectRows(rep.bases, rep.fs, rep.root)
    os.makedirs(join(rep.root, "manifest"), exist_ok=True)
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        if str(lo) in progress["batches"]:
            continue
        name = compacted_name(progress["stamp"], f"{lo:08x}")
        path = join(rep.root, "manifest", name)
        started = time.perf_counter()
        cpu = time.process_time()
        written_rows = None
        if not os.path.exists(path):
            table = rows.batch(range(lo, hi))
            written_rows = table.num_rows
            write_compacted_table(rep.fs, rep.root, table, name=name)
            del table
        manifest_s = time.perf_counter() - started
        print(f"  {label} [{lo}:{hi}]: {name} ({written_rows if written_rows is not None else 'already'} rows, "
              f"{os.path.getsize(path) / 2**20:.1f} MiB) in {manifest_s:.1f} s "
              f"({time.process_time() - cpu:.1f} CPU s)", flush=True)  # fmt: skip
        files_started = time.perf_counter()
        counts = rep.run(lo, hi, label=f"{label} [{lo}:{hi}] objects, index entries, markers")
        progress["batches"][str(lo)] = {
            "file": name,
            "bytes": os.path.getsize(path),
            "rows": written_rows,
            "manifest_s": round(manifest_s, 1),
            "files_s": round(time.perf_counter() - files_started, 1),
            **counts,
        }
        save()
    if rep.locate is not None and not rep.locate.index_complete(rep.fs, rep.root):
        rep.locate.mark_index(rep.fs, rep.root, complete=True)  # a build resumed past its first batch
    done = progress["batches"].values()
    return {
        "build": "direct",
        "batch": batch,
        "files": len(progress["batches"]),
        "manifest_bytes": sum(b["bytes"] for b in done),
        "manifest_s": round(sum(b["manifest_s"] for b in done), 1),
        "files_s": round(sum(b["files_s"] for b in done), 1),
        "written": sum(b.get("written", 0) for b in done),
        "skipped": sum(b.get("skipped", 0) for b in done),
    }
