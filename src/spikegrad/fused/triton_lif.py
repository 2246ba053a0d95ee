"""The GPU fused neuron: Triton kernels for the forward and backward pass through time.

One program handles ``BLOCK`` neurons and loops over ``T`` inside, so every element of the
input, spikes and gradients crosses memory once. The forward pass saves the potentials
``h_t`` (one tensor, the input's dtype); backward reads them in reverse time order and
rebuilds ``s_t`` and ``u_{t-1}`` from them (the CPU kernel recomputes ``h_t`` instead, which
needs a ``T``-long buffer per neuron that registers do not hold). Constants travel as a
small tensor of the input's dtype, so they round exactly as the reference's Python scalars;
kernels launch with ``enable_fp_fusion=False`` so that ``leak·u + scale·x`` is not turned
into a fused multiply-add, which would round differently and could flip a spike.

No call waits for the GPU: the constants tensor is made once per set of values and device
and then reused (a fresh ``torch.tensor(..., device="cuda")`` is a blocking host-to-device
copy, which would stall the stream twice per neuron layer and step), and a learnable leak
enters it by a copy on the device, never through the host.

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` set before import, Triton's interpreter
runs the same kernels on CPU tensors (how the tests check them without a GPU).
"""

# ruff: noqa: SIM108  (kernels branch on compile-time constants with plain if statements)

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from spikegrad.fused.formulas import GIVEN, KINDS, kernel_formula

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: the GPU path needs triton, the rest of spikegrad does not
    triton = None

__all__ = ["TritonOps", "available", "device_constants", "usable"]

BLOCK = 512
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    return triton is not None


def usable(x: Tensor) -> bool:
    """Whether these kernels can run on ``x``'s device."""
    return triton is not None and (x.is_cuda or (INTERPRET and x.device.type == "cpu"))


