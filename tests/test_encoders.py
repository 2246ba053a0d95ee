"""Latency and delta encoders: hand-computed spike trains; the registry behind model.encoder."""

import pytest
import torch

from spikegrad import encoders, models
from spikegrad.config import load_config
from spikegrad.encoders import DeltaEncoder, LatencyEncoder
from spikegrad.errors import UserError
from spikegrad.layers import DirectEncoder, PoissonEncoder


def test_latency_linear_by_hand():
    enc = LatencyEncoder(5)
    x = torch.tensor([[1.0, 0.5, 0.3, 0.0, 0.9, 1.7, -0.2, 0.125]])
    # t = floor(4·(1 - x) + 1/2): 1 -> 0, 0.5 -> 2, 0.3 -> floor(3.3) = 3, 0.9 -> floor(0.9) = 0,
    # 1.7 clamps to 1 -> 0, 0.125 -> floor(4.0) = 4; 0 and -0.2 are dark: no spike
    assert enc.spike_times(x).tolist() == [[0, 2, 3, 4, 0, 0, 4, 4]]
    s = enc(x)
    assert s.shape == (5, 1, 8)
    expected = torch.zeros(5, 1, 8)
    for i, t in enumerate([0, 2, 3, None, 0, 0, None, 4]):
        if t is not None:
            expected[t, 0, i] = 1.0
    assert torch.equal(s, expected)
    assert s.sum(0).max() == 1  # at most one spike per input


def test_latency_log_by_hand():
    enc = LatencyEncoder(4, scale="log", min_intensity=0.01)
    x = torch.tensor([1.0, 0.1, 0.01, 0.001, 0.2])
    # t = floor(3·ln(max(x, 0.01))/ln(0.01) + 1/2): 1 -> 0, 0.1 -> 1.5 -> 2, 0.01 -> 3,
    # 0.001 -> clamps to 0.01 -> 3, 0.2 -> 3·0.349 = 1.048 -> 1
    assert enc.spike_times(x).tolist() == [0, 2, 3, 3, 1]
    assert enc(x.unsqueeze(0)).sum().item() == 5


def test_latency_threshold_silences_dim_inputs():
    enc = LatencyEncoder(3, threshold=0.25)
    s = enc(torch.tensor([[0.2, 0.25, 0.3]]))
    assert s.sum(0).tolist() == [[0.0, 0.0, 1.0]]
    assert s[1, 0, 2] == 1.0  # floor(2·0.7 + 0.5) = 1


def test_delta_signed_on_a_sequence_by_hand():
    enc = DeltaEncoder(3, threshold=0.3)
    seq = torch.tensor([0.5, 0.6, 0.1, 0.45, 0.45]).view(5, 1, 1)  # (T', B, N)
    # d = 0.5, 0.1, -0.5, 0.35, 0 -> +1, 0, -1, +1, 0 (x_(-1) = 0)
    assert enc(seq, time_major=True).flatten().tolist() == [1.0, 0.0, -1.0, 1.0, 0.0]


def test_delta_on_off_channels_and_static_input():
    enc = DeltaEncoder(3, threshold=0.2, mode="on_off")
    seq = torch.tensor([[0.0, 0.5], [0.3, 0.1], [0.3, 0.4]]).view(3, 1, 2, 1)  # (T, B, C=2, 1)
    out = enc(seq, time_major=True)
    assert out.shape == (3, 1, 4, 1)
    # channel 0: d = 0, 0.3, 0 -> on at t=1; channel 1: d = 0.5, -0.4, 0.3 -> on t=0,2; off t=1
    on, off = out[:, 0, :2, 0], out[:, 0, 2:, 0]
    assert on.tolist() == [[0, 1], [1, 0], [0, 1]]
    assert off.tolist() == [[0, 0], [0, 1], [0, 0]]
    static = DeltaEncoder(4, threshold=0.2)(torch.tensor([[0.1, 0.7, -0.5]]))
    assert static.shape == (4, 1, 3)
    assert static[0].tolist() == [[0.0, 1.0, -1.0]] and static[1:].abs().sum() == 0


def test_registry_builds_every_encoder_and_explains_bad_ones():
    assert encoders.available() == ["direct", "poisson", "latency", "delta"]
    kinds = {name: type(encoders.create(name, 4)) for name in encoders.available()}
    assert kinds == {"direct": DirectEncoder, "poisson": PoissonEncoder, "latency": LatencyEncoder,
                     "delta": DeltaEncoder}
    assert encoders.create({"name": "latency", "scale": "log"}, 4).scale == "log"
    with pytest.raises(UserError, match="unknown encoder 'rate'"):
        encoders.create("rate", 4)
    with pytest.raises(UserError, match="unknown latency scale 'lg'"):
        encoders.create({"name": "latency", "scale": "lg"}, 4)
    with pytest.raises(UserError, match=r"encoder 'delta' has no option 'sacle'; it takes threshold, mode"):
        encoders.create({"name": "delta", "sacle": 1}, 4)
    with pytest.raises(UserError, match=r"encoder 'poisson' has no option 'foo'; it takes no options"):
        encoders.create({"name": "poisson", "foo": 1}, 4)  # not the DirectEncoder it derives from
    with pytest.raises(UserError, match=r"'threshol' \(did you mean 'threshold'\?\)"):
        encoders.create({"name": "delta", "threshol": 0.1}, 4)
    with pytest.raises(UserError, match="must be positive"):
        DeltaEncoder(4, threshold=0)


