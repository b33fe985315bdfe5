"""Every read of an archive at dataset scale: synthetic archives of N videos, each read timed in its own
process (a benchmark, not a timed test: it is not part of the pytest suite).

    nice -n 19 python -m bench.scale_reads --n 10000 100000 --layouts parts compacted \\
        --storage local s3 --work /tmp/scale-reads --out /tmp/scale-reads/results.json

1. A real base archive (`bench/synthetic_archive.py`): 20 tiny real videos archived by the real CLI
   (`vidarc archive SRC BASE --codec x264 --quality 30 --verify-fraction 0 --no-compact`), cached under
   WORK/base.
2. For each N, synthetic archives of N videos replicated from it (new keys, sources, manifest parts with
   valid checksums, done markers, index entries where `pipeline.read.locate` exists; objects hard-linked
   locally, server-side copies on S3), in two layouts: `parts` (one manifest part per video, as
   `archive` leaves them without compaction) and `compacted` (the parts layout, compacted by the real
   `vidarc compact`, itself measured). Builds stream, resume and skip what exists; a finished archive
   is stamped and reused by later runs (`--fresh` builds it again). `--direct-compacted` writes the
   compacted layout without parts (local folders); on S3 it copies that local build into the bucket
   (`mirror_to_s3`, object URIs renamed to the bucket's) and runs `vidarc compact` on the copy.
3. Each operation runs as `python -m jobs.cli ...` in its own process: wall seconds, the peak RSS of
   that process (`os.wait4`'s rusage: the largest of it and the children it reaped) and of its whole
   process tree (sampled), and on S3 every storage request by kind, counted by a logging proxy
   (`tests/faulty_proxy.FaultyProxy`, no rules) between the command and a moto server, plus, for
   restores, the requests made before the first ranged GET of the video's object. A timed-out
   operation is recorded as such (`--timeout`, default 600 s).
4. A table per (N, layout, storage), growth exponents between consecutive N
   (log(x2/x1) / log(N2/N1) of wall seconds, RSS and requests: 0 = flat, 1 = linear), and the figures
   in `--out` (merged with what the file already holds, so sizes can be measured in separate runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import synthetic_archive as sa  # noqa: E402

OP_GROUPS = {
    "restore": ("restore_key", "restore_name"),
    "ls": ("ls", "ls_limit"),
    "audit": ("audit", "audit_where"),
    "verify": ("verify",),
    "export": ("export",),
    "compact": ("compact",),
}
OP_ORDER = [op for ops in OP_GROUPS.values() for op in ops]
LAYOUTS = ("parts", "compacted")
STORAGES = ("local", "s3")


# ---- counting requests on S3 ---------------------------------------------------------------------------
def counting_proxy(upstream: str) -> Any:
    """A `FaultyProxy` (no rules: every request forwarded) that also records each request's kind:
    LIST, GET, GET_RANGE, HEAD, PUT, COPY, DELETE, POST (multi-object delete, multipart)."""
    sys.path.insert(0, str(REPO / "tests"))
    from faulty_proxy import FaultyProxy

    class CountingProxy(FaultyProxy):
        def __init__(self, upstream: str) -> None:
            super().__init__(upstream)
            self.requests: list[tuple[str, str]] = []
            report = self.server.handle_error

            def handle_error(request: Any, address: Any) -> None:
                # a command killed at its timeout resets its connections: not worth a traceback
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    report(request, address)

            self.server.handle_error = handle_error

        def decide(self, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
            kind = _request_kind(method, path, {k.lower(): v for k, v in (headers or {}).items()})
            with self.lock:
                self.requests.append((kind, path))
                self.log.clear()  # FaultyProxy's own log is not needed here; keep memory flat
            return super().decide(method, path, headers)

        def take(self) -> list[tuple[str, str]]:
            with self.lock:
                taken, self.requests = self.requests, []
            return taken

    return CountingProxy(upstream)


def _request_kind(method: str, path: str, headers: dict[str, str]) -> str:
    """The kind of one request (`headers`: lower-cased names)."""
    target, _, query = path.partition("?")
    if method == "GET":
        if "list-type=" in query or (target.strip("/").count("/") == 0 and ("prefix=" in query or not query)):
            return "LIST"
        return "GET_RANGE" if headers.get("range") else "GET"
    if method == "PUT" and headers.get("x-amz-copy-source"):
        return "COPY"
    return method


def summarize_requests(requests: list[tuple[str, str]]) -> dict[str, Any]:
    by_kind = Counter(kind for kind, _ in requests)
    before_payload = next(
        (
            i
            for i, (kind, path) in enumerate(requests)
            if kind == "GET_RANGE" and ("/videos/" in path or "/packs/" in path)
        ),
        None,
    )
    return {
        "total": len(requests),
        "by_kind": dict(sorted(by_kind.items())),
        "before_payload": before_payload,
    }


class S3Store:
    """A moto server in its own process (its memory is measured), the counting proxy in this one, and one
    bucket per (N, layout) so a listing in one archive never walks another's keys."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen | None = None
        self.proxy: Any = None
        self.moto_url = ""

    def __enter__(self) -> S3Store:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        code = ("import sys, time; from moto.server import ThreadedMotoServer as S; "
                "s = S(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); "
                "time.sleep(10**9)")  # fmt: skip
        log = open(self.work / "moto.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(port)], env=sa.child_env(), stdout=log,
                                     stderr=log, start_new_session=True)  # fmt: skip
        self.moto_url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        else:
            raise SystemExit("moto server did not start (see WORK/moto.log)")
        os.environ.update({k: v for k, v in sa.child_env().items() if k.startswith("AWS_")})
        self.proxy = counting_proxy(self.moto_url).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def root(self, n: int, layout: str) -> str:
        import boto3

        bucket = f"scale-reads-n{n}-{layout}"
        client = boto3.client("s3", endpoint_url=self.moto_url)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        return f"s3://{bucket}/archive"

    def remove(self, n: int, layout: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.moto_url})
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"scale-reads-n{n}-{layout}/archive", recursive=True)
            fs.rm(f"scale-reads-n{n}-{layout}/archive.built.json")

    def server_rss_mb(self) -> float | None:
        return _tree_rss(self.proc.pid) / 2**20 if self.proc else None


