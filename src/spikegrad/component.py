"""The interface between the training loop and a training method.

A method is a :class:`Component`: it may act once the model, optimizer and loaders exist
(``attach``), at the start of each epoch (the adaptive Dspike temperature), once the
gradients exist (gradient diagnostics), after each optimisation step, or own the loss of a
training step (shortcut branches, local tandem learning). Components that do not own the
loss compose freely with one that does.

Every hook receives a :class:`TrainingContext`, not the trainer: the model, where training
stands, the training data, the distributed helper, and the three things a method may do
to the run (back-propagate a loss, add parameters to the optimizer, compute the default
loss), and the objective a training step optimises, for probes of the loss surface
(``search_objective``). A component that owns the loss says so (``owns_loss``), gives that
objective when it is a function of its heads' outputs (``search_objective``), and, when
inference must read out a window of time steps only, declares it (``readout_start``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from spikegrad.errors import UserError, check_labels

if TYPE_CHECKING:
    from spikegrad.config import Config
    from spikegrad.distributed import DistributedContext
    from spikegrad.evaluation import ExtraHeads

__all__ = ["Component", "Objective", "Position", "StepOutput", "TrainingContext"]

#: ``(forward, loss_fn)``: ``forward(model, inputs)`` returns the outputs a training step's loss
#: is computed from (one tensor ``[T, B, classes]``, or a tuple of them: a network's head and
#: auxiliary heads; None: ``model(inputs)``), ``loss_fn(outputs, targets)`` that loss
Objective = tuple[Callable[[nn.Module, Tensor], Any] | None, Callable[[Any, Tensor], Tensor]]


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
    it, else None), ``components`` (every component of the run, in hook order, to read only:
    e.g. the temperature search asks them for :meth:`Component.search_objective`);
    ``epoch``, ``iteration`` and ``total_iterations`` (live).
    """

    def __init__(
        self, *, model: nn.Module, config: Config, device: torch.device, dist: DistributedContext,
        train_set: Dataset, collate_fn: Callable[[list], Any], position: Position,
        default_loss: Callable[[Tensor, Tensor], Tensor], backward: Callable[[Tensor], None],
        add_param_group: Callable[[Iterable[nn.Parameter]], None], run_dir: Path | None,
        check_labels: Callable[[Tensor, int, str], None] | None = None,
        components: Sequence[Component] = (),
    ) -> None:
        self.model, self.config, self.device, self.dist = model, config, device, dist
        self.train_set, self.collate_fn, self.run_dir = train_set, collate_fn, run_dir
        self.components: tuple[Component, ...] = tuple(components)
        self._position = position
        self._default_loss, self._backward, self._add_param_group = default_loss, backward, add_param_group
        self._check_labels = check_labels

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

    def search_objective(self) -> Objective:
        """``(forward, loss_fn)`` of the loss the next training step optimises (see
        :data:`Objective`): the one component of the run (``components``) whose
        :meth:`Component.search_objective` answers, else ``(None, default_loss)``; an error when
        a component owns the loss but cannot give it (it is not the default loss)."""
        found = [(c.name, o) for c in self.components if (o := c.search_objective(self)) is not None]
        if len(found) > 1:
            raise UserError(f"the Dspike temperature search can differentiate one training loss, but "
                            f"components {[name for name, _ in found]} each define one; disable all but one")
        if found:
            return found[0][1]
        owners = [c.name for c in self.components if c.owns_loss]
        if owners:
            raise UserError(f"component {owners[0]!r} owns the training loss but cannot give it to the "
                            "Dspike temperature search, which would differentiate another loss (the "
                            "default loss of the model's output); train it with a fixed temperature "
                            "(dspike.adaptive=false)")
        return None, self.default_loss

    def check_labels(self, targets: Tensor, num_classes: int, name: str = "training labels") -> None:
        """A :class:`~spikegrad.errors.UserError` unless ``targets`` are class indices in
        ``[0, num_classes)``; free when the trainer already checked the batch on the host."""
        if self._check_labels is None:
            check_labels(targets, num_classes, name)
        else:
            self._check_labels(targets, num_classes, name)

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

    def search_objective(self, ctx: TrainingContext) -> Objective | None:
        """The loss the next training step optimises as ``(forward, loss_fn)`` (:data:`Objective`),
        for probes that differentiate it (the Dspike temperature search); None: the trainer's
        default loss of the model's output. A component whose loss reads more than the model's
        output (shortcut branches) gives it here."""
        return None

    def eval_heads(self, ctx: TrainingContext) -> ExtraHeads | None:
        """Predictions of the component's own (e.g. auxiliary heads) to score in the epoch's
        evaluation pass (:class:`~spikegrad.evaluation.ExtraHeads`); None: nothing to add."""
        return None

    def epoch_metrics(self, ctx: TrainingContext) -> dict[str, Any]:
        """Fields added to the epoch's metrics line after training and evaluation."""
        return {}

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Fields added to ``summary.json``, given the metrics rows of every epoch so far."""
        return {}

    def section_settings(self) -> dict[str, Any]:
        """The keys of the config section ``from_config`` reads, with the values this component
        uses (``{"lambda0": 1.0, ...}``): a trainer given the component by hand compares them
        with its config's section. ``{}`` (the default): nothing to compare."""
        return {}

    def method_name(self, base: str) -> str:
        """The run's method name given the name built so far (e.g. ``dspike+shortcut``)."""
        return base

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Refuse, with a :class:`~spikegrad.errors.UserError`, a run ``config`` in which the
        component, built from it, could not do its work (settings outside its own section);
        called when a config turns the method on (:func:`spikegrad.build.build_components`)."""

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
