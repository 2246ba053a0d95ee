"""From a :class:`~spikegrad.config.Config` to a trained run: datasets, model, components."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from spikegrad import distributed, lean, models
from spikegrad.config import Config
from spikegrad.data import DatasetInfo, build_augmentation, build_datasets
from spikegrad.data.splits import split_training_set
from spikegrad.diagnostics import GradientDiagnostics
from spikegrad.errors import UserError
from spikegrad.methods.shortcut import ShortcutBackprop
from spikegrad.trainer import Component, Trainer, seed_everything


@dataclass
class RunParts:
    """What a run trains: ``test_set`` is the set it evaluates on, which is the validation
    split cut from the training set when ``data.validation > 0`` (``eval_split`` says which)."""

    model: nn.Module
    model_args: dict[str, Any]
    train_set: Dataset
    test_set: Dataset
    info: DatasetInfo
    eval_split: str = "test"


def model_arguments(config: Config, info: DatasetInfo) -> dict[str, Any]:
    """``{"name", "kwargs"}`` for :func:`spikegrad.models.create` from the config and dataset."""
    m = config.model
    kwargs: dict[str, Any] = {
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "T": info.time_steps or m.T,
        "kind": m.kind,
        "neuron": m.neuron.kwargs(),
        "surrogate": dict(m.surrogate),
        "width": m.width,
        "encoder": m.encoder,
        "activation_max": m.activation_max,
    }
    accepted = models.entry(m.name).arguments()
    if "input_size" in accepted:
        kwargs["input_size"] = info.input_size
    kwargs.update(m.options)
    return {"name": m.name, "kwargs": kwargs}


def build_parts(config: Config) -> RunParts:
    """Datasets and model for a config; bad names or options raise a :class:`UserError`.

    ``data.subset`` and ``data.validation`` cut the training set (seeded by
    ``data.split_seed``, see :mod:`spikegrad.data.splits`); with a validation split the test
    set is dropped and never evaluated.
    """
    data = config.data
    options = dict(data.options)
    if data.root is not None:
        options["root"] = data.root
    try:
        train_set, test_set, info = build_datasets(data.name, **options)
    except (FileNotFoundError, NotADirectoryError) as exc:  # a builder without its own message
        raise UserError(f"dataset {data.name!r}: {exc}; set data.root to the folder that holds "
                        "its files") from exc
    train_set, validation_set = split_training_set(train_set, subset=data.subset,
                                                   validation=data.validation, seed=data.split_seed)
    eval_split = "test"
    if validation_set is not None:
        test_set, eval_split = validation_set, "validation"
    if info.time_steps is not None and info.time_steps != config.model.T:
        raise UserError(
            f"model.T is {config.model.T} but dataset {data.name!r} gives {info.time_steps} frames "
            "per sample; set model.T to match"
        )
    model_args = model_arguments(config, info)
    seed_everything(config.train.seed)  # the initial weights depend on the seed alone
    try:
        model = models.create(model_args["name"], **model_args["kwargs"])
    except UserError as exc:
        raise UserError(f"config model: {exc}") from exc
    if config.model.lean_memory:
        lean.make_lean(model)
    return RunParts(model, model_args, train_set, test_set, info, eval_split)


def build_components(
    config: Config, model: nn.Module, out_dir: str | Path | None = None, verbose: bool = True
) -> list[Component]:
    """The method components a config asks for, plus gradient diagnostics for every run
    (unless ``diagnostics.gradient_interval`` is 0).

    ``out_dir`` is the run folder: an LTL teacher recipe trains into ``out_dir/teacher``.
    """
    components: list[Component] = []
    if config.ltl.mode != "none":
        from spikegrad.methods.ltl import build_ltl

        components.append(build_ltl(config, out_dir, verbose))
    if config.dspike.adaptive and config.model.kind == "snn":  # the ANN twin has no surrogate
        from spikegrad.methods.dspike import AdaptiveTemperature

        components.append(AdaptiveTemperature(config.dspike, seed=config.train.seed))
    if config.diagnostics.gradient_interval:
        components.append(GradientDiagnostics(config.diagnostics.gradient_interval,
                                              config.diagnostics.histogram_bins))
    if config.shortcut.enabled:
        components.append(ShortcutBackprop.from_config(config.shortcut, seed=config.train.seed))
    return components


def train(config: Config, out_dir: str | Path | None, verbose: bool = True,
          resume_from: str | Path | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Train the run described by ``config`` into ``out_dir``; returns its summary.

    ``resume_from``: a checkpoint to continue from (see :meth:`Trainer.resume`).
    """
    parts = build_parts(config)
    trainer = Trainer(
        parts.model,
        parts.train_set,
        parts.test_set,
        config,
        components=build_components(config, parts.model, out_dir, verbose),
        out_dir=out_dir,
        augment=build_augmentation(config.data.augment, parts.info),
        model_args=parts.model_args,
        verbose=verbose,
    )
    try:
        if resume_from is not None:
            trainer.resume(resume_from, allow_config_change)
        return trainer.fit()
    finally:
        del trainer  # its DDP wrapper goes before the process group
        distributed.shutdown()
