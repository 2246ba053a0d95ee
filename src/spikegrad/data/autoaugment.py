"""AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019), batched on tensors.

The policy is 25 sub-policies of two operations, each ``(name, probability, level)``;
every image draws one sub-policy, then applies each of its two operations with its
probability. Levels 0-9 map to magnitudes as in the paper's code base (shear up to 0.3,
translation up to 150/331 of the image side, rotation up to 30°, enhancement factors
``1 ± 0.9·level/9``, posterize to 8..4 bits, solarize threshold ``256·(1 - level/9)``
on the 0-255 scale); signed operations go either way with equal chance.

Operations act on ``[N, C, H, W]`` images with values in ``[0, 1]`` and follow PIL's
definitions (the reference implementation used PIL), so the tests compare each with PIL:

- geometric (ShearX/Y, TranslateX/Y, Rotate): inverse affine map of pixel centres,
  nearest neighbour, black fill, like PIL's ``Image.transform`` / ``Image.rotate``;
- Brightness, Color, Contrast, Sharpness: ``clamp(d + f·(x - d))`` with degenerate image
  ``d`` black, the grey version (``L = 0.299 R + 0.587 G + 0.114 B``), the grey mean, or the
  3×3 smoothed image (kernel ``[1 1 1; 1 5 1; 1 1 1]/13``, borders unchanged);
- Posterize (keep the top bits of the 8-bit value), Solarize (invert values at or above the
  threshold), AutoContrast (stretch each channel's min..max to 0..1), Equalize (PIL's
  histogram equalisation of the 8-bit values, per channel), Invert.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from spikegrad.errors import UserError

LEVELS = 10

CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

POLICIES = {"cifar10": CIFAR10_POLICY}


# --------------------------------------------------------------------------- geometry


def affine_nearest(x: Tensor, matrix: Tensor, fill: float = 0.0) -> Tensor:
    """PIL-style affine warp: output pixel centre ``(u + ½, v + ½)`` reads input pixel
    ``floor(matrix @ (u + ½, v + ½, 1))``; outside the image it is ``fill``.

    ``x``: ``[N, C, H, W]``; ``matrix``: ``[N, 2, 3]`` mapping output to input coordinates.
    """
    n, c, h, w = x.shape
    v, u = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,
                          torch.arange(w, device=x.device, dtype=torch.float64) + 0.5, indexing="ij")
    m = matrix.to(torch.float64)[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    src_x = torch.floor(m[:, 0, 0] * u + m[:, 0, 1] * v + m[:, 0, 2]).long()  # (N, H, W)
    src_y = torch.floor(m[:, 1, 0] * u + m[:, 1, 1] * v + m[:, 1, 2]).long()
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).flatten(1)  # (N, H·W)
    out = x.flatten(2).gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
    return torch.where(inside[:, None], out, torch.full_like(out, fill))


def _matrix(rows: list[list[Tensor | float]], n: int, device: torch.device) -> Tensor:
    flat = [torch.as_tensor(v, dtype=torch.float64, device=device).expand(n) for r in rows for v in r]
    return torch.stack(flat, 1).view(n, 2, 3)


def shear_x(x: Tensor, m: Tensor) -> Tensor:
    """Input x = u + m·v (PIL's affine ``(1, m, 0, 0, 1, 0)``)."""
    return affine_nearest(x, _matrix([[1.0, m, 0.0], [0.0, 1.0, 0.0]], len(x), x.device))


def shear_y(x: Tensor, m: Tensor) -> Tensor:
    """Input y = m·u + v (PIL's affine ``(1, 0, 0, m, 1, 0)``)."""
    return affine_nearest(x, _matrix([[1.0, 0.0, 0.0], [m, 1.0, 0.0]], len(x), x.device))


def translate_x(x: Tensor, m: Tensor) -> Tensor:
    """Shift by ``trunc(m·W)`` whole pixels (input x = u + d)."""
    d = torch.trunc(m.double() * x.shape[-1])
    return affine_nearest(x, _matrix([[1.0, 0.0, d], [0.0, 1.0, 0.0]], len(x), x.device))


def translate_y(x: Tensor, m: Tensor) -> Tensor:
    """Shift by ``trunc(m·H)`` whole pixels (input y = v + d)."""
    d = torch.trunc(m.double() * x.shape[-2])
    return affine_nearest(x, _matrix([[1.0, 0.0, 0.0], [0.0, 1.0, d]], len(x), x.device))


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate counter-clockwise by ``degrees`` about the image centre (as ``Image.rotate``)."""
    h, w = x.shape[-2:]
    a = -torch.deg2rad(degrees.double())
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2, h / 2
    tx = cos * -cx + sin * -cy + cx
    ty = -sin * -cx + cos * -cy + cy
    return affine_nearest(x, _matrix([[cos, sin, tx], [-sin, cos, ty]], len(x), x.device))


# --------------------------------------------------------------------------- colour


def _per_sample(m: Tensor) -> Tensor:
    return m.to(torch.float32).view(-1, 1, 1, 1)


def blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """``clamp(d + f·(x - d), 0, 1)``: f = 0 gives ``d``, f = 1 gives ``x``."""
    return (degenerate + _per_sample(factor) * (x - degenerate)).clamp(0.0, 1.0)


def grayscale(x: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma ``0.299 R + 0.587 G + 0.114 B`` (the channel itself if grey)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def brightness(x: Tensor, m: Tensor) -> Tensor:
    return blend(x, torch.zeros_like(x), 1.0 + m)


def color(x: Tensor, m: Tensor) -> Tensor:
    return blend(x, grayscale(x).expand_as(x), 1.0 + m)


def contrast(x: Tensor, m: Tensor) -> Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(x, mean.expand_as(x), 1.0 + m)


def sharpness(x: Tensor, m: Tensor) -> Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return blend(x, smooth, 1.0 + m)


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255.0).round().clamp(0, 255).to(torch.int64)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` bits of each 8-bit value."""
    keep = (255 - (2 ** (8 - bits.long()) - 1)).view(-1, 1, 1, 1)  # mask of the kept bits
    return (_to_uint8(x) & keep).to(x.dtype) / 255.0


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert every value at or above ``threshold`` (on the 0-255 scale)."""
    return torch.where(_to_uint8(x) >= _per_sample(threshold), 1.0 - x, x)


def autocontrast(x: Tensor, m: Tensor | None = None) -> Tensor:
    """Stretch each channel from its min..max to 0..1 (a flat channel stays as it is)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    stretched = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, stretched, x)


