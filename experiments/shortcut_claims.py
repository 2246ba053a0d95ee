"""Shortcut back-propagation's claims: vanilla, shortcut (λ = 1) and evolutionary training of deep SNNs.

Two deep networks, a 16-unit plain spiking CNN (``configs/cluttered_digits_plain_cnn_t2.yaml``)
and a spiking ResNet-34 (``configs/cluttered_digits_resnet34_t2.yaml``), both LIF λ = 0.5,
θ = 1, hard reset, T = 2, AdamW with weight decay 0.02 and a cosine schedule, trained on
Animal-MNIST. Arms per network, each at its own tuned learning rate:

- ``vanilla``: no branches; ``vanilla-long``: the same for twice the epochs (at vanilla's rate),
  so that the shortcut arms are also compared with a vanilla network trained to convergence;
- ``shortcut``: branches at the default attach points with a constant λ = 1;
- ``evolutionary``: the same branches with λ decaying linearly from 0.25 to 0;
  ``evolutionary-long``: the same for twice the epochs (at evolutionary's rate, λ decaying over
  all of them), the paper's claim tested against ``vanilla-long`` at the longer budget, nearer
  convergence;
- ``evolutionary-shallow`` / ``evolutionary-deep``: the evolutionary method with only the first
  or only the last of the default attach points (the attach-point ablation; on the plain
  network at the small scale, on both at the large one; ``--ablate`` names the networks).

The surrogate is the one under which vanilla trains best in a short check before the arms
(``--surrogate`` skips the check): each candidate trains vanilla on both networks for a few
epochs on the validation split (one tuning seed, the recipes' learning rate 0.01); the
candidate with the highest mean validation accuracy over the two networks is used in every
arm. Every run reports the main head's accuracy (what is deployed); combined and per-branch
accuracies appear beside it where the runs' ``metrics.jsonl`` hold them.

    python -m experiments.shortcut_claims --out runs/experiments/shortcut_claims
    python -m experiments.shortcut_claims --out DIR --device cuda --scale large

Scales: ``small`` (default; about 4.5 h on 2 CPU cores, from measured run times, half of it
ResNet-34's arms):
width 0.125 (8-16-32-64 channels), 1,500 training images, 30 epochs (60 for the two -long arms), 10%
validation, learning rates 0.001-0.03 (4 values; 0.001 added when vanilla and λ = 1 chose 0.003,
the lowest of 0.003-0.03, before their final runs), 5 seeds, 2 tuning seeds. ``large`` (GPU):
width 0.5, the whole training set, 60 epochs (120), 10 seeds, 3 tuning seeds. ``--smoke``: the
built-in digits, tiny.
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments.claims import better
from experiments.runner import Arm, Comparison, DataSpec, Experiment, Runner, main
from spikegrad.errors import UserError

NAME = "experiments.shortcut_claims"
MODELS = {"plain16": "cluttered_digits_plain_cnn_t2", "resnet34": "cluttered_digits_resnet34_t2"}
SURROGATES: dict[str, dict[str, Any]] = {
    "sigmoid-2": {"name": "sigmoid", "alpha": 2.0},
    "sigmoid-4": {"name": "sigmoid", "alpha": 4.0},
    "atan-2": {"name": "atan", "alpha": 2.0},
}
METHODS: dict[str, dict[str, Any]] = {
    "vanilla": {"shortcut.enabled": False},
    "shortcut": {"shortcut.enabled": True, "shortcut.schedule": "constant", "shortcut.lambda0": 1.0},
    "evolutionary": {"shortcut.enabled": True, "shortcut.schedule": "linear", "shortcut.lambda0": 0.25},
}

SCALES: dict[str, dict[str, Any]] = {
    "small": {"dataset": "animal_mnist", "validation": 0.1, "width": 0.125, "T": 2, "subset": 1500,
              "epochs": 30, "long_factor": 2, "grid": [0.001, 0.003, 0.01, 0.03], "seeds": [0, 1, 2, 3, 4],
              "tuning_seeds": [100, 101], "ablate": ["plain16"], "check_epochs": 5, "augment": ["crop:2"]},
    "large": {"dataset": "animal_mnist", "validation": 0.1, "width": 0.5, "T": 2, "subset": None,
              "epochs": 60, "long_factor": 2, "grid": [0.001, 0.003, 0.01, 0.03],
              "seeds": list(range(10)), "tuning_seeds": [100, 101, 102], "ablate": ["plain16", "resnet34"],
              "check_epochs": 10, "augment": ["crop:2"]},
    "smoke": {"dataset": "digits", "validation": 0.2, "width": 0.125, "T": 2, "subset": 200, "epochs": 2,
              "long_factor": 2, "grid": [0.003, 0.01], "seeds": [0, 1], "tuning_seeds": [100],
              "ablate": ["plain16"], "check_epochs": 1, "augment": ["crop:1"]},
}


def attach_points(model: str, width: float, T: int) -> list[str]:
    """The default attach points of the recipe's network (what ``shortcut.attach: []`` picks)."""
    from experiments.runner import recipe_file
    from spikegrad import models
    from spikegrad.config import load_config
    from spikegrad.methods import default_attach_points

    config = load_config(recipe_file(MODELS[model]))
    options = dict(config.model.options)
    net = models.create(config.model.name, width=width, T=T, in_channels=1, num_classes=10, **options)
    return default_attach_points(net)


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    arms = results["arms"]
    for model in dict.fromkeys(a["group"] for a in arms.values()):
        for a, b, text in [
            ("shortcut", "vanilla", "shortcut BP (λ = 1) trains a more accurate network than vanilla BPTT"),
            ("evolutionary", "vanilla", "evolutionary training is more accurate than vanilla BPTT"),
            ("evolutionary-long", "vanilla-long",
             "evolutionary training is more accurate than vanilla BPTT, both trained twice as long"),
            ("evolutionary", "vanilla-long", "evolutionary training beats vanilla trained twice as long"),
            ("evolutionary", "shortcut", "the decaying λ beats a constant λ = 1 (main head)"),
        ]:
            if f"{model}/{a}" in arms and f"{model}/{b}" in arms:
                out.append(better(results, f"{model}/{a}", f"{model}/{b}", f"{model}: {text}"))
    return out


