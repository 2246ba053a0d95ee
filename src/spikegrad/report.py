"""``spikegrad report``: one self-contained HTML page with the plots of one or more runs.

Reads what a run folder holds (``metrics.jsonl``, ``summary.json``, ``config.yaml``,
``analysis.json``, ``gradients.jsonl``) and draws, for all runs side by side: loss and
accuracy, learning rate, the Dspike temperature and FDG similarities, the shortcut λ,
per-layer gradient norms and the first layer's gradient histogram, LTL per-layer losses,
firing rates (per layer, per time step, dead and saturated neurons, membrane statistics),
SOPs and energy, spike rasters and membrane traces (``recording.npz``). A section appears
only when some run has its data. The PNGs are embedded
as base64, so the page is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spikegrad import runlock
from spikegrad.analysis import ANALYSIS_FILE
from spikegrad.diagnostics import GRADIENTS_FILE, read_jsonl
from spikegrad.errors import UserError
from spikegrad.safe_yaml import load_yaml, read_text

__all__ = ["Run", "find_runs", "load_run", "render_report", "write_report"]

METRICS_FILE = "metrics.jsonl"


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """Everything the report reads from one run folder (absent files give empty values)."""

    folder: Path
    label: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    gradients: list[dict[str, Any]] = field(default_factory=list)
    #: the trainer writing the folder now (``"PID n on HOST"``), None when no run is in progress
    in_progress: str | None = None

    def series(self, key: str) -> tuple[list[float], list[Any]]:
        """``(epochs, values)`` of a metrics field, skipping epochs where it is missing."""
        epochs, values = [], []
        for row in self.metrics:
            if row.get(key) is not None:
                epochs.append(row.get("epoch", len(epochs) + 1))
                values.append(row[key])
        return epochs, values

    def has(self, key: str) -> bool:
        return any(row.get(key) is not None for row in self.metrics)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{str(path)!r} is not valid JSON ({exc.msg})") from exc


#: metrics fields the report draws: a number (or null) each, or a mapping of numbers
_NUMBER_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "firing_rate",
                  "sops", "energy_uj", "dspike_temperature", "shortcut_lambda", "combined_test_acc")
_MAPPING_FIELDS = ("firing_rates", "dspike_temperatures", "ltl_layer_losses", "dspike_similarity",
                   "branch_test_acc")


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``, with a clear error for a line whose drawn fields are not numbers."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        bad = next((k for k in _NUMBER_FIELDS if not _is_number(row.get(k))), None)
        expected = "a number"
        if bad is None:
            bad = next((k for k in _MAPPING_FIELDS if row.get(k) is not None and not (
                isinstance(row[k], dict) and all(_is_number(v) for v in row[k].values())
                and (k != "dspike_similarity" or all(map(_is_float_text, row[k]))))), None)
            expected = "a mapping of " + ("candidate temperatures" if bad == "dspike_similarity"
                                          else "names") + " to numbers"
        if bad is not None:
            lines = [i for i, line in enumerate(path.read_bytes().splitlines(), 1) if line.strip()]
            raise UserError(f"{str(path)!r} line {lines[number - 1]}: {bad!r} is {row[bad]!r}, not "
                            f"{expected}; the file is damaged (fix or delete that line)")
    return rows


def load_run(folder: str | Path, label: str | None = None) -> Run:
    """Read one run folder; it must hold at least ``metrics.jsonl``."""
    folder = Path(folder)
    if not (folder / METRICS_FILE).is_file():
        raise UserError(f"{str(folder)!r} is not a run folder (it has no {METRICS_FILE}); pass the "
                        "folder that `spikegrad train --out` or `spikegrad demo` wrote")
    run = Run(folder, label or folder.name, metrics=_read_metrics(folder / METRICS_FILE),
              in_progress=runlock.holder(folder))
    if (folder / "summary.json").is_file():
        run.summary = _read_json(folder / "summary.json")
    if (folder / ANALYSIS_FILE).is_file():
        run.analysis = _read_json(folder / ANALYSIS_FILE)
    if (folder / GRADIENTS_FILE).is_file():
        run.gradients = read_jsonl(folder / GRADIENTS_FILE)
    if (folder / "config.yaml").is_file():
        try:
            path = folder / "config.yaml"
            run.config = load_yaml(read_text(path, "run config"), f"run config {str(path)!r}") or {}
        except UserError:  # the report only shows its dataset and model names
            run.config = {}
        if not isinstance(run.config, dict):
            run.config = {}
    return run


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Runs for the given folders; a folder without metrics but with run subfolders expands."""
    folders: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"run folder {str(path)!r} does not exist")
        if (path / METRICS_FILE).is_file():
            folders.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / METRICS_FILE).is_file())
        if not children:
            raise UserError(f"{str(path)!r} holds no {METRICS_FILE} and no run folders that do")
        folders.extend(children)
    names = [f.name for f in folders]
    labels = []
    for folder in folders:
        label = folder.name if names.count(folder.name) == 1 else str(folder)
        labels.append(label)
    return [load_run(folder, label) for folder, label in zip(folders, labels, strict=True)]