def equalize(x: Tensor, m: Tensor | None = None) -> Tensor:
    """PIL's histogram equalisation per channel of the 8-bit values.

    With histogram ``h`` and ``step = (Σh - h[last non-empty bin]) // 255``, value ``i``
    maps to ``(step // 2 + Σ_{j<i} h[j]) // step``; a channel with one value (or step 0)
    is unchanged.
    """
    n, c, hgt, wid = x.shape
    values = _to_uint8(x).reshape(n * c, hgt * wid)  # (N·C, P)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    last_bin = 255 - torch.argmax((hist.flip(1) > 0).to(torch.int8), dim=1)  # last non-empty bin
    step = (hist.sum(1) - hist.gather(1, last_bin[:, None]).squeeze(1)) // 255  # (N·C,)
    before = torch.cumsum(hist, 1) - hist  # Σ_{j<i} h[j]
    safe_step = step.clamp_min(1)[:, None]
    lut = ((safe_step // 2 + before) // safe_step).clamp(0, 255)
    keep = ((hist > 0).sum(1) <= 1) | (step == 0)
    lut = torch.where(keep[:, None], torch.arange(256, device=x.device).expand_as(lut), lut)
    return (lut.gather(1, values).to(x.dtype) / 255.0).view(n, c, hgt, wid)


def invert(x: Tensor, m: Tensor | None = None) -> Tensor:
    return 1.0 - x


# --------------------------------------------------------------------------- the policy

Op = Callable[[Tensor, Tensor], Tensor]

#: name -> (op, magnitude of level 0..9, signed)
OPS: dict[str, tuple[Op, Callable[[int], float] | None, bool]] = {
    "ShearX": (shear_x, lambda k: 0.3 * k / 9, True),
    "ShearY": (shear_y, lambda k: 0.3 * k / 9, True),
    "TranslateX": (translate_x, lambda k: 150 / 331 * k / 9, True),
    "TranslateY": (translate_y, lambda k: 150 / 331 * k / 9, True),
    "Rotate": (rotate, lambda k: 30.0 * k / 9, True),
    "Brightness": (brightness, lambda k: 0.9 * k / 9, True),
    "Color": (color, lambda k: 0.9 * k / 9, True),
    "Contrast": (contrast, lambda k: 0.9 * k / 9, True),
    "Sharpness": (sharpness, lambda k: 0.9 * k / 9, True),
    "Posterize": (posterize, lambda k: 8 - k // 2, False),
    "Solarize": (solarize, lambda k: 256.0 * (1 - k / 9), False),
    "AutoContrast": (autocontrast, None, False),
    "Equalize": (equalize, None, False),
    "Invert": (invert, None, False),
}


def apply_policy(x: Tensor, policy=CIFAR10_POLICY) -> Tensor:
    """Each image of ``[N, C, H, W]`` (values in [0, 1]) gets one random sub-policy."""
    n = x.shape[0]
    choice = torch.randint(len(policy), (n,), device=x.device)
    x = x.clone()
    for stage in range(2):
        chance = torch.rand(n, device=x.device)
        sign = torch.randint(0, 2, (n,), device=x.device) * 2.0 - 1.0
        for k, sub_policy in enumerate(policy):
            name, probability, level = sub_policy[stage]
            selected = (choice == k) & (chance < probability)
            if not bool(selected.any()):
                continue
            op, magnitude, signed = OPS[name]
            m = torch.full((int(selected.sum()),), magnitude(level) if magnitude else 0.0,
                           device=x.device, dtype=torch.float64)
            if signed:
                m = m * sign[selected].double()
            x[selected] = op(x[selected], m).to(x.dtype)
    return x


def autoaugment(policy: str = "cifar10", *, mean=None, std=None) -> Callable[[Tensor], Tensor]:
    """The batched AutoAugment op; ``mean``/``std`` undo the dataset's normalisation first."""
    if policy not in POLICIES:
        raise UserError(f"unknown AutoAugment policy {policy!r}; available: {sorted(POLICIES)}")
    chosen = POLICIES[policy]

    def op(x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise UserError(f"autoaugment takes static image batches [B, C, H, W], got shape "
                            f"{tuple(x.shape)}")
        shape = (1, -1, 1, 1)
        m = torch.tensor(mean if mean is not None else (0.0,), device=x.device, dtype=x.dtype).view(shape)
        s = torch.tensor(std if std is not None else (1.0,), device=x.device, dtype=x.dtype).view(shape)
        pixels = (x * s + m).clamp(0.0, 1.0)
        return (apply_policy(pixels, chosen) - m) / s

    return op

