"""A small spiking CNN for the built-in 8×8 digits (and other small images)."""

from __future__ import annotations

from torch import nn

from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import ConvUnit, ModelSpec, SpikingNetwork

#: the digits' defaults: one channel, 8×8
DIGITS = ModelSpec(in_channels=1, input_size=8)


class DigitsCNN(SpikingNetwork):
    """Three conv units (32, 64, 128 channels × width), two 2×2 average pools, a linear head.

    ``[B, C, S, S]`` -> conv -> conv+pool -> conv+pool -> flatten -> linear; with the
    default ``input_size = 8`` the last feature map is 2×2. ``batch_norm=False`` drops the
    batch norm layers (biased convolutions instead).
    """

    def __init__(self, spec: ModelSpec = DIGITS) -> None:
        super().__init__(spec.T, spec.kind, spec.encoder)
        act, bn = spec.activation(), spec.batch_norm
        c1, c2, c3 = spec.channels(32), spec.channels(64), spec.channels(128)
        self.features = nn.Sequential(
            ConvUnit(spec.in_channels, c1, act(), batch_norm=bn),
            ConvUnit(c1, c2, act(), pool=True, batch_norm=bn),
            ConvUnit(c2, c3, act(), pool=True, batch_norm=bn),
        )
        side = spec.input_size // 4
        self.classifier = TimeDistributed(
            nn.Sequential(nn.Flatten(), nn.Linear(c3 * side * side, spec.num_classes))
        )


register_model("digits_cnn", DigitsCNN, spec=DIGITS)
