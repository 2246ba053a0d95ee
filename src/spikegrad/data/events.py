"""Event-camera datasets read by tonic: CIFAR10-DVS, DVS128 Gesture, N-MNIST.

Each reads its native files from ``data.root`` in the layout tonic's dataset class expects
(tonic keeps every dataset in a folder named after its class):

- ``cifar10_dvs``: ``<root>/CIFAR10DVS/<class>/*.aedat4`` (AEDAT 4 recordings, 128×128,
  class folders ``airplane`` ... ``truck``). No official split exists; the papers' 9k/1k
  split is taken per class: recordings sorted by file name, the first ``train_fraction``
  (rounded down) train, the rest test. Frames resized to 48×48 by default.
- ``dvs_gesture``: ``<root>/DVSGesture/ibmGestureTrain/<userNN_lighting>/<label>.npy`` and
  ``ibmGestureTest/...`` (tonic's preprocessed recordings: ``[N, 4]`` rows ``x, y, p, t`` in
  ms), 128×128, 11 classes.
- ``nmnist``: ``<root>/NMNIST/Train/<digit>/*.bin`` and ``Test/...`` (5 bytes per event:
  ``x``, ``y``, polarity bit and a 23-bit µs timestamp), 34×34, 10 classes.

Recordings become ``T`` frames ``[T, 2, size, size]`` (:mod:`spikegrad.data.frames`), cached
under ``data.options.cache`` (default ``<root>/frames``). With ``download: true`` tonic
fetches a missing dataset from its published location.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.data.files import require_root
from spikegrad.data.frames import TONIC_INSTALL, FrameSpec, Source, cached_frames
from spikegrad.errors import UserError


def open_tonic(class_name: str, root: Path, download: bool, layout: str, **kwargs: Any):
    """A tonic dataset reading ``root``; it downloads only when ``download`` is set.

    tonic's own check wants the complete dataset (e.g. 10,000 files) before it will not
    download; here the files present are used as they are, and an empty folder is an error
    that names the expected layout.
    """
    try:
        import tonic.datasets
    except ImportError as exc:  # tonic is not a dependency: it pulls a large audio stack
        raise UserError(f"event datasets need tonic: {TONIC_INSTALL} ({exc})") from exc
    base = getattr(tonic.datasets, class_name)

    def check_exists(self) -> bool:
        return base._check_exists(self) if download else True

    local = type(class_name, (base,), {"_check_exists": check_exists})  # tonic uses the class name
    dataset = local(str(root), **kwargs)
    if len(dataset) == 0:
        raise UserError(f"no recordings found under {str(root / class_name)!r}: expected {layout}; "
                        "set data.options.download=true to let tonic fetch the dataset")
    return dataset


def tonic_source(dataset: Any, indices: np.ndarray | None = None, what: str = "recording") -> Source:
    """A :class:`Source` reading ``dataset[indices[i]]``; a bad file is named in the error."""
    indices = np.arange(len(dataset)) if indices is None else indices

    def read(i: int) -> tuple[np.ndarray, int]:
        index = int(indices[i])
        try:
            events, label = dataset[index]
        except Exception as exc:  # the readers raise many kinds; name the file either way
            raise UserError(f"{dataset.data[index]!r} cannot be read as {what}: "
                            f"{type(exc).__name__}: {exc}") from exc
        return events, int(label)

    return Source(len(indices), read, [dataset.data[int(i)] for i in indices])


def _cache_root(root: Path, cache: str | None) -> Path:
    return Path(cache).expanduser() if cache is not None else root / "frames"


def per_class_split(files: list[str], labels: list[int], train_fraction: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per class, files sorted by name: the first ``floor(n · fraction)`` train, the rest test."""
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    labels_arr = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        idx = idx[np.argsort([files[i] for i in idx], kind="stable")]
        n_train = int(len(idx) * train_fraction)
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        empty = "train" if len(train_idx) == 0 else "test"
        raise UserError(f"train_fraction {train_fraction} leaves the {empty} split empty "
                        f"({len(files)} recordings)")
    return train_idx, test_idx


