"""One training loop for every method; methods plug in as :class:`Component` objects.

A component may act at the start of each epoch (the adaptive Dspike temperature), once
the gradients exist (gradient diagnostics), after each optimisation step (a schedule), or
own the loss of a training step (shortcut branches, local tandem learning). Components
that do not own the loss compose freely with one that does. Given no components, the
trainer builds those the config's method sections ask for (:mod:`spikegrad.build`).

Each run writes into its folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON
object per epoch), ``summary.json``, ``gradients.jsonl`` (the gradient diagnostics
component), checkpoints ``last.pt`` / ``best.pt`` (plus ``last.prev.pt``, the one before),
the last evaluation's ``analysis.json`` (activity, SOPs, energy; ``analysis.monitors``) and,
with ``analysis.tensorboard``, TensorBoard events under ``tensorboard/``. A checkpoint holds
everything an exact resume needs (:mod:`spikegrad.resume`); multi-process training is in
:mod:`spikegrad.distributed`.
"""

from __future__ import annotations

import inspect
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from spikegrad import distributed
from spikegrad.analysis import check_analysis, epoch_fields
from spikegrad.build.components import build_components
from spikegrad.checkpoint import load_weights
from spikegrad.component import Component, Position, StepOutput, TrainingContext
from spikegrad.config import Config, check_values
from spikegrad.data.augment import build_augmentation
from spikegrad.data.from_config import split_of
from spikegrad.data.loader import check_dataset, collate_for
from spikegrad.data.sampler import GlobalBatchSampler, ShardSampler
from spikegrad.diagnostics import GRADIENTS_FILE
from spikegrad.distributed import DistributedContext
from spikegrad.durable import disk_error
from spikegrad.errors import (
    TrainingDiverged,
    UserError,
    changed_fields,
    check_labels,
    explain_model_input,
    refuse_unread,
)
from spikegrad.evaluation import evaluate_model
from spikegrad.layers import mean_over_time
from spikegrad.losses import training_loss
from spikegrad.methods.registry import check_given_settings, components_note, unused_note
from spikegrad.neurons import SpikingNeuron
from spikegrad.nonfinite import CHECK_EVERY, FiniteGuard
from spikegrad.resume import EpochProgress, StopOnSignal, TrainingStopped, ignore_interrupts, set_rng_state
from spikegrad.rundir import TRAINER_TERMS, RunFolder, Terms
from spikegrad.schedules import check_lr_schedule, lr_factor
from spikegrad.seeding import seed_everything
from spikegrad.threads import apply_threads

__all__ = [
    "Component", "StepOutput", "Trainer", "autocast_dtype", "evaluate_model", "lr_factor", "resolve_device",
    "seed_everything", "worker_args",
]


def _created(model: nn.Module | Callable[[], nn.Module], seed: int) -> nn.Module:
    """``model``, or what the factory ``model()`` returns once every generator is seeded."""
    if isinstance(model, nn.Module):
        return model
    if not callable(model):
        raise UserError(f"Trainer needs an nn.Module or a function returning one, got "
                        f"{type(model).__name__}")
    if any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           for p in _parameters(model)):
        raise UserError("a model factory is called with no arguments and returns the model; give an "
                        "nn.Module, or a factory such as lambda: spikegrad.models.create('resnet18')")
    seed_everything(seed)  # the initial weights depend on the seed alone
    created = model()
    if not isinstance(created, nn.Module):
        raise UserError(f"the model factory returned {type(created).__name__}, not an nn.Module")
    return created


def _parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        return []


def _check_components(components: Any) -> list[Component]:
    if isinstance(components, Component) or not isinstance(components, (list, tuple)):
        raise UserError(f"components must be a list of Component instances, got "
                        f"{type(components).__name__}; e.g. components=[ShortcutBackprop()]")
    for item in components:
        if not isinstance(item, Component):
            hint = " (a class: call it)" if inspect.isclass(item) else ""
            raise UserError(f"components must be Component instances; got {item!r}{hint}")
    return list(components)


def worker_args(workers: int) -> dict[str, Any]:
    """``DataLoader`` arguments for ``workers`` loader processes (``data.num_workers``), which
    leave Ctrl-C and SIGTERM to the main process."""
    return {"num_workers": workers, "worker_init_fn": ignore_interrupts if workers > 0 else None}


