"""Smoke test of ``python -m experiments.ltl_claims`` (tiny settings on the built-in digits)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments import ltl_claims
from experiments.protocol import check_plan
from experiments.runner import epochs_note
from spikegrad.errors import UserError
from tests.experiment_helpers import check_outputs, run_experiment

MODULE = "experiments.ltl_claims"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("ltl_claims")
    return out, run_experiment(MODULE, out)


@pytest.mark.slow
def test_smoke_outputs(smoke):
    out, results = smoke
    check_outputs(out, results, MODULE)
    arms = results["arms"]
    assert set(arms) == {"digits/ann-teacher", "digits/ltl-offline", "digits/ltl-online", "digits/bptt"}
    for mode in ("offline", "online"):
        arm = arms[f"digits/ltl-{mode}"]
        assert arm["lr"] == 1e-4 and arm["lr_source"] == "fixed" and arm["lr_reason"] == "published"
        for run in arm["runs"]:  # seed s learns from the teacher of seed s
            teacher = run["depends"]["ltl.teacher_checkpoint"]
            assert teacher == f"runs/digits/ann-teacher/final/seed{run['seed']}/last.pt"
            config = (out / run["run_dir"] / "config.yaml").read_text()
            assert str(out / teacher) in config and f"mode: {mode}" in config
            assert "height: 1.0" in config and "width: 0.4" in config
    assert arms["digits/bptt"]["lr_source"] == "tuned"
    claims = {c["claim"] for c in results["claims"]}
    assert "digits: offline LTL is within 1 point of its teacher after 5 epochs" in claims


@pytest.mark.slow
def test_verify_retrains_a_stored_seed_bit_for_bit(smoke, tmp_path):
    from experiments.runner import verify

    out, _ = smoke
    report = verify(out / "results.json", "digits/ltl-offline", 1, tmp_path, verbose=False)
    assert report["bitwise"] and report["final_acc_diff"] == 0.0
    assert report["first_differing_epoch"] is None
    assert report["rerun"]["machine"]["cpu"] == report["stored"]["machine"]["cpu"]
    assert Path(tmp_path / "verify.json").is_file()


def test_default_scales_satisfy_the_protocol():
    for scale in ("small", "medium", "large"):
        experiment = ltl_claims.build(argparse.Namespace(smoke=False, scale=scale, dataset=None))
        assert check_plan(experiment.plan(), smoke=False) == []
        student = experiment.arm("mnist/ltl-offline")
        assert student.lr == 1e-4 and student.epochs == 5
        assert student.overrides["model.T"] == 16
        assert student.overrides["model.surrogate"] == {"name": "rectangle", "width": 0.4, "height": 1.0}
        assert student.overrides["data.batch_size"] == 64


def test_medium_scale_is_offered_only_by_the_experiment_that_has_one(tmp_path, capsys):
    from experiments import dspike_surrogates
    from experiments.runner import main

    with pytest.raises(SystemExit) as stop:
        main(dspike_surrogates.NAME, dspike_surrogates.build, dspike_surrogates.add_arguments,
             argv=["--out", str(tmp_path), "--scale", "medium"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--scale: invalid choice: 'medium'" in err and "small" in err and "large" in err
    assert set(ltl_claims.SCALE_HELP) == set(ltl_claims.SCALES) - {"smoke"}  # each scale selectable
    medium = ltl_claims.build(argparse.Namespace(smoke=False, scale="medium", dataset=None))
    assert medium.arm("mnist/ltl-offline").data.subset is None  # the whole training set
    assert medium.arm("mnist/bptt").lr_grid == [1e-3, 3e-3, 1e-2]


def test_epochs_override_trains_the_students_longer_and_leaves_the_teacher():
    experiment = ltl_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None))
    teacher = experiment.arm("mnist/ann-teacher").epochs
    experiment.set_epochs(8)
    epochs = {a.label: a.epochs for a in experiment.arms}
    assert epochs == {"ann-teacher": teacher, "ltl-offline": 8, "ltl-online": 8, "bptt": 8}
    assert teacher != 8
    assert epochs_note(experiment.arms) == f"Epochs: 8 (mnist/ann-teacher {teacher})."
    assert not [note for note in experiment.notes if "5 epochs" in note]
    with pytest.raises(UserError, match="positive number of epochs"):
        experiment.set_epochs(0)


@pytest.mark.slow
def test_an_archive_reports_verifies_and_continues_without_the_checkpoints(smoke, tmp_path):
    """The archive keeps the records and the teachers' checkpoints, nothing else, and the
    experiment's own command reads it: --report writes the same tables, --verify retrains a
    student from its archived teacher, and a continued run trains only what is missing."""
    import shutil

    from experiments.archive import archive
    from tests.experiment_helpers import count_trainings

    out, results = smoke
    dest = tmp_path / "archive"
    counts = archive(out, dest)
    finals = sum(len(a["runs"]) + len(a["tuning_runs"]) for a in results["arms"].values())
    assert counts == {"runs": finals, "unfinished": 0, "checkpoints": 2}  # the two seeds' teachers
    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.pt"))
    assert kept == [f"runs/digits/ann-teacher/final/seed{s}/last.pt" for s in (0, 1)]

    reported = run_experiment(MODULE, dest, "--report")
    for name, arm in results["arms"].items():
        assert reported["arms"][name]["final_acc"] == arm["final_acc"], name
    table = lambda path: [l for l in path.read_text().splitlines() if l.startswith("|")]  # noqa: E731
    assert table(dest / "results.md") == table(out / "results.md")

    from experiments.runner import verify
    report = verify(dest / "results.json", "digits/ltl-online", 0, tmp_path / "v", verbose=False)
    assert report["bitwise"]

    scratch = tmp_path / "continued"
    shutil.copytree(dest, scratch)
    shutil.rmtree(scratch / "runs/digits/ltl-online/final/seed1")
    # a student stopped half-way in the old folder, moved with it: continued, not started over
    partial = scratch / "runs/digits/ltl-offline/final/seed1"
    shutil.rmtree(partial)
    shutil.copytree(out / "runs/digits/ltl-offline/final/seed1", partial)
    for name in ("experiment_run.json", "summary.json"):
        (partial / name).unlink()
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = count_trainings(monkeypatch)
        run_experiment(MODULE, scratch)
    assert sorted(calls) == sorted([str(partial), str(scratch / "runs/digits/ltl-online/final/seed1")])
    assert json.loads((partial / "experiment_run.json").read_text())["resumed"] is True

    # archiving again replaces the archive: a run no longer finished in the experiment is gone
    shutil.rmtree(scratch / "runs/digits/bptt/final/seed0")
    assert archive(scratch, dest)["runs"] == counts["runs"] - 1
    assert not (dest / "runs/digits/bptt/final/seed0").exists() and not list(tmp_path.glob("*.partial"))


def test_archive_refusals(tmp_path):
    from experiments.archive import archive

    with pytest.raises(UserError, match="holds no experiment"):
        archive(tmp_path, tmp_path / "a")
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="must not contain each other"):
        archive(tmp_path, tmp_path / "inside")
    other = tmp_path.parent / (tmp_path.name + "-other")
    (other / "notes").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no archive"):  # never replaced
        archive(tmp_path, other)
    (tmp_path / "runs/a/final/seed0").mkdir(parents=True)
    (tmp_path / "runs/a/final/seed0/experiment_run.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a JSON object"):
        archive(tmp_path, tmp_path.parent / (tmp_path.name + "-new"))
