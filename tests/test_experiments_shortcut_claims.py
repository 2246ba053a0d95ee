"""Smoke test of ``python -m experiments.shortcut_claims`` (tiny settings on the built-in digits)."""

from __future__ import annotations

import argparse

import pytest

from experiments import shortcut_claims
from experiments.protocol import check_plan
from spikegrad.errors import UserError
from tests.experiment_helpers import check_outputs, run_experiment

MODULE = "experiments.shortcut_claims"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcut_claims")
    return out, run_experiment(MODULE, out, "--models", "plain16")


@pytest.mark.slow
def test_smoke_outputs(smoke):
    out, results = smoke
    check_outputs(out, results, MODULE)
    labels = {a["label"] for a in results["arms"].values()}
    assert labels == {"vanilla", "vanilla-long", "shortcut", "evolutionary", "evolutionary-long",
                      "evolutionary-shallow", "evolutionary-deep"}
    arms = results["arms"]
    for short in ("vanilla", "evolutionary"):
        long = arms[f"plain16/{short}-long"]
        assert long["epochs"] == 2 * arms[f"plain16/{short}"]["epochs"]
        assert long["lr"] == arms[f"plain16/{short}"]["lr"] and long["lr_source"] == f"from plain16/{short}"
    config = (out / arms["plain16/evolutionary-long"]["runs"][0]["run_dir"] / "config.yaml").read_text()
    assert "schedule: linear" in config and "lambda0: 0.25" in config  # λ decays over all its epochs
    assert arms["plain16/evolutionary-shallow"]["overrides"]["shortcut.attach"] == ["features.conv4"]
    assert arms["plain16/evolutionary-deep"]["overrides"]["shortcut.attach"] == ["features.conv12"]
    # the surrogate check ran first and its choice is used by every arm
    check = results["prepared"]["surrogate_check"]
    assert set(check["table"]) == set(shortcut_claims.SURROGATES)
    chosen = shortcut_claims.SURROGATES[check["chosen"]]
    assert all(a["overrides"]["model.surrogate"] == chosen for a in arms.values())
    assert (out / "runs" / "check" / "plain16" / f"vanilla-{check['chosen']}").is_dir()
    config = (out / arms["plain16/shortcut"]["runs"][0]["run_dir"] / "config.yaml").read_text()
    assert "schedule: constant" in config and "lambda0: 1.0" in config
    assert any("λ = 1" in c["claim"] for c in results["claims"])


def test_default_scales_satisfy_the_protocol():
    for scale in ("small", "large"):
        experiment = shortcut_claims.build(argparse.Namespace(smoke=False, scale=scale, dataset=None,
                                                              models=None, surrogate=None, ablate=None))
        assert check_plan(experiment.plan(), smoke=False) == []
        names = {a.name for a in experiment.arms}
        assert {"plain16/vanilla", "resnet34/vanilla", "resnet34/evolutionary", "plain16/evolutionary-deep",
                "plain16/vanilla-long"} <= names
        assert experiment.prepare is not None  # the surrogate check runs before the arms
    large = shortcut_claims.build(argparse.Namespace(smoke=False, scale="large", dataset=None, models=None,
                                                     surrogate="atan-2", ablate=None))
    assert "resnet34/evolutionary-shallow" in {a.name for a in large.arms} and large.prepare is None
    assert all(a.overrides["model.surrogate"] == shortcut_claims.SURROGATES["atan-2"] for a in large.arms)


def test_epochs_override_keeps_vanilla_long_twice_vanilla():
    from experiments.runner import add_common_arguments, apply_common, epochs_note

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    args = parser.parse_args(["--out", "unused", "--epochs", "12", "--arms", "plain16/vanilla-long"])
    experiment = shortcut_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None,
                                                          models=None, surrogate=None, ablate=None))
    apply_common(experiment, args)
    # vanilla comes along: vanilla-long takes its rate and its epochs from it
    assert {a.name: a.epochs for a in experiment.arms} == {"plain16/vanilla": 12, "plain16/vanilla-long": 24}
    assert epochs_note(experiment.arms) == "Epochs: 12 (plain16/vanilla-long 24)."
    assert check_plan(experiment.plan(), smoke=False) == []


def test_ablate_adds_the_attach_point_arms_to_the_named_network_only():
    def build(models, ablate):
        return shortcut_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None,
                                                        models=models, surrogate="sigmoid-2", ablate=ablate))

    default = {a.name for a in build(None, None).arms}
    assert "plain16/evolutionary-deep" in default and "resnet34/evolutionary-deep" not in default
    experiment = build(["resnet34"], ["resnet34"])
    shallow = experiment.arm("resnet34/evolutionary-shallow")
    deep = experiment.arm("resnet34/evolutionary-deep")
    assert shallow.overrides["shortcut.attach"] == ["features.layer1_2"]
    assert deep.overrides["shortcut.attach"] == ["features.layer3_5"]
    assert {(c.a, c.b) for c in experiment.comparisons} >= {
        ("resnet34/evolutionary-shallow", "resnet34/evolutionary"),
        ("resnet34/evolutionary-deep", "resnet34/evolutionary")}
    assert experiment.settings["ablate"] == ["resnet34"]
    assert check_plan(experiment.plan(), smoke=False) == []
    with pytest.raises(UserError, match=r"--ablate resnet34: not among the networks .*add it to --models"):
        build(["plain16"], ["resnet34"])
