"""What a new user meets first: the command line's help, run names, threads, the guards
against training into a run, resume of a finished run, eval of a run folder, calibration,
and the demo's refusal and resume."""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from spikegrad import cli, threads
from spikegrad.build import build_parts
from spikegrad.cli import build_parser, main
from spikegrad.config import Config, load_config
from spikegrad.data import _registry, list_datasets
from spikegrad.data.digits import digits
from spikegrad.demo import recipe_path
from spikegrad.errors import UserError
from spikegrad.methods.registry import method_label, run_name
from spikegrad.resume import TrainingStopped
from spikegrad.run import train
from spikegrad.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> Config:
    base = {"train.epochs": 1, "train.progress": False, "data.batch_size": 128, "model.width": 0.25,
            "model.T": 2, "train.threads": 1}
    return load_config(recipe_path("digits")).with_overrides({**base, **overrides})


def tiny_recipe(folder: Path, **overrides) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(tiny_config(**overrides).to_yaml())
    return path


@pytest.fixture
def small_digits(monkeypatch):
    """The built-in digits cut to 160 training and 64 test images (every recipe stays as is)."""
    def small(root: str | None = None):
        train_set, test_set, info = digits(root)
        return Subset(train_set, range(0, 1433, 9)), Subset(test_set, range(0, 364, 6)), info

    monkeypatch.setitem(_registry._DATASETS, "digits", small)


# --------------------------------------------------------------------------- help


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_imports_no_torch():
    code = ("import sys\nfrom spikegrad.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nfor name in ('torch', 'numpy'):\n    assert name not in sys.modules, name\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "spikegrad COMMAND --help" in proc.stdout


def test_every_argument_has_help_and_every_command_has_examples_that_parse():
    parser = build_parser()
    for name, sub in subcommands().items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.dest}"
        assert sub.epilog.startswith("examples:\n"), name
        for line in sub.epilog.splitlines()[1:]:
            words = shlex.split(line, comments=True)
            assert words[0] in ("spikegrad", "torchrun"), line
            parser.parse_args(words[words.index("spikegrad") + 1:])  # SystemExit on a bad example
    text = subcommands()["fdg"].format_help()
    assert "(default: 256)" in text and "(default: None)" not in text  # defaults shown, not None


def test_download_help_lists_exactly_the_downloadable_datasets():
    downloadable = [n for n in list_datasets()
                    if "download" in inspect.signature(_registry.dataset_builder(n)).parameters]
    assert sorted(cli.DOWNLOADABLE) == downloadable
    text = " ".join(subcommands()["download"].format_help().split())
    assert all(name in text for name in downloadable)


def test_train_takes_device_like_eval_and_fdg(tmp_path):
    recipe = tiny_recipe(tmp_path)
    for device in ("cpu", "cuda:1"):
        args = build_parser().parse_args(["train", str(recipe), "--device", device, "--out", str(tmp_path)])
        config, out, resume_from = cli._train_run(args)
        assert (config.train.device, out, resume_from) == (device, str(tmp_path), None)
    args = build_parser().parse_args(["train", str(recipe), "--set", "model.T=3"])
    assert cli._train_run(args)[0].train.device == tiny_config().train.device  # the recipe's


# --------------------------------------------------------------------------- run names


@pytest.mark.parametrize(("overrides", "name"), [
    ([], "digits-dspike"),
    (["model.kind=ann"], "digits-ann"),
    (["dspike.adaptive=true"], "digits-dspike-adaptive"),
    (["shortcut.enabled=true"], "digits-dspike-evolutionary"),
    (["shortcut.enabled=true", "shortcut.schedule=constant", "shortcut.loss=separate"],
     "digits-dspike-shortcut-separate"),
    (["model.surrogate={name: sigmoid}", "dspike.adaptive=true"], "digits-sigmoid"),  # no Dspike to adapt
    (["name=mine", "model.kind=ann"], "mine"),  # an explicit name wins
])
def test_a_run_is_named_after_its_method_unless_the_recipe_names_it(overrides, name):
    assert run_name(load_config(recipe_path("digits"), overrides)) == name


