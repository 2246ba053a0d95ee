"""``spikegrad fdg CHECKPOINT``: the gradient-alignment analysis of a trained model.

The finite difference gradient of one layer (default: the first) is compared with the
surrogate gradient of every registered surrogate over a geometric sweep of its sharpness;
the result is a table, a JSON file and a plot of cosine similarity against sharpness, one
panel per surrogate (the analysis of Li et al. 2021, Fig. 2, for any model).

The comparison is repeated on ``batches`` probe batches (seeds ``seed``, ``seed + 1``, ...;
the probed weights stay those of ``seed``): each point is the mean cosine over the batches
and its error bar their standard deviation (``n - 1`` in the denominator), so the spread of
one probe batch is visible. Where a surrogate's best mean lies at an end of the sweep and
still rises there (by more than :data:`FLAT`: not a plateau), the sweep is extended on that
side by the sweep's own geometric step, up to ``extend`` points, until the best lies
inside; one still at an end after that is flagged (``at_edge``).

Batch norm normalises as ``bn_mode`` says (:mod:`spikegrad.fdg`: the probe batch's own
statistics, ``train``, or the running ones, ``eval``), the same in the finite difference
and the surrogate gradients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad import surrogates
from spikegrad.alignment import (
    SweepPoint,
    alignment_sweep,
    cosine_similarity,
    probe_batch,
    surrogate_gradients,
)
from spikegrad.checkpoint import load_model
from spikegrad.config import (
    CHECKPOINT_MODEL,
    DATASET_KEYS,
    LOSS_KEYS,
    Config,
    DspikeConfig,
    from_dict,
    refuse_unread_overrides,
)
from spikegrad.data.from_config import datasets_from_config
from spikegrad.data.loader import collate_for
from spikegrad.errors import UserError, unknown_name_error
from spikegrad.fdg import (
    ForwardFn,
    LossFn,
    check_bn_mode,
    finite_difference_gradient,
    resolve_layer,
    sample_weight_indices,
)
from spikegrad.losses import mean_logit_cross_entropy, training_loss
from spikegrad.neurons import SpikingNeuron
from spikegrad.trainer import resolve_device

__all__ = ["FLAT", "AlignmentReport", "Probe", "Sweep", "analyse_checkpoint", "edge", "format_report",
           "mean_and_spread", "plot_report", "read_report", "sweep_probes", "write_report"]


@dataclass
class AlignmentReport:
    """The analysis of one checkpoint. ``points`` hold the mean cosine over the probe
    batches, ``spread[i]`` the standard deviation of ``points[i]`` over them (0 with one
    batch) and ``similarities[i]`` the per-batch values; ``extended`` lists the surrogates
    whose sweep was extended, ``at_edge`` those whose best is still at an end of it."""

    checkpoint: str
    layer: str
    weights: int
    probed: int
    nonzero_fdg: int
    epsilon_relative: float
    epsilon: float
    batch_size: int
    split: str
    seed: int
    seconds: float
    points: list[SweepPoint] = field(default_factory=list)
    sweep_points: int = 9
    factor: float = 8.0
    batches: int = 1
    #: how batch norm normalised in the probes (:mod:`spikegrad.fdg`; reports from before the
    #: option were made in eval mode)
    bn_mode: str = "eval"
    spread: list[float] = field(default_factory=list)
    similarities: list[list[float]] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    at_edge: list[str] = field(default_factory=list)
    #: the Dspike temperatures an adaptive run ended with (checkpoint; group -> b), else empty
    run_temperatures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def best(self, surrogate: str) -> int:
        """Index in ``points`` of ``surrogate``'s highest mean cosine."""
        rows = [i for i, p in enumerate(self.points) if p.surrogate == surrogate]
        return max(rows, key=lambda i: self.points[i].similarity)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5


#: a best at an end of the sweep that beats its inner neighbour by no more than this (in mean
#: cosine) is a plateau, not an optimum beyond the sweep (Dspike below b ≈ 0.5 is a rectangle)
FLAT = 1e-3


def edge(values: Sequence[float], similarities: Sequence[float], flat: float = FLAT) -> int:
    """-1 if the best of ``similarities`` is at the smallest of ``values`` and still rising
    there (more than ``flat`` above its neighbour), +1 likewise at the largest, else 0."""
    if len(values) < 2:
        return 0
    order = sorted(range(len(values)), key=lambda i: values[i])
    best = max(order, key=lambda i: similarities[i])
    if best == order[0] and similarities[best] - similarities[order[1]] > flat:
        return -1
    if best == order[-1] and similarities[best] - similarities[order[-2]] > flat:
        return 1
    return 0


