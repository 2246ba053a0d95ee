"""The experiment protocol: plateau criterion, learning-rate rule, refusals, splits, verdicts, tables."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from experiments import splits
from experiments.claims import better, within
from experiments.protocol import Protocol, ProtocolError, check_plan, choose_lr, plateau
from experiments.runner import Arm, DataSpec, Experiment, Runner, markdown, verify
from experiments.stats import paired_t_test
from spikegrad.config import Config
from spikegrad.errors import UserError
from spikegrad.run import build_parts

# ----------------------------------------------------------------- plateau


def test_plateau_by_hand():
    # E = 7: window max(3, ceil(7/4)) = 3; gain = max(a[4:7]) - max(a[:4]) = 0.863 - 0.85
    rising = plateau([0.5, 0.7, 0.8, 0.85, 0.86, 0.862, 0.863])
    assert rising["window"] == 3 and rising["gain"] == pytest.approx(0.013)
    assert not rising["converged"] and rising["plateau_epoch"] is None
    # gain 0.953 - 0.951 < 0.005; at epoch 6 the gain was 0.953 - 0.95, at epoch 5 0.952 - 0.9
    flat = plateau([0.5, 0.9, 0.95, 0.951, 0.952, 0.953, 0.953], train_loss=[1, .5, .3, .25, .2, .2, .19])
    assert flat["converged"] and flat["gain"] == pytest.approx(0.002)
    assert flat["plateau_epoch"] == 6
    assert flat["loss_change"] == pytest.approx((0.19 - 0.25) / 0.25)
    falling = plateau([0.9, 0.95, 0.94, 0.93, 0.92])  # no gain at all: a plateau (or worse)
    assert falling["converged"] and falling["gain"] < 0


def test_plateau_window_and_too_short_runs():
    protocol = Protocol()
    assert protocol.window(4) == 3 and protocol.window(15) == 4 and protocol.window(40) == 10
    short = plateau([0.1, 0.5, 0.9])  # E = w: nothing before the window to compare with
    assert not short["converged"] and short["gain"] is None
    strict = Protocol(plateau_delta=0.001)
    assert not plateau([0.5, 0.9, 0.95, 0.951, 0.952, 0.953, 0.953], strict)["converged"]


# ----------------------------------------------------------------- learning-rate rule


def test_choose_lr_rule():
    out = choose_lr({0.01: [0.80, 0.82], 0.1: [0.85, 0.83], 1.0: [0.84, 0.84]})
    assert out["lr"] == 0.1 and not out["at_edge"]  # the tie of 0.1 and 1.0 goes to the smaller rate
    assert [r["mean"] for r in out["rows"]] == pytest.approx([0.81, 0.84, 0.84])
    edge = choose_lr({0.01: [0.5, 0.5], 0.1: [0.6, 0.7], 1.0: [0.9, 0.8]})
    assert edge["lr"] == 1.0 and edge["at_edge"]
    failed = choose_lr({0.01: [0.5, 0.5], 0.1: [None, 0.99]})  # a diverged seed disqualifies its rate
    assert failed["lr"] == 0.01 and failed["rows"][1]["failed"]
    with pytest.raises(ProtocolError, match="every learning rate"):
        choose_lr({0.1: [None, None]})


# ----------------------------------------------------------------- refusals


def _plan(**changes):
    arm = {"name": "a", "epochs": 10, "lr_grid": [0.01, 0.1, 1.0], "lr": None, "lr_reason": "",
           "lr_from": None, "validation": 0.1}
    arm.update(changes.pop("arm", {}))
    return {"seeds": [0, 1, 2, 3, 4], "tuning_seeds": [10, 11], "arms": [arm], **changes}


def test_check_plan_accepts_the_minimums_and_refuses_less():
    assert check_plan(_plan(), smoke=False) == []
    cases = {
        "4 seeds per arm": _plan(seeds=[0, 1, 2, 3]),
        "1 tuning seeds": _plan(tuning_seeds=[10]),
        "are also final seeds": _plan(tuning_seeds=[4, 11]),
        "a learning-rate grid of 2 values": _plan(arm={"lr_grid": [0.1, 1.0]}),
        "without a validation split": _plan(arm={"validation": None}),
        "a fixed learning rate needs a stated reason": _plan(arm={"lr_grid": [], "lr": 0.1}),
        "too few to judge a plateau": _plan(arm={"epochs": 3}),
        "repeat a seed": _plan(seeds=[0, 1, 2, 3, 4, 4]),
    }
    for expected, plan in cases.items():
        with pytest.raises(ProtocolError, match=expected) as exc:
            check_plan(plan, smoke=False)
        assert "--smoke" in str(exc.value)
        assert any(expected in v for v in check_plan(plan, smoke=True))  # smoke: recorded, not refused
    assert check_plan(_plan(arm={"lr_grid": [], "lr": 1e-4, "lr_reason": "published"}), smoke=False) == []


def test_smoke_outputs_never_go_into_docs(tmp_path):
    docs = tmp_path / "docs"
    with pytest.raises(ProtocolError, match="may not write into"):
        check_plan(_plan(), smoke=True, out=docs / "x", repo=tmp_path)
    check_plan(_plan(), smoke=True, out=tmp_path / "runs", repo=tmp_path)


def _tiny_experiment(**arm_changes) -> Experiment:
    arm = Arm(name="digits/atan", recipe="digits", data=DataSpec("digits", validation=0.2, subset=100),
              epochs=2, lr_grid=[0.05, 0.1], overrides={"model.width": 0.25, "model.T": 2,
                                                        "model.surrogate": {"name": "atan"}})
    for key, value in arm_changes.items():
        setattr(arm, key, value)
    return Experiment(name="tiny", title="tiny", arms=[arm], seeds=[0, 1], tuning_seeds=[7])


def _tiny_tuning_spec(out: Path, epochs: int) -> dict:
    """The spec of the tiny experiment's first tuning run (seed 7, rate 0.05), trained into ``out``."""
    runner = Runner(_tiny_experiment(epochs=epochs), out, smoke=True, threads=1, verbose=False)
    return runner._spec("tune", runner.experiment.arms[0], 7, 0.05)


