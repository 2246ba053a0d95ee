"""Seeded stratified cuts of a training set: a subset, and a validation split for tuning.

``data.subset = n`` keeps at most ``n`` training samples; ``data.validation = f`` then holds
out ``round(f·N)`` of the ``N`` samples left as the evaluation set, in place of the test set, so
that learning rates and other settings are chosen without ever touching the test set.

Both cuts are stratified: a cut of ``m`` samples from ``N`` gives class ``c`` (with ``N_c``
samples) ``floor(m·N_c/N)`` samples plus one for the classes with the largest remainders
(ties to the lower label), so class proportions are kept to within one sample. Within each
class the samples taken are the first of a permutation drawn from
``numpy.random.default_rng([split_seed, k])`` (``k = 0`` for the subset, ``1`` for the
validation split). The seed is ``data.split_seed``, not ``train.seed``: every run of a sweep
or of a seed study tunes on the same validation samples.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from spikegrad.errors import UserError

SUBSET_STREAM, VALIDATION_STREAM = 0, 1


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer labels ``[N]`` of a dataset: its ``labels``, a TensorDataset's second tensor, a
    Subset's parent labels at its indices, or (for any other dataset) each sample's label."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
    if isinstance(labels, Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise UserError(f"a stratified split needs one integer label per sample, got labels of dtype "
                        f"{labels.dtype} and shape {labels.shape}")
    return labels.astype(np.int64)


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts summing to ``total``, proportional to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    quota = counts * total / counts.sum()
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: total - int(take.sum())]] += 1
    return np.minimum(take, counts)


def stratified_cut(labels: np.ndarray, size: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``(taken, rest)``: sorted positions in ``labels``, ``size`` of them taken, stratified."""
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng([seed, stream])
    taken, rest = [], []
    for c, k in zip(classes, allocate(counts, size), strict=True):
        order = rng.permutation(np.flatnonzero(labels == c))
        taken.append(order[:k])
        rest.append(order[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def split_training_set(
    train: Dataset, *, subset: int | None = None, validation: float = 0.0, seed: int = 0
) -> tuple[Dataset, Dataset | None]:
    """``(train, validation)``: the training set cut to ``subset`` samples, then ``validation``.

    ``validation`` is a fraction in ``[0, 1)``; with 0 the second value is None (evaluate on
    the test set). Both are ``torch.utils.data.Subset`` views of ``train`` (or ``train``
    itself when nothing is cut).
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise UserError(f"data.subset must be a positive number of samples or null, got {subset!r}")
    if isinstance(validation, bool) or not (isinstance(validation, (int, float)) and 0 <= validation < 1):
        raise UserError(f"data.validation must be a fraction 0 < v < 1 of the training set to hold out "
                        f"for validation (e.g. 0.1), or 0 to evaluate on the test set; got {validation!r}")
    if subset is None and not validation:
        return train, None
    labels = dataset_labels(train)
    positions = np.arange(len(labels))
    if subset is not None and subset < len(labels):
        positions, _ = stratified_cut(labels, subset, seed, SUBSET_STREAM)
    if not validation:
        return Subset(train, positions.tolist()), None
    held = round(validation * len(positions))
    if held < 1 or held >= len(positions):
        raise UserError(f"data.validation={validation:g} of {len(positions)} training samples holds out "
                        f"{held}; choose a fraction that leaves at least one sample on each side")
    val, kept = stratified_cut(labels[positions], held, seed, VALIDATION_STREAM)
    return Subset(train, positions[kept].tolist()), Subset(train, positions[val].tolist())

