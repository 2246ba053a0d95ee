"""Datasets (a registry of builders), batched augmentation and loaders."""

from spikegrad.data import (  # noqa: F401  (register the datasets)
    animal_mnist,
    cifar,
    cluttered,
    digits,
    event_camera,
    events,
    imagefolder,
    mnist,
    mnist1d,
)
from spikegrad.data._registry import (
    DatasetInfo,
    build_datasets,
    dataset_builder,
    list_datasets,
    register_dataset,
)
from spikegrad.data.augment import build_augmentation
from spikegrad.data.loader import collate_for

__all__ = [
    "DatasetInfo", "build_augmentation", "build_datasets", "collate_for", "dataset_builder", "list_datasets",
    "register_dataset",
]
