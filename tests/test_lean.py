"""Lean layers: the same outputs and gradients as PyTorch's, with less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikegrad import lean, models


def saved_bytes(fn) -> tuple[object, int]:
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes)


def grads(module: nn.Module, x: torch.Tensor, seed: int = 0):
    x = x.detach().requires_grad_(True)
    y, nbytes = saved_bytes(lambda: module(x))
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    params = [p for p in module.parameters()]
    return y, torch.autograd.grad(y, [x, *params], up), nbytes


def spikes(*shape, dtype=torch.float32):
    return (torch.rand(*shape) > 0.7).to(dtype)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_same_gradients_bits_when_binary(binary, dtype):
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=True).to(dtype)
    x = spikes(4, 5, 9, 11, dtype=dtype) if binary else torch.randn(4, 5, 9, 11, dtype=dtype)
    y_ref, g_ref, bytes_ref = grads(conv, x)
    lean_conv = lean.make_lean(copy.deepcopy(conv))
    assert isinstance(lean_conv, lean.LeanConv2d)
    y, g, nbytes = grads(lean_conv, x)
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.equal(a, b)
    weight_bytes = conv.weight.numel() * conv.weight.element_size()
    expected = (x.numel() + 7) // 8 if binary else x.numel() * x.element_size()
    assert nbytes == expected + weight_bytes
    assert bytes_ref == x.numel() * x.element_size() + weight_bytes


def test_linear_same_gradients_on_time_major_spikes():
    linear = nn.Linear(12, 6)
    x = spikes(3, 4, 12)  # (T, B, features)
    y_ref, g_ref, bytes_ref = grads(linear, x)
    y, g, nbytes = grads(lean.make_lean(copy.deepcopy(linear)), x)
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert nbytes < bytes_ref


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
                                  nn.AdaptiveAvgPool2d(1)])
def test_pools_keep_nothing(pool):
    x = torch.randn(2, 3, 7, 9)
    y_ref, g_ref, _ = grads(pool, x)
    y, g, nbytes = grads(lean.make_lean(copy.deepcopy(pool)), x)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(g[0], g_ref[0], rtol=0, atol=0)
    assert nbytes == 0


def test_pack_binary_torch_path_matches_kernel():
    for n in (1, 8, 13, 4099):
        s = spikes(n)
        kernel = lean.pack_binary(s)
        flat = s.reshape(-1)
        padded = torch.nn.functional.pad(flat.to(torch.uint8), (0, -n % 8)).view(-1, 8)
        by_hand = (padded * torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)).sum(1)
        assert torch.equal(kernel, by_hand.to(torch.uint8))
    assert lean.pack_binary(torch.tensor([1.0, -0.0])) is None


def test_torch_fallback_path(monkeypatch):
    monkeypatch.setattr(lean.cpu, "library", lambda: None)
    s = spikes(3, 37)
    bits = lean.pack_binary(s)
    assert bits is not None and bits.numel() == (s.numel() + 7) // 8
    assert torch.equal(lean.unpack_binary(bits, s.shape, s.dtype), s)
    assert lean.pack_binary(torch.tensor([1.0, -0.0])) is None
    assert lean.pack_binary(torch.tensor([1.0, 0.5])) is None


def test_lean_spiking_vgg_same_gradients_less_memory():
    torch.manual_seed(0)
    model = models.create("vgg11", num_classes=10, in_channels=3, T=2, width=0.125, input_size=16,
                          surrogate="sigmoid", neuron={"type": "lif", "threshold": 0.3})
    twin = lean.make_lean(copy.deepcopy(model))
    assert list(twin.state_dict()) == list(model.state_dict())
    x = torch.rand(3, 3, 16, 16)
    results = []
    for net in (model, twin):
        out, nbytes = saved_bytes(lambda net=net: net(x))
        grads_ = torch.autograd.grad(out.sum(), list(net.parameters()))
        results.append((out, grads_, nbytes))
    (out_ref, g_ref, bytes_ref), (out, g, nbytes) = results
    assert torch.equal(out, out_ref)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert nbytes < 0.9 * bytes_ref


def test_config_options_reach_the_model():
    from spikegrad import neurons
    from spikegrad.config import Config
    from spikegrad.run import build_parts

    config = Config().with_overrides({"model.lean_memory": True, "model.neuron.backend": "reference"})
    model = build_parts(config).model
    assert any(isinstance(m, lean.LeanConv2d) for m in model.modules())
    spiking = [m for m in model.modules() if isinstance(m, neurons.SpikingNeuron)]
    assert spiking and all(m.backend == "reference" for m in spiking)
