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
    probe_mode,
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


def batch_norm_buffers(model):
    return [b.clone() for name, b in model.named_buffers() if "running" in name or "batches" in name]


@pytest.mark.parametrize("layer_name, max_stacked", [
    ("features.0.0.module.0", 24),     # first conv; 2 copies per call, 5 calls
    ("features.1.0.module.0", 1000),   # a deeper conv, one call of 10 copies
    ("classifier.module.1", 60),       # the linear read-out
])
def test_train_mode_fdg_equals_a_loop_of_training_mode_passes(layer_name, max_stacked):
    """Stacked copies each normalised with their own batch statistics = separate train-mode passes."""
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = layer_named(model, layer_name)
    indices = sample_weight_indices(layer.weight.numel(), 5, torch.Generator().manual_seed(1))
    eps = 0.3 * float(layer.weight.detach().pow(2).mean().sqrt())
    before = batch_norm_buffers(model)
    fast = finite_difference_gradient(model, layer, x, y, eps, indices, max_stacked=max_stacked,
                                      bn_mode="train")
    slow = finite_difference_gradient_loop(model, layer, x, y, eps, indices, bn_mode="train")
    assert (slow != 0).any()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)
    evaluated = finite_difference_gradient(model, layer, x, y, eps, indices, bn_mode="eval")
    assert not torch.allclose(fast, evaluated), "batch statistics must change the loss surface"
    for a, b in zip(before, batch_norm_buffers(model), strict=True):
        assert torch.equal(a, b), "the probes must not move batch norm's running statistics"


def test_train_mode_fdg_equals_the_loop_in_a_residual_block_with_poisson_input():
    x, y = batch(n=6, side=8, channels=3)
    torch.manual_seed(0)
    model = models.create("resnet20", T=2, width=0.5, neuron=LIF, in_channels=3, encoder="poisson")
    model = calibrated(model, x)
    encoded = model.encode(x)
    layer = layer_named(model, "features.layer2_0.conv1.module.0")
    indices = torch.tensor([0, 7, 100, 311])
    eps = 0.5 * float(layer.weight.detach().pow(2).mean().sqrt())
    fast = finite_difference_gradient(model, layer, encoded, y, eps, indices, max_stacked=12,
                                      bn_mode="train")
    slow = finite_difference_gradient_loop(model, layer, encoded, y, eps, indices, bn_mode="train")
    assert (slow != 0).any()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)


def train_mode_gradient(model, layer, x, y, forward=None, loss_fn=mean_logit_cross_entropy):
    """Autograd of the loss of a training-mode pass (batch statistics) on a copy of ``model``."""
    twin = copy.deepcopy(model).train()
    twin_layer = dict(twin.named_modules())[next(n for n, m in model.named_modules() if m is layer)]
    outputs = twin(x) if forward is None else forward(twin, x)
    loss_fn(outputs, y).backward()
    return twin_layer.weight.grad.flatten()


@pytest.mark.parametrize("layer_name", ["features.0.0.module.0", "features.1.0.module.0",
                                        "classifier.module.1"])
def test_train_mode_fdg_equals_autograd_with_batch_statistics_on_the_ann_twin(layer_name):
    x, y = batch()
    model = calibrated(spiking_cnn(kind="ann"), x)
    layer = layer_named(model, layer_name)
    indices = torch.arange(0, layer.weight.numel(), 3)
    analytic = train_mode_gradient(model, layer, x, y)[indices]
    fdg = finite_difference_gradient(model, layer, x, y, 1e-6, indices, bn_mode="train", max_stacked=60)
    assert analytic.abs().max() > 1e-4
    torch.testing.assert_close(fdg, analytic, rtol=1e-6, atol=1e-8)
    if layer_name != "classifier.module.1":  # followed by batch norm: its statistics depend on w
        eval_fdg = finite_difference_gradient(model, layer, x, y, 1e-6, indices, bn_mode="eval")
        assert cosine_similarity(eval_fdg, analytic) < 0.999, "eval mode is another function of w"


def test_train_mode_surrogate_gradients_equal_a_training_mode_backward_pass():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = layer_named(model, "features.1.0.module.0")
    neurons = [m for m in model.modules() if hasattr(m, "surrogate")]
    before = batch_norm_buffers(model)
    (grad,) = surrogate_gradients(model, layer, x, y, [{}], bn_mode="train")
    torch.testing.assert_close(grad, train_mode_gradient(model, layer, x, y))
    (evaluated,) = surrogate_gradients(model, layer, x, y, [{}], bn_mode="eval")
    assert cosine_similarity(grad, evaluated) < 0.999
    assert all(torch.equal(a, b) for a, b in zip(before, batch_norm_buffers(model), strict=True))
    assert all(n.surrogate.temperature == 3.0 for n in neurons) and not model.training


def test_probe_mode_normalises_each_stacked_copy_with_its_own_statistics_and_restores_the_model():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    model = nn.Sequential(bn)
    copies = [torch.randn(2, 4, 3, 5, 5, dtype=torch.float64) * (p + 1) + p for p in range(3)]  # (T, B, ..)
    stacked = torch.stack(copies, 1).flatten(0, 2)  # rows ordered (T, copy, B)
    reference = nn.BatchNorm2d(3).double()
    reference.load_state_dict(bn.state_dict())
    reference.train()
    with probe_mode(model, "train", groups=3, batch=4):
        assert not bn.training
        out = model(stacked).unflatten(0, (2, 3, 4))
    for p in range(3):
        expected = reference(copies[p].flatten(0, 1)).unflatten(0, (2, 4))
        torch.testing.assert_close(out[:, p], expected)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    assert "forward" not in bn.__dict__ and bn.training
    with pytest.raises(UserError, match="not a multiple of the stacked batch"), \
            probe_mode(model, "train", groups=3, batch=5):
        model(stacked)
    with pytest.raises(UserError, match=r"must be one of \['eval', 'train'\]"), probe_mode(model, "batch"):
        pass


