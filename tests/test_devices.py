"""Device non-idealities and calibration."""

import copy

import pytest
import torch
from torch import nn

from spikegrad import models, neurons, surrogates
from spikegrad.calibration import calibrate
from spikegrad.config import load_config
from spikegrad.data import build_datasets
from spikegrad.demo import recipe_path
from spikegrad.devices import DeviceModel, ImperfectDevices, quantise
from spikegrad.errors import UserError


def layer(seed=0, shape=(64, 32, 3, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(shape[1], shape[0], shape[2]), nn.Linear(10, 5))


def weights(model):
    return [m.weight.detach().clone() for m in model if hasattr(m, "weight")]


def test_quantisation_matches_hand_values():
    w = torch.tensor([0.2, 0.26, -0.8, 2.0, -0.24])
    # 3 bits: L = 3 levels a side, range 1.5 -> step 0.5; 2.0 is clipped to 1.5
    assert torch.equal(quantise(w, 3, 1.5), torch.tensor([0.0, 0.5, -1.0, 1.5, -0.0]))


def test_device_model_is_reproducible_from_its_seed():
    def faulty(seed):
        model = layer()
        ImperfectDevices(model, DeviceModel(sigma=0.2, stuck_at_zero=0.1, stuck_at_max=0.05,
                                            bits=4, seed=seed))
        return weights(model)

    a, b, c = faulty(0), faulty(0), faulty(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_each_fault_has_the_requested_size():
    ideal = weights(layer())[0]
    model = layer()
    ImperfectDevices(model, DeviceModel(sigma=0.3, stuck_at_zero=0.1, stuck_at_max=0.05))
    w = weights(model)[0]
    top = ideal.abs().max()
    zero, stuck_max = w == 0, w.abs() == top
    n = w.numel()  # 18,432 weights
    assert zero.sum() / n == pytest.approx(0.1, abs=0.01)
    assert stuck_max.sum() / n == pytest.approx(0.05, abs=0.01)
    assert (w[stuck_max] > 0).float().mean().item() == pytest.approx(0.5, abs=0.08)  # ±R
    healthy = ~zero & ~stuck_max
    ratio = w[healthy] / ideal[healthy]
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01)
    assert ratio.std().item() == pytest.approx(0.3, abs=0.01)  # multiplicative σ


def test_sync_keeps_the_devices_imperfect_after_an_update():
    model = layer()
    devices = ImperfectDevices(model, DeviceModel(sigma=0.2, stuck_at_zero=0.2, seed=3))
    conv = model[0]
    stuck = conv.weight.detach() == 0
    programmed = devices.synapses[0].programmed.clone()
    step = torch.full_like(conv.weight, 0.01)
    with torch.no_grad():
        conv.weight += step  # an optimizer step on the device values
    devices.sync()
    assert torch.allclose(devices.synapses[0].programmed, programmed + step)
    expected = devices.synapses[0].gain * (programmed + step)
    assert torch.allclose(conv.weight[~stuck], expected[~stuck])
    assert torch.equal(conv.weight[stuck], torch.zeros(int(stuck.sum())))
    devices.restore()
    assert torch.allclose(conv.weight, programmed + step)


def test_device_value_quantises_the_programmed_weight_then_varies_it():
    """``w_dev = g ⊙ Q_k(w_prog)`` over the range ``R`` fixed when the devices were applied:
    quantisation first (the levels of an ideal device), the variation after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30))
    w = model[0].weight.detach().clone()
    R = float(w.abs().max())
    ImperfectDevices(model, DeviceModel(bits=3, seed=2))
    levels = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]) * R / 3  # 3 bits: 7 levels
    assert torch.equal(model[0].weight, quantise(w, 3, R))
    nearest = (model[0].weight.detach()[..., None] - levels).abs().min(-1)
    assert nearest.values.max() < 1e-6 and nearest.indices.unique().numel() == 7

    model = nn.Sequential(nn.Linear(20, 30))
    with torch.no_grad():
        model[0].weight.copy_(w)
    devices = ImperfectDevices(model, DeviceModel(sigma=0.3, bits=3, seed=2))
    gain = devices.synapses[0].gain
    assert torch.allclose(model[0].weight, gain * quantise(w, 3, R))
    assert not torch.allclose(model[0].weight, quantise(gain * w, 3, R))  # not the other order
    with torch.no_grad():  # a step that pushes every weight past the range
        model[0].weight += 2 * R
    devices.sync()
    assert torch.allclose(devices.synapses[0].programmed, w + 2 * R)
    assert devices.synapses[0].weight_range == R  # the range stays the applied one
    assert torch.allclose(model[0].weight, gain * R)  # clipped to the top level, R


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_threshold_variation_equals_per_neuron_thresholds(reset):
    torch.manual_seed(0)
    neuron = neurons.LIF(leak=0.8, threshold=0.5, reset=reset, surrogate=surrogates.Rectangle())
    x = torch.rand(6, 3, 4, 5)  # (T, B, C, F)
    devices = ImperfectDevices(nn.Sequential(neuron), DeviceModel(threshold_sigma=0.3, seed=1))
    spikes = neuron(x)
    k = devices.threshold_factors()[0]
    assert k.shape == (4, 5) and k.std() > 0.1
    u, expected = torch.zeros(3, 4, 5), []
    for t in range(6):  # hand loop with per-neuron thresholds θ·k
        h = 0.8 * u + x[t]
        s = (h >= 0.5 * k).float()
        u = h * (1 - s) if reset == "hard" else h - 0.5 * k * s
        expected.append(s)
    assert torch.equal(spikes, torch.stack(expected))
    assert spikes.sum() > 0
    devices.restore()
    assert not torch.equal(neuron(x), spikes)


def test_threshold_factors_stop_at_their_floor():
    """``k_i = max(1 + σ_θ·η_i, 0.05)``: a wide variation puts some factors on the floor."""
    neuron = neurons.LIF(leak=0.8, threshold=0.5)
    devices = ImperfectDevices(nn.Sequential(neuron), DeviceModel(threshold_sigma=2.0, seed=0))
    neuron(torch.rand(2, 3, 500))
    k = devices.threshold_factors()[0]
    floor = k == torch.tensor(0.05)
    # P(1 + 2η < 0.05) = Φ(-0.475) ≈ 0.32
    assert floor.float().mean().item() == pytest.approx(0.32, abs=0.07)
    assert k.min() == torch.tensor(0.05) and (k[~floor] > 0.05).all()


def test_bad_device_models_are_user_errors():
    with pytest.raises(UserError, match="stuck-at"):
        DeviceModel(stuck_at_zero=0.7, stuck_at_max=0.5)
    with pytest.raises(UserError, match="2 bits"):
        DeviceModel(bits=1)


def spiking_digits_student():
    """A digits SNN whose spikes reach every layer: the synapse weights of the default
    initialisation times 3 (unscaled, almost no spike reaches the last two layers, so no
    method could change their weights)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 1, "width": 0.25, "input_size": 8}
    student = models.create("digits_cnn", T=4, batch_norm=False, **kwargs)
    teacher = models.create("digits_cnn", kind="ann", **kwargs).eval()
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(3.0)
    return student, teacher


