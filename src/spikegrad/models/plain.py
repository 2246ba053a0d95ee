"""A deep plain (non-residual) spiking CNN: the network where depth hurts.

``depth`` conv units ``conv3×3 -> [BN] -> [avg pool] -> neuron`` in ``len(channels)`` stages of
(nearly) equal length; the last unit of every stage but the last halves the map (2×2 average
pool, skipped below 1×1). Then global average pooling and a linear layer, as in the
ResNets, so the two families differ only in the identity paths. Units are named
``conv1 … conv{depth}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from spikegrad.errors import UserError
from spikegrad.models._registry import register_model
from spikegrad.models.common import (
    DEFAULT_SPEC,
    ConvUnit,
    ModelSpec,
    SpikingNetwork,
    global_pool_classifier,
)


def stage_lengths(depth: int, stages: int) -> list[int]:
    """``depth`` units split into ``stages`` stages, earlier stages taking the remainder."""
    base, extra = divmod(depth, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


class PlainCNN(SpikingNetwork):
    """Plain spiking CNN of ``depth`` convolutional units (no shortcuts).

    Args:
        spec: the arguments every network shares (``input_size`` skips pools below 1×1).
        depth: number of conv units (at least ``len(channels)``).
        channels: channels per stage before the width multiplier.
    """

    def __init__(self, spec: ModelSpec = DEFAULT_SPEC, *, depth: int = 16,
                 channels: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__(spec.T, spec.kind, spec.encoder)
        if int(depth) < len(channels):
            raise UserError(f"plain_cnn needs depth >= {len(channels)} (one unit per stage), "
                            f"got {depth}")
        act = spec.activation()
        units: OrderedDict[str, nn.Module] = OrderedDict()
        width_in, side = spec.in_channels, spec.input_size
        lengths = stage_lengths(int(depth), len(channels))
        for stage, (count, base) in enumerate(zip(lengths, channels, strict=True)):
            width_out = spec.channels(base)
            for index in range(count):
                pool = index == count - 1 and stage < len(channels) - 1 and side >= 2
                units[f"conv{len(units) + 1}"] = ConvUnit(width_in, width_out, act(), pool=pool,
                                                         batch_norm=spec.batch_norm)
                width_in, side = width_out, side // 2 if pool else side
        self.features = nn.Sequential(units)
        self.classifier = global_pool_classifier(width_in, spec.num_classes)


register_model("plain_cnn", PlainCNN,
               "Plain spiking CNN (no residuals); depth conv units (default 16), 64-128-256-512")