#: an object's URI in a marker's JSON text (`runinfo.write_json`'s layout): its folder, up to the object's
#: own folder, is what a move to another root renames
_MARKER_URI = re.compile(rb'("archive_uri": ")[^"]*/(videos|packs)/')


def relocated(rel: str, data: bytes, root_uri: str) -> bytes:
    """The bytes of file `rel` of an archive moved to `root_uri`: readers open the absolute `archive_uri`
    that manifest rows, verify rows and markers hold, so a local archive's copy on S3 would still read
    the local objects; those URIs now name the same object under `root_uri`. Other files as they are."""
    if rel.startswith("markers/") and rel.endswith(".json"):
        return _MARKER_URI.sub(lambda m: m[1] + f"{root_uri}/".encode() + m[2] + b"/", data)
    folder = rel.split("/", 1)[0]
    if not rel.endswith(".parquet") or folder not in ("manifest", "verify", "reference"):
        return data
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.format.manifest_part import SCHEMAS, parquet_bytes
    from pipeline.tools.compact import COMPACTED_PREFIX, COMPACTED_SCHEMA, compacted_writer

    source = pq.ParquetFile(io.BytesIO(data))
    table = source.read()
    if "archive_uri" not in table.column_names:
        return data
    uris = pc.replace_substring_regex(table["archive_uri"], r"^.*/(videos|packs)/", root_uri + r"/\1/")
    table = table.set_column(table.column_names.index("archive_uri"), "archive_uri", uris)
    if not rel.rsplit("/", 1)[-1].startswith(COMPACTED_PREFIX):
        return parquet_bytes(table.to_pylist(), SCHEMAS[folder])  # a part: its column checksums again
    # a compacted file: compact's writer, the same row groups and key-value metadata
    out = io.BytesIO()
    writer = compacted_writer(out)
    rows = source.metadata.row_group(0).num_rows if source.metadata.num_row_groups else 1
    writer.write_table(table.select(COMPACTED_SCHEMA.names).cast(COMPACTED_SCHEMA), row_group_size=rows)
    kv = source.metadata.metadata or {}
    writer.add_key_value_metadata({k.decode(): v.decode() for k, v in kv.items() if k != b"ARROW:schema"})
    writer.close()
    return out.getvalue()


def mirror_to_s3(
    local: Path, endpoint: str, bucket: str, *, prefix: str = "archive", threads: int = 16, label: str = ""
) -> dict[str, Any]:
    """Every file of the local archive `local` as `s3://bucket/prefix/<its relative path>` (`relocated`; a
    hard-linked file becomes an object of its own), put by `threads` threads straight to `endpoint`, not
    through the counting proxy: a copy of a direct build is minutes where per-video writes and a real
    compaction through moto are ~30 min per 10,000 videos. Resumable: a key already there is skipped (a
    put is atomic: a key is a whole object). Progress every 10 s; returns the counts and seconds."""
    import boto3
    from botocore.config import Config

    started = last = time.perf_counter()
    config = Config(max_pool_connections=threads, retries={"max_attempts": 10, "mode": "standard"},
                    request_checksum_calculation="when_required")  # fmt: skip
    client = boto3.client("s3", endpoint_url=endpoint, config=config)
    there: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        there.update(item["Key"] for item in page.get("Contents", ()))
    rels = sorted(
        os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
        for folder, _, names in os.walk(local)
        for name in names
    )
    todo = [rel for rel in rels if f"{prefix}/{rel}" not in there]
    root_uri = f"s3://{bucket}/{prefix}"
    counts = {"files": len(rels), "skipped": len(rels) - len(todo), "put": 0, "bytes": 0, "relocated": 0}
    lock = threading.Lock()

    def put(rel: str) -> None:
        data = (local / rel).read_bytes()
        body = relocated(rel, data, root_uri)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=body)
        with lock:
            counts["put"] += 1
            counts["bytes"] += len(body)
            counts["relocated"] += body != data

    def progress() -> None:
        seconds = time.perf_counter() - started
        rate = counts["put"] / seconds if seconds else 0.0
        print(f"  {label} upload: {counts['put']}/{len(todo)} files ({counts['skipped']} already there), "
              f"{counts['bytes'] / 2**20:.0f} MiB, {rate:.0f} files/s, {seconds:.0f} s, "
              f"ETA {(len(todo) - counts['put']) / rate if rate else 0:.0f} s", flush=True)  # fmt: skip

    with ThreadPoolExecutor(threads) as pool:
        pending: set = set()
        for rel in todo:
            if len(pending) >= 4 * threads:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
            pending.add(pool.submit(put, rel))
            if time.perf_counter() - last >= 10:
                last = time.perf_counter()
                progress()
        for future in pending:
            future.result()
    progress()
    return dict(counts, threads=threads, seconds=round(time.perf_counter() - started, 1))


