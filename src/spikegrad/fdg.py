"""Finite difference gradients (FDG) of the loss with respect to one layer's weights.

For weight ``w_i`` of a convolution or linear layer and a step ``ε`` (in the units of the
weights), the central difference is

    ĝ_i = (L(w + ε·e_i) - L(w - ε·e_i)) / (2ε)

with ``L`` the loss of the true forward pass on one fixed mini-batch. In a spiking network
the forward pass is exactly the Heaviside step (no surrogate is involved), so ``L`` is
piecewise constant in ``w`` and ``ε`` must be large enough to flip some spikes.

Every ±ε perturbation is evaluated in one stacked forward pass. The layer is linear in its
weights, so with ``e_i`` the basis weight (1 at index ``i``, 0 elsewhere)

    layer(x; w ± ε·e_i) = layer(x; w) ± ε·layer(x; e_i),

and ``layer(x; e_i)`` is nonzero in one output channel only (the output channel of ``w_i``).
``P`` copies of the batch are stacked along the batch axis; the layer runs once, on one
copy's input (the copies differ from the layer on), its output is repeated into the copies
with copy ``p``'s perturbation added, and the rest of the network runs once on the stacked
batch. The copies are cut into chunks of at most ``max_stacked`` samples (but at least one ±
pair) to bound memory; on a CPU the smallest chunks are the fastest.

Batch norm (``bn_mode``); every other module is in eval mode (dropout off):

- ``eval``: batch norm uses its running statistics, so each sample is normalised on its own
  and stacking changes nothing.
- ``train``: batch norm normalises with the statistics of the batch it is given, as in a
  training step: in the perturbed pass at ``w ± ε·e_i`` the mean and variance of each
  channel are those of the probe batch under ``w ± ε·e_i``, and the gradient flows through
  them. Each stacked copy is normalised with its own statistics (computed on a view that
  separates the copies), so the result equals ``2K`` separate training-mode passes. The
  running statistics are neither used nor updated.

The loss is ``loss_fn(forward(model, inputs), targets)``; ``forward`` (default
``model(inputs)``) may return one tensor ``[T, B, classes]`` or a tuple of them (e.g. a
network's head and auxiliary heads), and ``loss_fn`` receives the same structure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spikegrad.errors import UserError, unknown_name_error
from spikegrad.layers import PoissonEncoder
from spikegrad.losses import mean_logit_cross_entropy
from spikegrad.modes import eval_mode

__all__ = [
    "BN_MODES",
    "GPU_MAX_STACKED",
    "ForwardFn",
    "LossFn",
    "basis_response",
    "check_bn_mode",
    "eval_mode",
    "finite_difference_gradient",
    "finite_difference_gradient_loop",
    "probe_mode",
    "resolve_layer",
    "sample_weight_indices",
    "weight_layers",
]

#: ``(outputs, targets) -> loss``; ``outputs`` as the forward function returns them
LossFn = Callable[[Any, Tensor], Tensor]
#: ``(model, inputs) -> outputs``: one tensor ``[T, B, classes]`` or a tuple of such tensors
ForwardFn = Callable[[nn.Module, Tensor], Any]
#: how batch norm normalises in the probes (see the module docstring)
BN_MODES = ("eval", "train")
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: samples per stacked forward call off the CPU when ``max_stacked`` is None
GPU_MAX_STACKED = 512


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every convolution and linear layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer called ``name`` (default: the first weight layer, i.e. the input layer)."""
    layers = weight_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__} has no convolution or linear layer to probe")
    if name is None:
        return layers[0]
    found = dict(layers)
    if name not in found:
        raise unknown_name_error("weight layer", name, found)
    return name, found[name]


def check_bn_mode(bn_mode: str) -> str:
    """``bn_mode`` if it is one of :data:`BN_MODES`, else a :class:`UserError`."""
    if bn_mode not in BN_MODES:
        raise UserError(f"the batch-norm mode of the gradient probes must be one of {list(BN_MODES)}, "
                        f"got {bn_mode!r}")
    return bn_mode


