"""Hit a bit budget by searching one integer knob of an encoder on the actual coded bytes.

Every vidarc codec exposes a quality knob whose bit cost is (nearly) monotone: CRF for x264/x265/SVT-AV1
(more CRF, fewer bits) and GLVC's quality index (more index, more bits). One-pass ABR misses small
budgets badly, so rate control here encodes, counts the bytes and tries again. Encodes are the cost,
so the search models log(bits) as linear in the knob (bits of a hybrid codec fall roughly
exponentially with QP/CRF): a secant step on log(bits) inside the current bracket, with a bisection
step whenever the secant stalls. It usually needs 3–5 encodes.

The answer is the highest-quality setting whose bits are at most `budget·(1+tolerance)`; it counts as
`reached` when it also spends at least `budget·(1−tolerance)`, or when it is the top-quality setting
(the content needs less than the budget: spending more is impossible, not a miss). Small
non-monotonicity (a CRF step that costs a few bytes more instead of fewer) is tolerated: the bracket
is kept between the best feasible setting seen and the nearest infeasible one above it in quality.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")

#: When only one point is known the secant has no slope yet; this guess is d ln(bits) per knob step.
#: x264/x265 halve the bits about every 6 CRF (ln 2 / 6 ≈ 0.115); a wrong guess only costs a step.
DEFAULT_LOG_BITS_PER_STEP = 0.115


@dataclasses.dataclass
class SearchResult(Generic[R]):
    """The chosen knob value, what the encoder returned for it, its bits and how the search went."""

    param: int
    result: R
    bits: float
    reached: bool
    evaluations: int


def search_rate(
    encode: Callable[[int], R],
    bits_of: Callable[[R], float],
    budget_bits: float,
    lo: int,
    hi: int,
    *,
    bits_increase_with_param: bool,
    tolerance: float = 0.10,
    start: int | None = None,
    max_evals: int = 10,
    log_bits_per_step: float = DEFAULT_LOG_BITS_PER_STEP,
) -> SearchResult[R]:
    """Highest-quality `param` in [lo, hi] whose `bits_of(encode(param))` fits `budget_bits·(1+tolerance)`.

    `start` warm-starts the search (e.g. the previous GOP's choice). Every param is encoded at most
    once; only the results that can still be the answer are kept, so heavy results do not pile up.
    If even the cheapest param is over the budget it is returned with `reached=False`.
    """
    if lo > hi:
        raise ValueError(f"empty parameter range [{lo}, {hi}]")
    if not budget_bits > 0 or not math.isfinite(budget_bits):
        raise ValueError(f"bit budget must be a positive finite number, got {budget_bits}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    search = _Search(encode, bits_of, budget_bits, lo, hi, bits_increase_with_param, tolerance)
    return search.run(start, max(2, max_evals), log_bits_per_step)


class _Search(Generic[R]):
    """State of one search, in "quality units" q (higher q = more bits) so both knob directions share
    one code path: q = param when bits grow with param, q = -param otherwise."""

    def __init__(
        self,
        encode: Callable[[int], R],
        bits_of: Callable[[R], float],
        budget: float,
        lo: int,
        hi: int,
        increasing: bool,
        tolerance: float,
    ) -> None:
        self.encode, self.bits_of, self.budget = encode, bits_of, budget
        self.sign = 1 if increasing else -1
        self.q_min, self.q_max = sorted((self.sign * lo, self.sign * hi))
        self.upper = budget * (1.0 + tolerance)
        self.lower = budget * (1.0 - tolerance)
        self.aim = budget * (1.0 + tolerance / 2)
        self.bits: dict[int, float] = {}  # q -> bits, every evaluation
        self.best_feasible: tuple[int, R] | None = None  # highest q with bits <= upper
        self.cheapest: tuple[int, R] | None = None  # fewest bits seen (the answer if nothing fits)
        self.last_width: int | None = None  # bracket width before the previous step

    # -- evaluation and bookkeeping ------------------------------------------------------------------
    def evaluate(self, q: int) -> float:
        if q in self.bits:
            return self.bits[q]
        result = self.encode(self.sign * q)
        bits = float(self.bits_of(result))
        self.bits[q] = bits
        if bits <= self.upper and (self.best_feasible is None or q > self.best_feasible[0]):
            self.best_feasible = (q, result)
        if self.cheapest is None or bits < self.bits[self.cheapest[0]]:
            self.cheapest = (q, result)
        return bits

    def bracket(self) -> tuple[int | None, int | None]:
        """(a, b): a = highest feasible q seen; b = lowest infeasible q above a (None when unknown)."""
        a = self.best_feasible[0] if self.best_feasible else None
        above = [q for q, bits in self.bits.items() if bits > self.upper and (a is None or q > a)]
        return a, (min(above) if above else None)

    def done(self) -> bool:
        a, b = self.bracket()
        if a is None:  # nothing fits yet: finished only once the cheapest setting was tried
            return self.q_min in self.bits
        return a == self.q_max or (b is not None and b == a + 1)

    # -- the search ------------------------------------------------------------------------------------
    def run(self, start: int | None, max_evals: int, slope_guess: float) -> SearchResult[R]:
        q = self.sign * start if start is not None else (self.q_min + self.q_max) // 2
        q = min(max(q, self.q_min), self.q_max)
        self.evaluate(q)
        while not self.done() and len(self.bits) < max_evals:
            q = self.next_q(slope_guess)
            if q in self.bits:  # nothing new left to try (cannot happen for a consistent bracket)
                break
            self.evaluate(q)
        return self.answer()

    def next_q(self, slope_guess: float) -> int:
        a, b = self.bracket()
        low = self.q_min if a is None else a + 1  # candidates lie strictly inside the bracket
        high = self.q_max if b is None else b - 1
        # The answer is the highest q under the cap, so aim between the budget and the cap.
        target = math.log(self.aim)
        guess = self._secant(a, b, target, slope_guess)
        if self._stalled(a, b):
            guess = (low + high) / 2.0  # bisection keeps the worst case logarithmic
        return self._unseen(round(guess), low, high)

    def _secant(self, a: int | None, b: int | None, target: float, slope_guess: float) -> float:
        """Where log(bits) is predicted to reach `target`, from the two most relevant points."""
        pts = [q for q in (a, b) if q is not None]
        if len(pts) < 2:  # one side only: use the nearest other evaluation, else the slope guess
            others = sorted((q for q in self.bits if q not in pts), key=lambda q: abs(q - pts[0]))
            pts = pts + others[:1]
        if len(pts) == 2 and pts[0] != pts[1]:
            (q0, q1), (y0, y1) = pts, (math.log(max(self.bits[p], 1.0)) for p in pts)
            slope = (y1 - y0) / (q1 - q0)
            if slope > 1e-6:
                return q0 + (target - y0) / slope
        q0 = pts[0]
        return q0 + (target - math.log(max(self.bits[q0], 1.0))) / slope_guess

    def _stalled(self, a: int | None, b: int | None) -> bool:
        """A secant step that failed to halve a closed bracket last time gets a bisection instead."""
        if a is None or b is None:
            return False
        width, previous = b - a, self.last_width
        self.last_width = width
        return previous is not None and width > previous / 2

    def _unseen(self, q: int, low: int, high: int) -> int:
        """`q` clamped into [low, high], moved to the nearest value not evaluated yet."""
        q = min(max(q, low), high)
        for offset in range(high - low + 1):
            for candidate in (q + offset, q - offset):
                if low <= candidate <= high and candidate not in self.bits:
                    return candidate
        return q  # every candidate was seen: `done()` will be true after this (cached) evaluation

    def answer(self) -> SearchResult[R]:
        evaluations = len(self.bits)
        if self.best_feasible is not None:
            q, result = self.best_feasible
            bits = self.bits[q]
            reached = bits >= self.lower or q == self.q_max
            return SearchResult(self.sign * q, result, bits, reached, evaluations)
        assert self.cheapest is not None
        q, result = self.cheapest
        return SearchResult(self.sign * q, result, self.bits[q], False, evaluations)