def test_ltl_recipes_are_named_after_the_mode():
    assert run_name(load_config(recipe_path("digits_ltl"))) == "digits-ltl-offline"
    assert run_name(load_config(recipe_path("digits_ltl"), ["ltl.mode=online"])) == "digits-ltl-online"
    assert run_name(load_config(recipe_path("cifar10_resnet18_t4_dspike"))) == "cifar10-resnet18-t4-dspike"


@pytest.mark.parametrize("overrides", [
    {}, {"model.kind": "ann"}, {"dspike.adaptive": True}, {"shortcut.enabled": True},
    {"dspike.adaptive": True, "shortcut.enabled": True, "shortcut.schedule": "constant"},
])
def test_the_method_label_from_the_config_is_the_trainers(overrides):
    config = tiny_config(**{"train.epochs": 2, **overrides})  # an adaptive run of 1 epoch never searches
    parts = build_parts(config)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, verbose=False)
    assert method_label(config) == trainer.method_name()


# --------------------------------------------------------------------------- threads


def test_auto_threads_takes_the_free_cores_never_none_never_more_than_torch():
    assert threads.auto_threads(cpus=2, load=0.0, default=2) == 2
    assert threads.auto_threads(cpus=2, load=1.18, default=2) == 1  # another job on one core
    assert threads.auto_threads(cpus=2, load=4.9, default=2) == 1  # overloaded: still one
    assert threads.auto_threads(cpus=16, load=3.0, default=16) == 13
    assert threads.auto_threads(cpus=16, load=0.0, default=8) == 8  # torch's physical cores
    assert threads.auto_threads(cpus=16, load=0.0, default=16, processes=4) == 4  # torchrun


