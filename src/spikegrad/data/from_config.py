"""The one place where a config's ``data`` section becomes datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from spikegrad.data._registry import DatasetInfo, build_datasets
from spikegrad.data.splits import split_training_set
from spikegrad.errors import UserError, refuse_unread

if TYPE_CHECKING:
    from spikegrad.config import DataConfig

__all__ = ["datasets_from_config", "eval_split"]


#: the attribute by which :func:`datasets_from_config` marks what its datasets are
SPLIT_ATTRIBUTE = "spikegrad_split"


def eval_split(data: DataConfig) -> str:
    """Which set a run built from ``data`` evaluates on: ``"validation"`` (cut from the
    training set, ``data.validation > 0``) or ``"test"``."""
    return "validation" if data.validation > 0 else "test"


def split_of(dataset: Dataset) -> str | None:
    """``"train"``, ``"validation"`` or ``"test"`` for a dataset :func:`datasets_from_config`
    built; None for any other (one given to a trainer as it is)."""
    return getattr(dataset, SPLIT_ATTRIBUTE, None)


def check_split_seed(data: DataConfig) -> None:
    """Refuse ``data.split_seed`` set where there is no cut for it to seed (a run to train;
    evaluating a run with ``--set data.validation=0`` keeps its stored seed)."""
    if data.subset is None and data.validation == 0:
        refuse_unread(data, "data", ["split_seed"],
                      "without data.subset or data.validation (the cuts it seeds)")


def datasets_from_config(data: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """``(train_set, eval_set, info)`` for ``config.data``: the registered dataset ``data.name``
    built with ``data.options`` and ``data.root``; bad names or options raise a :class:`UserError`.

    ``data.subset`` and ``data.validation`` then cut the training set (seeded by
    ``data.split_seed``, see :mod:`spikegrad.data.splits`). With a validation split the second
    set is that split and the test set is dropped, never read (:func:`eval_split` says which).
    """
    options = dict(data.options)
    if data.root is not None:
        if "root" in options:
            raise UserError("data.root and data.options.root both name the dataset's folder; "
                            "keep data.root and remove data.options.root")
        options["root"] = data.root
    try:
        train_set, test_set, info = build_datasets(data.name, **options)
    except (FileNotFoundError, NotADirectoryError) as exc:  # a builder without its own message
        raise UserError(f"dataset {data.name!r}: {exc}; set data.root to the folder that holds "
                        "its files") from exc
    train_set, validation_set = split_training_set(train_set, subset=data.subset,
                                                   validation=data.validation, seed=data.split_seed)
    eval_set = test_set if validation_set is None else validation_set
    for dataset, split in ((train_set, "train"), (eval_set, eval_split(data))):
        setattr(dataset, SPLIT_ATTRIBUTE, split)
    return train_set, eval_set, info