def _batch_statistics_forward(bn: nn.modules.batchnorm._BatchNorm, groups: int, batch: int | None):
    """``bn``'s training-mode normalisation, each of ``groups`` stacked copies with its own
    statistics, running statistics untouched.

    The input's first axis is ``lead·groups·batch`` (``lead``: time steps folded into the
    batch, or 1). Viewed as ``(lead, P, B, C, rest)``, copy ``p``'s channel ``c`` has the
    mean ``μ`` and biased variance ``σ²`` over its ``lead·B·rest`` values (two passes:
    ``μ``, then the mean of ``(x - μ)²``), and

        y = (x - μ)·γ / sqrt(σ² + eps) + β

    computed on that view, without copying ``x`` into another layout.
    """

    def forward(x: Tensor) -> Tensor:
        if groups == 1:
            return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        n, channels = x.shape[0], x.shape[1]
        if batch is None or n % (groups * batch):
            raise UserError(f"FDG with batch norm in train mode: a batch-norm input has {n} rows, not a "
                            f"multiple of the stacked batch ({groups}×{batch})")
        v = x.reshape(n // (groups * batch), groups, batch, channels, -1)  # (lead, P, B, C, rest)
        if v.shape[0] * batch * v.shape[-1] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{[batch, *x.shape[1:]]}")
        dims = (0, 2, 4)
        out = v - v.mean(dim=dims, keepdim=True)  # x - μ, per copy and channel
        scale = torch.rsqrt(out.square().mean(dim=dims, keepdim=True) + bn.eps)  # (1, P, 1, C, 1)
        if bn.weight is not None:
            scale = scale * bn.weight.view(channels, 1)
        shift = x.new_zeros(()) if bn.bias is None else bn.bias.view(channels, 1)
        if torch.is_grad_enabled():  # autograd needs x - μ as it is
            return torch.addcmul(shift, out, scale).view(x.shape)
        return torch.addcmul(shift, out, scale, out=out).view(x.shape)  # in place: no new tensor

    return forward


@contextlib.contextmanager
def probe_mode(model: nn.Module, bn_mode: str = "eval", groups: int = 1,
               batch: int | None = None) -> Iterator[nn.Module]:
    """Every module in eval mode for the block; with ``bn_mode="train"`` batch norm normalises
    with the batch statistics of each of ``groups`` stacked copies of ``batch`` samples and
    leaves its running statistics alone (see the module docstring). Flags and forwards are
    restored afterwards."""
    check_bn_mode(bn_mode)
    with eval_mode(model), contextlib.ExitStack() as patched:
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    patched.enter_context(_forward_replaced(m, _batch_statistics_forward(m, groups, batch)))
        yield model


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """``module`` runs ``forward`` for the block; its own forward is restored afterwards."""
    own = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def _call(model: nn.Module, inputs: Tensor, forward: ForwardFn | None) -> Any:
    return model(inputs) if forward is None else forward(model, inputs)


def sample_weight_indices(numel: int, k: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Sorted flat indices of ``k`` distinct weights drawn uniformly (all when ``k`` is None or >= numel)."""
    if k is None or k >= numel:
        return torch.arange(numel)
    if k <= 0:
        raise UserError(f"the number of probed weights must be positive, got {k}")
    return torch.randperm(numel, generator=generator)[:k].sort().values


def _check_layer(layer: nn.Module) -> None:
    if not isinstance(layer, WEIGHT_LAYERS):
        raise UserError(f"FDG needs a convolution or linear layer, got {type(layer).__name__}")
    if isinstance(layer, nn.Linear):
        return
    if layer.groups != 1:
        raise UserError(f"FDG supports convolutions with groups=1, got groups={layer.groups}")


def basis_response(layer: nn.Module, x: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """``layer(x; e_i)`` for every flat weight index ``i``, in the output channel it touches.

    ``x`` is the layer's input ``[N, C_in, ...]``. Returns ``(responses [N, K, ...], output
    channel of each index [K])``: ``responses[:, k]`` is channel ``channels[k]`` of
    ``layer(x; e_{indices[k]})`` without bias; every other channel of it is zero.
    """
    _check_layer(layer)
    weight = layer.weight
    indices = indices.to(weight.device)
    channels = indices // weight[0].numel()
    within = indices % weight[0].numel()  # flat index into one output channel's kernel
    if isinstance(layer, nn.Linear):
        return x[..., within], channels  # (N, K): x_c for weight (o, c)
    basis = torch.zeros(len(indices), weight[0].numel(), dtype=x.dtype, device=x.device)
    basis[torch.arange(len(indices), device=x.device), within] = 1.0
    basis = basis.view(len(indices), *weight.shape[1:])  # (K, C_in, *kernel)
    return layer._conv_forward(x, basis, None), channels  # (N, K, *spatial)


def _batch_dim(model: nn.Module, inputs: Tensor) -> int:
    """1 for a time-major batch ``[T, B, ...]`` of a spikegrad network, else 0."""
    dims = getattr(model, "input_dims", None)
    return 1 if dims is not None and inputs.dim() == dims + 2 else 0


def _per_copy_losses(outputs: Any, targets: Tensor, copies: int, loss_fn: LossFn) -> Tensor:
    """Loss of each of ``copies`` stacked batches; ``outputs`` is ``[T, copies·B, classes]``
    or a sequence of such tensors (each is cut the same way; ``loss_fn`` gets a tuple)."""
    heads = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    for head in heads:
        if not isinstance(head, Tensor) or head.dim() != 3:
            shape = tuple(head.shape) if isinstance(head, Tensor) else type(head).__name__
            raise UserError(f"FDG needs a model returning [T, B, classes], got {shape}")
    cut = [head.chunk(copies, dim=1) for head in heads]  # heads × copies × (T, B, classes)
    if isinstance(outputs, Tensor):
        return torch.stack([loss_fn(chunk, targets) for chunk in cut[0]])
    return torch.stack([loss_fn(tuple(c[p] for c in cut), targets) for p in range(copies)])


class _PerturbedForward:
    """The probed layer's forward in a stacked pass: copy ``p`` of its output is
    ``layer(x) + signs[p]·ε·layer(x; e_{indices[p]})``.

    Every copy's input is the same (the copies differ from this layer on), so the layer runs
    once, on copy 0's input, and its output is repeated into the copies.
    """

    def __init__(self, layer: nn.Module, indices: Tensor, signs: Tensor, epsilon: float, batch: int) -> None:
        self.layer, self.indices, self.signs, self.epsilon, self.batch = layer, indices, signs, epsilon, batch
        self.forward = layer.forward  # the layer's own
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        copies = len(self.indices)
        n = x.shape[0]
        if n % (copies * self.batch):
            raise UserError(
                f"FDG: the layer's input has {n} rows, not a multiple of the stacked batch "
                f"({copies}×{self.batch}); the layer must see [time·batch, ...] or [batch, ...]"
            )
        lead = n // (copies * self.batch)  # time steps folded into the batch (1 if none)
        x0 = x.unflatten(0, (lead, copies, self.batch))[:, 0].flatten(0, 1)  # (lead·B, C_in, ...)
        out = self.forward(x0).unflatten(0, (lead, 1, self.batch))  # (lead, 1, B, C_out, ...)
        shaped = out.repeat(1, copies, *[1] * (out.dim() - 2))  # (lead, P, B, C_out, ...)
        response, channels = basis_response(self.layer, x0, self.indices)  # (lead·B, P, ...)
        response = response.unflatten(0, (lead, self.batch)).movedim(2, 0)  # (P, lead, B, ...)
        scale = (self.signs * self.epsilon).to(response.dtype)
        copy = torch.arange(copies, device=x.device)
        shaped[:, copy, :, channels] += scale.view(-1, *[1] * (response.dim() - 1)) * response
        return shaped.flatten(0, 2)


@torch.no_grad()
def finite_difference_gradient(
    model: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    epsilon: float,
    indices: Tensor | None = None,
    loss_fn: LossFn = mean_logit_cross_entropy,
    max_stacked: int | None = 4096,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
) -> Tensor:
    """Central FDG ``[K]`` of ``loss_fn`` with respect to ``layer.weight.flatten()[indices]``.

    Args:
        model: maps a batch to per-time-step outputs ``[T, B, classes]``; run in eval mode
            but for batch norm (``bn_mode``).
        layer: a convolution (``groups=1``) or linear layer of ``model``, called once per
            forward pass on an input whose first axis is ``batch`` or ``time·batch``.
        inputs, targets: the fixed mini-batch. For a stochastic encoder pass the encoded
            time-major batch (``model.encode(x)``) so every perturbation sees the same input.
        epsilon: the step, in the units of the weights.
        indices: flat weight indices to probe (default: all).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, ``outputs`` as ``forward`` returns them.
        max_stacked: samples per forward call (copies × batch), at least one ± pair (2 × batch);
            None: one ± pair per call on a CPU (fastest there: the stacked tensors stay small
            enough for the caches and for the allocator to reuse their memory),
            :data:`GPU_MAX_STACKED` on other devices.
        bn_mode: ``eval`` (running statistics) or ``train`` (each pass's own batch statistics,
            running statistics untouched); see the module docstring.
        forward: ``forward(model, inputs) -> outputs`` (default: ``model(inputs)``).
    """
    _check_layer(layer)
    check_bn_mode(bn_mode)
    if not epsilon > 0:
        raise UserError(f"the FDG step epsilon must be positive, got {epsilon}")
    if indices is None:
        indices = torch.arange(layer.weight.numel())
    indices = indices.to(layer.weight.device)
    batch_dim = _batch_dim(model, inputs)
    if batch_dim == 0 and any(isinstance(m, PoissonEncoder) for m in model.modules()):
        raise UserError("FDG of a model with a stochastic (Poisson) encoder needs an encoded "
                        "batch [T, B, ...] (inputs = model.encode(x)): every stacked copy would "
                        "otherwise draw other input spikes")
    batch = inputs.shape[batch_dim]
    if max_stacked is None:  # on a CPU the smallest calls are fastest (cache, reused memory)
        max_stacked = 2 * batch if inputs.device.type == "cpu" else GPU_MAX_STACKED
    copies_per_call = max(2, (max_stacked // max(1, batch)) // 2 * 2)  # even: ± pairs together
    perturbed = indices.repeat_interleave(2)  # (2K,): i, i, j, j, ...
    signs = torch.tensor([1.0, -1.0], device=indices.device).repeat(len(indices))  # (2K,)
    losses = []
    for start in range(0, len(perturbed), copies_per_call):
        idx = perturbed[start:start + copies_per_call]
        perturb = _PerturbedForward(layer, idx, signs[start:start + copies_per_call], epsilon, batch)
        tiles = [len(idx) if d == batch_dim else 1 for d in range(inputs.dim())]
        stacked = inputs.repeat(*tiles)  # copy p at [p·B, (p+1)·B) of the batch axis
        with probe_mode(model, bn_mode, groups=len(idx), batch=batch), _forward_replaced(layer, perturb):
            outputs = _call(model, stacked, forward)
        if perturb.calls != 1:
            raise UserError(f"FDG: the probed layer ran {perturb.calls} times in one forward pass; "
                            "it must run exactly once")
        losses.append(_per_copy_losses(outputs, targets, len(idx), loss_fn))
    pairs = torch.cat(losses).view(-1, 2)  # (K, 2): L(w + ε e_i), L(w - ε e_i)
    return (pairs[:, 0] - pairs[:, 1]) / (2.0 * epsilon)


@torch.no_grad()
def finite_difference_gradient_loop(
    model: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    epsilon: float,
    indices: Sequence[int] | Tensor | None = None,
    loss_fn: LossFn = mean_logit_cross_entropy,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
) -> Tensor:
    """Reference FDG: perturb each weight in place, two plain forward passes per weight.

    Slow (``2K`` forward passes); :func:`finite_difference_gradient` must agree with it.
    """
    flat = layer.weight.view(-1)
    if indices is None:
        indices = range(flat.numel())
    out = []
    with probe_mode(model, bn_mode):
        for i in [int(i) for i in indices]:
            original = flat[i].clone()
            values = []
            for sign in (1.0, -1.0):
                flat[i] = original + sign * epsilon
                values.append(loss_fn(_call(model, inputs, forward), targets))
            flat[i] = original
            out.append((values[0] - values[1]) / (2.0 * epsilon))
    return torch.stack(out)
