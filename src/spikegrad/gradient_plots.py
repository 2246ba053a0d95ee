"""``spikegrad plot-gradients``: the gradient diagnostics of one or several runs, side by side.

Top: the first layer's gradient norm over the last layer's, against the iteration, every
run on one log axis. Below, one column per run: the gradient norm of every weight layer from
input to output (a line per record, coloured by its iteration on one colour bar shared by
the columns), and the first layer's gradient histogram early, midway and at the end
(:func:`histogram_picks`), at the same iterations in every column
(:func:`histogram_iterations`). Rows share their axes, so columns compare directly (a
histogram ten times narrower than the widest keeps its own x axis: :func:`shared_limits`). Needs
matplotlib (a dependency of spikegrad).
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
        raise UserError("plotting needs matplotlib (a dependency of spikegrad): "
                        "pip install matplotlib") from exc
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


def histogram_iterations(runs: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[int], bool]:
    """Iterations whose histograms are compared across ``runs`` (each a list of records).

    :func:`histogram_picks` over the iterations at which every run recorded a histogram,
    and True; if the runs share fewer such iterations than the first run has picks (other
    ``diagnostics.gradient_interval`` or lengths), the picks of the run with the fewest
    records, and False: each run then shows its record nearest to each pick
    (:func:`nearest_record`).
    """
    with_hist = [[r["iteration"] for r in records if r.get("first_layer_hist")] for records in runs]
    common = sorted(set.intersection(*map(set, with_hist))) if with_hist else []
    shortest = min(with_hist, key=len) if with_hist else []
    wanted = len(histogram_picks(len(shortest))) if shortest else 0
    if common and len(histogram_picks(len(common))) >= wanted:
        return [common[j] for j in histogram_picks(len(common))], True
    return [shortest[j] for j in histogram_picks(len(shortest))] if shortest else [], False


def nearest_record(records: Sequence[dict[str, Any]], iteration: int) -> dict[str, Any] | None:
    """The record with a histogram whose iteration is nearest to ``iteration`` (earlier on ties)."""
    with_hist = [r for r in records if r.get("first_layer_hist")]
    if not with_hist:
        return None
    return min(with_hist, key=lambda r: (abs(r["iteration"] - iteration), r["iteration"]))


def shared_limits(extents: Sequence[float], ratio: float = 10.0) -> list[float | None]:
    """Half-width of the x axis each histogram panel shares: the widest extent ``max|edge|``
    for panels at most ``ratio`` times narrower; None (their own axis) for narrower ones,
    which would be a vertical line on the shared axis (LTL's local gradients are ~100x
    smaller than BPTT's)."""
    widest = max(extents, default=0.0)
    return [1.05 * widest if e * ratio >= widest else None for e in extents]


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
    cmap = plt.get_cmap("viridis")
    from matplotlib.colors import Normalize

    all_its = [r["iteration"] for records in data for r in records]
    when = Normalize(min(all_its), max(all_its) if max(all_its) > min(all_its) else min(all_its) + 1)
    picks, same = histogram_iterations(data)
    extents: list[float] = []
    for k, (records, name) in enumerate(zip(data, names, strict=True)):
        ax = fig.add_subplot(grid[1, k], sharey=norm_axes[0] if norm_axes else None)
        norm_axes.append(ax)
        for record in records:
            values = list(record["norms"].values())
            ax.plot(range(1, len(values) + 1), values, color=cmap(when(record["iteration"])),
                    lw=0.8, alpha=0.8)
        ax.set_yscale("log")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("weight layer (input → output)")
        if k == 0:
            ax.set_ylabel("gradient norm")
        ax.grid(alpha=0.3, which="both")
        ax = fig.add_subplot(grid[2, k], sharey=hist_axes[0] if hist_axes else None)
        hist_axes.append(ax)
        extent = 0.0
        for pick, style in zip(picks, ("-", "--", ":"), strict=False):
            record = nearest_record(records, pick)
            hist = record.get("first_layer_hist") if record else None
            if hist and hist["counts"]:
                extent = max(extent, *map(abs, hist["edges"]))
                ax.stairs([c + 1 for c in hist["counts"]], hist["edges"], linestyle=style,
                          label=f"iteration {record['iteration']}")
        ax.set_yscale("log")
        ax.set_xlabel("first-layer weight gradient")
        if k == 0:
            ax.set_ylabel("count + 1")
        ax.legend(fontsize="x-small", title=None if same else "nearest record",
                  title_fontsize="x-small")
        extents.append(extent)
    for ax, limit in zip(hist_axes, shared_limits(extents), strict=True):
        if limit is not None:
            ax.set_xlim(-limit, limit)
        else:
            ax.set_xlabel("first-layer weight gradient\n(own scale: ≥10× narrower)")
    fig.colorbar(plt.cm.ScalarMappable(norm=when, cmap=cmap), ax=norm_axes, pad=0.01,
                 label="iteration (early → late)")
    fig.suptitle(title or "Gradient diagnostics")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
