"""Model registry: ``register_model(name, cls, **fixed)``; ``create(name, **kwargs)`` builds.

A registered entry is a network class (or function) taking a :class:`ModelSpec` (the
arguments every network shares) and keyword arguments of its own architecture, plus the
ones that define the variant, e.g. ``register_model("resnet18", SpikingResNet,
blocks=(2, 2, 2, 2))``. ``create`` takes both kinds of argument as keywords (the form stored
in checkpoints): the :class:`ModelSpec` fields go into the spec, the rest to the builder.

:func:`create` checks every argument before building: its name against the spec's fields and
the constructor's signature, its value against the annotated type (``batch_norm: bool`` refuses ``"maybe"``;
numbers must be finite), and sizes against :data:`SIZE_LIMITS` (``width: -1`` or
``num_classes: 0`` are refused, as are sizes that could not fit in memory).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from spikegrad.annotated import conforms, type_hints, type_text
from spikegrad.errors import UserError, did_you_mean, unknown_name_error
from spikegrad.models.common import DEFAULT_SPEC, ModelSpec, SpikingNetwork, activation_factory


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


#: ``(exclusive lower bound, inclusive upper bound)`` of size arguments, by name; a sequence
#: (``channels``, ``blocks``, VGG ``layers``) has the bound on each of its numbers
SIZE_LIMITS: dict[str, tuple[float, float]] = {
    "num_classes": (0, 1 << 20), "in_channels": (0, 1 << 16), "T": (0, 100_000),
    "width": (0, 64.0), "activation_max": (0, math.inf), "input_size": (0, 1 << 16),
    "depth": (0, 1000), "stem_channels": (0, 1 << 16), "hidden_fc": (0, 1 << 20),
    "channels": (0, 1 << 16), "blocks": (0, 1000), "layers": (0, 1 << 16),
}


def _show(bound: float) -> str:
    return str(int(bound)) if math.isfinite(bound) and float(bound).is_integer() else f"{bound:g}"


def _numbers(value: Any) -> list[float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def check_arguments(name: str, builder: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse an argument of the wrong type, a non-finite number or a size out of range: the
    shared ones against the :class:`ModelSpec` fields, the others against ``builder``."""
    own = type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    hints = {**own, **type_hints(ModelSpec)}
    for key, value in kwargs.items():
        if key in hints and not conforms(value, hints[key]):
            raise UserError(f"model {name!r} argument {key!r} must be {type_text(hints[key])}, got "
                            f"{value!r} ({type(value).__name__})")
        values = _numbers(value)
        if not all(math.isfinite(v) for v in values):
            raise UserError(f"model {name!r} argument {key!r} must be finite, got {value!r}")
        if key in SIZE_LIMITS:
            low, high = SIZE_LIMITS[key]
            bad = next((v for v in values if not low < v <= high), None)
            if bad is not None:
                raise UserError(f"model {name!r} argument {key!r} must lie in ({_show(low)}, "
                                f"{_show(high)}], got {value!r}")


#: what a spiking network's output is: the classifier's per-step values, or the spikes of a
#: neuron layer after it (same neuron and surrogate as the network; for spike-count losses)
READOUTS = ("logits", "spikes")


def create(name: str, readout: str = "logits", **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; an unknown keyword argument or a value of the wrong
    type or range is named in the error.

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
    check_arguments(name, model.builder, kwargs)
    shared = set(ModelSpec.names())
    spec = dataclasses.replace(model.spec, **{k: v for k, v in kwargs.items() if k in shared})
    own = {k: v for k, v in kwargs.items() if k not in shared}
    try:
        built = model.builder(spec, **model.fixed, **own)
    except (MemoryError, OverflowError) as exc:
        raise UserError(f"model {name!r} with {kwargs} does not fit in memory ({exc}); choose "
                        "smaller sizes (width, channels, input_size)") from exc
    if readout == "spikes":
        if not isinstance(built, SpikingNetwork) or built.kind != "snn":
            raise UserError(f"readout 'spikes' needs a spiking network (kind snn); {name!r} with "
                            f"kind {spec.kind!r} reads out logits")
        built.output_neuron = activation_factory("snn", spec.neuron, spec.surrogate)()
    return built