@dataclass
class Probe:
    """One probe batch and the reference (finite difference) gradient on it."""

    inputs: Tensor
    targets: Tensor
    fdg: Tensor


@dataclass
class Sweep:
    """Mean cosine per ``(surrogate, sharpness)`` over probe batches; see :func:`sweep_probes`."""

    points: list[SweepPoint]
    spread: list[float]
    similarities: list[list[float]]
    extended: list[str]
    at_edge: list[str]


def _swept(model: nn.Module, name: str, value: float) -> surrogates.Surrogate:
    """Surrogate ``name`` at sharpness ``value``, keeping the model's other parameters when
    the model uses that surrogate (as :func:`spikegrad.alignment.alignment_sweep` does)."""
    base = surrogates.create(name)
    own = {type(n.surrogate): n.surrogate for n in model.modules() if isinstance(n, SpikingNeuron)}
    return own.get(type(base), base).with_sharpness(value)


def _similarities_at(model, layer, probes, indices, loss_fn, rows, bn_mode, forward) -> list[list[float]]:
    """Cosine per ``(name, value)`` row and probe batch, every neuron using the row's surrogate."""
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    assignments = [dict.fromkeys(neurons, _swept(model, name, value)) for name, value in rows]
    per_probe = []
    for probe in probes:
        grads = surrogate_gradients(model, layer, probe.inputs, probe.targets, assignments, indices,
                                    loss_fn, bn_mode, forward)
        per_probe.append([cosine_similarity(probe.fdg, g) for g in grads])
    return [list(column) for column in zip(*per_probe, strict=True)]


def sweep_probes(
    model: nn.Module,
    layer: nn.Module,
    probes: Sequence[Probe],
    indices: Tensor,
    names: Sequence[str] | None = None,
    points: int = 9,
    factor: float = 8.0,
    loss_fn: LossFn = mean_logit_cross_entropy,
    extend: int = 4,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
) -> Sweep:
    """:func:`~spikegrad.alignment.alignment_sweep` on every probe, averaged, then extended.

    ``loss_fn``, ``bn_mode`` and ``forward`` must be those the probes' FDGs were computed with.

    A surrogate whose best mean cosine lies at the smallest (largest) swept value, rising
    there (:func:`edge`), gets one more value below (above) it, ``factor^(2/(points-1))``
    apart as the sweep's own, per round, for at most ``extend`` rounds or until its best
    lies inside.
    """
    table: dict[str, dict[float, list[float]]] = {}  # surrogate -> sharpness -> cosine per probe
    sharpness_name: dict[str, str] = {}
    sweeps = [alignment_sweep(model, layer, p.inputs, p.targets, p.fdg, indices, names, points, factor,
                              loss_fn, bn_mode, forward) for p in probes]
    for j, point in enumerate(sweeps[0]):
        sharpness_name[point.surrogate] = point.sharpness_name
        table.setdefault(point.surrogate, {})[point.sharpness] = [sweep[j].similarity for sweep in sweeps]
    step = factor ** (2.0 / (points - 1)) if points > 1 else 1.0
    extended = set()
    for _ in range(extend if step > 1.0 else 0):
        rows = []
        for name, by_value in table.items():
            values = sorted(by_value)
            side = edge(values, [mean_and_spread(by_value[v])[0] for v in values])
            if side:
                rows.append((name, values[-1] * step if side > 0 else values[0] / step))
        if not rows:
            break
        found = _similarities_at(model, layer, probes, indices, loss_fn, rows, bn_mode, forward)
        for (name, value), sims in zip(rows, found, strict=True):
            table[name][value] = sims
            extended.add(name)
    result = Sweep([], [], [], [n for n in table if n in extended], [])
    for name, by_value in table.items():
        values = sorted(by_value)
        if edge(values, [mean_and_spread(by_value[v])[0] for v in values]):
            result.at_edge.append(name)
        for value in values:
            mean, std = mean_and_spread(by_value[value])
            result.points.append(SweepPoint(name, sharpness_name[name], value, mean))
            result.spread.append(std)
            result.similarities.append(by_value[value])
    return result


