"""The loss registry: spike-count and membrane losses, hand-computed values and gradients."""

import json

import pytest
import torch

from spikegrad import losses, models
from spikegrad.config import TrainConfig, load_config
from spikegrad.errors import UserError
from spikegrad.losses import max_membrane_cross_entropy, spike_count_loss, spike_count_targets, training_loss
from tests.conftest import require_peer


def spikes(T=4, B=2, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, C, generator=g) < 0.5).float().requires_grad_(True)


def test_spike_count_targets_by_hand():
    t = spike_count_targets(torch.tensor([2, 0]), T=5, classes=3, correct_rate=0.8, incorrect_rate=0.3)
    # on = int(5·0.8) = 4, off = int(5·0.3) = int(1.5) = 1
    assert t.tolist() == [[1, 1, 4], [4, 1, 1]]


def test_spike_count_loss_and_gradient_by_hand():
    s = torch.tensor([[[1, 0, 1], [0, 0, 1]],
                      [[1, 1, 0], [0, 1, 1]],
                      [[0, 0, 1], [1, 0, 1]],
                      [[1, 0, 0], [0, 0, 1]]], dtype=torch.float32, requires_grad=True)  # (T=4, B=2, C=3)
    y = torch.tensor([0, 2])
    # counts: sample 0 -> [3, 1, 2], sample 1 -> [1, 1, 4]; targets (rates 1, 0): [4, 0, 0], [0, 0, 4]
    # squared errors: 1, 1, 4 and 1, 1, 0 -> mean 8/6; divided by T = 4 -> 1/3
    loss = spike_count_loss(s, y)
    assert loss.item() == pytest.approx(1 / 3)
    loss.backward()
    # dL/ds[t, b, c] = 2·(n - n̂)/(B·C·T) = (n - n̂)/12, the same at every step
    diff = torch.tensor([[-1, 1, 2], [1, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(s.grad, (diff / 12).expand(4, 2, 3))


def test_spike_count_loss_equals_snntorchs_mse_count_loss():
    functional = require_peer("snntorch.functional")
    s = spikes(T=6, B=5, C=4, seed=3)
    y = torch.tensor([0, 3, 1, 1, 2])
    for on, off in ((1.0, 0.0), (0.8, 0.2), (0.75, 0.25)):
        ours = spike_count_loss(s, y, on, off)
        theirs = functional.mse_count_loss(correct_rate=on, incorrect_rate=off)(s, y)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        g_ours, = torch.autograd.grad(ours, s)
        g_theirs, = torch.autograd.grad(theirs, s)
        torch.testing.assert_close(g_ours, g_theirs)


def test_spike_count_loss_refuses_analog_outputs():
    with pytest.raises(UserError, match="readout: spikes"):
        spike_count_loss(torch.randn(3, 2, 4), torch.tensor([0, 1]))


def test_max_membrane_cross_entropy_by_hand():
    o = torch.tensor([[[0.5, 2.0, -1.0]],
                      [[1.5, 0.0, 0.2]],
                      [[1.0, 1.0, 0.1]]], requires_grad=True)  # (T=3, B=1, C=3)
    y = torch.tensor([0])
    # max over t: [1.5, 2.0, 0.2] at steps 1, 0, 1
    m = torch.tensor([1.5, 2.0, 0.2])
    p = torch.softmax(m, 0)
    loss = max_membrane_cross_entropy(o, y)
    assert loss.item() == pytest.approx(-torch.log(p[0]).item())
    loss.backward()
    expected = torch.zeros(3, 1, 3)
    onehot = torch.tensor([1.0, 0.0, 0.0])
    for c, t in enumerate([1, 0, 1]):  # only each class's maximum step gets a gradient
        expected[t, 0, c] = p[c] - onehot[c]
    torch.testing.assert_close(o.grad, expected)


def test_registry_and_config_choices():
    assert losses.available() == ["ce", "tet", "spike_count", "membrane"]
    for name in losses.available():
        assert callable(training_loss(TrainConfig(loss=name)))
    assert load_config(None, ["train.loss=membrane"]).train.loss == "membrane"
    with pytest.raises(UserError, match=r"train\.loss.*did you mean 'spike_count'"):
        load_config(None, ["train.loss=spike_cont"])
    with pytest.raises(UserError, match=r"do not apply to train\.loss ce"):
        training_loss(TrainConfig(correct_rate=0.8))
    with pytest.raises(UserError, match="label_smoothing does not apply"):
        training_loss(TrainConfig(loss="spike_count", label_smoothing=0.1))
    with pytest.raises(UserError, match=r"train\.incorrect_rate.*<= 1"):
        load_config(None, ["train.incorrect_rate=2"])


def test_tet_reads_its_weight_and_target_from_the_config():
    """``train.tet_lambda`` weighs the MSE term and ``train.tet_phi`` is its target, not swapped."""
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(4, 3, 5, generator=g), torch.tensor([0, 4, 2])
    loss = training_loss(TrainConfig(loss="tet", tet_lambda=0.1, tet_phi=0.5))(out, y)
    ce = torch.stack([torch.nn.functional.cross_entropy(o, y) for o in out]).mean()
    mse = ((out - 0.5) ** 2).mean()
    assert loss.item() == pytest.approx((0.9 * ce + 0.1 * mse).item())
    assert loss.item() != pytest.approx(training_loss(TrainConfig(loss="tet", tet_lambda=0.5, tet_phi=0.1))(
        out, y).item())


def test_spiking_readout_and_refusals():
    model = models.create("digits_cnn", T=3, width=0.25, readout="spikes")
    out = model(torch.rand(2, 1, 8, 8))
    assert out.shape == (3, 2, 10) and bool(((out == 0) | (out == 1)).all())
    with pytest.raises(UserError, match="unknown readout 'spike'"):
        models.create("digits_cnn", readout="spike")
    with pytest.raises(UserError, match="needs a spiking network"):
        models.create("digits_cnn", kind="ann", readout="spikes")


@pytest.mark.slow
def test_training_with_the_spike_count_loss(tmp_path):
    from spikegrad.cli import main
    from spikegrad.run import train
    from tests.test_trainer import tiny_config

    config = tiny_config(**{"train.loss": "spike_count", "model.options": {"readout": "spikes"},
                            "train.correct_rate": 1.0, "train.incorrect_rate": 0.25,
                            "model.T": 4, "train.epochs": 3, "data.batch_size": 32})
    summary = train(config, tmp_path / "run", verbose=False)
    assert summary["final_test_acc"] > 0.3  # 10 classes (0.1 by chance); count ties go to class 0
    assert main(["eval", str(tmp_path / "run" / "best.pt")]) == 0  # rebuilt with its spiking readout
    membrane = tiny_config(**{"train.loss": "membrane", "model.T": 4, "train.epochs": 2,
                              "data.batch_size": 32})
    assert train(membrane, tmp_path / "membrane", verbose=False)["final_test_acc"] > 0.5
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["train_loss"] < json.loads(rows[0])["train_loss"]
