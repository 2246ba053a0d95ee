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
from spikegrad.config import Config
from spikegrad.data import build_augmentation
from spikegrad.errors import UserError
from spikegrad.methods.registry import method, run_name, unused_note
from spikegrad.rundir import PYTHON_TERMS, Terms, claim, run_state
from spikegrad.trainer import Trainer, resolve_device

__all__ = ["RunParts", "build_components", "build_parts", "model_arguments", "prepare_teacher",
           "teacher_state", "train"]


def prepare_teacher(config: Config, out_dir: str | Path | None, verbose: bool = True) -> nn.Module | None:
    """The LTL teacher that must be trained first (``ltl.teacher_recipe``), else None.

    It trains into ``<out_dir>/teacher`` (a temporary folder without ``out_dir``). Whether a
    teacher there is finished is read from its own checkpoint (:func:`teacher_state`): a
    finished one with the same config is reused, one stopped half-way continues, and one
    trained with another config is replaced.
    """
    ltl = config.ltl
    if not method("ltl").enabled(config, None) or ltl.teacher_checkpoint is not None \
            or ltl.teacher_recipe is None:
        return None  # none needed, or loaded from its checkpoint by build.build_components
    teacher = build.teacher_config(ltl, config.data)
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _train_teacher(teacher, Path(tmp), verbose)
    return _train_teacher(teacher, Path(out_dir) / "teacher", verbose)


def teacher_state(config: Config, folder: Path) -> tuple[str, list[str]]:
    """Where the teacher run in ``folder`` stands (:func:`spikegrad.rundir.run_state`, from its
    ``last.pt`` alone): ``"finished"`` (reused), ``"stopped"`` (it continues), ``"other"``
    with the differences (trained anew) or ``"none"``; a teacher checkpoint that cannot be
    read says how to train the teacher again."""
    try:
        return run_state(folder, config)
    except UserError as exc:
        raise UserError(f"the LTL teacher cannot be read: {exc}; or delete {str(folder)!r} to train "
                        "the teacher again") from exc


def _train_teacher(config: Config, folder: Path, verbose: bool) -> nn.Module:
    if not config.name:  # as train() names it
        config = config.with_overrides({"name": run_name(config)})
    state, differences = teacher_state(config, folder)
    if state != "finished":
        if verbose:
            doing = {"stopped": "continuing", "none": "training",
                     "other": "training anew (the one there had " + "; ".join(differences) + ")"}
            print(f"== LTL teacher: {doing[state]} {config.name or 'the ANN'} in {folder}", flush=True)
        if state == "stopped":
            train(config, folder, verbose=verbose, resume_from=folder / "last.pt")
        else:  # nothing of another teacher may stay (a summary.json, a best.pt)
            train(config, folder, verbose=verbose, overwrite=True)
        if teacher_state(config, folder)[0] != "finished":
            raise UserError(f"the LTL teacher in {str(folder)!r} did not finish; run the same command "
                            "again to continue it")
    model, _ = load_model(folder / "last.pt")
    return model


def build_components(
    config: Config, model: nn.Module | None, out_dir: str | Path | None = None, verbose: bool = True
) -> list[Component]:
    """:func:`spikegrad.build.build_components`, after training an LTL teacher recipe into
    ``out_dir/teacher`` if the config names one; ``verbose`` also prints :func:`unused_note`."""
    components = build.build_components(config, model, teacher=prepare_teacher(config, out_dir, verbose))
    note = unused_note(config)
    if verbose and note:
        print(note, flush=True)
    return components


def train(config: Config, out_dir: str | Path | None, verbose: bool = True,
          resume_from: str | Path | None = None, allow_config_change: bool = False,
          overwrite: bool = False, *, terms: Terms = PYTHON_TERMS) -> dict[str, Any]:
    """Train the run described by ``config`` into ``out_dir``; returns its summary.

    ``resume_from``: a checkpoint to continue from (see :meth:`Trainer.resume`).
    ``overwrite``: an ``out_dir`` that already holds another run is refused (False) unless the
    run continues from it (``resume_from`` in it); True removes that run's files first
    (:func:`spikegrad.rundir.check_destination`, :func:`spikegrad.rundir.remove_run`), as
    ``spikegrad train --overwrite`` does. ``terms``: how those errors name the ways out
    (``spikegrad train`` passes its flags). The folder is locked for the whole run, an LTL
    teacher's training included (:mod:`spikegrad.runlock`). A config without a ``name`` gets
    its default one (:func:`~spikegrad.methods.registry.run_name`).
    """
    if not config.name:
        config = config.with_overrides({"name": run_name(config)})
    # a train() inside another (an LTL teacher's) leaves the group to the one that joined it
    owns_group = not distributed.joined()
    dist = distributed.setup(resolve_device(config.train.device), config.distributed)
    try:
        with claim(out_dir, dist, resume_from=resume_from, overwrite=overwrite, terms=terms, verbose=verbose):
            parts = build_parts(config)
            trainer = Trainer(
                parts.model,
                parts.train_set,
                parts.test_set,
                config,
                components=build_components(config, parts.model, out_dir, verbose and dist.is_main),
                out_dir=out_dir,
                augment=build_augmentation(config.data.augment, parts.info),
                model_args=parts.model_args,
                verbose=verbose,
                overwrite=None,  # claim() has applied the guard
                terms=terms,
            )
            try:
                if resume_from is not None:
                    trainer.resume(resume_from, allow_config_change)
                return trainer.fit()
            finally:
                del trainer  # its DDP wrapper goes before the process group
    finally:
        if owns_group:
            distributed.shutdown()
