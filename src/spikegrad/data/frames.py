"""Event streams to frames ``[T, 2, H, W]``, converted once and cached on disk.

An event is ``(x, y, t, p)``: a pixel, a time in µs and a polarity (1: brightness went up,
0: down). tonic's ``ToFrame`` accumulates them into ``T`` frames, one channel per polarity,
each pixel counting its events in the slice:

- ``split="events"``: ``T`` slices of equal event count (SpikingJelly's ``split_by='number'``,
  used by the Dspike and shortcut CIFAR10-DVS recipes);
- ``split="time"``: ``T`` slices of equal duration between the first and last event;
- a fixed ``duration`` (µs): ``T`` windows of ``duration / T`` from ``t = 0`` (the built-in
  event digits, whose recordings all last the same).

Frames are then resized to ``size × size`` (bilinear, antialiased: each output pixel averages
the counts it covers), as the CIFAR10-DVS recipes resize 128×128 to 48×48.

The conversion of a dataset runs once: the frames of each split go into one ``.npy`` file
(float16, memory-mapped when read) under ``<cache>/<dataset>-<key>/``, where ``key`` is a
hash of the conversion parameters and of the source files' names and sizes, so changing
either converts again. ``meta.json`` is written last and marks a complete cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from spikegrad.errors import UserError

SPLITS = ("events", "time")
CACHE_VERSION = 1


@dataclass(frozen=True)
class FrameSpec:
    """How events become frames. ``sensor_size`` is tonic's ``(width, height, polarities)``."""

    T: int
    sensor_size: tuple[int, int, int]
    size: int
    split: str = "events"
    duration: int | None = None

    def __post_init__(self) -> None:
        if self.T < 1:
            raise UserError(f"the number of frames T must be positive, got {self.T}")
        if self.size < 1:
            raise UserError(f"the frame size must be positive, got {self.size}")
        if self.split not in SPLITS:
            raise UserError(f"split must be one of {list(SPLITS)}, got {self.split!r}")

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """``(T, polarities, size, size)``."""
        return (self.T, self.sensor_size[2], self.size, self.size)


#: how to install tonic, which spikegrad does not depend on (it pulls a large audio stack)
TONIC_INSTALL = "pip install --no-deps tonic, and pip install 'spikegrad[events]' for its readers"


