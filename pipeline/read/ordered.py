"""`ordered_map`: a few items worked on at once, the results in the items' order, memory bounded.

Restore, verify and export all read payloads in order on the caller's thread (I/O, ranged reads),
decode or check them on a few threads (a neural decoder runs each pass on one torch thread, so cores
are used by working on several GOPs side by side), and hand results on in order. Items are drawn from
the iterable lazily, at most `ahead` beyond the one the caller waits for, so a generator that fetches
payloads never runs far ahead of what is consumed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    work: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    ahead: int | None = None,
    name: str = "vidarc",
) -> Iterator[R]:
    """`work(item)` for each item, in order, on `workers` threads with at most `ahead` (default
    `workers + 1`) items in flight. One worker: inline, no thread. An exception from `work` is raised
    at its item's place; items not started by then are cancelled."""
    if workers <= 1:
        for item in items:
            yield work(item)
        return
    limit = max(workers, ahead if ahead is not None else workers + 1)
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        pending: collections.deque[Future[R]] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
