"""Ablation of the adaptive Dspike temperature on the cluttered digits benchmark.

Same network (the packaged ``digits`` recipe: digits_cnn, T = 4, LIF 0.25 / 0.5, hard reset), data
(``cluttered_digits``), optimiser and epochs for every row; only the surrogate changes:

- ``dspike-adaptive``: Dspike from b = 3 with the temperature search (the ``dspike`` defaults);
- ``dspike-b3``: Dspike with the temperature fixed at 3;
- ``rectangle``, ``sigmoid``, ``atan``: each at its registry default sharpness.

Each row runs for every seed into ``OUT/<row>/seed<k>`` (a finished run is kept and not
rerun). The summary is a Markdown table of the final and best test accuracy (mean ± std
over seeds) and a plot of the temperature trajectory of the adaptive runs.

    OMP_NUM_THREADS=1 python -m experiments.dspike_ablation --out runs/dspike_ablation --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spikegrad.durable import atomic_write
from spikegrad.recipes import recipe_path

ROWS: dict[str, list[str]] = {
    "dspike-adaptive": ["dspike.adaptive=true"],
    "dspike-b3": ["dspike.adaptive=false"],
    "rectangle": ["dspike.adaptive=false", "model.surrogate={name: rectangle}"],
    "sigmoid": ["dspike.adaptive=false", "model.surrogate={name: sigmoid}"],
    "atan": ["dspike.adaptive=false", "model.surrogate={name: atan}"],
}


def run_one(out: Path, row: str, seed: int, epochs: int, extra: list[str]) -> Path:
    folder = out / row / f"seed{seed}"
    if (folder / "summary.json").exists():
        return folder
    overrides = [*ROWS[row], "data.name=cluttered_digits", f"train.epochs={epochs}", f"train.seed={seed}",
                 "train.threads=1", "train.progress=false", f"name=ablation-{row}-seed{seed}", *extra]
    cmd = [sys.executable, "-m", "spikegrad", "train", str(recipe_path("digits")), "--out", str(folder)]
    if (folder / "last.pt").exists():
        cmd.append("--resume")  # a run stopped half-way continues
    for item in overrides:
        cmd += ["--set", item]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return folder


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def summarise(out: Path, rows: list[str], seeds: list[int]) -> str:
    lines = ["| surrogate | final test acc (%) | best test acc (%) | final train acc (%) | seeds |",
             "|---|---|---|---|---|"]
    for row in rows:
        runs = [read_metrics(out / row / f"seed{s}") for s in seeds]
        final = [r[-1]["test_acc"] for r in runs]
        best = [max(e["test_acc"] for e in r) for r in runs]
        train = [r[-1]["train_acc"] for r in runs]
        lines.append(f"| {row} | {mean_std(final)} | {mean_std(best)} | {mean_std(train)} | {len(runs)} |")
    return "\n".join(lines)


def plot_temperatures(out: Path, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_s) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for seed in seeds:
        rows = read_metrics(out / "dspike-adaptive" / f"seed{seed}")
        ax_b.plot([r["epoch"] for r in rows], [r["dspike_temperature"] for r in rows], marker="o",
                  label=f"seed {seed}")
        searched = [r for r in rows if "dspike_similarity" in r]
        chosen = [r["dspike_similarity"][f"{r['dspike_temperature']:.6g}"] for r in searched]
        ax_s.plot([r["epoch"] for r in searched], chosen, marker="o", label=f"seed {seed}")
    ax_b.set_xlabel("epoch")
    ax_b.set_ylabel("temperature b used in the epoch")
    ax_b.set_title("Dspike temperature (search from b = 3)")
    ax_s.set_xlabel("epoch")
    ax_s.set_ylabel("cosine similarity with the FDG")
    ax_s.set_title("similarity of the chosen candidate")
    for ax in (ax_b, ax_s):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/dspike_ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--plot", default="docs/dspike_temperature.png")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    jobs = [(row, seed) for seed in args.seeds for row in args.rows]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run_one, out, row, seed, args.epochs, args.set) for row, seed in jobs]:
            print(f"done: {future.result()}", flush=True)
    table = summarise(out, args.rows, args.seeds)
    print("\n" + table)
    atomic_write(out / "summary.md", table + "\n")
    if "dspike-adaptive" in args.rows:
        plot_temperatures(out, args.seeds, Path(args.plot))
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
