"""Batching: static samples stack to ``[B, ...]``, event samples to time-major ``[T, B, ...]``.

A dataset whose samples are ``[T, C, H, W]`` frames sets ``time_major = True``; its loader
then collates to ``[T, B, C, H, W]``, the layout every spiking layer takes. Use
:func:`collate_for` when building a ``DataLoader`` for any spikegrad dataset.

Every batch is checked as it is made (:func:`check_batch`): samples are ``(input, label)``
pairs of one shape, the label a number (a class index), the inputs real and finite.
:func:`check_dataset` probes a dataset before training: a whole-number length, and its first
and last samples readable and alike (a ``__len__`` that overstates the data fails there).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from spikegrad.errors import UserError


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, (Tensor, np.ndarray)) else None


def _check_sample(sample: Any, where: str) -> None:
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        got = f"a {type(sample).__name__} of {len(sample)} values" if isinstance(
            sample, (tuple, list)) else f"a {type(sample).__name__}"
        raise UserError(f"{where} must be (input, label) pairs, got {got}; return exactly "
                        "(input, label) from the dataset's __getitem__")
    label = sample[1]
    if isinstance(label, (str, bytes)) or not isinstance(label, (numbers.Number, np.generic, Tensor,
                                                                  np.ndarray)):
        raise UserError(f"{where} have labels such as {label!r} ({type(label).__name__}); labels must "
                        "be class indices (integers): map class names to indices")
    x = sample[0]
    if (isinstance(x, Tensor) and x.is_complex()) or (isinstance(x, np.ndarray) and np.iscomplexobj(x)):
        raise UserError(f"{where} have complex inputs; spiking layers take real tensors")


def check_batch(batch: Sequence[Any], where: str = "samples") -> None:
    """Raise a :class:`UserError` unless ``batch`` is (input, label) pairs of one input shape."""
    for sample in batch:
        _check_sample(sample, where)
    shapes = {_shape(sample[0]) for sample in batch}
    if len(shapes) > 1:
        shown = ", ".join(str(shape) for shape in sorted(shapes, key=str)[:4])
        raise UserError(f"{where} differ in shape ({shown}); every sample must have the same shape: "
                        "pad, crop or resize them")


def check_inputs(inputs: Any, where: str = "samples") -> None:
    """Raise a :class:`UserError` if a batch of floating-point inputs holds NaN or inf."""
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise UserError(f"{where} hold NaN or inf inputs; check the dataset's files and its "
                        "normalisation (a NaN input never spikes, so it would pass unnoticed)")


def checked(collate: Callable[[list], Any], where: str) -> Callable[[list], Any]:
    """``collate`` with :func:`check_batch` before it and :func:`check_inputs` after it."""
    def collate_checked(batch: list) -> Any:
        check_batch(batch, where)
        out = collate(batch)
        check_inputs(out[0], where)
        return out

    collate_checked.collate = collate  # type: ignore[attr-defined]
    return collate_checked


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
    """The collate function for ``dataset``: time-major for event frames, else torch's default;
    each batch is checked (:func:`check_batch`, :func:`check_inputs`)."""
    collate = time_major_collate if is_time_major(dataset) else default_collate
    return checked(collate, f"samples of {type(dataset).__name__}")


def check_dataset(dataset: Dataset, name: str = "dataset", allow_empty: bool = True,
                  check_first: Callable[[Any], None] | None = None) -> int:
    """Probe a map-style dataset before use; returns its length.

    Its ``len()`` must be a whole number, and its first and last samples must be readable
    (a ``__len__`` larger than the data fails here, not in the middle of an epoch) and
    pass :func:`check_batch` together. ``check_first`` is called with the first sample as
    read here (a model's check of its layout), so that it is not read twice.
    """
    try:
        size = len(dataset)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"the {name} has no valid length ({exc}); its __len__ must return the number "
                        "of samples, a whole number >= 0") from exc
    if size == 0:
        if not allow_empty:
            raise UserError(f"the {name} is empty")
        return size
    if not hasattr(dataset, "__getitem__"):
        return size
    probes = []
    for index in sorted({0, size - 1}):
        try:
            probes.append(dataset[index])
        except (IndexError, KeyError) as exc:
            raise UserError(f"the {name} says it holds {size} samples (__len__) but sample {index} "
                            f"cannot be read ({type(exc).__name__}: {exc}); make __len__ match the "
                            "data") from exc
    check_batch(probes, f"samples of the {name}")
    if check_first is not None:
        check_first(probes[0])
    return size
