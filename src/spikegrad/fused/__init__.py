"""Fused multi-step LIF/IF neurons: the whole time loop, forward and backward, in one kernel.

:func:`multistep` computes exactly what :func:`spikegrad.dynamics.neuron_multistep` (the
reference loop, kept as the specification) computes: bit-identical spikes and final state,
and the same gradients up to rounding. It chooses a *backend*:

- ``"reference"``: the plain PyTorch loop over :func:`~spikegrad.dynamics.neuron_step`;
- ``"cpu"``: a C++ kernel compiled on first use (:mod:`spikegrad.fused.cpu`);
- ``"triton"``: a Triton kernel for CUDA tensors (:mod:`spikegrad.fused.triton_lif`);
- ``"auto"`` (default): ``triton`` for CUDA tensors, ``cpu`` for CPU tensors, when the
  kernel can run this call (a scalar leak, a state of the input's dtype); otherwise the
  reference. ``$SPIKEGRAD_NEURON_BACKEND`` replaces ``auto`` (e.g. ``reference`` to switch
  the fast paths off everywhere).

An explicitly requested kernel that cannot run (no compiler, Triton missing) falls back to
the reference with a one-time warning; one asked for on the wrong device is a
:class:`~spikegrad.errors.UserError`.

Mixed precision (float16 and bfloat16 tensors, e.g. the currents a convolution hands a
neuron under autocast): the kernels load the input's dtype, run the recurrence and the
surrogate in float32 and store the spikes (exactly 0 or 1), the final state and the
gradients in the input's dtype, rounded to nearest even. Spikes equal those of the
reference run in float32 on the same (half-precision) values, and gradients are that
reference's gradients rounded once to the input's dtype; the reference loop itself would
round every intermediate. The potentials returned for monitoring are float32. For Triton
the potentials kept for backward are float32 too (:mod:`spikegrad.fused.triton_lif` says why).

What backward keeps (the lean-memory design): the CPU kernel saves only the input current
``x`` (one tensor of the size of the potentials) and recomputes the potentials ``h_t``
block by block in cache during backward; the Triton kernel saves ``h_t`` (recompute
would need the whole time history per thread), in float32 for half-precision inputs.
Neither saves spikes, masks or surrogate values; the reference keeps three tensors per
time step (hard reset: ``h - threshold``, ``h`` and ``1 - s``), in the input's dtype.
"""

from __future__ import annotations

import os
import warnings
from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from spikegrad.dynamics import NeuronParams, NeuronState, check_state, neuron_multistep
from spikegrad.errors import UserError, check_time_major, unknown_name_error
from spikegrad.fused import cpu
from spikegrad.fused.formulas import GIVEN, kernel_formula

__all__ = ["BACKENDS", "FusedNeuron", "multistep", "resolve_backend"]

BACKENDS = ("auto", "reference", "cpu", "triton")
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# leak (a 0-dim CUDA tensor when learnable there), input_scale, threshold, v_reset, v_init
NeuronConstants = tuple[float | Tensor, float, float, float, float]


class KernelOps(Protocol):
    """One backend's kernels on ``x [T, N]`` (contiguous) and ``v0 [N]`` (or None)."""

    def forward(self, x: Tensor, v0: Tensor | None, neuron: NeuronConstants, hard: bool, save: bool = True,
                want_h: bool = False) -> tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor | None]:
        """``(spikes [T, N], final potential [N], tensors to save for backward, potentials h
        [T, N] if wanted)``."""

    def backward(self, saved: tuple[Tensor, ...], v0: Tensor | None, grad_s: Tensor,
                 grad_v_final: Tensor | None, neuron: NeuronConstants, params: NeuronParams,
                 surrogate, want_v0: bool, want_leak: bool
                 ) -> tuple[Tensor, Tensor | None, float | Tensor | None]:
        """``(dL/dx, dL/dv0 or None, dL/dleak or None)``."""


