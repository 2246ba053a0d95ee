"""Local tandem learning: targets, pairing, locality in layers and time, teacher init, runs."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikegrad import models, neurons, surrogates
from spikegrad.build import datasets_from_config
from spikegrad.checkpoint import load_checkpoint, load_model
from spikegrad.config import Config, load_config
from spikegrad.demo import recipe_path
from spikegrad.devices import DeviceModel, ImperfectDevices
from spikegrad.distributed import DistributedContext
from spikegrad.dynamics import NeuronState
from spikegrad.errors import UserError
from spikegrad.evaluation import evaluate_model
from spikegrad.methods.ltl import (
    LocalTandemLearning,
    distillation_loss,
    normalised_targets,
    offline_unit_outputs,
    online_running_rates,
    pair_units,
    percentile,
    resolve_T_warm,
    teacher_activations,
)
from spikegrad.methods.teacher_init import fold_batch_norm, init_student_from_teacher
from spikegrad.run import train
from tests.stopped_runs import stopped_run

NEURON = {"type": "lif", "leak": 0.9, "threshold": 0.6, "reset": "hard"}
LOW = {**NEURON, "threshold": 0.3}  # every unit of a small student fires (the last one too)


def digits_net(kind="snn", T=4, width=0.25, batch_norm=True, neuron=NEURON, **kwargs):
    return models.create("digits_cnn", kind=kind, T=T, width=width, neuron=neuron,
                         surrogate={"name": "rectangle", "width": 1.0},
                         batch_norm=batch_norm, **kwargs)


def trained_like_teacher(seed=0):
    """An ANN twin with non-trivial batch-norm statistics (a few forward passes in train mode)."""
    torch.manual_seed(seed)
    teacher = digits_net("ann")
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.rand(16, 1, 8, 8) * 2)
    return teacher.eval()


def unit_params(model):
    return [list(unit.parameters()) for _, unit in model.units()]


@torch.no_grad()
def reference_spikes(student, x):
    """Every unit's spikes ``[T, B, ...]`` from one plain forward of the student (detaching a
    unit's input, as LTL does, changes no value)."""
    h, spikes = student.encode(x), []
    for _, unit in student.units():
        h = unit(h)
        spikes.append(h)
    return spikes


@torch.no_grad()
def reference_targets(teacher, x, p):
    """``â_l = clamp(a_l / P_p(a_l), 0, 1)`` with numpy's percentile, and the teacher's logits."""
    h, targets = teacher.eval().encode(x), []
    for _, unit in teacher.units():
        h = unit(h)
        a = h[0]  # (B, ...): the ANN runs one step
        targets.append((a / float(np.percentile(a.numpy(), p))).clamp(0.0, 1.0))
    return targets, teacher.classifier(h)[0]


def hand_distillation(student_logits, teacher_logits, tau):
    """``τ²·KL(p_teacher ‖ p_student)`` with ``p = softmax(logits/τ)``, batch mean."""
    p = torch.softmax(teacher_logits / tau, dim=1)
    log_q = torch.log_softmax(student_logits / tau, dim=1)
    return tau**2 * (p * (p.log() - log_q)).sum(1).mean()


# --------------------------------------------------------------------------- targets


def test_percentile_matches_hand_values_and_numpy():
    x = torch.arange(1.0, 11.0)  # 1..10: rank r = p/100 · 9
    assert percentile(x, 50).item() == pytest.approx(5.5)  # between 5 and 6
    assert percentile(x, 90).item() == pytest.approx(9.1)  # r = 8.1: 9 + 0.1·(10 - 9)
    assert percentile(x, 100).item() == 10 and percentile(x, 0).item() == 1
    y = torch.randn(3, 7, 11)
    for p in (99.9, 99.0, 73.3):
        assert percentile(y, p).item() == pytest.approx(np.percentile(y.numpy(), p), rel=1e-5)


def test_targets_divide_by_the_batch_percentile_and_clip():
    a = torch.tensor([[0.0, 1.0], [2.0, 4.0]])  # P_50 over all four values: rank 1.5 -> 1.5
    expected = torch.tensor([[0.0, 1 / 1.5], [1.0, 1.0]])
    assert torch.allclose(normalised_targets(a, 50), expected)
    assert torch.equal(normalised_targets(torch.zeros(5), 99), torch.zeros(5))  # dead layer


def test_teacher_targets_come_from_eval_mode_without_gradients():
    teacher = trained_like_teacher().train()
    stats = [m.running_mean.clone() for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(5, 1, 8, 8)
    acts, logits = teacher_activations(teacher, x)
    assert all(not a.requires_grad for a in acts) and not logits.requires_grad
    after = [m.running_mean for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))  # eval: stats untouched
    h = teacher.encode(x)
    for (_, unit), a in zip(teacher.units(), acts, strict=True):
        h = unit(h)
        assert torch.equal(h[0], a)