def test_runner_refuses_unknown_datasets_and_bad_dependencies(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'no_such_set'"):
        Runner(_tiny_experiment(data=DataSpec("no_such_set")), tmp_path, smoke=True)
    with pytest.raises(UserError, match="must come before it"):
        Runner(_tiny_experiment(depends={"ltl.teacher_checkpoint": "digits/teacher"}), tmp_path, smoke=True)
    with pytest.raises(ProtocolError):
        Runner(_tiny_experiment(), tmp_path, smoke=False)


def test_an_arm_trained_a_multiple_of_another_gets_its_epochs_from_the_experiment():
    data = DataSpec("digits", validation=0.2, subset=100)
    base = Arm(name="g/base", recipe="digits", data=data, epochs=3, lr_grid=[0.1])
    double = Arm(name="g/double", recipe="digits", data=data, lr_from="g/base", lr_reason="base's",
                 epochs_from="g/base", epochs_factor=2)
    quadruple = Arm(name="g/quadruple", recipe="digits", data=data, lr_from="g/base", lr_reason="base's",
                    epochs_from="g/double", epochs_factor=2)
    experiment = Experiment(name="x", title="x", arms=[base, quadruple, double], seeds=[0], tuning_seeds=[7])
    assert [a.epochs for a in experiment.arms] == [3, 12, 6]  # through the chain, in any order
    experiment.set_epochs(5)
    assert [a.epochs for a in experiment.arms] == [5, 20, 10]
    with pytest.raises(UserError, match="both set its epochs"):
        Experiment(name="x", title="x", seeds=[0], tuning_seeds=[7],
                   arms=[base, Arm(name="g/d", recipe="digits", data=data, epochs=4, epochs_from="g/base")])
    with pytest.raises(UserError, match="give its epochs"):
        Experiment(name="x", title="x", seeds=[0], tuning_seeds=[7],
                   arms=[Arm(name="g/none", recipe="digits", data=data, lr_grid=[0.1])])
    loop = [Arm(name=f"g/{n}", recipe="digits", data=data, epochs_from=f"g/{m}")
            for n, m in (("a", "b"), ("b", "a"))]
    with pytest.raises(UserError, match="circle"):
        Experiment(name="x", title="x", arms=loop, seeds=[0], tuning_seeds=[7])
    with pytest.raises(UserError, match="has no arm 'g/missing'"):
        Experiment(name="x", title="x", seeds=[0], tuning_seeds=[7],
                   arms=[Arm(name="g/a", recipe="digits", data=data, epochs_from="g/missing")])
# ----------------------------------------------------------------- splits


def _parts(overrides):
    return build_parts(Config().with_overrides({"model.width": 0.25, **overrides}))


def test_experiment_splits_are_the_librarys_cut():
    """Tuning: ``subset`` training samples beside a validation split of ``f`` of the whole
    training set; final: the same-sized subset against the test set (digits: 1433 / 364)."""
    plain = _parts(splits.data_overrides("digits", validation=None))
    assert (len(plain.train_set), len(plain.test_set), plain.eval_split) == (1433, 364, "test")
    tune_overrides = splits.data_overrides("digits", validation=0.2, split_seed=0, subset=500)
    held = round(0.2 * 1433)  # 287
    assert tune_overrides == {"data.name": "digits", "data.options": {},
                              "data.validation": held / (500 + held), "data.split_seed": 0,
                              "data.subset": 500 + held}
    tune = _parts(tune_overrides)
    assert (len(tune.train_set), len(tune.test_set), tune.eval_split) == (500, held, "validation")
    assert tune.test_set.dataset is tune.train_set.dataset  # validation comes from the training set
    val_idx = set(tune.test_set.indices)
    assert not val_idx & set(tune.train_set.indices)
    # the library's own cut, with the keys the overrides set
    from spikegrad.data.splits import split_training_set

    train, val = split_training_set(plain.train_set, subset=500 + held, validation=held / (500 + held),
                                    seed=0)
    assert val.indices == tune.test_set.indices and train.indices == tune.train_set.indices
    final = _parts(splits.data_overrides("digits", validation=None, subset=500))
    assert (len(final.train_set), len(final.test_set), final.eval_split) == (500, 364, "test")
    whole = _parts(splits.data_overrides("digits", validation=0.2))  # no subset: f of everything
    assert (len(whole.train_set), len(whole.test_set)) == (1433 - held, held)
    large = _parts(splits.data_overrides("digits", validation=0.2, subset=1300))  # 1300 + 287 > 1433
    assert (len(large.train_set), len(large.test_set)) == (1433 - held, held)
    other = _parts(splits.data_overrides("digits", validation=0.2, split_seed=1, subset=500))
    assert set(other.test_set.indices) != val_idx


def test_data_overrides_refuse_bad_values():
    with pytest.raises(UserError, match="unknown dataset"):
        splits.data_overrides("no_such_set", validation=None)
    for bad in (0.0, 1.0, True, "0.1"):
        with pytest.raises(UserError, match=r"validation fraction must be in \(0, 1\)"):
            splits.data_overrides("digits", validation=bad)
    with pytest.raises(UserError, match="training subset must be a positive"):
        splits.data_overrides("digits", validation=0.1, subset=0)


# ----------------------------------------------------------------- verdicts


def _results(a_values, b_values, converged=(5, 5), smoke=False):
    return {"smoke": smoke,
            "arms": {"g/a": {"label": "a", "converged": converged[0], "runs_total": 5},
                     "g/b": {"label": "b", "converged": converged[1], "runs_total": 5}},
            "comparisons": [{"a": "g/a", "b": "g/b", "final": paired_t_test(a_values, b_values)}]}


def test_verdicts():
    b = [0.80, 0.81, 0.79, 0.80, 0.82]
    up = [x + d for x, d in zip(b, [0.02, 0.03, 0.025, 0.02, 0.03], strict=True)]
    assert better(_results(up, b), "g/a", "g/b", "c")["verdict"] == "holds"
    assert better(_results(up, b), "g/b", "g/a", "c")["verdict"] == "fails"  # read in reverse
    noisy = [x + d for x, d in zip(b, [0.02, -0.03, 0.01, -0.01, 0.0], strict=True)]
    assert better(_results(noisy, b), "g/a", "g/b", "c")["verdict"] == "not shown"
    close = [x - d for x, d in zip(b, [0.002, 0.003, 0.001, 0.002, 0.003], strict=True)]
    assert within(_results(close, b), "g/a", "g/b", 0.01, "c")["verdict"] == "holds"
    far = [x - d for x, d in zip(b, [0.05, 0.04, 0.06, 0.05, 0.045], strict=True)]
    assert within(_results(far, b), "g/a", "g/b", 0.01, "c")["verdict"] == "fails"
    flagged = better(_results(up, b, converged=(3, 5), smoke=True), "g/a", "g/b", "c")["verdict"]
    assert flagged == "SMOKE: holds (not converged: a)"


def test_claims_tested_together_read_bonferroni_intervals():
    """k claims together: each interval at 1 - 0.05/k (Bonferroni), read by the claim's own rule."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from experiments.claims import family

    b = [0.80, 0.81, 0.79, 0.80, 0.82]
    gains = [0.030, 0.002, 0.035, 0.010, 0.018]  # p = 0.036 alone: holds at 95%, not at 98.75%
    a = [x + d for x, d in zip(b, gains, strict=True)]
    results = _results(a, b)
    one = better(results, "g/a", "g/b", "gain")
    assert one["verdict"] == "holds"
    assert family([dict(one)])[0]["family_verdict"] == "holds"  # alone: its own verdict
    claims = family([dict(one), better(results, "g/b", "g/a", "loss"),
                     within(results, "g/b", "g/a", 0.05, "close"), within(results, "g/b", "g/a", 0.0, "far"),
                     {"claim": "untestable", "verdict": "not testable", "evidence": "-"}])
    n, mean = len(gains), sum(gains) / len(gains)
    sem = (sum((g - mean) ** 2 for g in gains) / (n - 1)) ** 0.5 / n ** 0.5
    half = scipy_stats.t.ppf(1 - 0.05 / 4 / 2, n - 1) * sem  # 4 testable claims
    gain, loss, close, far, untestable = claims
    assert gain["family_size"] == 4 and gain["family_confidence"] == pytest.approx(0.9875)
    assert gain["family_ci"] == pytest.approx([mean - half, mean + half], abs=1e-12)
    assert loss["family_ci"] == pytest.approx([-mean - half, -mean + half], abs=1e-12)
    assert (gain["family_verdict"], loss["family_verdict"]) == ("not shown", "not shown")
    assert gain["verdict"] == "holds" and loss["verdict"] == "fails"  # alone they still pass
    # "within": a - b (the interval of the reference minus the claimed arm) against the margin
    assert close["family_ci"] == pytest.approx(gain["family_ci"], abs=1e-12)
    assert close["family_verdict"] == "holds" and far["family_verdict"] == "not shown"
    assert "family_verdict" not in untestable
    text = _claims_markdown(claims)
    assert "| gain | **holds** | a − b: +1.90 points" in text
    assert f"| **not shown**: [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] at 98.75% |" in text
    assert "| untestable | **not testable** | - | - |" in text
    assert "each difference's interval at 98.75% instead of 95%" in text


def _claims_markdown(claims):
    from experiments.runner import _claims_table

    return "\n".join(_claims_table(claims))


# ----------------------------------------------------------------- runner, tables, verify


@pytest.mark.slow
def test_tiny_experiment_tables_and_verify(tmp_path):
    results = Runner(_tiny_experiment(), tmp_path / "exp", smoke=True, threads=1, verbose=False).run()
    arm = results["arms"]["digits/atan"]
    assert arm["lr"] in (0.05, 0.1) and len(arm["runs"]) == 2 and len(arm["tuning_runs"]) == 2
    text = markdown(results)
    assert "| atan ⚠ not converged |" in text and "**not converged** (0/2 plateaued)" in text
    assert "Learning-rate search" in text and " ⚠ |" in text
    assert re.search(r"The 4 runs' own wall times add up to \d+\.\d h; finished at commit ", text)
    # a stored result that differs from what the code computes now is caught
    path = tmp_path / "exp" / "results.json"
    stored = json.loads(path.read_text())
    stored["arms"]["digits/atan"]["runs"][0]["curves"]["eval_acc"][1] += 0.01
    path.write_text(json.dumps(stored))
    report = verify(path, "digits/atan", 0, tmp_path / "v", verbose=False)
    assert not report["bitwise"] and report["first_differing_epoch"] == 2
    with pytest.raises(UserError, match="no final run of arm 'digits/atan' with seed 9"):
        verify(path, "digits/atan", 9, tmp_path / "v", verbose=False)


def test_costs_measures_a_network():
    from experiments.costs import measure

    cost = measure("digits", ["model.width=0.25", "model.T=2"], samples=16)
    assert cost["train_ms"] > 0 and cost["eval_ms"] > 0


def test_results_json_is_strict():
    from experiments.runner import _finite

    value = {"a": [float("nan"), 1.0, (float("inf"),)], "b": "x"}
    assert _finite(value) == {"a": [None, 1.0, [None]], "b": "x"}


def test_verify_command_line_errors(tmp_path, capsys):
    from experiments import ltl_claims
    from experiments.runner import main

    def run(*argv):
        with pytest.raises(SystemExit) as exc:
            main("experiments.ltl_claims", ltl_claims.build, ltl_claims.add_arguments,
                 argv=["--out", str(tmp_path), *argv])
        assert exc.value.code == 2
        return capsys.readouterr().err

    assert "--verify needs --arm and --seed" in run("--verify", "results.json")
    assert "does not exist" in run("--verify", str(tmp_path / "none.json"), "--arm", "a", "--seed", "0")
    # an option the mode would not read is refused, not dropped
    for option in (["--epochs", "60"], ["--scale", "large"], ["--set", "model.T=4"], ["--report"],
                   ["--dataset", "mnist"]):
        err = run("--verify", "results.json", "--arm", "a", "--seed", "0", *option)
        assert f"{option[0]} does not apply to --verify" in err
    for option in (["--arm", "mnist/bptt"], ["--seed", "0"], ["--lr", "0.1"], ["--phase", "tune"]):
        assert f"{option[0]} applies only with --verify" in run(*option)


def test_a_run_folder_of_other_settings_is_neither_reused_nor_deleted(tmp_path, monkeypatch):
    """An experiment changed since it wrote ``--out`` (here: more epochs) meets its old runs:
    a finished one is not reported as this run, a stopped one is not deleted to start over."""
    from experiments.runner import execute
    from tests.experiment_helpers import count_trainings

    spec = _tiny_tuning_spec(tmp_path / "exp", epochs=1)
    execute(spec)
    folder = Path(spec["folder"])
    before = {p.name for p in folder.iterdir()}
    calls = count_trainings(monkeypatch)
    new_spec = _tiny_tuning_spec(tmp_path / "exp", epochs=2)
    assert new_spec["folder"] == spec["folder"]
    with pytest.raises(UserError, match=r"other settings \(train.epochs: 1 -> 2\).*another --out"):
        execute(new_spec)
    (folder / "experiment_run.json").unlink()  # as if stopped before its record: only last.pt
    (folder / "summary.json").unlink()
    with pytest.raises(UserError, match=r"train.epochs: 1 -> 2"):
        execute(new_spec)
    assert calls == []
    assert {p.name for p in folder.iterdir()} == before - {"experiment_run.json", "summary.json"}
    assert execute(spec)["failed"] is None and (folder / "summary.json").is_file()  # same settings: finished


def test_a_finished_run_copied_into_another_out_is_read_not_trained(tmp_path, monkeypatch):
    """A new ``--out`` may start from another experiment's finished runs (as docs/protocol.md says):
    a copy is reused where its settings are the ones asked for, refused where they are not."""
    import shutil

    from experiments.runner import execute
    from tests.experiment_helpers import count_trainings

    spec = _tiny_tuning_spec(tmp_path / "first", epochs=1)
    stored = execute(spec)
    calls = count_trainings(monkeypatch)
    copy = _tiny_tuning_spec(tmp_path / "second", epochs=1)
    shutil.copytree(spec["folder"], copy["folder"])
    reused = execute(copy)
    assert calls == [] and reused["wall_seconds"] == stored["wall_seconds"]  # the stored record, as trained
    other = _tiny_tuning_spec(tmp_path / "third", epochs=2)
    shutil.copytree(spec["folder"], other["folder"])
    with pytest.raises(UserError, match=r"train.epochs: 1 -> 2"):
        execute(other)
    assert calls == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_sigterm_to_the_runner_stops_its_run_processes_which_save(tmp_path):
    """SIGTERM to the runner alone (not its process group): the runs in flight save and stop,
    no run process lives on to start the queued runs, and the runner exits 128 + 15."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "exp"
    runner = subprocess.Popen(
        [sys.executable, "-m", "experiments.dspike_surrogates", "--out", str(out), "--smoke", "--jobs", "2",
         "--threads", "1", "--epochs", "500", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            locks = [p for p in out.glob("runs/**/.lock") if p.read_text().startswith("PID ")]
            rows = [p.parent / "metrics.jsonl" for p in locks]
            if len(locks) == 2 and all(f.is_file() and len(f.read_text().splitlines()) >= 2 for f in rows):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("two runs did not start training")
        workers = {int(p.read_text().split()[1]) for p in locks}
        folders = [p.parent for p in locks]
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM (2 run(s) in flight saved their checkpoints)" in stderr
    assert "run the same command again to continue" in stderr
    time.sleep(1.0)
    assert not any(_alive(pid) for pid in workers), "a run process outlived its runner"
    assert all((f / "last.pt").is_file() and not (f / "summary.json").exists() for f in folders)
    started = {p.parent for p in out.glob("runs/**/config.yaml")}
    assert started == set(folders), "a queued run started after the stop"


@pytest.mark.parametrize("override, named", [
    ("train.epochs=60", "from --epochs"), ("train={epochs: 3}", "from --epochs"),
    ("optim.lr=0.1", "learning rates"), ("train.seed=3", "--seeds"),
    ("ltl.teacher_checkpoint=x.pt", "checkpoint of mnist/ann-teacher")])
def test_a_set_the_runner_would_overwrite_is_refused(override, named, tmp_path):
    from experiments import ltl_claims
    from experiments.runner import add_common_arguments, apply_common

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    experiment = ltl_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None))
    apply_common(experiment, parser.parse_args(["--out", "unused", "--set", override]))
    with pytest.raises(UserError, match="would be ignored") as error:  # the command line and the API alike
        Runner(experiment, tmp_path)
    assert named in str(error.value)
    experiment.extra_overrides = ["optim.weight_decay=0.1"]
    assert Runner(experiment, tmp_path).violations == []


@pytest.mark.parametrize("override", ["data.validation=0", "data.name=digits", "data.subset=50",
                                      "data.split_seed=3", "data={name: digits}", "data.options.T=5"])
def test_a_set_of_the_dataset_or_split_is_refused(override, tmp_path):
    """``--set`` comes after the split, so these would replace the protocol's split silently."""
    from experiments.runner import _sets_within

    experiment = _tiny_experiment(data=DataSpec("event_digits", options={"T": 4}, validation=0.2, subset=100))
    experiment.extra_overrides = [override]
    with pytest.raises(UserError, match="dataset and split"):
        Runner(experiment, tmp_path, smoke=True)
    experiment.extra_overrides = ["data.num_workers=0", "data.augment=[]"]
    Runner(experiment, tmp_path, smoke=True)  # what the split does not set stays the user's
    # a dataset option the arm does not give is the user's too
    assert not _sets_within({"T": 4}, "data.options", "data.options.size")
    assert _sets_within({"T": 4}, "data.options", "data.options.T")


def test_report_trains_nothing_not_even_a_preparatory_check(tmp_path):
    experiment = _tiny_experiment()
    experiment.prepare = lambda runner: runner.run_check(runner.experiment.arms[0], seed=7, lr=0.1) and {}
    runner = Runner(experiment, tmp_path, smoke=True, verbose=False)
    with pytest.raises(UserError, match=r"--report reads finished runs only.*without --report first"):
        runner.run(train=False)
    assert not list(tmp_path.glob("runs/**/config.yaml"))


def test_the_plateau_cell_says_how_far_from_a_plateau_the_runs_were():
    from experiments.runner import converged_cell

    def run(acc):
        verdict = plateau(acc)
        return {"final_acc": acc[-1], "converged": verdict["converged"], "plateau": verdict}

    flat, rising = [0.5, 0.8, 0.9, 0.9, 0.9, 0.9], [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    steep = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
    # window 3: rising gained 0.9 - 0.7, steep 0.7 - 0.3
    arm = {"converged": 1, "runs_total": 3, "runs": [run(flat), run(rising), run(steep)]}
    assert converged_cell(arm) == ("**not converged** (1/3 plateaued; the rest: training accuracy +20.00 to "
                                   "+40.00 points in the last 3 epochs)")
    assert converged_cell({"converged": 1, "runs_total": 1, "runs": [run(flat)]}) == "1/1"
    one = {"converged": 1, "runs_total": 2, "runs": [run(flat), run(rising)]}  # one amount, not a range
    assert converged_cell(one) == ("**not converged** (1/2 plateaued; the other: training accuracy +20.00 "
                                   "points in the last 3 epochs)")


def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """A checkout that moves while a run trains is not recorded as the code that trained it."""
    import spikegrad
    from experiments import provenance, runner

    checkout = {"commit": "started"}
    monkeypatch.setattr(provenance, "machine", lambda device="cpu": {"git_commit": checkout["commit"]})

    def train(config, folder, verbose=False, resume_from=None):
        checkout["commit"] = "moved"
        Path(folder).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(spikegrad, "train", train)
    experiment = _tiny_experiment()
    spec = Runner(experiment, tmp_path, smoke=True)._spec("tune", experiment.arms[0], 7, 0.1)
    assert runner._execute(spec)["machine"] == {"git_commit": "started"}


def _claims_on(experiment, offsets, jitter=None):
    """The experiment's claim verdicts on made-up final accuracies: arm ``name`` scores
    ``0.8 + offsets[name]`` (+ ``jitter[name]`` per seed), paired over seeds 0-4 through the
    runner's own comparisons."""
    from experiments.runner import paired_comparisons

    seeds, small = [0, 1, 2, 3, 4], [0.001, -0.002, 0.0015, 0.0, -0.001]
    arms = {}
    for i, arm in enumerate(experiment.arms):
        extra = (jitter or {}).get(arm.name, [0.0] * 5)
        accs = [0.8 + offsets.get(arm.name, 0.0) + (i % 3) * d + e for d, e in zip(small, extra, strict=True)]
        arms[arm.name] = {"group": arm.group, "label": arm.label, "epochs": arm.epochs, "converged": 5,
                          "runs_total": 5, "runs": [{"seed": s, "final_acc": a, "best_acc": a}
                                                    for s, a in zip(seeds, accs, strict=True)]}
    results = {"smoke": False, "arms": arms,
               "comparisons": paired_comparisons(experiment.comparisons, arms, experiment.protocol)}
    return {c["claim"]: c["verdict"] for c in experiment.claims(results)}


def test_each_experiment_reads_its_claims_in_the_right_direction():
    """End to end from per-seed accuracies to verdicts: a swapped pair in a claim, a reversed
    subtraction or a comparison left out would change a verdict here."""
    from experiments import dspike_surrogates, ltl_claims, shortcut_claims

    ltl = ltl_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None))
    verdicts = _claims_on(ltl, {"mnist/ann-teacher": 0.10, "mnist/ltl-offline": 0.097,
                                "mnist/ltl-online": 0.05, "mnist/bptt": 0.07})
    assert verdicts == {
        "mnist: offline LTL is within 1 point of its teacher after 5 epochs": "holds",
        "mnist: offline LTL is more accurate than BPTT at equal epochs": "holds",
        "mnist: online LTL is within 1 point of its teacher after 5 epochs": "fails",
        "mnist: online LTL is more accurate than BPTT at equal epochs": "fails"}

    dspike = dspike_surrogates.build(argparse.Namespace(smoke=False, scale="small",
                                                        datasets=["animal_mnist"]))
    group = "animal_mnist"
    verdicts = _claims_on(dspike, {f"{group}/dspike-adaptive": 0.05, f"{group}/atan": 0.10,
                                   f"{group}/sigmoid": 0.05},
                          jitter={f"{group}/sigmoid": [0.01, -0.01, 0.005, -0.005, 0.0]})
    assert verdicts == {f"{group}: adaptive Dspike is more accurate than dspike-b3": "holds",
                        f"{group}: adaptive Dspike is more accurate than atan": "fails",
                        f"{group}: adaptive Dspike is more accurate than sigmoid": "not shown",
                        f"{group}: adaptive Dspike is more accurate than rectangle": "holds"}

    shortcut = shortcut_claims.build(argparse.Namespace(smoke=False, scale="small", dataset=None,
                                                        models=["resnet34"], surrogate=None, ablate=None))
    verdicts = _claims_on(shortcut, {"resnet34/vanilla-long": 0.10, "resnet34/shortcut": 0.03,
                                     "resnet34/evolutionary": 0.06, "resnet34/evolutionary-long": 0.08})
    assert verdicts == {
        "resnet34: shortcut BP (λ = 1) trains a more accurate network than vanilla BPTT": "holds",
        "resnet34: evolutionary training is more accurate than vanilla BPTT": "holds",
        "resnet34: evolutionary training is more accurate than vanilla BPTT, both trained twice as long":
            "fails",
        "resnet34: evolutionary training beats vanilla trained twice as long": "fails",
        "resnet34: the decaying λ beats a constant λ = 1 (main head)": "holds"}


