"""Lean activation memory: layers that keep for backward only what it needs, exactly.

In a spiking network most saved activations are the inputs of the layers after a neuron,
which are spikes: 0.0 or 1.0. PyTorch's convolution and linear layers keep them as float32
(32 bits per spike). The layers here keep them as bit masks (1 bit per spike) and rebuild
the float tensor when the weight gradient needs it, which gives the same gradients
bit for bit. Whether an input is binary is checked at run time (one pass that stops at the
first value other than +0.0 or 1.0), so a non-binary input (the analog image at the first
layer, a residual sum) is kept as it is, still exactly.

Pooling keeps nothing: the gradient of a 2×2 average pool, or of a global one, needs only
the input's shape, but PyTorch's ``avg_pool2d`` keeps the whole input.

:func:`make_lean` swaps these layers into a model in place (same parameters, same
``state_dict`` keys). The ``model.lean_memory`` config option does it for a run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikegrad.fused import cpu

__all__ = ["LeanAvgPool2d", "LeanConv2d", "LeanGlobalAvgPool2d", "LeanLinear", "make_lean", "pack_binary",
           "unpack_binary"]


def pack_binary(x: Tensor) -> Tensor | None:
    """``x`` as one bit per element (``uint8 [ceil(n/8)]``) if it holds only +0.0 and 1.0, else None."""
    if x.device.type == "cpu" and x.dtype in cpu.DTYPE_CODES and cpu.library() is not None:
        return cpu.pack_bits(x)
    flat = x.reshape(-1)
    if not bool(((flat == 1) | ((flat == 0) & ~torch.signbit(flat))).all()):
        return None
    padded = F.pad(flat.to(torch.uint8), (0, -flat.numel() % 8)).view(-1, 8)  # (n/8, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=x.device)
    return (padded * weights).sum(1, dtype=torch.uint8)


def unpack_binary(bits: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """The tensor :func:`pack_binary` packed, as 0.0/1.0 of ``dtype``."""
    if bits.device.type == "cpu" and dtype in cpu.DTYPE_CODES and cpu.library() is not None:
        return cpu.unpack_bits(bits, shape, dtype)
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(1) >> shifts) & 1).view(-1)  # (n rounded up to 8,)
    return flat[: shape.numel()].to(dtype).view(shape)


def _save_input(ctx, x: Tensor, *others: Tensor | None) -> None:
    bits = pack_binary(x)
    ctx.input_shape, ctx.input_dtype, ctx.packed = x.shape, x.dtype, bits is not None
    ctx.save_for_backward(bits if bits is not None else x, *others)


def _saved_input(ctx) -> tuple[Tensor, ...]:
    first, *others = ctx.saved_tensors
    x = unpack_binary(first, ctx.input_shape, ctx.input_dtype) if ctx.packed else first
    return (x, *others)


class _Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        _save_input(ctx, x, weight)
        ctx.conv = (stride, padding, dilation, groups, None if bias is None else bias.shape)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = _saved_input(ctx)
        stride, padding, dilation, groups, bias_shape = ctx.conv
        wanted = ctx.needs_input_grad
        mask = [wanted[0], wanted[1], bias_shape is not None and wanted[2]]
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, x, weight, bias_shape, stride, padding, dilation, False, [0, 0], groups, mask)
        return dx, dw, db, None, None, None, None


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        _save_input(ctx, x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = _saved_input(ctx)
        dx = grad @ weight if ctx.needs_input_grad[0] else None
        grad2 = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        dw = grad2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        db = grad2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class _AvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, args):  # type: ignore[override]
        ctx.shape, ctx.dtype, ctx.args = x.shape, x.dtype, args
        return F.avg_pool2d(x, *args)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        shape_only = grad.new_empty(()).expand(ctx.shape)  # the kernel reads its sizes, not its data
        return torch.ops.aten.avg_pool2d_backward(grad, shape_only, *ctx.args), None


class _GlobalAvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.shape = x.shape
        return x.mean((-2, -1), keepdim=True)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w = ctx.shape[-2:]
        return (grad / (h * w)).expand(ctx.shape)


def _lean_ok(x: Tensor) -> bool:
    return torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)


class LeanConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` that keeps a binary input as a bit mask for backward."""

    def forward(self, x: Tensor) -> Tensor:
        if not _lean_ok(x) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return _Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups)


class LeanLinear(nn.Linear):
    """:class:`torch.nn.Linear` that keeps a binary input as a bit mask for backward."""

    def forward(self, x: Tensor) -> Tensor:
        if not _lean_ok(x):
            return super().forward(x)
        return _LinearFunction.apply(x, self.weight, self.bias)


class LeanAvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` that keeps only its input's shape for backward."""

    def forward(self, x: Tensor) -> Tensor:
        if not _lean_ok(x) or x.dim() != 4:
            return super().forward(x)
        args = (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                self.divisor_override)
        return _AvgPool2dFunction.apply(x, tuple(_pair(a) if i < 3 else a for i, a in enumerate(args)))


class LeanGlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``AdaptiveAvgPool2d(1)`` that keeps only its input's shape for backward."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: Tensor) -> Tensor:
        if not _lean_ok(x):
            return super().forward(x)
        return _GlobalAvgPool2dFunction.apply(x)


def _pair(value) -> list[int]:
    if value is None:
        return []
    return [value, value] if isinstance(value, int) else list(value)


_LEAN_TWINS: dict[type, type] = {nn.Conv2d: LeanConv2d, nn.Linear: LeanLinear, nn.AvgPool2d: LeanAvgPool2d}


def make_lean(model: nn.Module) -> nn.Module:
    """Turn, in place, every ``Conv2d``, ``Linear``, ``AvgPool2d`` and global
    ``AdaptiveAvgPool2d`` of ``model`` into its lean twin; returns ``model``.

    Only the class changes (the twins add no state), so parameters, hooks and
    ``state_dict`` keys stay; outputs and gradients are unchanged bit for bit.
    """
    for module in model.modules():
        kind = type(module)
        if kind in _LEAN_TWINS:
            module.__class__ = _LEAN_TWINS[kind]
        elif kind is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1), [1, 1]):
            module.__class__ = LeanGlobalAvgPool2d
    return model
