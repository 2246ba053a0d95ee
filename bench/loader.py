"""Is the input pipeline the bottleneck of a CIFAR ResNet-18 training step?

    python -m bench.loader [--steps 3] [--workers 0 2] [--width 1.0] [--T 4] [--batch 128]

Writes CIFAR-10-format files (random pixels, the official python-batch layout) into a
temporary folder, builds the dataset with the same loader as training (``cifar10``), then
measures in one run, side by side:

1. **loader**: seconds per batch of the ``DataLoader`` alone (decode nothing, index, normalise,
   collate, pin when on CUDA) for each ``--workers`` count;
2. **augment**: seconds per batch of the heaviest CIFAR recipes' augmentation (crop 4, flip,
   AutoAugment) plus cutout 16, on the training device;
3. **step**: seconds per spiking ResNet-18 training step (forward, backward, SGD) on one
   fixed batch already on the device;
4. **fed step**: seconds per step when each batch comes from the loader and is augmented,
   the way the trainer runs; ``fed / step`` close to 1 means the data pipeline is hidden.

Each measure is repeated ``--repeats`` times, interleaved; the medians are printed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spikegrad import models
from spikegrad.data import build_augmentation, build_datasets, collate_for
from spikegrad.losses import mean_logit_cross_entropy

AUGMENT = ["crop:4", "hflip", "autoaugment", "cutout:16"]


def write_cifar10(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random images in the official python-version layout (5 train batches, test, meta)."""
    rng = np.random.default_rng(seed)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    per_batch = n_train // 5
    names = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in names:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=3, help="training steps per measure")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=10_000, help="training images written")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pin = device.type == "cuda"
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(Path(tmp), args.images, 1000)
        train_set, _, info = build_datasets("cifar10", root=tmp)
        augment = build_augmentation(AUGMENT, info)
        model = models.create("resnet18", num_classes=10, T=args.T, width=args.width).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        model.train()

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            mean_logit_cross_entropy(model(x), y).backward()
            optimizer.step()

        def loader(workers: int) -> DataLoader:
            return DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True,
                              num_workers=workers, pin_memory=pin, collate_fn=collate_for(train_set),
                              persistent_workers=workers > 0)

        loaders = {w: loader(w) for w in args.workers}
        iters = {w: iter(dl) for w, dl in loaders.items()}

        def next_batch(w: int) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                return next(iters[w])
            except StopIteration:
                iters[w] = iter(loaders[w])
                return next(iters[w])

        for w in args.workers:  # start the workers and fill their queues
            next_batch(w)
        fixed_x, fixed_y = next_batch(args.workers[0])
        fixed_x, fixed_y = fixed_x.to(device), fixed_y.to(device)
        step(augment(fixed_x), fixed_y)  # warm-up

        results: dict[str, list[float]] = {}

        def record(key: str, seconds: float) -> None:
            results.setdefault(key, []).append(seconds)

        fed_workers = max(args.workers)
        for _ in range(args.repeats):
            for w in args.workers:
                record(f"loader_w{w}", timed(lambda w=w: [next_batch(w) for _ in range(args.loader_batches)],
                                             device) / args.loader_batches)
            record("augment", timed(lambda: [augment(fixed_x) for _ in range(5)], device) / 5)
            record("step", timed(lambda: [step(fixed_x, fixed_y) for _ in range(args.steps)], device)
                   / args.steps)

            def fed() -> None:
                for _ in range(args.steps):
                    x, y = next_batch(fed_workers)
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    step(augment(x), y)

            record(f"fed_step_w{fed_workers}", timed(fed, device) / args.steps)

    medians = {k: statistics.median(v) for k, v in results.items()}
    step_s = medians["step"]
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, T {args.T}, "
          f"ResNet-18 width {args.width}, {args.repeats} repeats (medians)")
    print(f"{'measure':<16}{'s / batch':>12}{'x step':>10}")
    for key, value in medians.items():
        print(f"{key:<16}{value:>12.4f}{value / step_s:>10.3f}")
    overhead = medians[f"fed_step_w{fed_workers}"] / step_s
    print(f"data pipeline with {fed_workers} workers: a fed step takes {overhead:.3f}x a step on a "
          f"fixed batch")
    out = {"device": str(device), "threads": torch.get_num_threads(), "args": vars(args),
           "medians": medians, "fed_over_step": overhead}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