def test_a_continued_run_records_the_wall_time_of_all_its_processes(tmp_path, monkeypatch):
    """A run stopped and continued is recorded with the trainer's total wall time (every process
    that trained it), not the few seconds the last one took, and marked as continued."""
    import spikegrad
    from experiments import provenance, runner

    monkeypatch.setattr(provenance, "machine", lambda device="cpu": {"git_commit": "x"})

    def train(config, folder, verbose=False, resume_from=None, allow_config_change=False):
        assert resume_from is not None and not allow_config_change  # the same folder: nothing moved
        (Path(folder) / "summary.json").write_text(json.dumps({"wall_seconds": 1234.5}))

    monkeypatch.setattr(spikegrad, "train", train)
    monkeypatch.setattr(runner, "check_same_run", lambda folder, config, depends=None: [])
    experiment = _tiny_experiment()
    spec = Runner(experiment, tmp_path, smoke=True)._spec("tune", experiment.arms[0], 7, 0.1)
    Path(spec["folder"]).mkdir(parents=True)
    (Path(spec["folder"]) / "last.pt").write_bytes(b"")
    record = runner._execute(spec)
    assert record["wall_seconds"] == 1234.5 and record["resumed"] is True
    # an old runner's record (the last process's seconds) is read with the trainer's total
    (Path(spec["folder"]) / runner.RECORD).write_text(json.dumps({**record, "wall_seconds": 5.0}))
    assert runner.load_run(Path(spec["folder"]))["wall_seconds"] == 1234.5

    def cannot_continue(config, folder, verbose=False, resume_from=None, allow_config_change=False):
        if resume_from is not None:
            raise UserError("this checkpoint cannot be continued")
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "summary.json").write_text(json.dumps({"wall_seconds": 7.0}))

    monkeypatch.setattr(spikegrad, "train", cannot_continue)  # started over: not a continued run
    (Path(spec["folder"]) / "summary.json").unlink()
    (Path(spec["folder"]) / "last.pt").write_bytes(b"")
    record = runner._execute(spec)
    assert record["wall_seconds"] == 7.0 and record["resumed"] is False


