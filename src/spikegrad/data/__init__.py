"""Datasets (a registry of builders), batched augmentation and loaders."""

from spikegrad.data import cluttered, digits  # noqa: F401  (register the built-in datasets)
from spikegrad.data._registry import DatasetInfo, build_datasets, list_datasets, register_dataset
from spikegrad.data.augment import build_augmentation

__all__ = ["DatasetInfo", "build_augmentation", "build_datasets", "list_datasets", "register_dataset"]