#: the keys of a checkpoint's stored config that :func:`analyse_checkpoint`'s ``overrides`` may
#: set: its datasets, device and loss (the model is the checkpoint's; the probe has its arguments)
FDG_READS = (*DATASET_KEYS, "train.device", *LOSS_KEYS)
FDG_INSTEAD = {**CHECKPOINT_MODEL,
               "dspike": "the probe is set by fdg's own flags (--epsilon, --bn-mode, --layer, "
                         "--num-weights, --batch-size), not by the stored dspike section",
               "dspike.epsilon": "give --epsilon", "dspike.bn_mode": "give --bn-mode",
               "dspike.layer": "give --layer", "dspike.num_weights": "give --num-weights",
               "dspike.batch_size": "give --batch-size",
               "data.batch_size": "give --batch-size", "train.seed": "give --seed"}


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
    batches: int = 3,
    extend: int = 4,
    bn_mode: str | None = None,
) -> AlignmentReport:
    """Run the analysis on a checkpoint's model and dataset (see the module docstring).

    ``epsilon`` is relative to the RMS of the layer's weights (None: the ``dspike.epsilon``
    default); ``num_weights`` probes a seeded random subset (None: every weight);
    ``batches`` probe batches give the error bars; ``extend`` bounds the points added
    beyond an end of the sweep where the best lies (0: never extend); ``bn_mode`` is how
    batch norm normalises (:mod:`spikegrad.fdg`; None: the ``dspike.bn_mode`` default).
    ``overrides``: dotted ``KEY=VALUE`` settings of the stored config's datasets, device and
    loss (:data:`FDG_READS`); any other key is refused.
    """
    tic = time.perf_counter()
    refuse_unread_overrides(overrides, FDG_READS, "the FDG analysis (spikegrad fdg)", FDG_INSTEAD)
    epsilon = DspikeConfig().epsilon if epsilon is None else epsilon
    bn_mode = check_bn_mode(DspikeConfig().bn_mode if bn_mode is None else bn_mode)
    if not epsilon > 0:
        raise UserError(f"--epsilon must be positive, got {epsilon}")
    if batches < 1 or extend < 0:
        raise UserError(f"--batches must be >= 1 and --extend >= 0, got {batches} and {extend}")
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
    train_set, test_set, _ = datasets_from_config(config.data)
    device_ = resolve_device(device or config.train.device)
    model = model.to(device_)
    layer_name, module = resolve_layer(model, layer)
    dataset = train_set if split == "train" else test_set
    weight = module.weight.detach()
    indices = sample_weight_indices(weight.numel(), num_weights, torch.Generator().manual_seed(seed))
    indices = indices.to(device_)
    absolute = epsilon * float(weight.pow(2).mean().sqrt())
    loss_fn = training_loss(config.train)  # the loss the model was trained with
    probes = []
    for k in range(batches):
        inputs, targets = probe_batch(model, dataset, batch_size, seed + k, device_, collate_for(dataset))
        fdg = finite_difference_gradient(model, module, inputs, targets, absolute, indices, loss_fn,
                                         max_stacked, bn_mode)
        probes.append(Probe(inputs, targets, fdg))
    sweep = sweep_probes(model, module, probes, indices, names, points, factor, loss_fn, extend, bn_mode)
    temperatures = ((payload.get("components") or {}).get("dspike") or {}).get("temperatures") or {}
    return AlignmentReport(
        checkpoint=str(checkpoint), layer=layer_name, weights=weight.numel(), probed=len(indices),
        nonzero_fdg=int((probes[0].fdg != 0).sum()), epsilon_relative=epsilon, epsilon=absolute,
        batch_size=len(probes[0].targets), split=split, seed=seed, seconds=time.perf_counter() - tic,
        points=sweep.points, sweep_points=points, factor=factor, batches=batches, bn_mode=bn_mode,
        spread=sweep.spread, similarities=sweep.similarities, extended=sweep.extended, at_edge=sweep.at_edge,
        run_temperatures={str(k): float(v) for k, v in temperatures.items()},
    )


def format_report(report: AlignmentReport) -> str:
    """The header and a table: one line per (surrogate, sharpness), the best of each marked."""
    spread = report.spread or [0.0] * len(report.points)
    over = (f"mean ± std over {report.batches} probe batches of {report.batch_size} {report.split} "
            f"samples (seeds {report.seed}-{report.seed + report.batches - 1})" if report.batches > 1
            else f"{report.batch_size} {report.split} samples (seed {report.seed})")
    lines = [
        f"FDG of {report.layer}: {report.probed} of {report.weights} weights probed, "
        f"{report.nonzero_fdg} nonzero; epsilon {report.epsilon_relative:g} × weight RMS = "
        f"{report.epsilon:.4g}; batch norm in {report.bn_mode} mode; {over}",
        "",
        f"{'surrogate':<13} {'parameter':<14} {'value':>9} {'cosine':>8} {'± std':>7}",
        "-" * 55,
    ]
    for name in dict.fromkeys(p.surrogate for p in report.points):
        best = report.best(name)
        for i, p in enumerate(report.points):
            if p.surrogate != name:
                continue
            mark = "  *" if i == best else ""
            lines.append(f"{p.surrogate:<13} {p.sharpness_name:<14} {p.sharpness:>9.4g} "
                         f"{p.similarity:>8.4f} {spread[i]:>7.4f}{mark}")
    lines.append("")
    lines.append("* highest mean cosine similarity of each surrogate")
    if report.extended:
        lines.append(f"sweep extended past its end, where the best lay: {', '.join(report.extended)}")
    if report.at_edge:
        lines.append(f"best still at an end of the sweep (the optimum may lie beyond; raise --range "
                     f"or --extend): {', '.join(report.at_edge)}")
    return "\n".join(lines)


