"""Smoke test of ``python -m experiments.ltl_rates`` (tiny settings on the built-in digits)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from experiments import ltl_claims, ltl_rates
from experiments.protocol import check_plan
from tests.experiment_helpers import check_outputs, run_experiment

MODULE = "experiments.ltl_rates"


@pytest.mark.slow
def test_smoke_outputs(tmp_path):
    results = run_experiment(MODULE, tmp_path)
    check_outputs(tmp_path, results, MODULE)
    arms = results["arms"]
    assert set(arms) == {"digits/ann-teacher", "digits/ltl-offline", "digits/ltl-online",
                         "digits/ltl-offline-tuned", "digits/ltl-online-tuned", "digits/bptt"}
    bptt = arms["digits/bptt"]
    assert bptt["lr_source"] == "tuned" and bptt["lr_grid"] == ltl_rates.SMOKE_GRID
    for mode in ltl_rates.MODES:
        published, tuned = arms[f"digits/ltl-{mode}"], arms[f"digits/ltl-{mode}-tuned"]
        assert published["lr"] == 1e-4 and published["lr_reason"] == "published"
        assert tuned["lr_source"] == "tuned" and tuned["lr_grid"] == ltl_rates.SMOKE_GRID
        chosen = arms["digits/ann-teacher"]["lr"]
        for run in tuned["tuning_runs"]:  # from the teacher's tuning run at its chosen rate
            assert run["depends"]["ltl.teacher_checkpoint"] == \
                f"runs/digits/ann-teacher/tune/lr{chosen:g}/seed{run['seed']}/last.pt"
        for run in tuned["runs"]:  # seed s learns from the teacher of seed s, as the published arm
            config = (tmp_path / run["run_dir"] / "config.yaml").read_text()
            assert f"mode: {mode}" in config and "height: 1.0" in config
            assert run["depends"]["ltl.teacher_checkpoint"] == \
                f"runs/digits/ann-teacher/final/seed{run['seed']}/last.pt"
    pairs = {(c["a"], c["b"]) for c in results["comparisons"]}
    assert ("digits/ltl-offline-tuned", "digits/ltl-offline") in pairs
    assert ("digits/ltl-online-tuned", "digits/ann-teacher") in pairs
    assert ("digits/ltl-offline-tuned", "digits/bptt") in pairs
    assert ("digits/bptt", "digits/ann-teacher") in pairs
    claims = {c["claim"] for c in results["claims"]}
    assert claims == {
        "digits: offline LTL at its tuned rate is within 1 point of its teacher after 5 epochs",
        "digits: offline LTL at its tuned rate is more accurate than at the published 1e-4",
        "digits: online LTL at its tuned rate is within 1 point of its teacher after 5 epochs",
        "digits: online LTL at its tuned rate is more accurate than at the published 1e-4",
        "digits: offline LTL is more accurate than BPTT at equal epochs, both at their tuned rates",
        "digits: online LTL is more accurate than BPTT at equal epochs, both at their tuned rates",
    }


@pytest.mark.parametrize("scale", ["small", "medium", "large"])
def test_the_tuned_students_differ_from_the_published_ones_only_in_their_rate(scale):
    args = argparse.Namespace(smoke=False, scale=scale, dataset=None)
    experiment = ltl_rates.build(args)
    assert check_plan(experiment.plan(), smoke=False) == []
    claims_arms = {a.name: a for a in ltl_claims.build(args).arms}
    bptt = experiment.arm("mnist/bptt")  # ltl_claims' BPTT arm, tuned on the students' grid
    assert bptt == dataclasses.replace(claims_arms["mnist/bptt"], lr_grid=bptt.lr_grid, note=bptt.note)
    assert bptt.lr is None and bptt.lr_grid == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    for mode in ltl_rates.MODES:
        published, tuned = experiment.arm(f"mnist/ltl-{mode}"), experiment.arm(f"mnist/ltl-{mode}-tuned")
        assert published == claims_arms[f"mnist/ltl-{mode}"]  # the same arm as in ltl_claims
        assert (tuned.overrides, tuned.depends, tuned.epochs, tuned.data) == \
            (published.overrides, published.depends, published.epochs, published.data)
        assert tuned.lr is None and tuned.lr_grid == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    assert "bptt_grid" not in experiment.settings and experiment.settings["tuned_grid"] == bptt.lr_grid
