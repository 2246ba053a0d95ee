"""Exact resume after SIGKILL / SIGTERM, safe checkpoint rotation, guards against bad steps."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spikegrad.checkpoint import atomic_torch_save, load_checkpoint, previous_path
from spikegrad.cli import main as cli_main
from spikegrad.config import load_config
from spikegrad.data.sampler import GlobalBatchSampler
from spikegrad.demo import recipe_path
from spikegrad.errors import TrainingDiverged, UserError
from spikegrad.nonfinite import CHECK_EVERY, FiniteGuard
from spikegrad.resume import (
    StopOnSignal,
    check_resume_config,
    config_differences,
    rng_state,
    set_rng_state,
)
from spikegrad.run import build_components, build_parts
from spikegrad.trainer import Component, StepOutput, Trainer

ITERS_PER_EPOCH = 45  # 1,433 training digits in batches of 32


def write_recipe(folder: Path, extra: str = "", **train) -> Path:
    """A tiny digits run: width 0.25, T = 2, three epochs, a checkpoint every 10 iterations;
    ``extra``: more YAML sections."""
    settings = {"epochs": 3, "threads": 1, "progress": False, "device": "cpu",
                "checkpoint_every": 10, **train}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(f"extends: {recipe_path('digits')}\nmodel: {{width: 0.25, T: 2}}\n"
                    f"train: {json.dumps(settings)}\n{extra}")
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "spikegrad", *args]


def cli_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=300, env=cli_env())


def stop_mid_epoch(args: list[str], out: Path, sig: int) -> tuple[subprocess.CompletedProcess, dict]:
    """Start training, wait for a mid-epoch checkpoint in the second epoch, send ``sig``."""
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen = load_checkpoint(out / "last.pt")
            if seen["epoch"] >= 1 and seen["progress"] is not None:
                break
        except UserError:  # not written yet
            pass
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), seen


def assert_same_run(a: Path, b: Path, epochs: int = 3) -> None:
    """Bitwise-equal weights, optimizer state and metrics (but the timings)."""
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert (ca["epoch"], ca["iteration"]) == (cb["epoch"], cb["iteration"])

    def rows(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                for line in lines]

    assert rows(a) == rows(b)
    assert len(rows(a)) == epochs


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The recipe and an uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(folder)
    proc = run_cli("train", str(recipe), "--out", str(folder / "run"))
    assert proc.returncode == 0, proc.stderr
    return recipe, folder / "run"


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(reference, tmp_path):
    recipe, uninterrupted = reference
    out = tmp_path / "run"
    killed, _ = stop_mid_epoch(["train", str(recipe), "--out", str(out)], out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] >= 1 and 0 < state["progress"]["batches"] < ITERS_PER_EPOCH
    assert state["iteration"] == state["epoch"] * ITERS_PER_EPOCH + state["progress"]["batches"]
    resumed = run_cli("train", str(recipe), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, out)


def test_sigterm_saves_exits_cleanly_and_resume_is_bitwise_identical(reference, tmp_path):
    recipe, uninterrupted = reference
    out = tmp_path / "run"
    stopped, seen = stop_mid_epoch(["train", str(recipe), "--out", str(out)], out, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] > seen["iteration"]  # saved on the signal, not the periodic one
    assert state["progress"] is not None and state["progress"]["batches"] > 0
    resumed = run_cli("train", "--out", str(out), "--resume")  # the run folder's own config
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, out)


def test_sigkill_then_resume_with_the_adaptive_temperature_and_shortcut_branches(tmp_path):
    """The methods' own state (Dspike temperature, shortcut branches and their momentum, the
    gradient records) survives a kill: the resumed run ends bitwise where an uninterrupted one
    does."""
    recipe = write_recipe(tmp_path, "dspike: {adaptive: true, num_weights: 16, batch_size: 32}\n"
                                    "shortcut: {enabled: true}\n"
                                    "diagnostics: {gradient_interval: 7}\n")
    uninterrupted = tmp_path / "uninterrupted"
    proc = run_cli("train", str(recipe), "--out", str(uninterrupted))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    killed, _ = stop_mid_epoch(["train", str(recipe), "--out", str(out)], out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "last.pt")
    assert set(state["components"]) == {"dspike", "shortcut", "gradient_diagnostics"}
    resumed = run_cli("train", str(recipe), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, out)
    ours, theirs = (load_checkpoint(run / "last.pt")["components"] for run in (out, uninterrupted))
    assert ours["dspike"] == theirs["dspike"]
    for key, value in theirs["shortcut"]["branches"].items():
        assert torch.equal(ours["shortcut"]["branches"][key], value), key
    assert (out / "gradients.jsonl").read_text() == (uninterrupted / "gradients.jsonl").read_text()


# --------------------------------------------------------------------------- in-process resume


class Crash(Exception):
    pass


class Jitter(Component):
    """A component with a private generator and counters: its state must survive a resume."""

    name = "jitter"

    def __init__(self, crash: tuple[str, int] | None = None) -> None:
        self.generator = torch.Generator().manual_seed(7)
        self.steps, self.crash, self.value = 0, crash, 0.0

    def on_epoch_start(self, trainer, epoch):
        if self.crash == ("epoch", epoch):
            raise Crash
        self.value = float(torch.rand((), generator=self.generator))
        return {"jitter": self.value}

    def on_step_end(self, trainer):
        self.steps += 1
        if self.crash == ("iteration", trainer.iteration):
            raise Crash

    def epoch_metrics(self, trainer):
        return {"jitter_steps": self.steps}

    def state_dict(self):
        return {"generator": self.generator.get_state(), "steps": self.steps, "value": self.value}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.steps, self.value = state["steps"], state["value"]


def tiny_trainer(out: Path, crash: tuple[str, int] | None = None, **overrides) -> Trainer:
    config = load_config(recipe_path("digits")).with_overrides({
        "model.width": 0.25, "model.T": 2, "train.epochs": 2, "train.threads": 1,
        "train.progress": False, "train.device": "cpu", "train.checkpoint_every": 10,
        "model.encoder": "poisson", **overrides,
    })
    parts = build_parts(config)
    from spikegrad.data import build_augmentation

    return Trainer(parts.model, parts.train_set, parts.test_set, config,
                   components=[Jitter(crash)], out_dir=out,
                   augment=build_augmentation(config.data.augment), model_args=parts.model_args,
                   verbose=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Uninterrupted in-process runs, one per number of DataLoader workers."""
    runs = {}

    def run(workers: int) -> Path:
        if workers not in runs:
            runs[workers] = tmp_path_factory.mktemp(f"workers{workers}")
            tiny_trainer(runs[workers], **{"data.num_workers": workers}).fit()
        return runs[workers]

    return run


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("crash,resumed_at,batches_done", [
    (("epoch", 1), ITERS_PER_EPOCH, None),  # after the first epoch's checkpoint
    (("iteration", 60), 50, 5),  # mid-epoch, just before the checkpoint of iteration 60
])
def test_resume_restores_components_rng_and_data_order(tmp_path, uninterrupted, workers, crash,
                                                       resumed_at, batches_done):
    """Poisson encoding and crop augmentation draw from the global RNG, the component from its
    own generator; with a DataLoader worker (persistent), the shuffle is drawn differently."""
    reference = uninterrupted(workers)
    with pytest.raises(Crash):
        tiny_trainer(tmp_path / "b", crash, **{"data.num_workers": workers}).fit()
    trainer = tiny_trainer(tmp_path / "b", **{"data.num_workers": workers})
    trainer.resume(tmp_path / "b" / "last.pt")
    assert trainer.iteration == resumed_at
    assert (trainer.progress and trainer.progress.batches) == batches_done
    trainer.fit()
    assert_same_run(reference, tmp_path / "b", epochs=2)
    assert trainer.components[0].steps == 2 * ITERS_PER_EPOCH


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    atomic_torch_save({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_global_batch_sampler_matches_a_shuffling_loader_and_shards_it():
    data = TensorDataset(torch.arange(103))
    plain = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))
    expected = [[int(i) for i in b[0]] for epoch in range(2) for b in plain]
    sampler = GlobalBatchSampler(103, 16, torch.Generator().manual_seed(5))
    loader = DataLoader(data, batch_sampler=sampler, generator=sampler.generator)
    assert [[int(i) for i in b[0]] for epoch in range(2) for b in loader] == expected
    # two processes: contiguous halves of each global batch (the short last one 4 + 3)
    shards = [GlobalBatchSampler(103, 16, torch.Generator().manual_seed(5), r, 2) for r in (0, 1)]
    first, second = (list(s) for s in shards)
    reference = list(GlobalBatchSampler(103, 16, torch.Generator().manual_seed(5)))
    assert [a + b for a, b in zip(first, second, strict=True)] == reference
    assert [len(b) for b in second][-1] == 3 and shards[0].global_size(6) == 7
    # resume: replay a pass from its start state, skipping the batches done
    sampler = GlobalBatchSampler(103, 16, torch.Generator().manual_seed(9))
    full = list(sampler)
    sampler.resume_at(sampler.epoch_start_state, 4)
    assert list(sampler) == full[4:]
    with pytest.raises(UserError, match="divisible by the number of processes"):
        GlobalBatchSampler(103, 15, torch.Generator(), 0, 2)


