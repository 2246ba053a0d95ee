"""Spiking ResNets for CIFAR-sized (and larger) images: ResNet-18/19/20/34.

The spiking basic block (tdBN / Dspike lineage)::

    x ─ conv3×3 ─ BN ─ neuron ─ conv3×3 ─ BN ─(+)─ neuron ─ out
    └──────────── [conv1×1 ─ BN] ───────────────┘

Each block is one *unit* of ``features`` (named ``layer{stage}_{index}``), after a stem
``conv3×3 -> BN -> neuron`` named ``stem``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from spikegrad.errors import UserError
from spikegrad.layers import TimeDistributed
from spikegrad.models._registry import register_model
from spikegrad.models.common import (
    DEFAULT_SPEC,
    ActivationFactory,
    ConvUnit,
    LinearUnit,
    ModelSpec,
    SpikingNetwork,
    global_pool_classifier,
)


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, batch_norm: bool = True
) -> nn.Module:
    ops: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                      kernel_size // 2, bias=not batch_norm)]
    if batch_norm:
        ops.append(nn.BatchNorm2d(out_channels))
    return TimeDistributed(nn.Sequential(*ops))


class BasicBlock(nn.Module):
    """Spiking basic block; input and output are spikes ``[T, B, C, H, W]``."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, act: ActivationFactory,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 3, stride, batch_norm)
        self.act1 = act()
        self.conv2 = _conv_bn(out_channels, out_channels, 3, 1, batch_norm)
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample = (
            _conv_bn(in_channels, out_channels, 1, stride, batch_norm) if needs_projection
            else nn.Identity()
        )
        self.act2 = act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.conv1(x))
        return self.act2(self.conv2(out) + self.downsample(x))


class SpikingResNet(SpikingNetwork):
    """Spiking ResNet with basic blocks.

    Args:
        spec: the arguments every network shares (``input_size`` is not needed: global
            average pooling takes any size).
        blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        channels: channels per stage before the width multiplier.
        stem_channels: channels of the stem convolution.
        hidden_fc: if set, a spiking fully connected unit of this size before the output
            layer (ResNet-19).
        stem: ``"cifar"`` (3×3, stride 1) or ``"imagenet"`` (7×7 stride 2, then 3×3 max pool).
    """

    def __init__(
        self,
        spec: ModelSpec = DEFAULT_SPEC,
        *,
        blocks: Sequence[int],
        channels: Sequence[int],
        stem_channels: int,
        hidden_fc: int | None = None,
        stem: str = "cifar",
    ) -> None:
        super().__init__(spec.T, spec.kind, spec.encoder)
        if len(blocks) != len(channels):
            raise UserError(f"blocks {tuple(blocks)} and channels {tuple(channels)} differ in length")
        act, batch_norm = spec.activation(), spec.batch_norm
        width_in = spec.channels(stem_channels)
        units: OrderedDict[str, nn.Module] = OrderedDict()
        if stem == "cifar":
            units["stem"] = ConvUnit(spec.in_channels, width_in, act(), batch_norm=batch_norm)
        elif stem == "imagenet":
            ops: list[nn.Module] = [nn.Conv2d(spec.in_channels, width_in, 7, 2, 3, bias=not batch_norm)]
            if batch_norm:
                ops.append(nn.BatchNorm2d(width_in))
            units["stem"] = nn.Sequential(
                TimeDistributed(nn.Sequential(*ops, nn.MaxPool2d(3, 2, 1))), act()
            )
        else:
            raise UserError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        for stage, (count, base) in enumerate(zip(blocks, channels, strict=True), start=1):
            width_out = spec.channels(base)
            for index in range(count):
                stride = 2 if index == 0 and stage > 1 else 1
                units[f"layer{stage}_{index}"] = BasicBlock(width_in, width_out, stride, act,
                                                            batch_norm)
                width_in = width_out
        if hidden_fc is None:
            self.features = nn.Sequential(units)
            self.classifier = global_pool_classifier(width_in, spec.num_classes)
        else:
            hidden = spec.channels(hidden_fc)
            units["fc"] = nn.Sequential(
                TimeDistributed(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
                LinearUnit(width_in, hidden, act(), batch_norm=batch_norm),
            )
            self.features = nn.Sequential(units)
            self.classifier = TimeDistributed(nn.Linear(hidden, spec.num_classes))

    def stage_ends(self) -> list[str]:
        """Names of the last unit of every stage, in order."""
        names = [name for name in self.features._modules if name.startswith("layer")]
        last: dict[str, str] = {}
        for name in names:
            last[name.split("_")[0]] = name
        return [f"features.{name}" for name in last.values()]


_CIFAR_WIDTHS = (64, 128, 256, 512)
register_model("resnet18", SpikingResNet, "Spiking ResNet-18 (CIFAR stem)",
               blocks=(2, 2, 2, 2), channels=_CIFAR_WIDTHS, stem_channels=64)
register_model("resnet34", SpikingResNet, "Spiking ResNet-34 (CIFAR stem)",
               blocks=(3, 4, 6, 3), channels=_CIFAR_WIDTHS, stem_channels=64)
register_model("resnet19", SpikingResNet,
               "Spiking ResNet-19 of tdBN (Zheng et al. 2021): 128-256-512, FC 256",
               blocks=(3, 3, 2), channels=(128, 256, 512), stem_channels=128, hidden_fc=256)
register_model("resnet20", SpikingResNet, "Spiking ResNet-20 of He et al.'s CIFAR family (16-32-64)",
               blocks=(3, 3, 3), channels=(16, 32, 64), stem_channels=16)