def _frame_info(spec: FrameSpec, num_classes: int, description: str) -> DatasetInfo:
    return DatasetInfo(num_classes=num_classes, sample_shape=spec.frame_shape[1:], time_steps=spec.T,
                       description=description)


@register_dataset("cifar10_dvs")
def cifar10_dvs(root: str | None = None, T: int = 10, size: int = 48, split: str = "events",
                train_fraction: float = 0.9, cache: str | None = None, download: bool = False):
    """CIFAR10-DVS: 10,000 recordings (128×128) as ``[T, 2, size, size]`` frames, 9k/1k split."""
    base = require_root(root, "cifar10_dvs")
    spec = FrameSpec(T=T, sensor_size=(128, 128, 2), size=size, split=split)
    dataset = open_tonic("CIFAR10DVS", base, download,
                         "<class>/*.aedat4 folders (airplane, automobile, ..., truck)")
    train_idx, test_idx = per_class_split(dataset.data, dataset.targets, train_fraction)
    what = "an AEDAT 4 event recording"
    sources = {"train": tonic_source(dataset, train_idx, what),
               "test": tonic_source(dataset, test_idx, what)}
    sets = cached_frames("cifar10_dvs", _cache_root(base, cache), spec, sources,
                         {"train_fraction": train_fraction})
    info = _frame_info(spec, 10, f"CIFAR10-DVS ({len(sets['train'])} train / {len(sets['test'])} test)")
    return sets["train"], sets["test"], info


@register_dataset("dvs_gesture")
def dvs_gesture(root: str | None = None, T: int = 16, size: int = 128, split: str = "events",
                cache: str | None = None, download: bool = False):
    """DVS128 Gesture: 1,077 train / 264 test recordings as ``[T, 2, size, size]``, 11 classes."""
    base = require_root(root, "dvs_gesture")
    spec = FrameSpec(T=T, sensor_size=(128, 128, 2), size=size, split=split)
    sources = {}
    for name, train in (("train", True), ("test", False)):
        folder = "ibmGestureTrain" if train else "ibmGestureTest"
        dataset = open_tonic("DVSGesture", base, download,
                             f"{folder}/user<NN>_<lighting>/<label>.npy files", train=train)
        sources[name] = tonic_source(dataset, what="a DVS Gesture recording ([N, 4] x, y, p, t array)")
    sets = cached_frames("dvs_gesture", _cache_root(base, cache), spec, sources)
    info = _frame_info(spec, 11, f"DVS128 Gesture ({len(sets['train'])} train / {len(sets['test'])} test)")
    return sets["train"], sets["test"], info


@register_dataset("nmnist")
def nmnist(root: str | None = None, T: int = 10, size: int = 34, split: str = "time",
           first_saccade_only: bool = False, cache: str | None = None, download: bool = False):
    """N-MNIST: 60,000 train / 10,000 test recordings (34×34) as ``[T, 2, size, size]``."""
    base = require_root(root, "nmnist")
    spec = FrameSpec(T=T, sensor_size=(34, 34, 2), size=size, split=split)
    sources = {}
    for name, train in (("train", True), ("test", False)):
        folder = "Train" if train else "Test"
        dataset = open_tonic("NMNIST", base, download, f"{folder}/<digit>/*.bin files", train=train,
                             first_saccade_only=first_saccade_only)
        sources[name] = tonic_source(dataset, what="an N-MNIST recording (5 bytes per event)")
    sets = cached_frames("nmnist", _cache_root(base, cache), spec, sources,
                         {"first_saccade_only": first_saccade_only})
    info = _frame_info(spec, 10, f"N-MNIST ({len(sets['train'])} train / {len(sets['test'])} test)")
    return sets["train"], sets["test"], info
