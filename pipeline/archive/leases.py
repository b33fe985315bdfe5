"""One writer per video: a lease object per video under OUT, created with a conditional write.

Why: two archive runs over the same videos of one OUT would encode them twice and could delete each
other's in-flight temporaries. Runs over disjoint parts of a collection (say, `--include 'a/*'` and
`--include 'b/*'`) may share an OUT: each holds the leases of the videos it is working on, and only
those.

Layout: ``OUT/leases/<video_key>.json`` = {run_id, host, pid, pid_started, expires_at, nonce}. A lease
is taken with an exclusive create — locally a hard link of a finished temporary file (fails if the name
exists, so a reader never sees half a lease), on S3 a PUT with ``If-None-Match: *`` (s3fs's
``pipe_file(..., mode="create")``; moto and AWS S3 honour it) — so of two runs racing for a video
exactly one gets it. The driver renews its leases every `ttl / 4` seconds while it works and deletes
each when its video is committed or failed, and all of them when the run ends.

A lease whose owner died is taken over: at once when the owner ran on this host and its process is
gone (a driver killed with SIGKILL, rerun on the same machine), else once it has expired (`ttl`, default
five minutes, after the last renewal: a driver killed on another machine, e.g. a KubeRay head that was
replaced); a run starting up also deletes dead runs' leases it will not need (of videos a killed
driver had just committed). Taking over re-reads the lease and deletes it only if it is still the dead one, then creates
its own exclusively; two runs taking over the same dead lease in the same instant could both win, which
costs a duplicate encode of one video, never a damaged archive (every object is written atomically under
a deterministic name). Object stores without conditional writes fall back to check-then-write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.store.storage import is_local, join, write_bytes

LEASE_DIR = "leases"
DEFAULT_TTL_S = 300.0
#: Runs of this process that still hold their leases: a lease naming this process but no run here is
#: dead (a run whose store failed before it could release it; the next run in the same process, e.g.
#: a notebook calling `run_archive` again, takes it over like a dead process's).
_LIVE_RUNS: set[str] = set()


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored (possibly another run's)."""

    key: str
    run_id: str
    host: str
    pid: int
    pid_started: float
    expires_at: float
    nonce: str

    @classmethod
    def parse(cls, key: str, data: bytes) -> LeaseInfo | None:
        try:
            item = json.loads(data)
            return cls(
                key,
                str(item["run_id"]),
                str(item["host"]),
                int(item["pid"]),
                float(item["pid_started"]),
                float(item["expires_at"]),
                str(item["nonce"]),
            )
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as stale (a crash mid-write cannot leave one locally)

    def describe(self, now: float) -> str:
        left = self.expires_at - now
        return f"run {self.run_id} (pid {self.pid} on {self.host}, lease expires in {max(0, left):.0f} s)"


def lease_ttl() -> float:
    """The ttl of this run's leases: `VIDARC_LEASE_TTL_S` when set (tests renew on every turn of the
    driver loop; an operator may lengthen it for a driver that pauses), else `DEFAULT_TTL_S`."""
    text = os.environ.get("VIDARC_LEASE_TTL_S")
    try:
        return max(0.0, float(text)) if text else DEFAULT_TTL_S
    except ValueError:
        return DEFAULT_TTL_S


def lease_path(out_root: str, key: str) -> str:
    return join(out_root, LEASE_DIR, f"{key}.json")


