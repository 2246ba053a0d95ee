"""Light monitors attached with forward hooks (cheap enough to leave on during evaluation)."""

from __future__ import annotations

from torch import Tensor, nn

from spikegrad.neurons import SpikingNeuron


class FiringRateMonitor:
    """Counts spikes of every :class:`SpikingNeuron` in a model while attached.

    ``rates()`` gives per-layer mean firing rates (spikes per neuron per time step);
    ``mean_rate()`` the rate over all neurons of the model. Use as a context manager.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}
        self.spikes = dict.fromkeys(self.layers, 0.0)
        self.counts = dict.fromkeys(self.layers, 0)
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self.spikes[name] += float(output.detach().sum())
            self.counts[name] += output.numel()

        return hook

    def __enter__(self) -> FiringRateMonitor:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def rates(self) -> dict[str, float]:
        return {n: self.spikes[n] / self.counts[n] for n in self.layers if self.counts[n]}

    def mean_rate(self) -> float | None:
        total = sum(self.counts.values())
        return sum(self.spikes.values()) / total if total else None
