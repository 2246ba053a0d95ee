"""Datasets (a registry of builders), batched augmentation and loaders."""

from spikegrad.data import digits  # noqa: F401  (registers the built-in dataset)
from spikegrad.data._registry import DatasetInfo, build_datasets, list_datasets, register_dataset
from spikegrad.data.augment import build_augmentation

__all__ = ["DatasetInfo", "build_augmentation", "build_datasets", "list_datasets", "register_dataset"]
