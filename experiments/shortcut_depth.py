"""Where depth hurts: vanilla vs. shortcut back-propagation vs. evolutionary training.

On the built-in cluttered digits, every (model, method, seed) below is trained from the
recipes ``configs/cluttered_digits_plain_cnn_t2.yaml`` (a 16-layer plain spiking CNN; a
4-layer one as the shallow reference) and ``configs/cluttered_digits_resnet34_t2.yaml``.
Each run folder holds ``metrics.jsonl``, ``summary.json`` and ``gradients.jsonl``; runs
already finished are not trained again. Then the script tabulates test accuracy (mean ±
sample std over seeds) and the first-layer / last-layer gradient-norm ratio, and draws the
figures::

    OMP_NUM_THREADS=1 python -m experiments.shortcut_depth --out runs/shortcut_depth --docs docs/img

``--report`` only re-reads finished runs. One thread per run (``train.threads=1``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from spikegrad import load_config, train
from spikegrad.diagnostics import norm_ratio, read_gradients
from spikegrad.durable import atomic_write
from spikegrad.recipes import recipe_path

MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain4": ("cluttered_digits_plain_cnn_t2", ("model.options.depth=4",)),
    "plain16": ("cluttered_digits_plain_cnn_t2", ()),
    "resnet34": ("cluttered_digits_resnet34_t2", ()),
}
METHODS: dict[str, tuple[str, ...]] = {
    "vanilla": (),
    "shortcut": ("shortcut.enabled=true", "shortcut.schedule=constant", "shortcut.lambda0=1.0"),
    "evolutionary": ("shortcut.enabled=true", "shortcut.schedule=linear", "shortcut.lambda0=0.25"),
}
# The shallow reference is trained without branches only.
GRID = [("plain4", "vanilla")] + [(m, k) for m in ("plain16", "resnet34") for k in METHODS]


def run_folder(out: Path, model: str, method: str, seed: int) -> Path:
    return out / model / method / f"seed{seed}"


def train_grid(out: Path, seeds: list[int], epochs: int | None, models: list[str],
               extra: list[str]) -> None:
    for model, method in GRID:
        if model not in models:
            continue
        recipe, model_overrides = MODELS[model]
        for seed in seeds:
            folder = run_folder(out, model, method, seed)
            if (folder / "summary.json").exists():
                continue
            overrides = [*model_overrides, *METHODS[method], f"train.seed={seed}",
                         "train.threads=1", "train.progress=false", *extra]
            if epochs is not None:
                overrides.append(f"train.epochs={epochs}")
            config = load_config(recipe_path(recipe), overrides)
            tic = time.perf_counter()
            print(f"== {model} {method} seed {seed}", flush=True)
            summary = train(config, folder, verbose=False, overwrite=True)  # a stopped run starts over
            print(f"   test {100 * summary['final_test_acc']:.2f}%  "
                  f"{time.perf_counter() - tic:.0f} s", flush=True)


def geometric_mean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def run_stats(folder: Path) -> dict[str, Any]:
    """Final / best test accuracy and the gradient-norm ratio per epoch of one run."""
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    records = read_gradients(folder)
    epochs = sorted({r["epoch"] for r in records})
    ratio_by_epoch = [geometric_mean([norm_ratio(r) for r in records if r["epoch"] == e])
                      for e in epochs]
    return {
        "final_test_acc": summary["final_test_acc"],
        "best_test_acc": summary["best_test_acc"],
        "method": summary["method"],
        "train_seconds": summary["train_seconds"],
        "test_acc_by_epoch": [r["test_acc"] for r in rows],
        "ratio_by_epoch": ratio_by_epoch,
        "ratio_records": [(r["iteration"], norm_ratio(r)) for r in records],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(out: Path, seeds: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for model, method in GRID:
        runs = [run_stats(run_folder(out, model, method, s)) for s in seeds
                if (run_folder(out, model, method, s) / "summary.json").exists()]
        if not runs:
            continue
        final = mean_std([100 * r["final_test_acc"] for r in runs])
        best = mean_std([100 * r["best_test_acc"] for r in runs])
        first_epoch = geometric_mean([r["ratio_by_epoch"][0] for r in runs])
        last_epoch = geometric_mean([r["ratio_by_epoch"][-1] for r in runs])
        overall = geometric_mean([v for r in runs for _, v in r["ratio_records"]])
        results[f"{model}/{method}"] = {
            "model": model, "method": method, "runs": runs, "seeds": len(runs),
            "final_test_acc": final, "best_test_acc": best,
            "ratio_first_epoch": first_epoch, "ratio_last_epoch": last_epoch,
            "ratio_overall": overall,
            "train_seconds": sum(r["train_seconds"] for r in runs),
        }
    return results


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| model | method | seeds | test acc (final) | best | ratio, epoch 1 | ratio, last epoch "
             "| ratio, all records | train time (all seeds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        (fm, fs), (bm, bs) = r["final_test_acc"], r["best_test_acc"]
        lines.append(
            f"| {r['model']} | {r['runs'][0]['method']} | {r['seeds']} | {fm:.2f} ± {fs:.2f}% "
            f"| {bm:.2f} ± {bs:.2f}% | {r['ratio_first_epoch']:.3g} | {r['ratio_last_epoch']:.3g} "
            f"| {r['ratio_overall']:.3g} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def draw(results: dict[str, Any], docs: Path) -> list[Path]:
    """Accuracy per epoch and the gradient-norm ratio per epoch, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r["model"] for r in results.values()))
    colors = {"vanilla": "tab:blue", "shortcut": "tab:orange", "evolutionary": "tab:green"}
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7.0), squeeze=False,
                             layout="constrained", sharey="row")
    for col, model in enumerate(models):
        acc_ax, ratio_ax = axes[0, col], axes[1, col]
        for r in (r for r in results.values() if r["model"] == model):
            color = colors[r["method"]]
            for k, run in enumerate(r["runs"]):
                epochs = range(1, len(run["test_acc_by_epoch"]) + 1)
                label = r["method"] if k == 0 else None
                acc_ax.plot(epochs, [100 * a for a in run["test_acc_by_epoch"]], color=color,
                            lw=1.0, alpha=0.8, label=label)
                ratio_ax.plot(range(1, len(run["ratio_by_epoch"]) + 1), run["ratio_by_epoch"],
                              color=color, lw=1.0, alpha=0.8, label=label)
        acc_ax.set_title(model)
        acc_ax.set_xlabel("epoch")
        ratio_ax.set_xlabel("epoch")
        ratio_ax.set_yscale("log")
        acc_ax.grid(alpha=0.3)
        ratio_ax.grid(alpha=0.3, which="both")
        acc_ax.legend(fontsize="small")
    axes[0, 0].set_ylabel("test accuracy, % (one line per seed)")
    axes[1, 0].set_ylabel("‖∇ first layer‖ / ‖∇ last layer‖\n(geometric mean per epoch)")
    fig.suptitle("Cluttered digits, T = 2: depth, shortcut branches and gradient flow")
    path = docs / "shortcut_depth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/shortcut_depth", type=Path)
    parser.add_argument("--docs", default=None, type=Path, help="folder for the figure")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key in every run, e.g. model.T=4")
    parser.add_argument("--report", action="store_true", help="only tabulate finished runs")
    args = parser.parse_args(argv)
    if not args.report:
        train_grid(args.out, args.seeds, args.epochs, args.models, args.set)
    results = report(args.out, args.seeds)
    table = markdown_table(results)
    print(table)
    atomic_write(args.out / "results.md", table + "\n")
    atomic_write(args.out / "results.json", json.dumps(results, indent=1) + "\n")
    if args.docs is not None:
        for path in draw(results, args.docs):
            print(path)


if __name__ == "__main__":
    main()
