"""Run under torchrun by tests/test_distributed.py: train a small fully connected SNN twice.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

into OUT_DIR/trainer (the trainer computes the loss: DDP), OUT_DIR/component (a component
owns the loss and back-propagates it itself: explicit gradient averaging) and OUT_DIR/shortcut
(a shortcut branch: parameters outside the model, averaged with the model's). With one process
(no torchrun) it trains the same runs single-process, for comparison.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import Config, Trainer, distributed, layers, neurons, surrogates
from spikegrad.methods.shortcut import ShortcutBackprop
from spikegrad.trainer import Component, StepOutput

SAMPLES = 117  # global batch 32: three full steps and a last one of 21 (11 + 10 over two ranks)


def dataset(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, 6, generator=g)
    y = (x[:, 0] * x[:, 1] + x[:, 2] > 0).long()
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        layers.DirectEncoder(4),
        layers.TimeDistributed(nn.Linear(6, 64)),
        neurons.LIF(leak=0.5, surrogate=surrogates.Dspike(temperature=3.0)),
        layers.TimeDistributed(nn.Linear(64, 2)),
    )


def config() -> Config:
    return Config().with_overrides({
        "train.epochs": 3, "train.threads": 1, "train.device": "cpu", "train.progress": False,
        "data.batch_size": 32, "data.eval_batch_size": 25, "optim.name": "sgd", "optim.lr": 0.2,
    })


class OwnBackward(Component):
    """Owns the loss and back-propagates it in two halves of the batch, as local learning does."""

    name = "own_backward"

    def compute_loss(self, trainer, inputs, targets):
        logits, total = [], 0.0
        for part_x, part_y in zip(inputs.chunk(2), targets.chunk(2), strict=True):
            out = trainer.model(part_x).mean(0)  # (b, classes)
            loss = nn.functional.cross_entropy(out, part_y) * len(part_y) / len(targets)
            trainer.backward(loss)
            logits.append(out.detach())
            total += loss.detach()
        return StepOutput(total, torch.cat(logits), backpropagated=True)


def main(out_dir: str) -> None:
    runs = (("trainer", []), ("component", [OwnBackward()]),
            ("shortcut", [ShortcutBackprop(attach=["2"], seed=0)]))
    for name, components in runs:
        trainer = Trainer(model(), dataset(0), dataset(1), config(), components=components,
                          out_dir=f"{out_dir}/{name}", verbose=False)
        trainer.fit()
    del trainer
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
