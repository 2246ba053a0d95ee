import pytest
import torch
from torch import nn

from spikegrad import layers, neurons
from spikegrad.energy import PJ_PER_AC, PJ_PER_MAC, OpsCounter, dense_macs, synaptic_ops


def spike_map(shape, positions, value=1.0):
    x = torch.zeros(shape)
    for pos in positions:
        x[pos] = value
    return x


@pytest.mark.parametrize("position, expected", [
    ((0, 0, 0, 0), 2 * 4),  # corner: 2 output channels × 4 windows (zero padding elsewhere)
    ((0, 0, 0, 1), 2 * 6),  # edge
    ((0, 0, 1, 1), 2 * 9),  # interior: the full 3×3 kernel
])
def test_conv_fan_out_at_corner_edge_and_centre(position, expected):
    conv = nn.Conv2d(1, 2, 3, stride=1, padding=1)
    assert synaptic_ops(conv, spike_map((1, 1, 3, 3), [position])).item() == expected


def test_strided_conv_fan_out_counts_only_windows_that_read_the_spike():
    # 4×4 input, k=3, stride 2, pad 1 -> 2×2 outputs reading rows {-1,0,1} and {1,2,3}:
    # rows/columns are covered 1, 2, 1, 1 times, so m(1,1) = 4, m(3,3) = 1, m(0,2) = 1.
    conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
    x = spike_map((1, 1, 4, 4), [(0, 0, 1, 1), (0, 0, 3, 3), (0, 0, 0, 2)])
    assert synaptic_ops(conv, x).item() == 3 * (4 + 1 + 1)
    # all 16 positions: Σ m = (1 + 2 + 1 + 1)² = 25 of the 2·2·9 = 36 taps (11 read padding)
    assert synaptic_ops(conv, torch.ones(1, 1, 4, 4)).item() == 3 * 25


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 4, 3, 2, 1),
    nn.Conv2d(3, 6, 3, 1, 1, groups=3),
    nn.Conv2d(3, 4, (3, 2), (2, 1), (1, 0), dilation=(2, 1)),
    nn.Conv2d(3, 4, 3, 1, 1, padding_mode="reflect"),
    nn.Conv1d(3, 5, 3, 2, 1),
])
def test_sops_equal_a_brute_force_count(conv):
    """Reference: run the layer with all-one weights on the spikes; each output counts its ACs."""
    torch.manual_seed(0)
    dims = len(conv.kernel_size)
    x = (torch.rand(5, 3, *([7] * dims)) > 0.6).float()
    reference = nn.functional.conv2d if dims == 2 else nn.functional.conv1d
    padded = x
    padding = conv.padding
    if conv.padding_mode != "zeros":
        padded = nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    brute = reference(padded, torch.ones_like(conv.weight), None, conv.stride, padding,
                      conv.dilation, conv.groups).sum()
    assert synaptic_ops(conv, x).item() == brute.item()


def test_linear_sops_and_dense_macs():
    linear = nn.Linear(6, 4)
    x = spike_map((2, 6), [(0, 1), (1, 5), (1, 2)])
    assert synaptic_ops(linear, x).item() == 3 * 4
    assert dense_macs(linear, x) == 2 * 6 * 4
    conv = nn.Conv2d(2, 3, 3, 2, 1)
    assert dense_macs(conv, torch.zeros(4, 2, 5, 5)) == 4 * 3 * 3 * 3 * (2 * 9)


def tiny_network() -> nn.Module:
    """Direct input -> 1×1 conv -> IF -> 3×3/2 conv -> IF -> linear; spikes known by hand."""
    conv1 = nn.Conv2d(1, 1, 1, bias=False)
    conv2 = nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False)
    linear = nn.Linear(12, 5)
    for layer in (conv1, conv2, linear):
        nn.init.ones_(layer.weight)
    return nn.Sequential(
        layers.DirectEncoder(T=2),
        layers.TimeDistributed(conv1), neurons.IF(threshold=1.0),
        layers.TimeDistributed(conv2), neurons.IF(threshold=1.0),
        layers.TimeDistributed(nn.Sequential(nn.Flatten(), linear)),
    )


