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
  ``"zero"`` is ``reset="hard"`` with ``v_reset = 0``; its default surrogate
  ``surrogate.atan()`` is :class:`~spikegrad.surrogates.ATan` ``(alpha=2)``.
- Norse ``LIFBoxParameters(tau_mem_inv)`` at step ``dt``: ``leak = 1 - dt·tau_mem_inv``,
  ``input_scale = dt·tau_mem_inv``.

The ``from_spikingjelly``, ``from_snntorch`` and ``from_norse`` constructors apply them.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad import fused
from spikegrad import surrogates as surrogates_module
from spikegrad.dynamics import NeuronParams, NeuronState, ResetMode, neuron_multistep, neuron_step
from spikegrad.errors import UserError, unknown_name_error

__all__ = ["IF", "LIF", "ClippedReLU", "SpikingNeuron", "available", "create", "set_backend", "streaming",
           "surrogate_from_snntorch"]


def _finite(name: str, value: Any) -> float:
    """A neuron parameter as a finite float; a tensor, string, bool or NaN/inf is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (a learnable leak: learnable_leak=True, or neuron type plif)" \
            if name == "leak" and isinstance(value, Tensor) else ""
        raise UserError(f"neuron {name} must be a number, got {value!r} ({type(value).__name__})"
                        f"{hint}")
    if not math.isfinite(value):
        raise UserError(f"neuron {name} must be a finite number, got {value}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"neuron {name} must be true or false, got {value!r}")
    return value


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
        leak, threshold, v_reset, input_scale = (
            _finite("leak", leak), _finite("threshold", threshold), _finite("v_reset", v_reset),
            _finite("input_scale", input_scale))
        detach_reset, learnable_leak = _flag("detach_reset", detach_reset), _flag(
            "learnable_leak", learnable_leak)
        # Validate once, through the same dataclass the dynamics use.
        NeuronParams(leak, threshold, reset, v_reset, detach_reset, input_scale)
        self.threshold = threshold
        self.reset = reset
        self.v_reset = v_reset
        self.detach_reset = detach_reset
        self.input_scale = input_scale
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
        beta: float | nn.Module,
        threshold: float = 1.0,
        reset_mechanism: str = "subtract",
        surrogate: surrogates_module.Surrogate | None = None,
    ) -> LIF:
        """The LIF matching snnTorch's ``Leaky(beta, threshold, reset_mechanism, reset_delay=False)``.

        ``beta`` is the decay rate, or an ``snntorch.Leaky`` module whose settings are read
        (then leave the other arguments at their defaults, except ``surrogate``).
        ``surrogate=None`` takes snnTorch's own: ``ATan(alpha=2)`` (snnTorch's default
        ``surrogate.atan()``; ``∂S/∂U = (α/2)/(1 + (π/2·α·(U - θ))²)`` in both), or the
        module's ``spike_grad`` when it is ``surrogate.atan``, ``fast_sigmoid`` or
        ``sigmoid`` (same formulas here, see :func:`surrogate_from_snntorch`).

        snnTorch fires at ``U > threshold`` (here ``>=``; they differ only on exact ties);
        its reset, like this one, carries the spike's gradient. With its default
        ``reset_delay=True`` the subtraction happens one step later and is not decayed,
        which has no exact equivalent here and is refused for a module.
        """
        modes = {"subtract": "soft", "zero": "hard"}
        if isinstance(beta, nn.Module):
            if (threshold, reset_mechanism) != (1.0, "subtract"):
                raise UserError("from_snntorch(module) reads threshold and reset_mechanism from the "
                                "module; do not pass them too")
            beta, threshold, reset_mechanism, grad = _snntorch_settings(beta)
            surrogate = surrogate if surrogate is not None else surrogate_from_snntorch(grad)
        if reset_mechanism not in modes:
            raise unknown_name_error("snnTorch reset_mechanism", reset_mechanism, modes)
        return cls(leak=beta, threshold=threshold, reset=modes[reset_mechanism],
                   surrogate=surrogate if surrogate is not None else surrogates_module.ATan(alpha=2.0))

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


def _single(value, what: str) -> float:
    t = torch.as_tensor(value).detach()
    if t.numel() != 1:
        raise UserError(f"the snnTorch module has a {what} per neuron ({t.numel()} values); spikegrad's "
                        f"LIF takes one per layer")
    return float(t)


def _snntorch_settings(module: nn.Module) -> tuple[float, float, str, Callable | None]:
    """``(beta, threshold, reset_mechanism, spike_grad)`` of an ``snntorch.Leaky``; what
    has no exact equivalent is refused."""
    if not all(hasattr(module, a) for a in ("beta", "threshold", "spike_grad", "reset_delay")):
        raise UserError(f"from_snntorch takes beta or an snntorch.Leaky, got {type(module).__name__}")
    reasons = []
    if module.reset_delay:
        reasons.append("reset_delay=True (build it with reset_delay=False)")
    if isinstance(module.beta, nn.Parameter) or isinstance(module.threshold, nn.Parameter):
        reasons.append("a learnable beta or threshold (spikegrad learns λ = sigmoid(a): "
                       "LIF(learnable_leak=True))")
    if getattr(module, "inhibition", False) or getattr(module, "state_quant", False):
        reasons.append("inhibition or state_quant")
    if _single(getattr(module, "graded_spikes_factor", 1.0), "graded_spikes_factor") != 1.0:
        reasons.append("graded spikes (graded_spikes_factor != 1)")
    if getattr(module, "surrogate_disable", False):
        reasons.append("surrogate_disable=True")
    mechanism = getattr(module, "_reset_mechanism", "subtract")
    if mechanism == "none":
        reasons.append("reset_mechanism='none'")
    if reasons:
        raise UserError("this snntorch.Leaky has no exact spikegrad equivalent: " + "; ".join(reasons))
    return (_single(module.beta, "beta"), _single(module.threshold, "threshold"), mechanism,
            module.spike_grad)


def surrogate_from_snntorch(spike_grad: Callable | None) -> surrogates_module.Surrogate:
    """The surrogate equal to an snnTorch ``spike_grad``: ``surrogate.atan(alpha)`` ->
    :class:`~spikegrad.surrogates.ATan` (``alpha``), ``fast_sigmoid(slope)`` ->
    ``FastSigmoid(slope)``, ``sigmoid(slope)`` -> ``Sigmoid(alpha=slope)``; None (snnTorch's
    default) -> ``ATan(2)``. Any other is refused: pass ``surrogate=`` yourself."""
    if spike_grad is None:
        return surrogates_module.ATan(alpha=2.0)
    import inspect

    name = getattr(spike_grad, "__qualname__", "")
    if getattr(spike_grad, "__module__", "") == "snntorch.surrogate" and name.endswith(".<locals>.inner"):
        kind = name.split(".")[0]
        params = inspect.getclosurevars(spike_grad).nonlocals
        if kind == "atan":
            return surrogates_module.ATan(alpha=float(params["alpha"]))
        if kind == "fast_sigmoid":
            return surrogates_module.FastSigmoid(slope=float(params["slope"]))
        if kind == "sigmoid":
            return surrogates_module.Sigmoid(alpha=float(params["slope"]))
    raise UserError(f"snnTorch surrogate {name or spike_grad!r} has no mapped spikegrad equivalent; "
                    "pass surrogate= (a spikegrad.surrogates.Surrogate)")


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

