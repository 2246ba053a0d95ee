"""Time-folded layers: batch norm inside ``TimeDistributed`` takes its statistics over ``T·B``."""

import torch
import torch.nn.functional as F
from torch import nn

from spikegrad.layers import TimeDistributed


def test_batch_norm_normalises_over_the_merged_time_and_batch_axis():
    T, B, C = 3, 4, 2
    g = torch.Generator().manual_seed(0)
    # every time step has its own mean, so per-step statistics would give another output
    x = torch.randn(T, B, C, 5, 5, generator=g) + torch.arange(T).view(T, 1, 1, 1, 1) * 2.0
    bn = nn.BatchNorm2d(C, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5]))
        bn.bias.copy_(torch.tensor([0.2, -0.1]))
    y = TimeDistributed(bn).train()(x)
    merged = F.batch_norm(x.flatten(0, 1), None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(y, merged.unflatten(0, (T, B)))
    per_step = torch.stack([F.batch_norm(x[t], None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
                            for t in range(T)])
    assert (y - per_step).abs().max() > 0.5
    # the running statistics are the merged axis's: 0.9·0 + 0.1·mean, 0.9·1 + 0.1·unbiased variance
    flat = x.flatten(0, 1).transpose(0, 1).reshape(C, -1)  # (C, T·B·H·W)
    torch.testing.assert_close(bn.running_mean, 0.1 * flat.mean(1))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * flat.var(1, unbiased=True))
