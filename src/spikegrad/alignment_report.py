"""``spikegrad fdg CHECKPOINT``: the gradient-alignment analysis of a trained model.

The finite difference gradient of one layer (default: the first) on a fixed mini-batch is
compared with the surrogate gradient of every registered surrogate over a geometric sweep of
its sharpness; the result is a table, a JSON file and a plot of cosine similarity against
sharpness, one panel per surrogate (the analysis of Li et al. 2021, Fig. 2, for any model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spikegrad import surrogates
from spikegrad.alignment import SweepPoint, alignment_sweep, probe_batch
from spikegrad.checkpoint import load_model
from spikegrad.config import Config, DspikeConfig, from_dict
from spikegrad.data import build_datasets
from spikegrad.data.loader import collate_for
from spikegrad.errors import UserError, unknown_name_error
from spikegrad.fdg import check_bn_mode, finite_difference_gradient, resolve_layer, sample_weight_indices
from spikegrad.losses import training_loss
from spikegrad.trainer import resolve_device

__all__ = ["AlignmentReport", "analyse_checkpoint", "format_report", "plot_report", "write_report"]


@dataclass
class AlignmentReport:
    checkpoint: str
    layer: str
    weights: int
    probed: int
    nonzero_fdg: int
    epsilon_relative: float
    epsilon: float
    bn_mode: str
    batch_size: int
    split: str
    seed: int
    seconds: float
    points: list[SweepPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse_checkpoint(
    checkpoint: str | Path,
    layer: str | None = None,
    epsilon: float | None = None,
    num_weights: int | None = 256,
    batch_size: int = 128,
    split: str = "train",
    seed: int = 0,
    points: int = 9,
    factor: float = 8.0,
    names: Sequence[str] | None = None,
    device: str | None = None,
    overrides: Sequence[str] = (),
    max_stacked: int = 512,
    bn_mode: str | None = None,
) -> AlignmentReport:
    """Run the analysis on a checkpoint's model and dataset (see the module docstring).

    ``epsilon`` is relative to the RMS of the layer's weights (None: the ``dspike.epsilon``
    default); ``num_weights`` probes a seeded random subset (None: every weight); ``bn_mode``
    is how batch norm normalises (:mod:`spikegrad.fdg`; None: the ``dspike.bn_mode`` default).
    """
    tic = time.perf_counter()
    epsilon = DspikeConfig().epsilon if epsilon is None else epsilon
    bn_mode = check_bn_mode(DspikeConfig().bn_mode if bn_mode is None else bn_mode)
    if not epsilon > 0:
        raise UserError(f"--epsilon must be positive, got {epsilon}")
    model, payload = load_model(checkpoint)
    if getattr(model, "kind", "snn") == "ann":
        raise UserError(f"{str(checkpoint)!r} holds an ANN (model.kind=ann); the alignment analysis "
                        "compares surrogate gradients of a spiking model")
    for name in names or ():
        if name not in surrogates.available():
            raise unknown_name_error("surrogate", name, surrogates.available())
    if (num_weights is not None and num_weights <= 0) or batch_size <= 0:
        raise UserError(f"--num-weights and --batch-size must be positive, got {num_weights} and "
                        f"{batch_size}")
    if not points >= 1 or not factor >= 1.0:
        raise UserError(f"--points must be >= 1 and --range >= 1, got {points} and {factor}")
    config = from_dict(Config, payload["config"]).with_overrides(overrides)
    options = dict(config.data.options)
    if config.data.root is not None:
        options["root"] = config.data.root
    train_set, test_set, _ = build_datasets(config.data.name, **options)
    device_ = resolve_device(device or config.train.device)
    model = model.to(device_)
    layer_name, module = resolve_layer(model, layer)
    dataset = train_set if split == "train" else test_set
    inputs, targets = probe_batch(model, dataset, batch_size, seed, device_, collate_for(dataset))
    weight = module.weight.detach()
    indices = sample_weight_indices(weight.numel(), num_weights, torch.Generator().manual_seed(seed))
    indices = indices.to(device_)
    absolute = epsilon * float(weight.pow(2).mean().sqrt())
    loss_fn = training_loss(config.train)  # the loss the model was trained with
    fdg = finite_difference_gradient(model, module, inputs, targets, absolute, indices, loss_fn,
                                     max_stacked, bn_mode)
    rows = alignment_sweep(model, module, inputs, targets, fdg, indices, names, points, factor,
                           loss_fn, bn_mode)
    return AlignmentReport(
        checkpoint=str(checkpoint), layer=layer_name, weights=weight.numel(), probed=len(indices),
        nonzero_fdg=int((fdg != 0).sum()), epsilon_relative=epsilon, epsilon=absolute, bn_mode=bn_mode,
        batch_size=len(targets), split=split, seed=seed, seconds=time.perf_counter() - tic, points=rows,
    )


def format_report(report: AlignmentReport) -> str:
    """The header and a table: one line per (surrogate, sharpness), the best of each marked."""
    lines = [
        f"FDG of {report.layer}: {report.probed} of {report.weights} weights probed, "
        f"{report.nonzero_fdg} nonzero; epsilon {report.epsilon_relative:g} × weight RMS = "
        f"{report.epsilon:.4g}; batch norm in {report.bn_mode} mode; {report.batch_size} {report.split} "
        f"samples (seed {report.seed})",
        "",
        f"{'surrogate':<13} {'parameter':<14} {'value':>9} {'cosine':>8}",
        "-" * 47,
    ]
    for name in dict.fromkeys(p.surrogate for p in report.points):
        rows = [p for p in report.points if p.surrogate == name]
        best = max(rows, key=lambda p: p.similarity)
        for p in rows:
            mark = "  *" if p is best else ""
            lines.append(f"{p.surrogate:<13} {p.sharpness_name:<14} {p.sharpness:>9.4g} "
                         f"{p.similarity:>8.4f}{mark}")
    lines.append("")
    lines.append("* highest cosine similarity of each surrogate")
    return "\n".join(lines)


def plot_report(report: AlignmentReport, path: str | Path) -> Path:
    """Cosine similarity against sharpness (log axis), one panel per surrogate; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(dict.fromkeys(p.surrogate for p in report.points))
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, name in zip(axes.flat, names, strict=False):
        pts = [p for p in report.points if p.surrogate == name]
        xs, ys = [p.sharpness for p in pts], [p.similarity for p in pts]
        ax.plot(xs, ys, marker="o", color="tab:blue")
        best = max(pts, key=lambda p: p.similarity)
        ax.plot([best.sharpness], [best.similarity], marker="*", markersize=14, color="tab:red",
                linestyle="none", label=f"best {best.sharpness:.3g}")
        default = surrogates.create(name).sharpness
        ax.axvline(default, color="grey", linestyle="--", linewidth=1, label=f"default {default:g}")
        ax.set_xscale("log")
        ax.set_xticks(xs[:: max(1, len(xs) // 5)], [f"{v:.3g}" for v in xs[:: max(1, len(xs) // 5)]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(name)
        ax.set_xlabel(pts[0].sharpness_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("cosine similarity with FDG")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    source = "/".join(Path(report.checkpoint).parts[-3:])
    fig.suptitle(f"{source}: surrogate vs. finite difference gradient of "
                 f"{report.layer}\n(epsilon {report.epsilon_relative:g} × RMS, {report.probed} weights, "
                 f"{report.batch_size} samples, batch norm {report.bn_mode})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: AlignmentReport, prefix: str | Path) -> tuple[Path, Path]:
    """``<prefix>.json`` and ``<prefix>.png``."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return json_path, plot_report(report, prefix.with_name(prefix.name + ".png"))