def hand_accuracy(model, dataset):
    """Test accuracy of the logits averaged over all time steps, the whole set in one batch."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        logits = model(x).mean(0)  # (T, B, classes) -> (B, classes)
    return (logits.argmax(1) == y).sum().item() / len(dataset)


@pytest.mark.parametrize("method", ["none", "ltl-online", "bptt"])
def test_calibration_updates_under_persistent_faults(method):
    """The updating methods change the weights of every layer that a device does not hold
    stuck, the stuck ones keep their stuck value (0 or ±R); ``none`` changes no parameter.
    The accuracies are those of the ideal, the faulty and the calibrated network."""
    config = load_config(recipe_path("digits")).with_overrides({
        "model.width": 0.25, "model.T": 4, "data.batch_size": 64, "optim.name": "adam",
        "optim.lr": 0.003, "model.options": {"batch_norm": False}})
    train_set, test_set, _ = build_datasets("digits")
    student, teacher = spiking_digits_student()
    device_model = DeviceModel(stuck_at_zero=0.2, stuck_at_max=0.1, seed=0)
    faulty = copy.deepcopy(student)  # the network as calibration finds it
    ImperfectDevices(faulty, device_model)
    model = copy.deepcopy(student)
    result = calibrate(model, device_model, train_set, test_set, config, method, steps=2, teacher=teacher)
    assert result["steps"] == (0 if method == "none" else 2)
    assert result["acc_fault_free"] == hand_accuracy(student, test_set)
    assert result["acc_before"] == hand_accuracy(faulty, test_set)
    assert result["acc_before"] != result["acc_fault_free"]  # the faults matter to this network
    assert result["acc_after"] == hand_accuracy(model, test_set)
    if method == "none":
        after, before = model.state_dict(), faulty.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before)
        return
    layers = zip(model.modules(), faulty.modules(), student.modules(), strict=True)
    synapses = [(m, f, s) for m, f, s in layers if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(synapses) == 4
    for calibrated, before, ideal in synapses:
        # σ = 0 and no quantisation: a device differs from its programmed weight only when stuck
        stuck = before.weight != ideal.weight
        assert stuck.float().mean().item() == pytest.approx(0.3, abs=0.1)
        weight_range = ideal.weight.abs().max()
        stuck_values = before.weight[stuck]
        assert torch.all((stuck_values == 0) | (stuck_values.abs() == weight_range))
        assert torch.equal(calibrated.weight[stuck], stuck_values)  # still stuck after the updates
        moved = (calibrated.weight != before.weight)[~stuck]
        assert moved.any(), "an updating method left a layer's working devices unchanged"
        assert not torch.equal(calibrated.bias, before.bias)
