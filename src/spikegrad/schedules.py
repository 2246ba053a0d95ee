"""Schedules over training: the learning rate, and the shortcut branches' balance coefficient.

Both are registries of named functions of the training progress; the config's choices
(``schedule.name``, ``shortcut.schedule``) are their names.

Learning rate, per iteration ``i`` with ``n`` iterations per epoch: a linear warm-up
``(i + 1) / W`` over the first ``W = warmup_epochs·n`` iterations, then

- ``cosine``: ``f + (1 - f)·(1 + cos(π·p))/2`` with ``p = (i - W) / (I - W)`` and the floor
  ``f = min_lr / lr``;
- ``constant``: 1;
- ``step``: ``γ^⌊epoch / step_epochs⌋``.

Balance coefficient ``λ(i)`` at iteration ``i`` of ``I``, with ``p = clamp(i / I, 0, 1)``:

- ``constant``: ``λ0`` (plain shortcut back-propagation with ``λ0 = 1``);
- ``linear``: ``λ0·(1 - p)`` (the evolutionary method);
- ``cosine``: ``λ0·(1 + cos(π·p)) / 2``;
- ``step``: ``λ0·γ^⌊p / f⌋``, a drop by ``γ`` every fraction ``f`` of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from spikegrad.errors import UserError, did_you_mean, refuse_unread

__all__ = ["BALANCE_SCHEDULES", "LR_SCHEDULES", "balance", "balance_schedules", "check_lr_schedule",
           "lr_factor", "lr_schedules"]


def _cosine_with_floor(p: float, floor: float) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


#: ``name -> g(progress, epoch, schedule section, base lr)``: the multiplier after the warm-up
LR_SCHEDULES: dict[str, Callable[[float, int, Any, float], float]] = {
    "cosine": lambda p, epoch, s, lr: _cosine_with_floor(p, s.min_lr / lr),
    "constant": lambda p, epoch, s, lr: 1.0,
    "step": lambda p, epoch, s, lr: s.gamma ** (epoch // s.step_epochs),
}


def lr_schedules() -> list[str]:
    """The names ``schedule.name`` accepts."""
    return list(LR_SCHEDULES)


#: ``schedule`` keys read by one learning-rate schedule only
LR_SCHEDULE_OPTIONS = {"cosine": ("min_lr",), "step": ("step_epochs", "gamma")}


def check_lr_schedule(section: Any, epochs: int | None = None, lr: float | None = None) -> None:
    """Refuse a ``schedule`` key that ``schedule.name`` does not read (``min_lr`` is cosine's,
    ``step_epochs`` and ``gamma`` step's) set to other than its default, and, given the run's
    ``epochs`` and base ``lr``, a schedule that cannot do what it says: a warm-up that never
    ends, a step decay that never comes, a cosine floor above the rate it decays from."""
    for name, keys in LR_SCHEDULE_OPTIONS.items():
        if section.name != name:
            refuse_unread(section, "schedule", keys, f"to schedule.name {section.name} ({name} only)")
    if epochs is not None and section.warmup_epochs >= epochs:
        raise UserError(f"schedule.warmup_epochs={section.warmup_epochs:g} does not end within "
                        f"train.epochs={epochs}: the rate would never reach optim.lr; shorten the "
                        "warm-up or train longer")
    if epochs is not None and section.name == "step" and section.step_epochs >= epochs:
        raise UserError(f"schedule.name=step decays every schedule.step_epochs={section.step_epochs} "
                        f"epochs, but train.epochs={epochs} ends first, so schedule.gamma never "
                        "applies; lower schedule.step_epochs or use schedule.name=constant")
    if lr is not None and section.name == "cosine" and section.min_lr > lr:
        raise UserError(f"schedule.min_lr={section.min_lr:g} is above optim.lr={lr:g}: the cosine "
                        "schedule would raise the rate; set schedule.min_lr <= optim.lr")


def lr_factor(config: Any, iteration: int, iters_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``iteration`` (warm-up, then ``schedule.name``)."""
    sched, epochs = config.schedule, config.train.epochs
    total = max(1, epochs * iters_per_epoch)
    warmup = int(sched.warmup_epochs * iters_per_epoch)
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return LR_SCHEDULES[sched.name](progress, iteration // iters_per_epoch, sched, config.optim.lr)


#: ``name -> λ(p, λ0, f, γ)`` with ``p`` the progress in ``[0, 1]``
BALANCE_SCHEDULES: dict[str, Callable[[float, float, float, float], float]] = {
    "constant": lambda p, lambda0, f, gamma: lambda0,
    "linear": lambda p, lambda0, f, gamma: lambda0 * (1.0 - p),
    "cosine": lambda p, lambda0, f, gamma: lambda0 * 0.5 * (1.0 + math.cos(math.pi * p)),
    "step": lambda p, lambda0, f, gamma: lambda0 * gamma ** math.floor(p / f + 1e-9),
}


def balance_schedules() -> list[str]:
    """The names ``shortcut.schedule`` accepts."""
    return list(BALANCE_SCHEDULES)


def balance(schedule: str, iteration: int, total: int, lambda0: float, step_fraction: float,
            gamma: float) -> float:
    """``λ(i)``, the weight of the shortcut branches at iteration ``i`` (0-based) of ``total``."""
    if schedule not in BALANCE_SCHEDULES:
        names = list(BALANCE_SCHEDULES)
        raise UserError(f"shortcut schedule must be one of {names}, got {schedule!r}"
                        f"{did_you_mean(schedule, names)}")
    if schedule == "step" and not 0.0 < step_fraction <= 1.0:
        raise UserError(f"shortcut step_fraction must be in (0, 1], got {step_fraction}")
    p = min(max(iteration / total, 0.0), 1.0) if total > 0 else 0.0
    return BALANCE_SCHEDULES[schedule](p, lambda0, step_fraction, gamma)
