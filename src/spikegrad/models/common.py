"""Parts shared by every registered model: activations, units, and the network base class.

Every registered network is ``encoder -> features -> classifier``:

- ``encoder`` turns a static input ``[B, C, H, W]`` into ``[T, B, C, H, W]`` (direct,
  Poisson, latency or delta: :mod:`spikegrad.encoders`); time-major inputs (event frames,
  or what the temperature search encoded once) pass through unchanged, except into an
  encoder of sequences (delta); a config pairing event data with a Poisson or latency
  encoder is refused by :func:`spikegrad.build.build_model`.
- ``features`` is an ``nn.Sequential`` of *units*; each unit ends in one activation (a
  spiking neuron, or a clipped ReLU in the ANN twin). Shortcut branches attach to units by
  name; local tandem learning pairs the units of teacher and student one to one.
- ``classifier`` maps the last unit's output to per-time-step logits ``[T, B, classes]``.

``kind="ann"`` builds the ANN twin of the same architecture: ``T = 1``, and every neuron
replaced by ``ClippedReLU(activation_max)``.

What every registered network shares (classes, input, time steps, activation, width, batch
norm) is one :class:`ModelSpec`; each network's constructor takes a spec plus the arguments
of its own architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from spikegrad import encoders, neurons, surrogates
from spikegrad.errors import UserError
from spikegrad.layers import DirectEncoder, TimeDistributed

ActivationFactory = Callable[[], nn.Module]
NeuronSpec = Mapping[str, Any] | str | None
SurrogateSpec = Mapping[str, Any] | str | surrogates.Surrogate | None

KINDS = ("snn", "ann")


def surrogate_factory(spec: SurrogateSpec) -> Callable[[], surrogates.Surrogate]:
    """A function returning a fresh surrogate per neuron from a name, mapping or instance."""
    if spec is None:
        return surrogates.default
    if isinstance(spec, surrogates.Surrogate):
        return lambda: copy.deepcopy(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    params = dict(spec)
    name = params.pop("name", None)
    if name is None:
        raise UserError("a surrogate mapping needs a 'name' key, e.g. {'name': 'dspike'}")
    surrogates.create(name, **params)  # validate once, eagerly
    return lambda: surrogates.create(name, **params)


def activation_factory(
    kind: str = "snn",
    neuron: NeuronSpec = None,
    surrogate: SurrogateSpec = None,
    activation_max: float = 2.0,
) -> ActivationFactory:
    """A function returning a fresh activation module for each unit of a network.

    ``neuron`` is a type name or a mapping ``{"type": "lif", "leak": ..., ...}`` of
    :class:`spikegrad.neurons.SpikingNeuron` arguments; ``surrogate`` a name, mapping
    ``{"name": ..., **params}`` or instance (copied per neuron).
    """
    if kind not in KINDS:
        raise UserError(f"model kind must be one of {KINDS}, got {kind!r}")
    if kind == "ann":
        neurons.ClippedReLU(activation_max)  # validate
        return lambda: neurons.ClippedReLU(activation_max)
    params = {"type": "lif"} if neuron is None else (
        {"type": neuron} if isinstance(neuron, str) else dict(neuron)
    )
    neuron_type = params.pop("type", "lif")
    make_surrogate = surrogate_factory(surrogate)
    neurons.create(neuron_type, surrogate=make_surrogate(), **params)  # validate
    return lambda: neurons.create(neuron_type, surrogate=make_surrogate(), **params)


def make_encoder(encoder: str | Mapping[str, Any], T: int) -> nn.Module:
    """An encoder of the registry :mod:`spikegrad.encoders`: a name or ``{"name": ..., **options}``."""
    made = encoders.create(encoder, T)
    if getattr(made, "mode", None) == "on_off":
        raise UserError("the delta encoder's on_off mode doubles the input channels, which the "
                        "registered models' first layer does not take; use mode signed")
    return made


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by the width multiplier, at least 1."""
    return max(1, round(channels * width))


@dataclass(frozen=True)
class ModelSpec:
    """The arguments every registered network takes, with their defaults.

    Attributes:
        num_classes: output classes.
        in_channels: channels of one input sample.
        input_size: side of a (square) input image, or length of a 1-D signal (networks that
            need it size layers by it).
        T: time steps (``kind="ann"`` uses 1).
        kind: ``snn``, or ``ann`` for the ANN twin (clipped ReLU instead of neurons).
        neuron: neuron type name or mapping of :class:`spikegrad.neurons.SpikingNeuron` arguments.
        surrogate: surrogate name, mapping ``{"name", **params}`` or instance (copied per neuron);
            None: the default surrogate (:func:`spikegrad.surrogates.default`).
        width: channel width multiplier.
        encoder: a name of :mod:`spikegrad.encoders` (``direct`` repeats the input; ``poisson``,
            ``latency``, ``delta``) or a mapping ``{"name": ..., **options}``.
        activation_max: clip of the ANN twin's ReLU.
        batch_norm: batch norm after each weight layer (False: biased layers instead).
    """

    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    T: int = 4
    kind: str = "snn"
    neuron: NeuronSpec = None
    surrogate: SurrogateSpec = None
    width: float = 1.0
    encoder: str | Mapping[str, Any] = "direct"
    activation_max: float = 2.0
    batch_norm: bool = True

    @classmethod
    def names(cls) -> list[str]:
        """The argument names, in order."""
        return [f.name for f in fields(cls)]

    def activation(self) -> ActivationFactory:
        """A factory of fresh activations: the neuron (or the ANN twin's clipped ReLU)."""
        return activation_factory(self.kind, self.neuron, self.surrogate, self.activation_max)

    def channels(self, base: int) -> int:
        """``base`` channels scaled by the width multiplier (at least 1)."""
        return scaled(base, self.width)


