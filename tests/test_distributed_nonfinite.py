"""A non-finite step on one process only, under torchrun (gloo, CPU), against one process.

tests/ddp_nonfinite_worker.py makes the loss infinite for one sample that only rank 1 gets (in
step 2), with every gradient finite, so rank 0 sees nothing wrong itself. With one process the
same sample makes the whole global batch's loss infinite in the same step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from spikegrad.checkpoint import load_checkpoint
from tests import ddp_nonfinite_worker
from tests.test_distributed import ROOT, torchrun

pytestmark = pytest.mark.slow  # one torchrun of five short runs and a CLI run (about 15 s)

STEP = (r"the loss is inf{} in step 2 \(epoch 1, batch 2\); '{}' keeps the last good state: "
        r"epoch 1, batch 1 \(iteration 1\)")


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> tuple[Path, Path]:
    """The worker's runs on one process and on two; a process left waiting in a collective
    would end in the timeout, not here."""
    folder = tmp_path_factory.mktemp("ddp_nonfinite")
    proc = torchrun(str(ROOT / "tests" / "ddp_nonfinite_worker.py"), str(folder / "two"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_nonfinite_worker.main(str(folder / "one"))
    return folder / "one", folder / "two"


def result(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def weights(folder: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=atol)


@pytest.mark.parametrize("run", ["trainer-stop", "component-stop", "guard-stop"])
def test_a_nonfinite_loss_on_one_process_stops_every_process_at_the_same_step(one_and_two, run):
    """``stop``: both processes raise the same error naming step 2 and rank 1, at the same
    iteration as one process (the guard read from the device: at the next checkpoint, before
    writing it); rank 0's last.pt is the state after step 1, as one process's is."""
    one, two = (folder / run for folder in one_and_two)
    single, ranks = result(one), [result(two, r) for r in (0, 1)]
    assert re.search(STEP.format("", re.escape(str(one / "last.pt"))), single["error"])
    assert ranks[0]["error"] == ranks[1]["error"]
    assert re.search(STEP.format(" on process 1", re.escape(str(two / "last.pt"))), ranks[0]["error"])
    stopped_at = 2 if run == "guard-stop" else 1
    assert single["iteration"] == ranks[0]["iteration"] == ranks[1]["iteration"] == stopped_at
    assert_same_weights(weights(two, 0), weights(two, 1), atol=0)  # in memory, on both processes
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert a["iteration"] == b["iteration"] == 1 and b["world_size"] == 2
    assert_same_weights(a["model"], b["model"], atol=1e-6)


@pytest.mark.parametrize("run", ["trainer-skip", "component-skip"])
def test_a_nonfinite_loss_on_one_process_is_skipped_by_every_process(one_and_two, run):
    """``skip``: every process skips the same steps (the sample's in both epochs), so the
    weights stay the same on both and match one process's; each step is counted once."""
    one, two = (folder / run for folder in one_and_two)
    single, ranks = result(one), [result(two, r) for r in (0, 1)]
    assert single["error"] is None and ranks[0]["error"] is None and ranks[1]["error"] is None
    assert single["nonfinite_steps"] == ranks[0]["nonfinite_steps"] == ranks[1]["nonfinite_steps"] == [1, 1]
    assert single["iteration"] == ranks[0]["iteration"] == ranks[1]["iteration"] == 8
    assert_same_weights(weights(two, 0), weights(two, 1), atol=0)
    assert_same_weights(weights(one), weights(two), atol=1e-6)
    rows = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (one, two)]
    assert [r["nonfinite_steps"] for r in rows[1]] == [1, 1]  # metrics.jsonl (rank 0's)
    for a, b in zip(*rows, strict=True):
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_spikegrad_train_exits_with_the_same_status_and_error_on_every_process(one_and_two):
    """The CLI: status 2 (a user error) on both processes, as with one process, each saying the
    same (but for its rank) on stderr; last.pt keeps the state after step 1."""
    one, two = (folder / "cli" for folder in one_and_two)
    single, ranks = result(one), [result(two, r) for r in (0, 1)]
    assert single["status"] == ranks[0]["status"] == ranks[1]["status"] == 2
    last = re.escape(str(two / "run" / "last.pt"))
    for rank, got in enumerate(ranks):
        assert re.fullmatch(rf"spikegrad: error \(rank {rank}\): training diverged: "
                            + STEP.format(" on process 1", last) + r"\. Lower optim\.lr.*\n", got["stderr"])
    assert ranks[0]["stderr"].replace("rank 0", "rank 1") == ranks[1]["stderr"]
    single_last = re.escape(str(one / "run" / "last.pt"))
    assert re.fullmatch(r"spikegrad: error: training diverged: " + STEP.format("", single_last) + r".*\n",
                        single["stderr"])
    assert load_checkpoint(two / "run" / "last.pt")["iteration"] == 1
