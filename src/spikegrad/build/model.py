"""``config.model`` and a dataset -> a registered network."""

from __future__ import annotations

from typing import Any

from torch import nn

from spikegrad import encoders, lean, models
from spikegrad.config import Config
from spikegrad.data import DatasetInfo
from spikegrad.errors import UserError
from spikegrad.models import ModelSpec
from spikegrad.models.common import codes_static_samples_only
from spikegrad.seeding import seed_everything

__all__ = ["build_model", "model_arguments", "model_spec"]


def model_spec(config: Config, info: DatasetInfo) -> ModelSpec:
    """The shared arguments of the network for ``config.model`` and the dataset."""
    m = config.model
    return ModelSpec(num_classes=info.num_classes, in_channels=info.in_channels,
                     input_size=info.input_size, T=info.time_steps or m.T, kind=m.kind,
                     neuron=m.neuron.kwargs(), surrogate=dict(m.surrogate), width=m.width,
                     encoder=m.encoder, activation_max=m.activation_max)


def model_arguments(config: Config, info: DatasetInfo) -> dict[str, Any]:
    """``{"name", "kwargs"}`` for :func:`spikegrad.models.create` (what checkpoints store to
    rebuild the model): the :func:`model_spec` fields, then ``model.options``."""
    spec = model_spec(config, info)
    kwargs = {name: getattr(spec, name) for name in ModelSpec.names()}
    kwargs.update(config.model.options)
    return {"name": config.model.name, "kwargs": kwargs}


def check_encoder_of_frames(config: Config, info: DatasetInfo) -> None:
    """Refuse an encoder of static samples (Poisson, latency) for a dataset of time-major
    frames, which the network passes through un-coded: the setting could not apply."""
    if codes_static_samples_only(encoders.create(config.model.encoder, info.time_steps or 1)):
        encoder = config.model.encoder
        name = encoder if isinstance(encoder, str) else encoder.get("name")
        raise UserError(
            f"model.encoder {name!r} codes static samples, but dataset {config.data.name!r} gives "
            f"time-major frames ({info.time_steps} per sample), which the network would pass "
            "through un-coded; use model.encoder direct (the frames as they are) or delta (a "
            "code of sequences)")


def build_model(config: Config, info: DatasetInfo) -> tuple[nn.Module, dict[str, Any]]:
    """The network ``config.model`` names for a dataset, and :func:`model_arguments`.

    The initial weights depend on ``train.seed`` alone (every generator is seeded first).
    """
    if info.time_steps is not None and info.time_steps != config.model.T:
        raise UserError(
            f"model.T is {config.model.T} but dataset {config.data.name!r} gives {info.time_steps} "
            "frames per sample; set model.T to match"
        )
    if info.time_steps is not None:
        check_encoder_of_frames(config, info)
    model_args = model_arguments(config, info)
    seed_everything(config.train.seed)
    try:
        model = models.create(model_args["name"], **model_args["kwargs"])
    except UserError as exc:
        raise UserError(f"config model: {exc}") from exc
    if config.model.lean_memory:
        lean.make_lean(model)
    return model, model_args