class CPUOps:
    """The C++ kernel; saves ``x`` and recomputes the potentials in backward."""

    def forward(self, x, v0, neuron, hard, save=True, want_h=False):
        spikes, v_final, h = cpu.forward(x, v0, neuron, hard, want_h=want_h)
        return spikes, v_final, (x,), h

    def backward(self, saved, v0, grad_s, grad_v_final, neuron, params, surrogate, want_v0, want_leak):
        (x,) = saved
        hard = params.reset == "hard"
        kind, constants = kernel_formula(surrogate)
        g = None
        if kind == GIVEN:  # a surrogate without a kernel formula: g from its own derivative
            _, _, h = cpu.forward(x, v0, neuron, hard, want_h=True)
            g = surrogate.derivative(h - params.threshold).contiguous()
        return cpu.backward(x, v0, grad_s, grad_v_final, g, neuron, kind, constants, hard,
                            params.detach_reset, want_v0, want_leak)


def _triton_ops() -> KernelOps:
    from spikegrad.fused import triton_lif

    return triton_lif.TritonOps()


_OPS = {"cpu": CPUOps, "triton": _triton_ops}


class FusedNeuron(torch.autograd.Function):
    """Autograd wrapper of a backend's kernels: ``(x, v0, leak) -> (spikes, final potential,
    potentials h)``.

    ``leak`` is the 0-dim tensor of a learnable leak (None for a constant one); its
    gradient is ``Σ_t Σ_n dL/dh_t · u_{t-1}``. ``h`` (empty unless ``want_h``) is for
    monitoring and carries no gradient. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, v0: Tensor | None, leak: Tensor | None, ops: KernelOps,  # type: ignore[override]
                params: NeuronParams, surrogate, want_h: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        neuron = constants(params)
        spikes, v_final, saved, h = ops.forward(x, v0, neuron, params.reset == "hard", want_h=want_h)
        h = x.new_empty(0) if h is None else h
        ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(v0, leak, *saved)
        ctx.ops, ctx.params, ctx.surrogate, ctx.neuron, ctx.dtype = ops, params, surrogate, neuron, x.dtype
        return spikes, v_final, h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: Tensor | None, grad_v_final: Tensor | None, _grad_h=None):  # type: ignore[override]
        v0, leak, *saved = ctx.saved_tensors
        want_x, want_v0, want_leak = ctx.needs_input_grad[:3]
        like = saved[0]  # [T, N]; the backends take grad_s in the input's dtype
        grad_s = like.new_zeros(like.shape, dtype=ctx.dtype) if grad_s is None else \
            grad_s.to(ctx.dtype).contiguous()
        grad_v_final = None if grad_v_final is None else grad_v_final.to(ctx.dtype).contiguous()
        dx, dv0, dleak = ctx.ops.backward(tuple(saved), v0, grad_s, grad_v_final, ctx.neuron, ctx.params,
                                          ctx.surrogate, want_v0 and v0 is not None, want_leak)
        if want_leak:
            dleak = torch.as_tensor(dleak, dtype=leak.dtype, device=leak.device).reshape(leak.shape)
        return (dx if want_x else None, dv0 if want_v0 else None, dleak if want_leak else None,
                None, None, None, None)


def constants(params: NeuronParams) -> NeuronConstants:
    """``(leak, input_scale, threshold, v_reset, v_init)`` as Python floats.

    A learnable leak on a CUDA device stays a (detached) 0-dim tensor there: reading its
    value on the host would wait for the GPU; the Triton kernels take it as it is.
    """
    leak = params.leak
    if isinstance(leak, Tensor):
        leak = leak.detach()
    if not (isinstance(leak, Tensor) and leak.is_cuda):
        leak = float(leak)  # a constant leak, or a learnable one on the CPU: its current value
    return leak, float(params.input_scale), float(params.threshold), float(params.v_reset), \
        float(params.initial_potential)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _triton_usable(x: Tensor) -> bool:
    from spikegrad.fused import triton_lif

    return triton_lif.usable(x)


def resolve_backend(backend: str, x: Tensor, params: NeuronParams, state: NeuronState | None = None) -> str:
    """The backend that will run this call: ``"reference"``, ``"cpu"`` or ``"triton"``."""
    if backend not in BACKENDS:
        raise unknown_name_error("neuron backend", backend, BACKENDS)
    if backend == "auto":
        backend = os.environ.get("SPIKEGRAD_NEURON_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise unknown_name_error("neuron backend ($SPIKEGRAD_NEURON_BACKEND)", backend, BACKENDS)
    if backend == "reference":
        return "reference"
    explicit = backend != "auto"
    if backend == "cpu" and x.device.type != "cpu":
        raise UserError(f"neuron backend 'cpu' needs CPU tensors, got a tensor on {x.device}; "
                        "use backend='auto' to choose by device")
    if backend == "triton" and not _triton_usable(x):
        if x.device.type != "cuda":
            raise UserError(f"neuron backend 'triton' needs CUDA tensors, got a tensor on {x.device}; "
                            "use backend='auto' to choose by device")
        _warn_once("spikegrad: neuron backend 'triton' is unavailable (is triton installed?); "
                   "using the reference loop")
        return "reference"
    if backend == "auto":
        if x.device.type == "cuda":
            backend = "triton" if _triton_usable(x) else "reference"
        else:
            backend = "cpu" if x.device.type == "cpu" else "reference"
    if backend == "reference":
        return backend
    reason = _unsupported(x, params, state)
    if reason is None and backend == "cpu" and cpu.library() is None:
        return "reference"  # cpu.library() has warned once
    if reason is not None:
        if explicit:
            _warn_once(f"spikegrad: neuron backend {backend!r} cannot run {reason}; using the reference loop")
        return "reference"
    return backend


def _unsupported(x: Tensor, params: NeuronParams, state: NeuronState | None) -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"{x.dtype} tensors (only float32, float64, float16 and bfloat16)"
    if x.numel() == 0:
        return "empty tensors"
    leak = params.leak
    if isinstance(leak, Tensor) and (leak.numel() != 1 or leak.device != x.device):
        return "a leak that is not one scalar on the input's device"
    if state is not None and (state.v.dtype != x.dtype or state.v.device != x.device):
        return "a state whose dtype or device differs from the input's"
    return None


def multistep(x: Tensor, params: NeuronParams, surrogate, state: NeuronState | None = None,
              backend: str = "auto", *, return_membrane: bool = False
              ) -> tuple[Tensor, NeuronState, Tensor | None]:
    """``(spikes [T, B, ...], final state, pre-reset potentials [T, B, ...] or None)``.

    The contract of :func:`spikegrad.dynamics.neuron_multistep`, run by the backend
    :func:`resolve_backend` picks. From a kernel, the potentials carry no gradient (they are
    for monitoring).
    """
    check_time_major(x, "neuron input")
    if state is not None:
        check_state(state, x[0])
    chosen = resolve_backend(backend, x, params, state)
    if chosen == "reference":
        return neuron_multistep(x, params, surrogate, state, return_membrane=return_membrane)
    T = x.shape[0]
    flat = x.contiguous().view(T, -1)  # (T, N)
    v0 = None if state is None else state.v.contiguous().view(-1)  # (N,)
    leak = params.leak if isinstance(params.leak, Tensor) else None
    ops = _OPS[chosen]()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (flat, v0, leak)):
        spikes, v_final, h = FusedNeuron.apply(flat, v0, leak, ops, params, surrogate, return_membrane)
    else:
        spikes, v_final, _, h = ops.forward(flat, v0, constants(params), params.reset == "hard", save=False,
                                            want_h=return_membrane)
    membrane = h.view(x.shape) if return_membrane else None
    return spikes.view(x.shape), NeuronState(v_final.view(x.shape[1:])), membrane
