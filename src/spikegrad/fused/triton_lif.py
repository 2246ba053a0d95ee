"""The GPU fused neuron: Triton kernels for the forward and backward pass through time.

One program handles ``BLOCK`` neurons and loops over ``T`` inside, so every element of the
input, spikes and gradients crosses memory once. The forward pass saves the potentials
``h_t`` (one tensor); backward reads them in reverse time order and rebuilds ``s_t`` and
``u_{t-1}`` from them (the CPU kernel recomputes ``h_t`` instead, which needs a ``T``-long
buffer per neuron that registers do not hold). Constants travel as a small tensor of the
compute dtype, so they round exactly as the reference's Python scalars; kernels launch with
``enable_fp_fusion=False`` so that ``leak·u + scale·x`` is not turned into a fused
multiply-add, which would round differently and could flip a spike.

Dtypes. float32 and float64 tensors compute in their own precision. float16 and bfloat16
tensors (mixed precision) are loaded in their dtype and computed in float32 registers,
exactly as float32 tensors holding the same values; spikes (exactly 0 or 1), the final
state and the gradients are stored in the input's dtype, rounded to nearest even (for
bfloat16 by bit arithmetic in :func:`_rounded`, because Triton's interpreter truncates).
The saved potentials stay float32 (:data:`SAVED_H_DTYPE`): 4 bytes per element, against 2
if rounded to the input's dtype, but backward rebuilds the spikes, the surrogate's window
and the reset from ``h``, and a rounded ``h`` moves them. ``bench/half_potentials.py``
measures the input gradient's error against the float32 reference on the same inputs
(``[8, 64, 512]``, every surrogate, relative to the largest gradient): with float32
potentials it is exactly the one rounding of the result (float16: 2.0-3.0e-4; bfloat16:
1.6-2.7e-3); with potentials rounded to the input's dtype it is 15-35% (float16) and
14-48% (bfloat16), because a rebuilt spike that differs from the forward pass's changes that
step's gradient by ``du`` and the error travels back through time; rounding so as to keep
every spike still leaves 8.5% (Dspike) and 35% (rectangle) in float16, whose window edges
move instead.

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
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: the dtype of the saved potentials for each half-precision input dtype (see the module docstring)
SAVED_H_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
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
    def _rounded(v, ptr):
        """``v`` (float32 or float64) as the element type of ``ptr``, rounded to nearest even. For
        bfloat16 the rounding is done on the bits: Triton's interpreter truncates where the GPU
        rounds, and this way both agree (the final conversion is then exact)."""
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
            v = tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
        return v.to(ptr.dtype.element_ty)

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
        cdt = c_ptr.dtype.element_ty  # the compute dtype: float32 for half-precision inputs
        leak, scale = tl.load(c_ptr), tl.load(c_ptr + 1)
        threshold, v_reset, v_init = tl.load(c_ptr + 2), tl.load(c_ptr + 3), tl.load(c_ptr + 4)
        if HAS_V0:
            u = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(cdt)
        else:
            u = tl.zeros([BLOCK], dtype=cdt) + v_init
        x_ptr += offs  # pointers advance by N per step: no t·N product to overflow
        s_ptr += offs
        h_ptr += offs
        for _ in range(T):
            x = tl.load(x_ptr, mask=mask, other=0.0).to(cdt)
            h = leak * u + scale * x
            s = tl.where(h - threshold >= 0, 1.0, 0.0).to(cdt)
            tl.store(s_ptr, s.to(s_ptr.dtype.element_ty), mask=mask)  # exactly 0 or 1
            if SAVE_H:
                tl.store(h_ptr, _rounded(h, h_ptr), mask=mask)
            u = _reset(h, s, threshold, v_reset, HARD)
            x_ptr += N
            s_ptr += N
            h_ptr += N
        tl.store(v_final_ptr + offs, _rounded(u, v_final_ptr), mask=mask)

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
        cdt = c_ptr.dtype.element_ty
        zero = tl.zeros([BLOCK], dtype=cdt)
        if HAS_V0:
            u0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(cdt)
        else:
            u0 = zero + v_init
        if HAS_GV:
            du = tl.load(gv_final_ptr + offs, mask=mask, other=0.0).to(cdt)
        else:
            du = zero
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        h_ptr += last + offs  # start at t = T-1 (last = (T-1)·N) and step back by N
        gs_ptr += last + offs
        g_ptr += last + offs
        gx_ptr += last + offs
        for i in range(T):
            t = T - 1 - i
            h = tl.load(h_ptr, mask=mask, other=0.0).to(cdt)
            xm = h - threshold
            s = tl.where(xm >= 0, 1.0, 0.0).to(h.dtype)
            if KIND == 0:
                g = tl.load(g_ptr, mask=mask, other=0.0).to(cdt)
            else:
                g = _surrogate(xm, p0, p1, p2, p3, KIND)
            gs = tl.load(gs_ptr, mask=mask, other=0.0).to(cdt)
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
            tl.store(gx_ptr, _rounded(scale * dh, gx_ptr), mask=mask)
            if WANT_LEAK:
                has_prev = (offs * 0 + t) > 0  # t > 0 as a tensor
                hp = tl.load(h_ptr - N, mask=mask & has_prev, other=0.0).to(cdt)
                sp = tl.where(hp - threshold >= 0, 1.0, 0.0).to(h.dtype)
                u_prev = tl.where(has_prev, _reset(hp, sp, threshold, v_reset, HARD), u0)
                acc += tl.where(mask, dh.to(tl.float64) * u_prev.to(tl.float64), 0.0)
            du = leak * dh
            h_ptr -= N
            gs_ptr -= N
            g_ptr -= N
            gx_ptr -= N
        if WANT_V0:
            tl.store(gv0_ptr + offs, _rounded(du, gv0_ptr), mask=mask)
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for half-precision tensors, the tensor's own otherwise."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def saved_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the potentials ``h`` kept for backward (and returned for monitoring)."""
    return SAVED_H_DTYPE.get(dtype, dtype)


