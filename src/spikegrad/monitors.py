"""Activity monitors attached with forward hooks, cheap enough to leave on during evaluation.

For every :class:`~spikegrad.neurons.SpikingNeuron` layer with output spikes ``s`` of shape
``[T, B, *shape]`` (``N = prod(shape)`` neurons), accumulated over every call while attached:

- firing rate per time step ``r_t = Σ_{b,i} s[t, b, i] / (B·N)`` and its mean over steps;
- per-neuron rate ``ρ_i = Σ_{t,b} s[t, b, i] / (T·B)``; a neuron is *dead* if ``ρ_i = 0``
  (never fired on the data seen) and *saturated* if ``ρ_i = 1`` (fired at every step of
  every sample);
- optionally (``membrane=True``) the mean, standard deviation, minimum and maximum of the
  pre-reset potential ``h_t`` (:mod:`spikegrad.dynamics`), read during the same forward
  pass through the neuron's ``membrane_hook``.

Counts stay on the model's device as integer tensors (no host synchronisation per batch);
a layer's spikes are the sum of its 0/1 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.neurons import SpikingNeuron

__all__ = ["ActivityMonitor", "FiringRateMonitor", "LayerActivity"]


@dataclass
class LayerActivity:
    """Running sums for one neuron layer (see the module docstring for the definitions)."""

    spikes_per_step: Tensor | None = None  # (T_max,) int64: spikes at step t, all samples
    samples_per_step: Tensor | None = None  # (T_max,) int64: samples that reached step t
    spikes_per_neuron: Tensor | None = None  # (*shape) int64: spikes over steps and samples
    steps_per_neuron: int = 0  # Σ T·B over calls: the most spikes one neuron can emit
    neurons: int = 0  # N, neurons per sample and step
    membrane: dict[str, float] = field(default_factory=dict)  # sum, sumsq, count, min, max

    def add_spikes(self, spikes: Tensor) -> None:
        T, B = spikes.shape[:2]
        # One pass over the spikes: the sum over the batch is exact in float32 (<= B, also for
        # half-precision spikes), and the two small reductions of it are done in integers.
        per_step_neuron = spikes.detach().sum(1, dtype=torch.float32).to(torch.int64)  # (T, *shape)
        per_step = per_step_neuron.flatten(1).sum(1)  # (T,)
        per_neuron = per_step_neuron.sum(0)  # (*shape)
        if self.spikes_per_neuron is None:
            self.neurons = per_neuron.numel()
            self.spikes_per_neuron = torch.zeros_like(per_neuron)
            self.spikes_per_step = per_step.new_zeros(0)
            self.samples_per_step = per_step.new_zeros(0)
        if per_neuron.shape != self.spikes_per_neuron.shape:
            raise ValueError(f"a neuron layer changed shape between calls: "
                             f"{tuple(self.spikes_per_neuron.shape)} -> {tuple(per_neuron.shape)}")
        if self.spikes_per_step.numel() < T:  # grow to the longest sequence seen
            grow = T - self.spikes_per_step.numel()
            self.spikes_per_step = torch.cat([self.spikes_per_step, per_step.new_zeros(grow)])
            self.samples_per_step = torch.cat([self.samples_per_step, per_step.new_zeros(grow)])
        self.spikes_per_step[:T] += per_step
        self.samples_per_step[:T] += B
        self.spikes_per_neuron += per_neuron
        self.steps_per_neuron += T * B

    def add_membrane(self, h: Tensor) -> None:
        h = h.detach().float()
        stats = self.membrane
        stats["sum"] = stats.get("sum", 0.0) + float(h.sum(dtype=torch.float64)
                                                      if h.device.type != "mps" else h.sum())
        stats["sumsq"] = stats.get("sumsq", 0.0) + float(
            (h * h).sum(dtype=torch.float64) if h.device.type != "mps" else (h * h).sum())
        stats["count"] = stats.get("count", 0) + h.numel()
        stats["min"] = min(stats.get("min", float("inf")), float(h.min()))
        stats["max"] = max(stats.get("max", float("-inf")), float(h.max()))

    def summary(self) -> dict[str, Any] | None:
        """Rates, dead and saturated fractions (and membrane statistics), or None if unused."""
        if self.spikes_per_neuron is None:
            return None
        spikes = self.spikes_per_step.double().cpu()
        slots = (self.samples_per_step.double() * self.neurons).cpu()
        per_neuron = self.spikes_per_neuron.cpu()
        out: dict[str, Any] = {
            "neurons": self.neurons,
            "rate": float(spikes.sum() / slots.sum()),
            "rate_per_step": (spikes / slots).tolist(),
            "dead_fraction": float((per_neuron == 0).double().mean()),
            "saturated_fraction": float((per_neuron == self.steps_per_neuron).double().mean()),
        }
        if self.membrane:
            m = self.membrane
            mean = m["sum"] / m["count"]
            out["membrane"] = {
                "mean": mean,
                "std": max(m["sumsq"] / m["count"] - mean * mean, 0.0) ** 0.5,
                "min": m["min"],
                "max": m["max"],
            }
        return out


class ActivityMonitor:
    """Per-layer spiking activity of a model while attached (a context manager).

    Args:
        model: any module; every :class:`SpikingNeuron` inside it is watched.
        membrane: also gather membrane statistics (each neuron keeps its ``h_t`` for the
            call; off by default because it costs memory).

    ``rates()`` gives per-layer mean firing rates (spikes per neuron per time step),
    ``mean_rate()`` the rate over all neurons, ``summary()`` everything per layer.
    """

    def __init__(self, model: nn.Module, membrane: bool = False) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}
        self.membrane = membrane
        self.activity = {name: LayerActivity() for name in self.layers}
        self._handles: list = []

    def _spike_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self.activity[name].add_spikes(output)

        return hook

    def __enter__(self) -> ActivityMonitor:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._spike_hook(name)))
            if self.membrane:
                module.membrane_hook = self.activity[name].add_membrane
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module in self.layers.values():
            module.membrane_hook = None

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{layer name: statistics}`` for every layer that ran while attached."""
        out = {}
        for name, activity in self.activity.items():
            stats = activity.summary()
            if stats is not None:
                out[name] = stats
        return out

    def rates(self) -> dict[str, float]:
        return {name: stats["rate"] for name, stats in self.summary().items()}

    def spike_totals(self) -> tuple[float, float]:
        """``(spikes, slots)`` over every neuron: slots = neurons × time steps × samples."""
        spikes = slots = 0.0
        for activity in self.activity.values():
            if activity.spikes_per_neuron is not None:
                spikes += float(activity.spikes_per_neuron.sum())
                slots += activity.steps_per_neuron * activity.neurons
        return spikes, slots

    def mean_rate(self) -> float | None:
        """Spikes per neuron per time step over every neuron of the model."""
        spikes, slots = self.spike_totals()
        return spikes / slots if slots else None


#: the earlier name; an :class:`ActivityMonitor` answers the same ``rates()`` and ``mean_rate()``
FiringRateMonitor = ActivityMonitor
