"""``spikegrad plot-gradients``: the gradient diagnostics of one or several runs, side by side.

Top: the first layer's gradient norm over the last layer's, against the iteration, every
run on one log axis. Below, one column per run: the gradient norm of every weight layer from
input to output (a line per record, coloured from early to late in training), and the first
layer's gradient histogram early, midway and at the end (:func:`histogram_picks`). Rows
share their axes, so columns compare directly. Needs matplotlib
(``pip install 'spikegrad[plot]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spikegrad.diagnostics import norm_ratio, read_gradients
from spikegrad.errors import UserError


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise UserError("plotting needs matplotlib: pip install 'spikegrad[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_label(run: str | Path) -> str:
    """``parent/folder`` of a run folder: short, and unique for the usual layouts."""
    path = Path(run).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def histogram_picks(count: int) -> list[int]:
    """Records whose histograms are drawn: early (10% in, after the initial one), middle, last.

    The first record (the initial weights) is skipped when there are others: its gradients
    are often far larger and would squeeze the rest onto the axis.
    """
    if count <= 1:
        return [0]
    return sorted({max(1, round(0.1 * (count - 1))), (count - 1) // 2 or 1, count - 1})


def plot_gradients(
    runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the diagnostics of ``runs`` into the image ``out`` (PNG, PDF or SVG); returns it."""
    if not runs:
        raise UserError("plot-gradients needs at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"got {len(labels)} labels for {len(runs)} runs; give one per run")
    data = [read_gradients(run) for run in runs]
    for run, records in zip(runs, data, strict=True):
        if not records:
            raise UserError(f"{str(run)!r} has no gradient records yet")
    names = list(labels) if labels is not None else [run_label(r) for r in runs]
    plt = _pyplot()
    n = len(runs)
    fig = plt.figure(figsize=(max(6.0, 3.6 * n), 9.0), layout="constrained")
    grid = fig.add_gridspec(3, n)
    ratio_ax = fig.add_subplot(grid[0, :])
    colors = plt.get_cmap("tab10")
    for k, (records, name) in enumerate(zip(data, names, strict=True)):
        its = [r["iteration"] for r in records]
        ratio_ax.plot(its, [norm_ratio(r) for r in records], color=colors(k % 10), label=name)
    ratio_ax.set_yscale("log")
    ratio_ax.set_xlabel("iteration")
    ratio_ax.set_ylabel("‖∇ first layer‖ / ‖∇ last layer‖")
    ratio_ax.legend(fontsize="small")
    ratio_ax.grid(alpha=0.3, which="both")
    norm_axes: list[Any] = []
    hist_axes: list[Any] = []
    for k, (records, name) in enumerate(zip(data, names, strict=True)):
        ax = fig.add_subplot(grid[1, k], sharey=norm_axes[0] if norm_axes else None)
        norm_axes.append(ax)
        cmap = plt.get_cmap("viridis")
        for j, record in enumerate(records):
            values = list(record["norms"].values())
            ax.plot(range(1, len(values) + 1), values, color=cmap(j / max(1, len(records) - 1)),
                    lw=0.8, alpha=0.8)
        ax.set_yscale("log")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("weight layer (input → output)")
        if k == 0:
            ax.set_ylabel("gradient norm\n(colour: early → late)")
        ax.grid(alpha=0.3, which="both")
        ax = fig.add_subplot(grid[2, k], sharex=hist_axes[0] if hist_axes else None,
                            sharey=hist_axes[0] if hist_axes else None)
        hist_axes.append(ax)
        picks = histogram_picks(len(records))
        for j, style in zip(picks, ("-", "--", ":"), strict=False):
            hist = records[j].get("first_layer_hist")
            if hist and hist["counts"]:
                ax.stairs([c + 1 for c in hist["counts"]], hist["edges"], linestyle=style,
                          label=f"iteration {records[j]['iteration']}")
        ax.set_yscale("log")
        ax.set_xlabel("first-layer weight gradient")
        if k == 0:
            ax.set_ylabel("count + 1")
        ax.legend(fontsize="x-small")
    fig.suptitle(title or "Gradient diagnostics")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
