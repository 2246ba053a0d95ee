"""CIFAR-10 and CIFAR-100 from the official "python version" files.

``data.root`` holds either the extracted folder (``cifar-10-batches-py/`` with
``data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python/`` with
``train``, ``test``, ``meta``) or the official archive (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``), which is checked against its published MD5 and extracted
safely into ``data.root``. Each batch is a pickled dict whose ``data`` is ``uint8 [N, 3072]``
(1,024 red, then green, then blue values of a 32×32 image, row-major) and whose labels are
a list of ints; it is read with :func:`~spikegrad.data.safe_pickle.load_restricted`.

Samples are ``[3, 32, 32]`` normalised with the training set's per-channel mean and
standard deviation (``normalize: false`` keeps ``v/255``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.data.files import RemoteFile, fetch_and_extract, require_root
from spikegrad.data.images import ImageArrayDataset
from spikegrad.data.safe_pickle import load_restricted
from spikegrad.errors import UserError


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    remote: RemoteFile
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    remote=RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    remote=RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                      "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def _layout(spec: CifarSpec) -> str:
    files = ", ".join((*spec.train_files, *spec.test_files, spec.meta_file))
    return f"the folder {spec.folder}/ ({files})"


def find_folder(spec: CifarSpec, root: Path, download: bool) -> Path:
    """The extracted folder, extracting (or downloading, if allowed) the archive when needed."""
    needed = (*spec.train_files, *spec.test_files)
    for candidate in (root / spec.folder, root):
        if all((candidate / f).is_file() for f in needed):
            return candidate
    folder = root / spec.folder
    if folder.is_dir() and not (root / spec.remote.filename).is_file() and not download:
        missing = [f for f in needed if not (folder / f).is_file()]
        raise UserError(f"{str(folder)!r} lacks {', '.join(missing)}: expected {_layout(spec)}; "
                        "restore the files or delete the folder and download the archive again")
    fetch_and_extract(spec.remote, root, download, _layout(spec))
    return root / spec.folder


def read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` of one pickled batch."""
    expected = f"CIFAR python batch (a pickled dict with 'data': uint8 [N, 3072] and " \
               f"'{spec.label_key}': N ints)"
    batch = load_restricted(path, expected)
    if not isinstance(batch, dict) or "data" not in batch or spec.label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise UserError(f"{str(path)!r} is not a {expected}; found {keys}")
    data, labels = batch["data"], np.asarray(batch[spec.label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise UserError(f"{str(path)!r}: 'data' must be uint8 [N, 3072], got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise UserError(f"{str(path)!r}: '{spec.label_key}' must hold {len(data)} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise UserError(f"{str(path)!r}: labels must lie in [0, {spec.num_classes - 1}], found "
                        f"{labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # (N, 3, 32, 32)


def class_names(folder: Path, spec: CifarSpec) -> list[str]:
    """Class names from the meta file (checked like the batches)."""
    meta = load_restricted(folder / spec.meta_file,
                           f"CIFAR meta file (a pickled dict with '{spec.names_key}')")
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise UserError(f"{str(folder / spec.meta_file)!r} must hold {spec.num_classes} class names "
                        f"under '{spec.names_key}'")
    return [str(n) for n in names]


def load_cifar(spec: CifarSpec, root: str | None, download: bool, normalize: bool):
    folder = find_folder(spec, require_root(root, spec.name), download)
    names = class_names(folder, spec)
    mean, std = (spec.mean, spec.std) if normalize else (None, None)
    splits = []
    for files in (spec.train_files, spec.test_files):
        parts = [read_batch(folder / f, spec) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        splits.append(ImageArrayDataset(images, labels, mean, std))
    info = DatasetInfo(num_classes=spec.num_classes, sample_shape=(3, 32, 32),
                       description=f"{spec.name} ({len(splits[0])} train / {len(splits[1])} test; "
                                   f"classes {', '.join(names[:3])}, ...)",
                       mean=mean, std=std)
    return splits[0], splits[1], info


@register_dataset("cifar10")
def cifar10(root: str | None = None, download: bool = False, normalize: bool = True):
    """CIFAR-10: 50,000 train / 10,000 test images, 3×32×32, 10 classes."""
    return load_cifar(CIFAR10, root, download, normalize)


@register_dataset("cifar100")
def cifar100(root: str | None = None, download: bool = False, normalize: bool = True):
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test images, 3×32×32, 100 classes."""
    return load_cifar(CIFAR100, root, download, normalize)
