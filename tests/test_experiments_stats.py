"""The experiments' statistics: Student's t without SciPy, intervals and the paired t-test."""

from __future__ import annotations

import math

import pytest

from experiments.stats import betainc, describe, paired_t_test, t_cdf, t_ppf, t_sf


@pytest.mark.parametrize("x", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_betainc_closed_forms(x):
    assert betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-14)
    assert betainc(3.0, 1.0, x) == pytest.approx(x ** 3, abs=1e-14)  # I_x(a, 1) = x^a
    assert betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-14)  # I_x(1, b)


def test_betainc_symmetry_and_bounds():
    for a, b, x in [(0.5, 0.5, 0.2), (2.0, 7.0, 0.6), (30.0, 0.5, 0.97)]:
        assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-13)
    with pytest.raises(ValueError):
        betainc(0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        betainc(1.0, 1.0, 1.5)


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 100.0])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t²))
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    assert t_cdf(t, 5) + t_sf(t, 5) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("p", [0.001, 0.05, 0.3, 0.5, 0.8, 0.975, 0.9995])
def test_t_ppf_inverts_the_closed_form(p):
    # df = 2: t = (2p - 1) / sqrt(2 p (1 - p))
    assert t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10, abs=1e-12)
    assert t_cdf(t_ppf(p, 7), 7) == pytest.approx(p, abs=1e-12)


def test_t_quantiles_of_the_printed_table():
    # two-sided 95% critical values from any t table
    for df, value in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_ppf(0.975, df) == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)


def test_describe_by_hand():
    # values 1, 2, 3, 4, 5: mean 3, sample variance 10/4, sem sqrt(2.5/5); t_0.975,4 = 2.776445
    out = describe([1, 2, 3, 4, 5])
    assert out["mean"] == 3.0
    assert out["std"] == pytest.approx(math.sqrt(2.5))
    half = 2.7764451051977987 * math.sqrt(0.5)
    assert out["ci"] == pytest.approx([3 - half, 3 + half], abs=1e-9)
    single = describe([0.7])
    assert single["mean"] == 0.7 and single["std"] is None and single["ci"] is None
    assert describe([])["mean"] is None


def test_paired_t_test_by_hand():
    a = [0.91, 0.92, 0.90, 0.95, 0.93]
    b = [0.90, 0.90, 0.91, 0.92, 0.90]
    # d = .01 .02 -.01 .03 .03; mean .016, sample std sqrt(0.00028) ... t = mean / (s/sqrt(5))
    out = paired_t_test(a, b)
    d = [0.01, 0.02, -0.01, 0.03, 0.03]
    mean = sum(d) / 5
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    assert out["diffs"] == pytest.approx(d)
    assert out["mean_diff"] == pytest.approx(0.016)
    assert out["t"] == pytest.approx(mean / (s / math.sqrt(5)))
    assert out["df"] == 4
    assert out["p"] == pytest.approx(2 * t_sf(out["t"], 4))
    assert 0.09 < out["p"] < 0.11  # t = 2.138 on 4 degrees of freedom


def test_paired_t_test_degenerate_and_errors():
    same = paired_t_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference is 0.1
    assert same["degenerate"] and same["p"] == 0.0 and math.isinf(same["t"])
    zero = paired_t_test([0.5, 0.6], [0.5, 0.6])
    assert zero["p"] == 1.0 and zero["t"] == 0.0
    one = paired_t_test([0.5], [0.4])
    assert one["p"] is None and one["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_t_test([1, 2], [1])


def test_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (1, 2, 3, 4.5, 9, 29, 250):
        for t in (-8.0, -2.1, -0.01, 0.0, 0.4, 1.96, 3.3, 40.0):
            assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)
        for p in (1e-4, 0.025, 0.2, 0.5, 0.9, 0.975, 0.99999):
            assert t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
    for a, b, x in [(0.5, 0.5, 0.3), (2, 3, 0.9), (100, 0.5, 0.99), (0.1, 10, 1e-5), (50, 50, 0.5)]:
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-13)
    a = [0.812, 0.797, 0.845, 0.801, 0.822, 0.790]
    b = [0.801, 0.805, 0.829, 0.780, 0.815, 0.771]
    ours, theirs = paired_t_test(a, b), scipy_stats.ttest_rel(a, b)
    assert ours["t"] == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours["p"] == pytest.approx(theirs.pvalue, rel=1e-9)
    interval = scipy_stats.t.interval(0.95, len(a) - 1, loc=sum(a) / len(a), scale=scipy_stats.sem(a))
    assert describe(a)["ci"] == pytest.approx(list(interval), rel=1e-10)
