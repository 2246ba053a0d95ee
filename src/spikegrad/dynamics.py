"""Neuron dynamics as pure functions: the reference of the membrane equations (the fused
kernels of :mod:`spikegrad.fused` compute them again, held to this by the tests).

Discrete-time leaky integrate-and-fire, for each time step ``t`` (units: the membrane
potential ``u`` and the threshold share the units of the input current ``I``)::

    h_t = leak · u_{t-1} + input_scale · I_t          (charge; leak = λ in [0, 1])
    s_t = H(h_t - threshold)                           (fire when h_t >= threshold)
    u_t = h_t · (1 - s_t) + v_reset · s_t              (reset = "hard")
    u_t = h_t - threshold · s_t                        (reset = "soft", subtract)

``H`` is the Heaviside step with a surrogate gradient (:mod:`spikegrad.surrogates`). With
``detach_reset`` the ``s_t`` inside the reset is detached from the graph (it still resets).
IF is ``leak = 1``. The potential relaxes towards 0; ``v_reset`` is only the value set after
a spike. The state before the first step is ``v_reset`` for hard reset and 0 for soft reset.

Nothing here keeps state: a multi-step call takes ``[T, B, ...]`` and returns spikes of the
same shape; the final state is returned only if asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from spikegrad.errors import UserError, check_time_major

ResetMode = Literal["hard", "soft"]

__all__ = ["NeuronParams", "NeuronState", "ResetMode", "check_state", "neuron_multistep", "neuron_step"]


@dataclass(frozen=True)
class NeuronParams:
    """Parameters of the LIF/IF update (see the module docstring for the equations).

    ``leak`` may be a Python float or a 0-dim tensor (a learnable leak).
    """

    leak: float | Tensor = 0.5
    threshold: float = 1.0
    reset: ResetMode = "hard"
    v_reset: float = 0.0
    detach_reset: bool = False
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.reset not in ("hard", "soft"):
            raise UserError(f"reset must be 'hard' or 'soft', got {self.reset!r}")
        if isinstance(self.leak, (int, float)) and not 0.0 <= float(self.leak) <= 1.0:
            raise UserError(f"leak must lie in [0, 1] (u_t = leak·u_(t-1) + I_t), got {self.leak}")
        if not float(self.threshold) > 0.0:
            raise UserError(f"threshold must be positive, got {self.threshold}")
        for name in ("threshold", "v_reset", "input_scale"):  # inf never spikes, NaN never compares
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.reset == "soft" and self.v_reset != 0.0:
            raise UserError(f"v_reset ({self.v_reset}) applies to a hard reset only (a soft reset "
                            "subtracts the threshold); use reset='hard' or leave v_reset at 0 "
                            "(config: model.neuron.reset, model.neuron.v_reset)")

    @property
    def initial_potential(self) -> float:
        return self.v_reset if self.reset == "hard" else 0.0


class NeuronState(NamedTuple):
    """Membrane potential after the reset of the last step, shape ``[B, ...]``."""

    v: Tensor


def initial_state(like: Tensor, params: NeuronParams) -> NeuronState:
    """The state before the first time step, shaped like one step of input."""
    return NeuronState(torch.full_like(like, params.initial_potential))


def check_state(state: NeuronState, like: Tensor) -> None:
    """Raise a :class:`UserError` unless ``state`` fits one time step shaped like ``like``."""
    if state.v.shape != like.shape:
        raise UserError(
            f"neuron state has shape {tuple(state.v.shape)} but one time step of the input has "
            f"shape {tuple(like.shape)}; pass state=None to start from rest"
        )


def neuron_step(
    x: Tensor, state: NeuronState, params: NeuronParams, surrogate
) -> tuple[Tensor, NeuronState, Tensor]:
    """One time step. Returns ``(spikes s_t, new state u_t, pre-reset potential h_t)``."""
    h = params.leak * state.v + (x if params.input_scale == 1.0 else params.input_scale * x)
    spikes = surrogate(h - params.threshold)
    s_reset = spikes.detach() if params.detach_reset else spikes
    if params.reset == "hard":
        v = h * (1.0 - s_reset) + params.v_reset * s_reset
    else:
        v = h - params.threshold * s_reset
    return spikes, NeuronState(v), h


def neuron_multistep(
    x: Tensor,
    params: NeuronParams,
    surrogate,
    state: NeuronState | None = None,
    *,
    return_membrane: bool = False,
) -> tuple[Tensor, NeuronState, Tensor | None]:
    """Run ``T`` steps over a time-major input ``x`` of shape ``[T, B, ...]``.

    The reference implementation: a loop over :func:`neuron_step`. Returns ``(spikes
    [T, B, ...], final state, pre-reset potentials [T, B, ...] or None)``.
    """
    check_time_major(x, "neuron input")
    steps = x.unbind(0)
    if state is None:
        state = initial_state(steps[0], params)
    else:
        check_state(state, steps[0])
    spikes, membrane = [], []
    for x_t in steps:
        s_t, state, h_t = neuron_step(x_t, state, params, surrogate)
        spikes.append(s_t)
        if return_membrane:
            membrane.append(h_t)
    return torch.stack(spikes), state, (torch.stack(membrane) if return_membrane else None)
