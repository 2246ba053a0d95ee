"""Run under torchrun by tests/test_distributed_nonfinite.py: a non-finite step on one process.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_nonfinite_worker.py OUT_DIR

One training sample, which only rank 1 gets in step 2 (epoch 1, batch 2; its first time),
makes its loss infinite while every gradient stays finite: the model adds ``log`` of the
sample's last two features to the logits, 1 (log 1 = 0) for every other sample and 0 (-inf) at
its own class for this one (the inputs stay finite, as the loader demands). Rank 0 then sees
nothing wrong itself; only the reduction of the decision over the processes makes it stop (or
skip) with rank 1. ``last.pt`` is written after every step. Runs, each into OUT_DIR/NAME:

- ``trainer-stop``/``trainer-skip``: the trainer computes the loss (DDP);
- ``component-stop``/``component-skip``: a component back-propagates the loss itself (the
  gradients are averaged explicitly);
- ``guard-stop``: the flag recorded on the device and read later, as CUDA runs do;
- ``cli``: ``spikegrad train`` with the same data and model (registered here).

Each process writes OUT_DIR/NAME/rankR.json (the error or None, the iteration, the steps
skipped; for ``cli`` the exit status) and OUT_DIR/NAME/rankR.pt (its weights). With one
process (no torchrun) it runs the same, for comparison.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from spikegrad import Config, Trainer, distributed
from spikegrad.data import DatasetInfo, register_dataset
from spikegrad.distributed import DistributedContext
from spikegrad.errors import TrainingDiverged
from spikegrad.models import list_models, register_model
from spikegrad.nonfinite import FiniteGuard
from spikegrad.trainer import _loaders
from tests import ddp_worker

SAMPLES = ddp_worker.SAMPLES  # global batch 32: four steps per epoch
POISONED_STEP = 1  # iteration (0-based): epoch 1, batch 2, its first time


def rank_one_sample(size: int, config: Config, iteration: int) -> int:
    """The first sample rank 1 of 2 trains on at ``iteration``: the trainer's own data order."""
    indices = TensorDataset(torch.arange(size), torch.zeros(size, dtype=torch.long))
    loader = _loaders(indices, indices, config, DistributedContext(rank=1, world_size=2))[2]
    step = 0
    while True:
        for batch, _ in loader:
            if step == iteration:
                return int(batch[0])
            step += 1


def dataset(seed: int, poisoned: int | None) -> TensorDataset:
    """ddp_worker's samples plus two features, 1 and 1, except 0 at the poisoned sample's class."""
    x, y = ddp_worker.dataset(seed).tensors
    flags = torch.ones(len(y), 2)
    if poisoned is not None:
        flags[poisoned, y[poisoned]] = 0.0
    return TensorDataset(torch.cat([x, flags], dim=1), y)


class LogOffset(nn.Module):
    """ddp_worker's network on the first six features, plus ``log`` of the last two."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ddp_worker.model()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[:, :6]) + torch.log(x[:, 6:])  # (T, B, 2)


def config(nonfinite: str) -> Config:
    return ddp_worker.config().with_overrides({"train.epochs": 2, "train.nonfinite": nonfinite,
                                                "train.checkpoint_every": 1})


def save(folder: Path, result: dict, model: nn.Module | None = None) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.json").write_text(json.dumps(result))
    if model is not None:
        torch.save(model.state_dict(), folder / f"rank{rank}.pt")


def train_runs(out: Path) -> None:
    poisoned = rank_one_sample(SAMPLES, config("stop"), POISONED_STEP)
    runs = (("trainer-stop", "stop", False, False), ("trainer-skip", "skip", False, False),
            ("component-stop", "stop", True, False), ("component-skip", "skip", True, False),
            ("guard-stop", "stop", False, True))
    for name, nonfinite, component, guard in runs:
        trainer = Trainer(LogOffset(), dataset(0, poisoned), dataset(1, None), config(nonfinite),
                          components=[ddp_worker.OwnBackward()] if component else [],
                          out_dir=out / name, verbose=False)
        if guard:
            trainer._guard = FiniteGuard(torch.device("cpu"))  # as on CUDA
        error = None
        try:
            trainer.fit()
        except TrainingDiverged as exc:
            error = str(exc)
        save(out / name, {"error": error, "iteration": trainer.iteration,
                          "nonfinite_steps": [row.get("nonfinite_steps") for row in trainer.history]},
             trainer.model)
        del trainer


def poisoned_blobs(root: str | None = None):
    """The training runs' datasets, registered for ``spikegrad train`` (``root`` unused)."""
    poisoned = rank_one_sample(SAMPLES, config("stop"), POISONED_STEP)
    return dataset(0, poisoned), dataset(1, None), DatasetInfo(num_classes=2, sample_shape=(8,))


def log_offset(spec) -> nn.Module:
    """:class:`LogOffset`, registered for ``spikegrad train`` (the spec's options unused)."""
    return LogOffset()


CLI_RECIPE = """\
data: {name: poisoned_blobs, batch_size: 32, eval_batch_size: 25, augment: []}
model: {name: log_offset}
optim: {name: sgd, lr: 0.2}
train: {epochs: 2, checkpoint_every: 1, threads: 1, progress: false, device: cpu}
"""


def cli_run(out: Path) -> None:
    """``spikegrad train`` on the same data and model: its exit status and what it printed."""
    from spikegrad import cli

    register_dataset("poisoned_blobs")(poisoned_blobs)
    if "log_offset" not in list_models():
        register_model("log_offset", log_offset)
    recipe = out / "recipe.yaml"
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        recipe.write_text(CLI_RECIPE)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["train", str(recipe), "--out", str(out / "run")])
    save(out, {"status": status, "stderr": stderr.getvalue()})


def main(out_dir: str) -> None:
    out = Path(out_dir)
    train_runs(out)
    cli_run(out / "cli")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