# ---- one measured command --------------------------------------------------------------------------------
def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS bytes) of every process, from /proc (no psutil needed)."""
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), int(fields[21]) * page)  # ppid, rss pages
        except (OSError, IndexError, ValueError):
            continue
    return table


def _descendants(pid: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, ()))
    return found


def _tree_rss(pid: int) -> int:
    """RSS of `pid` and all its descendants, in bytes."""
    table = _processes()
    return sum(table[p][1] for p in _descendants(pid, table) if p in table)


def _kill_tree(pid: int) -> None:
    table = _processes()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in _descendants(pid, table):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)


#: The tiny wrapper each measured command runs under: it forks, execs the command, waits for it and
#: writes its exit code, wall seconds and `wait4` rusage. Its own few MB are the floor of the RSS figure:
#: a process forked from this (large) benchmark would start with this process's RSS as its peak.
WRAPPER = """
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as handle:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - started,
               "maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, handle)
"""


def measure(argv: list[str], *, timeout: float, logs: Path, proxy: Any = None) -> dict[str, Any]:
    """Run `argv` in its own process group under `WRAPPER`; wall seconds, peak RSS of the command
    (`wait4`: the largest of it and the children it reaped), CPU seconds, sampled peak RSS of the whole
    process tree, exit code, stdout/stderr files, and the proxy's requests made meanwhile."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    if proxy is not None:
        proxy.take()
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    rusage_path = logs.with_suffix(".rusage.json")
    rusage_path.unlink(missing_ok=True)
    with open(out_path, "wb") as stdout, open(err_path, "wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", WRAPPER, str(rusage_path), *argv], cwd=REPO,
                                env=sa.child_env(), stdout=stdout, stderr=stderr, start_new_session=True)  # fmt: skip
        tree_peak, timed_out, next_sample = 0, False, 0.0
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - started
            if elapsed > timeout:
                timed_out = True
                _kill_tree(proc.pid)
                pid, status, _ = os.wait4(proc.pid, 0)
                break
            if elapsed >= next_sample:
                tree_peak = max(tree_peak, _tree_rss(proc.pid))
                next_sample = elapsed + (0.1 if elapsed < 5 else 0.5)
            time.sleep(0.02 if elapsed < 1 else 0.1)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left running (Ray daemons)
    try:
        inner = json.loads(rusage_path.read_text())
        rusage_path.unlink()
    except (OSError, ValueError):  # killed (timeout) before it could write
        inner = {"rc": proc.returncode, "wall_s": wall, "maxrss_kb": None, "cpu_s": None}
    rc = inner["rc"]
    maxrss = inner["maxrss_kb"] * 1024 if inner["maxrss_kb"] else 0
    err_tail = err_path.read_bytes()[-4000:].decode(errors="replace")
    result: dict[str, Any] = {
        "status": "timeout" if timed_out else ("ok" if rc == 0 else f"exit {rc}"),
        "rc": rc,
        "wall_s": round(inner["wall_s"], 3),
        "cpu_s": round(inner["cpu_s"], 2) if inner["cpu_s"] is not None else None,
        "rss_mb": round(maxrss / 2**20, 1) if maxrss else None,
        "tree_rss_mb": round(max(tree_peak, maxrss) / 2**20, 1),
        "stdout_bytes": out_path.stat().st_size,
        "stdout": str(out_path),
    }
    if proxy is not None:
        result["requests"] = summarize_requests(proxy.take())
    if timed_out:
        result["note"] = f"timed out after {timeout:g} s"
    elif rc != 0:
        lines = [line.strip(" │╭╮╰╯─") for line in err_tail.splitlines()]
        lines = [line for line in lines if line]
        if "No such option" in err_tail:
            result["status"] = "unsupported"
            lines = [line for line in lines if "No such option" in line]
        result["note"] = (lines[-1] if lines else "")[:300]
    return result


