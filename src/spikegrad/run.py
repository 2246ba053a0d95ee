"""From a :class:`~spikegrad.config.Config` to a trained run.

The objects come from :mod:`spikegrad.build`; this module orchestrates: it trains an LTL
teacher recipe first when the config names one, then the run itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from spikegrad import build, distributed
from spikegrad.build import RunParts, build_parts, model_arguments
from spikegrad.checkpoint import load_model
from spikegrad.component import Component
from spikegrad.config import Config, load_config
from spikegrad.data import build_augmentation
from spikegrad.methods.registry import method, run_name
from spikegrad.trainer import Trainer

__all__ = ["RunParts", "build_components", "build_parts", "model_arguments", "prepare_teacher", "train"]


def prepare_teacher(config: Config, out_dir: str | Path | None, verbose: bool = True) -> nn.Module | None:
    """The LTL teacher that must be trained first (``ltl.teacher_recipe``), else None.

    It trains into ``<out_dir>/teacher`` (a temporary folder without ``out_dir``); a finished
    teacher run there with the same config is reused, one stopped half-way continues.
    """
    ltl = config.ltl
    if not method("ltl").enabled(config, None) or ltl.teacher_checkpoint is not None \
            or ltl.teacher_recipe is None:
        return None  # none needed, or loaded from its checkpoint by build.build_components
    teacher = build.teacher_config(ltl)
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _train_teacher(teacher, Path(tmp), verbose)
    return _train_teacher(teacher, Path(out_dir) / "teacher", verbose)


def _train_teacher(config: Config, folder: Path, verbose: bool) -> nn.Module:
    if not config.name:  # as train() names it, so that the stored config.yaml compares equal
        config = config.with_overrides({"name": run_name(config)})
    started = (folder / "last.pt").is_file() and (folder / "config.yaml").is_file() \
        and load_config(folder / "config.yaml") == config
    if not (started and (folder / "summary.json").is_file()):
        resume = folder / "last.pt" if started else None  # a teacher run stopped half-way
        if verbose:
            print(f"== LTL teacher: {'continuing' if resume else 'training'} "
                  f"{config.name or 'the ANN'} in {folder}", flush=True)
        # a teacher run of another config in the folder is trained over
        train(config, folder, verbose=verbose, resume_from=resume, overwrite=True)
    model, _ = load_model(folder / "last.pt")
    return model


def build_components(
    config: Config, model: nn.Module | None, out_dir: str | Path | None = None, verbose: bool = True
) -> list[Component]:
    """:func:`spikegrad.build.build_components`, after training an LTL teacher recipe into
    ``out_dir/teacher`` if the config names one."""
    return build.build_components(config, model, teacher=prepare_teacher(config, out_dir, verbose))


def train(config: Config, out_dir: str | Path | None, verbose: bool = True,
          resume_from: str | Path | None = None, allow_config_change: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Train the run described by ``config`` into ``out_dir``; returns its summary.

    ``resume_from``: a checkpoint to continue from (see :meth:`Trainer.resume`);
    ``overwrite``: start over in an ``out_dir`` that already holds a run (refused otherwise).
    A config without a ``name`` gets its default one (:func:`~spikegrad.methods.registry.run_name`).
    """
    if not config.name:
        config = config.with_overrides({"name": run_name(config)})
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
        overwrite=overwrite,
    )
    try:
        if resume_from is not None:
            trainer.resume(resume_from, allow_config_change)
        return trainer.fit()
    finally:
        del trainer  # its DDP wrapper goes before the process group
        distributed.shutdown()
