"""Animal-MNIST: 10,000 animal silhouettes, 28×28 grey, 10 classes (the ``animal-mnist`` package).

The package (0.4, MIT) ships two gzip-compressed pickles in
``animal_mnist/data/Animal_MNIST/``: ``animal_data_version_3.gz`` (``uint8 [10000, 28, 28]``)
and ``animal_label_version_3.gz`` (``int64 [10000]``, 1,000 per class, sorted by class).
Its own loader imports tensorflow; spikegrad reads the two files directly, with
:func:`~spikegrad.data.safe_pickle.load_restricted` (never ``pickle.load``). ``data.root``
may name a folder holding the same two files instead of the package.

The classes (labels 0-9, checked by eye on the images) are bear, bird, cat, cow, dog,
elephant, giraffe, horse, sheep and zebra. The package has no split: as for the built-in
digits, within each class a shuffle seeded with 0 sends every fifth image to the test set,
giving 8,000 training and 2,000 test images (800 / 200 per class); the split does not depend
on the training seed. Samples are ``[1, 28, 28]`` normalised with the training pixels' mean
and standard deviation (``normalize: false`` keeps ``v/255``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikegrad.data._registry import register_dataset
from spikegrad.data.digits import stratified_split
from spikegrad.data.files import package_file
from spikegrad.data.images import grey_datasets
from spikegrad.data.safe_pickle import load_restricted
from spikegrad.errors import UserError

DATA_FILE, LABEL_FILE = "animal_data_version_3.gz", "animal_label_version_3.gz"
PACKAGE, PACKAGE_FOLDER = "animal_mnist", "data/Animal_MNIST"
INSTALL = "pip install --no-deps animal-mnist==0.4"
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def animal_files(root: str | None) -> tuple[Path, Path]:
    """The image and label files: in ``root``, else in the installed package."""
    if root is not None:
        folder = Path(root).expanduser()
        missing = [name for name in (DATA_FILE, LABEL_FILE) if not (folder / name).is_file()]
        if missing:
            raise UserError(f"dataset 'animal_mnist': {', '.join(missing)} not found in {str(folder)!r}; "
                            f"copy them from the animal-mnist package, or unset data.root to read "
                            f"the installed package ({INSTALL})")
        return folder / DATA_FILE, folder / LABEL_FILE
    return (package_file(PACKAGE, f"{PACKAGE_FOLDER}/{DATA_FILE}", "animal_mnist", INSTALL),
            package_file(PACKAGE, f"{PACKAGE_FOLDER}/{LABEL_FILE}", "animal_mnist", INSTALL))


def read_animal(data_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]``, checked."""
    images = load_restricted(data_path, "Animal-MNIST images (a pickled uint8 array [N, 28, 28])")
    labels = load_restricted(label_path, "Animal-MNIST labels (a pickled integer array [N])")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3
            and images.shape[1:] == (28, 28)):
        raise UserError(f"{str(data_path)!r} must hold uint8 [N, 28, 28] images, got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.shape == (len(images),)):
        raise UserError(f"{str(label_path)!r} must hold {len(images)} integer labels, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserError(f"{str(label_path)!r}: labels must lie in [0, 9], found "
                        f"{labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


@register_dataset("animal_mnist")
def animal_mnist(root: str | None = None, normalize: bool = True):
    """Animal-MNIST: 8,000 train / 2,000 test silhouettes, 1×28×28, 10 classes (fixed split)."""
    images, labels = read_animal(*animal_files(root))
    train_idx, test_idx = stratified_split(labels)
    splits = {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}
    source = f"the files in {root}" if root is not None else "the animal-mnist package"
    return grey_datasets(splits, normalize, "animal_mnist", source, CLASSES)
