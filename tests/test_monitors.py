import pytest
import torch
from torch import nn

from spikegrad import layers, neurons
from spikegrad.monitors import ActivityMonitor, FiringRateMonitor


def currents() -> torch.Tensor:
    """[T=3, B=2, 4] input currents for an IF neuron (threshold 1, hard reset to 0).

    neuron 0: 2.0 every step -> fires at every step (saturated)
    neuron 1: 0.0 -> never fires (dead)
    neuron 2: 0.6 -> h = 0.6, 1.2 (spike), 0.6: fires at t = 2 only
    neuron 3: sample 0 gets 1.0 (fires at every step), sample 1 gets 0 (never)
    """
    x = torch.zeros(3, 2, 4)
    x[:, :, 0] = 2.0
    x[:, :, 2] = 0.6
    x[:, 0, 3] = 1.0
    return x


def test_rates_per_step_dead_and_saturated_match_hand_counts():
    neuron = neurons.IF(threshold=1.0)
    with ActivityMonitor(nn.Sequential(neuron)) as monitor:
        neuron(currents())
    stats = monitor.summary()["0"]
    # spikes per step over 2 samples × 4 neurons: t1: 2 + 0 + 0 + 1, t2: 2 + 0 + 2 + 1, t3: 3
    assert stats["rate_per_step"] == pytest.approx([3 / 8, 5 / 8, 3 / 8])
    assert stats["rate"] == pytest.approx(11 / 24)
    assert stats["neurons"] == 4
    assert stats["dead_fraction"] == 0.25  # neuron 1
    assert stats["saturated_fraction"] == 0.25  # neuron 0 (neuron 3 is silent on sample 1)
    assert monitor.mean_rate() == pytest.approx(11 / 24)
    assert "membrane" not in stats


def test_sequences_of_different_lengths_share_the_per_step_rates():
    neuron = neurons.IF(threshold=1.0)
    with ActivityMonitor(nn.Sequential(neuron)) as monitor:
        neuron(torch.full((2, 1, 2), 2.0))  # T = 2: all spike
        neuron(torch.zeros(3, 1, 2))  # T = 3: none spike
    stats = monitor.summary()["0"]
    assert stats["rate_per_step"] == pytest.approx([0.5, 0.5, 0.0])
    assert stats["rate"] == pytest.approx(4 / 10)
    assert stats["saturated_fraction"] == 0.0 and stats["dead_fraction"] == 0.0


def test_membrane_statistics_come_from_the_same_pass():
    torch.manual_seed(0)
    neuron = neurons.LIF(leak=0.5, threshold=1.0)
    x = torch.randn(4, 3, 5)
    _, h = neuron.membrane(x)  # the reference: pre-reset potentials of an independent call
    calls = []
    neuron.register_forward_pre_hook(lambda *_: calls.append(1))
    with ActivityMonitor(nn.Sequential(neuron), membrane=True) as monitor:
        spikes = neuron(x)
    assert len(calls) == 1  # one forward pass gave the spikes and the membrane
    stats = monitor.summary()["0"]["membrane"]
    assert stats["mean"] == pytest.approx(h.mean().item(), abs=1e-6)
    assert stats["std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
    assert stats["min"] == pytest.approx(h.min().item())
    assert stats["max"] == pytest.approx(h.max().item())
    assert torch.equal(spikes, neuron(x))  # recording changed nothing
    assert neuron.membrane_hook is None and not neuron._forward_hooks


def test_membrane_hook_works_while_streaming():
    neuron = neurons.LIF(leak=0.5, threshold=1.0)
    x = torch.randn(6, 2, 3)
    seen = []
    neuron.membrane_hook = seen.append
    with neurons.streaming(neuron):
        neuron(x[:3])
        neuron(x[3:])
    neuron.membrane_hook = None
    _, h = neuron.membrane(x)
    assert torch.allclose(torch.cat(seen), h)


def test_monitor_watches_every_neuron_of_a_network_and_the_old_name_still_works():
    torch.manual_seed(0)
    net = nn.Sequential(
        layers.DirectEncoder(T=4),
        layers.TimeDistributed(nn.Linear(3, 8)), neurons.LIF(),
        layers.TimeDistributed(nn.Linear(8, 6)), neurons.IF(),
    )
    x = torch.randn(5, 3) * 3
    with ActivityMonitor(net) as monitor, FiringRateMonitor(net) as old:
        net(x)
    assert set(monitor.rates()) == {"2", "4"}
    assert monitor.rates() == old.rates()
    recorded = []
    for index in (2, 4):
        net[index].register_forward_hook(lambda m, i, o: recorded.append(o))
    net(x)
    total = sum(o.sum().item() for o in recorded)
    slots = sum(o.numel() for o in recorded)
    assert monitor.mean_rate() == pytest.approx(total / slots)


def test_model_without_spiking_neurons_has_no_rate():
    net = nn.Sequential(nn.Linear(2, 2), neurons.ClippedReLU())
    with ActivityMonitor(net) as monitor:
        net(torch.randn(3, 2))
    assert monitor.summary() == {} and monitor.mean_rate() is None