def test_the_machine_line_adds_up_the_runs_and_names_every_commit_that_finished_one():
    from experiments.runner import _runs_line

    def run(wall, commit):
        return {"wall_seconds": wall, "machine": {"git_commit": commit}}

    results = {"arms": {"a": {"runs": [run(3600, "b" * 40), run(1800, "a" * 40)],
                              "tuning_runs": [run(1800, "b" * 40)]}}}
    assert _runs_line(results) == (" The 3 runs' own wall times add up to 2.0 h; finished at commit "
                                   f"{'a' * 12}, {'b' * 12}.")


def _with_options(option, module, *values, **build_options):
    """``module``'s small-scale experiment with ``apply_common`` of ``--out unused OPTION VALUES``."""
    from experiments.runner import add_common_arguments, apply_common

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    experiment = module.build(argparse.Namespace(smoke=False, scale="small", **build_options))
    return apply_common(experiment, parser.parse_args(["--out", "unused", option, *values]))


def test_tuned_lr_skips_an_arms_tuning_at_a_rate_of_its_grid_and_refuses_any_other(tmp_path):
    from experiments import dspike_surrogates, ltl_claims
    from experiments.runner import add_common_arguments, apply_common

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)

    def build(module, *tuned, **options):
        return _with_options("--tuned-lr", module, *tuned, **options)

    experiment = build(dspike_surrogates, "mnist/atan=0.1", datasets=["mnist"])
    atan = experiment.arm("mnist/atan")
    assert (atan.lr, atan.lr_grid) == (0.1, [])
    assert "earlier tuning over 0.003, 0.01, 0.03, 0.1, 0.3" in atan.lr_reason
    runner = Runner(experiment, tmp_path)
    assert runner.violations == []  # a fixed rate with a stated reason
    phases = {(phase, arm.name) for phase, arm, _, _ in runner.tasks()}
    assert ("tune", "mnist/atan") not in phases and ("final", "mnist/atan") in phases
    assert ("tune", "mnist/sigmoid") in phases  # the other arms still tune
    assert runner.lr_of(atan) == 0.1

    near = build(dspike_surrogates, "mnist/atan=0.1000000000001", datasets=["mnist"]).arm("mnist/atan")
    assert near.lr == 0.1  # the grid's value itself
    for tuned, message in [("mnist/atan=0.2", "not in the arm's grid"), ("mnist/atan", "write ARM=RATE"),
                           ("mnist/none=0.1", "no arm 'mnist/none'"), ("mnist/atan=x", "not a number")]:
        with pytest.raises(UserError, match=message):
            build(dspike_surrogates, tuned, datasets=["mnist"])
    with pytest.raises(UserError, match="does not tune its rate"):  # LTL's published rate
        build(ltl_claims, "mnist/ltl-offline=0.001", dataset=None)
    with pytest.raises(UserError, match="given twice"):
        build(dspike_surrogates, "mnist/atan=0.1", "mnist/atan=0.03", datasets=["mnist"])
    experiment = dspike_surrogates.build(argparse.Namespace(smoke=False, scale="small", datasets=["mnist"]))
    with pytest.raises(UserError, match=r"among the arms this command runs \(--arms"):
        apply_common(experiment, parser.parse_args(["--out", "x", "--arms", "mnist/sigmoid",
                                                    "--tuned-lr", "mnist/atan=0.1"]))


