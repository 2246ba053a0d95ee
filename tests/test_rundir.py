"""The run folder's bookkeeping, on its own: files, checkpoint rotation, resume checks."""

import json

import pytest
import torch
from torch import nn

from spikegrad.checkpoint import load_checkpoint
from spikegrad.config import Config, load_config
from spikegrad.distributed import DistributedContext
from spikegrad.errors import UserError
from spikegrad.resume import EpochProgress, StopOnSignal
from spikegrad.rundir import RunFolder


def test_without_a_folder_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunFolder(None, DistributedContext())
    assert not run.enabled and not run.writes and run.local_path is None and run.last_checkpoint is None
    run.prepare(Config(), [])
    run.append_metrics({"epoch": 1})
    run.write_summary({"method": "x"})
    assert list(tmp_path.iterdir()) == []
    assert run.last_good_state() == "no checkpoint was written yet"


def test_prepare_append_and_summary(tmp_path):
    run = RunFolder(tmp_path / "run", DistributedContext())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.prev.pt").write_bytes(b"an older run's")
    run.prepare(Config(name="x"), [{"epoch": 1, "test_acc": 0.5}])
    assert load_config(tmp_path / "run" / "config.yaml") == Config(name="x")
    assert not (tmp_path / "run" / "last.prev.pt").exists()  # a fresh run has no fallback
    run.append_metrics({"epoch": 2, "test_acc": 0.75})
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    run.write_summary({"method": "dspike", "T": 4})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"method": "dspike", "T": 4}


def test_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write to the run folder"):
        RunFolder(tmp_path / "file" / "run", DistributedContext()).prepare(Config(), [])