# --------------------------------------------------------------------------- pairing


def test_pairing_accepts_the_ann_twin_and_names_the_first_mismatch():
    example = torch.rand(2, 1, 8, 8)
    assert pair_units(digits_net(batch_norm=False), digits_net("ann"), example) == [
        "features.0", "features.1", "features.2"]
    with pytest.raises(UserError, match=r"features\.0.*\(8, 8, 8\).*\(16, 8, 8\)"):
        pair_units(digits_net(width=0.25), digits_net("ann", width=0.5), example)
    vgg = {"num_classes": 10, "in_channels": 1, "input_size": 8, "width": 0.125}
    with pytest.raises(UserError, match=r"student has 11 units and the teacher 10.*features\.10"):
        pair_units(models.create("vgg13", T=2, hidden_fc=(16,), **vgg),
                   models.create("vgg13", kind="ann", **vgg), example)


def test_bad_ltl_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="must be an ANN"):
        LocalTandemLearning(digits_net("snn"), "offline")
    with pytest.raises(UserError, match=r"T_warm must lie in \[0, T\)"):
        resolve_T_warm(4, 4)
    assert resolve_T_warm(None, 16) == 12
    with pytest.raises(UserError, match="needs a teacher"):
        train(tiny_config(**{"ltl.mode": "offline"}), tmp_path, verbose=False)


# --------------------------------------------------------------------------- locality


def test_offline_unit_loss_puts_no_gradient_on_earlier_units():
    student, teacher = digits_net(batch_norm=False), trained_like_teacher()
    x = torch.rand(4, 1, 8, 8)
    targets = [normalised_targets(a, 99.9) for a in teacher_activations(teacher, x)[0]]
    params = unit_params(student)
    for index, (_, spikes) in enumerate(offline_unit_outputs(student, student.encode(x))):
        loss = F.mse_loss(spikes.mean(0), targets[index])
        earlier = [p for group in params[:index] for p in group]
        if earlier:
            assert all(g is None for g in torch.autograd.grad(loss, earlier, retain_graph=True,
                                                              allow_unused=True))
        own = torch.autograd.grad(loss, params[index][0], retain_graph=True)[0]
        assert own.abs().sum() > 0  # the unit's own weights do learn


def test_online_step_loss_is_local_in_layers_and_keeps_no_graph_across_steps():
    torch.manual_seed(1)
    student = digits_net(T=6, batch_norm=False)
    x = student.encode(torch.rand(3, 1, 8, 8) * 2)
    params = unit_params(student)
    sizes = []
    for _, rates, _ in online_running_rates(student, x, T_warm=1):
        for index, rate in enumerate(rates):
            loss = rate.pow(2).mean()
            earlier = [p for group in params[:index] for p in group]
            if earlier:
                assert all(g is None for g in torch.autograd.grad(
                    loss, earlier, retain_graph=True, allow_unused=True))
        sizes.append(graph_size(rates[-1]))
    assert len(sizes) == 5 and len(set(sizes)) == 1  # the graph does not grow with t


def graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def test_online_gradient_equals_the_per_step_truncated_reference():
    torch.manual_seed(2)
    student = digits_net(T=5, batch_norm=False)
    x = student.encode(torch.rand(3, 1, 8, 8) * 2)
    unit = student.features[0]
    target = torch.rand(3, 8, 8, 8)
    T_warm = 2

    def reference(truncate: bool) -> torch.Tensor:
        current = unit[0](x)  # (T, B, C, H, W): conv over all steps at once
        state, total, loss = None, 0.0, 0.0
        for t in range(x.shape[0]):
            spikes, state = unit[1].step(current[t], state)
            if truncate:
                state = NeuronState(state.v.detach())
            rate = (total + spikes) / (t + 1)
            total = (total + spikes).detach() if truncate else total + spikes
            if t >= T_warm:
                loss = loss + F.mse_loss(rate, target)
        return torch.autograd.grad(loss, unit[0].module[0].weight)[0]

    student.zero_grad()
    for _, rates, _ in online_running_rates(student, x, T_warm):
        F.mse_loss(rates[0], target).backward()
    online = unit[0].module[0].weight.grad
    assert torch.allclose(online, reference(truncate=True), atol=1e-6)
    assert not torch.allclose(online, reference(truncate=False), atol=1e-3)  # BPTT differs


class _PassUnit(nn.Module):
    """A unit that passes its input on: its 'spikes' are the input spikes themselves."""

    def forward(self, x):
        return x


class _HandNet(nn.Module):
    """One pass-through unit and a linear readout: every spike and logit is known by hand."""

    def __init__(self, weight, bias):
        super().__init__()
        self.features = nn.Sequential(_PassUnit())
        self.classifier = nn.Linear(2, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor(weight))
            self.classifier.bias.copy_(torch.tensor(bias))

    def units(self):
        return [("features.0", self.features[0])]


