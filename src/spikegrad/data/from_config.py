"""The one place where a config's ``data`` section becomes datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from spikegrad.data._registry import DatasetInfo, build_datasets
from spikegrad.errors import UserError

if TYPE_CHECKING:
    from spikegrad.config import DataConfig

__all__ = ["datasets_from_config"]


def datasets_from_config(data: DataConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """``(train_set, test_set, info)`` for ``config.data``: the registered dataset ``data.name``
    built with ``data.options`` and ``data.root``; bad names or options raise a :class:`UserError`."""
    options = dict(data.options)
    if data.root is not None:
        options["root"] = data.root
    try:
        return build_datasets(data.name, **options)
    except (FileNotFoundError, NotADirectoryError) as exc:  # a builder without its own message
        raise UserError(f"dataset {data.name!r}: {exc}; set data.root to the folder that holds "
                        "its files") from exc