def test_sops_and_energy_of_a_tiny_network_match_hand_counts():
    # Pixels at (0,0), (1,1), (3,3) equal 1.5 (analog), so the first IF (threshold 1, hard
    # reset) spikes there at both steps and nowhere else.
    # conv2 (k3, s2, p1) reads them m = 1, 4, 1 times: 6 × 3 channels = 18 ACs per step.
    # With all-one weights every conv2 output sees >= 1 spike: 3·2·2 = 12 spikes per step,
    # each driving 5 linear outputs: 60 ACs per step. T = 2 steps.
    # conv1 gets the analog image: 16 MACs per step (1 channel, 1×1 kernel, 4×4).
    image = spike_map((1, 4, 4), [(0, 0, 0), (0, 1, 1), (0, 3, 3)], value=1.5)
    batch = torch.stack([image, image])  # two samples: counts are per sample
    net = tiny_network()
    with torch.no_grad(), OpsCounter(net) as ops:
        net(batch)
        ops.add_samples(2)
    result = ops.summary()
    by_layer = result["layers"]
    assert list(by_layer) == ["1", "3", "5.1"]  # TimeDistributed's `module.` dropped
    assert by_layer["1"] == pytest.approx({
        "type": "Conv2d", "input": "analog", "sops": 0.0, "macs": 2 * 16, "ann_macs": 16,
        "energy_uj": PJ_PER_MAC * 32 * 1e-6, "ann_energy_uj": PJ_PER_MAC * 16 * 1e-6})
    assert by_layer["3"]["input"] == "spikes"
    assert by_layer["3"]["sops"] == 2 * 18 and by_layer["3"]["ann_macs"] == 3 * 4 * 9
    assert by_layer["5.1"]["sops"] == 2 * 60 and by_layer["5.1"]["ann_macs"] == 12 * 5
    totals = result["totals"]
    assert totals["sops"] == 156 and totals["macs"] == 32 and totals["ann_macs"] == 184
    assert totals["energy_uj"] == pytest.approx((0.9 * 156 + 4.6 * 32) * 1e-6)
    assert totals["ann_energy_uj"] == pytest.approx(4.6 * 184 * 1e-6)
    assert totals["energy_ratio"] == pytest.approx((0.9 * 156 + 4.6 * 32) / (4.6 * 184))
    assert (PJ_PER_AC, PJ_PER_MAC) == (0.9, 4.6)


def test_counter_detaches_and_needs_samples():
    net = tiny_network()
    with OpsCounter(net) as ops:
        net(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="add_samples"):
        ops.summary()
    calls = ops.ops["3"].calls
    net(torch.rand(1, 1, 4, 4))  # after the block: not counted
    assert ops.ops["3"].calls == calls


def test_mixed_inputs_are_reported():
    linear = nn.Linear(3, 2)
    with OpsCounter(linear) as ops:
        linear(torch.tensor([[1.0, 0.0, 1.0]]))
        linear(torch.tensor([[0.5, 0.0, 1.0]]))
        ops.add_samples(1)
    layer = ops.summary()["layers"][""]
    assert layer["input"] == "mixed" and layer["sops"] == 2 * 2 and layer["macs"] == 3 * 2


def test_half_precision_spikes_are_counted_exactly():
    """bf16 holds integers exactly only up to 256: the sums must not stay in bf16."""
    from spikegrad.monitors import ActivityMonitor

    spikes = torch.ones(2, 601, 1, 3, 3, dtype=torch.bfloat16)  # (T, B, C, H, W)
    conv = nn.Conv2d(1, 1, 3, padding=1).to(torch.bfloat16)
    with torch.no_grad(), OpsCounter(conv) as ops:
        conv(spikes.flatten(0, 1))
        ops.add_samples(1)
    # 3×3 map, k3, pad 1: rows (and columns) are covered 2, 3, 2 times, Σ m = 7² = 49
    assert ops.summary()["totals"]["sops"] == 1202 * 49
    neuron = neurons.IF(threshold=0.5)
    with ActivityMonitor(nn.Sequential(neuron)) as monitor:
        neuron(spikes)
    assert monitor.summary()["0"]["rate_per_step"] == [1.0, 1.0]
