"""Spike rasters and membrane traces: recorded values against a hand-run of the neuron."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import layers, neurons
from spikegrad.cli import main
from spikegrad.errors import UserError
from spikegrad.recording import (
    RECORDING_FILE,
    Recorder,
    load_recording,
    membrane_figure,
    raster_figure,
    raster_neurons,
    record,
    save_recording,
    trace_neurons,
)
from spikegrad.run import train
from tests.test_trainer import tiny_config


def two_layer_net(reset="hard", backend="reference"):
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(3, 4), nn.Linear(4, 2)
    return nn.Sequential(
        layers.DirectEncoder(T=5),
        layers.TimeDistributed(lin1),
        neurons.LIF(leak=0.6, threshold=0.4, reset=reset, v_reset=-0.1 if reset == "hard" else 0.0,
                    backend=backend),
        layers.TimeDistributed(lin2),
        neurons.LIF(leak=0.9, threshold=0.2, reset=reset, backend=backend),
    ), lin1, lin2


def hand_lif(current, leak, threshold, reset, v_reset):
    """u_0 = v_reset (hard) or 0; h_t = λ·u_{t-1} + I_t; s_t = [h_t >= θ]; reset after a spike."""
    T = current.shape[0]
    u = torch.full_like(current[0], v_reset if reset == "hard" else 0.0)
    hs, ss = [], []
    for t in range(T):
        h = leak * u + current[t]
        s = (h >= threshold).float()
        u = torch.where(s > 0, torch.full_like(h, v_reset), h) if reset == "hard" else h - threshold * s
        hs.append(h)
        ss.append(s)
    return torch.stack(ss), torch.stack(hs)


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_recorded_spikes_and_potentials_equal_a_hand_run(reset, backend):
    net, lin1, lin2 = two_layer_net(reset, backend)
    x = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.9, -1.0], [0.7, 0.7, 0.7]])
    with torch.no_grad(), Recorder(net, ["2", "4"], samples=2) as rec:
        net(x)
    first, second = rec.layer_recordings()
    with torch.no_grad():
        current1 = lin1(x[:2]).unsqueeze(0).repeat(5, 1, 1)  # direct encoding: the same I every step
        s1, h1 = hand_lif(current1, 0.6, 0.4, reset, -0.1)
        s2, h2 = hand_lif(lin2(s1), 0.9, 0.2, reset, 0.0)
    assert first.name == "2" and first.threshold == 0.4 and first.shape == (4,)
    assert first.spikes.shape == (5, 2, 4) and first.spikes.dtype == torch.uint8
    torch.testing.assert_close(first.spikes.float(), s1)
    torch.testing.assert_close(first.membrane, h1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(second.spikes.float(), s2)
    torch.testing.assert_close(second.membrane, h2, rtol=1e-6, atol=1e-6)
    assert 0 < s1.sum() < s1.numel() and 0 < s2.sum() < s2.numel(), "the test needs spikes and silence"
    # a spike is exactly a potential at or above the threshold
    assert torch.equal(first.spikes.bool(), first.membrane >= 0.4)


def test_recorder_keeps_the_first_samples_over_calls_and_restores_hooks():
    net, *_ = two_layer_net()
    seen = []
    net[2].membrane_hook = seen.append
    x = torch.randn(3, 3)
    with torch.no_grad(), Recorder(net, ["2"], samples=4) as rec:
        net(x)
        net(x.flip(0))
        net(x)  # beyond the 4 samples: ignored
    (layer,) = rec.layer_recordings()
    assert layer.spikes.shape == (5, 4, 4)
    assert len(seen) == 3  # the existing hook was still called, every time
    assert net[2].membrane_hook == seen.append and net[4].membrane_hook is None
    assert not net[2]._forward_hooks
    with torch.no_grad():
        _, h = net[2].membrane(net[1](net[0](x.flip(0))))
    torch.testing.assert_close(layer.membrane[:, 3], h[:, 0])  # sample 4 = first of the 2nd call


def test_bad_layer_names_and_sample_counts_are_user_errors():
    net, *_ = two_layer_net()
    with pytest.raises(UserError, match=r"unknown neuron layer 'conv'.*2, 4"):
        Recorder(net, ["conv"])
    with pytest.raises(UserError, match=">= 1"):
        Recorder(net, ["2"], samples=0)
    with pytest.raises(UserError, match="no spiking neuron layers"):
        Recorder(nn.Sequential(nn.Linear(2, 2)), ["all"])
    assert list(Recorder(net, ["all"]).layers) == ["2", "4"]


def test_saved_recordings_load_back_without_pickle(tmp_path):
    net, *_ = two_layer_net()
    data = TensorDataset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]))
    recording = record(net, data, ["all"], samples=3)
    assert recording.indices == [0, 1, 2] and recording.labels == [0, 1, 0]
    assert len(recording.predictions) == 3
    path = save_recording(recording, tmp_path / "r.npz")
    with np.load(path, allow_pickle=False) as raw:
        assert raw["spikes_0"].dtype == np.uint8
    back = load_recording(path)
    assert [r.name for r in back.layers] == ["2", "4"] and back.labels == [0, 1, 0]
    for a, b in zip(recording.layers, back.layers, strict=True):
        assert torch.equal(a.spikes, b.spikes) and torch.equal(a.membrane, b.membrane)
        assert a.threshold == b.threshold and a.shape == b.shape
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a spikegrad recording"):
        load_recording(tmp_path / "bad.npz")


def test_chosen_neurons_for_rasters_and_traces():
    assert raster_neurons(100) == (list(range(100)), 1)
    assert raster_neurons(1024) == (list(range(0, 1024, 8)), 8)
    from spikegrad.recording import LayerRecording

    spikes = torch.tensor([[[0, 1, 1, 0, 0, 1]], [[0, 1, 0, 0, 0, 0]], [[0, 1, 0, 0, 0, 1]],
                           [[0, 1, 0, 0, 0, 0]]], dtype=torch.uint8)  # (T=4, B=1, N=6)
    membrane = torch.rand(4, 1, 6) * 0.4
    membrane[:, 0, 3] = 0.45  # the silent neuron closest to the threshold 0.5
    membrane[:, 0, 0] = 0.41
    membrane[:, 0, 4] = -0.2
    layer = LayerRecording("l", 0.5, (6,), spikes, membrane)
    # spiking, count closest to T/2 = 2 first: 5 (2 spikes), 2 (1 spike), 1 (4 spikes);
    # then silent, closest to the threshold: 3, 0
    assert trace_neurons(layer, 0) == [5, 2, 1, 3, 0]
    assert trace_neurons(layer, 0, firing=1, silent=1) == [5, 3]


def test_figures_draw_every_layer_with_the_threshold(tmp_path):
    net, *_ = two_layer_net()
    recording = record(net, TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
                       ["all"], samples=2)
    fig = raster_figure(recording, samples=2)
    assert len(fig.axes) == 4  # 2 layers x 2 samples
    fig = membrane_figure(recording)
    for ax, layer in zip(fig.axes, recording.layers, strict=True):
        assert any(list(line.get_ydata()) == [layer.threshold] * 2 for line in ax.get_lines())


def test_eval_raster_cli_writes_the_recording_and_the_report_shows_it(tmp_path, capsys):
    train(tiny_config(), tmp_path / "run", verbose=False)
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert main(["eval", checkpoint, "--raster", "features.0.1,features.2.1", "--samples", "3",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["raster"] == [str(tmp_path / "run" / name)
                                 for name in (RECORDING_FILE, "raster.png", "membrane.png")]
    recording = load_recording(tmp_path / "run" / RECORDING_FILE)
    assert [r.name for r in recording.layers] == ["features.0.1", "features.2.1"]
    assert recording.layers[0].spikes.shape[:2] == (2, 3)  # T = 2, 3 samples
    assert (tmp_path / "run" / "raster.png").read_bytes()[:4] == b"\x89PNG"
    from spikegrad.report import find_runs, render_report

    page = render_report(find_runs([tmp_path / "run"]))
    assert "Spike rasters and membrane traces" in page and "spike raster" in page
    assert main(["eval", checkpoint, "--raster", "nope"]) == 2
    assert "unknown neuron layer 'nope'" in capsys.readouterr().err
    assert main(["eval", checkpoint, "--samples", "3"]) == 2  # --samples without --raster
    assert "--raster" in capsys.readouterr().err
