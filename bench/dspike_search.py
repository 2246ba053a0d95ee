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

from spikegrad import AdaptiveTemperature, Trainer, build_model, load_config
from spikegrad.data import DatasetInfo
from spikegrad.fdg import finite_difference_gradient, sample_weight_indices
from spikegrad.recipes import recipe_path

ITERATIONS_PER_EPOCH = 391  # ceil(50,000 / 128)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="cifar10_resnet18_t4_dspike")
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set dspike.num_weights=32")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(recipe_path(args.recipe), [
        f"model.width={args.width}", f"train.device={args.device}", "train.progress=false",
        "dspike.adaptive=true", "diagnostics.gradient_interval=0", *args.set,
    ])
    batch = config.data.batch_size
    info = DatasetInfo(num_classes=10, sample_shape=(3, 32, 32))
    n = max(batch * (args.iterations + 1), config.dspike.batch_size)
    data = TensorDataset(torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    model, _ = build_model(config, info)
    trainer = Trainer(model, data, data, config, verbose=False)  # the config's search component
    (search,) = trainer.components
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

    # one search, then its FDG part again on its own (same probe batches, weights, step and loss)
    sync()
    tic, cpu = time.perf_counter(), time.process_time()
    similarities = search.search(trainer.context, epoch=1)
    sync()
    total, cpu_total = time.perf_counter() - tic, time.process_time() - cpu
    fdg_seconds = time_fdg(trainer, search, sync)
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


def time_fdg(trainer: Trainer, search: AdaptiveTemperature, sync) -> list[float]:
    """Seconds of each finite difference gradient of the search of epoch 1: its probe batches,
    probed weights, step, batch-norm mode and loss, as :class:`spikegrad.AdaptiveTemperature`
    draws them (one FDG per probe batch)."""
    ctx, d = trainer.context, search.config
    batches = search.probe_batches(ctx, 1)
    generator = torch.Generator().manual_seed(search.probe_seed(1))
    layer = search.groups[0].layer
    weight = layer.weight
    epsilon = d.epsilon * float(weight.detach().pow(2).mean().sqrt())
    forward, loss_fn = ctx.search_objective()
    seconds = []
    for inputs, targets in batches:
        indices = sample_weight_indices(weight.numel(), d.num_weights, generator).to(weight.device)
        sync()
        tic = time.perf_counter()
        finite_difference_gradient(trainer.model, layer, inputs, targets, epsilon, indices, loss_fn,
                                   d.max_stacked, d.bn_mode, forward)
        sync()
        seconds.append(time.perf_counter() - tic)
    return seconds


if __name__ == "__main__":
    main()
