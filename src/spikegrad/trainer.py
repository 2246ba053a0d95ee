"""One training loop for every method; methods plug in as :class:`Component` objects.

A component may act at the start of each epoch (the adaptive Dspike temperature), once
the gradients exist (gradient diagnostics), after each optimisation step (a schedule), or
own the loss of a training step (shortcut branches, local tandem learning). Components
that do not own the loss compose freely with one that does.

Each run writes into its folder: ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON
object per epoch), ``summary.json``, ``gradients.jsonl`` (the gradient diagnostics
component), checkpoints ``last.pt`` / ``best.pt``, the last evaluation's ``analysis.json``
(activity, SOPs, energy; ``analysis.monitors``) and, with ``analysis.tensorboard``,
TensorBoard events under ``tensorboard/``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from spikegrad.analysis import EvalProbe, epoch_fields, write_analysis
from spikegrad.checkpoint import save_checkpoint
from spikegrad.config import AnalysisConfig, Config
from spikegrad.data.loader import collate_for
from spikegrad.errors import UserError
from spikegrad.layers import mean_over_time
from spikegrad.losses import mean_logit_cross_entropy, tet_loss
from spikegrad.neurons import SpikingNeuron

__all__ = [
    "Component", "StepOutput", "Trainer", "evaluate_model", "resolve_device", "seed_everything",
]


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

    def attach(self, trainer: Trainer) -> None:
        """Called once, after the model, optimizer and loaders exist."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        """Called before each training epoch; returned fields go into ``metrics.jsonl``."""
        return {}

    def on_backward_end(self, trainer: Trainer) -> None:
        """Called after backward, before the optimizer step; the gradients are unscaled."""

    def on_step_end(self, trainer: Trainer) -> None:
        """Called after every optimizer step (``trainer.iteration`` already advanced)."""

    def compute_loss(self, trainer: Trainer, inputs: Tensor, targets: Tensor) -> StepOutput | None:
        """Return a :class:`StepOutput` to own the training loss, or None to leave it."""
        return None

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        """Fields added to the epoch's metrics line after training and evaluation."""
        return {}

    def method_name(self, base: str) -> str:
        """The run's method name given the name built so far (e.g. ``dspike+shortcut``)."""
        return base

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    return device


