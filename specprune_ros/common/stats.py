"""Small statistics for paired closed-loop comparisons (no SciPy needed at run time)."""
from __future__ import annotations

import math

import numpy as np


def exact_mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against Binomial(n, 1/2).

    ``a_only`` / ``b_only``: seeds only one of two methods solved. Concordant seeds carry no
    information on which is better, so only the discordant ones enter (an exact sign test).
    """
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def interpolate_curve(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of a curve (xs ascending) at x; None outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))
