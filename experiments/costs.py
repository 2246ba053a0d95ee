"""Per-sample cost of the networks the experiments train: what their time estimates rest on.

    python -m experiments.costs [--samples 512] [--device cpu] [--threads 1]

For each network (28×28 grey input, batch 64, the recipes' defaults including the evaluation
monitors), one training pass and one evaluation pass over ``--samples`` random images; printed
as milliseconds per sample of process CPU time (on CPU) or of wall time (on CUDA, synchronised).
docs/protocol.md turns these into the experiments' run times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from experiments.runner import recipe_file
from spikegrad import Trainer, build_components, checkpoint, models
from spikegrad.build import model_arguments
from spikegrad.config import load_config
from spikegrad.data import DatasetInfo

INFO = DatasetInfo(num_classes=10, sample_shape=(1, 28, 28))
STUDENT = ["model.T=16", "model.width=0.25", "ltl.teacher_recipe=null", "ltl.teacher_set=[]",
           "model.surrogate={name: rectangle, width: 0.4, height: 1.0}"]
NETWORKS: list[tuple[str, str, list[str]]] = [
    ("Dspike CNN, width 0.25, T = 4 (dspike_surrogates)", "digits", ["model.width=0.25"]),
    ("plain 16-unit CNN, width 0.125, T = 2 (shortcut_claims)", "cluttered_digits_plain_cnn_t2",
     ["model.width=0.125"]),
    ("  + evolutionary branches", "cluttered_digits_plain_cnn_t2",
     ["model.width=0.125", "shortcut.enabled=true"]),
    ("ResNet-34, width 0.125, T = 2 (shortcut_claims)", "cluttered_digits_resnet34_t2",
     ["model.width=0.125"]),
    ("ANN teacher, width 0.25 (ltl_claims)", "digits", ["model.kind=ann", "model.width=0.25"]),
    ("student, offline LTL, T = 16 (ltl_claims)", "digits_ltl", [*STUDENT, "ltl.mode=offline"]),
    ("student, online LTL, T = 16 (ltl_claims)", "digits_ltl", [*STUDENT, "ltl.mode=online"]),
    ("student, BPTT, T = 16 (ltl_claims)", "digits_ltl", [*STUDENT, "ltl.mode=none"]),
]


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def measure(recipe: str, overrides: list[str], samples: int = 512, device: str = "cpu",
            threads: int | None = 1, teacher: str | None = None) -> dict[str, Any]:
    """``{"train_ms", "eval_ms"}`` per sample of one training and one evaluation pass."""
    settings = [*overrides, "data.batch_size=64", "train.epochs=1", "train.progress=false",
                f"train.device={device}"]
    if threads is not None:
        settings.append(f"train.threads={threads}")
    if teacher is not None and any(o.startswith("ltl.mode=") and o != "ltl.mode=none" for o in overrides):
        settings.append(f"ltl.teacher_checkpoint={teacher}")
    config = load_config(recipe_file(recipe), settings)
    margs = model_arguments(config, INFO)
    model = models.create(margs["name"], **margs["kwargs"])
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(samples, 1, 28, 28, generator=generator), torch.arange(samples) % 10)
    trainer = Trainer(model, data, data, config, components=build_components(config, model),
                      verbose=False)
    start = _clock(trainer.device)
    trainer.train_one_epoch(0)
    middle = _clock(trainer.device)
    trainer.evaluate()
    end = _clock(trainer.device)
    return {"train_ms": 1000 * (middle - start) / samples, "eval_ms": 1000 * (end - middle) / samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.costs", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    threads = args.threads or None
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.pt"  # an untrained twin: the cost does not depend on its weights
        config = load_config(recipe_file("digits"), ["model.kind=ann", "model.width=0.25"])
        margs = model_arguments(config, INFO)
        checkpoint.save_checkpoint(teacher, models.create(margs["name"], **margs["kwargs"]), margs)
        unit = "CPU ms" if args.device == "cpu" else "ms"
        print(f"| network | training, {unit}/sample | evaluation, {unit}/sample |\n|---|---|---|")
        for label, recipe, overrides in NETWORKS:
            cost = measure(recipe, overrides, args.samples, args.device, threads, str(teacher))
            print(f"| {label} | {cost['train_ms']:.2f} | {cost['eval_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