def create_exclusive(fs: Any, path: str, data: bytes) -> None:
    """Write `data` at `path` only if nothing is there; FileExistsError otherwise."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, path)  # atomic, and refuses an existing name
        finally:
            os.remove(tmp)
        return
    try:
        fs.pipe_file(path, data, mode="create")
    except TypeError:  # a backend without conditional writes: check, then write
        if fs.exists(path):
            raise FileExistsError(path) from None
        fs.pipe_file(path, data)
    fs.invalidate_cache(path)


class Leases:
    """The leases one run holds on videos under one OUT."""

    def __init__(
        self,
        fs: Any,
        out_root: str,
        run_id: str,
        *,
        ttl: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fs, self.out_root, self.run_id, self.ttl, self.clock = fs, out_root, run_id, ttl, clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_started = _process_start(self.pid) or 0.0
        self.held: dict[str, str] = {}  # video key -> nonce of our lease
        self._renewed = clock()
        _LIVE_RUNS.add(run_id)

    # ---- other runs' leases ----------------------------------------------------------------------
    def read(self, key: str) -> LeaseInfo | None:
        try:
            data = self.fs.cat_file(lease_path(self.out_root, key))
        except FileNotFoundError:
            return None
        return LeaseInfo.parse(key, data) or LeaseInfo(key, "?", "?", -1, 0.0, 0.0, "")

    def alive(self, info: LeaseInfo) -> bool:
        """Whether a lease's owner may still be working: its process on this host exists (and is the
        same process), or, on another host, the lease has not expired."""
        if info.host == self.host and info.pid == self.pid and info.pid_started == self.pid_started:
            return info.run_id in _LIVE_RUNS
        if info.host == self.host:
            return _process_alive(info.pid, info.pid_started)
        return info.expires_at > self.clock()

    def live_foreign(self, *, remove_dead: bool = False) -> dict[str, LeaseInfo]:
        """Leases of other runs that are still alive (one listing plus one read per lease). With
        `remove_dead`, leases whose owner died are deleted (e.g. of a video a killed driver had just
        committed: no later run would take that lease over)."""
        folder = join(self.out_root, LEASE_DIR)
        self.fs.invalidate_cache(folder)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if not base.endswith(".json") or ".tmp-" in base:
                continue
            info = self.read(base[: -len(".json")])
            if info is None or info.run_id == self.run_id:
                continue
            if self.alive(info):
                found[info.key] = info
            elif remove_dead:
                self._remove_if_unchanged(info)
        return found

    def _remove_if_unchanged(self, judged: LeaseInfo) -> None:
        """Delete a lease we judged dead, unless another run has taken it since (re-read first)."""
        again = self.read(judged.key)
        if again is not None and again.nonce == judged.nonce:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(lease_path(self.out_root, judged.key))

    # ---- our leases ------------------------------------------------------------------------------
    def acquire(self, key: str) -> LeaseInfo | None:
        """Take the lease of video `key`. None when taken; the other run's lease when it holds it."""
        nonce = uuid.uuid4().hex
        path = lease_path(self.out_root, key)
        for _ in range(3):  # a lease may vanish (released) between our create and our read
            try:
                create_exclusive(self.fs, path, self._body(nonce))
                self.held[key] = nonce
                return None
            except FileExistsError:
                pass
            current = self.read(key)
            if current is None:
                continue
            if current.run_id == self.run_id or not self.alive(current):
                self._remove_if_unchanged(current)  # only the lease we judged, not one taken since
                continue
            return current
        return self.read(key) or LeaseInfo(key, "?", "?", -1, 0.0, 0.0, "")

    def renew(self, *, force: bool = False) -> None:
        """Push our leases' expiry forward (every ttl/4; cheap to call in a loop)."""
        now = self.clock()
        if not force and now - self._renewed < self.ttl / 4:
            return
        self._renewed = now
        for key, nonce in list(self.held.items()):
            write_bytes(self.fs, lease_path(self.out_root, key), self._body(nonce))  # atomic: never half read

    def release(self, key: str) -> None:
        """Give up the lease of video `key` (its video is committed or failed)."""
        nonce = self.held.pop(key, None)
        if nonce is None:
            return
        current = self.read(key)
        if current is not None and current.nonce == nonce:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(lease_path(self.out_root, key))

    def release_all(self) -> None:
        """Give up every lease at the end of the run; the run no longer counts as live in this process."""
        _LIVE_RUNS.discard(self.run_id)
        for key in list(self.held):
            with contextlib.suppress(Exception):  # best effort at shutdown: an expired lease is harmless
                self.release(key)

    def _body(self, nonce: str) -> bytes:
        record = {
            "run_id": self.run_id,
            "host": self.host,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "expires_at": self.clock() + self.ttl,
            "nonce": nonce,
        }
        return json.dumps(record, sort_keys=True).encode()


def _process_start(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux /proc), so a reused pid is told from
    the lease's owner; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return float(fields[19])


def _process_alive(pid: int, started: float) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    now_started = _process_start(pid)
    return now_started is None or not started or now_started == started