def lr_factor(config: Config, iteration: int, iters_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``iteration`` (warm-up, then the schedule)."""
    sched, epochs = config.schedule, config.train.epochs
    total = max(1, epochs * iters_per_epoch)
    warmup = int(sched.warmup_epochs * iters_per_epoch)
    if iteration < warmup:
        return (iteration + 1) / warmup
    if sched.name == "constant":
        return 1.0
    if sched.name == "step":
        return sched.gamma ** ((iteration // iters_per_epoch) // sched.step_epochs)
    progress = (iteration - warmup) / max(1, total - warmup)
    floor = sched.min_lr / config.optim.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(config: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    opt = config.optim
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay)
    if len(opt.betas) != 2:
        raise UserError(f"optim.betas must hold two numbers, got {opt.betas}")
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
    analysis: AnalysisConfig | None = None, readout_start: int = 0,
) -> dict[str, Any]:
    """Test accuracy, loss (of the time-averaged logits) and mean firing rate, in eval mode.

    With ``analysis.monitors``, the result also holds ``"analysis"``: per-layer activity,
    SOPs and energy (:class:`spikegrad.analysis.EvalProbe`). The logits are averaged over
    the time steps ``t >= readout_start`` (0: all of them; online local tandem learning
    reads out from its warm-up step on).
    """
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with EvalProbe(model, analysis) as monitor:
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(inputs)  # (T, B, classes)
            logits = mean_over_time(outputs[readout_start:]).float()
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(1) == targets).sum())
            seen += targets.shape[0]
            monitor.add_samples(targets.shape[0])
    if seen == 0:
        raise UserError("the evaluation set is empty")
    result = {"test_loss": loss_sum / seen, "test_acc": correct / seen,
              "firing_rate": monitor.mean_rate()}
    detail = monitor.summary()
    if detail is not None:
        result["analysis"] = detail
    return result


class Trainer:
    """Train and evaluate a model returning logits ``[T, B, classes]`` on a dataset pair.

    Args:
        model: any module mapping a batch to per-time-step logits ``[T, B, classes]`` (the
            registered networks, or your own built from spikegrad's layers).
        train_set, test_set: datasets yielding ``(input, label)``.
        config: the run configuration (``optim``, ``schedule``, ``train``, ``data`` batch sizes
            and augmentation); defaults when None.
        components: method parts (adaptive Dspike, shortcut branches, LTL...).
        out_dir: run folder; nothing is written when None.
        augment: a batched augmentation ``f(x) -> x`` applied to training batches.
        model_args: ``{"name", "kwargs"}`` that rebuild the model from the registry, stored in
            checkpoints so ``spikegrad eval`` can load them.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset,
        config: Config | None = None,
        *,
        components: Sequence[Component] = (),
        out_dir: str | Path | None = None,
        augment: Callable[[Tensor], Tensor] | None = None,
        model_args: dict[str, Any] | None = None,
        verbose: bool = True,
    ) -> None:
        self.config = config if config is not None else Config()
        train = self.config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        seed_everything(train.seed)
        self.device = resolve_device(train.device)
        self.model = model.to(self.device)
        self.components = list(components)
        owners = [c for c in self.components if type(c).compute_loss is not Component.compute_loss]
        if len(owners) > 1:
            raise UserError("only one training component may own the loss, got "
                            f"{[c.name for c in owners]}")
        self.augment = augment
        self.model_args = model_args
        self.verbose = verbose
        self.out_dir = Path(out_dir) if out_dir is not None else None
        generator = torch.Generator().manual_seed(train.seed)
        pin = self.device.type == "cuda"
        workers = self.config.data.num_workers
        self.train_loader = DataLoader(
            train_set, batch_size=self.config.data.batch_size, shuffle=True, generator=generator,
            num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
            collate_fn=collate_for(train_set),
        )
        self.test_loader = DataLoader(
            test_set, batch_size=self.config.data.eval_batch_size, shuffle=False,
            num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
            collate_fn=collate_for(test_set),
        )
        if len(self.train_loader) == 0:
            raise UserError("the training set is empty")
        self.optimizer = build_optimizer(self.config, self.model.parameters())
        iters = len(self.train_loader)
        self.scheduler = self._build_scheduler()
        self.amp_dtype = None
        if train.amp:
            self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=train.amp and self.device.type == "cuda")
        self.epoch = 0
        self.iteration = 0
        self.total_iterations = train.epochs * iters
        self.best_test_acc = -1.0
        self.history: list[dict[str, Any]] = []
        #: evaluation averages the logits over t >= readout_start (a component may set it)
        self.readout_start = 0
        for component in self.components:
            component.attach(self)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        iters = len(self.train_loader)
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(self.config, it, iters)
        )

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
        train = self.config.train
        if train.loss == "tet":
            return tet_loss(outputs, targets, train.tet_lambda, train.tet_phi, train.label_smoothing)
        return mean_logit_cross_entropy(outputs, targets, train.label_smoothing)

    def compute_loss(self, inputs: Tensor, targets: Tensor) -> StepOutput:
        """The training loss of one batch: the owning component's, else :meth:`default_loss`."""
        for component in self.components:
            out = component.compute_loss(self, inputs, targets)
            if out is not None:
                return out
        outputs = self.model(inputs)  # (T, B, classes)
        if outputs.dim() != 3:
            raise UserError(f"the model must return per-time-step logits [T, B, classes], got "
                            f"shape {tuple(outputs.shape)}; add a time axis (outputs.unsqueeze(0))")
        return StepOutput(self.default_loss(outputs, targets), mean_over_time(outputs))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def to_device(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        return inputs, targets

    def train_step(self, inputs: Tensor, targets: Tensor) -> StepOutput:
        """One optimisation step on a batch already on the device (and augmented)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.compute_loss(inputs, targets)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"the training loss is {out.loss.item()} at iteration {self.iteration}; lower "
                "optim.lr or enable train.grad_clip"
            )
        if not out.backpropagated:
            self.scaler.scale(out.loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 gradient scaling
        if self.config.train.grad_clip:
            nn.utils.clip_grad_norm_(self.trained_parameters(), self.config.train.grad_clip)
        for component in self.components:
            component.on_backward_end(self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        for component in self.components:
            component.on_step_end(self)
        return out

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = self._progress(self.train_loader, f"epoch {epoch + 1}/{self.config.train.epochs}")
        for inputs, targets in batches:
            inputs, targets = self.to_device(inputs, targets)
            if self.augment is not None:
                inputs = self.augment(inputs)
            out = self.train_step(inputs, targets)
            n = targets.shape[0]
            loss_sum += out.loss.item() * n
            correct += int((out.logits.argmax(1) == targets).sum())
            seen += n
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen}

    def evaluate(self, loader: DataLoader | None = None) -> dict[str, Any]:
        """Accuracy, loss and mean firing rate of the model on ``loader`` (the test set)."""
        return evaluate_model(self.model, loader if loader is not None else self.test_loader,
                              self.device, self.amp_dtype, self.config.analysis,
                              self.readout_start)

    # ------------------------------------------------------------------ the run

    def method_name(self) -> str:
        """``ann``, or the surrogate's name, refined by each component (``dspike+shortcut``)."""
        kind = getattr(self.model, "kind", "snn")
        if kind == "ann":
            name = "ann"
        else:
            names = {getattr(m.surrogate, "registry_name", type(m.surrogate).__name__.lower())
                     for m in self.model.modules() if isinstance(m, SpikingNeuron)}
            name = names.pop() if len(names) == 1 else "snn"
        for component in self.components:
            name = component.method_name(name)
        return name

    def fit(self) -> dict[str, Any]:
        """Train for ``train.epochs`` epochs, evaluating after each; returns the summary."""
        train = self.config.train
        self._prepare_out_dir()
        tensorboard = None
        if self.out_dir is not None and self.config.analysis.tensorboard:
            from spikegrad.tensorboard_log import TensorBoardLogger

            tensorboard = TensorBoardLogger(self.out_dir / "tensorboard")
        start = time.perf_counter()
        train_seconds = 0.0
        for epoch in range(self.epoch, train.epochs):
            self.epoch = epoch
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            for component in self.components:
                row.update(component.on_epoch_start(self, epoch))
            tic = time.perf_counter()
            row.update(self.train_one_epoch(epoch))
            row["seconds"] = time.perf_counter() - tic
            train_seconds += row["seconds"]
            row.update(self.evaluate())
            detail = row.pop("analysis", None)
            if detail is not None:
                row.update(epoch_fields(detail))
            for component in self.components:
                row.update(component.epoch_metrics(self))
            self.epoch = epoch + 1
            self.history.append(row)
            self._log_epoch(row)
            improved = row["test_acc"] > self.best_test_acc
            self.best_test_acc = max(self.best_test_acc, row["test_acc"])
            self._save(row, improved)
            if self.out_dir is not None and detail is not None:
                write_analysis(self.out_dir, detail, epoch + 1)
            if tensorboard is not None:
                tensorboard.log_epoch(row)
                tensorboard.log_gradients(self.out_dir / "gradients.jsonl")
        if tensorboard is not None:
            tensorboard.close()
        summary = {
            "method": self.method_name(),
            "name": self.config.name,
            "best_test_acc": self.best_test_acc,
            "final_test_acc": self.history[-1]["test_acc"] if self.history else None,
            "epochs": self.epoch,
            "wall_seconds": time.perf_counter() - start,
            "train_seconds": train_seconds,
            "params": sum(p.numel() for p in self.model.parameters()),
            "firing_rate": self.history[-1]["firing_rate"] if self.history else None,
            "T": getattr(self.model, "T", None),
        }
        if self.out_dir is not None:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ output

    def _progress(self, loader: DataLoader, desc: str):
        if self.verbose and self.config.train.progress and sys.stderr.isatty():
            from tqdm import tqdm

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
        print(
            f"epoch {row['epoch']:>3}/{self.config.train.epochs}  loss {row['train_loss']:.4f}  "
            f"train {100 * row['train_acc']:5.1f}%  test {100 * row['test_acc']:5.1f}%  "
            f"lr {row['lr']:.3g}" + (f"  rate {rate:.3f}" if rate is not None else "")
            + extras + f"  {row['seconds']:.1f}s",
            flush=True,
        )

    def _prepare_out_dir(self) -> None:
        if self.out_dir is None:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write to the run folder {str(self.out_dir)!r}: {exc}") from exc
        (self.out_dir / "config.yaml").write_text(self.config.to_yaml())
        if self.epoch == 0:
            (self.out_dir / "metrics.jsonl").write_text("")

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the model weights."""
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
        }

    def _save(self, row: dict[str, Any], improved: bool) -> None:
        if self.out_dir is None:
            return
        with (self.out_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        state = self.checkpoint_state()
        save_checkpoint(self.out_dir / "last.pt", self.model, self.model_args, **state)
        if improved:
            save_checkpoint(self.out_dir / "best.pt", self.model, self.model_args, **state)