def count_listing(path: Path) -> tuple[int, str]:
    """Videos in `ls --json` output without loading it: JSON lines (one object a line) or one JSON
    array, whose elements start a line with '  {' (a whole element on that line, as `ls` streams it,
    or only its opening brace, as indent=2 prints it)."""
    with open(path, "rb") as handle:
        head = handle.read(256).lstrip()
    if not head:
        return 0, "empty"
    if head.startswith(b"["):
        count = 0
        with open(path, "rb") as handle:
            for line in handle:
                if line.startswith(b"  {"):
                    count += 1
        if count == 0 and path.stat().st_size < 2**26:
            with open(path, "rb") as handle:
                count = len(json.load(handle))
        return count, "one JSON document"
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.lstrip().startswith(b"{"):
                count += 1
    return count, "JSON lines"


# ---- the operations ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Target:
    n: int
    layout: str
    storage: str
    root: str
    endpoint: str | None  # the proxy's URL on S3
    key: str  # restored by key, exported
    name: str  # restored by source file name


def op_argv(op: str, t: Target, tmp: Path) -> list[str]:
    cli = [sys.executable, "-m", "jobs.cli"]
    ep = ["--endpoint-url", t.endpoint] if t.endpoint else []
    commands = {
        "restore_key": ["restore", t.root, t.key, str(tmp / "restore-key.mp4"), *ep],
        "restore_name": ["restore", t.root, t.name, str(tmp / "restore-name.mp4"), *ep],
        "ls": ["ls", t.root, "--json", *ep],
        "ls_limit": ["ls", t.root, "--json", "--limit", "100", *ep],
        "audit": ["audit", t.root, "--json", *ep],
        "audit_where": ["audit", t.root, "--where", "psnr < 20", "--json", *ep],
        "verify": ["verify", t.root, "--count", "5", *ep],
        "export": ["export", t.root, str(tmp / "export"), "--where", f"video_key = '{t.key}'", *ep],
        "compact": ["compact", t.root, *ep],
    }
    return cli + commands[op]


def run_op(op: str, t: Target, *, timeout: float, work: Path, proxy: Any) -> dict[str, Any]:
    tmp = work / f"tmp-{os.getpid()}"  # runs of the benchmark may share WORK
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logs = work / "logs" / f"n{t.n}-{t.layout}-{t.storage}" / op
    print(f"    {op} ...", end="", flush=True)
    result = measure(op_argv(op, t, tmp), timeout=timeout, logs=logs, proxy=proxy if t.endpoint else None)
    if op in ("ls", "ls_limit") and result["status"] == "ok":
        result["lines"], result["format"] = count_listing(Path(result["stdout"]))
    if op.startswith("restore") and result["status"] == "ok":
        with contextlib.suppress(OSError):
            result["note"] = Path(result["stdout"]).read_text().strip()[-200:]
    if op == "export" and result["status"] == "ok":
        result["files"] = sum(len(f) for _, _, f in os.walk(tmp / "export"))
    if result["stdout_bytes"] > 2**20 or result["status"] == "ok":
        Path(result["stdout"]).unlink(missing_ok=True)  # ls/audit output can be hundreds of MB
        result.pop("stdout")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f" {result['status']} {result['wall_s']:.2f} s, {_fmt(result['rss_mb'], '.0f')} MB"
          + (f", {result['requests']['total']} requests" if "requests" in result else ""), flush=True)  # fmt: skip
    return dict(n=t.n, layout=t.layout, storage=t.storage, op=op, **result)