#: the shared defaults (a network registered with other defaults says so in its entry)
DEFAULT_SPEC = ModelSpec()


class ConvUnit(nn.Sequential):
    """``conv -> [BN] -> [avg pool] -> activation``, the first three folded over time.

    Pooling before the neuron keeps the unit's output binary (spikes) for the next layer.
    Without batch norm (``batch_norm=False``, the local tandem learning student) the
    convolution has a bias instead.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: nn.Module,
        kernel_size: int = 3,
        stride: int = 1,
        pool: bool = False,
        batch_norm: bool = True,
    ) -> None:
        ops: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      bias=not batch_norm),
        ]
        if batch_norm:
            ops.append(nn.BatchNorm2d(out_channels))
        if pool:
            ops.append(nn.AvgPool2d(2))
        super().__init__(TimeDistributed(nn.Sequential(*ops)), activation)


class LinearUnit(nn.Sequential):
    """``[flatten] -> [dropout] -> linear -> [BN] -> activation``, folded over time.

    ``dropout > 0`` zeroes each input of the linear layer with that probability while training
    (a mask drawn for every time step and sample; off in eval mode).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: nn.Module,
        flatten: bool = False,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        ops: list[nn.Module] = [nn.Flatten()] if flatten else []
        if dropout > 0:
            ops.append(nn.Dropout(dropout))
        ops.append(nn.Linear(in_features, out_features, bias=not batch_norm))
        if batch_norm:
            ops.append(nn.BatchNorm1d(out_features))
        super().__init__(TimeDistributed(nn.Sequential(*ops)), activation)


def codes_static_samples_only(encoder: nn.Module) -> bool:
    """Whether ``encoder`` codes static samples only (Poisson, latency): a time-major batch
    would pass it un-coded. Direct encoding passes such a batch on as it is, by design, and
    an encoder of sequences (delta) codes it."""
    return type(encoder) is not DirectEncoder and not getattr(encoder, "sequence_input", False)


class SpikingNetwork(nn.Module):
    """Base class: ``encoder -> features -> classifier``, logits ``[T, B, classes]``.

    Subclasses set ``self.features`` (an ``nn.Sequential`` of units) and
    ``self.classifier``. ``input_dims`` is the number of dimensions of one static sample
    (3 for ``[C, H, W]``).
    """

    features: nn.Sequential
    classifier: nn.Module

    def __init__(self, T: int, kind: str, encoder: str | Mapping[str, Any] = "direct",
                 input_dims: int = 3) -> None:
        """Subclasses built from a :class:`ModelSpec` pass ``spec.T, spec.kind, spec.encoder``."""
        super().__init__()
        if kind not in KINDS:
            raise UserError(f"model kind must be one of {KINDS}, got {kind!r}")
        if int(T) <= 0:
            raise UserError(f"the number of time steps T must be positive, got {T}")
        self.kind = kind
        self.T = 1 if kind == "ann" else int(T)
        self.input_dims = input_dims
        self.encoder = make_encoder(encoder, self.T)
        #: a neuron layer after the classifier (``readout="spikes"``, see models.create), or None
        self.output_neuron: nn.Module | None = None

    def check_sample(self, sample: Tensor) -> None:
        """Refuse a time-major sample ``[T, *sample]`` (event frames) for an encoder of static
        samples, which the network would pass un-coded (a dataset the config cannot code)."""
        if sample.dim() == self.input_dims + 1 and codes_static_samples_only(self.encoder):
            raise UserError(
                f"the samples are time-major {tuple(sample.shape)} (event frames or sequences), but "
                f"{type(self).__name__}'s {type(self.encoder).__name__} codes static samples, so "
                "they would pass through un-coded; use encoder direct (the frames as they are) or "
                "delta (a code of sequences)")

    def encode(self, x: Tensor) -> Tensor:
        """Static ``[B, *sample]`` -> ``[T, B, *sample]``; time-major input passes through."""
        if x.dim() == self.input_dims + 1:
            return self.encoder(x)
        if x.dim() == self.input_dims + 2:  # a sequence: coded only by encoders of sequences
            return self.encoder(x, time_major=True) if getattr(self.encoder, "sequence_input", False) else x
        raise UserError(
            f"{type(self).__name__} expects a static batch with {self.input_dims + 1} dimensions "
            f"[B, ...] or a time-major batch with {self.input_dims + 2} dimensions [T, B, ...], "
            f"got shape {tuple(x.shape)}"
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.encode(x)  # (T, B, C, H, W)
        x = self.features(x)
        x = self.classifier(x)  # (T, B, classes)
        return x if self.output_neuron is None else self.output_neuron(x)  # logits, or spikes

    def units(self) -> list[tuple[str, nn.Module]]:
        """``(name, unit)`` for every unit of ``features``, in order."""
        return [(f"features.{name}", unit) for name, unit in self.features.named_children()]


def global_pool_classifier(in_channels: int, num_classes: int) -> nn.Module:
    """Global average pooling over space, then a linear layer, per time step."""
    return TimeDistributed(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
    )
