"""Layers for time-major networks: fold time into the batch, encoders, readout.

Stateless layers (convolution, batch norm, pooling, linear, dropout) treat every time step
alike, so :class:`TimeDistributed` runs them once on ``[T·B, ...]`` instead of ``T`` times
on ``[B, ...]``. Batch norm inside it normalises over the merged ``T·B`` axis (tdBN-style
statistics, as in the Dspike and shortcut papers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikegrad.errors import UserError, check_time_major

__all__ = ["DirectEncoder", "PoissonEncoder", "TimeDistributed", "mean_over_time"]


class TimeDistributed(nn.Module):
    """Apply a stateless ``module`` to every time step at once.

    ``[T, B, ...] -> module([T·B, ...]) -> [T, B, ...]``. The wrapped module is reachable as
    ``.module``; its state-dict keys carry the ``module.`` prefix.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, f"input of {type(self.module).__name__}")
        T, B = x.shape[:2]
        y = self.module(x.flatten(0, 1))  # (T·B, ...)
        return y.unflatten(0, (T, B))  # (T, B, ...)

    def extra_repr(self) -> str:
        return "time folded into batch"


class DirectEncoder(nn.Module):
    """Direct (analog) encoding: repeat a static input ``[B, ...]`` over ``T`` steps.

    The first layer sees the analog values at every step; the output is ``[T, B, ...]``.
    """

    def __init__(self, T: int) -> None:
        super().__init__()
        if int(T) <= 0:
            raise UserError(f"the number of time steps T must be positive, got {T}")
        self.T = int(T)

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(0).repeat(self.T, *([1] * x.dim()))  # (T, B, ...)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class PoissonEncoder(DirectEncoder):
    """Poisson rate encoding: at each step, spike with probability ``clamp(x, 0, 1)``.

    Inputs are expected in ``[0, 1]`` (pixel intensities). Randomness follows the global
    torch generator, so seeded runs are reproducible.
    """

    def forward(self, x: Tensor) -> Tensor:
        p = x.clamp(0.0, 1.0).unsqueeze(0).expand(self.T, *x.shape)  # (T, B, ...)
        return torch.bernoulli(p)


def mean_over_time(outputs: Tensor) -> Tensor:
    """Readout: per-time-step logits ``[T, B, classes]`` averaged to ``[B, classes]``."""
    check_time_major(outputs, "model output", min_dims=3)
    return outputs.mean(0)