def events_to_frames(events: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """Structured events (fields ``x``, ``y``, ``t``, ``p``) -> float32 frames ``[T, P, S, S]``."""
    try:
        from tonic.transforms import ToFrame
    except ImportError as exc:
        raise UserError("turning events into frames needs tonic, which spikegrad does not install "
                        f"(it pulls a large audio stack): {TONIC_INSTALL} ({exc})") from exc

    width, height, polarities = spec.sensor_size
    if len(events) == 0:
        return np.zeros(spec.frame_shape, dtype=np.float32)
    if spec.duration is not None:
        to_frame = ToFrame(sensor_size=spec.sensor_size, time_window=spec.duration / spec.T,
                           start_time=0, end_time=spec.duration)
    elif spec.split == "events":
        to_frame = ToFrame(sensor_size=spec.sensor_size, n_event_bins=spec.T)
    else:
        to_frame = ToFrame(sensor_size=spec.sensor_size, n_time_bins=spec.T)
    frames = to_frame(events).astype(np.float32)  # (T, P, height, width)
    if frames.shape != (spec.T, polarities, height, width):
        raise UserError(f"tonic returned frames of shape {frames.shape}, expected "
                        f"{(spec.T, polarities, height, width)}")
    if (height, width) != (spec.size, spec.size):
        resized = F.interpolate(torch.from_numpy(frames), size=(spec.size, spec.size),
                                mode="bilinear", antialias=True, align_corners=False)
        frames = resized.numpy()
    return frames


class FrameDataset(Dataset):
    """Frames ``[N, T, P, S, S]`` (an array or memory map) and labels; samples are float32."""

    time_major = True  # samples are [T, ...]: batches collate to [T, B, ...]

    def __init__(self, frames: np.ndarray, labels: np.ndarray) -> None:
        if len(frames) != len(labels):
            raise UserError(f"{len(frames)} frame samples but {len(labels)} labels")
        self.frames, self.labels = frames, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        frames = torch.from_numpy(np.asarray(self.frames[index], dtype=np.float32))
        return frames, torch.tensor(self.labels[index])


# --------------------------------------------------------------------------- cache

Reader = Callable[[int], tuple[np.ndarray, int]]


@dataclass(frozen=True)
class Source:
    """One split's recordings: how many, how to read recording ``i``, and their files."""

    count: int
    read: Reader
    files: Sequence[str] = ()


def cache_key(name: str, spec: FrameSpec, sources: dict[str, Source], extra: dict[str, Any]) -> str:
    """Hash of the conversion parameters and the source files' names and sizes."""
    digest = hashlib.sha256()
    head = {"version": CACHE_VERSION, "dataset": name, "spec": asdict(spec), "extra": extra}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for split, source in sorted(sources.items()):
        digest.update(f"{split}:{source.count}".encode())
        for path in source.files:
            size = os.path.getsize(path) if os.path.exists(path) else -1
            digest.update(f"{os.path.basename(path)}:{size};".encode())
    return digest.hexdigest()[:16]


def _convert_split(source: Source, spec: FrameSpec, path: Path, what: str) -> np.ndarray:
    """Convert every recording of a split into ``path`` (a .npy written under a temporary name)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                       shape=(source.count, *spec.frame_shape))
    labels = np.zeros(source.count, dtype=np.int64)
    show = sys.stderr.isatty()
    try:
        for i in range(source.count):
            events, label = source.read(i)
            frames[i] = events_to_frames(events, spec)
            labels[i] = label
            if show and (i + 1) % 200 == 0:
                print(f"\rconverting {what}: {i + 1}/{source.count}", end="", file=sys.stderr)
        frames.flush()
        del frames
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if show:
            print(file=sys.stderr)
    return labels


def cached_frames(
    name: str, cache_root: Path, spec: FrameSpec, sources: dict[str, Source],
    extra: dict[str, Any] | None = None,
) -> dict[str, FrameDataset]:
    """Frame datasets for each split, converting (once) into ``cache_root`` if needed."""
    extra = extra or {}
    folder = cache_root / f"{name}-{cache_key(name, spec, sources, extra)}"
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the frame cache {str(folder)!r}: {exc}; set "
                            "data.options.cache to a writable folder") from exc
        for split, source in sources.items():
            labels = _convert_split(source, spec, folder / f"{split}.npy", f"{name} {split}")
            np.save(folder / f"{split}_labels.npy", labels)
        meta = {"dataset": name, "spec": asdict(spec), "extra": extra,
                "counts": {split: s.count for split, s in sources.items()}}
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    out = {}
    for split in sources:
        try:
            frames = np.load(folder / f"{split}.npy", mmap_mode="r")
            labels = np.load(folder / f"{split}_labels.npy")
        except (OSError, ValueError) as exc:
            raise UserError(f"the frame cache {str(folder)!r} is damaged ({exc}); delete the folder "
                            "to convert again") from exc
        if frames.shape[1:] != spec.frame_shape:
            raise UserError(f"the frame cache {str(folder)!r} holds frames {frames.shape[1:]}, expected "
                            f"{spec.frame_shape}; delete the folder to convert again")
        out[split] = FrameDataset(frames, labels)
    return out


def in_memory_frames(spec: FrameSpec, source: Source) -> FrameDataset:
    """Convert a split without a cache (for data generated on the fly)."""
    frames = np.zeros((source.count, *spec.frame_shape), dtype=np.float32)
    labels = np.zeros(source.count, dtype=np.int64)
    for i in range(source.count):
        events, labels[i] = source.read(i)
        frames[i] = events_to_frames(events, spec)
    return FrameDataset(frames, labels)
