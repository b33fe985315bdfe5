"""Bjøntegaard delta rate and delta quality between two rate–quality curves.

Follows the current standard practice (ITU-T VCEG-M33 as revised in JCTVC-L0242 / the `bjontegaard`
reference scripts): interpolate each curve with a monotone piecewise cubic (PCHIP) in the log10 of the
rate, integrate both over the quality (resp. log-rate) range they share, and turn the mean gap into a
percentage. The original cubic-polynomial fit is not used: it overshoots with four points and can
invert the sign of small differences. Negative BD-rate = B needs fewer bits than A for equal quality.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator


class BdRateError(ValueError):
    """The curves cannot be compared (too few points, no overlap); the message says which."""


def _curve(rates: np.ndarray, quality: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    rates = np.asarray(rates, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    keep = np.isfinite(rates) & np.isfinite(quality) & (rates > 0)
    rates, quality = rates[keep], quality[keep]
    if rates.size < 2:
        raise BdRateError(f"BD-rate needs at least 2 rate points per curve; {name} has {rates.size}")
    order = np.argsort(rates)
    return np.log10(rates[order]), quality[order]


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray, what: str) -> float:
    """Mean of (y_b - y_a) over the shared x range, both interpolated with PCHIP (x strictly increasing)."""
    for x, name in ((x_a, "A"), (x_b, "B")):
        if np.any(np.diff(x) <= 0):
            raise BdRateError(f"curve {name} repeats a {what} value; BD needs distinct points")
    low, high = max(x_a[0], x_b[0]), min(x_a[-1], x_b[-1])
    if not high > low:
        raise BdRateError(f"the two curves share no {what} range")
    integral_a = PchipInterpolator(x_a, y_a).integrate(low, high)
    integral_b = PchipInterpolator(x_b, y_b).integrate(low, high)
    return float((integral_b - integral_a) / (high - low))


def bd_rate(rates_a, quality_a, rates_b, quality_b) -> float:
    """Average rate difference of B against A at equal quality, in percent (-20.0 = 20 % fewer bits)."""
    log_a, q_a = _curve(rates_a, quality_a, "A")
    log_b, q_b = _curve(rates_b, quality_b, "B")
    order_a, order_b = np.argsort(q_a), np.argsort(q_b)
    gap = _mean_gap(q_a[order_a], log_a[order_a], q_b[order_b], log_b[order_b], "quality")
    return float((10.0**gap - 1.0) * 100.0)


def bd_quality(rates_a, quality_a, rates_b, quality_b) -> float:
    """Average quality difference of B against A at equal rate (e.g. BD-PSNR in dB; >0 = B better)."""
    log_a, q_a = _curve(rates_a, quality_a, "A")
    log_b, q_b = _curve(rates_b, quality_b, "B")
    return _mean_gap(log_a, q_a, log_b, q_b, "rate")
