"""Synaptic operations (SOPs) and an energy estimate against the equivalent ANN.

Counted at every synaptic layer (``nn.Conv1d``, ``nn.Conv2d``, ``nn.Linear``) on each call,
from what actually reaches it (definitions and worked examples: ``docs/analysis.md``):

- **binary input** (every value 0 or 1, i.e. spikes): an accumulate (AC) per spike per
  synapse it drives, ``SOPs = Σ_spikes fan-out``. A linear layer's fan-out is
  ``out_features``. A convolution's fan-out depends on where the spike is: a spike at
  input position ``p`` reaches every (output channel of its group, output position, kernel
  tap) triple that reads ``p``, i.e. ``out_channels/groups × m(p)`` where ``m(p)`` is the
  number of (output position, tap) pairs covering ``p``. In the interior of a stride-1
  layer ``m = k_h·k_w``; at the borders (zero padding) it is smaller; with stride ``s``
  it averages ``k_h·k_w/s²``. The count is exact: ``Σ_p S(p)·m(p)`` is computed as
  ``Σ conv(S, ones(k_h, k_w))`` with the layer's own stride, padding and dilation, where
  ``S`` is the spike map summed over batch, time and the channels of each group.
- **analog input** (anything else, e.g. the direct-encoded image into the first layer):
  a multiply-accumulate (MAC) per weight per output, ``MACs = out elements × in/groups ×
  k_h·k_w`` (``in × out`` for linear), for every time step the layer runs.

The equivalent ANN (same architecture, ``T = 1``) costs the dense MACs once per sample.
Energy at 45 nm (Horowitz, ISSCC 2014, 32-bit float): an add ``E_AC = 0.9 pJ``, a multiply
3.7 pJ, so ``E_MAC = 4.6 pJ``; ``E_SNN = E_AC·SOPs + E_MAC·MACs``, ``E_ANN = E_MAC·MACs_ANN``.
Batch norm (foldable into the weights), pooling, biases and neuron updates are not counted.

Counts stay on the device (no synchronisation per call) until :meth:`OpsCounter.summary`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PJ_PER_AC", "PJ_PER_MAC", "OpsCounter", "dense_macs", "synaptic_ops"]

#: energy of one 32-bit float accumulate (add) at 45 nm, picojoules
PJ_PER_AC = 0.9
#: energy of one 32-bit float multiply-accumulate at 45 nm (3.7 pJ mult + 0.9 pJ add)
PJ_PER_MAC = 4.6

SYNAPTIC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def dense_macs(layer: nn.Module, x: Tensor, out_numel: int | None = None) -> int:
    """MACs of one call on input ``x`` when every input is multiplied (the ANN count)."""
    if isinstance(layer, nn.Linear):
        return x.numel() // layer.in_features * layer.in_features * layer.out_features
    if out_numel is None:
        with torch.no_grad():
            out_numel = layer(x).numel()
    return out_numel * math.prod(layer.kernel_size) * (layer.in_channels // layer.groups)


def synaptic_ops(layer: nn.Module, spikes: Tensor) -> Tensor:
    """Accumulates triggered by ``spikes`` (non-zero entries) in ``layer``; a 0-dim tensor.

    ``spikes`` is the layer's input: ``[N, C, (H,) W]`` for a convolution, ``[..., in]``
    for a linear layer.
    """
    return _accumulates(layer, (spikes != 0).to(torch.float32))


def _accumulates(layer: nn.Module, spikes: Tensor) -> Tensor:
    """:func:`synaptic_ops` for a binary ``spikes`` tensor (0/1 values): sums in float32 stay
    exact below 2^24; the totals are float64 (float32 on MPS), computed outside autocast."""
    wide = torch.float32 if spikes.device.type == "mps" else torch.float64
    if isinstance(layer, nn.Linear):
        return spikes.sum(dtype=wide) * layer.out_features
    dims = len(layer.kernel_size)
    if spikes.dim() == dims + 1:  # an unbatched call
        spikes = spikes.unsqueeze(0)
    groups = layer.groups
    # S: spikes summed over the batch and over the channels of each group
    per_position = spikes.sum(0, dtype=torch.float32)  # (C, *spatial)
    summed = per_position.unflatten(0, (groups, -1)).sum(1)  # (groups, *spatial)
    summed = summed.to(wide).unsqueeze(0)  # (1, groups, *spatial)
    padding = layer.padding
    if layer.padding_mode != "zeros":  # padded values copy spikes: pad the map the same way
        summed = F.pad(summed, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    conv = F.conv2d if dims == 2 else F.conv1d
    ones = summed.new_ones(groups, 1, *layer.kernel_size)
    with torch.autocast(summed.device.type, enabled=False):
        covered = conv(summed, ones, None, layer.stride, padding, layer.dilation, groups)
    return covered.sum() * (layer.out_channels // groups)  # Σ_g (O/G)·Σ_p S_g(p)·m(p)


@dataclass
class _LayerOps:
    acs: Tensor  # accumulates, on the device
    macs: Tensor  # multiply-accumulates, on the device
    binary_calls: Tensor
    calls: int = 0
    items: int = 0  # inputs seen (time steps × samples)
    dense_per_item: int = 0


class OpsCounter:
    """Counts SOPs and MACs of every synaptic layer of a model while attached.

    Use as a context manager around forward passes and report the samples seen with
    :meth:`add_samples` (a sample is one input of the batch, all its time steps)::

        with OpsCounter(model) as ops:
            for x, y in loader:
                model(x)
                ops.add_samples(len(y))
        ops.summary()["totals"]["energy_ratio"]
    """

    def __init__(self, model: nn.Module, pj_per_ac: float = PJ_PER_AC,
                 pj_per_mac: float = PJ_PER_MAC) -> None:
        self.layers = {self._label(name): m for name, m in model.named_modules()
                       if isinstance(m, SYNAPTIC_LAYERS)}
        self.pj_per_ac = float(pj_per_ac)
        self.pj_per_mac = float(pj_per_mac)
        self.samples = 0
        self.ops: dict[str, _LayerOps] = {}
        self._handles: list = []

    @staticmethod
    def _label(name: str) -> str:
        """Qualified name without the ``module.`` of :class:`TimeDistributed` wrappers."""
        return ".".join(part for part in name.split(".") if part != "module")

    def _hook(self, name: str):
        def hook(layer: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0].detach()
            if isinstance(layer, nn.Linear):
                items = x.numel() // layer.in_features
            else:
                items = x.shape[0] if x.dim() == len(layer.kernel_size) + 2 else 1
            dense = dense_macs(layer, x, output.numel())
            binary = x.mul(x).eq_(x).all()  # x² = x only for 0 and 1
            ops = self.ops.get(name)
            dtype = torch.float32 if x.device.type == "mps" else torch.float64
            if ops is None:
                zero = torch.zeros((), dtype=dtype, device=x.device)
                ops = self.ops[name] = _LayerOps(zero.clone(), zero.clone(), zero.clone(),
                                                 dense_per_item=dense // max(items, 1))
            # Both counts are formed and the binary flag selects one: no host sync per call.
            ops.acs += _accumulates(layer, x).to(dtype) * binary
            ops.macs += dense * (~binary).to(dtype)
            ops.binary_calls += binary.to(dtype)
            ops.calls += 1
            ops.items += items

        return hook

    def add_samples(self, count: int) -> None:
        """Record that ``count`` more samples went through the model."""
        self.samples += int(count)

    def __enter__(self) -> OpsCounter:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self) -> dict[str, Any]:
        """Per-layer and total SOPs, MACs and energy **per sample** (µJ), and the ANN's.

        ``layers[name]["input"]`` says what reached the layer: ``spikes`` (counted as SOPs),
        ``analog`` (MACs) or ``mixed`` (some calls each).
        """
        if self.samples <= 0:
            raise ValueError("OpsCounter.add_samples was never called: cannot count per sample")
        n = self.samples
        layers: dict[str, dict[str, Any]] = {}
        for name, ops in self.ops.items():
            binary = int(ops.binary_calls.item())
            acs, macs = ops.acs.item() / n, ops.macs.item() / n
            energy = (self.pj_per_ac * acs + self.pj_per_mac * macs) * 1e-6
            layers[name] = {
                "type": type(self.layers[name]).__name__,
                "input": "spikes" if binary == ops.calls else "analog" if binary == 0 else "mixed",
                "sops": acs,
                "macs": macs,
                "ann_macs": float(ops.dense_per_item),
                "energy_uj": energy,
                "ann_energy_uj": self.pj_per_mac * ops.dense_per_item * 1e-6,
            }
        sops = sum(v["sops"] for v in layers.values())
        macs = sum(v["macs"] for v in layers.values())
        ann_macs = sum(v["ann_macs"] for v in layers.values())
        energy = sum(v["energy_uj"] for v in layers.values())
        ann_energy = sum(v["ann_energy_uj"] for v in layers.values())
        return {
            "samples": n,
            "pj_per_ac": self.pj_per_ac,
            "pj_per_mac": self.pj_per_mac,
            "layers": layers,
            "totals": {
                "sops": sops,
                "macs": macs,
                "ann_macs": ann_macs,
                "energy_uj": energy,
                "ann_energy_uj": ann_energy,
                "energy_ratio": energy / ann_energy if ann_energy else None,
            },
        }
