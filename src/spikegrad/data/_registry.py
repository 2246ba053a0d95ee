"""Dataset registry: each entry builds ``(train_set, test_set, DatasetInfo)`` from options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from spikegrad.annotated import conforms, type_hints, type_text
from spikegrad.errors import UserError, did_you_mean, unknown_name_error


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``sample_shape`` is one sample without batch (and without time for static data);
    ``time_steps`` is the number of frames of time-major (event) samples, else None;
    ``mean``/``std`` are the per-channel statistics the samples were normalised with
    (``x = (v - mean) / std`` for pixel values ``v`` in ``[0, 1]``), None when they were not.
    """

    num_classes: int
    sample_shape: tuple[int, ...]
    time_steps: int | None = None
    description: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def in_channels(self) -> int:
        return self.sample_shape[0]

    @property
    def input_size(self) -> int:
        return self.sample_shape[-1]


DatasetBuilder = Callable[..., tuple[Dataset, Dataset, DatasetInfo]]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering a dataset builder ``fn(root=None, **options)``."""

    def decorate(fn: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = fn
        return fn

    return decorate


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_builder(name: str) -> DatasetBuilder:
    """The builder registered as ``name``; a clear error lists the valid names."""
    if name not in _DATASETS:
        raise unknown_name_error("dataset", name, _DATASETS)
    return _DATASETS[name]


def build_datasets(name: str, **options: Any) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Build ``(train, test, info)`` for a registered dataset; options are checked by name and
    against the builder's annotations (``T: 6.0`` for an ``int`` is refused, naming both)."""
    fn = dataset_builder(name)
    accepted = list(inspect.signature(fn).parameters)
    hints = type_hints(fn)
    for key, value in options.items():
        if key not in accepted:
            raise UserError(
                f"dataset {name!r} has no option {key!r}{did_you_mean(key, accepted)}; "
                f"it accepts: {', '.join(accepted)}"
            )
        if key in hints and not conforms(value, hints[key], paths=True):
            raise UserError(f"dataset {name!r} option {key!r} (data.options.{key}) must be "
                            f"{type_text(hints[key])}, got {value!r} ({type(value).__name__})")
    return fn(**options)
