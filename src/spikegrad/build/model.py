"""``config.model`` and a dataset -> a registered network."""

from __future__ import annotations

from typing import Any

from torch import nn

from spikegrad import lean, models
from spikegrad.config import Config
from spikegrad.data import DatasetInfo
from spikegrad.errors import UserError
from spikegrad.seeding import seed_everything

__all__ = ["build_model", "model_arguments"]


def model_arguments(config: Config, info: DatasetInfo) -> dict[str, Any]:
    """``{"name", "kwargs"}`` for :func:`spikegrad.models.create` from the config and dataset
    (what checkpoints store to rebuild the model)."""
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
    if "input_size" in models.entry(m.name).arguments():
        kwargs["input_size"] = info.input_size
    kwargs.update(m.options)
    return {"name": m.name, "kwargs": kwargs}


def build_model(config: Config, info: DatasetInfo) -> tuple[nn.Module, dict[str, Any]]:
    """The network ``config.model`` names for a dataset, and :func:`model_arguments`.

    The initial weights depend on ``train.seed`` alone (every generator is seeded first).
    """
    if info.time_steps is not None and info.time_steps != config.model.T:
        raise UserError(
            f"model.T is {config.model.T} but dataset {config.data.name!r} gives {info.time_steps} "
            "frames per sample; set model.T to match"
        )
    model_args = model_arguments(config, info)
    seed_everything(config.train.seed)
    try:
        model = models.create(model_args["name"], **model_args["kwargs"])
    except UserError as exc:
        raise UserError(f"config model: {exc}") from exc
    if config.model.lean_memory:
        lean.make_lean(model)
    return model, model_args
