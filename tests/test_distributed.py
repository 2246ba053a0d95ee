"""Two processes (gloo, CPU) under torchrun against one process at the same global batch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from spikegrad.checkpoint import load_checkpoint, load_model
from spikegrad.config import Config, from_dict
from spikegrad.data import build_datasets
from spikegrad.demo import recipe_path
from spikegrad.trainer import evaluate_model
from tests import ddp_worker

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone`` (a free port, one node); a run that
    takes longer than ``timeout`` seconds (a process left waiting) fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), *args], capture_output=True, text=True, timeout=timeout, env=env,
    )


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> tuple[Path, Path]:
    """tests/ddp_worker.py's runs on one process and on two (torchrun, gloo)."""
    folder = tmp_path_factory.mktemp("ddp")
    proc = torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(folder / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_worker.main(str(folder / "one"))
    return folder / "one", folder / "two"


@pytest.mark.parametrize("run", ["trainer", "component", "shortcut"])
def test_two_processes_match_one_process_at_the_same_global_batch(one_and_two, run):
    """A network without batch norm: the two runs differ only by floating-point summation order.

    ``trainer``: DDP around the trainer's loss; ``component``: a component back-propagates its
    own loss and the gradients are averaged explicitly; ``shortcut``: a shortcut branch, whose
    parameters live outside the model, trains with it. 117 samples in global batches of 32:
    the last step splits 21 samples 11 + 10, which the weighting n_r·W/n makes exact (without
    it the weights differ by up to 2e-3 here).
    """
    one, two = (folder / run for folder in one_and_two)
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and a["iteration"] == b["iteration"] == 12
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6)
    if run == "shortcut":
        for key, value in a["components"]["shortcut"]["branches"].items():
            torch.testing.assert_close(b["components"]["shortcut"]["branches"][key], value,
                                       rtol=0, atol=1e-6)
    for a, b in zip(rows(one), rows(two), strict=True):
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
        assert a["firing_rate"] == pytest.approx(b["firing_rate"], rel=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)


def test_cli_under_torchrun_writes_once_and_reduces_metrics_over_processes(tmp_path):
    """The digits CNN has batch norm (per process over T·B/2 samples), so no comparison of
    weights with one process here; the evaluation is checked against a single-process one."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"extends: {recipe_path('digits')}\nmodel: {{width: 0.25, T: 2}}\n"
                      "data: {batch_size: 64}\n"
                      "train: {epochs: 1, threads: 1, progress: false, device: cpu}\n")
    out = tmp_path / "run"
    proc = torchrun("-m", "spikegrad", "train", str(recipe), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"method"') == 1  # only rank 0 prints the summary
    assert proc.stdout.count("epoch   1/1") == 1
    (row,) = rows(out)
    model, payload = load_model(out / "last.pt")
    assert payload["world_size"] == 2
    config = from_dict(Config, payload["config"])
    _, test_set, _ = build_datasets(config.data.name)
    single = evaluate_model(model, DataLoader(test_set, batch_size=100), torch.device("cpu"))
    assert row["test_acc"] == single["test_acc"]  # the losses: float32 sums in other batches
    assert row["test_loss"] == pytest.approx(single["test_loss"], rel=1e-6)
    assert row["firing_rate"] == pytest.approx(single["firing_rate"], rel=1e-6)


def test_a_user_error_under_torchrun_is_the_root_cause_in_its_failure_summary(tmp_path):
    """torchrun's summary shows the error file a process wrote; without one it says
    ``error_file: <N/A>`` and the cause is only somewhere in the interleaved stderr."""
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("train: {epochz: 1}\n")
    proc = torchrun("-m", "spikegrad", "train", str(recipe), "--out", str(tmp_path / "run"))
    assert proc.returncode != 0
    root_cause = proc.stderr.split("Root Cause")[1]
    assert re.search(r"traceback : spikegrad: error \(rank [01]\): unknown config key 'train\.epochz' "
                     r"\(did you mean 'train\.epochs'\?\)", root_cause), proc.stderr[-3000:]
    assert "<N/A>" not in proc.stderr
    assert not (tmp_path / "run").exists()
