"""Finite difference gradients and the gradient-alignment analysis."""

import copy
import math

import pytest
import torch
from torch import nn

from spikegrad import models, surrogates
from spikegrad.alignment import (
    SurrogateSwitch,
    alignment_sweep,
    cosine_similarity,
    default_sweep,
    surrogate_gradients,
)
from spikegrad.errors import UserError
from spikegrad.fdg import (
    basis_response,
    eval_mode,
    finite_difference_gradient,
    finite_difference_gradient_loop,
    resolve_layer,
    sample_weight_indices,
)
from spikegrad.losses import mean_logit_cross_entropy

LIF = {"type": "lif", "leak": 0.25, "threshold": 0.5}


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Float64 model whose batch-norm running statistics come from ``x`` (so neurons fire in eval)."""
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def batch(n=12, side=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, side, side, generator=g, dtype=torch.float64), \
        torch.randint(0, 10, (n,), generator=g)


def spiking_cnn(**kw):
    torch.manual_seed(0)
    return models.create("digits_cnn", T=3, width=0.25, neuron=LIF, **kw)


def layer_named(model, name):
    return dict(model.named_modules())[name]


@pytest.mark.parametrize("layer_name, max_stacked", [
    ("features.0.0.module.0", 24),     # first conv; 2 copies per call, 5 calls
    ("features.1.0.module.0", 1000),   # a deeper conv, time folded into the batch, one call
    ("classifier.module.1", 60),       # the linear read-out
])
def test_batched_fdg_equals_a_loop_over_perturbations(layer_name, max_stacked):
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = layer_named(model, layer_name)
    indices = sample_weight_indices(layer.weight.numel(), 5, torch.Generator().manual_seed(1))
    eps = 0.3 * float(layer.weight.detach().pow(2).mean().sqrt())
    fast = finite_difference_gradient(model, layer, x, y, eps, indices, max_stacked=max_stacked)
    slow = finite_difference_gradient_loop(model, layer, x, y, eps, indices)
    assert fast.shape == (5,)
    assert (slow != 0).any(), "the test must flip some spikes to mean anything"
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)


def test_batched_fdg_equals_the_loop_in_a_residual_block_with_poisson_input():
    x, y = batch(n=6, side=8, channels=3)
    torch.manual_seed(0)
    model = models.create("resnet20", T=2, width=0.5, neuron=LIF, in_channels=3, encoder="poisson")
    model = calibrated(model, x)
    encoded = model.encode(x)  # (T, B, ...): fixed spikes for every perturbation
    name = "features.layer2_0.conv1.module.0"  # block with a 1×1 projection shortcut
    layer = layer_named(model, name)
    indices = torch.tensor([0, 7, 100, 311])
    eps = 0.5 * float(layer.weight.detach().pow(2).mean().sqrt())
    fast = finite_difference_gradient(model, layer, encoded, y, eps, indices, max_stacked=12)
    slow = finite_difference_gradient_loop(model, layer, encoded, y, eps, indices)
    assert (slow != 0).any()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)
    with pytest.raises(UserError, match=r"stochastic \(Poisson\) encoder needs an encoded batch"):
        finite_difference_gradient(model, layer, x, y, eps, indices)  # static images


@pytest.mark.parametrize("layer_name", ["features.0.0.module.0", "classifier.module.1"])
def test_fdg_equals_the_analytic_gradient_of_a_non_spiking_network(layer_name):
    x, y = batch()
    model = calibrated(spiking_cnn(kind="ann"), x)
    layer = layer_named(model, layer_name)
    indices = torch.arange(0, layer.weight.numel(), 3)
    layer.weight.grad = None
    mean_logit_cross_entropy(model(x), y).backward()
    analytic = layer.weight.grad.flatten()[indices]
    fdg = finite_difference_gradient(model, layer, x, y, 1e-6, indices)
    assert analytic.abs().max() > 1e-4
    torch.testing.assert_close(fdg, analytic, rtol=1e-6, atol=1e-8)


def test_basis_response_is_the_layer_applied_to_the_basis_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True).double()
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64)
    indices = torch.tensor([0, 13, 50, 107])
    response, channels = basis_response(conv, x, indices)
    for k, i in enumerate(indices.tolist()):
        basis = torch.zeros(conv.weight.numel(), dtype=torch.float64)
        basis[i] = 1.0
        full = nn.functional.conv2d(x, basis.view_as(conv.weight), None, 2, 1)
        assert channels[k] == i // 27
        torch.testing.assert_close(response[:, k], full[:, channels[k]])
        others = [c for c in range(4) if c != channels[k]]
        assert full[:, others].abs().max() == 0


def test_fdg_refuses_what_it_cannot_perturb_exactly():
    x, y = batch()
    model = spiking_cnn().double().eval()
    layer = resolve_layer(model)[1]
    with pytest.raises(UserError, match="epsilon"):
        finite_difference_gradient(model, layer, x, y, 0.0)
    with pytest.raises(UserError, match="groups=1"):
        finite_difference_gradient(model, nn.Conv2d(4, 4, 3, groups=2), x, y, 0.1)
    with pytest.raises(UserError, match=r"unknown weight layer 'features\.9'"):
        resolve_layer(model, "features.9")
    assert resolve_layer(model)[0] == "features.0.0.module.0"


def test_eval_mode_restores_each_modules_flag():
    model = spiking_cnn()
    model.train()
    model.features[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.features[1].training and model.features[2].training


def test_sample_weight_indices_are_seeded_distinct_and_sorted():
    a = sample_weight_indices(100, 10, torch.Generator().manual_seed(3))
    b = sample_weight_indices(100, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) == 10 and torch.equal(a, a.sort().values)
    assert torch.equal(sample_weight_indices(7, None), torch.arange(7))
    assert torch.equal(sample_weight_indices(7, 50), torch.arange(7))


# --------------------------------------------------------------------------- alignment


def test_cosine_similarity_by_hand():
    a, b = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    assert cosine_similarity(a, b) == pytest.approx(0.5)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity(a, torch.zeros(3)) == 0.0


def test_one_forward_many_backwards_equals_separate_runs():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer_name = "features.0.0.module.0"
    layer = layer_named(model, layer_name)
    neurons = [m for m in model.modules() if hasattr(m, "surrogate")]
    temperatures = [0.5, 3.0, 8.0]
    got = surrogate_gradients(model, layer, x, y,
                              [{n: surrogates.Dspike(b) for n in neurons} for b in temperatures])
    for b, grad in zip(temperatures, got, strict=True):
        twin = copy.deepcopy(model)
        for n in twin.modules():
            if hasattr(n, "surrogate"):
                n.surrogate = surrogates.Dspike(b)
        mean_logit_cross_entropy(twin(x), y).backward()
        torch.testing.assert_close(grad, layer_named(twin, layer_name).weight.grad.flatten())
    assert not torch.allclose(got[0], got[2])
    assert all(isinstance(n.surrogate, surrogates.Dspike) and n.surrogate.temperature == 3.0
               for n in neurons), "the model's own surrogates are restored"
    assert model.training is False


def test_surrogate_switch_delegates():
    target = surrogates.Sigmoid(alpha=5.0)
    switch = SurrogateSwitch(target)
    x = torch.linspace(-1, 1, 11)
    torch.testing.assert_close(switch.derivative(x), target.derivative(x))
    torch.testing.assert_close(switch.primitive(x), target.primitive(x))


def test_alignment_sweep_covers_every_surrogate_and_peaks_at_the_truth():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = resolve_layer(model)[1]
    indices = torch.arange(layer.weight.numel())
    neurons = [m for m in model.modules() if hasattr(m, "surrogate")]
    # A stand-in "true" gradient: the sigmoid surrogate's at alpha = 4 (its default).
    (truth,) = surrogate_gradients(model, layer, x, y, [dict.fromkeys(neurons, surrogates.Sigmoid(4.0))])
    rows = alignment_sweep(model, layer, x, y, truth, indices, points=5, factor=4.0)
    assert {r.surrogate for r in rows} == set(surrogates.available())
    sigmoid = [r for r in rows if r.surrogate == "sigmoid"]
    assert [r.sharpness for r in sigmoid] == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])
    assert max(sigmoid, key=lambda r: r.similarity).sharpness == pytest.approx(4.0)
    assert sigmoid[2].similarity == pytest.approx(1.0)
    dspike = [r for r in rows if r.surrogate == "dspike"]
    assert dspike[0].sharpness_name == "temperature"


def test_default_sweep_is_geometric_around_the_default():
    assert default_sweep(3.0, 3, 8.0) == pytest.approx([3 / 8, 3.0, 24.0])
    assert default_sweep(2.0, 1) == [2.0]


def test_cosine_similarity_of_a_non_finite_vector_is_nan_not_zero():
    assert cosine_similarity(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])) == pytest.approx(1.0)
    assert cosine_similarity(torch.zeros(2), torch.tensor([1.0, 2.0])) == 0.0
    assert math.isnan(cosine_similarity(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])))
