"""A config -> datasets and model; a checkpoint -> model, payload and config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from spikegrad.build.model import build_model
from spikegrad.checkpoint import load_model
from spikegrad.config import Config, from_dict
from spikegrad.data import DatasetInfo
from spikegrad.data.from_config import check_split_seed, datasets_from_config, eval_split

__all__ = ["Checkpointed", "RunParts", "build_parts", "from_checkpoint"]


@dataclass
class RunParts:
    """What a run trains: the model (and the arguments that rebuild it) and its datasets.

    ``test_set`` is the set the run evaluates on: the validation split cut from the training
    set when ``data.validation > 0`` (``eval_split`` says which)."""

    model: nn.Module
    model_args: dict[str, Any]
    train_set: Dataset
    test_set: Dataset
    info: DatasetInfo
    eval_split: str = "test"


def build_parts(config: Config) -> RunParts:
    """Datasets (:func:`~spikegrad.data.from_config.datasets_from_config`, with its training-set
    cuts) and model for a config; bad names or options raise a :class:`UserError`."""
    check_split_seed(config.data)
    train_set, test_set, info = datasets_from_config(config.data)
    model, model_args = build_model(config, info)
    return RunParts(model, model_args, train_set, test_set, info, eval_split(config.data))


@dataclass
class Checkpointed:
    """A checkpoint read back: its model (weights loaded), the raw payload and its config."""

    model: nn.Module
    payload: dict[str, Any]
    config: Config


def from_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> Checkpointed:
    """The model, payload and stored config (with dotted ``overrides``) of a checkpoint."""
    model, payload = load_model(path)
    return Checkpointed(model, payload, from_dict(Config, payload["config"]).with_overrides(overrides))