# --------------------------------------------------------------------------- safe checkpoints


def test_truncated_newest_checkpoint_gives_a_clear_error_and_the_previous_one_loads(
        reference, tmp_path, capsys):
    recipe, uninterrupted = reference
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    newest = out / "last.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match=r"cannot be read.*last\.prev\.pt"):
        load_checkpoint(newest)
    previous = load_checkpoint(previous_path(newest))  # the periodic save before the last
    assert previous["iteration"] == 130 and previous["progress"]["batches"] == 40
    assert cli_main(["train", str(recipe), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "--resume-from" in err
    assert cli_main(["train", str(recipe), "--out", str(out), "--resume-from",
                     str(previous_path(newest))]) == 0
    assert_same_run(uninterrupted, out)
    assert load_checkpoint(previous_path(newest))["iteration"] == 130  # the damaged file not kept


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, **{"train.epochs": 1})  # a checkpoint every 10 iterations
    real_save = torch.save
    calls = []

    def disk_full(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # last.pt of iteration 10 is written; then the disk is full
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=r"No space left on device; 'last.pt' keeps epoch 1, "
                                        r"batch 10 \(iteration 10\)"):
        trainer.fit()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 10
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary file left


def test_resume_refuses_a_config_that_changes_the_run(tmp_path):
    stored = load_config(recipe_path("digits")).to_dict()
    same_run = load_config(recipe_path("digits"), ["train.threads=2", "train.checkpoint_every=5",
                                                   "name=x", "dspike.max_stacked=64"])
    assert config_differences(stored, same_run) == []
    workers = load_config(recipe_path("digits"), ["data.num_workers=2"])  # another data order
    assert config_differences(stored, workers) == ["data.num_workers: 0 -> 2"]
    other = load_config(recipe_path("digits"), ["optim.lr=0.05", "model.T=6"])
    with pytest.raises(UserError, match=r"model\.T: 4 -> 6; optim\.lr: 0\.1 -> 0\.05"):
        check_resume_config(stored, other, "runs/x/last.pt")
    del stored["train"]["correct_rate"]  # a key an earlier spikegrad did not have: its default
    assert config_differences(stored, same_run) == []
    changed = load_config(recipe_path("digits"), ["train.correct_rate=0.5"])
    assert config_differences(stored, changed) == ["train.correct_rate: '<absent>' -> 0.5"]


# --------------------------------------------------------------------------- guards


class Poison(Component):
    """Makes the loss (or, with ``grad``, only the gradient; with ``inputs``, the input the
    network sees) non-finite at one iteration."""

    name = "poison"

    def __init__(self, at: int, grad: bool = False, inputs: bool = False) -> None:
        self.at, self.grad, self.inputs = at, grad, inputs

    def compute_loss(self, trainer, inputs, targets):
        if self.inputs and trainer.iteration == self.at:
            inputs = inputs * float("inf")
        outputs = trainer.model(inputs)
        if trainer.iteration == self.at:
            if self.grad:
                outputs.register_hook(lambda g: torch.full_like(g, float("inf")))
            else:
                outputs = outputs * float("nan")
        return StepOutput(trainer.default_loss(outputs, targets), outputs.mean(0))


def poisoned_trainer(out: Path, poison: Poison, **overrides) -> Trainer:
    config = load_config(recipe_path("digits")).with_overrides({
        "model.width": 0.25, "model.T": 2, "train.epochs": 2, "train.threads": 1,
        "train.progress": False, "train.device": "cpu", **overrides,
    })
    parts = build_parts(config)
    return Trainer(parts.model, parts.train_set, parts.test_set, config, components=[poison],
                   out_dir=out, model_args=parts.model_args, verbose=False)


@pytest.mark.parametrize("grad", [False, True])
def test_nonfinite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path, grad):
    trainer = poisoned_trainer(tmp_path, Poison(ITERS_PER_EPOCH + 3, grad))
    what = "gradient norm is (inf|nan)" if grad else "loss is nan"
    with pytest.raises(TrainingDiverged, match=rf"{what} in step 49 \(epoch 2, batch 4\); "
                                                r".*last\.pt' keeps the last good state: the end of "
                                                r"epoch 1 \(iteration 45\)"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["iteration"] == ITERS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("every,stops_at", [(0, 2 * CHECK_EVERY), (5, ITERS_PER_EPOCH + 5)])
def test_a_nonfinite_step_read_later_from_the_device_names_the_same_step(tmp_path, grad, every,
                                                                        stops_at):
    """The guard CUDA runs use (forced here on the CPU): the flag is read every CHECK_EVERY
    steps and before any checkpoint; the error names the bad step, no checkpoint follows it."""
    trainer = poisoned_trainer(tmp_path, Poison(ITERS_PER_EPOCH + 3, grad),
                               **{"train.checkpoint_every": every})
    trainer._guard = FiniteGuard(torch.device("cpu"))
    what = "gradient norm is (inf|nan)" if grad else "loss is nan"
    with pytest.raises(TrainingDiverged, match=rf"{what} in step 49 \(epoch 2, batch 4\); "
                                                r".*last\.pt' keeps the last good state: the end of "
                                                r"epoch 1 \(iteration 45\)"):
        trainer.fit()
    assert trainer.iteration == stops_at  # where the flag was read
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["iteration"] == ITERS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_nonfinite_step_read_from_the_device_at_the_epoch_end_stops_before_its_metrics(tmp_path):
    """A bad step after the epoch's last periodic read is caught at the epoch's end: no
    evaluation, metrics line or checkpoint follows it."""
    trainer = poisoned_trainer(tmp_path, Poison(CHECK_EVERY + 5), **{"train.checkpoint_every": 0})
    trainer._guard = FiniteGuard(torch.device("cpu"))
    with pytest.raises(TrainingDiverged, match=rf"loss is nan in step {CHECK_EVERY + 6} \(epoch 1, "
                                                rf"batch {CHECK_EVERY + 6}\); no checkpoint was written"):
        trainer.fit()
    assert trainer.iteration == ITERS_PER_EPOCH
    assert not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text()
    assert not (tmp_path / "last.pt").exists()


def test_the_guard_records_the_first_bad_step_only():
    guard = FiniteGuard(torch.device("cpu"))
    assert guard.first_bad() is None  # nothing recorded: nothing to read
    guard.record(0, torch.tensor(1.0), torch.tensor(2.0))
    assert guard.first_bad() is None
    guard.record(1, torch.tensor(1.0), torch.tensor(float("inf")))
    guard.record(2, torch.tensor(float("nan")), None)
    assert guard.first_bad() == (1, 1.0, float("inf"))


def test_nonfinite_step_can_be_skipped_and_counted(tmp_path):
    trainer = poisoned_trainer(tmp_path, Poison(ITERS_PER_EPOCH + 3), **{"train.nonfinite": "skip"})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [0, 1]
    assert trainer.iteration == 2 * ITERS_PER_EPOCH  # the schedule still advanced
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not all(torch.equal(before[k], after[k]) for k in before)


class Spy(Poison):
    """A :class:`Poison` that notes each step's iteration, loss, hits and batch size."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.steps: list[tuple[int, float, int, int]] = []

    def compute_loss(self, trainer, inputs, targets):
        out = super().compute_loss(trainer, inputs, targets)
        hits = int((out.logits.argmax(1) == targets).sum())
        self.steps.append((trainer.iteration, out.loss.item(), hits, targets.shape[0]))
        return out


@pytest.mark.parametrize("nonfinite,guard", [("stop", False), ("stop", True), ("skip", False)])
def test_epoch_metrics_are_the_sums_of_the_steps_taken(tmp_path, nonfinite, guard):
    """``train_loss`` is the sample-weighted mean loss and ``train_acc`` the hits of the steps
    taken (the running sums read at every mid-epoch checkpoint and at the end, with the
    device-side guard too); a skipped step counts in neither."""
    at = 20 if nonfinite == "skip" else -1
    spy = Spy(at)
    trainer = poisoned_trainer(tmp_path, spy, **{"train.nonfinite": nonfinite, "train.epochs": 1,
                                                 "train.checkpoint_every": 7})
    if guard:
        trainer._guard = FiniteGuard(torch.device("cpu"))
    trainer.fit()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    taken = [s for s in spy.steps if s[0] != at]
    assert len(taken) == ITERS_PER_EPOCH - (nonfinite == "skip")
    loss_sum, seen = 0.0, 0
    for _, loss, _, n in taken:
        loss_sum, seen = loss_sum + loss * n, seen + n
    assert row["train_loss"] == loss_sum / seen  # the same float64 sum, in the same order
    assert row["train_acc"] == sum(hits for _, _, hits, _ in taken) / seen
    assert row.get("nonfinite_steps", 0) == (nonfinite == "skip")


def test_epoch_progress_sums_survive_reads_and_a_checkpoint_round_trip():
    """Reading the running sums (a mid-epoch checkpoint) neither loses nor repeats a batch,
    and a progress restored from its dict goes on from the stored sums."""
    from spikegrad.resume import EpochProgress

    gen = torch.Generator().manual_seed(0)
    steps = []
    for i in range(6):
        n = 5 if i == 5 else 8
        logits, targets = torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        steps.append((None if i == 2 else StepOutput(torch.rand((), generator=gen) * 2, logits), targets))
    whole = EpochProgress(row={"epoch": 1})
    for out, targets in steps:
        whole.record(out, targets)
    part = EpochProgress(row={"epoch": 1})
    for out, targets in steps[:4]:
        part.record(out, targets)
    part.flush()
    part = EpochProgress.from_dict(part.to_dict())
    for out, targets in steps[4:]:
        part.record(out, targets)
    loss_sum = 0.0
    for out, targets in steps:
        loss_sum += out.loss.item() * len(targets) if out is not None else 0.0
    hits = sum(int((out.logits.argmax(1) == t).sum()) for out, t in steps if out is not None)
    expected = {"row": {"epoch": 1}, "batches": 6, "loss_sum": loss_sum, "correct": hits,
                "seen": 4 * 8 + 5, "nonfinite": 1, "seconds": 0.0}
    assert whole.to_dict() == expected and part.to_dict() == expected
    assert part.to_dict() == expected  # reading again changes nothing


def test_later_labels_are_checked_on_the_host_once_before_their_step(monkeypatch):
    """The first batch's labels are checked against the model's output; every later batch's
    on the host before the transfer, once (not again in the step), and a bad one stops
    training before its step."""
    import spikegrad.trainer as trainer_module
    from spikegrad.errors import check_labels

    calls = []

    def counting(targets, num_classes, name):
        calls.append((targets.device.type, num_classes))
        check_labels(targets, num_classes, name)

    monkeypatch.setattr(trainer_module, "check_labels", counting)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Unflatten(0, (1, -1)))
    config = load_config(None, ["train.epochs=1", "train.progress=false", "train.device=cpu"])
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    trainer = Trainer(model, data, data, config, verbose=False)
    trainer.progress = trainer._start_epoch(0)
    x = torch.randn(4, 4)
    trainer._train_batch(x, torch.tensor([0, 1, 2, 0]))
    trainer._train_batch(x, torch.tensor([2, 1, 0, 0]))
    assert calls == [("cpu", 3), ("cpu", 3)] and trainer.iteration == 2
    with pytest.raises(UserError, match=r"training labels must lie in \[0, 3\).*found 7"):
        trainer._train_batch(x, torch.tensor([0, 7, 1, 2]))
    assert trainer.iteration == 2 and trainer.progress.batches == 2


class HalfNaN(nn.Module):
    """Logits ``[T=1, B, 2]``: the input itself, NaN for the samples whose first value is < 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] < 0, torch.nan, x)[None]


