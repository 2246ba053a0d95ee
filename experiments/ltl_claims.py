"""Local tandem learning's claims: offline/online LTL with the published settings against BPTT.

On MNIST, an ANN teacher (``configs/digits.yaml`` with ``model.kind=ann``: the three-unit CNN
with batch norm and clipped ReLUs) is trained first, by the protocol (its SGD learning rate
tuned, trained to a plateau). Then, per seed, the spiking student of the same architecture
without batch norm (``configs/digits_ltl.yaml``: LIF λ = 0.905, θ = 0.6, hard reset) learns
from the teacher of the same seed with the published hyperparameters: T = 16, a rectangular
surrogate of height 1 and half-width 0.2 (``{name: rectangle, width: 0.4, height: 1.0}``),
Adam at 1e-4, five epochs of batch 64:

- ``ltl-offline`` and ``ltl-online`` (learning rate fixed: the published value);
- ``bptt``: the same student trained end to end by BPTT for the same five epochs, its Adam
  learning rate tuned on the validation split.

The claim tested: "LTL comes within 1 point of its teacher in at most 5 epochs" (paired over
seeds: teacher seed s against student seed s), at a step count close to CIFAR-10's five
epochs (3,910 steps at the published batch of 64; five MNIST epochs of batch 64 are 4,690
steps on its 60,000 training images). LTL against BPTT at equal epochs is reported beside it.

    python -m experiments.ltl_claims --out runs/experiments/ltl_claims
    python -m experiments.ltl_claims --out DIR --device cuda --scale large

Scales: ``small`` (default; about 2 h on 2 CPU cores): width 0.25 (8-16-32 channels), a
stratified subset of 10,000 training images (five epochs = 785 steps: a fifth of CIFAR's step
count, so the step-count condition of the claim is met only at the larger scales); teacher 20
epochs; 2% validation; 5 seeds, 2 tuning seeds. ``medium`` (CPU, hours): the small scale's
network on the whole training set (MNIST: the final runs' five epochs are 4,690 steps; the
tuning runs hold 2% out for validation), teacher 10 epochs, BPTT rates 1e-3 to 1e-2; the teacher
and LTL arms' runs took 5.6 h in all (about 2.8 h two at a time), BPTT about 4.5 h more
(``--arms`` runs a subset).
``large`` (GPU): width 1, the whole training set (MNIST: five epochs are 4,690 steps), teacher 30
epochs, 10% validation, 10 seeds, 3 tuning seeds. ``--smoke``: the built-in digits, T = 4, tiny.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from experiments.claims import better, within
from experiments.runner import Arm, Comparison, DataSpec, Experiment, main

NAME = "experiments.ltl_claims"
PUBLISHED = {"T": 16, "surrogate": {"name": "rectangle", "width": 0.4, "height": 1.0}, "lr": 1e-4,
             "epochs": 5, "batch": 64}

SCALES: dict[str, dict[str, Any]] = {
    "small": {"dataset": "mnist", "validation": 0.02, "width": 0.25, "subset": 10000, "T": 16,
              "teacher_epochs": 20, "teacher_grid": [0.03, 0.1, 0.3], "bptt_grid": [3e-4, 1e-3, 3e-3],
              "seeds": [0, 1, 2, 3, 4], "tuning_seeds": [100, 101], "augment": ["crop:2"]},
    "medium": {"dataset": "mnist", "validation": 0.02, "width": 0.25, "subset": None, "T": 16,
               "teacher_epochs": 10, "teacher_grid": [0.03, 0.1, 0.3], "bptt_grid": [1e-3, 3e-3, 1e-2],
               "seeds": [0, 1, 2, 3, 4], "tuning_seeds": [100, 101], "augment": ["crop:2"]},
    "large": {"dataset": "mnist", "validation": 0.1, "width": 1.0, "subset": None, "T": 16,
              "teacher_epochs": 30, "teacher_grid": [0.01, 0.03, 0.1, 0.3],
              "bptt_grid": [1e-4, 3e-4, 1e-3, 3e-3], "seeds": list(range(10)),
              "tuning_seeds": [100, 101, 102], "augment": ["crop:2"]},
    "smoke": {"dataset": "digits", "validation": 0.2, "width": 0.25, "subset": 200, "T": 4,
              "teacher_epochs": 2, "teacher_grid": [0.05, 0.1], "bptt_grid": [1e-3, 3e-3],
              "seeds": [0, 1], "tuning_seeds": [100], "augment": ["crop:1"]},
}


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for group in dict.fromkeys(a["group"] for a in results["arms"].values()):
        teacher = f"{group}/ann-teacher"
        for mode in ("offline", "online"):
            arm = f"{group}/ltl-{mode}"
            if arm in results["arms"] and teacher in results["arms"]:
                out.append(within(results, arm, teacher, 0.01,
                                  f"{group}: {mode} LTL is within 1 point of its teacher after "
                                  f"{results['arms'][arm]['epochs']} epochs"))
            if arm in results["arms"] and f"{group}/bptt" in results["arms"]:
                out.append(better(results, arm, f"{group}/bptt",
                                  f"{group}: {mode} LTL is more accurate than BPTT at equal epochs"))
    return out


def build(args: argparse.Namespace) -> Experiment:
    scale = dict(SCALES["smoke" if args.smoke else args.scale])
    if args.dataset:
        scale["dataset"] = args.dataset
    dataset = scale["dataset"]
    data = DataSpec(dataset, validation=scale["validation"], subset=scale["subset"])
    shared = {"model.width": scale["width"], "data.batch_size": PUBLISHED["batch"],
              "data.augment": scale["augment"]}
    student = {**shared, "model.T": scale["T"], "model.surrogate": dict(PUBLISHED["surrogate"]),
               "optim.name": "adam", "optim.weight_decay": 0.0, "ltl.teacher_recipe": None,
               "ltl.teacher_set": []}
    teacher = f"{dataset}/ann-teacher"
    arms = [
        Arm(name=teacher, recipe="digits", data=data, epochs=scale["teacher_epochs"],
            lr_grid=list(scale["teacher_grid"]),
            overrides={**shared, "model.kind": "ann", "dspike.adaptive": False},
            note="the ANN twin with batch norm, trained first"),
        Arm(name=f"{dataset}/ltl-offline", recipe="digits_ltl", data=data, epochs=PUBLISHED["epochs"],
            lr=PUBLISHED["lr"], lr_reason="published", depends={"ltl.teacher_checkpoint": teacher},
            overrides={**student, "ltl.mode": "offline"}),
        Arm(name=f"{dataset}/ltl-online", recipe="digits_ltl", data=data, epochs=PUBLISHED["epochs"],
            lr=PUBLISHED["lr"], lr_reason="published", depends={"ltl.teacher_checkpoint": teacher},
            overrides={**student, "ltl.mode": "online"}),
        Arm(name=f"{dataset}/bptt", recipe="digits_ltl", data=data, epochs=PUBLISHED["epochs"],
            lr_grid=list(scale["bptt_grid"]), overrides={**student, "ltl.mode": "none"},
            note="the same student (no batch norm) trained by BPTT"),
    ]
    comparisons = [Comparison(f"{dataset}/ltl-offline", teacher),
                   Comparison(f"{dataset}/ltl-online", teacher),
                   Comparison(f"{dataset}/ltl-offline", f"{dataset}/bptt"),
                   Comparison(f"{dataset}/ltl-online", f"{dataset}/bptt"),
                   Comparison(f"{dataset}/bptt", teacher)]
    if scale["subset"] is None:
        steps = ("the whole training set (MNIST: 938 steps per epoch, 4,690 in the claim's five; "
                 "CIFAR-10's five are 3,910)")
    else:
        per_epoch = math.ceil(scale["subset"] / PUBLISHED["batch"])
        steps = (f"a subset of {scale['subset']:,} training images: {per_epoch:,} steps per epoch, "
                 f"{PUBLISHED['epochs'] * per_epoch:,} in the claim's five")
    notes = [
        f"Students: T = {scale['T']}, rectangle height 1 half-width 0.2, Adam, batch {PUBLISHED['batch']}, "
        f"width {scale['width']}; {steps}.",
        "Teacher: the ANN twin (batch norm, clipped ReLU), SGD; seed s of each student learns from the "
        "teacher of seed s, so student − teacher differences are paired.",
    ]
    return Experiment(
        name="ltl_claims", title="Local tandem learning: published settings against the teacher and BPTT",
        arms=arms, seeds=list(scale["seeds"]), tuning_seeds=list(scale["tuning_seeds"]),
        comparisons=comparisons, claims=claims, notes=notes,
        settings={"scale": "smoke" if args.smoke else args.scale, **scale, "published": PUBLISHED})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset (default: mnist)")


SCALE_HELP = {"small": "sized for 2 CPU cores, 785 steps (the default)",
              "medium": "the small network on the whole training set: the claim's step count "
                        "(4,690 steps in five epochs) on a CPU in hours",
              "large": "the full-width network, more seeds, for a GPU"}

if __name__ == "__main__":
    main(NAME, build, add_arguments, description=__doc__.split("\n")[0], scales=SCALE_HELP)
