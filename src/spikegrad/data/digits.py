"""The built-in dataset: scikit-learn's handwritten digits (ships with scikit-learn).

1,797 grey 8×8 images of the digits 0-9 (UCI optical recognition test set), intensities
0-16 scaled to [0, 1]. The split is fixed and stratified: within each class, the samples
are shuffled with ``numpy.random.default_rng(0)`` and every fifth one (20%) goes to the
test set (the first of each shuffled class included), giving 1,433 training and 364
test images. The split does not depend on the training seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.errors import UserError

TEST_FRACTION_DENOMINATOR = 5  # every 5th sample of each class is a test sample
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 8, 8]`` float32 in [0, 1] and labels ``[N]`` int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return images, digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: per class, a seeded shuffle, every 5th sample to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_test = np.arange(len(idx)) % TEST_FRACTION_DENOMINATOR == 0
        test.append(idx[is_test])
        train.append(idx[~is_test])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def refuse_root(name: str, root: str | None) -> None:
    """A built-in dataset reads no files: a ``data.root`` given to it is an error, not ignored."""
    if root is not None:
        raise UserError(f"dataset {name!r} is built in, it reads no files; unset data.root")


@register_dataset("digits")
def digits(root: str | None = None) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """The built-in digits as ``[1, 8, 8]`` tensors (bundled with scikit-learn: ``root`` must stay unset)."""
    refuse_root("digits", root)
    images, labels = load_digits_arrays()
    train_idx, test_idx = stratified_split(labels)
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    info = DatasetInfo(num_classes=10, sample_shape=(1, 8, 8), description="scikit-learn digits")
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), info