@pytest.mark.parametrize("dims, affine, grad", [
    (2, True, False),   # the FDG's case: [T·P·B, C, H, W] under no_grad (normalised in place)
    (2, False, False),  # no γ, β
    (2, True, True),    # with autograd (a new output tensor)
    (1, True, False),   # BatchNorm1d of [T·P·B, C]
])
def test_stacked_batch_norm_equals_a_training_mode_batch_norm_per_copy(dims, affine, grad):
    torch.manual_seed(0)
    channels, T, copies, B = 3, 3, 4, 5
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, affine=affine).double()
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    rest = (4, 6) if dims == 2 else ()
    copies_in = [torch.randn(T, B, channels, *rest, dtype=torch.float64) * (p + 1) + 3 * p
                 for p in range(copies)]
    stacked = torch.stack(copies_in, 1).flatten(0, 2)  # rows ordered (T, copy, B)
    with probe_mode(nn.Sequential(bn), "train", groups=copies, batch=B), torch.set_grad_enabled(grad):
        out = bn(stacked).unflatten(0, (T, copies, B))
    assert out.requires_grad == (grad and affine)
    for p in range(copies):
        expected = nn.functional.batch_norm(copies_in[p].flatten(0, 1), None, None, bn.weight, bn.bias,
                                            True, 0.0, bn.eps).unflatten(0, (T, B))
        torch.testing.assert_close(out[:, p], expected, rtol=0, atol=1e-12)
    assert torch.equal(bn.running_mean, torch.zeros(channels))


def test_fdg_runs_the_probed_layer_once_per_pass_and_restores_its_forward():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = layer_named(model, "features.1.0.module.0")
    rows = []
    handle = layer.register_forward_hook(lambda m, args, out: rows.append((args[0].shape[0], out.shape[0])))
    try:
        finite_difference_gradient(model, layer, x, y, 0.1, torch.tensor([0, 5, 9]), max_stacked=48)
    finally:
        handle.remove()
    T, B = 3, len(x)
    assert rows == [(T * 4 * B, T * 4 * B), (T * 2 * B, T * 2 * B)]  # 4 then 2 stacked copies
    assert "forward" not in layer.__dict__
    conv = nn.Conv2d(4, 4, 3, padding=1).double()
    with pytest.raises(UserError, match="ran 2 times in one forward pass"):
        finite_difference_gradient(nn.Sequential(conv, nn.ReLU(), conv), conv,
                                   torch.randn(6, 4, 5, 5, dtype=torch.float64),
                                   torch.zeros(6, dtype=torch.long), 0.1, torch.tensor([0]))
    assert "forward" not in conv.__dict__


def test_fdg_by_default_on_a_cpu_stacks_one_pair_per_call():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = layer_named(model, "features.0.0.module.0")
    indices = torch.tensor([1, 4, 20])
    calls = []
    handle = layer.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    try:
        auto = finite_difference_gradient(model, layer, x, y, 0.1, indices, max_stacked=None, bn_mode="train")
    finally:
        handle.remove()
    assert calls == [3 * 2 * len(x)] * 3  # T·2·B rows: one ± pair per call
    one_call = finite_difference_gradient(model, layer, x, y, 0.1, indices, max_stacked=1000, bn_mode="train")
    torch.testing.assert_close(auto, one_call, rtol=0, atol=1e-9)


def test_fdg_of_a_network_with_auxiliary_heads_equals_autograd_of_its_loss():
    """``forward`` may return several heads and the loss combine them (a shortcut-style loss)."""
    x, y = batch()
    model = calibrated(spiking_cnn(kind="ann"), x)
    torch.manual_seed(1)
    head = nn.Linear(8, 10).double()  # an auxiliary head on the first unit, outside the model

    def forward(net, inputs):
        captured = {}
        handle = net.features[0].register_forward_hook(lambda m, a, out: captured.setdefault("s", out))
        try:
            main = net(inputs)
        finally:
            handle.remove()
        return main, head(captured["s"].mean(dim=(-2, -1)))  # (T, B, classes) each

    def loss_fn(outputs, targets):
        main, aux = outputs
        return mean_logit_cross_entropy(main + 0.5 * aux, targets)

    layer = layer_named(model, "features.0.0.module.0")
    indices = torch.arange(0, layer.weight.numel(), 2)
    for bn_mode in ("eval", "train"):
        with probe_mode(model, bn_mode), torch.enable_grad():
            layer.weight.grad = None
            loss_fn(forward(model, x), y).backward()
        analytic = layer.weight.grad.flatten()[indices]
        fdg = finite_difference_gradient(model, layer, x, y, 1e-6, indices, loss_fn, max_stacked=48,
                                         bn_mode=bn_mode, forward=forward)
        torch.testing.assert_close(fdg, analytic, rtol=1e-6, atol=1e-8)
        loop = finite_difference_gradient_loop(model, layer, x, y, 1e-6, indices[:3], loss_fn,
                                               bn_mode=bn_mode, forward=forward)
        torch.testing.assert_close(loop, analytic[:3], rtol=1e-6, atol=1e-8)
        (surrogate,) = surrogate_gradients(model, layer, x, y, [{}], indices, loss_fn, bn_mode, forward)
        torch.testing.assert_close(surrogate, analytic)
    main_only = finite_difference_gradient(model, layer, x, y, 1e-6, indices)
    assert cosine_similarity(main_only, analytic) < 0.9999, "the auxiliary head must matter"


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
