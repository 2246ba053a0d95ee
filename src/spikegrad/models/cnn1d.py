"""A small spiking 1-D CNN for signals ``[B, C, L]`` (MNIST-1D and other sequences)."""

from __future__ import annotations

from torch import nn

from spikegrad.errors import UserError
from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import ModelSpec, SpikingNetwork

#: MNIST-1D's defaults: one channel, length 40
SIGNALS = ModelSpec(in_channels=1, input_size=40)


class Conv1dUnit(nn.Sequential):
    """``conv1d -> [BN] -> [avg pool by 2] -> activation``, the first three folded over time.

    Without batch norm the convolution has a bias instead.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: nn.Module, kernel_size: int = 5,
                 pool: bool = False, batch_norm: bool = True) -> None:
        ops: list[nn.Module] = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                          bias=not batch_norm)]
        if batch_norm:
            ops.append(nn.BatchNorm1d(out_channels))
        if pool:
            ops.append(nn.AvgPool1d(2))
        super().__init__(TimeDistributed(nn.Sequential(*ops)), activation)


class SpikingCNN1d(SpikingNetwork):
    """Three 1-D conv units (32, 64, 128 channels × width, kernel 5), two pools by 2, a linear head.

    ``[B, C, L]`` -> conv -> conv+pool -> conv+pool -> flatten -> linear over
    ``128·width × ⌊⌊L/2⌋/2⌋`` features; ``spec.input_size`` is the length ``L`` (40 for
    MNIST-1D, a final length of 10). ``batch_norm=False`` drops the batch norm layers
    (biased convolutions instead, the local tandem learning student).
    """

    def __init__(self, spec: ModelSpec = SIGNALS) -> None:
        super().__init__(spec.T, spec.kind, spec.encoder, input_dims=2)
        if spec.input_size < 4:
            raise UserError(f"cnn1d needs signals of length >= 4 (two pools by 2), got {spec.input_size}")
        act, bn = spec.activation(), spec.batch_norm
        c1, c2, c3 = spec.channels(32), spec.channels(64), spec.channels(128)
        self.features = nn.Sequential(
            Conv1dUnit(spec.in_channels, c1, act(), batch_norm=bn),
            Conv1dUnit(c1, c2, act(), pool=True, batch_norm=bn),
            Conv1dUnit(c2, c3, act(), pool=True, batch_norm=bn),
        )
        self.classifier = TimeDistributed(
            nn.Sequential(nn.Flatten(), nn.Linear(c3 * (spec.input_size // 2 // 2), spec.num_classes))
        )


register_model("cnn1d", SpikingCNN1d, spec=SIGNALS)
