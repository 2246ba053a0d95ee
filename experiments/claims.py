"""Verdicts on a paper's claim from an experiment's paired comparisons.

A verdict reads the 95% t-interval of the paired difference of final accuracies
(``results["comparisons"]``):

- ``better(a, b)``: *holds* when the interval of ``a - b`` lies above 0, *fails* when it lies
  below 0 (``b`` is better), otherwise *not shown* (the difference is within the seed noise);
- ``within(a, b, points)``: "``a`` is within ``points`` of ``b``": *holds* when the interval of
  ``b - a`` lies below ``points`` (points as fractions, 0.01 = 1 point), *fails* when it lies
  above, otherwise *not shown*.

A verdict on runs that had not plateaued says so; a smoke run's verdicts are marked SMOKE.

Each verdict tests its claim alone. An experiment tests several claims at once, and with k of
them one passes at 95% by chance far more often than 1 time in 20: :func:`family` adds beside
each verdict the one its claim gets when all k are tested together, from Bonferroni intervals
(confidence 1 - 0.05/k each, so that all k intervals hold together with at least 95%).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from experiments.stats import describe

__all__ = ["better", "comparison", "family", "within"]


def comparison(results: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """The stored comparison ``a - b`` (or ``b - a`` with the signs flipped), None if absent."""
    for c in results["comparisons"]:
        if (c["a"], c["b"]) == (a, b):
            return c["final"]
        if (c["a"], c["b"]) == (b, a):
            test = dict(c["final"])
            test["diffs"] = [-d for d in test["diffs"]]
            test["mean_diff"] = None if test["mean_diff"] is None else -test["mean_diff"]
            test["ci"] = None if test["ci"] is None else [-test["ci"][1], -test["ci"][0]]
            test["t"] = None if test["t"] is None else -test["t"]
            return test
    return None


def _qualify(results: dict[str, Any], verdict: str, arms: tuple[str, ...]) -> str:
    unconverged = [results["arms"][n]["label"] for n in arms
                   if results["arms"][n]["converged"] < results["arms"][n]["runs_total"]]
    if unconverged:
        verdict += f" (not converged: {', '.join(unconverged)})"
    if results["smoke"]:
        verdict = "SMOKE: " + verdict
    return verdict


def _evidence(test: dict[str, Any], a_label: str, b_label: str) -> str:
    ci = test["ci"]
    text = f"{a_label} − {b_label}: {100 * test['mean_diff']:+.2f} points"
    if ci is not None:
        text += f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"
    if test["p"] is not None:
        text += f", p = {test['p']:.3g}"
    return text + f", n = {test['n']}"


def _better(lo: float, hi: float, margin: float) -> str:
    return "holds" if lo > margin else "fails" if hi < margin else "not shown"


def _within(lo: float, hi: float, margin: float) -> str:
    return "holds" if hi < margin else "fails" if lo > margin else "not shown"


#: how each kind of claim reads the interval of its difference against its margin
RULES: dict[str, Callable[[float, float, float], str]] = {"better": _better, "within": _within}


def _judge(results: dict[str, Any], claim: str, a: str, b: str, test: dict[str, Any] | None,
           first: str, kind: str, margin: float) -> dict[str, Any]:
    """The verdict of rule ``kind`` on the interval of ``test`` (``first`` − the other arm)."""
    if test is None or test["mean_diff"] is None or test["ci"] is None:
        return {"claim": claim, "verdict": _qualify(results, "not testable (too few paired seeds)", (a, b)),
                "evidence": "-", "a": a, "b": b}
    second = b if first == a else a
    evidence = _evidence(test, results["arms"][first]["label"], results["arms"][second]["label"])
    return {"claim": claim, "verdict": _qualify(results, RULES[kind](*test["ci"], margin), (a, b)),
            "evidence": evidence, "a": a, "b": b, "kind": kind, "margin": margin,
            "diffs": list(test["diffs"])}


def better(results: dict[str, Any], a: str, b: str, claim: str) -> dict[str, Any]:
    """Verdict on "``a`` is more accurate than ``b``" (final accuracy, paired seeds)."""
    return _judge(results, claim, a, b, comparison(results, a, b), a, "better", 0.0)


def within(results: dict[str, Any], a: str, b: str, points: float, claim: str) -> dict[str, Any]:
    """Verdict on "``a`` is within ``points`` (a fraction) of ``b``", i.e. ``b - a < points``."""
    return _judge(results, claim, a, b, comparison(results, b, a), b, "within", points)


def family(claims: list[dict[str, Any]], confidence: float = 0.95,
           smoke: bool = False) -> list[dict[str, Any]]:
    """``claims`` with each testable one's verdict when all k testable claims are tested
    together: ``family_verdict`` from the Bonferroni interval ``family_ci`` of its paired
    differences at confidence ``1 - (1 - confidence) / k`` (``family_confidence``), read by
    the claim's own rule. With one claim it is the claim's own verdict. ``smoke``: marked
    SMOKE, as a smoke run's every verdict is."""
    testable = [c for c in claims if c.get("diffs")]
    k = len(testable)
    if not k:
        return claims
    level = 1.0 - (1.0 - confidence) / k
    for claim in testable:
        ci = describe(claim["diffs"], level)["ci"]
        if ci is None or not all(math.isfinite(x) for x in ci):
            continue
        verdict = RULES[claim["kind"]](*ci, claim["margin"])
        claim.update(family_size=k, family_base=confidence, family_confidence=level, family_ci=ci,
                     family_verdict=f"SMOKE: {verdict}" if smoke else verdict)
    return claims