if triton is not None:

    @triton.jit
    def _reset(h, s, threshold, v_reset, HARD: tl.constexpr):
        if HARD:
            return h * (1.0 - s) + v_reset * s
        else:
            return h - threshold * s

    @triton.jit
    def _surrogate(x, p0, p1, p2, p3, KIND: tl.constexpr):
        """g(x) of the kernel formulas in formulas.py (same constants as lif_cpu.cpp)."""
        ax = tl.abs(x)
        zero = tl.zeros_like(x)
        if KIND == 1:  # rectangle: (width/2, height)
            g = tl.where(ax < p0, zero + p1, zero)
        elif KIND == 2:  # triangle: (alpha, alpha^2)
            g = tl.maximum(p0 - p1 * ax, zero)
        elif KIND == 3:  # sigmoid: (alpha,)
            z = p0 * x
            e = tl.exp(-tl.abs(z))
            inv = 1.0 / (1.0 + e)
            s = tl.where(z >= 0, inv, e * inv)
            g = p0 * s * (1.0 - s)
        elif KIND == 4:  # atan: (pi/2 * alpha, alpha/2)
            y = p0 * x
            g = p1 / (1.0 + y * y)
        elif KIND == 5:  # fast sigmoid: (slope,)
            d = 1.0 + p0 * ax
            g = 1.0 / (d * d)
        else:  # dspike: (window/2, temperature, window, scale/window)
            y = p1 * x / p2
            e = tl.exp(-2.0 * tl.abs(y))
            t = (1.0 - e) / (1.0 + e)
            g = tl.where(ax <= p0, zero + p3, zero) * (1.0 - t * t)
        return g

    @triton.jit
    def _forward_kernel(x_ptr, v0_ptr, s_ptr, v_final_ptr, h_ptr, c_ptr, T, N,
                        HAS_V0: tl.constexpr, HARD: tl.constexpr, SAVE_H: tl.constexpr,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        leak, scale = tl.load(c_ptr), tl.load(c_ptr + 1)
        threshold, v_reset, v_init = tl.load(c_ptr + 2), tl.load(c_ptr + 3), tl.load(c_ptr + 4)
        if HAS_V0:
            u = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        else:
            u = tl.zeros([BLOCK], dtype=c_ptr.dtype.element_ty) + v_init
        x_ptr += offs  # pointers advance by N per step: no t·N product to overflow
        s_ptr += offs
        h_ptr += offs
        for _ in range(T):
            x = tl.load(x_ptr, mask=mask, other=0.0)
            h = leak * u + scale * x
            s = tl.where(h - threshold >= 0, 1.0, 0.0).to(h.dtype)
            tl.store(s_ptr, s, mask=mask)
            if SAVE_H:
                tl.store(h_ptr, h, mask=mask)
            u = _reset(h, s, threshold, v_reset, HARD)
            x_ptr += N
            s_ptr += N
            h_ptr += N
        tl.store(v_final_ptr + offs, u, mask=mask)

    @triton.jit
    def _backward_kernel(h_ptr, v0_ptr, gs_ptr, gv_final_ptr, g_ptr, gx_ptr, gv0_ptr, leak_ptr, c_ptr,
                         T, N, last,
                         KIND: tl.constexpr, HAS_V0: tl.constexpr, HAS_GV: tl.constexpr, HARD: tl.constexpr,
                         DETACH: tl.constexpr, WANT_V0: tl.constexpr, WANT_LEAK: tl.constexpr,
                         BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        leak, scale = tl.load(c_ptr), tl.load(c_ptr + 1)
        threshold, v_reset, v_init = tl.load(c_ptr + 2), tl.load(c_ptr + 3), tl.load(c_ptr + 4)
        p0, p1, p2, p3 = tl.load(c_ptr + 5), tl.load(c_ptr + 6), tl.load(c_ptr + 7), tl.load(c_ptr + 8)
        zero = tl.zeros([BLOCK], dtype=c_ptr.dtype.element_ty)
        if HAS_V0:
            u0 = tl.load(v0_ptr + offs, mask=mask, other=0.0)
        else:
            u0 = zero + v_init
        if HAS_GV:
            du = tl.load(gv_final_ptr + offs, mask=mask, other=0.0)
        else:
            du = zero
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        h_ptr += last + offs  # start at t = T-1 (last = (T-1)·N) and step back by N
        gs_ptr += last + offs
        g_ptr += last + offs
        gx_ptr += last + offs
        for i in range(T):
            t = T - 1 - i
            h = tl.load(h_ptr, mask=mask, other=0.0)
            xm = h - threshold
            s = tl.where(xm >= 0, 1.0, 0.0).to(h.dtype)
            if KIND == 0:
                g = tl.load(g_ptr, mask=mask, other=0.0)
            else:
                g = _surrogate(xm, p0, p1, p2, p3, KIND)
            gs = tl.load(gs_ptr, mask=mask, other=0.0)
            if HARD:
                if DETACH:
                    ds = gs
                else:
                    ds = gs + du * (v_reset - h)
                dh = du * (1.0 - s) + ds * g
            else:
                if DETACH:
                    ds = gs
                else:
                    ds = gs - threshold * du
                dh = du + ds * g
            tl.store(gx_ptr, scale * dh, mask=mask)
            if WANT_LEAK:
                has_prev = (offs * 0 + t) > 0  # t > 0 as a tensor
                hp = tl.load(h_ptr - N, mask=mask & has_prev, other=0.0)
                sp = tl.where(hp - threshold >= 0, 1.0, 0.0).to(h.dtype)
                u_prev = tl.where(has_prev, _reset(hp, sp, threshold, v_reset, HARD), u0)
                acc += tl.where(mask, dh.to(tl.float64) * u_prev.to(tl.float64), 0.0)
            du = leak * dh
            h_ptr -= N
            gs_ptr -= N
            g_ptr -= N
            gx_ptr -= N
        if WANT_V0:
            tl.store(gv0_ptr + offs, du, mask=mask)
        if WANT_LEAK:
            tl.store(leak_ptr + tl.program_id(0), tl.sum(acc, axis=0))


def _launch_options() -> dict:
    return {} if INTERPRET else {"enable_fp_fusion": False, "num_warps": 4}


@functools.cache
def _dummy(device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.zeros(1, device=device, dtype=dtype)


@functools.lru_cache(maxsize=256)
def _cached_constants(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def device_constants(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The kernels' constants ``values`` as a tensor of ``dtype`` on ``device``, without a host sync.

    ``values[0]`` (the leak) may be a 0-dim tensor (a learnable leak, already on ``device``):
    it is copied in on the device. Every other value is a Python float; the tensor of those
    is cached, so a constant neuron costs no host-to-device copy after its first call.
    """
    leak, rest = values[0], tuple(float(v) for v in values[1:])
    if not isinstance(leak, Tensor):
        return _cached_constants((float(leak), *rest), dtype, device)
    out = torch.empty(len(values), dtype=dtype, device=device)
    out[1:] = _cached_constants(rest, dtype, device)
    out[:1] = leak.detach().reshape(1)
    return out


class TritonOps:
    """:class:`spikegrad.fused.KernelOps` on Triton; saves the potentials ``h`` ``[T, N]``."""

    def forward(self, x, v0, neuron, hard, save=True, want_h=False):
        T, N = x.shape
        spikes, v_final = torch.empty_like(x), x.new_empty(N)
        write_h = save or want_h
        h = torch.empty_like(x) if write_h else _dummy(x.device, x.dtype)
        consts = device_constants(neuron, x.dtype, x.device)
        grid = (triton.cdiv(N, BLOCK),)
        _forward_kernel[grid](x, v0 if v0 is not None else _dummy(x.device, x.dtype), spikes, v_final, h,
                              consts, T, N, HAS_V0=v0 is not None, HARD=hard, SAVE_H=write_h, BLOCK=BLOCK,
                              **_launch_options())
        return spikes, v_final, ((h,) if save else ()), (h if want_h else None)

    def backward(self, saved, v0, grad_s, grad_v_final, neuron, params, surrogate, want_v0, want_leak):
        (h,) = saved
        T, N = h.shape
        kind, constants = kernel_formula(surrogate)
        g = surrogate.derivative(h - params.threshold).contiguous() if kind == GIVEN else None
        dummy = _dummy(h.device, h.dtype)
        grad_x = torch.empty_like(h)
        grad_v0 = h.new_empty(N) if want_v0 else dummy
        programs = triton.cdiv(N, BLOCK)
        partials = torch.zeros(programs, dtype=torch.float64, device=h.device) if want_leak else \
            _dummy(h.device, torch.float64)
        consts = device_constants((*neuron, *constants), h.dtype, h.device)
        _backward_kernel[(programs,)](
            h, v0 if v0 is not None else dummy, grad_s, grad_v_final if grad_v_final is not None else dummy,
            g if g is not None else dummy, grad_x, grad_v0, partials, consts, T, N, (T - 1) * N,
            KIND=kind, HAS_V0=v0 is not None, HAS_GV=grad_v_final is not None,
            HARD=params.reset == "hard", DETACH=params.detach_reset, WANT_V0=want_v0, WANT_LEAK=want_leak,
            BLOCK=BLOCK, **_launch_options(),
        )
        return grad_x, (grad_v0 if want_v0 else None), (partials.sum() if want_leak else None)


assert set(KINDS.values()) == {1, 2, 3, 4, 5, 6}  # the branches of _surrogate above
