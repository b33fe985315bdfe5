"""The codec-independent rate search, on synthetic monotone (and slightly bumpy) bit curves."""

from __future__ import annotations

import math

import pytest

from codec.ratecontrol import search_rate


class CountingEncoder:
    """bits(param) from a formula; records every param it was asked to encode."""

    def __init__(self, bits_for):
        self.bits_for = bits_for
        self.calls: list[int] = []

    def __call__(self, param: int) -> tuple[int, float]:
        self.calls.append(param)
        return param, float(self.bits_for(param))


def crf_like(param: int) -> float:
    """Bits halve every 6 steps, like x264's CRF."""
    return 200_000.0 * 2.0 ** (-param / 6.0)


def qindex_like(param: int) -> float:
    """Bits grow with the index, faster than exponential at the top (a learned codec's q scales)."""
    return 1_000.0 * math.exp(0.09 * param + 0.0007 * param**2)


def _bits(result: tuple[int, float]) -> float:
    return result[1]


def _best_feasible(bits_for, budget, lo, hi, increasing, tol=0.10) -> int:
    fits = [p for p in range(lo, hi + 1) if bits_for(p) <= budget * (1 + tol)]
    return max(fits) if increasing else min(fits)


@pytest.mark.parametrize("budget", [3_000.0, 11_000.0, 47_000.0, 150_000.0])
def test_decreasing_knob_finds_the_best_feasible_crf(budget: float) -> None:
    enc = CountingEncoder(crf_like)
    res = search_rate(enc, _bits, budget, 0, 51, bits_increase_with_param=False)
    assert res.param == _best_feasible(crf_like, budget, 0, 51, increasing=False)
    assert res.reached and abs(res.bits - budget) <= 0.10 * budget
    assert res.result == (res.param, res.bits)
    assert res.evaluations == len(enc.calls) == len(set(enc.calls))  # every param encoded once
    assert res.evaluations <= 6


@pytest.mark.parametrize("budget", [2_000.0, 9_000.0, 60_000.0])
def test_increasing_knob_finds_the_best_feasible_index(budget: float) -> None:
    enc = CountingEncoder(qindex_like)
    res = search_rate(enc, _bits, budget, 0, 63, bits_increase_with_param=True)
    assert res.param == _best_feasible(qindex_like, budget, 0, 63, increasing=True)
    assert res.bits <= budget * 1.10 and res.reached
    assert res.evaluations <= 7


def test_warm_start_at_the_answer_needs_only_its_neighbour() -> None:
    budget = crf_like(30) * 1.02
    enc = CountingEncoder(crf_like)
    res = search_rate(enc, _bits, budget, 0, 51, bits_increase_with_param=False, start=30)
    assert res.param == 30 and res.reached
    assert enc.calls == [30, 29]  # 29 is over budget·1.1, so 30 is the highest quality that fits


def test_unreachable_budget_returns_the_cheapest_setting_unreached() -> None:
    enc = CountingEncoder(crf_like)
    budget = crf_like(51) / 3
    res = search_rate(enc, _bits, budget, 0, 51, bits_increase_with_param=False, start=20)
    assert res.param == 51 and not res.reached
    assert res.bits == crf_like(51)


def test_budget_above_top_quality_is_reached_at_the_top() -> None:
    enc = CountingEncoder(crf_like)
    res = search_rate(enc, _bits, crf_like(0) * 5, 0, 51, bits_increase_with_param=False)
    assert res.param == 0 and res.reached  # the content needs less than asked: not a miss


def test_tolerance_bounds_the_accepted_overshoot() -> None:
    # bits jump by 30% per step: no setting lies within ±5%, so the answer must stay under the cap.
    def coarse(param: int) -> float:
        return 100_000.0 * 1.3 ** (-param)

    budget = coarse(10) * 1.15  # between two settings
    res = search_rate(
        CountingEncoder(coarse), _bits, budget, 0, 40, bits_increase_with_param=False, tolerance=0.05
    )
    assert res.param == 10 and res.bits <= budget * 1.05
    assert not res.reached  # 13% under the budget is outside ±5%
    loose = search_rate(
        CountingEncoder(coarse), _bits, budget, 0, 40, bits_increase_with_param=False, tolerance=0.2
    )
    assert loose.param == 9 and loose.reached  # 13% over is inside ±20%, and better quality


def test_small_non_monotonic_bumps_do_not_break_the_search() -> None:
    def bumpy(param: int) -> float:
        return crf_like(param) * (1.06 if param % 2 else 0.97)

    for budget in (5_000.0, 20_000.0, 80_000.0):
        res = search_rate(CountingEncoder(bumpy), _bits, budget, 0, 51, bits_increase_with_param=False)
        assert res.bits <= budget * 1.10
        assert res.reached
        assert bumpy(res.param - 1) > budget * 1.10  # its better neighbour does not fit


def test_max_evals_caps_the_work_and_still_returns_a_fitting_result() -> None:
    enc = CountingEncoder(crf_like)
    res = search_rate(enc, _bits, 10_000.0, 0, 51, bits_increase_with_param=False, start=0, max_evals=3)
    assert len(enc.calls) == 3 == res.evaluations
    assert res.bits <= 11_000.0 or not res.reached


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        search_rate(CountingEncoder(crf_like), _bits, 0.0, 0, 51, bits_increase_with_param=False)
    with pytest.raises(ValueError, match="range"):
        search_rate(CountingEncoder(crf_like), _bits, 1e4, 10, 5, bits_increase_with_param=False)
