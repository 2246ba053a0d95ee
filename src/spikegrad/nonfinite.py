"""The first non-finite training step, recorded on the device so a CUDA step need not wait.

``train.nonfinite: stop`` ends training at the first step whose loss or gradient norm is NaN
or infinite. Reading that flag on the host after every step makes the CPU wait for the GPU
at every step. On CUDA (without fp16 gradient scaling), :class:`FiniteGuard` instead keeps,
on the device, the iteration of the first such step, its loss and its gradient norm; the
trainer reads them every :data:`CHECK_EVERY` steps, before writing any checkpoint and at the
end of every epoch. The run then stops with the same error, naming the same step, at most
``CHECK_EVERY - 1`` steps later; no checkpoint, metrics line or evaluation comes after a bad
step, so ``last.pt`` is the last good state (the weights in memory may have taken the bad
updates). ``skip`` must decide before the update, so it keeps one host synchronisation per
step, as fp16 gradient scaling does anyway (its scaler reads its overflow flag every step);
on the CPU there is nothing to wait for and the check stays per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHECK_EVERY", "FiniteGuard"]

#: steps between two reads of the device-side flag on CUDA
CHECK_EVERY = 32


class FiniteGuard:
    """The first step with a non-finite loss or gradient norm, kept on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.norm = torch.zeros((), dtype=torch.float32, device=device)
        self.pending = False  # anything recorded since the last read

    def record(self, iteration: int, loss: Tensor, grad_norm: Tensor | None) -> None:
        """Note step ``iteration``'s loss and gradient norm (device operations only)."""
        device = self.first.device
        loss = loss.detach().float().reshape(()).to(device, non_blocking=True)
        ok = torch.isfinite(loss)
        norm = torch.zeros_like(loss)
        if grad_norm is not None:
            norm = grad_norm.detach().float().reshape(()).to(device, non_blocking=True)
            ok = ok & torch.isfinite(norm)
        new = ~ok & (self.first < 0)
        self.first = torch.where(new, iteration, self.first)
        self.loss = torch.where(new, loss, self.loss)
        self.norm = torch.where(new, norm, self.norm)
        self.pending = True

    def first_bad(self) -> tuple[int, float, float] | None:
        """``(iteration, loss, gradient norm)`` of the first non-finite step recorded, or None;
        one host synchronisation when something was recorded since the last call."""
        if not self.pending:
            return None
        self.pending = False
        first, loss, norm = torch.stack([self.first.double(), self.loss.double(),
                                         self.norm.double()]).tolist()
        return None if first < 0 else (int(first), loss, norm)
