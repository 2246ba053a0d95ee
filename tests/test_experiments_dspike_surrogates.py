"""Smoke test of ``python -m experiments.dspike_surrogates`` (tiny settings on the built-in digits)."""

from __future__ import annotations

import json

import pytest

from experiments import dspike_surrogates
from experiments.protocol import check_plan
from tests.experiment_helpers import check_outputs, count_trainings, run_experiment

MODULE = "experiments.dspike_surrogates"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dspike_surrogates")
    return out, run_experiment(MODULE, out)


@pytest.mark.slow
def test_smoke_outputs(smoke):
    out, results = smoke
    check_outputs(out, results, MODULE)
    assert set(results["arms"]) == {f"digits/{label}" for label in dspike_surrogates.ARMS}
    adaptive = results["arms"]["digits/dspike-adaptive"]["runs"][0]
    assert "dspike_temperature" in adaptive["curves"]  # the search's trajectory is kept
    assert {c["claim"].split(": ")[1] for c in results["claims"]} == {
        f"adaptive Dspike is more accurate than {other}" for other in ("dspike-b3", "atan", "sigmoid",
                                                                       "rectangle")}
    assert all(c["verdict"].startswith("SMOKE") for c in results["claims"])


@pytest.mark.slow
def test_rerun_trains_only_what_is_unfinished(smoke, monkeypatch):
    out, results = smoke
    calls = count_trainings(monkeypatch)
    again = run_experiment(MODULE, out)
    assert calls == []  # everything was finished
    assert again["arms"]["digits/atan"]["final_acc"] == results["arms"]["digits/atan"]["final_acc"]
    # a run killed before it finished: its summary is missing; only that run trains again
    run_dir = out / results["arms"]["digits/sigmoid"]["runs"][1]["run_dir"]
    (run_dir / "summary.json").unlink()
    (run_dir / "experiment_run.json").unlink()
    again = run_experiment(MODULE, out)
    assert calls == [str(run_dir)]
    assert again["arms"]["digits/sigmoid"]["runs"][1]["curves"] == \
        results["arms"]["digits/sigmoid"]["runs"][1]["curves"]


def test_default_scales_satisfy_the_protocol():
    for scale in ("small", "large"):
        args = _args(scale)
        experiment = dspike_surrogates.build(args)
        assert check_plan(experiment.plan(), smoke=False) == []
        assert {a.data.name for a in experiment.arms} == {"animal_mnist", "mnist"}
        assert len(experiment.arms) == 10 and len(experiment.seeds) >= 5
    # the small scale's MNIST arms chose the grid's top rate in tuning: 0.3 added there only
    grids = {a.name: a.lr_grid for a in dspike_surrogates.build(_args("small")).arms}
    assert grids["mnist/atan"] == [0.003, 0.01, 0.03, 0.1, 0.3]
    assert grids["animal_mnist/atan"] == [0.003, 0.01, 0.03, 0.1]


def test_fewer_seeds_are_refused_without_smoke(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        dspike_surrogates_main(["--out", str(tmp_path / "x"), "--seeds", "0", "1", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "refused: protocol: 3 seeds per arm, the protocol needs at least 5" in err and "--smoke" in err
    assert not (tmp_path / "x" / "results.json").exists()


def dspike_surrogates_main(argv):
    from experiments.runner import main

    return main(MODULE, dspike_surrogates.build, dspike_surrogates.add_arguments, argv=argv)


def test_an_epochs_override_is_what_the_results_describe():
    """``--epochs 100`` on a 40-epoch scale: the notes and settings must say 100, not the scale's 40."""
    import argparse

    from experiments.runner import add_common_arguments, apply_common, epochs_note

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    experiment = apply_common(dspike_surrogates.build(_args("small")),
                              parser.parse_args(["--out", "unused", "--epochs", "100"]))
    assert epochs_note(experiment.arms) == "Epochs: 100 for every arm."
    assert experiment.settings["epochs"] == 100
    assert not [note for note in experiment.notes if "40" in note]


def _args(scale: str):
    import argparse

    return argparse.Namespace(smoke=False, scale=scale, datasets=None)


@pytest.mark.slow
def test_results_json_is_strict_json(smoke):
    out, _ = smoke

    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    json.loads((out / "results.json").read_text(), parse_constant=refuse)
