"""Cost of one adaptive-Dspike temperature search as a fraction of one training epoch.

The model is the CIFAR-10 ResNet-18 recipe (``configs/cifar10_resnet18_t4_dspike.yaml``:
T = 4, batch 128, LIF 0.25 / 0.5, SGD) on random CIFAR-shaped input ``[128, 3, 32, 32]``.
Side by side in one process:

1. the mean time of a few training iterations (forward, backward, optimizer step), after one
   warm-up iteration, times the 391 iterations of a CIFAR-10 epoch (50,000 / 128);
2. the time of one search with the recipe's ``dspike`` settings (per probe batch: the FDG,
   one BPTT forward and one backward per candidate), split into its FDG and BPTT parts.

Both in wall-clock and in process CPU time; with ``--threads 1`` on a shared machine the
CPU-time ratio is the one that does not depend on what else runs.

The search cost does not depend on the weights' values (every operation is dense), so an
untrained model measures it. Run with ``python -m bench.dspike_search``; ``--width 0.5``
scales every layer's channels (a quicker, proportionate measurement on a slow CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import TensorDataset

from spikegrad import fdg as fdg_module
from spikegrad import models
from spikegrad.config import load_config
from spikegrad.data import DatasetInfo
from spikegrad.demo import recipe_path
from spikegrad.methods.dspike import AdaptiveTemperature
from spikegrad.run import model_arguments
from spikegrad.trainer import Trainer

ITERATIONS_PER_EPOCH = 391  # ceil(50,000 / 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="cifar10_resnet18_t4_dspike")
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set dspike.num_weights=32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(recipe_path(args.recipe), [
        f"model.width={args.width}", f"train.device={args.device}", "train.progress=false",
        "dspike.adaptive=true", *args.set,
    ])
    batch = config.data.batch_size
    info = DatasetInfo(num_classes=10, sample_shape=(3, 32, 32))
    n = max(batch * (args.iterations + 1), config.dspike.batch_size)
    data = TensorDataset(torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    margs = model_arguments(config, info)
    model = models.create(margs["name"], **margs["kwargs"])
    search = AdaptiveTemperature(config.dspike, seed=0)
    trainer = Trainer(model, data, data, config, components=[search], verbose=False)
    device = trainer.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # training iterations
    trainer.model.train()
    times, cpu_times = [], []
    for i, (x, y) in enumerate(trainer.train_loader):
        x, y = trainer.to_device(x, y)
        sync()
        tic, cpu = time.perf_counter(), time.process_time()
        trainer.train_step(x, y)
        sync()
        if i > 0:
            times.append(time.perf_counter() - tic)
            cpu_times.append(time.process_time() - cpu)
        if len(times) == args.iterations:
            break
    iteration = sum(times) / len(times)
    epoch = iteration * ITERATIONS_PER_EPOCH
    cpu_epoch = sum(cpu_times) / len(cpu_times) * ITERATIONS_PER_EPOCH

    # one search, with its FDG part timed on its own
    fdg_seconds = []
    original = fdg_module.finite_difference_gradient

    def timed_fdg(*a, **kw):
        sync()
        tic = time.perf_counter()
        out = original(*a, **kw)
        sync()
        fdg_seconds.append(time.perf_counter() - tic)
        return out

    import spikegrad.temperature_search as search_module

    search_module.finite_difference_gradient = timed_fdg
    try:
        sync()
        tic, cpu = time.perf_counter(), time.process_time()
        similarities = search.search(trainer, epoch=1)
        sync()
        total, cpu_total = time.perf_counter() - tic, time.process_time() - cpu
    finally:
        search_module.finite_difference_gradient = original
    d = config.dspike
    result = {
        "recipe": args.recipe, "width": args.width, "device": str(device),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "train_iteration_s": iteration, "train_epoch_s_extrapolated": epoch,
        "search_s": total, "search_fdg_s": sum(fdg_seconds), "search_rest_s": total - sum(fdg_seconds),
        "search_fraction_of_epoch": total / epoch,
        # process CPU time: with one thread on a shared CPU, the ratio that does not depend on the load
        "train_epoch_cpu_s_extrapolated": cpu_epoch, "search_cpu_s": cpu_total,
        "search_fraction_of_epoch_cpu": cpu_total / cpu_epoch,
        "settings": {"num_weights": d.num_weights, "batch_size": d.batch_size, "epsilon": d.epsilon,
                     "candidates": d.candidates, "max_stacked": d.max_stacked, "rule": d.rule,
                     "bn_mode": d.bn_mode, "probe_batches": d.probe_batches},
        "similarities": similarities,
    }
    print(json.dumps(result, indent=2))
    print(f"\none search = {100 * total / epoch:.1f}% of one training epoch "
          f"({total:.1f} s vs. {ITERATIONS_PER_EPOCH} × {iteration:.2f} s = {epoch:.0f} s); "
          f"in process CPU time {100 * cpu_total / cpu_epoch:.1f}%")


if __name__ == "__main__":
    main()
