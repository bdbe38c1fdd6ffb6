"""TFB's one-dimensional search: the largest sigma in [lo, hi] whose degradation d(sigma) stays <= tol.

Each d(sigma) is a full anchor-set evaluation with N weight samples, so the number of evaluations is the
cost. Both searches end with a bracket [ok, bad], d(ok) <= tol < d(bad) (or ok = hi when d(hi) <= tol), of
width at most (hi - lo) / 2^iterations, and return ok, which always satisfies the constraint.

- `bisect`: the reference schedule — d(hi), d(lo), then `iterations` midpoints (iterations + 2 evaluations).
- `interpolate` (default): the same guarantee in fewer evaluations. The noise draws are fixed across sigma
  (common random numbers), so d is a smooth function; for symmetric weight noise its leading term is
  quadratic in sigma. The root is estimated in log-log space (from d(hi) alone at first: sigma ~
  hi sqrt(tol / d(hi))), and the two points root -/+ half the target width are evaluated: when the
  estimate is good, that closes the bracket (3-5 evaluations in all on smooth curves, instead of
  iterations + 2). After two such rounds (or when an estimate leaves the bracket) it bisects, so a step-like
  d (the flip criterion) costs about what bisection does. d(lo) is only evaluated if no tried sigma
  satisfies the constraint.
"""
from __future__ import annotations

import math
from typing import Callable

SEARCHES = ("interpolate", "bisect")


class SigmaSearchError(RuntimeError):
    pass


def _fail(lo: float, d_lo: float, tol: float):
    raise SigmaSearchError(f"tfb: even sigma_min={lo} degrades the anchor set by {d_lo:.4g} > epsilon={tol}; "
                           "lower sigma_min or raise epsilon")


def bisect(d: Callable[[float], float], lo: float, hi: float, tol: float, iterations: int) -> float:
    if d(hi) <= tol:
        return hi
    d_lo = d(lo) if lo > 0 else 0.0
    if d_lo > tol:
        _fail(lo, d_lo, tol)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) <= tol else (lo, mid)
    return lo


def _estimate(ok: tuple | None, bad: tuple, tol: float) -> float:
    """Root of log d linear in log sigma through the bracket ends (quadratic through `bad` if `ok` is unusable)."""
    (sb, db) = bad
    if ok is not None and ok[0] > 0 and 0 < ok[1] < db:
        (so, do) = ok
        slope = (math.log(db) - math.log(do)) / (math.log(sb) - math.log(so))
        return math.exp(math.log(so) + (math.log(tol) - math.log(do)) / slope)
    return sb * math.sqrt(tol / db)


def interpolate(d: Callable[[float], float], lo: float, hi: float, tol: float, iterations: int) -> float:
    width = (hi - lo) / 2 ** iterations
    d_hi = d(hi)
    if d_hi <= tol:
        return hi
    ok, bad = None, (hi, d_hi)              # ok stays None while lo is unverified
    left = lo
    for rnd in range(iterations + 2):       # each round shrinks the bracket; the cap only guards round-off
        a = ok[0] if ok else left
        if bad[0] - a <= width:
            break
        guess = _estimate(ok, bad, tol) if rnd < 2 else None  # two estimated rounds, then plain midpoints
        if guess is None or not a < guess < bad[0]:
            probes = [(a + bad[0]) / 2]
        else:
            probes = [max(a + width / 4, guess - width / 2), min(bad[0] - width / 4, guess + width / 2)]
        for x in probes:
            if not a < x < bad[0]:
                continue
            dx = d(x)
            if dx <= tol:
                ok, a = (x, dx), x
            else:
                bad = (x, dx)
                break
    if ok is None:  # every tried sigma failed: the answer is lo, if lo itself passes
        d_lo = d(lo) if lo > 0 else 0.0
        if d_lo > tol:
            _fail(lo, d_lo, tol)
        return lo
    return ok[0]


def search(mode: str, d, lo: float, hi: float, tol: float, iterations: int) -> float:
    return {"interpolate": interpolate, "bisect": bisect}[mode](d, lo, hi, tol, iterations)