def check_surrogate(scale: dict[str, Any], models: list[str]):
    """The ``prepare`` step: train vanilla per candidate surrogate briefly, keep the best."""

    def prepare(runner: Runner) -> dict[str, Any]:
        data = DataSpec(scale["dataset"], validation=scale["validation"], subset=scale["subset"])
        seed = runner.experiment.tuning_seeds[0]
        table: dict[str, dict[str, float | None]] = {}
        for label, surrogate in SURROGATES.items():
            table[label] = {}
            for model in models:
                arm = Arm(name=f"{model}/vanilla-{label}", recipe=MODELS[model], data=data,
                          epochs=scale["check_epochs"], lr=0.01, lr_reason="surrogate check",
                          overrides=_model_overrides(scale, surrogate))
                table[label][model] = runner.run_check(arm, seed, 0.01)["final_acc"]
        scores = {label: sum(v or 0.0 for v in row.values()) / len(row) for label, row in table.items()}
        chosen = max(scores, key=lambda k: (scores[k], -list(SURROGATES).index(k)))
        _use_surrogate(runner.experiment, SURROGATES[chosen])
        runner.experiment.notes.append(
            f"Surrogate check ({scale['check_epochs']} epochs of vanilla, seed {seed}, lr 0.01, validation "
            "accuracy %): " + "; ".join(
                f"{label}: " + ", ".join(f"{m} {100 * (v or 0):.1f}" for m, v in row.items())
                for label, row in table.items()) + f". Chosen: **{chosen}**.")
        return {"surrogate_check": {"table": table, "scores": scores, "chosen": chosen,
                                    "rule": "highest mean validation accuracy of vanilla over the networks"}}

    return prepare


def _model_overrides(scale: dict[str, Any], surrogate: dict[str, Any]) -> dict[str, Any]:
    return {"model.width": scale["width"], "model.T": scale["T"], "model.surrogate": dict(surrogate),
            "data.augment": scale["augment"]}


def _use_surrogate(experiment: Experiment, surrogate: dict[str, Any]) -> None:
    for arm in experiment.arms:
        arm.overrides["model.surrogate"] = dict(surrogate)


