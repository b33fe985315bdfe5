"""Bounded-memory summaries of a column streamed in record batches: quantiles and the worst rows.

Manifests can hold millions of GOP rows; the audit never loads them at once. Quantiles come from a
uniform reservoir sample (Vitter's Algorithm R, vectorised per batch, seeded so reruns agree) of
`capacity` values: exact while a group has at most `capacity` rows, and beyond that a p-quantile's rank
error is about sqrt(p(1-p)/capacity) — ±0.03 percentage points at p1 with the default 100 000, far
below what a quality audit resolves. Count, mean, min and max are exact.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


class Reservoir:
    """A fixed-size uniform sample of a numeric stream, plus exact count/mean/min/max."""

    def __init__(self, capacity: int = 100_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.sample = np.empty(0, dtype=np.float64)
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.minimum = np.inf
        self.maximum = -np.inf
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        room = max(0, self.capacity - self.sample.size)
        if room:
            self.sample = np.concatenate([self.sample, values[:room]])
            self.count += min(room, values.size)
            values = values[room:]
        if values.size:
            # Algorithm R: item k (0-based, over the whole stream) replaces slot j ~ U{0..k} if j < capacity.
            ranks = self.count + np.arange(values.size)
            slots = np.floor(self._rng.random(values.size) * (ranks + 1)).astype(np.int64)
            keep = slots < self.capacity
            self.sample[slots[keep]] = values[keep]  # later items win, as in the sequential algorithm
            self.count += values.size

    def quantile(self, q: float) -> float | None:
        """q in [0, 1]; None when nothing was seen."""
        if self.sample.size == 0:
            return None
        return float(np.quantile(self.sample, q))

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def mean_interval(self, z: float = Z95) -> tuple[float, float] | None:
        """Normal-approximation interval of the mean (z·s/√n); None under two values. For a metric
        measured on a sample of GOPs this is how far the sample's mean may be from all GOPs'."""
        if self.count < 2:
            return None
        mean = self.total / self.count
        variance = max(0.0, (self.squares - self.count * mean * mean) / (self.count - 1))
        half = z * math.sqrt(variance / self.count)
        return mean - half, mean + half

    def quantile_interval(self, q: float, z: float = Z95) -> tuple[float | None, float | None]:
        """Distribution-free interval of the q-quantile from order statistics of the (uniform) sample:
        ranks n·q ∓ z·√(n·q·(1−q)). An end the sample is too small to bound is None (e.g. the 1st
        percentile of 20 GOPs has no lower bound: nothing below the minimum was seen)."""
        n = self.sample.size
        if n == 0:
            return None, None
        ordered = np.sort(self.sample)
        spread = z * math.sqrt(n * q * (1 - q))
        low, high = math.floor(n * q - spread), math.ceil(n * q + spread)
        return (
            float(ordered[low - 1]) if low >= 1 else None,
            float(ordered[high - 1]) if high <= n else None,
        )


class WorstRows:
    """The `n` rows with the worst value of one metric (lowest when higher is better). Among equal
    values the earliest rows offered win, whatever the batches were, so the parts and the compacted
    layout of one archive name the same rows."""

    def __init__(self, n: int, higher_is_better: bool) -> None:
        self.n = n
        self.sign = 1.0 if higher_is_better else -1.0
        #: min-heap of (badness, -arrival, row): its root is the row to drop next, the least bad and,
        #: among equals, the latest
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._arrival = itertools.count()

    def offer(self, values: np.ndarray, fetch_row: Callable[[int], dict[str, Any]]) -> None:
        """Consider a batch; `fetch_row(i)` builds row i's dict only for candidates (cheap for big batches)."""
        if self.n <= 0:
            return
        values = np.asarray(values, dtype=np.float64)
        badness = -self.sign * values  # larger = worse
        valid = np.flatnonzero(np.isfinite(badness))
        if valid.size == 0:
            return
        if valid.size > self.n:  # the n worst, ties broken by position: worst first, then earliest
            threshold = np.partition(badness[valid], -self.n)[-self.n]
            valid = valid[badness[valid] >= threshold]
            valid = valid[np.lexsort((valid, -badness[valid]))][: self.n]
        for i in np.sort(valid):  # in batch order, so arrival follows the rows' order
            item = (float(badness[i]), -next(self._arrival), fetch_row(int(i)))
            if len(self._heap) < self.n:
                heapq.heappush(self._heap, item)
            elif item[0] > self._heap[0][0]:
                heapq.heapreplace(self._heap, item)

    def rows(self) -> list[dict[str, Any]]:
        """Worst first."""
        return [row for _, _, row in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]
