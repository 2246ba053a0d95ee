"""CIFAR, Tiny ImageNet and ImageNet loaders on tiny files in the real formats."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from spikegrad.data import build_datasets, cifar
from spikegrad.data.files import RemoteFile, extract_archive, md5sum
from spikegrad.data.images import random_resized_crop, resize, resize_center_crop
from spikegrad.data.safe_pickle import load_restricted
from spikegrad.errors import UserError
from tests.fixtures import write_cifar, write_class_folders, write_tiny_imagenet


def _normalised(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_python_batches(tmp_path):
    expected = write_cifar(tmp_path, "cifar10", per_batch=3, n_test=4)
    train, test, info = build_datasets("cifar10", root=str(tmp_path))
    assert (len(train), len(test)) == (15, 4)
    assert info.num_classes == 10 and info.sample_shape == (3, 32, 32) and info.mean == cifar.CIFAR10.mean
    images, labels = expected["train"]
    want = _normalised(images, cifar.CIFAR10.mean, cifar.CIFAR10.std)
    for i in (0, 7, 14):
        x, y = train[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        torch.testing.assert_close(x, want[i], rtol=0, atol=1e-5)
        assert int(y) == labels[i]
    raw, _, _ = build_datasets("cifar10", root=str(tmp_path), normalize=False)
    torch.testing.assert_close(raw[3][0] * 255, torch.from_numpy(images[3]).float(), rtol=0, atol=1e-4)
    # the channel layout: the first 1,024 values of a row are red, row-major
    assert raw[0][0][0, 0, 1] * 255 == pytest.approx(float(images[0].reshape(3072)[1]), abs=1e-3)


def test_cifar100_uses_fine_labels(tmp_path):
    expected = write_cifar(tmp_path, "cifar100", per_batch=5, n_test=3)
    train, test, info = build_datasets("cifar100", root=str(tmp_path))
    assert info.num_classes == 100 and (len(train), len(test)) == (5, 3)
    assert [int(test[i][1]) for i in range(3)] == expected["test"][1].tolist()


def test_cifar_archive_is_checked_and_extracted(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path, "cifar10", per_batch=2, n_test=2, archive=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match="c58f30108f718f92721af3b95e74349a"):  # not the official file
        build_datasets("cifar10", root=str(tmp_path))
    official = dataclasses.replace(cifar.CIFAR10, remote=RemoteFile("https://example.invalid/x",
                                                                    archive.name, md5sum(archive)))
    monkeypatch.setattr(cifar, "CIFAR10", official)
    train, _, _ = build_datasets("cifar10", root=str(tmp_path))
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert int(train[9][1]) == expected["train"][1][9]


def test_cifar_download_on_request(tmp_path, monkeypatch, capsys):
    """The download path end to end, from a local URL (no network in the tests)."""
    from spikegrad.cli import main

    source = tmp_path / "mirror"
    expected = write_cifar(source, "cifar10", per_batch=2, n_test=2, archive=True)
    archive = source / "cifar-10-python.tar.gz"
    remote = RemoteFile(archive.as_uri(), archive.name, md5sum(archive))
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, remote=remote))
    root = tmp_path / "data"
    with pytest.raises(UserError, match="download=true"):  # nothing is fetched unless asked
        build_datasets("cifar10", root=str(root))
    assert main(["download", "cifar10", "--root", str(root)]) == 0
    assert "cifar10: 10 train / 2 test" in capsys.readouterr().out
    train, _, _ = build_datasets("cifar10", root=str(root))
    assert int(train[3][1]) == expected["train"][1][3]
    unreachable = RemoteFile("http://127.0.0.1:9/cifar.tar.gz", archive.name, remote.md5)
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, remote=unreachable))
    with pytest.raises(UserError, match=r"cannot download .*put it at .*cifar-10-python\.tar\.gz"):
        build_datasets("cifar10", root=str(tmp_path / "other"), download=True)


def test_cifar_missing_files_say_what_was_expected(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*cifar-10-python\.tar\.gz.*download"):
        build_datasets("cifar10", root=str(tmp_path))
    with pytest.raises(UserError, match=r"data\.root"):
        build_datasets("cifar10")


def test_cifar_corrupt_batch_is_named(tmp_path):
    write_cifar(tmp_path, "cifar10", per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match=r"cifar-10-batches-py' lacks test_batch"):
        build_datasets("cifar10", root=str(tmp_path))
    write_cifar(tmp_path, "cifar10", per_batch=2, n_test=2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(UserError, match=r"data_batch_3.*(truncated or damaged)"):
        build_datasets("cifar10", root=str(tmp_path))
    pickle.dump({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, batch.open("wb"), protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3.*'data' must be uint8 \[N, 3072\]"):
        build_datasets("cifar10", root=str(tmp_path))
    pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, batch.open("wb"), protocol=2)
    with pytest.raises(UserError, match=r"labels must lie in \[0, 9\]"):
        build_datasets("cifar10", root=str(tmp_path))


class _RunsCode:
    """Unpickling this calls os.system: what a malicious "CIFAR batch" would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _RunsCode(marker), "labels": []}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_1.*global '(posix|os)\.system' is not allowed"):
        load_restricted(batch, "CIFAR batch")
    assert not marker.exists()
    with pytest.raises(UserError, match="not allowed"):  # an object array could smuggle anything
        batch.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
        load_restricted(batch, "CIFAR batch")