def test_online_readout_gradient_at_step_t_sees_step_t_only():
    """Spikes s_0 = (1, 0), s_1 = (0, 1), s_2 = (1, 1) of one sample; the readout's running
    average R_t/(t+1) with R_t = R_(t-1).detach() + W·s_t + c. The step-t loss c_tᵀ·R_t/(t+1)
    gives the weight gradient c_t·s_tᵀ/(t+1) (step t's spikes only) and the bias c_t/(t+1);
    the readout of the running rate gives c_t·r_tᵀ (every step's spikes) and c_t."""
    net = _HandNet([[1.0, 2.0], [3.0, 4.0]], [0.5, -0.5])
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # (T = 3, B = 1, 2)
    c = torch.tensor([1.0, -2.0])
    W, b = net.classifier.weight, net.classifier.bias
    for t, rates, last in online_running_rates(net, x, T_warm=1, readout=net.classifier):
        assert len(rates) == 2  # the unit's rate, then the readout's
        r = x[: t + 1, 0].mean(0)  # the unit's running rate by hand
        assert torch.allclose(rates[0][0], r)
        assert torch.allclose(rates[1][0], W.detach() @ r + b.detach())  # the same value...
        assert torch.allclose(last[0], W.detach() @ x[t, 0] + b.detach())  # o_t
        gw, gb = torch.autograd.grad((rates[1][0] * c).sum(), [W, b])
        assert torch.allclose(gw, torch.outer(c, x[t, 0]) / (t + 1))  # ...but step t's spikes only
        assert torch.allclose(gb, c / (t + 1))
        old = net.classifier(rates[0].detach())[0]  # readout of the running rate, as before
        gw_old, gb_old = torch.autograd.grad((old * c).sum(), [W, b])
        assert torch.allclose(gw_old, torch.outer(c, r)) and torch.allclose(gb_old, c)
        assert not torch.allclose(gw_old, gw)


def fake_trainer(model):
    """What LTL uses of its training context: the model, a backward function, the config, the
    (single-process) distributed context."""
    return SimpleNamespace(model=model, backward=lambda loss: loss.backward(), config=Config(),
                           dist=DistributedContext())


