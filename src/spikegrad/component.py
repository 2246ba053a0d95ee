"""The interface between the training loop and a training method.

A method is a :class:`Component`: it may act once the model, optimizer and loaders exist
(``attach``), at the start of each epoch (the adaptive Dspike temperature), once the
gradients exist (gradient diagnostics), after each optimisation step, or own the loss of a
training step (shortcut branches, local tandem learning). Components that do not own the
loss compose freely with one that does.

Every hook receives a :class:`TrainingContext`, not the trainer: the model, where training
stands, the training data, the distributed helper, and the three things a method may do
to the run (back-propagate a loss, add parameters to the optimizer, compute the default
loss). A component that owns the loss says so (``owns_loss``) and, when inference must read
out a window of time steps only, declares it (``readout_start``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from spikegrad.config import Config
    from spikegrad.distributed import DistributedContext

__all__ = ["Component", "Position", "StepOutput", "TrainingContext"]


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


@dataclass
class Position:
    """Where training stands: the epoch (0-based) and the optimizer steps taken of the total."""

    epoch: int = 0
    iteration: int = 0
    total_iterations: int = 0


class TrainingContext:
    """What a component sees of a training run.

    Attributes: ``model`` (the network being trained), ``config`` (the run's config, read
    only), ``device``, ``dist`` (:class:`~spikegrad.distributed.DistributedContext`: rank,
    sums and broadcasts over processes), ``train_set`` and ``collate_fn`` (the training data
    and how the loader batches it), ``run_dir`` (the run folder on the process that writes
    it, else None); ``epoch``, ``iteration`` and ``total_iterations`` (live).
    """

    def __init__(
        self, *, model: nn.Module, config: Config, device: torch.device, dist: DistributedContext,
        train_set: Dataset, collate_fn: Callable[[list], Any], position: Position,
        default_loss: Callable[[Tensor, Tensor], Tensor], backward: Callable[[Tensor], None],
        add_param_group: Callable[[Iterable[nn.Parameter]], None], run_dir: Path | None,
    ) -> None:
        self.model, self.config, self.device, self.dist = model, config, device, dist
        self.train_set, self.collate_fn, self.run_dir = train_set, collate_fn, run_dir
        self._position = position
        self._default_loss, self._backward, self._add_param_group = default_loss, backward, add_param_group

    @property
    def epoch(self) -> int:
        return self._position.epoch

    @property
    def iteration(self) -> int:
        """Optimizer steps taken so far (inside ``on_step_end``: including this one)."""
        return self._position.iteration

    @property
    def total_iterations(self) -> int:
        return self._position.total_iterations

    def default_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The run's loss (``train.loss``) of per-step logits ``[T, B, classes]``."""
        return self._default_loss(outputs, targets)

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` (scaled for mixed precision when the run uses it)."""
        self._backward(loss)

    def add_param_group(self, params: Iterable[nn.Parameter]) -> None:
        """Train parameters that live outside the model with the model's optimizer and
        schedule (in ``attach`` only)."""
        self._add_param_group(params)


class Component:
    """A part of a training method. Every hook is optional; the defaults do nothing."""

    #: key under which the component's state is checkpointed
    name: str = "component"
    #: evaluation averages the logits over the time steps ``t >= readout_start`` (set in
    #: ``attach`` by a component whose training reads out a window, as online LTL does)
    readout_start: int = 0

    @property
    def owns_loss(self) -> bool:
        """Whether :meth:`compute_loss` replaces the trainer's loss (at most one component may);
        a subclass that owns it says ``owns_loss = True``."""
        return type(self).compute_loss is not Component.compute_loss

    def attach(self, ctx: TrainingContext) -> None:
        """Called once, after the model, optimizer and loaders exist."""

    def on_epoch_start(self, ctx: TrainingContext, epoch: int) -> dict[str, Any]:
        """Called before each training epoch; returned fields go into ``metrics.jsonl``."""
        return {}

    def on_backward_end(self, ctx: TrainingContext) -> None:
        """Called after backward, before gradient clipping and the optimizer step; the gradients
        are unscaled and may be non-finite (a step the guards or the loss scaler will skip)."""

    def on_step_end(self, ctx: TrainingContext) -> None:
        """Called after every optimizer step (``ctx.iteration`` already advanced)."""

    def compute_loss(self, ctx: TrainingContext, inputs: Tensor, targets: Tensor) -> StepOutput | None:
        """Return a :class:`StepOutput` to own the training loss, or None to leave it."""
        return None

    def epoch_metrics(self, ctx: TrainingContext) -> dict[str, Any]:
        """Fields added to the epoch's metrics line after training and evaluation."""
        return {}

    def method_name(self, base: str) -> str:
        """The run's method name given the name built so far (e.g. ``dspike+shortcut``)."""
        return base

    @classmethod
    def section_method_name(cls, section: Any, base: str) -> str:
        """:meth:`method_name` as the component's config ``section`` would make it, before
        the component exists (a run's default name, :func:`spikegrad.methods.registry.run_name`)."""
        return base

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (tensors, numbers, strings, lists, dicts), including the
        state of any private random generator; checkpointed under ``components[name]``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
