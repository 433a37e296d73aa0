"""Paired statistics of the closed-loop evaluation (sim/stats.py)."""
import math

import pytest

from specprune_ros.common.stats import exact_mcnemar, interpolate_curve


def test_exact_mcnemar_is_the_two_sided_binomial_sign_test():
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(3, 3) == 1.0
    assert exact_mcnemar(0, 5) == pytest.approx(2 / 32)
    assert exact_mcnemar(2, 10) == exact_mcnemar(10, 2) == pytest.approx(2 * sum(math.comb(12, i) for i in range(3))
                                                                          / 4096)


def test_interpolation_stays_inside_the_curve():
    assert interpolate_curve([0.2, 0.4], [0.5, 0.9], 0.3) == pytest.approx(0.7)
    assert interpolate_curve([0.2, 0.4], [0.5, 0.9], 0.4) == pytest.approx(0.9)
    assert interpolate_curve([0.2, 0.4], [0.5, 0.9], 0.1) is None
    assert interpolate_curve([0.2, 0.4], [0.5, 0.9], 0.5) is None