def test_nonfinite_test_logits_are_refused_or_counted_as_wrong():
    from spikegrad.evaluation import evaluate_model

    x = torch.tensor([[2.0, 1.0], [1.0, 3.0], [-1.0, 0.0], [0.5, 0.0]])
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1, 0, 1])), batch_size=3)
    with pytest.raises(UserError, match="logits on the test set are NaN or inf"):
        evaluate_model(HalfNaN(), loader, torch.device("cpu"))
    result = evaluate_model(HalfNaN(), loader, torch.device("cpu"), nonfinite="count")
    # samples 0 and 1 right, 2 NaN (wrong, out of the loss), 3 wrong
    expected_loss = nn.functional.cross_entropy(x[[0, 1, 3]], torch.tensor([0, 1, 1])).item()
    assert result["test_acc"] == 0.5 and result["nonfinite_samples"] == 1
    assert result["test_loss"] == pytest.approx(expected_loss)
    nan_only = DataLoader(TensorDataset(x[2:3], torch.tensor([0])))
    assert evaluate_model(HalfNaN(), nan_only, torch.device("cpu"), nonfinite="count")["test_loss"] is None


def test_skipping_nonfinite_steps_trains_on_when_the_test_logits_go_nonfinite(tmp_path):
    """With ``train.nonfinite: skip`` a learning rate of 1e12 leaves weights whose test logits
    are infinite: the epoch still ends, those samples counted as wrong."""
    trainer = poisoned_trainer(tmp_path, Poison(-1), **{"train.nonfinite": "skip", "optim.lr": 1e12,
                                                       "train.epochs": 1})
    trainer.fit()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["nonfinite_steps"] > 0 and row["nonfinite_samples"] > 0
    assert row["test_acc"] <= 1 - row["nonfinite_samples"] / len(trainer.test_loader.dataset)