def test_checkpoints_rotate_and_a_resume_checks_the_config(tmp_path):
    run = RunFolder(tmp_path, DistributedContext())
    model = nn.Linear(2, 2)
    state = {"config": Config().to_dict(), "iteration": 1}
    run.save_checkpoint(model, None, state, "the end of epoch 1 (iteration 1)", best=True)
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt"}
    run.save_checkpoint(model, None, {**state, "iteration": 2}, "the end of epoch 2 (iteration 2)")
    assert load_checkpoint(tmp_path / "last.prev.pt")["iteration"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2
    assert run.last_good_state().endswith("keeps the last good state: the end of epoch 2 (iteration 2)")
    assert run.read_checkpoint(tmp_path / "last.pt", Config())["iteration"] == 2
    with pytest.raises(UserError, match=r"cannot resume .*train\.epochs: 10 -> 3"):
        run.read_checkpoint(tmp_path / "last.pt", Config().with_overrides({"train.epochs": 3}))
    other = RunFolder(tmp_path / "other", DistributedContext())
    other.resumed_from(tmp_path / "last.pt", "x")  # from another folder's file: not kept as previous
    other.save_checkpoint(model, None, state, "y")
    assert not (tmp_path / "other" / "last.prev.pt").exists()


def test_collectives_of_one_process_are_local():
    run = RunFolder(None, DistributedContext())
    progress = EpochProgress(row={"epoch": 1}, batches=2, loss_sum=3.0, correct=4, seen=5)
    assert run.progress_totals(progress)["loss_sum"] == 3.0 and run.progress_totals(None) is None
    assert len(run.rng_states()) == 1 and torch.equal(run.rng_states()[0]["torch"], torch.get_rng_state())
    stop = StopOnSignal(enabled=False)
    stop.signum = 15
    assert not run.stop_requested(stop)  # only while a folder can take the save


# ------------------------------------------------------------------ the guard, in the caller's terms


def test_the_guard_names_the_ways_out_in_the_callers_terms(tmp_path):
    from spikegrad.rundir import CLI_TERMS, PYTHON_TERMS, TRAINER_TERMS, check_destination

    run = tmp_path / "run"
    run.mkdir()
    check_destination(run, None, False, PYTHON_TERMS)  # an empty folder is free
    (run / "metrics.jsonl").write_text("")
    expected = {
        CLI_TERMS: "continue it with --resume, start it over with --overwrite, or choose another --out",
        PYTHON_TERMS: f"continue it with resume_from={str(run / 'last.pt')!r}, start it over with "
                      "overwrite=True, or choose another out_dir",
        TRAINER_TERMS: f"continue it with trainer.resume({str(run / 'last.pt')!r}) before fit(), start it "
                       "over with Trainer(..., overwrite=True), or choose another out_dir",
    }
    for terms, ways in expected.items():
        with pytest.raises(UserError) as info:
            check_destination(run, None, False, terms)
        assert str(info.value) == f"{str(run)!r} already holds a run (metrics.jsonl); {ways}"
    check_destination(run, run / "last.pt", False, PYTHON_TERMS)  # continuing it
    check_destination(run, None, True, PYTHON_TERMS)  # replacing it
    with pytest.raises(UserError, match=r"overwrite=True would delete .*drop overwrite=True"):
        check_destination(run, run / "last.pt", True, PYTHON_TERMS)
    with pytest.raises(UserError, match=r"own folder \(out_dir='.*other'\), choose an empty out_dir, or "
                                        r"replace that run with overwrite=True"):
        check_destination(run, tmp_path / "other" / "last.pt", False, PYTHON_TERMS)


def test_spikegrad_train_refuses_a_folder_holding_another_run_before_building_anything(tmp_path,
                                                                                       monkeypatch):
    import spikegrad.run as run_module
    from spikegrad import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: older\n")
    monkeypatch.setattr(run_module, "build_parts", lambda config: pytest.fail("built before the guard"))
    with pytest.raises(UserError, match=r"already holds a run \(config\.yaml\); continue it with "
                                        r"resume_from=.*overwrite=True.*out_dir"):
        train(Config(), run, verbose=False)
    assert (run / "config.yaml").read_text() == "name: older\n"


def test_run_state_and_finished_summary_read_the_checkpoint(tmp_path):
    from spikegrad.rundir import finished_summary, run_state

    config = Config().with_overrides({"train.epochs": 2})
    run = RunFolder(tmp_path, DistributedContext())
    assert run_state(tmp_path, config) == ("none", [])
    model = nn.Linear(2, 2)
    state = {"config": config.to_dict(), "epoch": 1, "iteration": 3, "progress": None}
    run.save_checkpoint(model, None, state, "the end of epoch 1")
    (tmp_path / "summary.json").write_text(json.dumps({"epochs": 2}))  # a stale one decides nothing
    assert run_state(tmp_path, config) == ("stopped", []) and finished_summary(tmp_path, config) is None
    run.save_checkpoint(model, None, {**state, "epoch": 2}, "the end of epoch 2")
    assert run_state(tmp_path, config) == ("finished", [])
    assert finished_summary(tmp_path, config) == {"epochs": 2}
    state, differences = run_state(tmp_path, config.with_overrides({"optim.lr": 0.5}))
    assert state == "other" and differences and differences[0].startswith("optim.lr")
    (tmp_path / "summary.json").unlink()
    assert finished_summary(tmp_path, config) is None  # finished, but its summary is written again


def test_a_folder_locked_by_another_process_is_refused_in_the_callers_terms(tmp_path, monkeypatch):
    import subprocess
    import sys

    from spikegrad import rundir, runlock

    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spikegrad import runlock; "
         f"runlock.acquire({str(folder)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(runlock, "WAIT_SECONDS", 0.1)
        for terms, way_out in [(rundir.CLI_TERMS, "--out"), (rundir.PYTHON_TERMS, "out_dir")]:
            with pytest.raises(UserError, match="in use by another trainer") as caught:
                rundir.take(folder, overwrite=False, terms=terms)
            assert f"PID {holder.pid} " in str(caught.value)
            assert str(caught.value).endswith(f"choose another {way_out}")
        assert runlock.holder(folder) is not None
    finally:
        holder.kill()
        holder.wait()
