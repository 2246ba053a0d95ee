"""Spiking VGG-11/13/16 for CIFAR-sized (and other) images, and the local tandem learning VGGs.

Each convolution is a unit ``conv3×3 -> BN -> [pool] -> neuron``; a pool (``"M"`` in the
configuration) is folded into the unit before it, ahead of the neuron, so unit outputs stay
binary. ``downsample="stride"`` replaces each pool by a stride-2 convolution of that unit.
Pools that would shrink the map below 1×1 (small inputs such as the 8×8 digits) are
skipped. Optional hidden fully connected units precede the output layer.

``vgg11``/``vgg13``/``vgg16`` halve the map after each of their five blocks (a 32×32 input
ends at 1×1) and have no hidden fully connected layer. ``vgg11_ltl`` is the VGG-11 of the
local tandem learning paper for CIFAR (Yang et al., NeurIPS 2022): the same eight
convolutions (64, 128, 256, 256, 512, 512, 512, 512), stride-2 convolutions at conv2, conv4,
conv6 and conv8 only (conv1 keeps the full resolution), so a 32×32 input ends at 2×2, then
fully connected 2048 -> 512 -> 512 -> classes with a spiking (or, in the ANN twin, clipped
ReLU) unit after each hidden layer. ``vgg16_ltl`` applies the same change to VGG-16 (this
layout is an analogy, not taken from published code): the thirteen convolutions with the
first halving (after conv2) removed, stride 2 at conv4, conv7, conv10 and conv13, a 2×2 map,
and the same 2048 -> 512 -> 512 -> classes head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spikegrad.errors import UserError
from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import DEFAULT_SPEC, ConvUnit, LinearUnit, ModelSpec, SpikingNetwork

VGG_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}

# The local tandem learning VGGs: no halving after the first block (see the module docstring).
LTL_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11_ltl": (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_ltl": (64, 64, 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
LTL_HIDDEN_FC = (512, 512)


class SpikingVGG(SpikingNetwork):
    """Spiking VGG.

    Args:
        spec: the arguments every network shares (``input_size`` skips pools below 1×1 and
            sizes the first fully connected layer; ``batch_norm=False``: biased layers
            instead, as in the local tandem learning student).
        layers: channel counts and ``"M"`` (downsample by 2) in order.
        hidden_fc: sizes of spiking fully connected units before the output layer.
        downsample: ``"avg"`` (2×2 average pool) or ``"stride"`` (stride-2 convolution).
        dropout: probability of zeroing each input of every fully connected layer (hidden
            and output) while training, in ``[0, 1)``; the published LTL VGG-11 teacher
            uses 0.2 (its recipe sets it).
    """

    def __init__(
        self,
        spec: ModelSpec = DEFAULT_SPEC,
        *,
        layers: Sequence[int | str],
        hidden_fc: Sequence[int] = (),
        downsample: str = "avg",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spec.T, spec.kind, spec.encoder)
        if downsample not in ("avg", "stride"):
            raise UserError(f"downsample must be 'avg' or 'stride', got {downsample!r}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout is the probability of zeroing an input and must lie in "
                            f"[0, 1), got {dropout!r}")
        act, batch_norm = spec.activation(), spec.batch_norm
        units: list[nn.Module] = []
        channels, side = spec.in_channels, spec.input_size
        for i, item in enumerate(layers):
            if item == "M":
                continue
            shrink = i + 1 < len(layers) and layers[i + 1] == "M" and side >= 2
            out = spec.channels(int(item))
            if shrink and downsample == "stride":
                units.append(ConvUnit(channels, out, act(), stride=2, batch_norm=batch_norm))
            else:
                units.append(ConvUnit(channels, out, act(), pool=shrink, batch_norm=batch_norm))
            channels, side = out, side // 2 if shrink else side
        features = channels * side * side
        for i, size in enumerate(hidden_fc):
            units.append(LinearUnit(features, spec.channels(size), act(), flatten=i == 0,
                                    batch_norm=batch_norm, dropout=dropout))
            features = spec.channels(size)
        self.features = nn.Sequential(*units)
        head: list[nn.Module] = [] if hidden_fc else [nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(features, spec.num_classes))
        self.classifier = TimeDistributed(nn.Sequential(*head))


for _name, _layers in VGG_LAYERS.items():
    register_model(_name, SpikingVGG, f"Spiking {_name.upper()} (BN, average pooling)",
                   layers=_layers)
for _name, _strides in (("vgg11_ltl", "conv2/4/6/8"), ("vgg16_ltl", "conv4/7/10/13")):
    register_model(_name, SpikingVGG, f"Spiking {_name[:5].upper()} for local tandem learning (stride 2 "
                   f"at {_strides}, 2×2 map at 32×32, FC 512-512)",
                   layers=LTL_LAYERS[_name], hidden_fc=LTL_HIDDEN_FC, downsample="stride")