def test_lr_from_trains_an_arm_at_the_rate_chosen_for_another_and_refuses_what_cannot_apply(tmp_path):
    from experiments import shortcut_claims

    options = {"dataset": None, "models": ["resnet34"], "surrogate": "sigmoid-2", "ablate": ["resnet34"]}

    def build(*items):
        return _with_options("--lr-from", shortcut_claims, *items, **options)

    deep, parent = "resnet34/evolutionary-deep", "resnet34/evolutionary"
    experiment = _with_options("--arms", shortcut_claims, deep, "--lr-from", f"{deep}={parent}", **options)
    assert [a.name for a in experiment.arms] == [parent, deep]  # the source comes along with --arms
    arm = experiment.arm(deep)
    assert (arm.lr_from, arm.lr, arm.lr_grid) == (parent, None, [])
    assert arm.lr_reason == "not tuned on its own (--lr-from)"
    runner = Runner(experiment, tmp_path)
    assert runner.violations == []
    phases = {(phase, a.name) for phase, a, _, _ in runner.tasks()}
    assert ("tune", deep) not in phases and ("tune", parent) in phases
    runner._chosen[parent] = {"lr": 0.003}
    assert runner.lr_of(arm) == 0.003  # whatever the source's tuning chose

    for items, message in [
        ([f"{deep}"], "write ARM=SOURCE"),
        ([f"{deep}=resnet34/none"], "no arm 'resnet34/none'"),
        ([f"resnet34/none={parent}"], "no arm 'resnet34/none'"),
        ([f"resnet34/evolutionary-long={parent}"], "does not tune its rate"),
        ([f"{parent}=resnet34/evolutionary-long"], "takes its rate from 'resnet34/evolutionary' itself"),
        ([f"{deep}={deep}"], "itself"),
        ([f"{deep}={parent}", f"{deep}=resnet34/vanilla"], "given twice"),
    ]:
        with pytest.raises(UserError, match=message):
            build(*items)