def test_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    trainer = poisoned_trainer(blocker / "run", Poison(-1))
    with pytest.raises(UserError, match="cannot write to the run folder"):
        trainer.fit()
    assert trainer.iteration == 0


def test_stop_on_signal_defers_the_first_and_honours_a_second_sigint():
    previous = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_bad_labels_and_mismatched_samples_are_explained():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Unflatten(0, (1, -1)))
    config = load_config(None, ["train.epochs=1", "train.progress=false", "train.device=cpu"])

    def fit(x, y):
        data = TensorDataset(x, y)
        Trainer(model, data, data, config, verbose=False).fit()

    with pytest.raises(UserError, match=r"must lie in \[0, 3\).*found 7"):
        fit(torch.randn(8, 4), torch.tensor([0, 1, 2, 7, 0, 1, 2, 0]))
    with pytest.raises(UserError, match="integer class indices, got dtype float32"):
        fit(torch.randn(8, 4), torch.rand(8))
    with pytest.raises(UserError, match=r"shape \[B\], got shape \(8, 3\)"):
        fit(torch.randn(8, 4), torch.zeros(8, 3, dtype=torch.long))
    with pytest.raises(UserError, match=r"cannot take the first training batch \(inputs of shape "
                                        r"\(8, 5\)\).*channels"):
        fit(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))


