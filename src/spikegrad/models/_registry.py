"""Model registry: ``register_model(name, cls, **fixed)``; ``create(name, **kwargs)`` builds.

A registered entry is a class (or function) plus the arguments that define the variant,
e.g. ``register_model("resnet18", SpikingResNet, blocks=(2, 2, 2, 2))``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from spikegrad.errors import UserError, did_you_mean, unknown_name_error


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def arguments(self) -> list[str]:
        """The keyword arguments a user may pass (the builder's, minus the fixed ones)."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in self.fixed and p != "self"]


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], description: str = "", **fixed: Any
) -> None:
    """Register ``builder(**fixed, **user_kwargs)`` under ``name``."""
    if name in _MODELS:
        raise RuntimeError(f"model {name!r} is registered twice")
    doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
    _MODELS[name] = ModelEntry(name, builder, dict(fixed), doc)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def entry(name: str) -> ModelEntry:
    """The registry entry called ``name``; a clear error lists the valid names."""
    if name not in _MODELS:
        raise unknown_name_error("model", name, _MODELS)
    return _MODELS[name]


#: what a spiking network's output is: the classifier's per-step values, or the spikes of a
#: neuron layer after it (same neuron and surrogate as the network; for spike-count losses)
READOUTS = ("logits", "spikes")


def create(name: str, readout: str = "logits", **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; an unknown keyword argument is named in the error.

    ``readout="spikes"`` puts a spiking neuron layer after the classifier of a spiking
    network (``model.output_neuron``), so the outputs are spikes ``[T, B, classes]``.
    """
    model = entry(name)
    accepted = model.arguments()
    for key in kwargs:
        if key not in accepted:
            raise UserError(
                f"model {name!r} has no argument {key!r}{did_you_mean(key, accepted)}; "
                f"it accepts: {', '.join([*accepted, 'readout'])}"
            )
    if readout not in READOUTS:
        raise unknown_name_error("readout", readout, READOUTS)
    built = model.builder(**model.fixed, **kwargs)
    if readout == "spikes":
        from spikegrad.models.common import SpikingNetwork, activation_factory

        if not isinstance(built, SpikingNetwork) or built.kind != "snn":
            raise UserError(f"readout 'spikes' needs a spiking network (kind snn); {name!r} with "
                            f"kind {kwargs.get('kind', 'snn')!r} reads out logits")
        built.output_neuron = activation_factory("snn", kwargs.get("neuron"), kwargs.get("surrogate"))()
    return built
