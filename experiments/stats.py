"""Statistics of an experiment's seeds without SciPy: Student's t distribution, intervals, paired tests.

Everything here works on plain Python floats so that the experiments need nothing beyond
spikegrad's own dependencies; the tests compare each function with SciPy where it is
installed and with closed forms where they exist.

- :func:`betainc`: the regularized incomplete beta function ``I_x(a, b)``, from its continued
  fraction (evaluated with the modified Lentz method) and the symmetry
  ``I_x(a, b) = 1 - I_(1-x)(b, a)``.
- :func:`t_cdf`: ``P(T <= t)`` for Student's t with ``df`` degrees of freedom,
  ``1 - I_(df/(df+t²))(df/2, 1/2) / 2`` for ``t >= 0`` and symmetric below.
- :func:`t_ppf`: its inverse (bisection to machine precision).
- :func:`describe`: mean, sample standard deviation and the ``confidence`` t-interval of the
  mean, ``mean ± t_((1+c)/2, n-1) · s / √n``.
- :func:`paired_t_test`: the per-seed differences ``d_s = a_s - b_s``, their mean, interval and
  the two-sided p-value of ``t = mean(d) / (s_d / √n)`` with ``n - 1`` degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["betainc", "describe", "paired_t_test", "t_cdf", "t_ppf", "t_sf"]

_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """``1 + d1/(1 + d2/(1 + ...))`` of ``I_x(a, b)`` by the modified Lentz method, with
    ``d_(2m+1) = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1))`` and ``d_(2m) = m(b-m)x / ((a+2m-1)(a+2m))``."""
    value, c, d = 1.0, 1.0, 0.0
    for j in range(1, 10_000):
        m = j // 2
        if j % 2:  # odd term, d_(2m+1)
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + coef / c
        c = c if abs(c) > _TINY else _TINY
        delta = c * d
        value *= delta
        if abs(delta - 1.0) < _EPS:
            return value
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b) = B(x; a, b) / B(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = (a * math.log(x) + b * math.log1p(-x)
                 - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    return math.exp(log_front) / a / _beta_continued_fraction(x, a, b)


def t_sf(t: float, df: float) -> float:
    """Upper tail ``P(T > t)`` of Student's t with ``df > 0`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` of Student's t with ``df > 0`` degrees of freedom."""
    return 1.0 - t_sf(t, df) if t >= 0 else t_sf(-t, df)


def t_ppf(p: float, df: float) -> float:
    """The quantile ``t`` with ``P(T <= t) = p`` (``0 < p < 1``), by bisection."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    target = 1.0 - p  # find t > 0 with t_sf(t) = target (t_sf decreases)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``n``, ``mean``, sample ``std`` (n-1), ``sem`` and the t-interval ``ci`` of the mean.

    With one value the spread and the interval are None (undefined), not 0.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "values": xs, "mean": None, "std": None, "sem": None,
                           "ci": None, "confidence": confidence}
    if n == 0:
        return out
    mean = math.fsum(xs) / n
    out["mean"] = mean
    if n < 2:
        return out
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    sem = std / math.sqrt(n)
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * sem
    out.update(std=std, sem=sem, ci=[mean - half, mean + half], t_crit=half / sem if sem else None)
    return out


def paired_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test of ``a - b`` (same seeds, same order): differences, interval, ``t``, p.

    The p-value is two-sided. When every difference is the same, ``t`` is ±inf with p = 0
    (or 0 with p = 1 when they are all zero): the test is degenerate and says so.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    summary = describe(diffs, confidence)
    out: dict[str, Any] = {"n": len(diffs), "diffs": diffs, "mean_diff": summary["mean"],
                           "std_diff": summary["std"], "ci": summary["ci"], "t": None, "df": None,
                           "p": None, "degenerate": False, "confidence": confidence}
    if len(diffs) < 2:
        return out
    df = len(diffs) - 1
    mean, sem = summary["mean"], summary["sem"]
    if sem == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        out.update(t=t, df=df, p=1.0 if mean == 0.0 else 0.0, degenerate=True)
        return out
    t = mean / sem
    out.update(t=t, df=df, p=min(1.0, 2.0 * t_sf(abs(t), df)))
    return out