def test_missing_dataset_files_point_to_data_root():
    from spikegrad.data import register_dataset

    @register_dataset("test_files_on_disk")
    def files_on_disk(root="data/mine"):
        return torch.load(f"{root}/train.pt"), torch.load(f"{root}/test.pt"), None

    config = load_config(None, ["data.name=test_files_on_disk", "data.root=/nonexistent"])
    with pytest.raises(UserError, match=r"dataset 'test_files_on_disk': .*nonexistent/train\.pt.*"
                                        r"set data\.root to the folder that holds its files"):
        build_parts(config)


class Exploit:
    def __reduce__(self):
        return (print, ("this must never print",))


def test_a_checkpoint_holding_code_is_refused_by_name(tmp_path, capsys):
    torch.save({"format": "spikegrad-checkpoint", "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"holds a Python object \(print\).*could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "never print" not in capsys.readouterr().out


def test_resume_into_another_model_is_refused_with_the_differences(reference):
    recipe, uninterrupted = reference
    wider = load_config(recipe, ["model.width=0.5"])
    parts = build_parts(wider)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, wider, verbose=False,
                      components=build_components(wider, parts.model))
    with pytest.raises(UserError, match=r"cannot resume .*model\.width: 0\.25 -> 0\.5"):
        trainer.resume(uninterrupted / "last.pt")
    with pytest.raises(UserError, match=r"do not fit this model \(another architecture\?\)"):
        trainer.resume(uninterrupted / "last.pt", allow_config_change=True)


def test_a_process_with_live_loader_workers_still_exits():
    """Workers ignore SIGINT only: at exit, multiprocessing ends them with SIGTERM."""
    script = (
        "import torch\n"
        "from torch import nn\n"
        "from torch.utils.data import TensorDataset\n"
        "from spikegrad import Config, Trainer\n"
        "data = TensorDataset(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))\n"
        "cfg = Config().with_overrides({'data.num_workers': 1, 'data.batch_size': 8,\n"
        "                               'train.device': 'cpu'})\n"
        "trainer = Trainer(nn.Linear(4, 2), data, data, cfg, verbose=False)\n"
        "next(iter(trainer.train_loader))  # persistent workers, left running\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr


def test_a_skipped_step_leaves_the_batch_norm_statistics_as_they_were(tmp_path):
    """An infinite input reaches batch norm in the forward pass; skipping the step must also
    undo its update of the running statistics."""
    trainer = poisoned_trainer(tmp_path, Poison(ITERS_PER_EPOCH + 3, inputs=True),
                               **{"train.nonfinite": "skip", "train.epochs": 2})
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [0, 1]
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for k, v in saved.items() if "running" in k)
    assert rows[-1]["test_acc"] > 0.5


def test_an_empty_checkpoint_file_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"cannot be read \(truncated.*EOFError"):
        load_checkpoint(tmp_path / "last.pt")