def plot_report(report: AlignmentReport, path: str | Path) -> Path:
    """Mean cosine ± std over the probe batches against sharpness (log axis), one panel per
    surrogate; points added past the sweep's ends are hollow, a best still at an end is
    flagged, and an adaptive run's final Dspike temperature is marked. A PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(dict.fromkeys(p.surrogate for p in report.points))
    spread = report.spread or [0.0] * len(report.points)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, name in zip(axes.flat, names, strict=False):
        idx = [i for i, p in enumerate(report.points) if p.surrogate == name]
        pts = [report.points[i] for i in idx]
        xs, ys, es = [p.sharpness for p in pts], [p.similarity for p in pts], [spread[i] for i in idx]
        default = surrogates.create(name).sharpness
        swept = (min(xs), max(xs)) if name not in report.extended else _original_range(default, report)
        ax.errorbar(xs, ys, yerr=es if report.batches > 1 else None, marker="", color="tab:blue",
                    capsize=3, lw=1.2)
        inside = [(x, y) for x, y in zip(xs, ys, strict=True) if swept[0] * 0.999 <= x <= swept[1] * 1.001]
        outside = [(x, y) for x, y in zip(xs, ys, strict=True) if (x, y) not in inside]
        ax.plot(*zip(*inside, strict=True), "o", color="tab:blue", markersize=5)
        if outside:
            ax.plot(*zip(*outside, strict=True), "o", mfc="white", color="tab:blue", markersize=5,
                    label="added past the sweep's end")
        best = report.points[report.best(name)]
        ax.plot([best.sharpness], [best.similarity], marker="*", markersize=14, color="tab:red",
                linestyle="none", label=f"best {best.sharpness:.3g}")
        ax.axvline(default, color="grey", linestyle="--", linewidth=1, label=f"default {default:g}")
        if name == "dspike":
            for b in sorted(set(report.run_temperatures.values())):
                ax.axvline(b, color="tab:green", linestyle=":", linewidth=1.5,
                           label=f"run ended at {b:g}")
        if name in report.at_edge:
            ax.text(0.5, 0.02, "best at the sweep's end:\nthe optimum may lie beyond", color="tab:red",
                    transform=ax.transAxes, ha="center", va="bottom", fontsize=8)
        elif best.sharpness in (min(xs), max(xs)) and len(xs) > 1:
            ax.text(0.5, 0.02, f"best at the sweep's end, but flat there\n(within {FLAT:g} of "
                    "its neighbour): a plateau", color="tab:gray", transform=ax.transAxes,
                    ha="center", va="bottom", fontsize=8)
        ax.set_xscale("log")
        ticks = xs[:: max(1, len(xs) // 5)]
        ax.set_xticks(ticks, [f"{v:.3g}" for v in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(name)
        ax.set_xlabel(pts[0].sharpness_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("cosine similarity with FDG")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    source = "/".join(Path(report.checkpoint).parts[-3:])
    bars = (f"mean ± std over {report.batches} probe batches of {report.batch_size}"
            if report.batches > 1 else f"one probe batch of {report.batch_size}")
    fig.suptitle(f"{source}: surrogate vs. finite difference gradient of "
                 f"{report.layer}\n(epsilon {report.epsilon_relative:g} × RMS, {report.probed} weights, "
                 f"{bars} samples, batch norm {report.bn_mode})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _original_range(default: float, report: AlignmentReport) -> tuple[float, float]:
    """The sharpness range of the sweep before any extension (``default/range .. default·range``)."""
    if report.sweep_points == 1:
        return default, default
    return default / report.factor, default * report.factor


def read_report(path: str | Path) -> AlignmentReport:
    """The :class:`AlignmentReport` of a ``fdg.json`` that :func:`write_report` wrote (to plot
    it again without recomputing)."""
    try:
        data = json.loads(Path(path).read_text())
        data["points"] = [SweepPoint(**p) for p in data["points"]]
        return AlignmentReport(**data)
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"{str(path)!r} is not an fdg report ({exc})") from exc


def write_report(report: AlignmentReport, prefix: str | Path) -> tuple[Path, Path]:
    """``<prefix>.json`` and ``<prefix>.png``."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return json_path, plot_report(report, prefix.with_name(prefix.name + ".png"))
