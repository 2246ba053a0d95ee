"""Batching: static samples stack to ``[B, ...]``, event samples to time-major ``[T, B, ...]``.

A dataset whose samples are ``[T, C, H, W]`` frames sets ``time_major = True``; its loader
then collates to ``[T, B, C, H, W]``, the layout every spiking layer takes. Use
:func:`collate_for` when building a ``DataLoader`` for any spikegrad dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate


def time_major_collate(batch: Sequence[tuple[Tensor, Any]]) -> tuple[Tensor, Tensor]:
    """``[(frames [T, ...], label), ...]`` -> ``(frames [T, B, ...], labels [B])``."""
    frames = torch.stack([sample[0] for sample in batch], dim=1)  # (T, B, ...)
    labels = torch.as_tensor([int(sample[1]) for sample in batch], dtype=torch.long)
    return frames, labels


def is_time_major(dataset: Dataset) -> bool:
    """Whether ``dataset`` (or the dataset a ``Subset`` wraps) yields ``[T, ...]`` samples."""
    while not hasattr(dataset, "time_major") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # torch.utils.data.Subset and similar wrappers
    return bool(getattr(dataset, "time_major", False))


def collate_for(dataset: Dataset) -> Callable[[list], Any]:
    """The collate function for ``dataset``: time-major for event frames, else torch's default."""
    return time_major_collate if is_time_major(dataset) else default_collate
