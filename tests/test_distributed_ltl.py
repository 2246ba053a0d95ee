"""Local tandem learning under torchrun (gloo, CPU): two processes against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spikegrad.checkpoint import load_checkpoint
from spikegrad.demo import recipe_path
from tests import ddp_ltl_worker
from tests.test_distributed import ROOT, rows, torchrun

pytestmark = pytest.mark.slow  # a torchrun of two LTL runs (about 12 s), and one of spikegrad train


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> tuple[Path, Path]:
    """tests/ddp_ltl_worker.py's runs on one process and on two (torchrun, gloo)."""
    folder = tmp_path_factory.mktemp("ddp_ltl")
    proc = torchrun(str(ROOT / "tests" / "ddp_ltl_worker.py"), str(folder / "two"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_ltl_worker.main(str(folder / "one"))
    return folder / "one", folder / "two"


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_ltl_on_two_processes_matches_one_process_at_the_same_global_batch(one_and_two, mode):
    """LTL back-propagates each unit's local loss (and, online, each time step's) itself; the
    gradients are averaged over processes after the step, each weighted n_r·W/n, and each
    unit's target is normalised by the percentile of the whole global batch's teacher
    activations (gathered from both processes). A student without batch norm: the runs differ
    only by summation order, here by at most 3e-6 (offline) and 3e-7 (online) in a weight
    after 8 steps; with the percentile of each process's half instead, by 5e-3 and 4e-4."""
    one, two = (folder / mode for folder in one_and_two)
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert b["world_size"] == 2 and a["iteration"] == b["iteration"] == 8
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-5)
    for a, b in zip(rows(one), rows(two), strict=True):
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6)
        assert a["ltl_layer_losses"].keys() == b["ltl_layer_losses"].keys()
        for name, loss in a["ltl_layer_losses"].items():
            assert b["ltl_layer_losses"][name] == pytest.approx(loss, rel=1e-5)


def test_spikegrad_train_under_torchrun_trains_the_ltl_teacher_recipe_first(tmp_path):
    """digits_ltl trains its ANN teacher (on both processes) into <run>/teacher, then the
    student; the teacher's train() leaves the process group to the student's (it shut it
    down and the student hung re-joining it). Only rank 0 says it trains the teacher."""
    recipe = tmp_path / "ltl.yaml"
    short = ["model.width=0.25", "train.epochs=1", "train.threads=1", "train.progress=false",
             "train.device=cpu", "data.batch_size=64"]
    recipe.write_text(f"extends: {recipe_path('digits_ltl')}\nmodel: {{width: 0.25, T: 2}}\n"
                      "data: {batch_size: 64}\n"
                      "train: {epochs: 1, threads: 1, progress: false, device: cpu}\n"
                      f"ltl: {{teacher_set: {json.dumps(['model.kind=ann', 'name=digits-ann', *short])}}}\n")
    out = tmp_path / "run"
    proc = torchrun("-m", "spikegrad", "train", str(recipe), "--out", str(out), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== LTL teacher: training") == 1
    assert proc.stdout.count('"method": "ltl-offline"') == 1
    assert load_checkpoint(out / "teacher" / "last.pt")["world_size"] == 2
    student = load_checkpoint(out / "last.pt")
    assert student["world_size"] == 2 and student["method"] == "ltl-offline"
