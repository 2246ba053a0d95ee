"""Spiking neuron layers: thin ``nn.Module`` wrappers over :mod:`spikegrad.dynamics`.

A neuron layer takes a time-major tensor ``[T, B, ...]`` and returns spikes of the same
shape. A call keeps no state after it returns, so there is nothing to reset between
batches. For streaming (chunks of a longer sequence, one after another) use the explicit
single-step API :meth:`SpikingNeuron.step` or the scoped :func:`streaming` context.

Parameter conventions (``u_t = leak·u_{t-1} + input_scale·I_t``, spike when
``u_t >= threshold``):

- SpikingJelly ``LIFNode(tau, decay_input=True)``: ``leak = 1 - 1/tau``, ``input_scale = 1/tau``;
  with ``decay_input=False``, ``input_scale = 1``; ``v_reset=None`` is ``reset="soft"``.
- snnTorch ``Leaky(beta)``: ``leak = beta`` (it fires at ``U > threshold``);
  ``reset_mechanism="subtract"`` is ``reset="soft"`` (exact with ``reset_delay=False``),
  ``"zero"`` is ``reset="hard"`` with ``v_reset = 0``.
- Norse ``LIFBoxParameters(tau_mem_inv)`` at step ``dt``: ``leak = 1 - dt·tau_mem_inv``,
  ``input_scale = dt·tau_mem_inv``.

The ``from_spikingjelly``, ``from_snntorch`` and ``from_norse`` constructors apply them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from spikegrad import fused
from spikegrad import surrogates as surrogates_module
from spikegrad.dynamics import NeuronParams, NeuronState, ResetMode, neuron_multistep, neuron_step
from spikegrad.errors import UserError, unknown_name_error

__all__ = ["IF", "LIF", "ClippedReLU", "SpikingNeuron", "available", "create", "set_backend", "streaming"]


class SpikingNeuron(nn.Module):
    """Multi-step LIF/IF neuron layer; see :mod:`spikegrad.dynamics` for the equations.

    Args:
        leak: λ in ``u_t = λ·u_{t-1} + I_t``, in ``[0, 1]``; 1 is IF.
        threshold: firing threshold (a spike when ``u >= threshold``).
        reset: ``"hard"`` (set to ``v_reset``) or ``"soft"`` (subtract the threshold).
        v_reset: potential after a spike with hard reset.
        detach_reset: cut the gradient through the reset term.
        surrogate: a :class:`spikegrad.surrogates.Surrogate`; a fresh default one
            (:func:`spikegrad.surrogates.default`, Dspike of temperature 3) if None.
            Each layer owns its instance (no shared default object).
        input_scale: multiplies the input current (``1/tau`` in SpikingJelly's ``decay_input``).
        learnable_leak: learn λ = sigmoid(a) per layer, PLIF-style, starting at ``leak``.
        backend: who runs the time loop: ``"auto"`` (a fused kernel when one can, see
            :mod:`spikegrad.fused`), ``"reference"`` (the plain loop), ``"cpu"`` or ``"triton"``.
            Same spikes either way; may be reassigned at any time.
    """

    def __init__(
        self,
        leak: float = 0.5,
        threshold: float = 1.0,
        reset: ResetMode = "hard",
        v_reset: float = 0.0,
        detach_reset: bool = False,
        surrogate: surrogates_module.Surrogate | None = None,
        input_scale: float = 1.0,
        learnable_leak: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        # Validate once, through the same dataclass the dynamics use.
        NeuronParams(float(leak), float(threshold), reset, float(v_reset), bool(detach_reset))
        self.threshold = float(threshold)
        self.reset = reset
        self.v_reset = float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.input_scale = float(input_scale)
        self.surrogate = surrogate if surrogate is not None else surrogates_module.default()
        if learnable_leak:
            if not 0.0 < leak < 1.0:
                raise UserError(f"a learnable leak must start strictly inside (0, 1), got {leak}")
            self.leak_logit = nn.Parameter(torch.tensor(math.log(leak / (1.0 - leak))))
            self._leak = None
        else:
            self.leak_logit = None
            self._leak = float(leak)
        self.backend = backend
        self._carry: dict | None = None  # set only inside `streaming(model)`
        #: if set, called with the pre-reset potentials ``h`` ``[T, B, ...]`` of every forward
        #: call (used by :class:`spikegrad.monitors.ActivityMonitor`; None costs nothing)
        self.membrane_hook: Callable[[Tensor], None] | None = None

    @property
    def backend(self) -> str:
        """``auto``, ``reference``, ``cpu`` or ``triton`` (see :mod:`spikegrad.fused`)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in fused.BACKENDS:
            raise unknown_name_error("neuron backend", value, fused.BACKENDS)
        self._backend = value

    @property
    def leak(self) -> float | Tensor:
        """λ, a float, or a 0-dim tensor when learnable (``sigmoid(leak_logit)``)."""
        return torch.sigmoid(self.leak_logit) if self.leak_logit is not None else self._leak

    @property
    def params(self) -> NeuronParams:
        return NeuronParams(
            self.leak, self.threshold, self.reset, self.v_reset, self.detach_reset, self.input_scale
        )

    def forward(self, x: Tensor) -> Tensor:
        """Spikes ``[T, B, ...]`` for a time-major input current ``[T, B, ...]``."""
        record = self.membrane_hook is not None
        state = None if self._carry is None else self._carry.get("state")
        spikes, state, h = fused.multistep(x, self.params, self.surrogate, state, self.backend,
                                           return_membrane=record)
        if record:
            self.membrane_hook(h)
        if self._carry is not None:
            self._carry["state"] = NeuronState(state.v.detach()) if self._carry["detach"] else state
        return spikes

    def forward_with_state(
        self, x: Tensor, state: NeuronState | None = None
    ) -> tuple[Tensor, NeuronState]:
        """Multi-step call from an explicit state; returns ``(spikes, final state)``."""
        spikes, state, _ = fused.multistep(x, self.params, self.surrogate, state, self.backend)
        return spikes, state

    def membrane(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(spikes, pre-reset potentials h_t)``, both ``[T, B, ...]``, for analysis (reference loop)."""
        spikes, _, h = neuron_multistep(x, self.params, self.surrogate, return_membrane=True)
        return spikes, h

    def step(self, x_t: Tensor, state: NeuronState | None = None) -> tuple[Tensor, NeuronState]:
        """One time step ``[B, ...]`` from an explicit state (``None``: at rest)."""
        if state is None:
            state = NeuronState(torch.full_like(x_t, self.params.initial_potential))
        spikes, state, _ = neuron_step(x_t, state, self.params, self.surrogate)
        return spikes, state

    def extra_repr(self) -> str:
        leak = "learnable" if self.leak_logit is not None else f"{self._leak:g}"
        text = f"leak={leak}, threshold={self.threshold:g}, reset={self.reset!r}"
        if self.reset == "hard" and self.v_reset != 0.0:
            text += f", v_reset={self.v_reset:g}"
        if self.input_scale != 1.0:
            text += f", input_scale={self.input_scale:g}"
        if self.detach_reset:
            text += ", detach_reset=True"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neuron (see :class:`SpikingNeuron` for the arguments)."""

    @classmethod
    def from_spikingjelly(
        cls,
        tau: float,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = False,
        surrogate: surrogates_module.Surrogate | None = None,
    ) -> LIF:
        """The LIF equal to SpikingJelly's ``LIFNode(tau, decay_input, v_threshold, v_reset)``.

        SpikingJelly charges ``H = V + (X - (V - V_reset))/tau``; with ``v_reset = 0`` (or
        ``None``, soft reset) this is ``leak = 1 - 1/tau`` and ``input_scale = 1/tau`` (or 1
        without ``decay_input``). A non-zero ``v_reset`` decays towards ``v_reset`` there
        and towards 0 here, so it has no exact equivalent and is refused.
        """
        if tau <= 1.0:
            raise UserError(f"SpikingJelly's tau must be > 1 (leak = 1 - 1/tau), got {tau}")
        if v_reset not in (None, 0.0):
            raise UserError(
                f"v_reset={v_reset} has no exact spikegrad equivalent (SpikingJelly decays towards "
                "v_reset, spikegrad towards 0); use v_reset=0 or None (soft reset)"
            )
        return cls(
            leak=1.0 - 1.0 / tau,
            threshold=v_threshold,
            reset="soft" if v_reset is None else "hard",
            detach_reset=detach_reset,
            surrogate=surrogate,
            input_scale=1.0 / tau if decay_input else 1.0,
        )

    @classmethod
    def from_snntorch(
        cls,
        beta: float,
        threshold: float = 1.0,
        reset_mechanism: str = "subtract",
        surrogate: surrogates_module.Surrogate | None = None,
    ) -> LIF:
        """The LIF matching snnTorch's ``Leaky(beta, threshold, reset_mechanism, reset_delay=False)``.

        snnTorch fires at ``U > threshold`` (here ``>=``; they differ only on exact ties).
        With its default ``reset_delay=True`` the subtraction happens one step later and
        is not decayed, which has no exact equivalent here.
        """
        modes = {"subtract": "soft", "zero": "hard"}
        if reset_mechanism not in modes:
            raise unknown_name_error("snnTorch reset_mechanism", reset_mechanism, modes)
        return cls(leak=beta, threshold=threshold, reset=modes[reset_mechanism], surrogate=surrogate)

    @classmethod
    def from_norse(
        cls,
        tau_mem_inv: float = 100.0,
        dt: float = 1e-3,
        v_th: float = 1.0,
        v_reset: float = 0.0,
        surrogate: surrogates_module.Surrogate | None = None,
    ) -> LIF:
        """The LIF equal to Norse's ``LIFBoxCell`` (current-free LIF, ``v_leak = 0``).

        Norse integrates ``v += dt·tau_mem_inv·(v_leak - v + i)``: ``leak = 1 - dt·tau_mem_inv``,
        ``input_scale = dt·tau_mem_inv``.
        """
        rate = dt * tau_mem_inv
        if not 0.0 < rate <= 1.0:
            raise UserError(f"dt·tau_mem_inv must lie in (0, 1] for a stable update, got {rate}")
        return cls(leak=1.0 - rate, threshold=v_th, reset="hard", v_reset=v_reset,
                   surrogate=surrogate, input_scale=rate)


class IF(SpikingNeuron):
    """Integrate-and-fire neuron: :class:`SpikingNeuron` with ``leak = 1``."""

    def __init__(
        self,
        threshold: float = 1.0,
        reset: ResetMode = "hard",
        v_reset: float = 0.0,
        detach_reset: bool = False,
        surrogate: surrogates_module.Surrogate | None = None,
        input_scale: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__(1.0, threshold, reset, v_reset, detach_reset, surrogate, input_scale,
                         backend=backend)


class ClippedReLU(nn.Module):
    """ANN activation ``clamp(x, 0, max_value)``: the stand-in for a neuron in ANN twins."""

    def __init__(self, max_value: float = 2.0) -> None:
        super().__init__()
        if not max_value > 0:
            raise UserError(f"ClippedReLU max_value must be positive, got {max_value}")
        self.max_value = float(max_value)

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value:g}"


_NEURONS: dict[str, Callable[..., SpikingNeuron]] = {
    "lif": LIF,
    "if": IF,
    "plif": lambda **kw: LIF(learnable_leak=True, **kw),
}


def available() -> list[str]:
    """Neuron types accepted by :func:`create`."""
    return sorted(_NEURONS)


def create(kind: str, **kwargs) -> SpikingNeuron:
    """Build a neuron by type name (``"lif"``, ``"if"``, ``"plif"``) and keyword arguments."""
    if kind.lower() not in _NEURONS:
        raise unknown_name_error("neuron type", kind, available())
    try:
        return _NEURONS[kind.lower()](**kwargs)
    except TypeError as exc:
        raise UserError(f"neuron {kind!r}: {exc}") from exc


def set_backend(model: nn.Module, backend: str) -> None:
    """Set the ``backend`` of every spiking neuron in ``model`` (see :mod:`spikegrad.fused`)."""
    if backend not in fused.BACKENDS:
        raise unknown_name_error("neuron backend", backend, fused.BACKENDS)
    for module in model.modules():
        if isinstance(module, SpikingNeuron):
            module.backend = backend


@contextlib.contextmanager
def streaming(model: nn.Module, detach: bool = False) -> Iterator[Callable[[], None]]:
    """Carry every neuron's state from one call of ``model`` to the next, inside this block.

    Feed consecutive chunks ``[T_chunk, B, ...]`` of one long sequence; the output equals one
    call on the whole sequence. ``detach=True`` cuts the graph between chunks (truncated
    BPTT). The context yields a ``reset()`` function that starts all neurons from rest; the
    state is dropped when the block ends.
    """
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    carries = [{"detach": detach} for _ in neurons]

    def reset() -> None:
        for carry in carries:
            carry.pop("state", None)

    for neuron, carry in zip(neurons, carries, strict=True):
        neuron._carry = carry
    try:
        yield reset
    finally:
        for neuron in neurons:
            neuron._carry = None