class TritonOps:
    """:class:`spikegrad.fused.KernelOps` on Triton; saves the potentials ``h`` ``[T, N]``."""

    def forward(self, x, v0, neuron, hard, save=True, want_h=False):
        T, N = x.shape
        spikes, v_final = torch.empty_like(x), x.new_empty(N)
        write_h = save or want_h
        hdt = saved_dtype(x.dtype)
        h = x.new_empty((T, N), dtype=hdt) if write_h else _dummy(x.device, hdt)
        consts = device_constants(neuron, compute_dtype(x.dtype), x.device)
        grid = (triton.cdiv(N, BLOCK),)
        _forward_kernel[grid](x, v0 if v0 is not None else _dummy(x.device, x.dtype), spikes, v_final, h,
                              consts, T, N, HAS_V0=v0 is not None, HARD=hard, SAVE_H=write_h, BLOCK=BLOCK,
                              **_launch_options())
        return spikes, v_final, ((h,) if save else ()), (h if want_h else None)

    def backward(self, saved, v0, grad_s, grad_v_final, neuron, params, surrogate, want_v0, want_leak):
        (h,) = saved
        T, N = h.shape
        dtype = grad_s.dtype  # the input's dtype
        cdt = compute_dtype(dtype)
        kind, constants = kernel_formula(surrogate)
        g = surrogate.derivative(h.to(cdt) - params.threshold).contiguous() if kind == GIVEN else None
        dummy = _dummy(h.device, dtype)
        grad_x = h.new_empty((T, N), dtype=dtype)
        grad_v0 = h.new_empty(N, dtype=dtype) if want_v0 else dummy
        programs = triton.cdiv(N, BLOCK)
        partials = torch.zeros(programs, dtype=torch.float64, device=h.device) if want_leak else \
            _dummy(h.device, torch.float64)
        consts = device_constants((*neuron, *constants), cdt, h.device)
        _backward_kernel[(programs,)](
            h, v0 if v0 is not None else dummy, grad_s, grad_v_final if grad_v_final is not None else dummy,
            g if g is not None else dummy, grad_x, grad_v0, partials, consts, T, N, (T - 1) * N,
            KIND=kind, HAS_V0=v0 is not None, HAS_GV=grad_v_final is not None,
            HARD=params.reset == "hard", DETACH=params.detach_reset, WANT_V0=want_v0, WANT_LEAK=want_leak,
            BLOCK=BLOCK, **_launch_options(),
        )
        return grad_x, (grad_v0 if want_v0 else None), (partials.sum() if want_leak else None)


assert set(KINDS.values()) == {1, 2, 3, 4, 5, 6}  # the branches of _surrogate above
