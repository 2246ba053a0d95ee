"""Cluttered digits: the harder built-in benchmark (no download).

Each 8×8 scikit-learn digit is drawn at a random scale and position on a larger canvas,
over clutter (fragments cut from other digits of the same split) and Gaussian noise:

1. side ``s`` drawn uniformly from ``[min_size, max_size]`` pixels; the digit is resized
   to ``s × s`` (bilinear, antialiased) and placed at a uniform random position;
2. ``clutter`` fragments: a random ``fragment × fragment`` crop of another digit, resized by
   the same factor, dimmed by a factor in ``[0.3, 0.7]``, at a random position; pixels
   combine by maximum, so clutter can touch or overlap the digit;
3. Gaussian noise of standard deviation ``noise``, then clamped to ``[0, 1]``.

Each digit appears ``copies`` times in its split, each with its own draw. The train and
test canvases come from the fixed digits split (train digits only in train, test digits
only in test) and from fixed seeds, so the benchmark does not change with the training
seed. With the defaults: 2,866 training and 728 test images, 1×16×16.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.data.digits import load_digits_arrays, refuse_root, stratified_split
from spikegrad.errors import UserError

BENCHMARK_SEED = 1234


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(image)[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0].numpy()


def render(
    images: np.ndarray, copies: int, canvas: int, min_size: int, max_size: int, clutter: int,
    fragment: int, noise: float, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Canvases ``[len(images)·copies, canvas, canvas]`` and the index of each source digit."""
    rng = np.random.default_rng(seed)
    n = len(images)
    out = np.zeros((n * copies, canvas, canvas), dtype=np.float32)
    source = np.repeat(np.arange(n), copies)
    for k, i in enumerate(source):
        side = int(rng.integers(min_size, max_size + 1))
        scale = side / 8.0
        img = out[k]
        for _ in range(clutter):
            other = images[int(rng.integers(n))]
            r, c = rng.integers(0, 8 - fragment + 1, size=2)
            piece = _resize(other[r:r + fragment, c:c + fragment], max(1, round(fragment * scale)))
            piece = piece * rng.uniform(0.3, 0.7)
            _paste_max(img, piece, rng)
        _paste_max(img, _resize(images[i], side), rng)
        img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out, source


def _paste_max(canvas: np.ndarray, piece: np.ndarray, rng: np.random.Generator) -> None:
    side = canvas.shape[0]
    h, w = piece.shape
    r = int(rng.integers(0, side - h + 1))
    c = int(rng.integers(0, side - w + 1))
    np.maximum(canvas[r:r + h, c:c + w], piece, out=canvas[r:r + h, c:c + w])


@register_dataset("cluttered_digits")
def cluttered_digits(
    root: str | None = None,
    canvas: int = 16,
    copies: int = 2,
    min_size: int = 8,
    max_size: int = 14,
    clutter: int = 3,
    fragment: int = 3,
    noise: float = 0.1,
) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """The cluttered digits benchmark as ``[1, canvas, canvas]`` tensors (generated: ``root``
    must stay unset)."""
    refuse_root("cluttered_digits", root)
    if not 1 <= min_size <= max_size <= canvas:
        raise UserError(f"cluttered_digits needs 1 <= min_size <= max_size <= canvas, got "
                        f"{min_size}, {max_size}, {canvas}")
    if not 1 <= fragment <= 8 or copies < 1 or clutter < 0 or noise < 0:
        raise UserError("cluttered_digits needs 1 <= fragment <= 8, copies >= 1, clutter >= 0, "
                        "noise >= 0")
    images, labels = load_digits_arrays()
    splits = []
    for offset, idx in enumerate(stratified_split(labels)):
        x, src = render(images[idx], copies, canvas, min_size, max_size, clutter, fragment, noise,
                        BENCHMARK_SEED + offset)
        splits.append(TensorDataset(torch.from_numpy(x).unsqueeze(1),  # (N, 1, canvas, canvas)
                                    torch.from_numpy(labels[idx][src])))
    info = DatasetInfo(num_classes=10, sample_shape=(1, canvas, canvas),
                       description="cluttered digits (built-in harder benchmark)")
    return splits[0], splits[1], info
