"""A small spiking 1-D CNN for signals ``[B, C, L]`` (MNIST-1D and other sequences)."""

from __future__ import annotations

from torch import nn

from spikegrad.errors import UserError
from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import NeuronSpec, SpikingNetwork, SurrogateSpec, activation_factory, scaled


class Conv1dUnit(nn.Sequential):
    """``conv1d -> [BN] -> [avg pool by 2] -> activation``, the first three folded over time."""

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
    ``128·width × L/4`` features; ``input_size`` is the length ``L`` (40 for MNIST-1D, a
    final length of 10). ``batch_norm=False`` drops the batch norm layers (biased
    convolutions instead, the local tandem learning student).
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
        encoder: str = "direct",
        activation_max: float = 2.0,
        input_size: int = 40,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(T, kind, encoder, input_dims=2)
        if int(input_size) < 4:
            raise UserError(f"cnn1d needs signals of length >= 4 (two pools by 2), got {input_size}")
        act = activation_factory(kind, neuron, surrogate, activation_max)
        c1, c2, c3 = scaled(32, width), scaled(64, width), scaled(128, width)
        self.features = nn.Sequential(
            Conv1dUnit(in_channels, c1, act(), batch_norm=batch_norm),
            Conv1dUnit(c1, c2, act(), pool=True, batch_norm=batch_norm),
            Conv1dUnit(c2, c3, act(), pool=True, batch_norm=batch_norm),
        )
        self.classifier = TimeDistributed(
            nn.Sequential(nn.Flatten(), nn.Linear(c3 * (int(input_size) // 4), num_classes))
        )


register_model("cnn1d", SpikingCNN1d)
