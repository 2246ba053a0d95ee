"""Runs stopped half-way in-process: a checkpoint mid-epoch, as a scheduler's SIGTERM leaves."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from spikegrad.build import build_components, build_parts
from spikegrad.component import Component, TrainingContext
from spikegrad.config import Config
from spikegrad.resume import TrainingStopped
from spikegrad.trainer import Trainer


class StopAtIteration(Component):
    """Sends this process SIGTERM once training reaches ``iteration``: the trainer then saves
    ``last.pt`` and raises :class:`~spikegrad.resume.TrainingStopped`."""

    name = "stop_at_iteration"

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_step_end(self, ctx: TrainingContext) -> None:
        if ctx.iteration == self.iteration:
            os.kill(os.getpid(), signal.SIGTERM)


def stopped_run(config: Config, folder: Path, iteration: int, overwrite: bool | None = False) -> None:
    """Train ``config`` into ``folder`` (the Trainer, in this process; ``overwrite`` as the
    Trainer takes it, None writing over another run's files) and stop it at ``iteration``."""
    parts = build_parts(config)
    components = [*build_components(config, parts.model), StopAtIteration(iteration)]
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, components=components,
                      out_dir=folder, model_args=parts.model_args, verbose=False, overwrite=overwrite)
    try:
        trainer.fit()
    except TrainingStopped:
        return
    raise AssertionError(f"the run ended before iteration {iteration}")
