"""The evaluation split of a run: a validation set cut from the training set, or the test set.

The protocol tunes every learning rate on a validation split cut from the training set and
never looks at the test set while tuning. :func:`data_overrides` gives the config overrides
that make a run train on ``train - validation`` (optionally a seeded stratified subset of it)
and evaluate on the validation split:

- where spikegrad's data config has the keys ``data.validation`` / ``data.split_seed`` /
  ``data.subset``, those keys (the trainer's own split);
- otherwise the dataset is wrapped by the ``experiment_split`` dataset registered here,
  which cuts the same kind of split from any registered dataset (``base``, ``base_options``).

Both are seeded and stratified: per class, a permutation drawn with
``numpy.random.default_rng(split_seed)``; the first ``round(fraction · n_c)`` samples of class
``c`` form the validation split. A training subset of at most ``subset`` samples keeps, per
class, the first ``round(subset · n_c / n)`` samples of another permutation of what remains
(seed ``split_seed + 1``), so the class proportions are those of the training set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from spikegrad.config import DataConfig
from spikegrad.data import build_datasets, register_dataset
from spikegrad.data._registry import DatasetInfo, dataset_builder
from spikegrad.errors import UserError

__all__ = ["ADAPTER_NAME", "data_overrides", "dataset_labels", "native_split_keys",
           "stratified_holdout", "stratified_subset"]

ADAPTER_NAME = "experiment_split"


def native_split_keys() -> set[str]:
    """Which of ``validation``, ``split_seed``, ``subset`` spikegrad's data config has."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    return names & {"validation", "split_seed", "subset"}


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The class label of every sample (from ``targets``/``labels``/TensorDataset, else by indexing)."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels if not torch.is_tensor(labels) else labels.cpu()).astype(np.int64)
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        return tensors[1].cpu().numpy().astype(np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, holdout)`` indices: per class, ``round(fraction · n_c)`` samples held out."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(fraction * len(idx))
        held.append(idx[:k])
        keep.append(idx[k:])
    keep_idx, held_idx = np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
    if len(held_idx) == 0 or len(keep_idx) == 0:
        raise UserError(f"a validation fraction of {fraction} leaves an empty split of "
                        f"{len(labels)} samples; choose a fraction that keeps both sides")
    return keep_idx, held_idx


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of at most ``size`` samples, per class in proportion to the class counts."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(size * counts / counts.sum()).astype(int)
    # hand the samples lost to rounding down to the classes with the largest remainders
    remainder = size * counts / counts.sum() - quota
    for i in np.argsort(-remainder, kind="stable")[: size - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


@register_dataset(ADAPTER_NAME)
def experiment_split(base: str, root: str | None = None, base_options: dict | None = None,
                     validation: float | None = None, split_seed: int = 0,
                     subset: int | None = None) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Dataset ``base`` with a validation split (replacing the test set) and/or a training subset."""
    if base == ADAPTER_NAME:
        raise UserError(f"{ADAPTER_NAME} cannot wrap itself")
    options = dict(base_options or {})
    if root is not None:
        options["root"] = root
    train, test, info = build_datasets(base, **options)
    labels = dataset_labels(train)
    keep = np.arange(len(train))
    evaluation: Dataset = test
    if validation is not None:
        keep, held = stratified_holdout(labels, validation, split_seed)
        evaluation = Subset(train, held.tolist())
    if subset is not None:
        if subset <= 0:
            raise UserError(f"the training subset must hold at least one sample, got {subset}")
        keep = keep[stratified_subset(labels[keep], subset, split_seed + 1)]
    return Subset(train, keep.tolist()), evaluation, info


def data_overrides(dataset: str, options: dict[str, Any] | None = None, *, validation: float | None,
                   split_seed: int = 0, subset: int | None = None) -> dict[str, Any]:
    """Config overrides for ``dataset`` evaluated on a validation split (``validation`` a fraction
    of the training set) or, with ``validation=None``, on its test set; ``subset`` caps the
    training samples. Uses spikegrad's own keys where they exist (see the module docstring)."""
    dataset_builder(dataset)  # an unknown dataset fails here, naming the registered ones
    native = native_split_keys()
    wanted = {"validation": validation, "subset": subset}
    if all(key in native for key, value in wanted.items() if value is not None) and \
            (validation is None or "split_seed" in native):
        out: dict[str, Any] = {"data.name": dataset, "data.options": dict(options or {})}
        if "validation" in native:
            out["data.validation"] = validation
        if "split_seed" in native:
            out["data.split_seed"] = split_seed
        if "subset" in native:
            out["data.subset"] = subset
        return out
    return {"data.name": ADAPTER_NAME,
            "data.options": {"base": dataset, "base_options": dict(options or {}),
                             "validation": validation, "split_seed": split_seed, "subset": subset}}


def split_path() -> str:
    """``"spikegrad"`` when the trainer's own split keys are used, else ``"experiments"``."""
    return "spikegrad" if {"validation", "split_seed", "subset"} <= native_split_keys() else "experiments"
