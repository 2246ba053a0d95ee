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
from spikegrad.monitors import ActivityMonitor

__all__ = ["ANALYSIS_FILE", "EvalProbe", "epoch_fields", "write_analysis"]

ANALYSIS_FILE = "analysis.json"


class EvalProbe(contextlib.AbstractContextManager):
    """Firing rates always; with ``config.monitors`` also per-layer activity, SOPs and energy."""

    def __init__(self, model: nn.Module, config: AnalysisConfig | None = None) -> None:
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
