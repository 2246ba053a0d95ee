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
``P`` copies of the batch are stacked along the batch axis; a forward hook adds copy ``p``'s
perturbation to the layer's output, and the rest of the network runs once on the stacked
batch. Everything is in eval mode (batch norm uses its running statistics, so each sample is
normalised on its own and stacking changes nothing), and the copies are cut into chunks of at
most ``max_stacked`` samples (but at least one ± pair) to bound memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from spikegrad.errors import UserError, unknown_name_error
from spikegrad.layers import PoissonEncoder
from spikegrad.losses import mean_logit_cross_entropy
from spikegrad.modes import eval_mode

__all__ = [
    "LossFn",
    "basis_response",
    "eval_mode",
    "finite_difference_gradient",
    "finite_difference_gradient_loop",
    "resolve_layer",
    "sample_weight_indices",
    "weight_layers",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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


def _per_copy_losses(outputs: Tensor, targets: Tensor, copies: int, loss_fn: LossFn) -> Tensor:
    """Loss of each of ``copies`` stacked batches; ``outputs`` is ``[T, copies·B, classes]``."""
    if outputs.dim() != 3:
        raise UserError(f"FDG needs a model returning [T, B, classes], got shape {tuple(outputs.shape)}")
    chunks = outputs.chunk(copies, dim=1)  # copies × (T, B, classes)
    return torch.stack([loss_fn(chunk, targets) for chunk in chunks])


class _PerturbationHook:
    """Forward hook adding ``signs[p]·ε·layer(x; e_{indices[p]})`` to stacked copy ``p``."""

    def __init__(self, indices: Tensor, signs: Tensor, epsilon: float, batch: int) -> None:
        self.indices, self.signs, self.epsilon, self.batch = indices, signs, epsilon, batch
        self.calls = 0

    def __call__(self, layer: nn.Module, args: tuple, out: Tensor) -> Tensor:
        self.calls += 1
        copies = len(self.indices)
        n = out.shape[0]
        if n % (copies * self.batch):
            raise UserError(
                f"FDG: the layer's output has {n} rows, not a multiple of the stacked batch "
                f"({copies}×{self.batch}); the layer must see [time·batch, ...] or [batch, ...]"
            )
        lead = n // (copies * self.batch)  # time steps folded into the batch (1 if none)
        x0 = args[0].unflatten(0, (lead, copies, self.batch))[:, 0].flatten(0, 1)  # (lead·B, C_in, ...)
        response, channels = basis_response(layer, x0, self.indices)  # (lead·B, P, ...)
        response = response.unflatten(0, (lead, self.batch)).movedim(2, 0)  # (P, lead, B, ...)
        scale = (self.signs * self.epsilon).to(response.dtype)
        shaped = out.unflatten(0, (lead, copies, self.batch)).clone()  # (lead, P, B, C_out, ...)
        copy = torch.arange(copies, device=out.device)
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
    max_stacked: int = 4096,
) -> Tensor:
    """Central FDG ``[K]`` of ``loss_fn`` with respect to ``layer.weight.flatten()[indices]``.

    Args:
        model: maps a batch to per-time-step outputs ``[T, B, classes]``; run in eval mode.
        layer: a convolution (``groups=1``) or linear layer of ``model``, called once per
            forward pass on an input whose first axis is ``batch`` or ``time·batch``.
        inputs, targets: the fixed mini-batch. For a stochastic encoder pass the encoded
            time-major batch (``model.encode(x)``) so every perturbation sees the same input.
        epsilon: the step, in the units of the weights.
        indices: flat weight indices to probe (default: all).
        loss_fn: ``loss_fn(outputs [T, B, classes], targets) -> scalar``.
        max_stacked: samples per forward call (copies × batch), at least one ± pair (2 × batch).
    """
    _check_layer(layer)
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
    copies_per_call = max(2, (max_stacked // max(1, batch)) // 2 * 2)  # even: ± pairs together
    perturbed = indices.repeat_interleave(2)  # (2K,): i, i, j, j, ...
    signs = torch.tensor([1.0, -1.0], device=indices.device).repeat(len(indices))  # (2K,)
    losses = []
    with eval_mode(model):
        for start in range(0, len(perturbed), copies_per_call):
            idx = perturbed[start:start + copies_per_call]
            hook = _PerturbationHook(idx, signs[start:start + copies_per_call], epsilon, batch)
            handle = layer.register_forward_hook(hook)
            try:
                tiles = [len(idx) if d == batch_dim else 1 for d in range(inputs.dim())]
                stacked = inputs.repeat(*tiles)  # copy p at [p·B, (p+1)·B) of the batch axis
                outputs = model(stacked)
            finally:
                handle.remove()
            if hook.calls != 1:
                raise UserError(f"FDG: the probed layer ran {hook.calls} times in one forward pass; "
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
) -> Tensor:
    """Reference FDG: perturb each weight in place, two plain forward passes per weight.

    Slow (``2K`` forward passes); :func:`finite_difference_gradient` must agree with it.
    """
    flat = layer.weight.view(-1)
    if indices is None:
        indices = range(flat.numel())
    out = []
    with eval_mode(model):
        for i in [int(i) for i in indices]:
            original = flat[i].clone()
            values = []
            for sign in (1.0, -1.0):
                flat[i] = original + sign * epsilon
                values.append(loss_fn(model(inputs), targets))
            flat[i] = original
            out.append((values[0] - values[1]) / (2.0 * epsilon))
    return torch.stack(out)