def build(args: argparse.Namespace) -> Experiment:
    scale = dict(SCALES["smoke" if args.smoke else args.scale])
    if args.dataset:
        scale["dataset"] = args.dataset
    models = args.models or list(MODELS)
    ablate = args.ablate or scale["ablate"]
    if args.ablate and not set(ablate) <= set(models):
        missing = ", ".join(m for m in ablate if m not in models)
        raise UserError(f"--ablate {missing}: not among the networks this command trains "
                        f"({', '.join(models)}); add it to --models or drop it from --ablate")
    data = DataSpec(scale["dataset"], validation=scale["validation"], subset=scale["subset"])
    first = next(iter(SURROGATES.values()))
    arms, comparisons = [], []
    for model in models:
        base = _model_overrides(scale, SURROGATES.get(args.surrogate, first) if args.surrogate else first)
        points = attach_points(model, scale["width"], scale["T"])
        variants: dict[str, dict[str, Any]] = dict(METHODS)
        if model in ablate:
            variants["evolutionary-shallow"] = {**METHODS["evolutionary"], "shortcut.attach": points[:1]}
            variants["evolutionary-deep"] = {**METHODS["evolutionary"], "shortcut.attach": points[-1:]}
        for label, overrides in variants.items():
            arms.append(Arm(name=f"{model}/{label}", recipe=MODELS[model], data=data, epochs=scale["epochs"],
                            lr_grid=list(scale["grid"]), overrides={**base, **overrides}))
            if label in ("vanilla", "evolutionary"):
                arms.append(Arm(name=f"{model}/{label}-long", recipe=MODELS[model], data=data,
                                epochs_from=f"{model}/{label}", epochs_factor=scale["long_factor"],
                                lr_from=f"{model}/{label}", lr_reason=f"{label}'s tuned rate",
                                overrides={**base, **overrides}))
        pairs = [("shortcut", "vanilla"), ("evolutionary", "vanilla"), ("vanilla-long", "vanilla"),
                 ("evolutionary", "vanilla-long"), ("evolutionary", "shortcut"),
                 ("evolutionary-long", "vanilla-long"), ("evolutionary-long", "evolutionary")]
        if model in ablate:
            pairs += [("evolutionary-shallow", "evolutionary"), ("evolutionary-deep", "evolutionary")]
        comparisons += [Comparison(f"{model}/{a}", f"{model}/{b}") for a, b in pairs]
    notes = [
        f"Data: {scale['dataset']}, training subset {scale['subset'] or 'none'}, augmentation "
        f"{', '.join(scale['augment'])}; networks at width {scale['width']}, T = {scale['T']}; "
        f"vanilla-long and evolutionary-long train {scale['long_factor']} times vanilla's and "
        "evolutionary's epochs.",
        "Attach points (default, shallow-only = the first, deep-only = the last): "
        + "; ".join(f"{m}: {', '.join(attach_points(m, scale['width'], scale['T']))}" for m in models) + ".",
        "Accuracies are the main head's (the deployed network); other accuracies the runs report "
        "(combined, per branch) are in the extra table of each network where present.",
    ]
    experiment = Experiment(
        name="shortcut_claims", title="Shortcut back-propagation: vanilla, λ = 1 and evolutionary training",
        arms=arms, seeds=list(scale["seeds"]), tuning_seeds=list(scale["tuning_seeds"]),
        comparisons=comparisons, claims=claims, notes=notes,
        settings={"scale": "smoke" if args.smoke else args.scale, **scale, "models": models, "ablate": ablate,
                  "surrogate": args.surrogate or "checked"})
    if args.surrogate:
        experiment.notes.append(f"Surrogate given on the command line: {args.surrogate}.")
    else:
        experiment.prepare = check_surrogate(scale, models)
    return experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset (default: animal_mnist)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="networks (default: both)")
    parser.add_argument("--ablate", nargs="+", choices=list(MODELS),
                        help="networks that also train the attach-point ablation arms "
                             "(default: the scale's; plain16 at the small scale)")
    parser.add_argument("--surrogate", choices=list(SURROGATES),
                        help="use this surrogate instead of running the surrogate check")


if __name__ == "__main__":
    main(NAME, build, add_arguments, description=__doc__.split("\n")[0])