def test_apply_threads_chooses_once_and_leaves_a_callers_choice(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", before)
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(threads, "free_cpus", lambda: (before, before + 3.0))  # all cores busy
    try:
        choice = threads.apply_threads(None)
        assert choice.threads == torch.get_num_threads() == 1
        assert "1 CPU thread" in choice.note and "train.threads=N" in choice.note
        assert threads.apply_threads(None).note == ""  # said once per process
        assert threads.apply_threads(3) == threads.ThreadChoice(3) and torch.get_num_threads() == 3
        assert threads.apply_threads(None) == threads.ThreadChoice(3)  # the caller's choice stays
        torch.set_num_threads(before)
        monkeypatch.setattr(threads, "_chosen", None)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        assert threads.apply_threads(None) == threads.ThreadChoice(before)  # OMP_NUM_THREADS decides
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- guards and resume


def test_fit_refuses_a_folder_that_holds_a_run_unless_resumed_or_overwritten(tmp_path):
    config = tiny_config()
    train(config, tmp_path, verbose=False)
    before = (tmp_path / "last.pt").read_bytes()
    parts = build_parts(config)

    def trainer(**kwargs) -> Trainer:
        return Trainer(parts.model, parts.train_set, parts.test_set, config, out_dir=tmp_path,
                       verbose=False, **kwargs)

    with pytest.raises(UserError, match=r"already holds a run \(last\.pt\).*overwrite=True"):
        trainer().fit()
    assert (tmp_path / "last.pt").read_bytes() == before
    resumed = trainer()
    resumed.resume(tmp_path / "last.pt")
    assert resumed.fit()["epochs"] == 1  # finished already: nothing more to train
    assert trainer(overwrite=True).fit()["epochs"] == 1


def test_resume_with_a_recipe_that_differs_takes_the_runs_own_config(tmp_path, capsys, monkeypatch):
    """The README's sequence: a run with --set, then the recipe alone with --resume."""
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "t3"
    run_set = ["--set", "model.T=3", "--set", "train.epochs=2"]
    assert main(["train", str(recipe), *run_set, "--out", str(out)]) == 0
    stopped = tmp_path / "stopped"  # the same run, stopped (as by SIGTERM) after its first epoch
    real_stop = Trainer._stop_if_requested

    def stop_after_epoch_1(self, saved):
        if self.epoch == 1:
            self._stop.signum = signal.SIGTERM
            monkeypatch.setattr(self.run, "stop_requested", lambda stop: True)
        real_stop(self, saved)

    monkeypatch.setattr(Trainer, "_stop_if_requested", stop_after_epoch_1)
    assert main(["train", str(recipe), *run_set, "--out", str(stopped)]) == 143
    monkeypatch.setattr(Trainer, "_stop_if_requested", real_stop)
    assert not (stopped / "summary.json").exists()
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(stopped), "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"resuming {stopped} with its own config.yaml ({recipe} differs in model.T, train.epochs" in said
    assert json.loads((stopped / "summary.json").read_text())["epochs"] == 2
    rows = (stopped / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in rows] == [1, 2]
    # and on the finished run: the note, then that it has finished
    assert main(["train", str(recipe), "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "with its own config.yaml" in said and "has already finished (2 of 2 epochs)" in said


def test_resume_of_a_finished_run_says_so_and_prints_its_summary(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    for argv in (["train", str(out), "--resume"], ["train", "--resume", str(out)],
                 ["train", str(recipe), "--out", str(out), "--resume"]):
        assert main(argv) == 0
        said = capsys.readouterr().out
        assert f"{out} has already finished (1 of 1 epochs): nothing to train" in said
        assert json.loads(said.split("Its summary.json:\n", 1)[1])["epochs"] == 1
    assert (out / "last.pt").read_bytes() == before
    assert main(["train", str(out)]) == 2  # a folder without --resume
    assert "is a folder: continue the run in it with `spikegrad train" in capsys.readouterr().err


def test_a_fresh_run_removes_an_earlier_summary(tmp_path):
    config = tiny_config()
    train(config, tmp_path, verbose=False)
    (tmp_path / "summary.json").write_text('{"epochs": 99}')
    parts = build_parts(config)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, out_dir=tmp_path,
                      verbose=False, overwrite=True)
    trainer.run.prepare(config, [])
    assert not (tmp_path / "summary.json").exists()  # written again only when the run ends


def test_a_stopped_train_names_the_command_that_continues_it(tmp_path, monkeypatch, capsys):
    import spikegrad.run

    def stopped(*args, **kwargs):
        raise TrainingStopped(15, tmp_path / "last.pt", "epoch 1, batch 2 (iteration 2)")

    monkeypatch.setattr(spikegrad.run, "train", stopped)
    assert main(["train", str(tiny_recipe(tmp_path)), "--out", str(tmp_path / "r")]) == 143
    assert f"continue with spikegrad train {tmp_path / 'r'} --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- eval, export, calibrate


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    train(tiny_config(**{"train.epochs": 2}), folder, verbose=False)
    return folder


def test_eval_of_a_run_folder_uses_its_best_checkpoint_and_prints_a_table(trained, capsys):
    assert main(["eval", str(trained), "--analysis"]) == 0
    out, err = capsys.readouterr()
    assert f"evaluating {trained / 'best.pt'} (its best test accuracy)" in err
    first, *rest = out.splitlines()
    assert first.startswith(f"{trained / 'best.pt'} (dspike, epoch ") and "accuracy" in first
    assert rest[1].split() == ["neuron", "layer", "rate", "dead", "saturated"]
    assert any(line.startswith("total") for line in rest) and "pJ per MAC" in out
    assert len(out.splitlines()) < 30  # a table, not ~110 lines of JSON
    assert main(["eval", str(trained), "--analysis", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((trained / "analysis.json").read_text())
    best = json.loads((trained / "summary.json").read_text())["best_test_acc"]
    assert printed["test_acc"] == pytest.approx(best)
    assert printed["analysis"]["neurons"].keys() == stored["neurons"].keys()


def test_outputs_into_a_missing_folder_are_refused_and_nothing_is_created(trained, tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    for argv in (["export", str(trained), "--out", str(missing / "x.nir")],
                 ["plot-gradients", str(trained), "--out", str(missing / "g.png")],
                 ["report", str(trained), "--out", str(missing / "r.html")],
                 ["calibrate", str(trained), "--method", "none", "--out", str(missing / "c.pt")],
                 ["fdg", str(trained), "--out", str(missing / "fdg")]):
        assert main(argv) == 2, argv
        assert "does not exist; create it first" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_fdg_without_matplotlib_stops_before_the_sweep(trained, monkeypatch, capsys):
    import importlib.util

    import spikegrad.alignment_report

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib"
                        else real(name, *a))
    monkeypatch.setattr(spikegrad.alignment_report, "analyse_checkpoint",
                        lambda *a, **k: pytest.fail("computed before checking for matplotlib"))
    assert main(["fdg", str(trained / "last.pt")]) == 2
    assert "fdg draws with matplotlib, which is not installed" in capsys.readouterr().err


def test_calibrate_runs_every_step_reports_three_accuracies_and_saves_the_model(trained, tmp_path, capsys):
    out = tmp_path / "calibrated.pt"
    # 1,433 training images in batches of 128 are 11 batches: 30 steps cycle the data
    assert main(["calibrate", str(trained / "last.pt"), "--method", "bptt", "--sigma", "0.3",
                 "--stuck-at-zero", "0.1", "--steps", "30", "--lr", "0.01", "--out", str(out),
                 "--json"]) == 0
    text = capsys.readouterr().out
    assert "σ=0.3" in text and "\\u03c3" not in text
    result = json.loads(text)
    assert result["steps"] == 30
    assert {"acc_fault_free", "acc_before", "acc_after"} <= result.keys()
    assert result["acc_fault_free"] == pytest.approx(
        json.loads((trained / "summary.json").read_text())["final_test_acc"])
    assert main(["eval", str(out), "--json"]) == 0  # the calibrated network, faults included
    assert json.loads(capsys.readouterr().out)["test_acc"] == pytest.approx(result["acc_after"])
    assert main(["calibrate", str(trained), "--method", "none", "--sigma", "0.3"]) == 0
    said = capsys.readouterr().out
    assert "without faults" in said and "with them" in said and "after calibration" in said
    assert main(["calibrate", str(trained), "--threshold-sigma", "0.1", "--out", str(out)]) == 2
    assert "threshold variation lives in the neurons" in capsys.readouterr().err


# --------------------------------------------------------------------------- the demo


@pytest.fixture
def tiny_demo(small_digits, monkeypatch):
    """The demo with its five rows on the small digits, narrow and short."""
    import spikegrad.demo as demo

    search = ("dspike.batch_size=16", "dspike.num_weights=8")  # refused where nothing searches
    small = ("model.width=0.25", "train.progress=false", "train.epochs=2")
    rows = [demo.DemoRow(r.folder, (*r.overrides, *small,
                                    *(search if "dspike.adaptive=true" in r.overrides else ())),
                         r.recipe, r.teacher_row)
            for r in demo.DEMO_ROWS if r.folder in ("ann", "dspike", "ltl-offline")]
    monkeypatch.setattr(demo, "DEMO_ROWS", rows)
    return demo


def test_the_demo_refuses_its_folder_then_resumes_or_overwrites(tiny_demo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    table = (out / "demo.txt").read_text()
    names = [s["name"] for s in json.loads((out / "demo.json").read_text())]
    assert names == ["digits-ann", "digits-dspike-adaptive", "digits-ltl-offline"]
    capsys.readouterr()
    assert main(["demo", "--out", str(out)]) == 2  # a second `make demo`
    err = capsys.readouterr().err
    assert "already holds a run" in err and "spikegrad demo --resume" in err and "--overwrite" in err
    # stop the second row half-way: its run stays, without summary.json, and so is demo.json
    (out / "dspike" / "summary.json").unlink()
    real_train = tiny_demo.train

    def stopping(config, folder, **kwargs):
        if Path(folder).name == "dspike":
            raise TrainingStopped(2, Path(folder) / "last.pt", "epoch 2")
        return real_train(config, folder, **kwargs)

    monkeypatch.setattr(tiny_demo, "train", stopping)
    assert main(["demo", "--out", str(out), "--resume"]) == 130
    assert f"continue with spikegrad demo --resume --out {out}" in capsys.readouterr().err
    assert not (out / "demo.json").exists()  # no stale table
    monkeypatch.setattr(tiny_demo, "train", real_train)
    assert main(["demo", "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "ann: digits-ann, finished earlier, kept" in said
    assert "dspike: digits-dspike-adaptive, continuing" in said
    assert (out / "demo.txt").read_text() == table  # the finished run's numbers, kept
    assert main(["demo", "--out", str(out), "--overwrite", "--resume"]) == 2
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0


def test_the_demo_into_a_folder_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["demo", "--quick", "--out", str(tmp_path / "file" / "demo")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to the demo folder" in err and "choose another --out" in err
    assert "Traceback" not in err
