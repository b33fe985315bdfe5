"""The stream of videos a run still has to do: SRC listed page by page, minus other shards, done videos
and (without `--retry-failed`) failed ones.

Nothing here holds the collection. The done and failed markers are read once, page by page, into
`KeySet`s (16 bytes per video: 160 MB for ten million done videos, where a set of names would cost
1.5 GB); the sources are then streamed (`discovery.iter_sources`) and checked a batch at a time, so the
scheduler can start on the first video while the listing goes on. Counts (files listed, in other
shards, already done, failed earlier) are kept as the stream is consumed, for the run's summary.

`--shard i/n` keeps the videos whose key hashes to shard i (`keys.shard_of`): n jobs given the same SRC
and OUT and shards 0..n-1 split the collection with no coordination; each one's markers make it
resumable, and readers of OUT see every shard's videos.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from pipeline.archive import discovery
from pipeline.archive.errors import one_line
from pipeline.format.keys import shard_of
from pipeline.format.runinfo import marker_keyset
from pipeline.store.keyset import KeySet

BATCH = 1000


@dataclasses.dataclass
class WorkCounts:
    files_listed: int = 0  # in this shard (or all, without --shard)
    other_shards: int = 0
    already_done: int = 0
    previously_failed: int = 0  # failed earlier and not retried (or retried, with --retry-failed)
    rows_without_uri: int = 0  # input lists only

    @property
    def seen(self) -> int:
        return self.files_listed + self.other_shards


class WorkList:
    """`entries()` yields the videos to do; `counts` fills in as it goes."""

    def __init__(
        self,
        *,
        src: str,
        out_fs,
        out_root: str,
        endpoint_url: str | None,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        ignore_prefix: str | None = None,
        shard: tuple[int, int] | None = None,
        retry_failed: bool = False,
        sources: Iterator[discovery.SourceEntry] | None = None,
    ) -> None:
        self.counts = WorkCounts()
        self.shard = shard
        self.retry_failed = retry_failed
        self.done: KeySet = marker_keyset(out_fs, out_root, "done")
        self.failed: KeySet = marker_keyset(out_fs, out_root, "failed")
        self._listing = discovery.ListingStats()
        # `sources`: another stream of entries than SRC's listing (a migration's parent videos)
        self._sources = (
            sources
            if sources is not None
            else discovery.iter_sources(
                src,
                endpoint_url=endpoint_url,
                include=include,
                exclude=exclude,
                ignore_prefix=ignore_prefix,
                stats=self._listing,
            )
        )
        self._stream = self._todo()
        self._peeked: list[discovery.SourceEntry] = []
        self.exhausted = False

    def peek(self) -> discovery.SourceEntry | None:
        """The first video to do (listing as far as needed), or None when there is none."""
        if not self._peeked:
            entry = next(self._stream, None)
            if entry is None:
                self.exhausted = True
                return None
            self._peeked.append(entry)
        return self._peeked[0]

    def entries(self) -> Iterator[discovery.SourceEntry]:
        """The videos to do, in listing order (consumes the stream)."""
        while self._peeked:
            yield self._peeked.pop(0)
        yield from self._stream
        self.exhausted = True

    def _todo(self) -> Iterator[discovery.SourceEntry]:
        while True:
            batch = list(itertools.islice(self._sources, BATCH))
            self.counts.rows_without_uri = self._listing.rows_without_uri
            if not batch:
                return
            if self.shard is not None:
                index, count = self.shard
                mine = [e for e in batch if shard_of(e.key, count) == index]
                self.counts.other_shards += len(batch) - len(mine)
                batch = mine
            self.counts.files_listed += len(batch)
            keys = [e.key for e in batch]
            done = self.done.contains_many(keys)
            failed = self.failed.contains_many(keys)
            for entry, is_done, has_failed in zip(batch, done, failed, strict=True):
                if is_done:
                    self.counts.already_done += 1
                    continue
                if has_failed:
                    self.counts.previously_failed += 1
                    if not self.retry_failed:
                        continue
                yield entry


class Listing:
    """The work stream as the driver loop takes it, one entry at a time: `take()` the next (None at
    its end, or once a page could not be listed after the storage retries: the run then finishes
    what it started and reports `error`), `close()` it early (`--limit` reached)."""

    def __init__(self, entries: Iterator[discovery.SourceEntry], src: str, display: Any) -> None:
        self.entries, self.src, self.display = entries, src, display
        self.open = True
        self.error: str | None = None

    def take(self) -> discovery.SourceEntry | None:
        if not self.open:
            return None
        try:
            entry = next(self.entries, None)
        except Exception as exc:  # a page that cannot be listed after the storage retries
            self.error = one_line(self.src, exc)
            self.display.log(f"listing stopped: {self.error}")
            entry = None
        if entry is None:
            self.close()
        return entry

    def close(self) -> None:
        self.open = False
