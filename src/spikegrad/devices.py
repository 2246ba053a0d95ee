"""Device non-idealities of analog (in-memory) hardware, applied to a network reproducibly.

Every synaptic weight (the ``weight`` of each convolution and linear layer) is held by a
device. The network computes with the device's value, not with the value programmed into it::

    w_dev = S( g ⊙ Q_k(w_prog) )

- ``Q_k``: k-bit symmetric uniform quantisation over the layer's range ``R = max|w_prog|``
  (fixed when the device model is applied): ``Δ = R / (2^(k-1) - 1)``,
  ``Q_k(w) = Δ·clamp(round(w/Δ), -(2^(k-1) - 1), 2^(k-1) - 1)``. ``bits=None``: no quantisation.
- ``g = 1 + σ·ε``, ``ε ~ N(0, 1)`` per weight, drawn once: device-to-device variation of the
  conductance (multiplicative Gaussian weight variation).
- ``S``: a fraction ``stuck_at_zero`` of the devices reads 0 and a fraction ``stuck_at_max``
  reads ``±R`` (one device of a differential pair stuck at its largest conductance; the sign
  is drawn per device), whatever is programmed.
- Threshold variation: neuron ``i`` fires at ``θ_i = θ·k_i`` with ``k_i = max(1 + σ_θ·η_i,
  0.05)``, ``η_i ~ N(0, 1)``. It is applied as the equivalent input scaling ``I_i / k_i`` (a
  forward pre-hook on the neuron; dividing the membrane equation by ``k_i`` shows the spikes
  are identical when ``v_reset = 0``, hard or soft reset); other ``v_reset`` values are refused.
  Each neuron's factors are drawn on its first call, when its shape is known, from a
  generator seeded by ``(seed, neuron index)``.

Biases, batch norm and the neurons' other parameters stay digital (exact). Everything is
drawn from ``seed`` alone, so the same seed gives the same faulty network.

Updates (calibration): the optimizer steps the device values; :meth:`ImperfectDevices.sync`
adds that step to the programmed weights (kept in full precision, as in mixed-precision
in-memory training) and re-applies the devices, so the network stays imperfect after every
update. :class:`DeviceSync` does this after each optimizer step of a :class:`Trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.component import Component, TrainingContext
from spikegrad.errors import UserError
from spikegrad.neurons import SpikingNeuron

__all__ = ["DeviceModel", "DeviceSync", "ImperfectDevices", "quantise"]

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
MIN_THRESHOLD_FACTOR = 0.05
MAX_BITS = 32


@dataclass(frozen=True)
class DeviceModel:
    """How imperfect the devices are (see the module docstring); all zero: ideal devices."""

    sigma: float = 0.0
    stuck_at_zero: float = 0.0
    stuck_at_max: float = 0.0
    bits: int | None = None
    threshold_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sigma", "stuck_at_zero", "stuck_at_max", "threshold_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"device {name} (--{name.replace('_', '-')}) must be a finite number, "
                                f"got {value!r}")
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)
                                      or self.bits > MAX_BITS):
            raise UserError(f"weight quantisation (--bits) takes a whole number of 2 to {MAX_BITS} bits "
                            f"(float32 weights hold 24; more levels change nothing), got {self.bits!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserError(f"device seed (--seed) must be a whole number in [0, 2^32), got {self.seed!r}")
        if self.sigma < 0 or self.threshold_sigma < 0:
            raise UserError(f"device variations must be >= 0, got sigma={self.sigma}, "
                            f"threshold_sigma={self.threshold_sigma}")
        stuck = (self.stuck_at_zero, self.stuck_at_max)
        if min(stuck) < 0 or sum(stuck) > 1:
            raise UserError(f"stuck-at fractions must be >= 0 with a sum <= 1, got "
                            f"{self.stuck_at_zero} and {self.stuck_at_max}")
        if self.bits is not None and self.bits < 2:
            raise UserError(f"weight quantisation needs at least 2 bits, got {self.bits}")

    def describe(self) -> str:
        parts = [f"σ={self.sigma:g}"] if self.sigma else []
        if self.stuck_at_zero:
            parts.append(f"stuck-at-0 {self.stuck_at_zero:g}")
        if self.stuck_at_max:
            parts.append(f"stuck-at-max {self.stuck_at_max:g}")
        if self.bits is not None:
            parts.append(f"{self.bits}-bit")
        if self.threshold_sigma:
            parts.append(f"σ_θ={self.threshold_sigma:g}")
        return ", ".join(parts) or "ideal"


def quantise(weight: Tensor, bits: int, weight_range: float) -> Tensor:
    """``Q_k(w) = Δ·clamp(round(w/Δ), -L, L)``, ``L = 2^(k-1) - 1``, ``Δ = range/L``."""
    levels = 2 ** (bits - 1) - 1
    if weight_range <= 0:
        return torch.zeros_like(weight)
    step = weight_range / levels
    return step * torch.clamp(torch.round(weight / step), -levels, levels)


@dataclass
class _Synapse:
    weight: nn.Parameter
    programmed: Tensor
    gain: Tensor
    stuck_zero: Tensor
    stuck_max: Tensor
    stuck_sign: Tensor
    weight_range: float


class ImperfectDevices:
    """A :class:`DeviceModel` applied to ``model`` (in place, now); see the module docstring."""

    def __init__(self, model: nn.Module, device_model: DeviceModel) -> None:
        self.model = model
        self.device_model = device_model
        dm = device_model
        generator = torch.Generator().manual_seed(dm.seed)
        self.synapses: list[_Synapse] = []
        for module in model.modules():
            if not isinstance(module, SYNAPSES):
                continue
            w = module.weight
            draw = torch.rand(w.shape, generator=generator)
            self.synapses.append(_Synapse(
                weight=w,
                programmed=w.detach().clone(),
                gain=(1.0 + dm.sigma * torch.randn(w.shape, generator=generator)).to(w),
                stuck_zero=(draw < dm.stuck_at_zero).to(w.device),
                stuck_max=((draw >= dm.stuck_at_zero)
                           & (draw < dm.stuck_at_zero + dm.stuck_at_max)).to(w.device),
                stuck_sign=torch.where(torch.rand(w.shape, generator=generator) < 0.5, -1.0,
                                       1.0).to(w),
                weight_range=float(w.detach().abs().max()),
            ))
        self._factors: dict[int, Tensor] = {}
        self._hooks = []
        if dm.threshold_sigma > 0:
            spiking = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
            for index, neuron in enumerate(spiking):
                if neuron.reset == "hard" and neuron.v_reset != 0.0:
                    raise UserError("threshold variation is applied as an input scaling, exact only "
                                    f"for v_reset = 0; a neuron has v_reset = {neuron.v_reset}")
                self._hooks.append(neuron.register_forward_pre_hook(self._threshold_hook(index)))
        self._applied = [s.weight.detach().clone() for s in self.synapses]
        self.apply()

    def device_value(self, synapse: _Synapse) -> Tensor:
        """``w_dev = S(g ⊙ Q_k(w_prog))`` of one layer."""
        w = synapse.programmed
        if self.device_model.bits is not None:
            w = quantise(w, self.device_model.bits, synapse.weight_range)
        w = synapse.gain * w
        w = torch.where(synapse.stuck_max, synapse.stuck_sign * synapse.weight_range, w)
        return torch.where(synapse.stuck_zero, torch.zeros_like(w), w)

    @torch.no_grad()
    def apply(self) -> None:
        """Write the device values of the programmed weights into the network."""
        for i, synapse in enumerate(self.synapses):
            value = self.device_value(synapse)
            synapse.weight.copy_(value)
            self._applied[i] = value

    @torch.no_grad()
    def sync(self) -> None:
        """After an update: add the step taken on the device values to the programmed weights,
        then re-apply the devices."""
        for synapse, before in zip(self.synapses, self._applied, strict=True):
            synapse.programmed += synapse.weight.detach() - before
        self.apply()

    @torch.no_grad()
    def restore(self) -> None:
        """Ideal devices again: the programmed weights back in the network, hooks removed."""
        for synapse in self.synapses:
            synapse.weight.copy_(synapse.programmed)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def threshold_factors(self) -> dict[int, Tensor]:
        """Drawn factors ``k_i`` by neuron index (those that have run at least once)."""
        return dict(self._factors)

    def _threshold_hook(self, index: int):
        def hook(_module: nn.Module, args: tuple) -> tuple:
            x = args[0]  # (T, B, *neuron shape)
            factor = self._factors.get(index)
            if factor is None:
                generator = torch.Generator().manual_seed(self.device_model.seed * 100_003 + index)
                eta = torch.randn(x.shape[2:], generator=generator)
                factor = (1.0 + self.device_model.threshold_sigma * eta).clamp_min(
                    MIN_THRESHOLD_FACTOR).to(x)
                self._factors[index] = factor
            return (x / factor, *args[1:])

        return hook


class DeviceSync(Component):
    """Re-apply imperfect devices after every optimizer step (calibration on faulty hardware)."""

    name = "devices"

    def __init__(self, devices: ImperfectDevices) -> None:
        self.devices = devices

    def attach(self, ctx: TrainingContext) -> None:
        if self.devices.model is not ctx.model:
            raise UserError("DeviceSync must wrap the devices of the model being trained")

    def on_step_end(self, ctx: TrainingContext) -> None:
        self.devices.sync()

    def state_dict(self) -> dict[str, Any]:
        return {"programmed": [s.programmed.clone() for s in self.devices.synapses]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for synapse, value in zip(self.devices.synapses, state["programmed"], strict=True):
            synapse.programmed.copy_(value)
        self.devices.apply()
