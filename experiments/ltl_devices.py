"""Accuracy of a trained SNN on imperfect devices, before and after calibration.

    python -m experiments.ltl_devices --student runs/.../last.pt --teacher runs/.../teacher/last.pt \
        [--steps 50] [--seeds 0 1 2] [--lr 0.001] [--plot docs/ltl_devices.png]

For every device model (multiplicative weight variation σ, stuck-at-zero and stuck-at-max
fractions, k-bit weights, threshold variation) and seed, the student is loaded afresh, the
devices are applied (:mod:`spikegrad.devices`), and it is calibrated with ``--steps`` steps
of online LTL against the ANN teacher or of BPTT fine-tuning (:mod:`spikegrad.calibration`);
"none" is the faulty network before any update. The same seed gives the same faults to both
methods. Both use Adam at ``--lr`` (constant), the student's batch size, and the devices
re-applied after every step. Accuracy: test set, logits averaged over all T.
Writes JSON to ``--out``, prints a markdown table, and plots to ``--plot``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from spikegrad import datasets_from_config, evaluate_model, from_checkpoint
from spikegrad.calibration import calibrate
from spikegrad.data import collate_for
from spikegrad.devices import DeviceModel
from spikegrad.durable import atomic_write

SWEEPS: dict[str, list[dict[str, Any]]] = {
    "sigma": [{"sigma": s} for s in (0.0, 0.1, 0.2, 0.3)],
    "stuck_at_zero": [{"stuck_at_zero": f} for f in (0.1, 0.2, 0.3)],
    "stuck_at_max": [{"stuck_at_max": f} for f in (0.01, 0.02, 0.05)],
    "other": [{"bits": 4}, {"bits": 3}, {"threshold_sigma": 0.2},
              {"sigma": 0.2, "stuck_at_zero": 0.05, "stuck_at_max": 0.01, "bits": 4,
               "threshold_sigma": 0.1}],
}
METHODS = ("ltl-online", "bptt")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    stored = from_checkpoint(args.student, ["optim.name=adam", "train.device=cpu"])
    student, config = stored.model, stored.config
    teacher = from_checkpoint(args.teacher).model
    train_set, test_set, info = datasets_from_config(config.data)
    loader = torch.utils.data.DataLoader(test_set, batch_size=config.data.eval_batch_size,
                                         collate_fn=collate_for(test_set))
    cpu = torch.device("cpu")
    ideal = evaluate_model(student, loader, cpu)["test_acc"]
    teacher_acc = evaluate_model(teacher, loader, cpu)["test_acc"]
    print(f"ideal student {100 * ideal:.2f}%, teacher {100 * teacher_acc:.2f}%", file=sys.stderr)
    rows = []
    for sweep in args.sweeps:
        for setting in SWEEPS[sweep][:args.first]:
            for seed in args.seeds:
                devices = DeviceModel(seed=seed, **setting)
                for method in METHODS:
                    result = calibrate(copy.deepcopy(student), devices, train_set, test_set, config,
                                       method, args.steps, teacher=teacher, lr=args.lr, info=info)
                    result.update(sweep=sweep, setting=setting, seed=seed)
                    rows.append(result)
                print(f"  {devices.describe()} seed {seed}: none {100 * result['acc_before']:.1f}, "
                      + ", ".join(f"{r['method']} {100 * r['acc_after']:.1f}" for r in rows[-2:]),
                      file=sys.stderr)
    return [{"ideal_student": ideal, "teacher": teacher_acc, "steps": args.steps, "lr": args.lr,
             "student": args.student, "teacher_checkpoint": args.teacher}, *rows]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds for every device model and method."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = r["devices"]
        group = groups.setdefault(key, {"devices": key, "sweep": r["sweep"],
                                        "setting": r["setting"], "none": [], **{m: [] for m in METHODS}})
        group[r["method"]].append(r["acc_after"])
        if r["method"] == METHODS[0]:
            group["none"].append(r["acc_before"])
    out = []
    for g in groups.values():
        for name in ("none", *METHODS):
            values = g[name]
            g[name] = (statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)
        out.append(g)
    return out


def table(summary: list[dict[str, Any]], head: dict[str, Any]) -> str:
    lines = [f"ideal student {100 * head['ideal_student']:.2f}%, ANN teacher "
             f"{100 * head['teacher']:.2f}%; {head['steps']} calibration steps, Adam lr {head['lr']}",
             "", "| devices | none | online LTL | BPTT fine-tuning |", "|---|---|---|---|"]
    for g in summary:
        cells = [f"{100 * g[m][0]:.1f} ± {100 * g[m][1]:.1f}" for m in ("none", *METHODS)]
        lines.append(f"| {g['devices']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], head: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("sigma", "weight variation σ"), ("stuck_at_zero", "stuck-at-zero fraction"),
              ("stuck_at_max", "stuck-at-max fraction")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    styles = {"none": ("no calibration", "tab:gray", "o"),
              "ltl-online": ("online LTL", "tab:blue", "s"),
              "bptt": ("BPTT fine-tuning", "tab:orange", "^")}
    for ax, (sweep, xlabel) in zip(axes, panels, strict=True):
        groups = [g for g in summary if g["sweep"] == sweep]
        if sweep != "sigma":  # start each fault sweep at the ideal devices (fraction 0)
            groups = [g for g in summary if g["devices"] == "ideal"] + groups
        x = [g["setting"].get(sweep, 0.0) for g in groups]
        for method, (label, color, marker) in styles.items():
            mean = [100 * g[method][0] for g in groups]
            std = [100 * g[method][1] for g in groups]
            ax.errorbar(x, mean, yerr=std, label=label, color=color, marker=marker, capsize=3)
        ax.axhline(100 * head["ideal_student"], color="black", ls=":", lw=1, label="ideal SNN")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"SNN on imperfect devices: {head['steps']} calibration steps "
                 f"(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.ltl_devices",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--student", help="checkpoint of the trained SNN")
    parser.add_argument("--teacher", help="checkpoint of its ANN teacher")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS),
                        help="device models to sweep (default: all)")
    parser.add_argument("--first", type=int, default=None,
                        help="only the first this many settings of each sweep (default: all)")
    parser.add_argument("--out", default="runs/bench_ltl/devices.json")
    parser.add_argument("--plot", default="docs/ltl_devices.png")
    parser.add_argument("--from-json", action="store_true",
                        help="table and plot from --out without running anything")
    args = parser.parse_args(argv)
    if not args.from_json and not (args.student and args.teacher):
        parser.error("--student and --teacher are required (unless --from-json)")
    if args.from_json:
        rows = json.loads(Path(args.out).read_text())
    else:
        rows = run(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps(rows, indent=2) + "\n")
    summary = summarise(rows[1:])
    print(table(summary, rows[0]))
    plot(summary, rows[0], Path(args.plot))
    print(f"\nwritten {args.out} and {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
