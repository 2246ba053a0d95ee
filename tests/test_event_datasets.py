"""Event datasets: native files read by tonic, frames, the cache, and the simulated camera."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spikegrad.data import build_datasets, collate_for, frames
from spikegrad.data.event_camera import EventCamera, place, simulate
from spikegrad.data.events import per_class_split
from spikegrad.data.frames import FrameSpec, events_to_frames
from spikegrad.errors import UserError
from tests.conftest import require_peer
from tests.fixtures import (
    CIFAR10_DVS_CLASSES,
    write_aedat4,
    write_cifar10_dvs,
    write_dvs_gesture,
    write_nmnist,
)


@pytest.fixture(autouse=True)
def _tonic_offline(monkeypatch):
    """tonic is present, and any attempt of it to download fails the test."""
    tonic = require_peer("tonic")

    def no_download(self):
        raise AssertionError(f"tonic tried to download {type(self).__name__}")

    monkeypatch.setattr(tonic.dataset.Dataset, "download", no_download)


def count_frames(events: np.ndarray, T: int, size: int) -> np.ndarray:
    """Hand-made frames of ``[n, 4]`` rows (x, y, t, p): T slices of equal event count."""
    out = np.zeros((T, 2, size, size))
    per = len(events) // T
    for k in range(T):
        for x, y, _, p in events[k * per:(k + 1) * per]:
            out[k, int(p), int(y), int(x)] += 1
    return out


def test_cifar10_dvs_reads_aedat4_and_splits_per_class(tmp_path):
    require_peer("aedat")
    written = write_cifar10_dvs(tmp_path, per_class=3, events=240)
    train, test, info = build_datasets("cifar10_dvs", root=str(tmp_path), T=4, size=128)
    assert (len(train), len(test)) == (20, 10)  # floor(3 · 0.9) = 2 train per class, 1 test
    assert info.time_steps == 4 and info.sample_shape == (2, 128, 128) and info.num_classes == 10
    assert np.bincount(train.labels).tolist() == [2] * 10 and np.bincount(test.labels).tolist() == [1] * 10
    # train holds the first two recordings of each class by file name, in class order
    first = str(tmp_path / "CIFAR10DVS" / "airplane" / "cifar10_airplane_0.aedat4")
    x, y = train[0]
    assert x.shape == (4, 2, 128, 128) and int(y) == 0
    np.testing.assert_array_equal(x.numpy(), count_frames(written[first], 4, 128))
    last = str(tmp_path / "CIFAR10DVS" / CIFAR10_DVS_CLASSES[9] / "cifar10_truck_2.aedat4")
    np.testing.assert_array_equal(test[9][0].numpy(), count_frames(written[last], 4, 128))


def test_cifar10_dvs_resize_averages_counts(tmp_path):
    require_peer("aedat")
    write_cifar10_dvs(tmp_path, per_class=2, events=4000)
    full, _, _ = build_datasets("cifar10_dvs", root=str(tmp_path), T=2, size=128, train_fraction=0.5)
    small, _, _ = build_datasets("cifar10_dvs", root=str(tmp_path), T=2, size=48, train_fraction=0.5)
    assert small[0][0].shape == (2, 2, 48, 48)
    ratio = small[0][0].sum() / full[0][0].sum()
    assert ratio == pytest.approx((48 / 128) ** 2, rel=0.05)  # each pixel averages what it covers


def test_the_9k_1k_split_is_balanced_per_class():
    files = [f"/d/{c}/rec_{i:04d}.aedat4" for c in range(10) for i in range(1000)]
    labels = [c for c in range(10) for _ in range(1000)]
    order = np.random.default_rng(0).permutation(len(files))  # whatever order the folder walk gives
    train, test = per_class_split([files[i] for i in order], [labels[i] for i in order], 0.9)
    shuffled = np.asarray(labels)[order]
    assert (len(train), len(test)) == (9000, 1000)
    assert np.bincount(shuffled[test]).tolist() == [100] * 10
    names = [files[i] for i in order]
    assert all(int(names[i][-11:-7]) >= 900 for i in test)  # the last 100 by name of each class


def test_dvs_gesture_layout_labels_and_frames(tmp_path):
    written = write_dvs_gesture(tmp_path, events=300)
    train, test, info = build_datasets("dvs_gesture", root=str(tmp_path), T=3, size=128)
    assert (len(train), len(test), info.num_classes) == (6, 3, 11)
    assert sorted(train.labels.tolist()) == [0, 0, 3, 3, 10, 10]
    path = str(tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_natural" / "3.npy")
    rows, label = written[path]
    index = next(i for i in range(len(test)) if int(test[i][1]) == label)
    events = np.stack([rows[:, 0], rows[:, 1], rows[:, 3], rows[:, 2]], axis=1)  # x, y, t, p
    np.testing.assert_array_equal(test[index][0].numpy(), count_frames(events, 3, 128))


def test_nmnist_bin_files_and_first_saccade(tmp_path):
    written = write_nmnist(tmp_path, per_digit=1, events=200)
    train, test, info = build_datasets("nmnist", root=str(tmp_path), T=4, split="events")
    assert (len(train), len(test), info.sample_shape) == (10, 10, (2, 34, 34))
    path = str(tmp_path / "NMNIST" / "Train" / "7" / "00070.bin")
    np.testing.assert_array_equal(train[7][0].numpy(), count_frames(written[path], 4, 34))
    assert int(train[7][1]) == 7
    early, _, _ = build_datasets("nmnist", root=str(tmp_path), T=1, split="events",
                                 first_saccade_only=True)
    n_early = int((written[path][:, 2] < 100_000).sum())
    assert early[7][0].sum() == n_early


def test_frames_are_cached_and_the_key_follows_the_parameters(tmp_path, monkeypatch):
    write_nmnist(tmp_path, per_digit=1, events=50)
    first, _, _ = build_datasets("nmnist", root=str(tmp_path), T=2)
    assert len(list((tmp_path / "frames").iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(frames, "events_to_frames", fail)
    again, _, _ = build_datasets("nmnist", root=str(tmp_path), T=2)  # from the cache
    assert torch.equal(first[3][0], again[3][0])
    with pytest.raises(AssertionError, match="converted again"):
        build_datasets("nmnist", root=str(tmp_path), T=3)  # other parameters, other cache
    monkeypatch.undo()
    other = tmp_path / "elsewhere"
    build_datasets("nmnist", root=str(tmp_path), T=3, cache=str(other))
    assert len(list(other.iterdir())) == 1


def test_event_files_missing_or_corrupt_are_named(tmp_path):
    with pytest.raises(UserError, match=r"no recordings found under .*NMNIST.*Train/<digit>/\*\.bin"):
        build_datasets("nmnist", root=str(tmp_path))
    require_peer("aedat")
    with pytest.raises(UserError, match="leaves the train split empty"):
        write_cifar10_dvs(tmp_path, per_class=1, events=20)
        build_datasets("cifar10_dvs", root=str(tmp_path), T=2, size=16, train_fraction=0.5)
    write_cifar10_dvs(tmp_path, per_class=2, events=20)
    bad = tmp_path / "CIFAR10DVS" / "cat" / "cifar10_cat_0.aedat4"
    bad.write_bytes(b"#!AER-DAT3.1\r\nnot version 4")
    with pytest.raises(UserError, match=r"cifar10_cat_0\.aedat4.*cannot be read as an AEDAT 4"):
        build_datasets("cifar10_dvs", root=str(tmp_path), T=2, size=16, train_fraction=0.5)


def test_model_T_must_match_the_frames(tmp_path):
    from spikegrad.config import Config
    from spikegrad.run import build_parts

    write_nmnist(tmp_path, per_digit=1, events=40)
    config = Config().with_overrides({"data.name": "nmnist", "data.root": str(tmp_path),
                                      "data.options": {"T": 3}, "model.T": 4})
    with pytest.raises(UserError, match=r"model\.T is 4 but dataset 'nmnist' gives 3 frames"):
        build_parts(config)


def test_time_major_batches():
    data = frames.FrameDataset(np.arange(5 * 3 * 2 * 4 * 4, dtype=np.float16).reshape(5, 3, 2, 4, 4),
                               np.array([0, 1, 2, 3, 4]))
    x, y = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_for(data))))
    assert x.shape == (3, 4, 2, 4, 4) and x.dtype == torch.float32  # (T, B, C, H, W)
    assert torch.equal(x[:, 2], data[2][0]) and y.tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- simulated camera


def test_event_camera_counts_log_intensity_steps():
    """A dark pixel that the moving edge turns bright fires floor(ln(1.1/0.1)/0.2) = 11 ON events."""
    canvas = torch.zeros(1, 1, 8, 8)
    canvas[..., :4] = 1.0  # bright left half, vertical edge
    camera = EventCamera(size=8, contrast=0.2, offset=0.1, mismatch=0.0, noise_rate=0.0,
                         amplitude=2.0, steps=4)
    # first saccade: dx goes -1 -> 0, so column 3 goes dark -> bright monotonically
    events = simulate(canvas, camera, seed=0)[0]
    spec = FrameSpec(T=3, sensor_size=(8, 8, 2), size=8, duration=camera.duration_us)
    f = events_to_frames(events, spec)  # (3 saccades, polarity, y, x)
    expected = int(np.floor(np.log(1.1 / 0.1) / 0.2))
    assert expected == 11
    assert (f[0, 1, 2:6, 3] == expected).all() and (f[0, 0, 2:6, 3] == 0).all()
    assert (f[0, :, 2:6, 5:] == 0).all()  # the dark side stays quiet
    assert np.all(np.diff(events["t"]) >= 0) and events["t"].max() < camera.duration_us


def test_event_camera_path_is_the_n_mnist_triangle():
    path = EventCamera(amplitude=2.0, steps=2).path()
    corners = path[[0, 2, 4, 6]]
    np.testing.assert_allclose(corners, [[-1, -1], [0, 1], [1, -1], [-1, -1]])


def test_event_digits_is_deterministic_and_follows_the_digits_split():
    from spikegrad.data.digits import load_digits_arrays, stratified_split

    train, test, info = build_datasets("event_digits", T=4, noise_rate=1.0)
    again, _, _ = build_datasets("event_digits", T=4, noise_rate=1.0)
    assert info.time_steps == 4 and info.sample_shape == (2, 16, 16)
    assert (len(train), len(test)) == (1433, 364)
    assert np.array_equal(train.frames, again.frames)
    _, labels = load_digits_arrays()
    assert np.array_equal(test.labels, labels[stratified_split(labels)[1]])
    x, _ = train[0]
    assert x.shape == (4, 2, 16, 16) and x.sum() > 100 and (x[:, 0].sum() > 0) and (x[:, 1].sum() > 0)
    canvas = place(load_digits_arrays()[0][:4], 12, 16)
    camera = EventCamera(noise_rate=5.0)
    a, b = simulate(canvas, camera, seed=1), simulate(canvas, camera, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # the seed matters


def test_place_centres_the_digit():
    img = np.zeros((1, 8, 8), dtype=np.float32)
    img[0] = 1.0
    canvas = place(img, 12, 16)
    assert canvas.shape == (1, 1, 16, 16)
    assert canvas[0, 0, 2:14, 2:14].min() > 0.99 and canvas[0, 0, :2].max() == 0


def test_aedat4_writer_round_trip(tmp_path):
    """The fixture writer itself: aedat decodes what it wrote, across packets."""
    aedat = require_peer("aedat")
    events = np.array([[1, 2, 10, 1], [3, 4, 20, 0], [127, 127, 30, 1]])
    path = Path(tmp_path) / "x.aedat4"
    write_aedat4(path, events, packets=2)
    decoded = np.concatenate([p["events"] for p in aedat.Decoder(str(path)) if "events" in p])
    assert decoded["x"].tolist() == [1, 3, 127] and decoded["t"].tolist() == [10, 20, 30]
    assert decoded["on"].tolist() == [True, False, True]


def test_events_to_frames_without_tonic_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tonic.transforms", None)  # import fails
    events = np.zeros(3, dtype=[("x", int), ("y", int), ("t", int), ("p", int)])
    with pytest.raises(UserError, match=r"needs tonic.*pip install --no-deps tonic"):
        events_to_frames(events, FrameSpec(T=2, sensor_size=(4, 4, 2), size=4))
