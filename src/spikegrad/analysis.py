"""What an evaluation measures besides accuracy: activity, synaptic operations, energy.

:class:`EvalProbe` attaches an :class:`~spikegrad.monitors.ActivityMonitor` and, when the
``analysis`` config asks for it, an :class:`~spikegrad.energy.OpsCounter` for the length of
an evaluation. Its :meth:`EvalProbe.summary` is the content of a run's ``analysis.json``::

    {"samples": ..., "neurons": {layer: {"rate", "rate_per_step", "dead_fraction",
     "saturated_fraction", ["membrane"]}}, "synapses": {layer: {"type", "input", "sops",
     "macs", "ann_macs", "energy_uj", "ann_energy_uj"}}, "totals": {...}, "pj_per_ac", ...}

All operation counts and energies are per sample.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from spikegrad.config import AnalysisConfig
from spikegrad.durable import atomic_write
from spikegrad.energy import OpsCounter
from spikegrad.errors import refuse_unread
from spikegrad.monitors import ActivityMonitor

__all__ = ["ANALYSIS_FILE", "EvalProbe", "check_analysis", "epoch_fields", "format_analysis",
           "write_analysis"]

ANALYSIS_FILE = "analysis.json"


def check_analysis(config: AnalysisConfig) -> None:
    """Refuse the settings of the per-layer measurements when ``monitors`` switches them off."""
    if not config.monitors:
        refuse_unread(config, "analysis", ["membrane", "pj_per_ac", "pj_per_mac"],
                      "with analysis.monitors=false, which switches the per-layer measurements off")


class EvalProbe(contextlib.AbstractContextManager):
    """Firing rates always; with ``config.monitors`` also per-layer activity, SOPs and energy."""

    def __init__(self, model: nn.Module, config: AnalysisConfig | None = None) -> None:
        if config is not None:
            check_analysis(config)
        self.detailed = config is not None and config.monitors
        self.monitor = ActivityMonitor(model, membrane=self.detailed and config.membrane)
        self.ops = OpsCounter(model, config.pj_per_ac, config.pj_per_mac) if self.detailed else None

    def __enter__(self) -> EvalProbe:
        self.monitor.__enter__()
        if self.ops is not None:
            self.ops.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.monitor.__exit__(*exc)
        if self.ops is not None:
            self.ops.__exit__(*exc)

    def add_samples(self, count: int) -> None:
        if self.ops is not None:
            self.ops.add_samples(count)

    def mean_rate(self) -> float | None:
        return self.monitor.mean_rate()

    def summary(self) -> dict[str, Any] | None:
        """The ``analysis.json`` content, or None without ``monitors`` or without samples."""
        if self.ops is None or self.ops.samples == 0:
            return None
        ops = self.ops.summary()
        return {
            "samples": ops["samples"],
            "pj_per_ac": ops["pj_per_ac"],
            "pj_per_mac": ops["pj_per_mac"],
            "firing_rate": self.monitor.mean_rate(),
            "neurons": self.monitor.summary(),
            "synapses": ops["layers"],
            "totals": ops["totals"],
        }


def epoch_fields(detail: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of an analysis that go into each ``metrics.jsonl`` line."""
    return {
        "firing_rates": {name: stats["rate"] for name, stats in detail["neurons"].items()},
        "sops": detail["totals"]["sops"],
        "energy_uj": detail["totals"]["energy_uj"],
    }


def write_analysis(folder: str | Path, detail: dict[str, Any], epoch: int | None = None) -> Path:
    """Write ``analysis.json`` (with the epoch it belongs to) into a run folder, atomically."""
    path = Path(folder) / ANALYSIS_FILE
    atomic_write(path, json.dumps({"epoch": epoch, **detail}, indent=2) + "\n")
    return path


def format_analysis(detail: dict[str, Any]) -> str:
    """An analysis (``analysis.json``'s content) as two tables: each neuron layer's firing
    rate and dead and saturated fractions; each synapse layer's operations and energy per
    sample against the equivalent ANN's; then the totals."""
    neurons, synapses, totals = detail["neurons"], detail["synapses"], detail["totals"]
    width = max([12, *map(len, neurons), *map(len, synapses)])
    lines = [f"{'neuron layer':<{width}} {'rate':>7} {'dead':>7} {'saturated':>9}"]
    for name, stats in neurons.items():
        lines.append(f"{name:<{width}} {stats['rate']:7.4f} {100 * stats['dead_fraction']:6.1f}% "
                     f"{100 * stats['saturated_fraction']:8.1f}%")
    lines += ["", f"{'synapse layer':<{width}} {'type':<8} {'input':<7} {'SOPs':>12} {'MACs':>12} "
              f"{'ANN MACs':>12} {'energy µJ':>10} {'ANN µJ':>10}"]
    for name, ops in synapses.items():
        lines.append(f"{name:<{width}} {ops['type']:<8} {ops['input']:<7} {ops['sops']:12,.0f} "
                     f"{ops['macs']:12,.0f} {ops['ann_macs']:12,.0f} {ops['energy_uj']:10.4g} "
                     f"{ops['ann_energy_uj']:10.4g}")
    lines.append(f"{'total':<{width}} {'':<8} {'':<7} {totals['sops']:12,.0f} {totals['macs']:12,.0f} "
                 f"{totals['ann_macs']:12,.0f} {totals['energy_uj']:10.4g} {totals['ann_energy_uj']:10.4g}")
    ratio = totals.get("energy_ratio")
    lines.append(f"per sample, over {detail['samples']} samples; {detail['pj_per_ac']:g} pJ per "
                 f"accumulate (SOP), {detail['pj_per_mac']:g} pJ per MAC"
                 + (f"; energy {ratio:.3g}× the ANN's" if ratio is not None else ""))
    return "\n".join(lines)
