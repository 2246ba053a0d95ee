"""A small spiking CNN for the built-in 8×8 digits (and other small images)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import (
    ConvUnit,
    NeuronSpec,
    SpikingNetwork,
    SurrogateSpec,
    activation_factory,
    scaled,
)


class DigitsCNN(SpikingNetwork):
    """Three conv units (32, 64, 128 channels × width), two 2×2 average pools, a linear head.

    ``[B, C, S, S]`` -> conv -> conv+pool -> conv+pool -> flatten -> linear; with the
    default ``input_size = 8`` the last feature map is 2×2. ``batch_norm=False`` drops the
    batch norm layers (biased convolutions instead).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        T: int = 4,
        kind: str = "snn",
        neuron: NeuronSpec = None,
        surrogate: SurrogateSpec = None,
        width: float = 1.0,
        encoder: str | Mapping[str, Any] = "direct",
        activation_max: float = 2.0,
        input_size: int = 8,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(T, kind, encoder)
        act = activation_factory(kind, neuron, surrogate, activation_max)
        c1, c2, c3 = scaled(32, width), scaled(64, width), scaled(128, width)
        self.features = nn.Sequential(
            ConvUnit(in_channels, c1, act(), batch_norm=batch_norm),
            ConvUnit(c1, c2, act(), pool=True, batch_norm=batch_norm),
            ConvUnit(c2, c3, act(), pool=True, batch_norm=batch_norm),
        )
        side = input_size // 4
        self.classifier = TimeDistributed(
            nn.Sequential(nn.Flatten(), nn.Linear(c3 * side * side, num_classes))
        )


register_model("digits_cnn", DigitsCNN)
