"""Losses on per-time-step outputs ``[T, B, classes]``, and the registry ``train.loss`` names.

=============== =====================================================================
``ce``          cross-entropy of the time-averaged logits (the default)
``tet``         temporal efficient training: CE at every step plus an MSE pull
``spike_count`` MSE between output spike counts and target counts (spiking outputs)
``membrane``    cross-entropy of the output layer's potential at its maximum over time
=============== =====================================================================

Evaluation is the same for all of them: the class with the largest output averaged over
time (for spiking outputs: the most spikes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from spikegrad.errors import UserError, check_time_major, refuse_unread, unknown_name_error
from spikegrad.layers import mean_over_time

if TYPE_CHECKING:
    from spikegrad.config import TrainConfig

__all__ = ["available", "check_loss_options", "max_membrane_cross_entropy", "mean_logit_cross_entropy",
           "spike_count_loss", "spike_count_targets", "tet_loss", "training_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


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


def spike_count_targets(targets: Tensor, T: int, classes: int, correct_rate: float = 1.0,
                        incorrect_rate: float = 0.0) -> Tensor:
    """Target spike counts ``[B, classes]``: ``⌊T·correct_rate⌋`` for the label, ``⌊T·incorrect_rate⌋``
    for the other classes (whole spikes, rounded down as snnTorch's ``mse_count_loss`` does)."""
    on, off = int(T * correct_rate), int(T * incorrect_rate)
    counts = torch.full((targets.shape[0], classes), float(off), device=targets.device)
    counts[torch.arange(targets.shape[0], device=targets.device), targets] = float(on)
    return counts


def spike_count_loss(outputs: Tensor, targets: Tensor, correct_rate: float = 1.0,
                     incorrect_rate: float = 0.0) -> Tensor:
    """MSE between output spike counts and target counts, divided by ``T``.

    ``n_bc = Σ_t s[t, b, c]`` (``outputs`` are spikes, 0 or 1), ``n̂`` from
    :func:`spike_count_targets`, and ``L = mean_{b,c} (n_bc - n̂_bc)² / T``: the value of
    snnTorch's ``mse_count_loss(correct_rate, incorrect_rate)``. The gradient reaches every
    step's spike, ``∂L/∂s[t, b, c] = 2·(n_bc - n̂_bc) / (B·C·T)``, and through the output
    neurons' surrogate the rest of the network.
    """
    check_time_major(outputs, "model output", min_dims=3)
    if not bool(((outputs == 0) | (outputs == 1)).all()):
        raise UserError("train.loss spike_count counts output spikes, but the model's outputs are "
                        "not 0/1; give the model a spiking readout (model.options.readout: spikes)")
    T, _, classes = outputs.shape
    counts = outputs.sum(0)  # (B, classes)
    wanted = spike_count_targets(targets, T, classes, correct_rate, incorrect_rate).to(counts.dtype)
    return F.mse_loss(counts, wanted) / T


def max_membrane_cross_entropy(outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of each class's highest output potential over time: ``CE(max_t O_t, y)``.

    ``O_t`` is the output layer's potential at step ``t``: with the registered models' logits
    readout, the classifier's per-step value (a non-spiking output layer). The maximum asks
    the correct class to stand out at *some* step, as a first-spike decision would, instead of
    on average (``ce``); cross-entropy (not MSE) needs no target potential and gives the
    softmax's calibrated gradient. The gradient goes to the step of each class's maximum only.
    """
    check_time_major(outputs, "model output", min_dims=3)
    return F.cross_entropy(outputs.max(0).values, targets, label_smoothing=label_smoothing)


def _ce(train: TrainConfig) -> LossFn:
    return partial(mean_logit_cross_entropy, label_smoothing=train.label_smoothing)


def _tet(train: TrainConfig) -> LossFn:
    return partial(tet_loss, lam=train.tet_lambda, phi=train.tet_phi, label_smoothing=train.label_smoothing)


def _spike_count(train: TrainConfig) -> LossFn:
    if train.label_smoothing:
        raise UserError("train.label_smoothing does not apply to train.loss spike_count (its targets "
                        "are counts: set train.correct_rate and train.incorrect_rate instead)")
    return partial(spike_count_loss, correct_rate=train.correct_rate, incorrect_rate=train.incorrect_rate)


def _membrane(train: TrainConfig) -> LossFn:
    return partial(max_membrane_cross_entropy, label_smoothing=train.label_smoothing)


#: ``train.loss`` name -> builder of the loss function from the ``train`` config section
_LOSSES: dict[str, Callable[[TrainConfig], LossFn]] = {
    "ce": _ce, "tet": _tet, "spike_count": _spike_count, "membrane": _membrane,
}


def available() -> list[str]:
    """The names ``train.loss`` accepts."""
    return list(_LOSSES)


def training_loss(train: TrainConfig) -> LossFn:
    """The loss ``train.loss`` names, with its settings bound.

    Another loss's keys set with it are an error (:func:`check_loss_options`).
    """
    if train.loss not in _LOSSES:
        raise unknown_name_error("loss", train.loss, available())
    check_loss_options(train)
    return _LOSSES[train.loss](train)


def check_loss_options(train: TrainConfig, loss: str | None = None) -> None:
    """Refuse the keys of one loss set to other than their defaults while ``loss`` (None:
    ``train.loss``) is another, which would not read them: the count rates belong to
    ``spike_count``, ``tet_lambda`` and ``tet_phi`` to ``tet``."""
    loss = train.loss if loss is None else loss
    if loss != "spike_count" and (train.correct_rate, train.incorrect_rate) != (1.0, 0.0):
        raise UserError(f"train.correct_rate and train.incorrect_rate set the targets of train.loss "
                        f"spike_count; they do not apply to train.loss {loss}")
    if loss != "tet":
        refuse_unread(train, "train", ("tet_lambda", "tet_phi"),
                      f"to train.loss {loss} (TET's loss only: a recipe of train.loss tet switched to "
                      f"another loss needs its tet keys reset too)")