def test_training_into_a_folder_that_holds_a_run_needs_resume_or_overwrite(reference, capsys):
    recipe, uninterrupted = reference
    before = (uninterrupted / "last.pt").read_bytes()
    assert cli_main(["train", str(recipe), "--out", str(uninterrupted)]) == 2
    assert "already holds a run (last.pt); continue it with --resume, start it over with " \
        "--overwrite" in capsys.readouterr().err
    assert (uninterrupted / "last.pt").read_bytes() == before


def test_a_checkpoint_written_by_an_earlier_spikegrad_resumes_exactly(tmp_path):
    """``tests/data/checkpoint_v1``: a run stopped mid-epoch (iteration 15 of 24) by the
    spikegrad of ``make_fixture.py`` there, with the dspike, shortcut and gradient-diagnostics
    components; resumed here, it ends where that spikegrad's uninterrupted run ended."""
    fixture = Path(__file__).resolve().parent / "data" / "checkpoint_v1"
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "gradients.jsonl"):
        shutil.copy(fixture / name, out / name)
    assert load_checkpoint(out / "last.pt")["iteration"] == 15
    assert cli_main(["train", "--resume", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in
                (fixture / "uninterrupted_metrics.jsonl").read_text().splitlines()]
    assert rows[0] == json.loads((fixture / "metrics.jsonl").read_text())  # kept as written
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "dspike_temperature",
                "shortcut_lambda", "firing_rate", "sops"):
        assert rows[1][key] == pytest.approx(expected[1][key], rel=1e-4, abs=1e-6), key
    ours = [json.loads(line) for line in (out / "gradients.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in
              (fixture / "uninterrupted_gradients.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in ours] == [r["iteration"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["norms"] == pytest.approx(b["norms"], rel=1e-4, abs=1e-9)
