"""TFB's sigma search: both schedules return a sigma that satisfies the constraint, to the same resolution."""
from __future__ import annotations

import pytest

from methods.tfb.sigma_search import SigmaSearchError, search

LO, HI, TOL, IT = 1e-4, 0.1, 0.003, 8
WIDTH = (HI - LO) / 2 ** IT


def counted(f):
    calls = []

    def d(s):
        calls.append(s)
        return f(s)
    return d, calls


@pytest.mark.parametrize("name,f,root", [
    ("quadratic", lambda s: TOL * (s / 0.0123) ** 2, 0.0123),
    ("quartic+noise-free offset", lambda s: 1e-4 + (s / 0.05) ** 4 * (TOL - 1e-4), 0.05),
    ("step (flip counts)", lambda s: 0.0 if s < 0.037 else 0.02, 0.037),
    ("negative below root", lambda s: -0.001 + (TOL + 0.001) * (s / 0.07) ** 2, 0.07),
])
@pytest.mark.parametrize("mode", ["interpolate", "bisect"])
def test_returns_a_feasible_sigma_within_the_bisection_resolution(mode, name, f, root):
    d, calls = counted(f)
    sigma = search(mode, d, LO, HI, TOL, IT)
    assert f(sigma) <= TOL and root - WIDTH <= sigma <= root
    rejected = [s for s in calls if f(s) > TOL]
    assert min(rejected) - sigma <= WIDTH + 1e-12  # the bracket is closed to the resolution


def test_interpolation_needs_fewer_evaluations_on_a_smooth_curve():
    n = {}
    for mode in ("interpolate", "bisect"):
        d, calls = counted(lambda s: TOL * (s / 0.0123) ** 2.2)
        search(mode, d, LO, HI, TOL, IT)
        n[mode] = len(calls)
    assert n["bisect"] == IT + 2 and n["interpolate"] <= n["bisect"] // 2


@pytest.mark.parametrize("mode", ["interpolate", "bisect"])
def test_whole_range_feasible_or_infeasible(mode):
    assert search(mode, lambda s: 0.0, LO, HI, TOL, IT) == HI
    with pytest.raises(SigmaSearchError, match="sigma_min"):
        search(mode, lambda s: 1.0, LO, HI, TOL, IT)