@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_reads_plain_arrays(tmp_path, protocol):
    path = tmp_path / "ok"
    value = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "name": "x"}
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    out = load_restricted(path, "batch")
    assert np.array_equal(out["data"], value["data"]) and out["labels"] == [1, 2] and out["name"] == "x"


# --------------------------------------------------------------------------- extraction


def _tar_with(path, name, kind="file"):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))


@pytest.mark.parametrize("name,kind,match", [
    ("../escape.txt", "file", "outside"),
    ("folder/../../escape.txt", "file", "outside"),
    ("/tmp/spikegrad-absolute.txt", "file", "absolute"),
    ("link", "symlink", "link"),
])
def test_extraction_refuses_members_outside_the_target(tmp_path, name, kind, match):
    archive, target = tmp_path / "a.tar.gz", tmp_path / "target"
    _tar_with(archive, name, kind)
    with pytest.raises(UserError, match=match):
        extract_archive(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not list(target.rglob("*"))


def test_zip_extraction_refuses_escapes_and_links(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(UserError, match="outside"):
        extract_archive(bad, tmp_path / "t")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="link"):
        extract_archive(link, tmp_path / "t")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a/b.txt", "hello")
    extract_archive(good, tmp_path / "t")
    assert (tmp_path / "t" / "a" / "b.txt").read_text() == "hello"


# --------------------------------------------------------------------------- JPEG datasets


def test_tiny_imagenet_official_layout(tmp_path):
    folder = write_tiny_imagenet(tmp_path, per_class=3, val_per_class=2)
    train, test, info = build_datasets("tiny_imagenet", root=str(tmp_path), normalize=False)
    assert (len(train), len(test), info.num_classes) == (9, 6, 3)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]  # from val_annotations.txt
    for dataset, i in ((train, 0), (train, 4), (test, 3)):  # train 0 is greyscale
        x, _ = dataset[i]
        want = np.asarray(Image.open(dataset.files[i]).convert("RGB")).transpose(2, 0, 1)
        assert x.shape == (3, 64, 64)
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(want.copy()))
    normed, _, info = build_datasets("tiny_imagenet", root=str(folder))  # the folder itself works too
    assert info.mean is not None and normed[0][0].mean() < 0.5


def test_tiny_imagenet_errors_name_the_file(tmp_path):
    folder = write_tiny_imagenet(tmp_path, per_class=1, val_per_class=1)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations\.txt.*line 1.*wnid"):
        build_datasets("tiny_imagenet", root=str(tmp_path))
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(UserError, match=r"val_annotations\.txt.*is missing"):
        build_datasets("tiny_imagenet", root=str(tmp_path))
    write_tiny_imagenet(tmp_path, per_class=1, val_per_class=1)
    first = folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG"
    first.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"n01443537_0\.JPEG.*cannot be decoded"):
        build_datasets("tiny_imagenet", root=str(tmp_path))


def test_imagenet_class_folders(tmp_path):
    write_class_folders(tmp_path, classes=("cat", "dog", "owl"), per_class=2)
    train, test, info = build_datasets("imagenet", root=str(tmp_path), image_size=24, resize=28,
                                       normalize=False)
    assert (len(train), len(test), info.num_classes) == (6, 6, 3)
    assert info.sample_shape == (3, 24, 24)
    x, y = train[5]
    assert x.shape == (3, 24, 24) and int(y) == 2
    from spikegrad.data.images import decode_image

    want = resize_center_crop(decode_image(test.files[1]), 28, 24).float() / 255
    torch.testing.assert_close(test[1][0], want)
    (tmp_path / "val" / "eel").mkdir()
    with pytest.raises(UserError, match="class folders that train/ lacks"):
        build_datasets("imagenet", root=str(tmp_path))


def test_resize_and_crops():
    img = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    full = random_resized_crop(img, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(full, resize(img, (12, 12)))
    assert torch.equal(resize_center_crop(img, 12, 12), resize(img, (12, 12)))
    wide = torch.zeros(1, 10, 40, dtype=torch.uint8)
    wide[:, :, 15:25] = 200  # a bright band in the middle third
    centre = resize_center_crop(wide, 10, 10)  # shorter side 10 already: crop columns 15..25
    assert centre.shape == (1, 10, 10) and bool((centre == 200).all())
    for _ in range(20):
        out = random_resized_crop(img, 8)
        assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