def _loaders(train_set: Dataset, test_set: Dataset, config: Config, dist: DistributedContext
             ) -> tuple[torch.Generator, GlobalBatchSampler, DataLoader, DataLoader]:
    """The shuffling generator (seeded alike in every process: the data order), the global
    batch sampler, and the training and test loaders (each process its shard)."""
    generator = torch.Generator().manual_seed(config.train.seed)
    sampler = GlobalBatchSampler(len(train_set), config.data.batch_size, generator, dist.rank,
                                 dist.world_size)
    workers = config.data.num_workers
    loader_args = {**worker_args(workers), "pin_memory": dist.device.type == "cuda",
                   "persistent_workers": workers > 0}
    train_loader = DataLoader(train_set, batch_sampler=sampler, generator=generator,
                              collate_fn=collate_for(train_set), **loader_args)
    # Workers get their seeds from a generator of their own, drawn once (persistent), not
    # from the global one: a resumed process then draws from it exactly as the original did.
    test_loader = DataLoader(
        test_set, batch_size=config.data.eval_batch_size, shuffle=False,
        sampler=ShardSampler(len(test_set), dist.rank, dist.world_size) if dist.enabled else None,
        generator=torch.Generator().manual_seed(config.train.seed) if workers > 0 else None,
        collate_fn=collate_for(test_set), **loader_args,
    )
    return generator, sampler, train_loader, test_loader


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"train.device {name!r} is not a device name (auto, cpu, cuda, cuda:0, "
                        "mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but CUDA is not available; use train.device=cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise UserError(f"train.device is {name!r} but this torch has no usable MPS (Apple GPU) "
                        "backend; use train.device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"train.device {name!r}: spikegrad trains on cpu, cuda or mps, not on "
                        f"{device.type!r} devices")
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``: float16 on CUDA, bfloat16 elsewhere;
    None without mixed precision."""
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def build_optimizer(config: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    opt = config.optim
    if opt.name == "sgd":
        refuse_unread(opt, "optim", ["betas"], "to optim.name sgd (Adam/AdamW only)")
        if opt.nesterov and opt.momentum == 0:
            raise UserError("optim.nesterov=true needs momentum: set optim.momentum > 0 (e.g. 0.9) "
                            "or optim.nesterov=false")
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay)
    refuse_unread(opt, "optim", ["momentum", "nesterov"], f"to optim.name {opt.name} (SGD only)")
    if len(opt.betas) != 2:
        raise UserError(f"optim.betas must hold two numbers, got {opt.betas}")
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)


class Trainer:
    """Train and evaluate a model returning logits ``[T, B, classes]`` on a dataset pair.

    Args:
        model: any module mapping a batch to per-time-step logits ``[T, B, classes]`` (the
            registered networks, or your own built from spikegrad's layers), or a function of
            no arguments returning one: it is called after seeding every generator with
            ``train.seed``, so the initial weights are reproducible.
        train_set, test_set: datasets yielding ``(input, label)``.
        config: the run configuration (``optim``, ``schedule``, ``train``, ``data`` batch sizes
            and augmentation, and the method sections); defaults when None.
        components: method parts (adaptive Dspike, shortcut branches, LTL...). None: those the
            config's method sections ask for (:func:`spikegrad.build.build_components`); a
            section that cannot apply to the model is a :class:`UserError` saying why.
        out_dir: run folder; nothing is written when None.
        augment: a batched augmentation ``f(x) -> x`` applied to training batches; None:
            ``data.augment``.
        model_args: ``{"name", "kwargs"}`` that rebuild the model from the registry, stored in
            checkpoints so ``spikegrad eval`` can load them.
        overwrite: what :meth:`fit` does with an ``out_dir`` that already holds another run
            (:func:`spikegrad.rundir.check_destination`): False refuses it unless this trainer
            continues that run (:meth:`resume` from its ``last.pt``); True removes the old
            run's files first (:func:`spikegrad.rundir.remove_run`); None skips the check, for
            a folder its caller has already taken (:func:`spikegrad.train` does).
        terms: how errors about the run folder name the ways out (default: this class's
            arguments; :func:`spikegrad.train` passes its own, the CLI its flags).

    With ``train.threads`` unset, torch computes with the CPUs that are free
    (:func:`spikegrad.threads.apply_threads`).
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        train_set: Dataset,
        test_set: Dataset,
        config: Config | None = None,
        *,
        components: Sequence[Component] | None = None,
        out_dir: str | Path | None = None,
        augment: Callable[[Tensor], Tensor] | None = None,
        model_args: dict[str, Any] | None = None,
        verbose: bool = True,
        overwrite: bool | None = False,
        terms: Terms = TRAINER_TERMS,
    ) -> None:
        self.config = check_values(config) if config is not None else Config()
        train = self.config.train
        threads = apply_threads(train.threads)
        self.dist = distributed.setup(resolve_device(train.device), self.config.distributed)
        model = _created(model, train.seed)
        if components is None:  # what the config's method sections ask for
            components = build_components(self.config, model)
            unused = unused_note(self.config)
        else:
            components = _check_components(components)
            check_given_settings(self.config, components)
            unused = components_note(self.config, model, components)
        seed_everything(train.seed + self.dist.rank)  # each process its own augmentation noise
        self.device = self.dist.device
        model = distributed.prepare_model(model, self.dist, self.config.distributed)
        self.model = model.to(self.device)
        self.components = list(components)
        owners = [c for c in self.components if c.owns_loss]
        if len(owners) > 1:
            raise UserError("only one training component may own the loss, got "
                            f"{[c.name for c in owners]}")
        if not owners:  # train.loss and its settings are read: refuse a bad one now, not at step 1
            training_loss(self.config.train)
        self.model_args = model_args
        self.verbose = verbose and self.dist.is_main
        if self.verbose and threads.note:
            print(threads.note, flush=True)
        if self.verbose and unused:
            print(unused, flush=True)
        single = changed_fields(self.config.distributed) if not self.dist.enabled else {}
        if self.verbose and single:
            print("note: not used in one process (they apply under torchrun): " + ", ".join(
                f"distributed.{name}={getattr(self.config.distributed, name)}" for name in single),
                flush=True)
        self.overwrite = overwrite
        #: the run folder and its bookkeeping (files, checkpoints; rank 0 writes)
        self.run = RunFolder(out_dir, self.dist, verbose=self.verbose, terms=terms)
        check_sample = getattr(getattr(model, "module", model), "check_sample", None)  # spikegrad networks

        first: list[Tensor] = []  # the first training sample, read once by check_dataset

        def check_first(item: Any) -> None:  # event frames into a Poisson encoder, say
            sample = item[0] if isinstance(item, (tuple, list)) and item else None
            if isinstance(sample, Tensor):
                first.append(sample)
                if check_sample is not None:
                    check_sample(sample)

        check_dataset(train_set, "training set", allow_empty=False, check_first=check_first)
        check_dataset(test_set, "test set")
        if augment is None:  # no dataset info here: the shifts are checked on one sample's shape
            augment = build_augmentation(self.config.data.augment,
                                         sample_shape=first[0].shape if first else None)
        self.augment = augment
        #: what the second set is: "validation" or "test" for datasets built from the config,
        #: "test" for datasets given as they are (data.subset and data.validation cut neither)
        self.eval_split = split_of(test_set) or "test"
        data = self.config.data
        if self.verbose and split_of(train_set) is None and (data.subset is not None or data.validation > 0):
            print("note: data.subset and data.validation cut datasets built from the config "
                  "(spikegrad.build_parts, datasets_from_config); the datasets given here are used "
                  "as they are, the second one as the test set", flush=True)
        check_analysis(self.config.analysis)
        self.loader_generator, self.train_sampler, self.train_loader, self.test_loader = _loaders(
            train_set, test_set, self.config, self.dist)
        self.optimizer = build_optimizer(self.config, self.model.parameters())
        self.scheduler = self._build_scheduler()
        self.amp_dtype = autocast_dtype(self.device, train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=train.amp and self.device.type == "cuda")
        self._position = Position(total_iterations=train.epochs * len(self.train_loader))
        self.best_test_acc = -1.0
        self.history: list[dict[str, Any]] = []
        self.progress: EpochProgress | None = None  # the epoch in progress
        self.wall_seconds_before = 0.0  # spent by earlier processes of a resumed run
        self._first_forward = True
        #: classes of the model's output, once a step has seen them; the labels of a batch on
        #: the host are then checked there, before the transfer (no device synchronisation)
        self._num_classes: int | None = None
        self._labels_checked: int | None = None  # the classes this batch's labels were checked for
        #: non-finite steps on CUDA with train.nonfinite=stop: recorded on the device, read at
        #: a cadence (spikegrad.nonfinite); None where the check stays per step
        self._guard = FiniteGuard(self.device) if (
            self.device.type == "cuda" and train.nonfinite == "stop" and not self.scaler.is_enabled()
        ) else None
        self._in_epoch = False  # inside train_one_epoch's loop, which reads the guard
        self._output_steps: int | None = None  # T of the training outputs (summary of a custom model)
        self._stop = StopOnSignal(enabled=False)
        self._started = time.perf_counter()
        self._attach(train_set, owns_loss=bool(owners))

    def _attach(self, train_set: Dataset, owns_loss: bool) -> None:
        """Give the components their context and attach them; then share the steps over processes."""
        #: what the components see of the run
        self.context = TrainingContext(
            model=self.model, config=self.config, device=self.device, dist=self.dist,
            train_set=train_set, collate_fn=self.train_loader.collate_fn, position=self._position,
            default_loss=self.default_loss, backward=self.backward,
            add_param_group=self.add_param_group, run_dir=self.run.local_path,
            check_labels=self.check_labels, components=self.components,
        )
        for component in self.components:
            component.attach(self.context)
        #: evaluation averages the logits over t >= readout_start (a component may declare it)
        self.readout_start = max((c.readout_start for c in self.components), default=0)
        # under torchrun: how each step's gradients are averaged over the processes
        self._parallel = distributed.ParallelStep(
            self.compute_loss, self.model, self.optimizer, self.dist, self.config.distributed,
            component_owns_loss=owns_loss, make_output=StepOutput,
        )

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        check_lr_schedule(self.config.schedule, self.config.train.epochs, self.config.optim.lr)
        iters = len(self.train_loader)
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(self.config, it, iters)
        )

    # position in training, shared with the components' context
    epoch = property(lambda self: self._position.epoch,
                     lambda self, value: setattr(self._position, "epoch", value))
    iteration = property(lambda self: self._position.iteration,
                         lambda self, value: setattr(self._position, "iteration", value))
    total_iterations = property(lambda self: self._position.total_iterations,
                                lambda self, value: setattr(self._position, "total_iterations", value))

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss``, scaled when fp16 mixed precision scales gradients."""
        self.scaler.scale(loss).backward()

    def add_param_group(self, params: Iterable[nn.Parameter]) -> None:
        """Train parameters that live outside the model (e.g. shortcut branches) with the
        model's optimizer and learning-rate schedule. Call before the first step (``attach``)."""
        if self.iteration != 0:
            raise RuntimeError("add_param_group must be called before training starts")
        self.optimizer.add_param_group({"params": list(params)})
        self.scheduler = self._build_scheduler()  # one schedule entry per parameter group

    def trained_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimizer updates: the model's and any added by components."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # ------------------------------------------------------------------ loss and steps

    def default_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """CE on the time-averaged logits, or TET's per-step loss (``train.loss``)."""
        return training_loss(self.config.train)(outputs, targets)

    def compute_loss(self, inputs: Tensor, targets: Tensor) -> StepOutput:
        """The training loss of one batch: the owning component's, else :meth:`default_loss`."""
        for component in self.components:
            out = component.compute_loss(self.context, inputs, targets)
            if out is not None:
                return out
        if self._first_forward:
            with explain_model_input(inputs):
                outputs = self.model(inputs)  # (T, B, classes)
            self._first_forward = False
        else:
            outputs = self.model(inputs)  # (T, B, classes)
        if not isinstance(outputs, Tensor):
            raise UserError(f"the model must return one tensor of per-time-step logits [T, B, "
                            f"classes], got {type(outputs).__name__}; return the logits alone")
        if outputs.dim() != 3:
            raise UserError(f"the model must return per-time-step logits [T, B, classes], got "
                            f"shape {tuple(outputs.shape)}; add a time axis (outputs.unsqueeze(0))")
        if outputs.shape[1] != targets.shape[0]:
            raise UserError(
                f"the model returned logits of shape {tuple(outputs.shape)} for a batch of "
                f"{targets.shape[0]} labels: axis 1 must be the batch. Sequence samples [T, ...] "
                "must be collated time-major (a dataset with time_major = True, or "
                "spikegrad.data.collate_for), so that batches are [T, B, ...]")
        self._output_steps = outputs.shape[0]
        self.check_labels(targets, outputs.shape[-1])
        return StepOutput(self.default_loss(outputs, targets), mean_over_time(outputs))

    def check_labels(self, targets: Tensor, num_classes: int, name: str = "training labels") -> None:
        """:func:`spikegrad.errors.check_labels`, unless this batch's labels were already checked
        on the host for ``num_classes`` (which spares a device synchronisation per step)."""
        if self._labels_checked != num_classes:
            check_labels(targets, num_classes, name)
        self._num_classes = num_classes

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def to_device(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return inputs, targets

    def train_step(self, inputs: Tensor, targets: Tensor, weight: float = 1.0) -> StepOutput | None:
        """One optimisation step on a batch already on the device (and augmented).

        ``weight`` scales this process's loss (see :mod:`spikegrad.distributed`). A
        non-finite loss or gradient stops training (:class:`TrainingDiverged`) or, with
        ``train.nonfinite=skip``, skips the update and returns None.
        """
        self.optimizer.zero_grad(set_to_none=True)
        skip = self.config.train.nonfinite == "skip"
        # a skipped step must not leave its forward pass in the batch-norm statistics
        buffers = [b.detach().clone() for b in self.model.buffers()] if skip else []
        with self.autocast():
            out = self._parallel.forward(inputs, targets)
        if not out.backpropagated:
            self.backward(self._parallel.scale_loss(out.loss, weight))
        self._parallel.sync_gradients(weight)
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 gradient scaling
        for component in self.components:  # the gradients as computed, before any clipping
            component.on_backward_end(self.context)
        grad_norm = None
        if self.config.train.grad_clip:
            grad_norm = nn.utils.clip_grad_norm_(self.trained_parameters(), self.config.train.grad_clip)
        elif not self.scaler.is_enabled():
            grads = [p.grad for p in self.trained_parameters() if p.grad is not None]
            grad_norm = nn.utils.get_total_norm(grads) if grads else None
        # with fp16 loss scaling, an overflow of the gradients is the scaler's business: it
        # skips the step and lowers the scale
        if self._guard is not None and self._in_epoch:  # read later (spikegrad.nonfinite)
            self._guard.record(self.iteration, out.loss, grad_norm)
            finite = True
        else:
            finite = self._is_finite(out.loss, None if self.scaler.is_enabled() else grad_norm)
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not skip:
            raise self._divergence(out.loss, grad_norm)
        else:
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        self.scheduler.step()
        self.iteration += 1
        for component in self.components:
            component.on_step_end(self.context)
        return out if finite else None

    def _is_finite(self, loss: Tensor, grad_norm: Tensor | None) -> bool:
        """Loss and gradient norm finite here, and on every other process."""
        ok = torch.isfinite(loss.detach().float())
        if grad_norm is not None:
            ok = ok & torch.isfinite(grad_norm)
        return not self.dist.any(not bool(ok))[0]

    def _divergence(self, loss: Tensor, grad_norm: Tensor | None) -> TrainingDiverged:
        """The error of a step found non-finite here or on another process (collective under
        torchrun: every process reaches it at the same step)."""
        values = (float(loss.detach().float()), float(grad_norm) if grad_norm is not None else 0.0)
        seen = None if all(map(math.isfinite, values)) else (self.iteration, *values)
        iteration, what = self._first_nonfinite(seen)
        return self._diverged(what, iteration + 1,
                              self.progress.batches + 1 if self.progress else None)

    def _first_nonfinite(self, seen: tuple[int, float, float] | None) -> tuple[int, str]:
        """The earliest non-finite step over the processes and what was non-finite, in words:
        ``seen`` is this process's ``(iteration, loss, gradient norm)`` or None. A non-finite
        loss is named before a gradient norm (which the gradient average spreads to every
        process), then the lowest rank, so every process raises the same error (collective
        under torchrun)."""
        steps = [(s[0], math.isfinite(s[1]), rank, s) for rank, s in enumerate(self.dist.gather(seen))
                 if s is not None]
        iteration, loss_finite, rank, (_, loss, norm) = min(steps)
        what = f"the gradient norm is {norm}" if loss_finite else f"the loss is {loss}"
        return iteration, what + (f" on process {rank}" if self.dist.enabled else "")

    def _diverged(self, what: str, step: int, batch: int | None) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged: {what} in step {step} (epoch {self.epoch + 1}"
            f"{f', batch {batch}' if batch is not None else ''}); "
            f"{self.run.last_good_state()}. Lower optim.lr, set train.grad_clip, or set "
            "train.nonfinite=skip to skip such steps"
        )

    def _check_guard(self) -> None:
        """Stop if a step since the last read had a non-finite loss or gradient norm here or on
        another process (CUDA with ``train.nonfinite: stop``; collective under torchrun)."""
        if self._guard is None:
            return
        bad = self._guard.first_bad()
        if not self.dist.any(bad is not None)[0]:
            return
        iteration, what = self._first_nonfinite(bad)  # the same error everywhere
        batch = self.progress.batches - (self.iteration - iteration) + 1 if self.progress else None
        raise self._diverged(what, iteration + 1, batch)

    def _loss_weight(self, batch_index: int, local_size: int) -> float:
        """``n_r·W / n``: makes DDP's gradient average that of the global batch's mean loss."""
        if not self.dist.enabled:
            return 1.0
        return local_size * self.dist.world_size / self.train_sampler.global_size(batch_index)

    def train_one_epoch(self, epoch: int) -> dict[str, float | None]:
        """Train (or finish, after a resume) one epoch; the training metrics over all processes."""
        if self.progress is None:
            self.progress = self._start_epoch(epoch)
        p = self.progress
        self.model.train()
        tic, seconds_before = time.perf_counter(), p.seconds
        self._in_epoch = True
        try:
            for inputs, targets in self._progress(self.train_loader, epoch):
                self._train_batch(inputs, targets)
                p.seconds = seconds_before + time.perf_counter() - tic
                self._after_step()
            self._check_guard()
        finally:
            self._in_epoch = False
        p.flush()
        loss_sum, correct, seen, nonfinite = self.dist.sum([p.loss_sum, p.correct, p.seen, p.nonfinite])
        metrics: dict[str, Any] = {"train_loss": loss_sum / seen if seen else None,
                                   "train_acc": correct / seen if seen else None}
        if self.config.train.nonfinite == "skip":
            metrics["nonfinite_steps"] = int(nonfinite)
        return metrics

    def _train_batch(self, inputs: Tensor, targets: Tensor) -> None:
        """One batch of the epoch as the loader gives it: labels checked on the host once the
        classes are known, moved to the device, augmented, one step, its sums recorded."""
        self._labels_checked = None
        if self._num_classes is not None and targets.device.type == "cpu":
            check_labels(targets, self._num_classes, "training labels")
            self._labels_checked = self._num_classes
        inputs, targets = self.to_device(inputs, targets)
        if self.augment is not None:
            inputs = self.augment(inputs)
        out = self.train_step(inputs, targets, self._loss_weight(self.progress.batches, targets.shape[0]))
        self.progress.record(out, targets, counts_steps=self.dist.is_main)

    def _start_epoch(self, epoch: int) -> EpochProgress:
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        tic = time.perf_counter()
        for component in self.components:
            row.update(component.on_epoch_start(self.context, epoch))
        # the epoch's training time includes what its methods do first (a temperature search)
        return EpochProgress(row=row, seconds=time.perf_counter() - tic)

    def evaluate(self, loader: DataLoader | None = None) -> dict[str, Any]:
        """Accuracy, loss and mean firing rate of the model on ``loader`` (the test set)."""
        # skipping non-finite steps, a test sample with non-finite logits counts as wrong
        nonfinite = "count" if self.config.train.nonfinite == "skip" else "refuse"
        # what the components score in the same pass (shortcut branches); none: the plain pass
        heads = [h for h in (c.eval_heads(self.context) for c in self.components) if h is not None]
        if loader is not None:
            return evaluate_model(self.model, loader, self.device, self.amp_dtype,
                                  self.config.analysis, self.readout_start, nonfinite=nonfinite,
                                  heads=heads)
        distributed.sync_buffers(self.model, self.dist)  # rank 0's BN statistics everywhere
        return evaluate_model(self.model, self.test_loader, self.device, self.amp_dtype,
                              self.config.analysis, self.readout_start,
                              self.dist.sum if self.dist.enabled else None,  # over the shards
                              nonfinite=nonfinite, heads=heads)

    # ------------------------------------------------------------------ the run

    def method_name(self) -> str:
        """``ann``, or the surrogate's name, refined by each component (``dspike+shortcut``)."""
        neurons = [m for m in self.model.modules() if isinstance(m, SpikingNeuron)]
        if getattr(self.model, "kind", "snn") == "ann" or not neurons:  # no spiking neuron
            name = "ann"
        else:
            names = {getattr(m.surrogate, "registry_name", type(m.surrogate).__name__.lower())
                     for m in neurons}
            name = names.pop() if len(names) == 1 else "snn"
        for component in self.components:
            name = component.method_name(name)
        return name

    def time_steps(self) -> int | None:
        """The model's ``T``: its own attribute, else its encoder's, else the time axis of the
        last training output (None before any)."""
        for module in self.model.modules():  # the model first, then its encoder
            if isinstance(getattr(module, "T", None), int):
                return module.T
        return self._output_steps

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        """What ``summary.json`` holds: method, name, accuracies (``eval_split``: whether the
        ``test`` ones measure the test set or a validation split), times, size, activity, ``T``."""
        return {
            "method": self.method_name(),
            # the config's name, else the run folder's, else the model's class and the method
            "name": self.config.name or (self.run.path.name if self.run.path is not None else
                                         f"{type(self.model).__name__}-{self.method_name()}"),
            "best_test_acc": self.best_test_acc,
            "final_test_acc": self.history[-1]["test_acc"] if self.history else None,
            "eval_split": self.eval_split,
            "epochs": self.epoch,
            "wall_seconds": wall_seconds,
            "train_seconds": sum(row["seconds"] for row in self.history),
            "params": sum(p.numel() for p in self.model.parameters()),
            "firing_rate": self.history[-1]["firing_rate"] if self.history else None,
            "T": self.time_steps(),
            **{k: v for c in self.components for k, v in c.summary(self.history).items()},
        }

    def fit(self) -> dict[str, Any]:
        """Train for ``train.epochs`` epochs, evaluating after each; returns the summary.

        An ``out_dir`` that already holds another run is refused unless this trainer resumed
        it (:meth:`resume`) or was made with ``overwrite=True``, which removes it first. The
        run folder is locked from the start to the end (:mod:`spikegrad.runlock`). A write
        that fails for a full disk or a file-size limit, wherever it happens (checkpoints,
        side files, a component's file, TensorBoard), stops the run with a :class:`UserError`
        saying what ``last.pt`` still holds."""
        try:
            self.run.prepare(self.config, self.history, overwrite=self.overwrite)
            return self._fit()
        except (OSError, RuntimeError) as exc:
            failed = disk_error(exc)
            if failed is None or not self.run.writes:
                raise
            what = repr(str(failed.filename)) if failed.filename else f"into {str(self.run.path)!r}"
            raise self.run.write_failure(what, failed) from exc
        finally:
            self.run.release()

    def _fit(self) -> dict[str, Any]:
        tensorboard = None
        if self.run.writes and self.config.analysis.tensorboard:
            from spikegrad.tensorboard_log import TensorBoardLogger

            with self.run.writing("TensorBoard events (tensorboard/)"):
                tensorboard = TensorBoardLogger(self.run.path / "tensorboard")
        start = self._started = time.perf_counter()
        try:  # a stop on a signal is an exception too: close the TensorBoard file
            with StopOnSignal(enabled=self.run.enabled) as self._stop:
                for epoch in range(self.epoch, self.config.train.epochs):
                    self._run_epoch(epoch, tensorboard)
        finally:
            if tensorboard is not None:
                with self.run.writing("TensorBoard events (tensorboard/)"):
                    tensorboard.close()
        summary = self.summary(self.wall_seconds_before + time.perf_counter() - start)
        self.run.write_summary(summary)
        return summary

    def _run_epoch(self, epoch: int, tensorboard: Any = None) -> None:
        """Train (or finish) one epoch, evaluate, log, write the checkpoints."""
        self.epoch = epoch
        row = self.train_one_epoch(epoch)  # starts the epoch, or finishes a resumed one
        row = {**self.progress.row, **row, "seconds": self.progress.seconds}
        row.update(self.evaluate())
        detail = row.pop("analysis", None)
        if detail is not None:
            row.update(epoch_fields(detail))
        for component in self.components:
            row.update(component.epoch_metrics(self.context))
        self.epoch, self.progress = epoch + 1, None
        self.history.append(row)
        self._log_epoch(row)
        improved = row["test_acc"] > self.best_test_acc
        self.best_test_acc = max(self.best_test_acc, row["test_acc"])
        self.run.append_metrics(row)
        if self.run.enabled:
            self.save_checkpoint(best=improved)
        self.run.write_analysis(detail, epoch + 1)
        if tensorboard is not None:
            with self.run.writing("TensorBoard events (tensorboard/)"):
                tensorboard.log_epoch(row)
                tensorboard.log_gradients(self.run.path / GRADIENTS_FILE)
        self._stop_if_requested(saved=True)

    # ------------------------------------------------------------------ output

    def _progress(self, loader: DataLoader, epoch: int) -> Iterable:
        """The loader, behind a progress bar when the terminal is interactive."""
        if self.verbose and self.config.train.progress and sys.stderr.isatty():
            from tqdm import tqdm

            desc = f"epoch {epoch + 1}/{self.config.train.epochs}"
            return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
        return loader

    def _log_epoch(self, row: dict[str, Any]) -> None:
        if not self.verbose:
            return
        extras = "".join(
            f"  {k} {v:.4g}" for k, v in row.items()
            if isinstance(v, float) and k not in {"lr", "seconds", "train_loss", "train_acc",
                                                  "test_loss", "test_acc", "firing_rate",
                                                  "sops", "energy_uj"}
        )
        rate = row.get("firing_rate")
        loss, train_acc = row["train_loss"], row["train_acc"]  # None: every step was skipped
        evaluated = "val" if self.eval_split == "validation" else "test"
        print(
            f"epoch {row['epoch']:>3}/{self.config.train.epochs}  loss "
            + ("-" if loss is None else f"{loss:.4f}") + "  train "
            + ("  -  " if train_acc is None else f"{100 * train_acc:5.1f}") + f"%  {evaluated} "
            f"{100 * row['test_acc']:5.1f}%  "
            f"lr {row['lr']:.3g}" + (f"  rate {rate:.3f}" if rate is not None else "")
            + extras + f"  {row['seconds']:.1f}s",
            flush=True,
        )

    # ------------------------------------------------------------------ checkpoints and resume

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the model weights (collective under DDP)."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_test_acc": self.best_test_acc,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "components": {c.name: c.state_dict() for c in self.components},
            "method": self.method_name(),
            "history": self.history,
            "progress": self.run.progress_totals(self.progress),  # mid-epoch: sums over processes
            "order": {"generator": self.loader_generator.get_state(),
                      "epoch_start": self.train_sampler.epoch_start_state},
            "rng": self.run.rng_states(),  # one entry per process
            "world_size": self.dist.world_size,
            "wall_seconds": self.wall_seconds_before + time.perf_counter() - self._started,
        }

    def resume(self, path: str | Path, allow_config_change: bool = False) -> None:
        """Continue the run saved in checkpoint ``path`` (``fit`` then picks up where it stopped).

        The config must not differ from the stored one except in where and how fast the run
        goes (:data:`spikegrad.resume.MAY_DIFFER_ON_RESUME`), unless ``allow_config_change``.
        Rank 0 reads the file and sends it to the other processes.
        """
        self.load_state_dict(self.run.read_checkpoint(path, self.config, allow_config_change), str(path))

    def load_state_dict(self, payload: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from a checkpoint (:func:`spikegrad.checkpoint.load_checkpoint`'s payload):
        weights, optimizer, schedule, scaler, components, RNG states, data order, position."""
        needed = ("optimizer", "scheduler", "scaler", "rng", "order", "history", "progress")
        missing = [k for k in needed if k not in payload]
        if missing:
            raise UserError(f"{source!r} holds no training state to resume from (missing "
                            f"{', '.join(missing)}); it was written by an older spikegrad or for "
                            "evaluation only")
        stored = payload.get("components", {})
        # a component without state (gradient diagnostics) may come or go
        have = {c.name: c for c in self.components if c.name in stored or c.state_dict()}
        if sorted(n for n in stored if stored[n] or n in have) != sorted(have):
            raise UserError(f"{source!r} was trained with the components {sorted(stored)} but this "
                            f"run has {sorted(c.name for c in self.components)}; resume with the "
                            "run's own config")
        load_weights(self.model, payload["model"], source)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        for name, component in have.items():
            component.load_state_dict(stored[name])
        self.epoch, self.iteration = int(payload["epoch"]), int(payload["iteration"])
        self.best_test_acc = float(payload["best_test_acc"])
        self.history = [dict(row) for row in payload["history"]]
        self.wall_seconds_before = float(payload.get("wall_seconds", 0.0))
        rng = payload["rng"]
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            set_rng_state(rng[0])
            if self.verbose:
                print(f"note: {source!r} was written by {len(rng)} processes, this run has "
                      f"{self.dist.world_size}: it continues, but not bit for bit", flush=True)
        self._restore_data_order(payload["order"], payload["progress"])
        self.run.resumed_from(source, self.position())

    restore = load_state_dict  # the name it had

    def _restore_data_order(self, order: dict[str, Any], progress: dict[str, Any] | None) -> None:
        """Replay the shuffle. A DataLoader draws its workers' base seed from the shuffling
        generator whenever it makes an iterator (every epoch, or only the first one with
        persistent workers), before the sampler draws the permutation."""
        self.progress = None
        if progress is not None:  # mid-epoch: the pass that was under way, minus what is done
            self.progress = EpochProgress.from_dict(progress)
            if not self.dist.is_main:  # rank 0 carries the sums of the part already trained
                self.progress.loss_sum, self.progress.correct = 0.0, 0
                self.progress.seen, self.progress.nonfinite = 0, 0
            self.train_sampler.resume_at(order["epoch_start"], self.progress.batches)
        elif self.train_loader.persistent_workers:  # uninterrupted, the next pass draws no seed
            self.train_sampler.resume_at(order["generator"], 0)
        else:
            self.loader_generator.set_state(order["generator"])

    def save_checkpoint(self, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt`` if ``best``) into the run folder (collective)."""
        self._check_guard()  # never save the state after a non-finite step
        self.run.save_checkpoint(self.model, self.model_args, self.state_dict(), self.position(), best)

    def _after_step(self) -> None:
        """Every ``train.checkpoint_every`` iterations, and on a stop request, save ``last.pt``."""
        if self._guard is not None and self.iteration % CHECK_EVERY == 0:
            self._check_guard()
        every = self.config.train.checkpoint_every
        saved = False
        if every and self.iteration % every == 0 and self.progress.batches < len(self.train_loader):
            self.save_checkpoint()
            saved = True
        self._stop_if_requested(saved)

    def _stop_if_requested(self, saved: bool) -> None:
        """If SIGTERM/SIGINT arrived (in any process), save unless just done, and stop."""
        if not self.run.stop_requested(self._stop):
            return
        if not saved:
            self.save_checkpoint()
        signum = self._stop.signum or signal.SIGTERM
        raise TrainingStopped(signum, self.run.last_checkpoint, self.position())

    def position(self) -> str:
        """Where training stands, in words: ``epoch 2, batch 5 (iteration 50)`` or ``the end of
        epoch 1 (iteration 45)``."""
        if self.progress is not None and self.progress.batches:
            return (f"epoch {self.epoch + 1}, batch {self.progress.batches} "
                    f"(iteration {self.iteration})")
        if self.progress is not None:  # an epoch about to start
            return f"the start of epoch {self.epoch + 1} (iteration {self.iteration})"
        return f"the end of epoch {self.epoch} (iteration {self.iteration})"
