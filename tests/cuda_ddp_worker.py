"""Run under ``torchrun --nproc_per_node 1`` by tests/test_cuda.py: the multi-process code paths on
one GPU, through NCCL.

    python -m torch.distributed.run --standalone --nproc_per_node 1 tests/cuda_ddp_worker.py OUT_DIR

With one process spikegrad normally joins no process group. Here the worker joins an NCCL group
of one and makes :class:`spikegrad.distributed.DistributedContext` count as distributed, so
that every collective the trainer uses (DDP's gradient all-reduce, the explicit all-reduce of
a component that owns the loss, the metric sums, the gathered RNG states, broadcasts) runs
through NCCL on CUDA tensors. With a world of one they must change nothing: the test compares
the runs with the same runs made without any process group. Without torchrun
(``python tests/cuda_ddp_worker.py OUT_DIR``) it makes those plain runs.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from spikegrad import Trainer, distributed
from spikegrad.methods.shortcut import ShortcutBackprop
from tests import ddp_worker

RUNS = ("trainer", "component", "shortcut")


def config():
    return ddp_worker.config().with_overrides({"train.device": "cuda", "distributed.backend": "nccl"})


def main(out_dir: str) -> None:
    grouped = "RANK" in os.environ
    if grouped:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
        distributed.DistributedContext.enabled = property(lambda self: dist.is_initialized())
    components = {"trainer": [], "component": [ddp_worker.OwnBackward()],
                  "shortcut": [ShortcutBackprop(attach=["2"], seed=0)]}
    for name in RUNS:
        trainer = Trainer(ddp_worker.model(), ddp_worker.dataset(0), ddp_worker.dataset(1), config(),
                          components=components[name], out_dir=f"{out_dir}/{name}", verbose=False)
        if grouped:
            assert trainer.dist.enabled and trainer.dist.device.type == "cuda"
            # DDP when the trainer computes the loss, else an explicit all-reduce: one of the two
            assert (trainer._parallel.ddp is not None) == (name == "trainer") != trainer._parallel.explicit
        trainer.fit()
        del trainer
    if grouped:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
