"""Spiking VGG-11/13/16 for CIFAR-sized (and other) images.

Each convolution is a unit ``conv3×3 -> BN -> [pool] -> neuron``; a pool (``"M"`` in the
configuration) is folded into the unit before it, ahead of the neuron, so unit outputs stay
binary. ``downsample="stride"`` replaces each pool by a stride-2 convolution, as in the
local tandem learning VGG. Pools that would shrink the map below 1×1 (small inputs such as
the 8×8 digits) are skipped. Optional hidden fully connected units precede the output layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from spikegrad.errors import UserError
from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import (
    ConvUnit,
    LinearUnit,
    NeuronSpec,
    SpikingNetwork,
    SurrogateSpec,
    activation_factory,
    scaled,
)

VGG_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class SpikingVGG(SpikingNetwork):
    """Spiking VGG.

    Args:
        layers: channel counts and ``"M"`` (downsample by 2) in order.
        hidden_fc: sizes of spiking fully connected units before the output layer.
        input_size: side of the (square) input image, used to skip pools below 1×1 and
            size the first fully connected layer.
        downsample: ``"avg"`` (2×2 average pool) or ``"stride"`` (stride-2 convolution).
        batch_norm: batch norm after every convolution and hidden linear layer (False: biased
            layers instead, as in the local tandem learning student).
    """

    def __init__(
        self,
        layers: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        T: int = 4,
        kind: str = "snn",
        neuron: NeuronSpec = None,
        surrogate: SurrogateSpec = None,
        width: float = 1.0,
        encoder: str | Mapping[str, Any] = "direct",
        activation_max: float = 2.0,
        input_size: int = 32,
        hidden_fc: Sequence[int] = (),
        downsample: str = "avg",
        batch_norm: bool = True,
    ) -> None:
        super().__init__(T, kind, encoder)
        if downsample not in ("avg", "stride"):
            raise UserError(f"downsample must be 'avg' or 'stride', got {downsample!r}")
        act = activation_factory(kind, neuron, surrogate, activation_max)
        units: list[nn.Module] = []
        channels, side = in_channels, input_size
        for i, item in enumerate(layers):
            if item == "M":
                continue
            shrink = i + 1 < len(layers) and layers[i + 1] == "M" and side >= 2
            out = scaled(int(item), width)
            if shrink and downsample == "stride":
                units.append(ConvUnit(channels, out, act(), stride=2, batch_norm=batch_norm))
            else:
                units.append(ConvUnit(channels, out, act(), pool=shrink, batch_norm=batch_norm))
            channels, side = out, side // 2 if shrink else side
        features = channels * side * side
        for i, size in enumerate(hidden_fc):
            units.append(LinearUnit(features, scaled(size, width), act(), flatten=i == 0,
                                    batch_norm=batch_norm))
            features = scaled(size, width)
        self.features = nn.Sequential(*units)
        head = [nn.Linear(features, num_classes)]
        if not hidden_fc:
            head.insert(0, nn.Flatten())
        self.classifier = TimeDistributed(nn.Sequential(*head))


for _name, _layers in VGG_LAYERS.items():
    register_model(_name, SpikingVGG, f"Spiking {_name.upper()} (BN, average pooling)",
                   layers=_layers)