def test_offline_component_gradients_are_the_weighted_local_losses():
    """``L = CE(ȳ, y) + Σ_l C_l·MSE(r_l, â_l)`` with distinct ``C_l`` and p = 99.9: the loss,
    every unit's gradient (its own loss only, its input detached) and the readout's, by hand."""
    torch.manual_seed(3)
    student, teacher = digits_net(batch_norm=False, neuron=LOW), trained_like_teacher()
    x, y = torch.rand(4, 1, 8, 8) * 2, torch.randint(0, 10, (4,))
    C = [0.5, 2.0, 1.5]
    ltl = LocalTandemLearning(teacher, "offline", layer_weights=C)
    assert ltl.percentile == 99.9  # the offline default
    ltl.unit_names = [n for n, _ in student.units()]
    spikes = reference_spikes(student, x)
    assert spikes[-1].sum() >= 10  # the last unit fires, so the readout's weights get a gradient
    targets, _ = reference_targets(teacher, x, 99.9)
    inputs = [student.encode(x), *spikes[:-1]]
    grads, expected_loss = [], 0.0
    for (_, unit), h, target, c in zip(student.units(), inputs, targets, C, strict=True):
        loss = c * ((unit(h).mean(0) - target) ** 2).mean()
        grads.append(torch.autograd.grad(loss, list(unit.parameters())))
        expected_loss += loss.item()
    linear = student.classifier.module[1]
    logits = (spikes[-1].flatten(2) @ linear.weight.T + linear.bias).mean(0)  # ȳ: readout over T
    ce = F.cross_entropy(logits, y)
    readout_grads = torch.autograd.grad(ce, [linear.weight, linear.bias])
    out = ltl.compute_loss(fake_trainer(student), x, y)
    assert out.backpropagated and torch.allclose(out.logits, logits.detach(), atol=1e-6)
    for group, expected in zip(unit_params(student), grads, strict=True):
        for p, g in zip(group, expected, strict=True):
            assert torch.allclose(p.grad, g, atol=1e-6)
    assert readout_grads[0].abs().sum() > 0
    assert torch.allclose(linear.weight.grad, readout_grads[0], atol=1e-6)
    assert torch.allclose(linear.bias.grad, readout_grads[1], atol=1e-6)
    assert out.loss.item() == pytest.approx(expected_loss + ce.item(), rel=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_online_component_readout_gradient_is_the_published_one(detach):
    """The component's readout gradient: ``Σ_(t >= T_warm) δ_t·s_(L,t)ᵀ/(t+1)`` with the
    readout's running sum detached every step (the default, as published), ``Σ δ_t·r_(L,t)ᵀ``
    with ``readout_detach=False``; ``δ_t`` the gradient of the step's CE at its logits."""
    torch.manual_seed(5)
    student, teacher = digits_net(T=5, batch_norm=False), trained_like_teacher()
    x, y = torch.rand(3, 1, 8, 8) * 3, torch.tensor([1, 4, 7])
    ltl = LocalTandemLearning(teacher, "online", T_warm=2, readout_detach=detach)
    assert LocalTandemLearning(teacher, "online").readout_detach  # the default
    ltl.T_warm, ltl.unit_names, ltl.layer_weights = 2, [n for n, _ in student.units()], [1.0] * 3
    linear = student.classifier.module[1]
    with torch.no_grad():  # the last unit's spikes at every step, and its running rates
        spikes = [last for _, _, last in online_running_rates(student, student.encode(x), 0)]
    out = ltl.compute_loss(fake_trainer(student), x, y)
    expected, inference = torch.zeros_like(linear.weight), 0.0
    for t in range(2, 5):
        s_t = spikes[t].flatten(1)  # (B, features)
        r_t = torch.stack(spikes[: t + 1]).mean(0).flatten(1)
        logits = (r_t @ linear.weight.T + linear.bias).detach().requires_grad_(True)
        (delta,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
        expected += delta.T @ (s_t / (t + 1) if detach else r_t)
        inference = inference + (s_t @ linear.weight.T + linear.bias).detach()
    assert torch.allclose(linear.weight.grad, expected, atol=1e-6)
    assert torch.allclose(out.logits, inference / 3, atol=1e-5)  # o_t averaged over t >= T_warm


def online_reference(student, teacher, x, y, C, T_warm, p=99.0):
    """``Σ_(t >= T_warm) L_t``, ``L_t = Σ_l C_l·MSE(r_(l,t), â_l) + CE(R_t/(t+1), y)`` with
    ``r_(l,t)`` the mean of unit l's spikes over steps 0..t and ``R_t/(t+1)`` the readout of
    ``r_(L,t)`` (affine), from a plain forward."""
    spikes = reference_spikes(student, x)
    targets, _ = reference_targets(teacher, x, p)
    linear = student.classifier.module[1]
    total = 0.0
    for t in range(T_warm, spikes[0].shape[0]):
        for c, s, target in zip(C, spikes, targets, strict=True):
            total += c * ((s[: t + 1].mean(0) - target) ** 2).mean().item()
        r_L = spikes[-1][: t + 1].mean(0).flatten(1)
        total += F.cross_entropy(r_L @ linear.weight.T + linear.bias, y).item()
    return total


def test_online_step_loss_and_hidden_gradient_are_the_published_formula():
    """Distinct ``C_l`` and the online default p = 99: the loss summed over the steps, and a
    hidden unit's weight gradient ``C_l·Σ_t ∂MSE(r_(l,t), â_l)/∂W_l``, its state and running
    sum detached between steps, its input spikes detached (a hand-written LIF loop)."""
    torch.manual_seed(6)
    T, T_warm, C = 5, 2, [0.5, 2.0, 1.5]
    student, teacher = digits_net(T=T, batch_norm=False, neuron=LOW), trained_like_teacher()
    x, y = torch.rand(3, 1, 8, 8) * 2, torch.tensor([2, 5, 9])
    ltl = LocalTandemLearning(teacher, "online", T_warm=T_warm, layer_weights=C)
    assert ltl.percentile == 99.0  # the online default
    ltl.T_warm, ltl.unit_names = T_warm, [n for n, _ in student.units()]
    expected = online_reference(student, teacher, x, y, C, T_warm)
    assert expected != pytest.approx(online_reference(student, teacher, x, y, C, T_warm, p=99.9),
                                     rel=1e-3)  # the percentile shows in the value
    unit, inputs = student.features[1], reference_spikes(student, x)[0]
    target = reference_targets(teacher, x, 99.0)[0][1]
    current = unit[0](inputs)  # (T, B, ...): conv and pooling of every step at once
    state, running, loss = None, 0.0, 0.0
    for t in range(T):
        spikes, state = unit[1].step(current[t], NeuronState(state.v.detach()) if state else None)
        rate = (running + spikes) / (t + 1)
        running = (running + spikes).detach()
        if t >= T_warm:
            loss = loss + C[1] * ((rate - target) ** 2).mean()
    weight = unit[0].module[0].weight
    (reference_grad,) = torch.autograd.grad(loss, weight)
    out = ltl.compute_loss(fake_trainer(student), x, y)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert reference_grad.abs().sum() > 0
    assert torch.allclose(weight.grad, reference_grad, atol=1e-6)


def test_distillation_loss_is_tau_squared_kl_of_teacher_over_student():
    """Hinton et al.: ``τ²·Σ_k p_k·(log p_k − log q_k)``, ``p`` the teacher's softmax at
    temperature τ, ``q`` the student's; batch mean. Computed here with math on two samples."""
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    tau = 2.0

    def softmax(z):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    def kl(a, b):
        return sum(pa * (math.log(pa) - math.log(pb)) for pa, pb in zip(a, b, strict=True))

    pairs = list(zip(student, teacher, strict=True))
    forward = tau**2 * sum(kl(softmax(t), softmax(s)) for s, t in pairs) / 2
    reverse = tau**2 * sum(kl(softmax(s), softmax(t)) for s, t in pairs) / 2
    assert forward != pytest.approx(reverse, rel=1e-2)  # the direction shows in the value
    value = distillation_loss(torch.tensor(student), torch.tensor(teacher), tau)
    assert value.item() == pytest.approx(forward, rel=1e-6)
    same = torch.tensor(student)
    assert distillation_loss(same, same, 3.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_distill_adds_alpha_times_the_distillation_at_the_readout(mode):
    """``ltl.distill = α`` adds ``α·τ²·KL(softmax(z/τ) ‖ softmax(ȳ/τ))`` to the readout's loss
    (online: at every step's ``R_t/(t+1)``), and its gradient to the classifier's weights."""
    torch.manual_seed(7)
    T, T_warm, alpha, tau = 4, 1, 0.7, 3.0
    student, teacher = digits_net(T=T, batch_norm=False, neuron=LOW), trained_like_teacher()
    x, y = torch.rand(3, 1, 8, 8) * 2, torch.tensor([0, 3, 8])
    _, z = reference_targets(teacher, x, 99.0)
    spikes = reference_spikes(student, x)[-1].flatten(2)  # (T, B, features)
    linear = student.classifier.module[1]
    steps = [T] if mode == "offline" else list(range(T_warm + 1, T + 1))  # steps averaged
    extra, extra_grad = 0.0, torch.zeros_like(linear.weight)
    for n in steps:
        logits = (spikes[:n].mean(0) @ linear.weight.T + linear.bias).detach().requires_grad_(True)
        kl = alpha * hand_distillation(logits, z, tau)
        (delta,) = torch.autograd.grad(kl, logits)
        extra += kl.item()
        # offline: ȳ's gradient reaches every step; online: step t's spikes over t + 1
        extra_grad += delta.T @ (spikes[:n].mean(0) if mode == "offline" else spikes[n - 1] / n)
    runs = []
    for distill in (0.0, alpha):
        student.zero_grad()
        ltl = LocalTandemLearning(teacher, mode, layer_weights=[0.5, 2.0, 1.5],
                                  **({"distill": distill, "distill_temperature": tau} if distill else {}))
        ltl.T_warm, ltl.unit_names = T_warm, [n for n, _ in student.units()]
        runs.append((ltl.compute_loss(fake_trainer(student), x, y).loss.item(),
                     linear.weight.grad.clone()))
    assert extra > 1e-3 and extra_grad.abs().sum() > 0
    assert runs[1][0] - runs[0][0] == pytest.approx(extra, rel=1e-4)
    assert torch.allclose(runs[1][1] - runs[0][1], extra_grad, atol=1e-6)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_layer_losses_are_the_epoch_mean_of_the_unit_mses(mode):
    """``ltl_layer_losses``: per unit, the MSE of its rate against ``â_l`` (not weighted by
    ``C_l``) averaged over every sample of the epoch (online: and over the steps t >= T_warm),
    here over two batches of different sizes."""
    torch.manual_seed(8)
    T, T_warm, C = 4, 2, [0.5, 2.0, 1.5]
    student, teacher = digits_net(T=T, batch_norm=False, neuron=LOW), trained_like_teacher()
    ltl = LocalTandemLearning(teacher, mode, layer_weights=C)
    ltl.T_warm, ltl.unit_names = T_warm, [n for n, _ in student.units()]
    ctx = fake_trainer(student)
    batches = [(torch.rand(b, 1, 8, 8) * 2, torch.randint(0, 10, (b,))) for b in (2, 5)]
    sums, count = [0.0] * 3, 0
    steps = [T] if mode == "offline" else list(range(T_warm + 1, T + 1))
    for x, _ in batches:
        targets, _ = reference_targets(teacher, x, ltl.percentile)
        for n in steps:
            for index, (s, target) in enumerate(zip(reference_spikes(student, x), targets,
                                                    strict=True)):
                sums[index] += x.shape[0] * ((s[:n].mean(0) - target) ** 2).mean().item()
            count += x.shape[0]
    ltl.on_epoch_start(ctx, 0)
    for x, y in batches:  # no optimizer step: the weights the reference saw
        ltl.compute_loss(ctx, x, y)
    losses = ltl.epoch_metrics(ctx)["ltl_layer_losses"]
    assert list(losses) == ltl.unit_names
    for name, total in zip(ltl.unit_names, sums, strict=True):
        assert losses[name] == pytest.approx(total / count, rel=1e-5)


def test_readout_detach_is_refused_offline_and_spiking_readouts_are_refused():
    with pytest.raises(UserError, match="readout_detach applies to online LTL only"):
        LocalTandemLearning(trained_like_teacher(), "offline", readout_detach=False)
    student = digits_net(batch_norm=False, readout="spikes")
    ltl = LocalTandemLearning(trained_like_teacher(), "online")
    ctx = SimpleNamespace(model=student, train_set=None, device=torch.device("cpu"))
    with pytest.raises(UserError, match="readout: spikes"):
        ltl.attach(ctx)
    ann = models.create("digits_cnn", kind="ann", width=0.25)  # the teacher's kind as the student
    with pytest.raises(UserError, match=r"the model is an ANN \(model.kind=ann.*set model.kind=snn"):
        ltl.attach(SimpleNamespace(model=ann, train_set=None, device=torch.device("cpu")))


@pytest.mark.parametrize("mode", ["offline", "online"])
@pytest.mark.parametrize("neuron", neurons.available())
@pytest.mark.parametrize("surrogate", surrogates.available())
def test_any_neuron_and_surrogate_can_be_the_student(mode, neuron, surrogate):
    torch.manual_seed(4)
    student = models.create("digits_cnn", T=4, width=0.25, batch_norm=False, neuron=neuron,
                            surrogate=surrogate)
    ltl = LocalTandemLearning(trained_like_teacher(), mode, T_warm=1 if mode == "online" else None)
    ltl.unit_names, ltl.layer_weights = [n for n, _ in student.units()], [1.0, 1.0, 1.0]
    out = ltl.compute_loss(fake_trainer(student), torch.rand(4, 1, 8, 8) * 3,
                           torch.randint(0, 10, (4,)))
    assert torch.isfinite(out.loss) and out.logits.shape == (4, 10)
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert student.features[0][0].module[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- teacher init


def test_batch_norm_folds_exactly():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 6, 6)
    weight, bias = fold_batch_norm(conv, bn)
    assert torch.allclose(F.conv2d(x, weight, bias), bn(conv(x)), atol=1e-5)


def test_teacher_init_scales_each_unit_by_its_percentiles():
    teacher = trained_like_teacher()
    student = digits_net(batch_norm=False)
    percentiles = [1.7, 0.9, 1.3]
    init_student_from_teacher(student, teacher, percentiles)
    theta = NEURON["threshold"]
    a = torch.rand(5, 1, 8, 8)[None]  # (1, B, C, H, W): the input, P_0 = 1
    previous = 1.0
    with torch.no_grad():
        for ((_, s_unit), (_, t_unit)), p in zip(zip(student.units(), teacher.units(), strict=True),
                                                 percentiles, strict=True):
            current = s_unit[0](a / previous)  # student's input current for rates a / P_{l-1}
            assert torch.allclose(current, theta * t_unit[0](a) / p, atol=1e-5)
            a, previous = t_unit(a), p
        assert torch.allclose(student.classifier(a / previous), teacher.classifier(a), atol=1e-5)


def test_teacher_init_copies_the_head_of_a_teacher_trained_with_dropout():
    """The published VGG-11 teacher has dropout before each FC layer, the student none: the
    head's parameters pair in order although the dropout shifts the state-dict keys."""
    torch.manual_seed(0)
    kwargs = {"width": 0.0625, "in_channels": 1, "input_size": 8}
    teacher = models.create("vgg11_ltl", kind="ann", dropout=0.2, **kwargs).eval()
    student = models.create("vgg11_ltl", T=2, batch_norm=False, **kwargs)
    assert list(teacher.classifier.state_dict()) != list(student.classifier.state_dict())
    percentiles = [1.0] * (len(student.units()) - 1) + [2.5]
    init_student_from_teacher(student, teacher, percentiles)
    t_head, s_head = teacher.classifier.module[-1], student.classifier.module[-1]
    assert torch.equal(s_head.weight, t_head.weight * 2.5) and torch.equal(s_head.bias, t_head.bias)


def test_teacher_init_refuses_a_student_with_batch_norm():
    with pytest.raises(UserError, match="batch_norm=false"):
        init_student_from_teacher(digits_net(), trained_like_teacher(), [1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- runs


def tiny_config(**overrides) -> Config:
    base = {"train.epochs": 1, "train.progress": False, "data.batch_size": 128,
            "model.width": 0.25, "model.T": 4, "model.options": {"batch_norm": False},
            "optim.name": "adam", "optim.lr": 0.003, "model.neuron": NEURON,
            "model.surrogate": {"name": "rectangle", "width": 1.0}}
    base.update(overrides)
    return load_config(recipe_path("digits")).with_overrides(base)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    train(tiny_config(**{"model.kind": "ann", "model.options": {}, "train.epochs": 3}), folder,
          verbose=False)
    return folder / "last.pt"


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_ltl_runs_report_method_and_layer_losses(tmp_path, teacher_checkpoint, mode):
    config = tiny_config(**{"ltl.mode": mode, "ltl.teacher_checkpoint": str(teacher_checkpoint),
                            "ltl.student_init": "teacher"})
    summary = train(config, tmp_path, verbose=False)
    assert summary["method"] == f"ltl-{mode}"
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    losses = row["ltl_layer_losses"]
    assert list(losses) == ["features.0", "features.1", "features.2"]  # values: the test above
    assert summary["final_test_acc"] > 0.4  # initialised from the teacher (about 0.7; chance 0.1)
    # the run's accuracy reads out t >= T_warm (3 of T = 4) online, every step offline
    model, _ = load_model(tmp_path / "last.pt")
    _, test_set, _ = datasets_from_config(config.data)
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    y = torch.tensor([int(test_set[i][1]) for i in range(len(test_set))])
    with torch.no_grad():
        outputs = model.eval()(x)  # (T, B, classes)
    start = 3 if mode == "online" else 0
    hand = (outputs[start:].mean(0).argmax(1) == y).sum().item() / len(y)
    assert summary["final_test_acc"] == pytest.approx(hand, abs=1e-9)
    proc = subprocess.run([sys.executable, "-m", "spikegrad.cli", "eval", str(tmp_path / "last.pt"),
                           "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # eval reads the online readout window from the config
    assert json.loads(proc.stdout)["test_acc"] == pytest.approx(summary["final_test_acc"])


def test_evaluation_reads_out_the_window_from_readout_start():
    """Logits that favour class 0 before step 3 and the right class from step 3 on: read out
    from step 3 every prediction is right, over all steps every one is class 0."""
    y = torch.tensor([1, 2, 3, 4])

    class Stub(nn.Module):
        def forward(self, x):
            outputs = torch.zeros(4, len(x), 10)
            outputs[:3, :, 0] = 10.0
            outputs[3:, torch.arange(len(x)), y] = 1.0
            return outputs

    loader = [(torch.zeros(4, 1), y)]
    cpu = torch.device("cpu")
    assert evaluate_model(Stub(), loader, cpu, readout_start=3)["test_acc"] == 1.0
    assert evaluate_model(Stub(), loader, cpu, readout_start=0)["test_acc"] == 0.0


def test_teacher_recipe_is_trained_first_into_the_run_folder(tmp_path):
    config = tiny_config(**{
        "ltl.mode": "offline", "ltl.teacher_recipe": "digits",
        "ltl.teacher_set": ["model.kind=ann", "model.width=0.25", "train.epochs=1",
                            "train.progress=false"],
    })
    assert train(config, tmp_path, verbose=False)["method"] == "ltl-offline"
    teacher, _ = load_model(tmp_path / "teacher" / "last.pt")
    assert teacher.kind == "ann"
    bad = config.with_overrides({"ltl.teacher_set": ["model.width=0.25"]})
    with pytest.raises(UserError, match="must train an ANN"):
        train(bad, tmp_path / "bad", verbose=False)


def test_calibrate_cli(tmp_path, teacher_checkpoint):
    config = tiny_config(**{"ltl.mode": "offline", "ltl.teacher_checkpoint": str(teacher_checkpoint),
                            "ltl.student_init": "teacher"})
    train(config, tmp_path, verbose=False)
    out = tmp_path / "calibrated.pt"
    command = [sys.executable, "-m", "spikegrad.cli", "calibrate", str(tmp_path / "last.pt"),
               "--sigma", "0.3", "--stuck-at-zero", "0.1", "--steps", "2", "--json"]
    proc = subprocess.run([*command, "--teacher", str(teacher_checkpoint), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["method"] == "ltl-online" and result["steps"] == 2
    assert result["devices"] == "σ=0.3, stuck-at-0 0.1"
    # what it wrote: the trained student with the same faults, then updated
    trained, _ = load_model(tmp_path / "last.pt")
    faulty, _ = load_model(tmp_path / "last.pt")
    ImperfectDevices(faulty, DeviceModel(sigma=0.3, stuck_at_zero=0.1, seed=0))
    calibrated, payload = load_model(out)
    assert payload["method"] == "ltl-offline+calibrated"
    assert payload["calibration"] == {k: v for k, v in result.items() if k != "out"}
    layers = zip(calibrated.modules(), faulty.modules(), trained.modules(), strict=True)
    synapses = [(c, f, t) for c, f, t in layers if isinstance(c, (nn.Conv2d, nn.Linear))]
    assert len(synapses) == 4
    for c, f, t in synapses:
        stuck = (f.weight == 0) & (t.weight != 0)
        assert stuck.float().mean().item() == pytest.approx(0.1, abs=0.08)
        assert torch.equal(c.weight[stuck], torch.zeros(int(stuck.sum())))  # still stuck
        assert not torch.equal(c.weight, f.weight)  # the calibration steps changed it
    _, test_set, _ = datasets_from_config(config.data)
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    y = torch.stack([torch.as_tensor(test_set[i][1]) for i in range(len(test_set))])

    def accuracy(model):  # logits averaged over all steps (offline LTL reads out from t = 0)
        with torch.no_grad():
            return (model.eval()(x).mean(0).argmax(1) == y).sum().item() / len(y)

    assert result["acc_fault_free"] == accuracy(trained)
    assert result["acc_before"] == accuracy(faulty)
    assert result["acc_after"] == accuracy(calibrated)
    assert result["acc_after"] != result["acc_before"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)  # no teacher
    assert proc.returncode == 2 and "needs the ANN teacher" in proc.stderr


def test_layer_weights_must_match_the_units(tmp_path, teacher_checkpoint):
    config = tiny_config(**{"ltl.mode": "offline", "ltl.teacher_checkpoint": str(teacher_checkpoint),
                            "ltl.layer_weights": [1.0, 2.0]})
    with pytest.raises(UserError, match=r"layer_weights has 2 values but the student has 3 units"):
        train(config, tmp_path, verbose=False)


def test_a_newer_teacher_stopped_half_way_continues_and_is_never_used_half_trained(tmp_path, monkeypatch):
    """An older teacher finished in teacher/; a newer one with another config started there
    and was stopped mid-epoch, leaving the old summary.json (as an older spikegrad did, writing
    over the folder). Its own checkpoint says it is not done, so it continues to the end (the
    summary.json of the old one once passed it as finished)."""
    import spikegrad.run as run_module

    older = load_config(recipe_path("digits")).with_overrides({
        "model.kind": "ann", "model.width": 0.25, "train.epochs": 1, "train.threads": 1,
        "train.progress": False, "data.batch_size": 128, "diagnostics.gradient_interval": 0,
    })
    newer = older.with_overrides({"train.seed": 1})
    folder = tmp_path / "teacher"
    run_module.train(older, folder, verbose=False)
    stale_text = (folder / "summary.json").read_text()
    stopped_run(newer, folder, iteration=5, overwrite=None)  # of 12 in its one epoch
    (folder / "summary.json").write_text(stale_text)
    stale = json.loads(stale_text)
    assert run_module.teacher_state(newer, folder) == ("stopped", [])
    assert run_module.teacher_state(older, folder)[0] == "other"
    calls = []
    real_train = run_module.train
    monkeypatch.setattr(run_module, "train",
                        lambda *a, **k: calls.append(k.get("resume_from")) or real_train(*a, **k))
    teacher = run_module._train_teacher(newer, folder, verbose=False)
    assert calls == [folder / "last.pt"]  # continued, not started over
    final = load_checkpoint(folder / "last.pt")
    assert final["progress"] is None and final["epoch"] == 1 and final["iteration"] == 12
    assert final["config"]["train"]["seed"] == 1
    for key, value in teacher.state_dict().items():  # the model handed to LTL is the finished one
        assert torch.equal(value, final["model"][key]), key
    assert json.loads((folder / "summary.json").read_text())["wall_seconds"] != stale["wall_seconds"]
    run_module._train_teacher(newer, folder, verbose=False)  # finished: reused, not retrained
    assert len(calls) == 1
    run_module._train_teacher(older, folder, verbose=False)  # another config: trained anew
    assert calls[1:] == [None] and load_checkpoint(folder / "last.pt")["config"]["train"]["seed"] == 0


def test_the_adaptive_temperature_is_refused_with_ltl_before_training(tmp_path, teacher_checkpoint):
    """LTL's loss is per layer against the teacher; the temperature search would differentiate
    the default loss of the output instead, so the pair is an error, not a silent mismatch."""
    config = tiny_config(**{"ltl.mode": "offline", "ltl.teacher_checkpoint": str(teacher_checkpoint),
                            "model.surrogate": {"name": "dspike"}, "dspike.adaptive": True,
                            "train.epochs": 2})
    with pytest.raises(UserError, match=r"component 'ltl' owns the training loss.*dspike.adaptive=false"):
        train(config, tmp_path, verbose=False)
    assert not (tmp_path / "metrics.jsonl").exists()
