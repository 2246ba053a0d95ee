"""Batched data augmentation on tensors (on whatever device the batch is on).

Every op takes a batch ``[B, C, H, W]`` or a time-major batch ``[T, B, C, H, W]`` (the same
random draw applied to all time steps of a sample) and uses the global torch generator, so
seeded runs are reproducible. Batches are normalised (see :mod:`spikegrad.data.images`), so
zero padding and cutout's zero fill are the dataset's mean colour; ``autoaugment`` (static
images only) works on pixel values and undoes the normalisation with the dataset's stats.

Ops (``name[:argument]`` in ``data.augment``): ``crop:P`` (pad P, random crop back),
``roll:S`` (circular shift up to S pixels), ``hflip[:p]``, ``cutout:S`` (one S×S square
zeroed, its centre uniform over the image, clipped at the borders; DeVries & Taylor 2017),
``autoaugment[:cifar10]`` (:mod:`spikegrad.data.autoaugment`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from spikegrad.data._registry import DatasetInfo
from spikegrad.data.autoaugment import autoaugment
from spikegrad.errors import UserError, unknown_name_error

BatchOp = Callable[[Tensor], Tensor]


def _per_sample(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply ``fn`` to ``[B, C', H, W]``; time-major input is folded to ``[B, T·C, H, W]``."""
    if x.dim() == 4:
        return fn(x)
    if x.dim() == 5:
        T, B, C, H, W = x.shape
        folded = x.permute(1, 0, 2, 3, 4).reshape(B, T * C, H, W)  # (B, T·C, H, W)
        return fn(folded).reshape(B, T, C, H, W).permute(1, 0, 2, 3, 4)  # (T, B, C, H, W)
    raise UserError(
        f"data.augment's image augmentations take [B, C, H, W] or [T, B, C, H, W] batches, got "
        f"shape {tuple(x.shape)} (1-D signals, say); set data.augment to [] for this dataset"
    )


def _random_shift(x: Tensor, max_shift: int, mode: str) -> Tensor:
    """Shift each sample of ``[B, C, H, W]`` by up to ``max_shift`` pixels in each direction.

    The sample is padded by ``max_shift`` (zeros, or ``"circular"`` for a roll) and cropped back
    at a uniform random offset.
    """
    B, _, H, W = x.shape
    dy = torch.randint(0, 2 * max_shift + 1, (B,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), device=x.device)
    padded = F.pad(x, (max_shift,) * 4, mode=mode)
    rows = dy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=x.device)  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


MAX_SHIFT = 256  # pixels; a larger crop padding or roll is a typo (and a huge padded batch)


def _shift(name: str, value: int, limit: int = MAX_SHIFT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise UserError(f"{name} takes a whole number of pixels in [0, {limit}], got {value!r}")
    return value


def random_crop(padding: int) -> BatchOp:
    """Zero-pad by ``padding`` pixels and crop back at a random offset per sample."""
    padding = _shift("crop", padding)
    return lambda x: _per_sample(lambda b: _random_shift(b, padding, "constant"), x)


def random_roll(max_shift: int) -> BatchOp:
    """Roll (circular shift) each sample by up to ``max_shift`` pixels in each direction."""
    max_shift = _shift("roll", max_shift)
    return lambda x: _per_sample(lambda b: _random_shift(b, max_shift, "circular"), x)


def random_hflip(p: float = 0.5) -> BatchOp:
    """Mirror each sample left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the flip probability must lie in [0, 1], got {p}")

    def op(x: Tensor) -> Tensor:
        def flip(b: Tensor) -> Tensor:
            mask = torch.rand(b.shape[0], device=b.device) < p
            return torch.where(mask[:, None, None, None], b.flip(-1), b)

        return _per_sample(flip, x)

    return op


def cutout(size: int) -> BatchOp:
    """Zero one ``size × size`` square per sample, centred uniformly (clipped at the borders)."""
    if size < 1:
        raise UserError(f"cutout needs a positive size, got {size}")

    def op(x: Tensor) -> Tensor:
        def cut(b: Tensor) -> Tensor:
            n, _, h, w = b.shape
            cy = torch.randint(0, h, (n, 1), device=b.device)
            cx = torch.randint(0, w, (n, 1), device=b.device)
            rows = torch.arange(h, device=b.device)[None]  # (1, H)
            cols = torch.arange(w, device=b.device)[None]
            in_rows = (rows >= cy - size // 2) & (rows < cy - size // 2 + size)  # (B, H)
            in_cols = (cols >= cx - size // 2) & (cols < cx - size // 2 + size)  # (B, W)
            hole = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
            return b.masked_fill(hole[:, None], 0.0)

        return _per_sample(cut, x)

    return op


def compose(ops: Sequence[BatchOp]) -> BatchOp:
    def op(x: Tensor) -> Tensor:
        for f in ops:
            x = f(x)
        return x

    return op


_OPS: dict[str, Callable[..., BatchOp]] = {
    "crop": random_crop,
    "roll": random_roll,
    "hflip": random_hflip,
    "cutout": cutout,
    "autoaugment": autoaugment,
}
_NEEDS_STATS = {"autoaugment"}  # ops that work on pixel values and undo the normalisation
_NAMED_ARGUMENT = {"autoaugment"}  # ops whose argument is a name (the policy), not a number


def _parse_argument(name: str, arg: str) -> list:
    if not arg:
        return []
    if name in _NAMED_ARGUMENT:
        return [arg]
    try:
        return [float(arg) if "." in arg else int(arg)]
    except ValueError:
        raise UserError(f"augmentation {name!r} takes a number after ':', got {arg!r}") from None


def build_augmentation(spec: Sequence[str] | None, info: DatasetInfo | None = None,
                       sample_shape: Sequence[int] | None = None) -> BatchOp | None:
    """Build a pipeline from strings like ``["crop:4", "hflip"]`` (``name[:argument]``).

    ``info`` (what :func:`spikegrad.data.build_datasets` returns with the datasets) gives the
    normalisation statistics to ops that need pixel values (``autoaugment``): without it they
    are refused, since guessing would clamp normalised samples to ``[0, 1]``. The shifts of
    ``crop`` and ``roll`` must fit in a side of ``info.sample_shape`` (or of ``sample_shape``,
    one sample's shape, where no info is given).
    """
    shape = tuple(info.sample_shape) if info is not None else sample_shape
    if not spec:
        return None
    ops = []
    for item in spec:
        name, _, arg = str(item).partition(":")
        if name not in _OPS:
            raise unknown_name_error("augmentation", name, _OPS)
        kwargs = {}
        if name in _NEEDS_STATS:
            if info is None:
                raise UserError(
                    f"augmentation {item!r} works on pixel values, so it must undo the dataset's "
                    "normalisation and needs its statistics: pass the DatasetInfo that "
                    "build_datasets returns, build_augmentation(config.data.augment, info), and give "
                    "the pipeline to Trainer(..., augment=...) (spikegrad train does this)")
            kwargs = {"mean": info.mean, "std": info.std}
        args = _parse_argument(name, arg)
        if name in ("crop", "roll") and args and shape is not None and len(shape) >= 2:
            _shift(f"augmentation {item!r}", args[0], min(shape[-2:]))  # at most a side
        try:
            ops.append(_OPS[name](*args, **kwargs))
        except (TypeError, ValueError) as exc:
            raise UserError(f"augmentation {item!r}: {exc}") from exc
    return compose(ops)