# ---- building the layouts ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.base_out = sa.make_base(self.work, rebuild=args.rebuild_base)
        self.bases = sa.load_base(self.base_out)
        self.meta = {
            "base": sa.base_fingerprint(self.base_out),
            "commit": sa.git_commit(),
            "index_entries": sa.index_entries_available(),
        }
        self.results = load_results(Path(args.out)) if args.out else {"runs": [], "builds": []}

    def replicator(self, out: str, endpoint: str | None, *, parts: bool = True) -> sa.Replicator:
        threads = self.args.threads or (8 if out.startswith("s3://") else 1 if parts else 4)
        return sa.Replicator(self.bases, self.base_out, out, endpoint_url=endpoint, pool_dir=self.work / "linkpool",
                             processes=self.args.processes, threads=threads, parts=parts)  # fmt: skip

    def target(self, n: int, layout: str, storage: str, root: str, endpoint: str | None) -> Target:
        base_k, base_n = self.bases[(n - 1) % len(self.bases)], self.bases[(n // 2) % len(self.bases)]
        key = sa.synthetic_name(base_k, n - 1)[0]
        name = sa.synthetic_name(base_n, n // 2)[1].rsplit("/", 1)[-1]
        return Target(n, layout, storage, root, endpoint, key, name)

    def meta_for(self) -> dict[str, Any]:
        return dict(self.meta, reuse=self.args.reuse)

    def build(
        self, n: int, layout: str, storage: str, store: S3Store | None
    ) -> tuple[str, dict[str, Any] | None]:
        """The archive of (n, layout, storage), built or reused; returns its root and the compaction's
        measurement (compacted layout)."""
        label = f"build n={n} {layout} {storage}"
        moto = store.moto_url if store else None
        if store is None:
            root = str(self.work / "local" / f"n{n}" / layout)
        else:
            root = store.root(n, layout)
        if self.args.fresh:
            if store is None:
                shutil.rmtree(root, ignore_errors=True)
                Path(root + ".built.json").unlink(missing_ok=True)
            else:
                store.remove(n, layout)
        started = time.perf_counter()
        if layout == "parts":
            record = sa.build_parts(
                lambda out: self.replicator(out, moto), root, n, self.meta_for(), label=label
            )
            self.record_build(n, layout, storage, root, record, store)
            return root, None
        rep = self.replicator(root, moto)
        stamp = sa.read_stamp(rep.fs, rep.root)
        if stamp and stamp.get("n") == n:
            sa._check_stamp(stamp, self.meta_for(), root)
            print(f"{label}: complete ({stamp.get('seconds')} s to build), reused", flush=True)
            self.record_build(n, layout, storage, root, stamp, store)
            return root, dict(stamp["compact"], note="measured when the layout was built")
        if self.args.direct_compacted:
            if store is not None:
                return self.build_mirror(n, root, label, store, rep)
            return self.build_direct(n, root, label)
        endpoint = store.proxy.url if store else None
        proxy = store.proxy if store else None
        target = self.target(n, layout, storage, root, endpoint)
        every = self.args.compact_every
        parts_root = str(self.work / "local" / f"n{n}" / "parts")
        compactions = []
        if every <= 0 and store is None and Path(parts_root + ".built.json").exists():
            count = sa.link_tree(Path(parts_root), Path(root), rep.links)
            print(f"{label}: {count} files hard-linked from the parts layout", flush=True)
        elif every <= 0:
            rep.run(0, n, label=label)
        step = every if every > 0 else n
        for lo in range(0, n, step):
            if every > 0:
                rep.run(lo, min(n, lo + step), label=f"{label} [{lo}:{min(n, lo + step)}]")
            print(f"  compact {root} ...", end="", flush=True)
            result = measure(op_argv("compact", target, self.work), timeout=self.args.compact_timeout,
                             logs=self.work / "logs" / f"n{n}-{layout}-{storage}" / f"compact-{lo}", proxy=proxy)  # fmt: skip
            print(
                f" {result['status']} {result['wall_s']:.1f} s, {_fmt(result['rss_mb'], '.0f')} MB",
                flush=True,
            )
            if result["status"] != "ok":
                raise SystemExit(f"compaction failed: {result.get('note')} (log: {result.get('stdout')})")
            compactions.append(result)
        compact = _combine(compactions, n, every)
        record = dict(self.meta, n=n, layout="compacted", seconds=round(time.perf_counter() - started, 1),
                      compact=compact)  # fmt: skip
        sa.write_stamp(rep.fs, rep.root, record)
        self.record_build(n, layout, storage, root, record, store)
        return root, compact

    def build_direct(self, n: int, root: str, label: str) -> tuple[str, dict[str, Any]]:
        """The compacted layout built directly (`sa.build_compacted_direct`: one compacted file per
        `--compact-every` batch, default 100,000 videos, no part written), then the real `vidarc compact`,
        measured: it merges the batch files when there are `MERGE_MIN_FILES` or more, as the archive
        job's compaction would; the files it merged away are then deleted at once (in this process,
        `compact(..., merged_grace_seconds=0)`), as the next compaction past their grace period would."""
        from pipeline.tools.compact import compact as compact_now

        started = time.perf_counter()
        rep = self.replicator(root, None, parts=False)
        built = sa.build_compacted_direct(rep, n, self.meta_for(), batch=self.args.compact_every or sa.DIRECT_BATCH,
                                          label=label)  # fmt: skip
        build_s = time.perf_counter() - started
        print(f"  compact {root} ...", end="", flush=True)
        result = measure(op_argv("compact", self.target(n, "compacted", "local", root, None), self.work),
                         timeout=self.args.compact_timeout,
                         logs=self.work / "logs" / f"n{n}-compacted-local" / "compact-direct")  # fmt: skip
        said = Path(result.pop("stdout")).read_text().strip().splitlines()[-1:] if "stdout" in result else []
        print(f" {result['status']} {result['wall_s']:.1f} s, {_fmt(result['rss_mb'], '.0f')} MB: "
              f"{' '.join(said)}", flush=True)  # fmt: skip
        if result["status"] != "ok":
            raise SystemExit(f"compaction failed: {result.get('note')}")
        removed = compact_now(root, merged_grace_seconds=0).superseded_removed
        print(f"  {removed} merged-away batch files removed", flush=True)
        compact = dict(result, note=f"after a direct build of {built['files']} files: {' '.join(said)}"[:300])
        # seconds: the whole build (every batch, also those of earlier runs it resumed) and the compaction
        seconds = round(built["manifest_s"] + built["files_s"] + result["wall_s"], 1)
        record = dict(self.meta, n=n, layout="compacted", seconds=seconds, this_run_seconds=round(
            time.perf_counter() - started, 1), build_seconds_before_compact=round(build_s, 1), direct=built,
            compact=compact)  # fmt: skip
        sa.write_stamp(rep.fs, rep.root, record)
        self.record_build(n, "compacted", "local", root, record, None)
        return root, compact

    def build_mirror(
        self, n: int, root: str, label: str, store: S3Store, rep: sa.Replicator
    ) -> tuple[str, dict[str, Any]]:
        """`--direct-compacted` on S3: the local direct build of `n` (made, or reused when stamped, as
        `--storage local` does) copied into the bucket (`mirror_to_s3`), then the real `vidarc compact`
        on the copy, measured through the proxy (nothing left to merge: what a compaction of a compacted
        archive costs on S3); the bucket's stamp last."""
        local, _ = self.build(n, "compacted", "local", None)
        local_stamp = json.loads(Path(local + ".built.json").read_text())
        started = time.perf_counter()
        bucket = root.removeprefix("s3://").split("/", 1)[0]
        mirror = mirror_to_s3(
            Path(local), store.moto_url, bucket, threads=self.args.threads or 16, label=label
        )
        print(f"  compact {root} ...", end="", flush=True)
        result = measure(op_argv("compact", self.target(n, "compacted", "s3", root, store.proxy.url), self.work),
                         timeout=self.args.compact_timeout, logs=self.work / "logs" / f"n{n}-compacted-s3" /
                         "compact-mirror", proxy=store.proxy)  # fmt: skip
        said = Path(result.pop("stdout")).read_text().strip().splitlines()[-1:] if "stdout" in result else []
        print(f" {result['status']} {result['wall_s']:.1f} s, {_fmt(result['rss_mb'], '.0f')} MB: "
              f"{' '.join(said)}", flush=True)  # fmt: skip
        if result["status"] != "ok":
            raise SystemExit(f"compaction failed: {result.get('note')}")
        compact = dict(result, note=f"on the S3 copy of a compacted layout: {' '.join(said)}"[:300])
        mirror.update(source=local, source_seconds=local_stamp.get("seconds"))
        record = dict(self.meta, n=n, layout="compacted", seconds=round(time.perf_counter() - started, 1),
                      mirror=mirror, compact=compact)  # fmt: skip
        sa.write_stamp(rep.fs, rep.root, record)
        self.record_build(n, "compacted", "s3", root, record, store)
        return root, compact

    def record_build(self, n: int, layout: str, storage: str, root: str, record: dict[str, Any],
                     store: S3Store | None) -> None:  # fmt: skip
        entry = {"n": n, "layout": layout, "storage": storage, "root": root,
                 "build_seconds": record.get("seconds"), "commit": record.get("commit"),
                 "index_entries": record.get("index_entries")}  # fmt: skip
        entry.update({k: record[k] for k in ("direct", "mirror") if record.get(k)})
        if store is None:
            entry["disk_bytes"] = sa.disk_usage([root])
        else:
            entry["moto_rss_mb"] = round(store.server_rss_mb() or 0, 1)
        print(f"  {layout} {storage} n={n}: built in {entry['build_seconds']} s"
              + (f", {entry['disk_bytes'] / 2**20:.0f} MiB on disk" if entry.get("disk_bytes") else "")
              + (f", {entry['mirror']['put']} files uploaded in {entry['mirror']['seconds']} s" if "mirror" in entry else "")
              + (f", moto RSS {entry['moto_rss_mb']:.0f} MiB" if "moto_rss_mb" in entry else ""), flush=True)  # fmt: skip
        self.results["builds"] = [b for b in self.results["builds"]
                                  if (b["n"], b["layout"], b["storage"]) != (n, layout, storage)] + [entry]  # fmt: skip
        self.save()

    def add_run(self, run: dict[str, Any]) -> None:
        key = (run["n"], run["layout"], run["storage"], run["op"])
        self.results["runs"] = [r for r in self.results["runs"]
                                if (r["n"], r["layout"], r["storage"], r["op"]) != key] + [run]  # fmt: skip
        self.save()

    def save(self) -> None:
        if not self.args.out:
            return
        self.results["exponents"] = exponents(self.results["runs"])
        self.results["meta"] = dict(self.meta, base_videos=len(self.bases), cpus=os.cpu_count(),
                                    updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))  # fmt: skip
        path = Path(self.args.out)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        tmp.replace(path)

    def measure_all(self, storage: str, store: S3Store | None) -> None:
        ops = expand_ops(self.args.ops)
        for n in sorted(self.args.n):
            for layout in self.args.layouts:
                root, compact = self.build(n, layout, storage, store)
                endpoint = store.proxy.url if store else None
                target = self.target(n, layout, storage, root, endpoint)
                print(f"measure n={n} {layout} {storage} ({root})", flush=True)
                if compact is not None and "compact" in ops:
                    self.add_run(dict(n=n, layout=layout, storage=storage, op="compact", **compact))
                for op in ops:
                    if op == "compact":
                        continue
                    self.add_run(run_op(op, target, timeout=self.args.timeout, work=self.work,
                                        proxy=store.proxy if store else None))  # fmt: skip
                print_table(self.results["runs"], n, layout, storage)
                if self.args.drop_after:
                    self.drop(n, layout, root, store)

    def drop(self, n: int, layout: str, root: str, store: S3Store | None) -> None:
        print(f"  removing {root} (--drop-after)", flush=True)
        if store is None:
            shutil.rmtree(root, ignore_errors=True)
            Path(root + ".built.json").unlink(missing_ok=True)
        else:
            store.remove(n, layout)


def _combine(results: list[dict[str, Any]], n: int, every: int) -> dict[str, Any]:
    """One compaction, or the batches of `--compact-every` as one figure (wall summed, peaks maxed)."""
    if len(results) == 1:
        combined = dict(results[0])
        combined["note"] = f"one compaction of {n} parts"
    else:
        combined = {
            "status": "ok",
            "rc": 0,
            "wall_s": round(sum(r["wall_s"] for r in results), 3),
            "cpu_s": round(sum(r.get("cpu_s") or 0 for r in results), 2),
            "rss_mb": max(r["rss_mb"] for r in results),
            "tree_rss_mb": max(r["tree_rss_mb"] for r in results),
            "note": f"{len(results)} compactions, one after every {every} videos (wall summed, RSS max)",
        }
        if all("requests" in r for r in results):
            kinds: Counter = Counter()
            for r in results:
                kinds.update(r["requests"]["by_kind"])
            combined["requests"] = {"total": sum(kinds.values()), "by_kind": dict(sorted(kinds.items())),
                                    "before_payload": None}  # fmt: skip
    combined.pop("stdout", None)
    return combined


# ---- results -------------------------------------------------------------------------------------------
def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        data = json.loads(path.read_text())
        data.setdefault("runs", [])
        data.setdefault("builds", [])
        return data
    return {"runs": [], "builds": []}


def merge_results(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Later files win for the same (N, layout, storage[, op])."""
    merged: dict[str, Any] = {"runs": {}, "builds": {}}
    for data in files:
        for run in data.get("runs", []):
            merged["runs"][(run["n"], run["layout"], run["storage"], run["op"])] = run
        for build in data.get("builds", []):
            merged["builds"][(build["n"], build["layout"], build["storage"])] = build
        if data.get("meta"):
            merged["meta"] = data["meta"]
    merged["runs"] = list(merged["runs"].values())
    merged["builds"] = list(merged["builds"].values())
    return merged


def exponents(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """log(x2/x1) / log(N2/N1) between consecutive N, per (layout, storage, op), for wall, RSS, requests."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["layout"], run["storage"], run["op"]), []).append(run)
    rows = []
    for (layout, storage, op), items in sorted(groups.items()):
        items = sorted(items, key=lambda r: r["n"])
        for a, b in itertools.pairwise(items):
            row: dict[str, Any] = {"layout": layout, "storage": storage, "op": op, "n1": a["n"], "n2": b["n"]}
            scale = math.log(b["n"] / a["n"])
            ok = a["status"] == "ok" and b["status"] == "ok"
            for name, get in (
                ("wall", lambda r: r.get("wall_s")),
                ("rss", lambda r: r.get("rss_mb")),
                ("requests", lambda r: (r.get("requests") or {}).get("total")),
            ):
                x1, x2 = get(a), get(b)
                row[name] = round(math.log(x2 / x1) / scale, 2) if ok and x1 and x2 and scale else None
            if not ok:
                row["note"] = f"{a['status']} -> {b['status']}"
            rows.append(row)
    return rows


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return format("-", f">{width}") if width else "-"
    return format(value, spec) if spec else str(value)


def print_table(
    runs: list[dict[str, Any]], n: int, layout: str, storage: str, *, markdown: bool = False
) -> None:
    rows = sorted((r for r in runs if (r["n"], r["layout"], r["storage"]) == (n, layout, storage)),
                  key=lambda r: OP_ORDER.index(r["op"]) if r["op"] in OP_ORDER else 99)  # fmt: skip
    names = ("op", "status", "wall s", "CPU s", "RSS MB", "tree MB", "requests", "to 1st payload", "detail")
    lines = []
    for r in rows:
        req = r.get("requests") or {}
        detail = " ".join(f"{k}={v}" for k, v in (req.get("by_kind") or {}).items())
        if "lines" in r:
            detail = f"{r['lines']} videos ({r['format']}) {detail}"
        if r["status"] != "ok" and r.get("note"):
            detail = f"{r['note'][:120]} {detail}"
        lines.append((r["op"], r["status"], _fmt(r.get("wall_s"), "9.2f"), _fmt(r.get("cpu_s"), "8.2f"),
                      _fmt(r.get("rss_mb"), "8.0f"), _fmt(r.get("tree_rss_mb"), "8.0f"), _fmt(req.get("total"), ">9"),
                      _fmt(req.get("before_payload"), ">14"), detail.strip()))  # fmt: skip
    if markdown:
        print(f"\nN = {n:,}, {layout}, {storage}\n")
        print("| " + " | ".join(names) + " |")
        print("|" + "|".join(["---", "---", *["---:"] * 6, "---"]) + "|")
        for line in lines:
            print("| " + " | ".join(cell.strip() for cell in line) + " |")
        print()
        return
    print(f"\nN={n} layout={layout} storage={storage}")
    header = (f"{names[0]:<13} {names[1]:<11} {names[2]:>9} {names[3]:>8} {names[4]:>8} {names[5]:>8} "
              f"{names[6]:>9} {names[7]:>14}  {names[8]}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for line in lines:
        print(f"{line[0]:<13} {line[1]:<11} " + " ".join(line[2:8]) + f"  {line[8]}")
    print()


def print_exponents(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("growth exponents (log(x2/x1)/log(N2/N1); 0 flat, 1 linear)")
    print(f"{'layout':<10} {'storage':<7} {'op':<13} {'N1->N2':<16} {'wall':>6} {'RSS':>6} {'requests':>9}")
    for r in rows:
        print(f"{r['layout']:<10} {r['storage']:<7} {r['op']:<13} {str(r['n1']) + '->' + str(r['n2']):<16} "
              f"{_fmt(r['wall'], '6.2f')} {_fmt(r['rss'], '6.2f')} {_fmt(r['requests'], '9.2f')}"
              + (f"  ({r['note']})" if r.get("note") else ""))  # fmt: skip


def expand_ops(names: list[str]) -> list[str]:
    ops: list[str] = []
    for name in names:
        for op in OP_GROUPS.get(name, (name,)):
            if op not in OP_ORDER:
                raise SystemExit(f"unknown op {name!r}: choose from {', '.join([*OP_GROUPS, *OP_ORDER])}")
            if op not in ops:
                ops.append(op)
    return ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000], help="archive sizes (videos)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--storage", nargs="+", choices=STORAGES, default=["local"])
    parser.add_argument("--work", default="/tmp/scale-reads", help="base archive, archives, logs")
    parser.add_argument("--out", help="results JSON (merged with what it holds)")
    parser.add_argument("--ops", nargs="+", default=list(OP_GROUPS),
                        help=f"groups {' '.join(OP_GROUPS)} or single ops {' '.join(OP_ORDER)}")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measured operation")
    parser.add_argument("--compact-timeout", type=float, default=6 * 3600, help="seconds per compaction")
    parser.add_argument("--compact-every", type=int, default=0,
                        help="build the compacted layout K videos at a time, compacting after each batch "
                        "(bounds one compaction's input at 1M; 0: one compaction of the whole parts layout)")  # fmt: skip
    parser.add_argument("--direct-compacted", action="store_true",
                        help="build the compacted layout directly: each --compact-every batch's rows (default "
                        "100000 videos) written as one compacted file by compact's own writer, no manifest "
                        "part ever written; then the real `vidarc compact` (merging the batch files), measured "
                        "(bench/synthetic_archive.build_compacted_direct); on S3 that local build (WORK/local) "
                        "is copied into the bucket (mirror_to_s3, --threads, default 16), then compacted, "
                        "measured")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1, help="build processes (use the cores you have)")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="build threads per process (default 1 local, 8 S3; 16 for the S3 copy of --direct-compacted)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rebuild the archives of these sizes")
    parser.add_argument(
        "--reuse", action="store_true", help="measure archives built from another base as they are"
    )
    parser.add_argument("--rebuild-base", action="store_true", help="archive the base videos again")
    parser.add_argument("--build-only", action="store_true", help="build the archives, measure nothing")
    parser.add_argument("--drop-after", action="store_true", help="delete each archive once measured")
    parser.add_argument("--report", action="store_true", help="print the tables of --out and exit")
    parser.add_argument("--markdown", action="store_true", help="with --report: markdown tables")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="with --report: first merge these results files into --out (e.g. runs made in parallel)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        if not args.out:
            parser.error("--report needs --out")
        results = load_results(Path(args.out))
        if args.merge:
            results = merge_results([results, *(load_results(Path(p)) for p in args.merge)])
            results["exponents"] = exponents(results["runs"])
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        tables = {(r["n"], r["layout"], r["storage"]) for r in results["runs"]}
        for n, layout, storage in sorted(tables, key=lambda t: (t[0], t[2], LAYOUTS.index(t[1]))):
            print_table(results["runs"], n, layout, storage, markdown=args.markdown)
        print_exponents(exponents(results["runs"]))
        return
    bench = Bench(args)
    if args.build_only:
        args.ops = []
    for storage in args.storage:
        if storage == "local":
            bench.measure_all("local", None)
        else:
            with S3Store(bench.work) as store:
                bench.measure_all("s3", store)
    print_exponents(exponents(bench.results["runs"]))
    if args.out:
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
