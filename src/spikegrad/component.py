"""The interface between the training loop and a training method.

A method is a :class:`Component`: it may act once the model, optimizer and loaders exist
(``attach``), at the start of each epoch (the adaptive Dspike temperature), once the
gradients exist (gradient diagnostics), after each optimisation step, or own the loss of a
training step (shortcut branches, local tandem learning). Components that do not own the
loss compose freely with one that does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["Component", "StepOutput"]


@dataclass
class StepOutput:
    """What a training step's loss computation returns: the loss and ``[B, classes]`` logits.

    ``backpropagated`` is True when the component already ran the backward passes itself
    (local learning back-propagates each unit or time step as soon as its loss exists, so no
    graph spans the whole network); the trainer then only steps the optimizer.
    """

    loss: Tensor
    logits: Tensor
    backpropagated: bool = False


class Component:
    """A part of a training method. Every hook is optional; the defaults do nothing."""

    #: key under which the component's state is checkpointed
    name: str = "component"

    @property
    def owns_loss(self) -> bool:
        """Whether :meth:`compute_loss` replaces the trainer's loss (at most one component may)."""
        return type(self).compute_loss is not Component.compute_loss

    def attach(self, trainer: Any) -> None:
        """Called once, after the model, optimizer and loaders exist."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> dict[str, Any]:
        """Called before each training epoch; returned fields go into ``metrics.jsonl``."""
        return {}

    def on_backward_end(self, trainer: Any) -> None:
        """Called after backward, before gradient clipping and the optimizer step; the gradients
        are unscaled and may be non-finite (a step the guards or the loss scaler will skip)."""

    def on_step_end(self, trainer: Any) -> None:
        """Called after every optimizer step (``trainer.iteration`` already advanced)."""

    def compute_loss(self, trainer: Any, inputs: Tensor, targets: Tensor) -> StepOutput | None:
        """Return a :class:`StepOutput` to own the training loss, or None to leave it."""
        return None

    def epoch_metrics(self, trainer: Any) -> dict[str, Any]:
        """Fields added to the epoch's metrics line after training and evaluation."""
        return {}

    def method_name(self, base: str) -> str:
        """The run's method name given the name built so far (e.g. ``dspike+shortcut``)."""
        return base

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (tensors, numbers, strings, lists, dicts), including the
        state of any private random generator; checkpointed under ``components[name]``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
