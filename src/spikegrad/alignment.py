"""Gradient alignment: how well a surrogate gradient points along the finite difference gradient.

The alignment of a surrogate with the true loss surface is the cosine similarity

    cos(ĝ, g) = ĝ·g / (|ĝ|·|g|)

between the finite difference gradient ``ĝ`` (:mod:`spikegrad.fdg`) and the surrogate
gradient ``g`` of the same weights, loss, mini-batch and batch-norm mode (BPTT; batch norm
with its running statistics, ``bn_mode="eval"``, or with the batch's own statistics as in a
training step, ``bn_mode="train"``; see :mod:`spikegrad.fdg`). It is 0 when either vector
is zero.

The forward pass of a spiking network does not depend on the surrogate, only its backward
pass does. :func:`surrogate_gradients` therefore runs the forward pass once and one backward
pass per candidate: every neuron's surrogate is wrapped in a :class:`SurrogateSwitch` whose
target is swapped between backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from spikegrad import surrogates
from spikegrad.errors import UserError
from spikegrad.fdg import ForwardFn, LossFn, probe_mode
from spikegrad.losses import mean_logit_cross_entropy
from spikegrad.neurons import SpikingNeuron

__all__ = [
    "Assignment",
    "SurrogateSwitch",
    "SweepPoint",
    "alignment_sweep",
    "cosine_similarity",
    "default_sweep",
    "probe_batch",
    "surrogate_gradients",
]

#: surrogate per neuron for one backward pass; neurons left out keep their own surrogate
Assignment = Mapping[SpikingNeuron, surrogates.Surrogate]


def probe_batch(
    model: nn.Module, dataset: Dataset, size: int, seed: int, device: torch.device | str = "cpu",
    collate: Callable[[list], Any] = default_collate,
) -> tuple[Tensor, Tensor]:
    """A fixed mini-batch of ``size`` samples drawn with ``seed``, on ``device``, unaugmented.

    ``collate`` batches the samples (pass the training loader's ``collate_fn``).

    A spikegrad network's encoder runs here once, under ``seed``, and the batch comes back
    time-major ``[T, B, ...]``: with a stochastic (Poisson) encoder every ±ε pass and every
    surrogate then sees the same spikes. The global random state is left untouched.
    """
    if len(dataset) == 0:
        raise UserError("cannot draw a probe batch from an empty dataset")
    device = torch.device(device)
    picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    inputs, targets = collate([dataset[int(i)] for i in picked])
    inputs, targets = inputs.to(device), targets.to(device)
    encode = getattr(model, "encode", None)
    if encode is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            inputs = encode(inputs)  # (T, B, ...)
    return inputs, targets


def cosine_similarity(a: Tensor, b: Tensor) -> float:
    """``a·b / (|a|·|b|)`` of two flat vectors in float64; 0 if either is zero, NaN if either
    has a non-finite entry."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else 0.0


class SurrogateSwitch(surrogates.Surrogate):
    """Delegates to ``target``, which may be changed between forward and backward passes.

    The spike function keeps a reference to the surrogate it was called with and asks it
    for the derivative during the backward pass, so swapping ``target`` after the forward
    pass changes the gradient and nothing else.
    """

    def __init__(self, target: surrogates.Surrogate) -> None:
        super().__init__()
        self.target = target

    def primitive(self, x: Tensor) -> Tensor:
        return self.target.primitive(x)

    def derivative(self, x: Tensor) -> Tensor:
        return self.target.derivative(x)

    def params(self) -> dict[str, float]:
        return self.target.params()


def surrogate_gradients(
    model: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    assignments: Sequence[Assignment],
    indices: Tensor | None = None,
    loss_fn: LossFn = mean_logit_cross_entropy,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
) -> list[Tensor]:
    """BPTT gradient of ``loss_fn`` w.r.t. ``layer.weight.flatten()[indices]``, once per assignment.

    One forward pass (eval mode but for batch norm, ``bn_mode`` as in the FDG; ``forward``
    and ``loss_fn`` as in :func:`spikegrad.fdg.finite_difference_gradient`), then one
    backward pass per assignment with its surrogates in place. The model's own surrogates
    are restored afterwards; batch norm's running statistics are not touched.
    """
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    originals = [n.surrogate for n in neurons]
    switches = [SurrogateSwitch(s) for s in originals]
    grads = []
    try:
        for neuron, switch in zip(neurons, switches, strict=True):
            neuron.surrogate = switch
        with probe_mode(model, bn_mode), torch.enable_grad():
            loss = loss_fn(model(inputs) if forward is None else forward(model, inputs), targets)
            for k, assignment in enumerate(assignments):
                for neuron, switch, own in zip(neurons, switches, originals, strict=True):
                    switch.target = assignment.get(neuron, own)
                (grad,) = torch.autograd.grad(loss, layer.weight,
                                              retain_graph=k + 1 < len(assignments))
                flat = grad.flatten()
                grads.append(flat if indices is None else flat[indices.to(flat.device)])
    finally:
        for neuron, own in zip(neurons, originals, strict=True):
            neuron.surrogate = own
    return grads


@dataclass(frozen=True)
class SweepPoint:
    """One row of the alignment analysis."""

    surrogate: str
    sharpness_name: str
    sharpness: float
    similarity: float


def default_sweep(default: float, points: int = 9, factor: float = 8.0) -> list[float]:
    """``points`` sharpness values spaced geometrically from ``default/factor`` to ``default·factor``."""
    if points == 1:
        return [default]
    logs = [(-1.0 + 2.0 * j / (points - 1)) * math.log(factor) for j in range(points)]
    return [default * math.exp(v) for v in logs]


def alignment_sweep(
    model: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    fdg: Tensor,
    indices: Tensor,
    names: Sequence[str] | None = None,
    points: int = 9,
    factor: float = 8.0,
    loss_fn: LossFn = mean_logit_cross_entropy,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
) -> list[SweepPoint]:
    """Cosine similarity with ``fdg`` of every surrogate in ``names`` over a sharpness sweep.

    Each surrogate is swept around its registry default; every neuron of the model uses the
    swept surrogate. A surrogate of the model's own type keeps the model's other parameters
    (e.g. the Dspike window). ``bn_mode`` and ``forward`` must be those of ``fdg``.
    """
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    own = {type(n.surrogate): n.surrogate for n in neurons}
    rows: list[tuple[str, str, float, surrogates.Surrogate]] = []
    for name in names if names is not None else surrogates.available():
        base = surrogates.create(name)
        base = own.get(type(base), base)
        for value in default_sweep(surrogates.create(name).sharpness, points, factor):
            rows.append((name, base.sharpness_name, value, base.with_sharpness(value)))
    grads = surrogate_gradients(
        model, layer, inputs, targets, [dict.fromkeys(neurons, s) for *_, s in rows], indices, loss_fn,
        bn_mode, forward,
    )
    return [SweepPoint(name, sharp, value, cosine_similarity(fdg, g))
            for (name, sharp, value, _), g in zip(rows, grads, strict=True)]
