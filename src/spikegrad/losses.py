"""Losses on per-time-step logits ``[T, B, classes]``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from spikegrad.layers import mean_over_time

if TYPE_CHECKING:
    from spikegrad.config import TrainConfig


def mean_logit_cross_entropy(outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the time-averaged logits: ``CE(mean_t O_t, y)``."""
    return F.cross_entropy(mean_over_time(outputs), targets, label_smoothing=label_smoothing)


def tet_loss(
    outputs: Tensor, targets: Tensor, lam: float = 0.05, phi: float = 1.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Temporal efficient training (Deng et al., ICLR 2022).

    ``L = (1 - λ)·(1/T)·Σ_t CE(O_t, y) + λ·(1/T)·Σ_t MSE(O_t, φ)``; inference still
    averages the logits over time.
    """
    T = outputs.shape[0]
    flat = outputs.flatten(0, 1)  # (T·B, classes)
    ce = F.cross_entropy(flat, targets.repeat(T), label_smoothing=label_smoothing)  # mean over t, b
    mse = (outputs - phi).pow(2).mean()  # mean over t, b, classes
    return (1.0 - lam) * ce + lam * mse


#: the names ``train.loss`` accepts
TRAINING_LOSSES = ("ce", "tet")


def training_loss(train: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``train.loss`` names (``ce`` or ``tet``), with its settings bound."""
    if train.loss == "tet":
        return partial(tet_loss, lam=train.tet_lambda, phi=train.tet_phi,
                       label_smoothing=train.label_smoothing)
    return partial(mean_logit_cross_entropy, label_smoothing=train.label_smoothing)
