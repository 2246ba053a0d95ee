"""A simulated event camera, and ``event_digits``: the built-in digits seen by it (no download).

N-MNIST was recorded by an event camera that looked at MNIST digits on a screen while it
made three saccades. This module does the same in simulation:

1. **Scene.** Each 8×8 digit is resized to ``digit_size`` (bilinear, antialiased) and
   placed at the centre of a ``size × size`` sensor.
2. **Saccades.** The image moves along a triangle, the path N-MNIST's camera followed:
   ``(0, 0) -> (a/2, a) -> (a, 0) -> (0, 0)`` pixels (``a = amplitude``, the whole path
   shifted by ``-a/2`` in x and y so the digit stays centred), each side one
   saccade of ``steps`` sub-steps and ``saccade_us`` µs; the position moves linearly
   within a saccade and the image is resampled bilinearly at every sub-step.
3. **Pixels.** Each pixel sees ``L = log(offset + I)`` (``offset`` keeps black finite) and
   remembers the level ``L_ref`` of its last event. When ``|L - L_ref|`` reaches its
   contrast threshold ``C_px``, it emits ``n = floor(|L - L_ref| / C_px)`` events of
   polarity ``sign(L - L_ref)`` (1: brighter, 0: darker) and moves ``L_ref`` by ``±n·C_px``.
   ``C_px = C·(1 + mismatch·z)``, ``z ~ N(0, 1)`` fixed per pixel (sensor fixed-pattern
   noise), at least ``C/10``.
4. **Noise.** Background-activity events at ``noise_rate`` events per pixel per second,
   uniform in time, random polarity.

Every event is stamped at the middle of its sub-step. The events go through the same frame
pipeline as recorded datasets (:func:`spikegrad.data.frames.events_to_frames`), with ``T``
equal windows over the recording. Everything is drawn from ``seed`` (the test split from
``seed + 1``) and the split is the fixed digits split, so the dataset never changes with
the training seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.data.digits import load_digits_arrays, refuse_root, stratified_split
from spikegrad.data.frames import FrameSpec, Source, in_memory_frames
from spikegrad.errors import UserError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
DATASET_SEED = 2015  # the default seed of the built-in event digits


@dataclass(frozen=True)
class EventCamera:
    """Parameters of the simulated sensor and its motion (see the module docstring)."""

    size: int = 16
    contrast: float = 0.2
    offset: float = 0.1
    mismatch: float = 0.03
    noise_rate: float = 0.2
    amplitude: float = 2.0
    steps: int = 12
    saccade_us: int = 100_000

    @property
    def duration_us(self) -> int:
        return 3 * self.saccade_us

    def path(self) -> np.ndarray:
        """Image offsets ``[3·steps + 1, 2]`` (dx, dy) in pixels, from t = 0 to the end."""
        a = self.amplitude
        corners = np.array([[0.0, 0.0], [a / 2, a], [a, 0.0], [0.0, 0.0]]) - a / 2  # centred
        frac = np.arange(1, self.steps + 1)[:, None] / self.steps
        legs = [corners[k] + frac * (corners[k + 1] - corners[k]) for k in range(3)]
        return np.concatenate([corners[:1], *legs])


def place(images: np.ndarray, digit_size: int, size: int) -> torch.Tensor:
    """Digits ``[N, 8, 8]`` resized to ``digit_size`` and centred on a ``size²`` canvas."""
    x = torch.from_numpy(images).float().unsqueeze(1)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", antialias=True,
                      align_corners=False).clamp(0, 1)
    pad = size - digit_size
    return F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))  # (N, 1, size, size)


def shift(canvas: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Move ``[N, 1, S, S]`` by ``(dx, dy)`` pixels (bilinear; black enters at the edges)."""
    n, _, s, _ = canvas.shape
    theta = torch.tensor([[[1.0, 0.0, -2 * float(dx) / s], [0.0, 1.0, -2 * float(dy) / s]]])
    grid = F.affine_grid(theta, [1, 1, s, s], align_corners=False).expand(n, s, s, 2)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def simulate(canvas: torch.Tensor, camera: EventCamera, seed: int) -> list[np.ndarray]:
    """The events of each image ``[N, 1, S, S]`` as structured arrays (x, y, t, p), time-sorted."""
    rng = np.random.default_rng(seed)
    n, _, s, _ = canvas.shape
    path = camera.path()
    dt = camera.saccade_us // camera.steps
    z = torch.from_numpy(rng.standard_normal((1, 1, s, s))).float()
    threshold = (camera.contrast * (1 + camera.mismatch * z)).clamp_min(camera.contrast / 10)
    reference = torch.log(camera.offset + shift(canvas, *path[0]))
    chunks = []  # (pixel index n·S² + y·S + x, time, polarity) per sub-step
    for k in range(1, len(path)):
        level = torch.log(camera.offset + shift(canvas, *path[k]))
        change = level - reference
        count = torch.floor(change.abs() / threshold)  # (N, 1, S, S)
        reference = reference + torch.sign(change) * count * threshold
        flat = count.flatten().long()  # (N·S·S,)
        pixels = torch.nonzero(flat).squeeze(1)
        reps = flat[pixels]
        polarity = (change.flatten()[pixels] > 0).to(torch.int8)
        where = torch.repeat_interleave(pixels, reps).numpy()
        chunks.append((where, np.full(len(where), (k - 1) * dt + dt // 2, dtype=np.int64),
                       torch.repeat_interleave(polarity, reps).numpy()))
    noise_mean = camera.noise_rate * s * s * camera.duration_us * 1e-6
    counts = rng.poisson(noise_mean, size=n)
    total = int(counts.sum())
    noise_pixels = np.repeat(np.arange(n), counts) * s * s + rng.integers(0, s * s, total)
    chunks.append((noise_pixels, rng.integers(0, camera.duration_us, total),
                   rng.integers(0, 2, total).astype(np.int8)))
    where, t, p = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    sample = where // (s * s)
    order = np.argsort(sample * camera.duration_us + t, kind="stable")  # by sample, then time
    events = np.empty(len(order), dtype=EVENT_DTYPE)
    events["x"], events["y"] = where[order] % s, (where[order] // s) % s
    events["t"], events["p"] = t[order], p[order]
    bounds = np.searchsorted(sample[order], np.arange(n + 1))
    return [events[bounds[i]:bounds[i + 1]] for i in range(n)]


@register_dataset("event_digits")
def event_digits(root: str | None = None, T: int = 6, size: int = 16, digit_size: int = 12,
                 contrast: float = 0.2, mismatch: float = 0.03, noise_rate: float = 0.2,
                 amplitude: float = 2.0, steps: int = 12, seed: int = DATASET_SEED):
    """The digits seen by a simulated event camera: ``[T, 2, size, size]`` frames, 10 classes
    (generated: ``root`` must stay unset)."""
    refuse_root("event_digits", root)
    if not 1 <= digit_size <= size:
        raise UserError(f"event_digits needs 1 <= digit_size <= size, got {digit_size} and {size}")
    if contrast <= 0 or mismatch < 0 or noise_rate < 0 or steps < 1 or amplitude < 0:
        raise UserError("event_digits needs contrast > 0, mismatch >= 0, noise_rate >= 0, "
                        "steps >= 1 and amplitude >= 0")
    camera = EventCamera(size=size, contrast=contrast, mismatch=mismatch, noise_rate=noise_rate,
                         amplitude=amplitude, steps=steps)
    spec = FrameSpec(T=T, sensor_size=(size, size, 2), size=size, duration=camera.duration_us)
    images, labels = load_digits_arrays()
    splits = []
    for offset, idx in enumerate(stratified_split(labels)):
        events = simulate(place(images[idx], digit_size, size), camera, seed + offset)
        split_labels = labels[idx]
        source = Source(len(idx), lambda i, ev=events, lab=split_labels: (ev[i], int(lab[i])))
        splits.append(in_memory_frames(spec, source))
    info = DatasetInfo(num_classes=10, sample_shape=(2, size, size), time_steps=T,
                       description="event digits (simulated event camera, built in)")
    return splits[0], splits[1], info
