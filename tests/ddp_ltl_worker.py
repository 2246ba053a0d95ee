"""Run under torchrun by tests/test_distributed_ltl.py: local tandem learning on two processes.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_ltl_worker.py OUT_DIR

trains a digits CNN without batch norm (so that the runs differ only by floating-point
summation order) with offline and online LTL into OUT_DIR/offline and OUT_DIR/online. The
teacher is its ANN twin with batch norm, seeded alike in every process. With one process (no
torchrun) it trains the same runs, for comparison.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import Config, Trainer, distributed, models
from spikegrad.methods.ltl import LocalTandemLearning

SAMPLES = 117  # global batch 32: three full steps and a last one of 21 (11 + 10 over two ranks)
NEURON = {"type": "lif", "leak": 0.9, "threshold": 0.6, "reset": "hard"}


def dataset(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(SAMPLES, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) * 20).long().clamp(0, 9)
    return TensorDataset(x, y)


def digits_net(kind: str) -> nn.Module:
    return models.create("digits_cnn", kind=kind, T=3, width=0.25, neuron=NEURON,
                         surrogate={"name": "rectangle", "width": 1.0}, batch_norm=kind == "ann")


def teacher() -> nn.Module:
    """An ANN twin with batch-norm statistics of its own (a few forward passes in train mode)."""
    torch.manual_seed(1)
    net = digits_net("ann")
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 1, 8, 8) * 2)
    return net.eval()


def config() -> Config:
    return Config().with_overrides({
        "train.epochs": 2, "train.threads": 1, "train.device": "cpu", "train.progress": False,
        "data.batch_size": 32, "data.eval_batch_size": 25, "optim.name": "sgd", "optim.lr": 0.5,
    })


def main(out_dir: str) -> None:
    for mode in ("offline", "online"):
        torch.manual_seed(0)
        trainer = Trainer(digits_net("snn"), dataset(0), dataset(1), config(),
                          components=[LocalTandemLearning(
                              teacher(), mode, T_warm=1 if mode == "online" else None)],
                          out_dir=f"{out_dir}/{mode}", verbose=False)
        trainer.fit()
        del trainer
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
