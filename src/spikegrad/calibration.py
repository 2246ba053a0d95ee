"""Calibrate a trained SNN on imperfect devices with a budget of optimizer steps.

The devices (:mod:`spikegrad.devices`) are applied to the network, then one of:

- ``none``: no update;
- ``ltl-online``: ``steps`` steps of online local tandem learning against the ANN teacher
  (local in layers and in time: what an on-chip learning circuit can do);
- ``bptt``: ``steps`` steps of surrogate-gradient BPTT fine-tuning (the trainer's default
  loss), the off-chip reference.

Both updating methods run in the one :class:`~spikegrad.trainer.Trainer` for one epoch over
``steps · batch_size`` training samples (seeded random permutations of the training set,
one after another when the steps need more samples than it holds), so exactly ``steps``
optimizer steps, with a constant learning rate, no weight decay, and
:class:`~spikegrad.devices.DeviceSync` re-applying the devices after every step. Online
LTL is built from the stored ``ltl`` section (its percentile, layer weights, ``T_warm`` and
distillation) with ``mode: online``; no other method runs.
Accuracy is always read out the same way (logits averaged over
``t >= readout_start``), so the methods compare on equal terms.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from spikegrad.build import build_components
from spikegrad.config import Config, DiagnosticsConfig, DspikeConfig, LTLConfig, ShortcutConfig
from spikegrad.data import DatasetInfo, build_augmentation
from spikegrad.data.loader import collate_for
from spikegrad.devices import DeviceModel, DeviceSync, ImperfectDevices
from spikegrad.errors import UserError, unknown_name_error
from spikegrad.evaluation import evaluate_model
from spikegrad.trainer import Trainer, resolve_device

__all__ = ["CALIBRATION_METHODS", "calibrate", "calibration_indices"]

CALIBRATION_METHODS = ("none", "ltl-online", "bptt")


def calibration_config(config: Config, lr: float | None = None, method: str = "bptt") -> Config:
    """``config`` for a calibration run: one epoch, constant learning rate, no weight decay;
    online LTL (on the trained student, no re-initialisation) for ``ltl-online``, no other method
    (the sections of the methods it switches off back to their defaults, which keep none of the
    trained run's settings of them)."""
    online = method == "ltl-online"
    off = {"dspike": DspikeConfig(), "shortcut": ShortcutConfig(),
           "diagnostics": DiagnosticsConfig(gradient_interval=0), **({} if online else {"ltl": LTLConfig()})}
    overrides: dict[str, Any] = {"train.epochs": 1, "schedule.name": "constant",
                                 "schedule.warmup_epochs": 0.0, "optim.weight_decay": 0.0,
                                 "train.progress": False}
    if online:
        overrides.update({"ltl.mode": "online", "ltl.student_init": "random"})
    if lr is not None:
        overrides["optim.lr"] = lr
    return dataclasses.replace(config, **off).with_overrides(overrides)


def calibration_indices(available: int, size: int, seed: int) -> list[int]:
    """``size`` sample indices: seeded permutations of ``range(available)``, one after another."""
    if available <= 0:
        raise UserError("calibration needs training samples; the training set is empty")
    generator = torch.Generator().manual_seed(seed)
    rounds = -(-size // available)
    return torch.cat([torch.randperm(available, generator=generator) for _ in range(rounds)])[:size].tolist()


def calibrate(
    model: nn.Module,
    device_model: DeviceModel,
    train_set: Dataset,
    test_set: Dataset,
    config: Config,
    method: str,
    steps: int,
    teacher: nn.Module | None = None,
    readout_start: int = 0,
    lr: float | None = None,
    info: DatasetInfo | None = None,
) -> dict[str, Any]:
    """Apply ``device_model`` to ``model`` (in place), calibrate, and measure test accuracy.

    Returns ``{"method", "devices", "steps", "acc_fault_free", "acc_before", "acc_after"}``:
    the test accuracy without the faults, with them before any update, and after ``steps``
    optimizer steps (the training set is cycled when it has fewer samples). ``teacher`` (the
    ANN twin) is needed by ``ltl-online``. ``lr`` overrides ``optim.lr``. ``info`` (the
    datasets' :class:`~spikegrad.data.DatasetInfo`) is needed by augmentations that work on
    pixel values (``autoaugment``).
    """
    if method not in CALIBRATION_METHODS:
        raise unknown_name_error("calibration method", method, CALIBRATION_METHODS)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"the calibration budget (--steps) must be a whole number >= 0, got {steps!r}")
    if method == "ltl-online" and teacher is None:
        raise UserError("ltl-online calibration needs the ANN teacher")
    config = calibration_config(config, lr, method)
    device = resolve_device(config.train.device)
    model.to(device)
    test_loader = DataLoader(test_set, batch_size=config.data.eval_batch_size,
                             collate_fn=collate_for(test_set))

    def accuracy() -> float:
        return float(evaluate_model(model, test_loader, device, readout_start=readout_start)["test_acc"])

    result: dict[str, Any] = {"method": method, "devices": device_model.describe(), "steps": 0,
                              "acc_fault_free": accuracy()}
    devices = ImperfectDevices(model, device_model)
    result["acc_before"] = accuracy()
    if method != "none" and steps > 0:
        subset = Subset(train_set, calibration_indices(len(train_set), steps * config.data.batch_size,
                                                       config.train.seed))
        components = [*build_components(config, model, teacher=teacher), DeviceSync(devices)]
        trainer = Trainer(model, subset, test_set, config, components=components,
                          augment=build_augmentation(config.data.augment, info), verbose=False)
        trainer.train_one_epoch(0)
        result["steps"] = trainer.iteration
    result["acc_after"] = accuracy()
    return result
