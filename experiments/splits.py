"""The evaluation split of a run: a validation set cut from the training set, or the test set.

The protocol tunes every learning rate on a validation split cut from the training set and
never looks at the test set while tuning. :func:`data_overrides` turns an arm's data (a
validation fraction ``f`` of the whole training set of ``N`` samples, a training subset of at
most ``n`` samples, a split seed) into spikegrad's own ``data.validation``,
``data.split_seed`` and ``data.subset``; the cut itself is the library's, one implementation
for every run (:mod:`spikegrad.data.splits`: seeded, stratified, the subset cut first and the
validation split cut from it):

- a tuning run holds out ``h = round(f·N)`` samples and trains on ``n`` of the rest: the
  library's subset of ``n + h`` samples with ``data.validation = h/(n + h)`` (without a
  subset, or where ``n + h >= N``: ``data.validation = f`` of the whole training set);
- a final run trains on the library's subset of ``n`` samples (``data.validation = 0``) and
  evaluates on the test set.

So the validation split keeps its size, ``f`` of the whole training set, however small the
training subset (2% of MNIST is 1,200 images beside a subset of 1,500).
"""

from __future__ import annotations

import json
from typing import Any

from spikegrad.data import build_datasets, dataset_builder
from spikegrad.errors import UserError

__all__ = ["SPLIT_SOURCE", "data_overrides", "training_size"]

#: what cuts the splits (recorded in ``results.json`` as ``"split"``)
SPLIT_SOURCE = "spikegrad"

_SIZES: dict[tuple[str, str], int] = {}


def training_size(dataset: str, options: dict[str, Any] | None = None) -> int:
    """The number of training samples of ``dataset`` built with ``options`` (built once)."""
    key = (dataset, json.dumps(options or {}, sort_keys=True, default=str))
    if key not in _SIZES:
        _SIZES[key] = len(build_datasets(dataset, **dict(options or {}))[0])
    return _SIZES[key]


def data_overrides(dataset: str, options: dict[str, Any] | None = None, *, validation: float | None,
                   split_seed: int = 0, subset: int | None = None) -> dict[str, Any]:
    """Config overrides for ``dataset`` evaluated on a validation split (``validation`` a fraction
    in (0, 1) of the whole training set) or, with ``validation=None``, on its test set;
    ``subset`` caps the training samples, ``split_seed`` seeds both cuts (module docstring)."""
    dataset_builder(dataset)  # an unknown dataset fails here, naming the registered ones
    if validation is not None and (isinstance(validation, bool) or not isinstance(validation, (int, float))
                                   or not 0 < validation < 1):
        raise UserError(f"the validation fraction must be in (0, 1), got {validation!r}; None "
                        "evaluates on the test set")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise UserError(f"the training subset must be a positive number of samples, got {subset!r}")
    fraction, cap = 0.0 if validation is None else float(validation), subset
    if validation is not None and subset is not None:
        total = training_size(dataset, options)
        held = round(validation * total)
        if subset + held < total:
            fraction, cap = held / (subset + held), subset + held
        else:  # the subset is no smaller than what the validation split leaves
            cap = None
    return {"data.name": dataset, "data.options": dict(options or {}), "data.validation": fraction,
            "data.split_seed": split_seed, "data.subset": cap}
