"""The run's leases as the driver loop uses them (`leases.Leases` holds the protocol): take a video's
lease before probing it, give it up once the video is committed or failed, renew the held ones, and
ride out a store that refuses lease operations (leases are then left to expire, and the run exits 3)."""

from __future__ import annotations

from pipeline.archive import discovery
from pipeline.archive.leases import Leases
from pipeline.archive.run_context import RunContext
from pipeline.store.storage import StorageError, describe, is_transient

TAKEN, ELSEWHERE, UNREACHABLE = "taken", "elsewhere", "unreachable"


class LeaseKeeper:
    def __init__(self, ctx: RunContext, leases: Leases | None) -> None:
        self.ctx, self.leases = ctx, leases
        self.error: str | None = None  # the first lease the store refused to read or write

    def take(self, entry: discovery.SourceEntry) -> tuple[str, Exception | None]:
        """(TAKEN | ELSEWHERE | UNREACHABLE, the storage error). ELSEWHERE: another live run holds it
        (started at the same time as this one; the driver refused the others): the video is left to it.
        UNREACHABLE: the store is down: the video is not started, a rerun does it."""
        if self.leases is None:
            return TAKEN, None
        try:
            holder = self.leases.acquire(entry.key)
        except Exception as exc:
            self.fault(exc)
            return UNREACHABLE, exc
        if holder is None:
            return TAKEN, None
        reason = f"{entry.uri}: being archived by {holder.describe(self.leases.clock())}"
        self.ctx.tally.leased(reason)
        self.ctx.counters.videos_total -= 1
        self.ctx.display.log(f"left to another run: {reason}")
        return ELSEWHERE, None

    def release(self, key: str) -> None:
        """Give up a video's lease, best effort: once the store has refused a lease operation, leases
        are left to expire (harmless: a rerun on this host takes them over at once, another host after
        their ttl) rather than each costing the driver a full round of storage retries."""
        if self.leases is None:
            return
        if self.error is not None:
            self.leases.held.pop(key, None)
            return
        try:
            self.leases.release(key)
        except Exception as exc:
            self.fault(exc)

    def renew(self) -> None:
        if self.leases is None:
            return
        try:
            self.leases.renew()
        except Exception as exc:  # the store is down: the run goes on, its writes say what is lost
            self.fault(exc)

    def fault(self, exc: Exception) -> None:
        """Note a lease the store refused (the run then exits 3: storage failed); anything that is not
        a storage error is a bug and is raised."""
        if not (is_transient(exc) or isinstance(exc, (StorageError, OSError))):
            raise exc
        if self.error is None:
            self.error = describe(exc, f"{self.ctx.cfg.out}/leases")
            self.ctx.display.log(f"storage: leases cannot be written ({self.error})")