def test_a_report_without_the_tuned_lr_that_made_the_final_runs_is_refused(tmp_path, capsys):
    from tests.experiment_helpers import run_experiment

    out = tmp_path / "exp"
    made = run_experiment("experiments.dspike_surrogates", out, "--arms", "digits/atan",
                          "--tuned-lr", "digits/atan=0.1")
    assert made["arms"]["digits/atan"]["lr"] == 0.1 and not made["arms"]["digits/atan"]["tuning_runs"]
    again = run_experiment("experiments.dspike_surrogates", out, "--arms", "digits/atan",
                           "--tuned-lr", "digits/atan=0.1", "--report")
    assert again["arms"]["digits/atan"]["final_acc"] == made["arms"]["digits/atan"]["final_acc"]
    with pytest.raises(SystemExit):
        run_experiment("experiments.dspike_surrogates", out, "--arms", "digits/atan", "--report")
    assert "holds final runs of digits/atan (seeds 0, 1)" in capsys.readouterr().err


def test_an_arm_trained_at_another_arms_rate_records_it_and_its_report_needs_the_lr_from(tmp_path, capsys):
    from tests.experiment_helpers import run_experiment

    out = tmp_path / "exp"
    given = ["--arms", "digits/sigmoid", "--tuned-lr", "digits/atan=0.1",
             "--lr-from", "digits/sigmoid=digits/atan"]
    made = run_experiment("experiments.dspike_surrogates", out, *given)
    sigmoid = made["arms"]["digits/sigmoid"]
    assert (sigmoid["lr"], sigmoid["lr_source"], sigmoid["tuning_runs"]) == (0.1, "from digits/atan", [])
    assert "0.1 (from digits/atan: not tuned on its own (--lr-from))" in (out / "results.md").read_text()
    again = run_experiment("experiments.dspike_surrogates", out, *given, "--report")
    assert again["arms"]["digits/sigmoid"]["final_acc"] == sigmoid["final_acc"]
    with pytest.raises(SystemExit):
        run_experiment("experiments.dspike_surrogates", out, "--arms", "digits/sigmoid", "digits/atan",
                       "--tuned-lr", "digits/atan=0.1", "--report")
    assert "repeat the --tuned-lr or --lr-from" in capsys.readouterr().err


