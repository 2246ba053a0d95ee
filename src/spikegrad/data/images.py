"""Static image datasets as tensors: normalisation, JPEG decoding, per-sample resizing.

Samples are ``[C, H, W]`` float32, normalised per channel: ``x = (v/255 - mean) / std``
for 8-bit pixel values ``v``. The batched augmentation (:mod:`spikegrad.data.augment`) runs
on these normalised batches; ops that need pixel values in ``[0, 1]`` (AutoAugment) undo
and redo the normalisation with the ``mean``/``std`` of :class:`DatasetInfo`.

Images of varying size (ImageNet) are cropped and resized per sample here, on tensors:
``random_resized_crop`` for training and ``resize_center_crop`` for evaluation, with the
usual parameters (scale ``[0.08, 1]``, aspect ratio ``[3/4, 4/3]``; resize the shorter side
to ``resize`` then crop the centre).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from spikegrad.data._registry import DatasetInfo
from spikegrad.errors import UserError

Stats = tuple[float, ...]


class Normalizer:
    """``uint8 [C, H, W]`` -> float32 ``(v/255 - mean) / std`` (identity stats when None)."""

    def __init__(self, mean: Stats | None, std: Stats | None) -> None:
        mean_t = torch.tensor(mean if mean is not None else (0.0,), dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else (1.0,), dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(-1, 1, 1)
        self.shift = (-mean_t / std_t).view(-1, 1, 1)

    def __call__(self, pixels: Tensor) -> Tensor:
        return pixels.float() * self.scale + self.shift


class ImageArrayDataset(Dataset):
    """Images held as one ``uint8 [N, C, H, W]`` tensor; samples normalised on access."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Stats | None, std: Stats | None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise UserError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                            f"{tuple(images.shape)}")
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.normalize = Normalizer(mean, std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.normalize(self.images[index]), self.labels[index]


def grey_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``v/255`` over all pixels of ``uint8`` images (exact)."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float(counts @ values / counts.sum())
    return mean, float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))


def grey_datasets(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], normalize: bool, name: str, source: str,
    classes: tuple[str, ...],
) -> tuple[ImageArrayDataset, ImageArrayDataset, DatasetInfo]:
    """Train and test sets of grey ``uint8 [N, S, S]`` images as ``[1, S, S]`` samples.

    With ``normalize``, ``x = (v/255 - mean) / std`` with the mean and standard deviation of
    all training pixels (rounded to 4 decimals); else ``x = v/255``.
    """
    mean = std = None
    if normalize:
        m, s = grey_stats(splits["train"][0])
        if not s > 0:
            raise UserError(f"dataset {name!r}: every training pixel has the same value; cannot "
                            "normalise (set data.options.normalize=false)")
        mean, std = (round(m, 4),), (round(s, 4),)
    sets = []
    for split in ("train", "test"):
        images, labels = splits[split]
        sets.append(ImageArrayDataset(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
                                      torch.from_numpy(labels), mean, std))  # (N, 1, S, S)
    side = splits["train"][0].shape[-1]
    info = DatasetInfo(num_classes=len(classes), sample_shape=(1, side, side),
                       description=f"{name} from {source} ({len(sets[0])} train / {len(sets[1])} "
                                   f"test; classes {', '.join(classes[:3])}, ...)",
                       mean=mean, std=std)
    return sets[0], sets[1], info


# --------------------------------------------------------------------------- decoding


def decode_image(path: str | Path) -> Tensor:
    """An image file (JPEG, PNG, ...) as ``uint8 [3, H, W]`` RGB; a clear error if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))  # (H, W, 3)
    except FileNotFoundError as exc:
        raise UserError(f"image {str(path)!r} is missing") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"image {str(path)!r} cannot be decoded (expected a JPEG or other image "
                        f"file): {exc}") from exc
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # (3, H, W)


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of ``[C, H, W]`` (any dtype) to ``size = (h, w)``."""
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True,
                        align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else out


def resize_center_crop(image: Tensor, resize_to: int, crop: int) -> Tensor:
    """Resize the shorter side to ``resize_to`` (keeping the aspect), crop ``crop × crop`` centre."""
    _, h, w = image.shape
    scale = resize_to / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    image = resize(image, (nh, nw))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return image[:, top:top + crop, left:left + crop]


def random_resized_crop(
    image: Tensor, size: int, scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10,
) -> Tensor:
    """Crop a random area (fraction ``scale`` of the image, aspect ``ratio``), resize to ``size``.

    Ten tries at a valid box; otherwise the central box of the clamped aspect ratio.
    Randomness follows the global torch generator (seeded per loader worker).
    """
    _, h, w = image.shape
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,)))
            left = int(torch.randint(0, w - cw + 1, (1,)))
            return resize(image[:, top:top + ch, left:left + cw], (size, size))
    aspect = w / h
    if aspect < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif aspect > max(ratio):
        ch, cw = h, round(h * max(ratio))
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(image[:, top:top + ch, left:left + cw], (size, size))


class ImageFileDataset(Dataset):
    """Images decoded from files on access; ``transform`` maps ``uint8 [3, H, W]`` to a fixed size."""

    def __init__(
        self, files: Sequence[Path], labels: Sequence[int], transform: Callable[[Tensor], Tensor],
        mean: Stats | None, std: Stats | None,
    ) -> None:
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform
        self.normalize = Normalizer(mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pixels = self.transform(decode_image(self.files[index]))
        return self.normalize(pixels), self.labels[index]
