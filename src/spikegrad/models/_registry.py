"""Model registry: ``register_model(name, cls, **fixed)``; ``create(name, **kwargs)`` builds.

A registered entry is a network class (or function) taking a :class:`ModelSpec` (the
arguments every network shares) and keyword arguments of its own architecture, plus the
ones that define the variant, e.g. ``register_model("resnet18", SpikingResNet,
blocks=(2, 2, 2, 2))``. ``create`` takes both kinds of argument as keywords (the form stored
in checkpoints): the :class:`ModelSpec` fields go into the spec, the rest to the builder.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from spikegrad.errors import UserError, did_you_mean, unknown_name_error
from spikegrad.models.common import DEFAULT_SPEC, ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: the defaults of the shared arguments for this network
    spec: ModelSpec = DEFAULT_SPEC

    def own_arguments(self) -> list[str]:
        """The builder's own keyword arguments a user may pass (not fixed by the variant)."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in self.fixed and p not in ("self", "spec")]

    def arguments(self) -> list[str]:
        """Every keyword argument a user may pass: the shared ones, then the network's own."""
        return [*ModelSpec.names(), *self.own_arguments()]


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], description: str = "", *,
    spec: ModelSpec = DEFAULT_SPEC, **fixed: Any,
) -> None:
    """Register ``builder(spec, **fixed, **user_kwargs)`` under ``name``; ``spec`` gives the
    defaults of the shared arguments (e.g. one input channel for the digits)."""
    if name in _MODELS:
        raise RuntimeError(f"model {name!r} is registered twice")
    doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
    _MODELS[name] = ModelEntry(name, builder, dict(fixed), doc, spec)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def entry(name: str) -> ModelEntry:
    """The registry entry called ``name``; a clear error lists the valid names."""
    if name not in _MODELS:
        raise unknown_name_error("model", name, _MODELS)
    return _MODELS[name]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; an unknown keyword argument is named in the error."""
    model = entry(name)
    accepted = model.arguments()
    for key in kwargs:
        if key not in accepted:
            raise UserError(
                f"model {name!r} has no argument {key!r}{did_you_mean(key, accepted)}; "
                f"it accepts: {', '.join(accepted)}"
            )
    shared = set(ModelSpec.names())
    spec = dataclasses.replace(model.spec, **{k: v for k, v in kwargs.items() if k in shared})
    own = {k: v for k, v in kwargs.items() if k not in shared}
    return model.builder(spec, **model.fixed, **own)
