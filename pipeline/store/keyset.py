"""A compact, exact-in-practice set of video keys: 16 bytes per key instead of a Python string in a set.

Resuming a ten-million-video archive needs "is this video done?" for every source, and the done markers
are ten million names. A Python `set` of them costs about 150 bytes per key (1.5 GB); here each key is
its 128-bit BLAKE2b digest, held as two sorted `uint64` arrays (16 bytes per key, 160 MB for ten
million). Two keys collide with probability about n²/2¹²⁹ (10⁻²⁴ for n = 10⁷): for any collection
this tool will see, membership is exact.

Keys arrive in pages (`add`), are appended to a list of small arrays, and are sorted once by
`freeze()`; lookups (`contains_many`, vectorised per page, or `in`) then cost one binary search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def key_digests(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of each key's 128-bit BLAKE2b digest."""
    raw = b"".join(hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys)
    pairs = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class KeySet:
    """Video keys as sorted 128-bit digests. Build with `add`, then `freeze()` before lookups."""

    def __init__(self) -> None:
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._high = np.empty(0, dtype=np.uint64)
        self._low = np.empty(0, dtype=np.uint64)
        self._frozen = True

    @classmethod
    def of(cls, keys: Iterable[str]) -> KeySet:
        keyset = cls()
        keyset.add(list(keys))
        return keyset.freeze()

    def add(self, keys: Iterable[str]) -> None:
        high, low = key_digests(keys)
        if high.size:
            self._pending.append((high, low))
            self._frozen = False

    def freeze(self) -> KeySet:
        """Sort what was added (duplicates are kept; they do not change membership)."""
        if self._pending:
            high = np.concatenate([self._high, *(h for h, _ in self._pending)])
            low = np.concatenate([self._low, *(lo for _, lo in self._pending)])
            self._pending.clear()
            self._high = self._low = np.empty(0, dtype=np.uint64)
            order = np.argsort(high)  # equal high halves are rare; lookups compare the low halves
            high = high[order]
            low = low[order]
            del order
            self._high, self._low = high, low
        self._frozen = True
        return self

    def __len__(self) -> int:
        return int(self._high.size) + sum(h.size for h, _ in self._pending)

    @property
    def nbytes(self) -> int:
        return int(self._high.nbytes + self._low.nbytes)

    def contains_many(self, keys: list[str]) -> np.ndarray:
        """A boolean per key."""
        if not self._frozen:
            raise RuntimeError("KeySet.freeze() must be called after add() and before lookups")
        if not keys or self._high.size == 0:
            return np.zeros(len(keys), dtype=bool)
        high, low = key_digests(keys)
        start = np.searchsorted(self._high, high, side="left")
        stop = np.searchsorted(self._high, high, side="right")
        found = np.zeros(len(keys), dtype=bool)
        runs = stop - start
        single = runs == 1  # the usual hit: one stored key with this high half
        found[single] = self._low[start[single]] == low[single]
        for i in np.nonzero(runs > 1)[0]:  # equal high halves (rare): compare every low half
            found[i] = bool(np.any(self._low[start[i] : stop[i]] == low[i]))
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.contains_many([key])[0])

    def identity(self) -> tuple[int, str]:
        """(distinct keys, sha256 hex of their digests in sorted order): the identity of the set, however
        the keys were added, in which order or how often (the closing verify records which videos it
        covered, so a rerun can tell whether anything was committed since)."""
        if not self._frozen:
            raise RuntimeError("KeySet.freeze() must be called after add() and before identity()")
        pairs = np.unique(np.stack([self._high, self._low], axis=1), axis=0)  # sorted by (high, low)
        return int(pairs.shape[0]), hashlib.sha256(pairs.astype("<u8").tobytes()).hexdigest()