def test_model_encoder_in_a_recipe_reads_the_registry():
    config = load_config(None, ["model.encoder=latency"])
    assert config.model.encoder == "latency"
    config = load_config(None, ["model.encoder={name: delta, threshold: 0.2}"])
    assert config.model.encoder == {"name": "delta", "threshold": 0.2}
    with pytest.raises(UserError, match=r"model\.encoder.*did you mean 'latency'"):
        load_config(None, ["model.encoder=latncy"])
    model = models.create("digits_cnn", T=3, width=0.25, encoder={"name": "latency", "scale": "log"})
    assert isinstance(model.encoder, LatencyEncoder) and model.encoder.T == 3
    x = torch.rand(2, 1, 8, 8)
    assert model(x).shape == (3, 2, 10)
    delta = models.create("digits_cnn", T=3, width=0.25, encoder="delta")
    frames = torch.rand(5, 2, 1, 8, 8)  # a sequence is delta-coded step by step, keeping its 5 steps
    coded = delta.encode(frames)
    assert coded.shape == (5, 2, 1, 8, 8)
    assert torch.equal(coded, DeltaEncoder(3)(frames, time_major=True))
    assert torch.equal(models.create("digits_cnn", T=3, width=0.25).encode(frames), frames)
    with pytest.raises(UserError, match="on_off mode doubles"):
        models.create("digits_cnn", T=3, encoder={"name": "delta", "mode": "on_off"})


@pytest.mark.slow
def test_training_with_a_latency_encoder(tmp_path):
    from spikegrad.run import train
    from tests.test_trainer import tiny_config

    config = tiny_config(**{"model.encoder": "latency", "model.T": 4, "train.epochs": 3,
                            "data.batch_size": 32})
    summary = train(config, tmp_path, verbose=False)
    assert summary["final_test_acc"] > 0.5  # 10 classes: it learns from first-spike times


def test_nir_refuses_the_coding_encoders():
    from spikegrad.nir import _EXPORTERS

    for cls in (LatencyEncoder, DeltaEncoder):
        assert cls in _EXPORTERS  # not exported as an identity, as a DirectEncoder subclass would be



@pytest.mark.parametrize("encoder", ["poisson", "latency"])
def test_a_static_encoder_for_event_frames_is_refused_not_skipped(encoder):
    """Event frames are already [T, B, ...]: the network passes them through un-coded, so a
    Poisson or latency encoder could not apply to them."""
    from spikegrad.build import build_model
    from spikegrad.data import DatasetInfo

    frames = DatasetInfo(num_classes=10, sample_shape=(2, 8, 8), time_steps=3)
    config = load_config(None, ["model.name=digits_cnn", "model.T=3", f"model.encoder={encoder}",
                                "data.name=event_digits"])
    with pytest.raises(UserError, match=rf"model.encoder '{encoder}' codes static samples, but dataset "
                                        r"'event_digits' gives time-major frames \(3 per sample\)"):
        build_model(config, frames)
    for passes in ("direct", "{name: delta}"):  # the frames as they are, or coded as a sequence
        config = load_config(None, ["model.name=digits_cnn", "model.T=3", f"model.encoder={passes}"])
        model, _ = build_model(config, frames)
        assert model(torch.rand(3, 2, 2, 8, 8)).shape == (3, 2, 10)


def test_the_trainer_refuses_event_frames_for_a_static_encoder():
    """The Python API's twin of the config check: a model built by hand with a Poisson
    encoder, trained on time-major samples."""
    from torch.utils.data import TensorDataset

    from spikegrad import Config, Trainer

    frames = TensorDataset(torch.rand(8, 3, 2, 8, 8), torch.zeros(8, dtype=torch.long))  # [T, C, H, W]
    config = Config().with_overrides({"train.device": "cpu", "train.progress": False})
    net = models.create("digits_cnn", in_channels=2, input_size=8, T=3, encoder="poisson", width=0.25)
    with pytest.raises(UserError, match=r"the samples are time-major \(3, 2, 8, 8\).*PoissonEncoder codes "
                                        r"static samples.*use encoder direct"):
        Trainer(net, frames, frames, config, verbose=False)
    net = models.create("digits_cnn", in_channels=2, input_size=8, T=3, width=0.25)  # direct
    Trainer(net, frames, frames, config, verbose=False)
    static = TensorDataset(torch.rand(8, 2, 8, 8), torch.zeros(8, dtype=torch.long))
    poisson = models.create("digits_cnn", in_channels=2, input_size=8, T=3, encoder="poisson", width=0.25)

    reads: list[int] = []

    class Counting(TensorDataset):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    Trainer(poisson, Counting(*static.tensors), static, config, verbose=False)  # what Poisson codes
    assert sorted(reads) == [0, 7]  # the first and last samples, each read once to check