# --------------------------------------------------------------------------- drawing


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # epochs and iterations are whole numbers
        if ax.get_xlabel() in ("epoch", "iteration", "time step t"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _short(name: str) -> str:
    """A layer's name for tick labels and legends: its module path (``print(model)`` shows it)."""
    return name


def _panels(fig, count: int, ncols: int = 3):
    """``count`` axes on a grid of at most ``ncols`` columns."""
    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    return [fig.add_subplot(nrows, ncols, i + 1) for i in range(count)]


def _grid_size(count: int, ncols: int = 3, width: float = 11.0, row_height: float = 3.6):
    ncols = min(ncols, count)
    return width if count > 1 else 6.5, row_height * math.ceil(count / ncols)


def _run_legend(fig, runs: Sequence[Run], colors: list, key: str | None = None) -> None:
    """One legend for the run colours, below the panels (only runs with ``key``, if given)."""
    from matplotlib.lines import Line2D

    pairs = [(r, c) for r, c in zip(runs, colors, strict=True) if key is None or r.has(key)]
    runs = [r for r, _ in pairs]
    handles = [Line2D([], [], color=c, lw=2) for _, c in pairs]
    fig.legend(handles, [r.label for r in runs], loc="outside lower center",
               ncols=min(len(runs), 4), title="run", frameon=False)


def _layer_axis(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("layer (input → output)")


@dataclass
class Section:
    title: str
    text: str
    images: list[tuple[str, str]]  # (alt text, base64 PNG)


SectionBuilder = Callable[[list[Run]], Section | None]
SECTIONS: list[SectionBuilder] = []


def section(fn: SectionBuilder) -> SectionBuilder:
    SECTIONS.append(fn)
    return fn


def _close(a: float, b: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * max(abs(a), abs(b)))


def coincident_groups(runs: Sequence[Run], key: str) -> list[list[Run]]:
    """The runs with ``key`` grouped by equal series (same epochs, values equal to 1e-9
    relative), groups and their members in the order of ``runs``."""
    groups: list[tuple[tuple[list, list], list[Run]]] = []
    for run in runs:
        epochs, values = run.series(key)
        if not epochs:
            continue
        for (e, v), members in groups:
            if e == epochs and all(_close(float(a), float(b)) for a, b in zip(v, values, strict=True)):
                members.append(run)
                break
        else:
            groups.append(((epochs, values), [run]))
    return [members for _, members in groups]


def _interleaved(k: int, n: int, dash: float = 5.0) -> tuple[float, tuple[float, float]]:
    """Dash pattern of the ``k``-th of ``n`` equal lines: each draws every ``n``-th dash, so
    the colours alternate along the common line (the offset shifts run ``k`` by ``k`` dashes)."""
    return ((n - k) % n * dash, (dash, (n - 1) * dash))


def _epoch_lines(ax, runs, colors, key, scale=1.0, style="-", marker=None) -> list[list[Run]]:
    """One line per run; runs with equal series are drawn as one line of alternating colours
    (and concentric markers) instead of hiding each other. Returns the groups of equal runs."""
    color_of = {id(r): c for r, c in zip(runs, colors, strict=True)}
    groups = coincident_groups(runs, key)
    for group in groups:
        n = len(group)
        for k, run in enumerate(group):
            epochs, values = run.series(key)
            ys = [scale * v for v in values]
            if n == 1:
                ax.plot(epochs, ys, style, color=color_of[id(run)], marker=marker, markersize=3)
                continue
            ls = _interleaved(k, n) if style == "-" else style
            ax.plot(epochs, ys, color=color_of[id(run)], ls=ls, lw=1.8, marker=marker,
                    markersize=3 + 2.2 * (n - 1 - k), zorder=2 + k)
    return [g for g in groups if len(g) > 1]


def _shared_note(groups: list[list[Run]], what: str) -> str:
    """``"Equal <what>: a = b = c (one line of alternating colours)."``, or ``""``."""
    if not groups:
        return ""
    listed = "; ".join(" = ".join(r.label for r in g) for g in groups)
    return f"Equal {what}: {listed} (drawn as one line of alternating colours and nested markers)."


@section
def _loss_accuracy(runs: list[Run]) -> Section | None:
    if not any(run.has("train_loss") or run.has("test_loss") for run in runs):
        return None
    from matplotlib.lines import Line2D

    colors = _colors(len(runs))
    fig = _figure(11, 4.2)
    loss, acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _epoch_lines(loss, runs, colors, "train_loss")
    _epoch_lines(loss, runs, colors, "test_loss", style="--")
    _epoch_lines(acc, runs, colors, "train_acc", 100.0)
    _epoch_lines(acc, runs, colors, "test_acc", 100.0, style="--")
    loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    styles = [Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--")]
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.legend(styles, ["train", "test"], loc="best", fontsize=8)
    _run_legend(fig, runs, colors, "test_acc")
    return Section("Loss and accuracy", "Training (solid) and test (dashed) per epoch.",
                   [("loss and accuracy curves", _png(fig))])


@section
def _learning_rate(runs: list[Run]) -> Section | None:
    if not any(run.has("lr") for run in runs):
        return None
    colors = _colors(len(runs))
    fig = _figure(7, 3.8)
    ax = fig.add_subplot()
    shared = _epoch_lines(ax, runs, colors, "lr", marker="o")
    values = [v for r in runs for v in r.series("lr")[1]]
    log = min(values) > 0 and max(values) > 10 * min(values)
    if log:  # schedules an order of magnitude apart (LTL vs. BPTT) stay readable
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate" + (" (log scale)" if log else ""),
           title="Learning rate at the start of each epoch")
    ax.grid(alpha=0.3, which="both")
    _run_legend(fig, runs, colors, "lr")
    return Section("Learning rate", _shared_note(shared, "schedules"),
                   [("learning rate per epoch", _png(fig))])


@section
def _dspike(runs: list[Run]) -> Section | None:
    with_temperature = [r for r in runs if r.has("dspike_temperature") or r.has("dspike_temperatures")]
    with_similarity = [r for r in runs if r.has("dspike_similarity")]
    if not with_temperature and not with_similarity:
        return None
    images = []
    colors = _colors(len(runs))
    color_of = {id(r): c for r, c in zip(runs, colors, strict=True)}
    shared: list[list[Run]] = []
    if any(r.has("dspike_temperature") for r in runs):
        fig = _figure(7, 3.8)
        ax = fig.add_subplot()
        shared = _epoch_lines(ax, runs, colors, "dspike_temperature", marker="o")
        ax.set(xlabel="epoch", ylabel="temperature b", title="Dspike temperature (global)")
        ax.grid(alpha=0.3)
        _run_legend(fig, runs, colors, "dspike_temperature")
        images.append(("Dspike temperature per epoch", _png(fig)))
    per_layer = [r for r in runs if r.has("dspike_temperatures")]
    if per_layer:
        fig = _figure(*_grid_size(len(per_layer)))
        for ax, run in zip(_panels(fig, len(per_layer)), per_layer, strict=True):
            epochs, values = run.series("dspike_temperatures")
            layers = list(dict.fromkeys(k for v in values for k in v))
            for layer, color in zip(layers, _layer_colors(len(layers)), strict=True):
                ax.plot(epochs, [v.get(layer, math.nan) for v in values], color=color,
                        label=_short(layer))
            ax.set(xlabel="epoch", ylabel="temperature b", title=f"{run.label}: per layer")
            ax.grid(alpha=0.3)
            _small_legend(ax, len(layers))
        images.append(("Dspike temperature per layer", _png(fig)))
    if with_similarity:
        from matplotlib import colormaps
        from matplotlib.colors import Normalize

        fig = _figure(*_grid_size(len(with_similarity)))
        for ax, run in zip(_panels(fig, len(with_similarity)), with_similarity, strict=True):
            epochs, values = run.series("dspike_similarity")
            temps = [float(t) for v in values for t in v]
            norm = Normalize(min(temps), max(temps) if max(temps) > min(temps) else min(temps) + 1)
            xs, ys, cs, best_x, best_y = [], [], [], [], []
            for epoch, sims in zip(epochs, values, strict=True):
                for temp, sim in sims.items():
                    xs.append(epoch)
                    ys.append(sim)
                    cs.append(float(temp))
                best = max(sims.values())
                best_x.append(epoch)
                best_y.append(best)
            points = ax.scatter(xs, ys, c=cs, cmap=colormaps["viridis"], norm=norm, s=22, zorder=3)
            ax.plot(best_x, best_y, color=color_of[id(run)], lw=1, zorder=2, label="chosen (max)")
            fig.colorbar(points, ax=ax, label="candidate temperature b")
            ax.set(xlabel="epoch", ylabel="cosine similarity with FDG", title=run.label)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        images.append(("FDG cosine similarity of each candidate temperature", _png(fig)))
    return Section(
        "Dspike temperature and FDG similarity",
        "The temperature b used in each epoch, and the cosine similarity between each "
        "candidate's surrogate gradient and the finite-difference gradient of the first layer. "
        + _shared_note(shared, "temperatures"),
        images,
    )


def _layer_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def _small_legend(ax, count: int) -> None:
    if count <= 10:
        ax.legend(fontsize=7, loc="best", title="layer", title_fontsize=7)
    else:
        ax.text(0.99, 0.01, f"{count} layers, dark = first, yellow = last",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7)


def _percent(value: Any) -> str:
    return _fmt(value, ".1f", 100) + ("%" if value is not None else "")


def _shortcut_heads(ax, runs: list[Run], colors: list) -> str:
    """Test accuracy per epoch of each run's own head (solid), its combined output (dashed)
    and its branches (dotted, one marker each); returns the final values in words."""
    from matplotlib.lines import Line2D

    markers, finals = "os^vD<>p*h", []
    for run, color in zip(runs, colors, strict=True):
        if not run.has("combined_test_acc"):
            continue
        for key, style in (("test_acc", "-"), ("combined_test_acc", "--")):
            epochs, values = run.series(key)
            ax.plot(epochs, [100 * v for v in values], style, color=color)
        epochs, values = run.series("branch_test_acc")
        branches = list(dict.fromkeys(k for v in values for k in v))
        for i, name in enumerate(branches):
            ax.plot(epochs, [100 * v.get(name, math.nan) for v in values], ":", color=color,
                    marker=markers[i % len(markers)], markersize=4)
        last = run.metrics[-1] if run.metrics else {}
        per_branch = ", ".join(f"{name} {_percent(v)}" for name, v in
                               (last.get("branch_test_acc") or {}).items())
        finals.append(f"{run.label}: own head {_percent(last.get('test_acc'))}, combined "
                      f"{_percent(last.get('combined_test_acc'))}, branches {per_branch}")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Own head, combined output, branches")
    ax.grid(alpha=0.3)
    ax.legend([Line2D([], [], color="gray", ls=ls) for ls in ("-", "--", ":")],
              ["own head (deployed)", "combined (what the loss fits)", "each branch"], fontsize=7)
    return "Last epoch: " + "; ".join(finals) + "."


@section
def _shortcut(runs: list[Run]) -> Section | None:
    if not any(run.has("shortcut_lambda") for run in runs):
        return None
    colors = _colors(len(runs))
    heads = any(run.has("combined_test_acc") for run in runs)
    fig = _figure(11 if heads else 7, 3.8)
    ax = fig.add_subplot(1, 2 if heads else 1, 1)
    shared = _epoch_lines(ax, runs, colors, "shortcut_lambda", marker="o")
    ax.set(xlabel="epoch", ylabel="λ (weight of the shortcut branches)",
           title="Shortcut branch weight λ")
    ax.grid(alpha=0.3)
    text = _shared_note(shared, "λ schedules")
    if heads:
        text = " ".join(t for t in (text, _shortcut_heads(fig.add_subplot(1, 2, 2), runs, colors)) if t)
    _run_legend(fig, runs, colors, "shortcut_lambda")
    return Section("Shortcut back-propagation", text,
                   [("shortcut lambda and head accuracies per epoch" if heads
                     else "shortcut lambda per epoch", _png(fig))])


@section
def _gradients(runs: list[Run]) -> Section | None:
    with_norms = [r for r in runs if any(rec.get("norms") for rec in r.gradients)]
    with_hist = [r for r in runs if any(rec.get("first_layer_hist") for rec in r.gradients)]
    if not with_norms and not with_hist:
        return None
    images = []
    if with_norms:
        fig = _figure(*_grid_size(len(with_norms)))
        for ax, run in zip(_panels(fig, len(with_norms)), with_norms, strict=True):
            records = [rec for rec in run.gradients if rec.get("norms")]
            layers = list(dict.fromkeys(k for rec in records for k in rec["norms"]))
            steps = [rec.get("iteration", i) for i, rec in enumerate(records)]
            for layer, color in zip(layers, _layer_colors(len(layers)), strict=True):
                ax.plot(steps, [rec["norms"].get(layer, math.nan) for rec in records],
                        color=color, label=_short(layer), lw=1)
            ax.set_yscale("log")
            ax.set(xlabel="iteration", ylabel="weight-gradient L2 norm", title=run.label)
            ax.grid(alpha=0.3)
            _small_legend(ax, len(layers))
        images.append(("per-layer gradient norms", _png(fig)))
    note = ""
    if with_hist:
        from spikegrad.gradient_plots import histogram_iterations, nearest_record, shared_limits

        fig = _figure(*_grid_size(len(with_hist)))
        picks, same = histogram_iterations([r.gradients for r in with_hist])
        axes = _panels(fig, len(with_hist))
        extents = []
        for ax, run in zip(axes, with_hist, strict=True):
            extents.append(max(abs(e) for pick in picks
                               for e in nearest_record(run.gradients, pick)["first_layer_hist"]["edges"]))
            for pick, color, style in zip(picks, ("tab:blue", "tab:orange", "tab:red"), ("-", "--", ":"),
                                          strict=False):
                rec = nearest_record(run.gradients, pick)
                hist = rec["first_layer_hist"]
                ax.stairs(hist["counts"], hist["edges"], color=color, ls=style, lw=1.5,
                          label=f"epoch {rec.get('epoch', '?')}, iteration {rec.get('iteration', '?')}")
            ax.set_yscale("log")
            ax.set(xlabel="first-layer weight gradient", ylabel="count", title=run.label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        for ax, run, limit in zip(axes, with_hist, shared_limits(extents), strict=True):
            ax.sharey(axes[0])
            if limit is not None:  # one x scale, except for gradients 10x narrower (LTL's)
                ax.set_xlim(-limit, limit)
            else:
                ax.set_title(f"{run.label} (own x scale: ≥10× narrower)")
        images.append(("first-layer gradient histograms", _png(fig)))
        note = (" The histograms are at the same iterations in every run (early, midway, last "
                "record)." if same else " The runs share too few recorded iterations: each "
                "shows its record nearest to the early, midway and last record of the run with the fewest.")
    return Section("Gradients", "From gradients.jsonl: the L2 norm of each layer's weight gradient "
                   "(log scale) and the first layer's gradient histogram on shared axes (a run whose "
                   "gradients are ten times narrower keeps its own x axis)." + note,
                   images)


@section
def _ltl(runs: list[Run]) -> Section | None:
    with_ltl = [r for r in runs if r.has("ltl_layer_losses")]
    if not with_ltl:
        return None
    fig = _figure(*_grid_size(len(with_ltl)))
    for ax, run in zip(_panels(fig, len(with_ltl)), with_ltl, strict=True):
        epochs, values = run.series("ltl_layer_losses")
        units = list(dict.fromkeys(k for v in values for k in v))
        for unit, color in zip(units, _layer_colors(len(units)), strict=True):
            ax.plot(epochs, [v.get(unit, math.nan) for v in values], color=color, marker="o",
                    markersize=3, label=_short(unit))
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="mean local loss", title=run.label)
        ax.grid(alpha=0.3)
        _small_legend(ax, len(units))
    return Section("Local tandem learning", "Each unit's local loss (mean over the epoch).",
                   [("LTL per-layer losses", _png(fig))])


def _neuron_layers(run: Run) -> dict[str, dict[str, Any]]:
    return run.analysis.get("neurons") or {}


def shared_rate_scale(runs: Sequence[Run]) -> float:
    """Top of the one colour scale of the rate heatmaps: the highest per-step rate of any
    layer of any run (at least 1e-3, so that silent runs still get a scale)."""
    rates = [r for run in runs for stats in _neuron_layers(run).values()
             for r in stats["rate_per_step"] if r is not None and math.isfinite(r)]
    return max([1e-3, *rates])


@section
def _firing(runs: list[Run]) -> Section | None:
    with_rate = [r for r in runs if r.has("firing_rate")]
    with_layers = [r for r in runs if _neuron_layers(r)]
    if not with_rate and not with_layers:
        return None
    images = []
    colors = _colors(len(runs))
    color_of = {id(r): c for r, c in zip(runs, colors, strict=True)}
    if with_rate:
        fig = _figure(7, 3.8)
        ax = fig.add_subplot()
        _epoch_lines(ax, runs, colors, "firing_rate", marker="o")
        ax.set(xlabel="epoch", ylabel="spikes per neuron per step",
               title="Mean firing rate on the test set")
        ax.grid(alpha=0.3)
        _run_legend(fig, runs, colors, "firing_rate")
        images.append(("mean firing rate per epoch", _png(fig)))
    if with_layers:
        fig = _figure(11, 4.4)
        rate_ax, dead_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        longest: list[str] = []
        for run in with_layers:
            layers = _neuron_layers(run)
            names = list(layers)
            longest = names if len(names) > len(longest) else longest
            color = color_of[id(run)]
            xs = range(len(names))
            rate_ax.plot(xs, [layers[n]["rate"] for n in names], "o-", color=color)
            dead_ax.plot(xs, [layers[n]["dead_fraction"] for n in names], "o-", color=color)
            dead_ax.plot(xs, [layers[n]["saturated_fraction"] for n in names], "s--", color=color)
        _layer_axis(rate_ax, longest)
        _layer_axis(dead_ax, longest)
        rate_ax.set(ylabel="spikes per neuron per step", title="Firing rate per layer")
        dead_ax.set(ylabel="fraction of the layer's neurons",
                    title="Dead (never fire) and saturated (always fire)")
        from matplotlib.lines import Line2D

        dead_ax.legend([Line2D([], [], color="k", marker="o"),
                        Line2D([], [], color="k", ls="--", marker="s")],
                       ["dead", "saturated"], fontsize=8, loc="best")
        for ax in (rate_ax, dead_ax):
            ax.grid(alpha=0.3)
        _run_legend(fig, with_layers, [color_of[id(r)] for r in with_layers])
        images.append(("firing rate, dead and saturated fractions per layer", _png(fig)))

        from matplotlib import colormaps

        fig = _figure(*_grid_size(len(with_layers), row_height=3.2))
        vmax = shared_rate_scale(with_layers)
        axes = _panels(fig, len(with_layers))
        for ax, run in zip(axes, with_layers, strict=True):
            layers = _neuron_layers(run)
            names = list(layers)
            steps = max(len(layers[n]["rate_per_step"]) for n in names)
            grid = [(layers[n]["rate_per_step"] + [math.nan] * steps)[:steps] for n in names]
            image = ax.imshow(grid, aspect="auto", cmap=colormaps["magma"], vmin=0, vmax=vmax,
                              interpolation="nearest")
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels([_short(n) for n in names], fontsize=8)
            ax.set_xticks(range(steps))
            ax.set_xticklabels([str(t + 1) for t in range(steps)], fontsize=7)
            ax.set(xlabel="time step t", ylabel="layer", title=run.label)
        fig.colorbar(image, ax=axes, label="firing rate (one scale for every run)",
                     shrink=0.9 if len(axes) > 3 else 1.0)
        images.append(("firing rate per layer and time step", _png(fig)))
    with_membrane = [r for r in with_layers
                     if any("membrane" in s for s in _neuron_layers(r).values())]
    if with_membrane:
        fig = _figure(*_grid_size(len(with_membrane)))
        for ax, run in zip(_panels(fig, len(with_membrane)), with_membrane, strict=True):
            layers = {n: s["membrane"] for n, s in _neuron_layers(run).items() if "membrane" in s}
            names = list(layers)
            xs = list(range(len(names)))
            ax.errorbar(xs, [layers[n]["mean"] for n in names],
                        yerr=[layers[n]["std"] for n in names], fmt="o", capsize=3,
                        color=color_of[id(run)])
            ax.plot(xs, [layers[n]["min"] for n in names], "v", color="grey")
            ax.plot(xs, [layers[n]["max"] for n in names], "^", color="grey")
            _layer_axis(ax, names)
            ax.set(ylabel="pre-reset potential h", title=run.label)
            ax.grid(alpha=0.3)
        from matplotlib.lines import Line2D

        fig.legend([Line2D([], [], color="k", marker="o", ls="-"),
                    Line2D([], [], color="grey", marker="v", ls=""),
                    Line2D([], [], color="grey", marker="^", ls="")],
                   ["mean ± std", "min", "max"], loc="outside lower center", ncols=3,
                   frameon=False)
        images.append(("membrane potential statistics per layer", _png(fig)))
    epoch = next((r.analysis.get("epoch") for r in with_layers), None)
    note = (f" Per-layer values are from the run's last evaluation (analysis.json, epoch {epoch})."
            if with_layers else "")
    return Section("Firing rates", "Spikes per neuron per time step on the test set." + note,
                   images)


def is_ann(run: Run) -> bool:
    """Whether a run trained the ANN twin (``model.kind: ann``; else its method name says so)."""
    kind = (run.config.get("model") or {}).get("kind")
    return kind == "ann" if kind is not None else run.summary.get("method") == "ann"


def reference_groups(runs: Sequence[Run], per_layer: bool) -> list[tuple[Any, list[Run]]]:
    """Runs grouped by their equivalent ANN's MACs: ``(value, runs)`` where the value is
    ``totals.ann_macs`` or, with ``per_layer``, the tuple of ``(layer, ann_macs)``."""
    groups: list[tuple[Any, list[Run]]] = []
    for run in runs:
        if per_layer:
            value: Any = tuple((n, s["ann_macs"]) for n, s in run.analysis["synapses"].items())
        else:
            value = run.analysis["totals"]["ann_macs"]
        for known, members in groups:
            if known == value:
                members.append(run)
                break
        else:
            groups.append((value, [run]))
    return groups


#: the equivalent ANN's MACs: a wide light band under the runs' own lines, never hidden by them
_REFERENCE = {"color": "0.55", "lw": 7, "alpha": 0.35, "solid_capstyle": "butt", "zorder": 1}


def _ops_per_layer(ax, with_ops: list[Run], color_of: dict) -> None:
    from matplotlib.lines import Line2D

    longest: list[str] = []
    for run in with_ops:
        layers = run.analysis["synapses"]
        names = list(layers)
        longest = names if len(names) > len(longest) else longest
        xs = range(len(names))
        color = color_of[id(run)]
        ax.plot(xs, [layers[n]["sops"] or math.nan for n in names], "o-", color=color, zorder=3)
        ax.plot(xs, [layers[n]["macs"] or math.nan for n in names], "s--", color=color, lw=1.2,
                markersize=5, zorder=3)
    position = {n: i for i, n in enumerate(longest)}
    for value, _members in reference_groups(with_ops, per_layer=True):
        pairs = [(position[n], macs) for n, macs in value if n in position]
        ax.plot([x for x, _ in pairs], [m for _, m in pairs], **_REFERENCE)
    ax.legend([Line2D([], [], color="k", marker="o"), Line2D([], [], color="k", ls="--", marker="s"),
               Line2D([], [], **_REFERENCE)],
              ["SOPs (accumulates, spike input)", "MACs (analog input; all of an ANN's)",
               "equivalent ANN (MACs)"], fontsize=7, loc="best")
    ax.set_yscale("log")
    _layer_axis(ax, longest)
    ax.set(ylabel="operations per sample (log scale)", title="Synaptic operations per layer")
    ax.grid(alpha=0.3, which="both")


def _energy_bars(ax, with_ops: list[Run], color_of: dict) -> None:
    labels = [r.label for r in with_ops]
    snn = [r.analysis["totals"]["energy_uj"] for r in with_ops]
    ann = [r.analysis["totals"]["ann_energy_uj"] for r in with_ops]
    xs = list(range(len(with_ops)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], snn, width, color=[color_of[id(r)] for r in with_ops],
           label="this network")
    ax.bar([x + width / 2 for x in xs], ann, width, color="lightgrey", edgecolor="grey",
           label="equivalent ANN (MACs)")
    for x, e, a in zip(xs, snn, ann, strict=True):
        ax.annotate(f"{e / a:.2f}× ANN", (x, max(e, a)), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20 if len(xs) > 3 else 0,
                       ha="right" if len(xs) > 3 else "center", fontsize=8)
    ax.set(ylabel="energy per sample (µJ)", title="Energy estimate (45 nm)")
    ax.set_ylim(0, 1.35 * max(snn + ann))
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax.grid(alpha=0.3, axis="y")


def operations_per_epoch(run: Run) -> tuple[list[float], list[float], str] | None:
    """``(epochs, operations per sample, kind)`` of a run on the test set, or None.

    A spiking run's are its SOPs (``sops`` in metrics.jsonl, kind ``"SOPs"``); an ANN run
    has no SOPs (its metrics say 0) but runs every layer with MACs, the same number on every
    sample and epoch: ``totals.macs`` of analysis.json, drawn at each of its epochs (kind
    ``"MACs"``; None without analysis.json).
    """
    if is_ann(run):
        epochs, _ = run.series("test_acc")
        macs = (run.analysis.get("totals") or {}).get("macs")
        return (epochs, [float(macs)] * len(epochs), "MACs") if macs and epochs else None
    epochs, values = run.series("sops")
    return (epochs, values, "SOPs") if epochs else None


def _ops_per_epoch(runs: list[Run], colors: list) -> tuple[str, str]:
    from matplotlib.lines import Line2D

    color_of = {id(r): c for r, c in zip(runs, colors, strict=True)}
    fig = _figure(11, 4.2)
    ops_ax, energy_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    drawn: list[Run] = []
    kinds = set()
    for run in runs:
        found = operations_per_epoch(run)
        if found is None:
            continue
        epochs, values, kind = found
        kinds.add(kind)
        ops_ax.plot(epochs, [v if v > 0 else math.nan for v in values],
                    "o-" if kind == "SOPs" else "s--", color=color_of[id(run)], markersize=4, zorder=3)
        drawn.append(run)
    with_totals = [r for r in drawn if (r.analysis.get("totals") or {}).get("ann_macs")]
    for value, _members in reference_groups(with_totals, per_layer=False):
        ops_ax.axhline(value, **_REFERENCE)
    ops_ax.set_yscale("log")
    ops_ax.set(xlabel="epoch", ylabel="operations per sample (log scale)",
               title="Operations on the test set")
    ops_ax.legend([Line2D([], [], color="k", marker="o"), Line2D([], [], color="k", ls="--", marker="s"),
                   Line2D([], [], **_REFERENCE)],
                  ["SOPs of a spiking run", "MACs of an ANN run", "equivalent ANN (MACs)"],
                  fontsize=7, loc="best")
    ops_ax.grid(alpha=0.3, which="both")
    _epoch_lines(energy_ax, runs, colors, "energy_uj", marker="o")
    ann_energy = {(r.analysis.get("totals") or {}).get("ann_energy_uj") for r in runs} - {None}
    for value in ann_energy:
        energy_ax.axhline(value, **_REFERENCE)
    energy_ax.set_yscale("log")
    energy_ax.set(xlabel="epoch", ylabel="energy per sample, µJ (log scale)",
                  title="Energy estimate on the test set")
    energy_ax.legend([Line2D([], [], color="k", marker="o"), Line2D([], [], **_REFERENCE)],
                     ["this run (SOPs and MACs)", "equivalent ANN"], fontsize=7, loc="best")
    energy_ax.grid(alpha=0.3, which="both")
    _run_legend(fig, runs, colors, "energy_uj" if any(r.has("energy_uj") for r in runs) else "sops")
    note = ""
    skipped = [r.label for r in runs if is_ann(r) and operations_per_epoch(r) is None]
    if skipped:
        note = (f" {', '.join(skipped)}: an ANN run without analysis.json; its MACs are not known "
                "here (analysis.monitors was off).")
    return _png(fig), note


@section
def _recordings(runs: list[Run]) -> Section | None:
    from spikegrad.recording import RECORDING_FILE, load_recording, membrane_figure, raster_figure

    with_recording = [r for r in runs if (r.folder / RECORDING_FILE).is_file()]
    if not with_recording:
        return None
    images = []
    for run in with_recording:
        recording = load_recording(run.folder / RECORDING_FILE)
        if not recording.layers:
            continue
        fig = raster_figure(recording)
        fig.suptitle(f"{run.label}: spike raster (a mark per spike)", fontsize=9)
        images.append((f"spike raster of {run.label}", _png(fig)))
        fig = membrane_figure(recording)
        fig.suptitle(f"{run.label}: membrane traces of the first sample (circles: spikes)", fontsize=9)
        images.append((f"membrane traces of {run.label}", _png(fig)))
    return Section(
        "Spike rasters and membrane traces",
        "From RUN/recording.npz, written by `spikegrad eval CHECKPOINT --raster LAYER[,LAYER]`: the "
        "spikes of the recorded layers on the first samples of the evaluated split (every k-th "
        "neuron when a layer has more than 128), and the pre-reset potential h of the most "
        "active neurons and of the silent ones closest to the threshold (dashed).",
        images,
    )


@section
def _energy(runs: list[Run]) -> Section | None:
    with_ops = [r for r in runs if r.analysis.get("synapses")]
    if not with_ops and not any(r.has("sops") for r in runs):
        return None
    images = []
    colors = _colors(len(runs))
    color_of = {id(r): c for r, c in zip(runs, colors, strict=True)}
    if with_ops:
        fig = _figure(11, 4.4)
        ops_ax, energy_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        _ops_per_layer(ops_ax, with_ops, color_of)
        _energy_bars(energy_ax, with_ops, color_of)
        _run_legend(fig, with_ops, [color_of[id(r)] for r in with_ops])
        images.append(("synaptic operations and energy", _png(fig)))
    note = ""
    if any(r.has("sops") for r in runs):
        png, note = _ops_per_epoch(runs, colors)
        images.append(("operations and energy per epoch", png))
    constants = next(((r.analysis["pj_per_ac"], r.analysis["pj_per_mac"]) for r in with_ops),
                     (0.9, 4.6))
    return Section(
        "Synaptic operations and energy",
        "SOPs count one accumulate per spike per synapse it drives (exact fan-out, borders "
        "included); layers fed analog values (the direct-encoded first layer, every layer of "
        "an ANN) count multiply-accumulates (MACs). Energy = "
        f"{constants[0]} pJ × SOPs + {constants[1]} pJ × MACs; the equivalent ANN (grey band) "
        "runs every layer once with MACs. The bar label is the ratio. Operation counts are on "
        "log scales, so an ANN's MACs and a spiking run's SOPs show on one axis." + note,
        images,
    )


# --------------------------------------------------------------------------- the page


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value * scale if scale != 1.0 else value, spec)


def _summary_table(runs: list[Run]) -> str:
    head = ("run", "method", "dataset", "model", "T", "epochs", "final test acc", "best",
            "train time", "firing rate", "SOPs / sample", "energy / sample", "vs ANN")
    rows = []
    for run in runs:
        s, cfg = run.summary, run.config
        totals = run.analysis.get("totals", {})
        ratio = totals.get("energy_ratio")
        cells = (
            run.label, s.get("method", "–"), (cfg.get("data") or {}).get("name", "–"),
            (cfg.get("model") or {}).get("name", "–"), _fmt(s.get("T"), "d"),
            _fmt(s.get("epochs", len(run.metrics)), "d"),
            _fmt(s.get("final_test_acc"), ".2f", 100) + ("%" if s.get("final_test_acc") is not None else "")
            + (" (validation)" if s.get("eval_split") == "validation" else ""),
            _fmt(s.get("best_test_acc"), ".2f", 100) + ("%" if s.get("best_test_acc") is not None else ""),
            _fmt(s.get("train_seconds"), ".1f") + (" s" if s.get("train_seconds") is not None else ""),
            _fmt(s.get("firing_rate"), ".3f"), _fmt(totals.get("sops"), ",.0f"),
            _fmt(totals.get("energy_uj"), ".3f") + (" µJ" if totals.get("energy_uj") is not None else ""),
            _fmt(ratio, ".2f") + ("×" if ratio is not None else ""),
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px;
border-bottom: 1px solid #ddd; text-align: right; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; } p.note { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def render_report(runs: list[Run], title: str = "spikegrad report") -> str:
    """The HTML page for ``runs`` (needs matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UserError("spikegrad report draws with matplotlib, which is not installed; install "
                        "it with pip install matplotlib (a dependency of spikegrad)") from exc
    if not runs:
        raise UserError("no run folders to report on")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p class='note'>Runs: " + ", ".join(
                 f"<code>{html.escape(r.label)}</code> ({html.escape(str(r.folder))})" for r in runs)
             + f". Written {datetime.now():%Y-%m-%d %H:%M}.</p>",
             *(f"<p class='note'><b>In progress</b>: {html.escape(note)}.</p>" for note in in_progress(runs)),
             "<h2>Summary</h2>", _summary_table(runs)]
    for build in SECTIONS:
        built = build(runs)
        if built is None or not built.images:
            continue
        parts.append(f"<h2>{html.escape(built.title)}</h2>")
        if built.text:
            parts.append(f"<p class='note'>{html.escape(built.text)}</p>")
        for alt, data in built.images:
            parts.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def in_progress(runs: Sequence[Run]) -> list[str]:
    """A line for each run still being trained (its last epoch and summary may change)."""
    return [f"{r.label} is still training ({r.in_progress}): the page shows it as it stood when "
            "written" for r in runs if r.in_progress]


def default_output(runs: list[Run]) -> Path:
    """``RUN/report.html`` for one run; ``report.html`` in the runs' common folder otherwise."""
    if len(runs) == 1:
        return runs[0].folder / "report.html"
    common = Path(os.path.commonpath([str(r.folder.resolve()) for r in runs]))
    return common / "report.html"


def write_report(paths: Sequence[str | Path], out: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Read the run folders, write the HTML report and return its path."""
    runs = find_runs(paths)
    for note in in_progress(runs):
        print(f"spikegrad: note: {note}", file=sys.stderr, flush=True)
    target = Path(out) if out is not None else default_output(runs)
    page = render_report(runs, title or f"spikegrad report: {', '.join(r.label for r in runs)}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)
    except OSError as exc:
        raise UserError(f"cannot write the report to {str(target)!r}: {exc}") from exc
    return target