def test_a_moved_experiment_keeps_its_dependencies_but_another_teacher_is_another_run(tmp_path):
    from experiments.runner import RECORD, check_same_run

    def stored(teacher):
        config = Config().with_overrides({"ltl.teacher_checkpoint": teacher})
        (tmp_path / RECORD).write_text(json.dumps({"config": config.to_dict()}))

    teacher = "runs/mnist/ann-teacher/final/seed0/last.pt"
    relative = {"ltl.teacher_checkpoint": teacher}
    moved = Config().with_overrides({"ltl.teacher_checkpoint": "/archive/" + teacher})
    stored("/old/place/runs/mnist/ann-teacher/final/seed0/last.pt")
    check_same_run(tmp_path, moved, relative)  # the same teacher, in the experiment's new folder
    with pytest.raises(UserError, match="other settings"):
        check_same_run(tmp_path, moved)  # without the dependency map, a path is a path
    stored("/old/place/runs/mnist/ann-teacher/final/seed1/last.pt")
    with pytest.raises(UserError, match=r"ltl\.teacher_checkpoint"):
        check_same_run(tmp_path, moved, relative)  # another seed's teacher


@pytest.mark.slow
def test_a_probe_is_a_tuning_run_outside_the_grid_that_checks_the_choice(tmp_path):
    """``--probe ARM=RATE``: the tuning run's config at RATE in its own folder, set beside the
    grid in the report with the protocol's own verdict, never changing the choice."""
    experiment = _tiny_experiment()
    experiment.add_probe("digits/atan", 0.3)
    runner = Runner(experiment, tmp_path / "exp", smoke=True, threads=1, verbose=False)
    assert [t[0] for t in runner.tasks()][-1] == "probe"  # probes decide nothing: they come last
    results = runner.run()
    arm = results["arms"]["digits/atan"]
    assert arm["lr"] in (0.05, 0.1)  # the grid's choice, whatever the probe scored
    [probe] = arm["probes"]
    [run] = probe["runs"]
    assert (run["phase"], run["lr"], run["eval_set"], run["seed"]) == ("probe", 0.3, "validation", 7)
    assert run["run_dir"] == "runs/digits/atan/probe/lr0.3/seed7"
    # an arm's training time is its tuning and final runs; its probes are counted apart
    assert arm["probe_seconds"] == run["train_seconds"] > 0
    runs = arm["runs"] + arm["tuning_runs"]
    assert arm["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in runs))
    table = {row["lr"]: row["values"] for row in arm["lr_choice"]["rows"]}
    assert probe["beats_choice"] == (choose_lr({**table, 0.3: [run["final_acc"]]})["lr"] == 0.3)
    # the same config as a tuning run at that rate: only the folder tells them apart
    tune_spec = runner._spec("tune", experiment.arms[0], 7, 0.3)
    stored = json.loads((tmp_path / "exp" / run["run_dir"] / "experiment_run.json").read_text())
    assert stored["config"] == tune_spec["config"]
    text = markdown(results)
    assert re.search(r"\| digits/atan \| 0\.3 \(probe\) \| \d+\.\d\d ⚠ \|", text)
    assert "- Probe of digits/atan at 0.3: " in text
    for beats, said in ((False, "the choice would stand"), (True, "with this rate in the grid the protocol "
                                                                   "would choose it")):
        probe["beats_choice"] = beats
        assert said in markdown(results)
    probe["beats_choice"] = True
    arm["lr_choice"]["at_edge"] = True
    assert "(grid edge; the probe at 0.3 scored higher: widen the grid)" in markdown(results)
    # --report reads the probe without training; --verify trains it again bit for bit
    again = Runner(experiment, tmp_path / "exp", smoke=True, threads=1, verbose=False).run(train=False)
    assert again["arms"]["digits/atan"]["probes"][0]["runs"][0]["final_acc"] == run["final_acc"]
    report = verify(tmp_path / "exp" / "results.json", "digits/atan", 7, tmp_path / "v", phase="probe",
                    verbose=False)
    assert report["bitwise"]
    with pytest.raises(UserError, match=r"tune runs of arm 'digits/atan' with seed 7 at 0.05, 0.1: give"):
        verify(tmp_path / "exp" / "results.json", "digits/atan", 7, tmp_path / "v", phase="tune",
               verbose=False)


def test_probes_are_refused_where_they_cannot_check_a_choice(tmp_path):
    from experiments import dspike_surrogates, ltl_claims
    from experiments.runner import add_common_arguments, apply_common

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)

    def build(module, *probes, **options):
        return _with_options("--probe", module, *probes, **options)

    experiment = build(dspike_surrogates, "mnist/atan=1", "mnist/atan=0.001", datasets=["mnist"])
    assert experiment.probes == {"mnist/atan": [1.0, 0.001]}
    phases = [(phase, arm.name, lr) for phase, arm, _, lr in Runner(experiment, tmp_path).tasks()]
    assert phases[-4:] == [("probe", "mnist/atan", 1.0)] * 2 + [("probe", "mnist/atan", 0.001)] * 2
    for probe, message in [("mnist/atan=0.1", "in the arm's grid"), ("mnist/atan", "write ARM=RATE"),
                           ("mnist/atan=x", "write ARM=RATE"), ("mnist/none=1", "no arm 'mnist/none'"),
                           ("mnist/atan=-1", "not a positive number"), ("mnist/atan=inf", "positive")]:
        with pytest.raises(UserError, match=message):
            build(dspike_surrogates, probe, datasets=["mnist"])
    with pytest.raises(UserError, match="given twice"):
        build(dspike_surrogates, "mnist/atan=1", "mnist/atan=1.0", datasets=["mnist"])
    with pytest.raises(UserError, match="does not tune its rate"):  # LTL's published rate
        build(ltl_claims, "mnist/ltl-offline=0.01", dataset=None)
    with pytest.raises(UserError, match="does not tune its rate"):  # its grid skipped by --tuned-lr
        options = argparse.Namespace(smoke=False, scale="small", datasets=["mnist"])
        experiment = dspike_surrogates.build(options)
        apply_common(experiment, parser.parse_args(["--out", "x", "--tuned-lr", "mnist/atan=0.1",
                                                    "--probe", "mnist/atan=1"]))
    # the Python API's probes get the same checks when the runner starts
    experiment = _tiny_experiment()
    experiment.probes = {"digits/atan": [0.1]}
    with pytest.raises(UserError, match="in the arm's grid"):
        Runner(experiment, tmp_path, smoke=True)
    experiment.probes = {"digits/none": [1.0]}
    with pytest.raises(UserError, match="has no arm 'digits/none'"):
        Runner(experiment, tmp_path, smoke=True)
