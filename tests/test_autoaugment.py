"""AutoAugment's operations against PIL (the reference implementation's library), and cutout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from spikegrad.data import autoaugment as aa
from spikegrad.data import build_augmentation
from spikegrad.data._registry import DatasetInfo

H, W = 13, 17  # not square, so a swapped axis shows


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)
    imgs[1] = (imgs[1] // 4 + 60).astype(np.uint8)  # a low-contrast image for autocontrast/equalize
    return imgs


def ours(images: np.ndarray, op, m: float) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    out = op(x, torch.full((len(images),), m, dtype=torch.float64))
    return (out * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def pil(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(img))) for img in images])


GEOMETRIC = [
    ("shear_x", aa.shear_x, 0.3, lambda im: im.transform(im.size, Image.AFFINE, (1, 0.3, 0, 0, 1, 0),
                                                         Image.NEAREST, fillcolor=(0, 0, 0))),
    ("shear_y", aa.shear_y, -0.2, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 0),
                                                          Image.NEAREST, fillcolor=(0, 0, 0))),
    ("translate_x", aa.translate_x, 0.3, lambda im: im.transform(im.size, Image.AFFINE,
                                                                 (1, 0, int(0.3 * W), 0, 1, 0),
                                                                 Image.NEAREST, fillcolor=(0, 0, 0))),
    ("translate_y", aa.translate_y, -0.4, lambda im: im.transform(im.size, Image.AFFINE,
                                                                  (1, 0, 0, 0, 1, int(-0.4 * H)),
                                                                  Image.NEAREST, fillcolor=(0, 0, 0))),
    ("rotate", aa.rotate, 23.0, lambda im: im.rotate(23.0, Image.NEAREST, fillcolor=(0, 0, 0))),
    ("rotate_neg", aa.rotate, -30.0, lambda im: im.rotate(-30.0, Image.NEAREST, fillcolor=(0, 0, 0))),
]


@pytest.mark.parametrize("name,op,m,ref", GEOMETRIC, ids=[g[0] for g in GEOMETRIC])
def test_geometric_ops_match_pil(images, name, op, m, ref):
    got, want = ours(images, op, m), pil(images, ref)
    same = (got == want).all(-1).mean()
    assert same >= 0.99, f"{name}: only {same:.3f} of pixels agree with PIL"  # float ties at edges


COLOUR = [
    ("brightness", aa.brightness, 0.6, lambda im: ImageEnhance.Brightness(im).enhance(1.6)),
    ("brightness_down", aa.brightness, -0.7, lambda im: ImageEnhance.Brightness(im).enhance(0.3)),
    ("color", aa.color, 0.8, lambda im: ImageEnhance.Color(im).enhance(1.8)),
    ("color_down", aa.color, -0.5, lambda im: ImageEnhance.Color(im).enhance(0.5)),
    ("contrast", aa.contrast, 0.7, lambda im: ImageEnhance.Contrast(im).enhance(1.7)),
    ("contrast_down", aa.contrast, -0.9, lambda im: ImageEnhance.Contrast(im).enhance(0.1)),
    ("sharpness", aa.sharpness, 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
    ("sharpness_down", aa.sharpness, -0.8, lambda im: ImageEnhance.Sharpness(im).enhance(0.2)),
    ("autocontrast", aa.autocontrast, 0.0, ImageOps.autocontrast),
]


@pytest.mark.parametrize("name,op,m,ref", COLOUR, ids=[c[0] for c in COLOUR])
def test_colour_ops_match_pil(images, name, op, m, ref):
    got, want = ours(images, op, m).astype(int), pil(images, ref).astype(int)
    # PIL rounds its intermediate images to 8 bits; we stay in float until the end
    assert np.abs(got - want).max() <= 2, name


EXACT = [
    ("posterize", aa.posterize, 5, lambda im: ImageOps.posterize(im, 5)),
    ("posterize4", aa.posterize, 4, lambda im: ImageOps.posterize(im, 4)),
    ("solarize", aa.solarize, 128, lambda im: ImageOps.solarize(im, 128)),
    ("equalize", aa.equalize, 0, ImageOps.equalize),
    ("invert", aa.invert, 0, ImageOps.invert),
]


@pytest.mark.parametrize("name,op,m,ref", EXACT, ids=[e[0] for e in EXACT])
def test_lookup_ops_equal_pil(images, name, op, m, ref):
    np.testing.assert_array_equal(ours(images, op, m), pil(images, ref))


def test_equalize_leaves_flat_channels_alone():
    flat = np.full((1, 5, 5, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(ours(flat, aa.equalize, 0), flat)
    np.testing.assert_array_equal(pil(flat, ImageOps.equalize), flat)


def test_policy_table_and_levels():
    assert len(aa.CIFAR10_POLICY) == 25
    for sub in aa.CIFAR10_POLICY:
        for name, p, level in sub:
            assert name in aa.OPS and 0.0 <= p <= 1.0
            assert (level is None) == (aa.OPS[name][1] is None)
    assert aa.OPS["Posterize"][1](0) == 8 and aa.OPS["Posterize"][1](9) == 4
    assert aa.OPS["Solarize"][1](0) == 256.0 and aa.OPS["Solarize"][1](9) == 0.0
    assert aa.OPS["ShearX"][1](9) == pytest.approx(0.3)
    assert aa.OPS["TranslateY"][1](9) == pytest.approx(150 / 331)


def test_policy_draws_one_sub_policy_per_image_with_random_sign():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 9, 11)
    policy = ((("Rotate", 1.0, 9), ("Invert", 0.0, None)),)  # always rotate by ±30°, never invert
    out = aa.apply_policy(x, policy)
    plus = aa.rotate(x, torch.full((64,), 30.0, dtype=torch.float64))
    minus = aa.rotate(x, torch.full((64,), -30.0, dtype=torch.float64))
    is_plus = torch.tensor([torch.equal(out[i], plus[i]) for i in range(64)])
    is_minus = torch.tensor([torch.equal(out[i], minus[i]) for i in range(64)])
    assert bool((is_plus | is_minus).all()) and 10 < int(is_plus.sum()) < 54
    never = aa.apply_policy(x, ((("Invert", 0.0, None), ("Invert", 0.0, None)),))
    assert torch.equal(never, x)


def test_autoaugment_undoes_and_redoes_the_normalisation():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    info = DatasetInfo(10, (3, 8, 8), mean=mean, std=std)
    pixels = torch.randint(0, 256, (32, 3, 8, 8)).float() / 255
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    normed = (pixels - m) / s
    out = build_augmentation(["autoaugment"], info)(normed)
    assert out.shape == normed.shape and torch.isfinite(out).all()
    back = out * s + m
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # still valid pixel values
    # with a policy that always inverts, the result is the normalised inverse image
    aa.POLICIES["test_invert"] = ((("Invert", 1.0, None), ("Invert", 0.0, None)),)
    try:
        inverted = aa.autoaugment("test_invert", mean=mean, std=std)(normed)
    finally:
        del aa.POLICIES["test_invert"]
    torch.testing.assert_close(inverted, (1 - pixels - m) / s)


def test_cutout_zeroes_one_square_per_sample_shared_over_time():
    torch.manual_seed(1)
    x = torch.ones(3, 200, 1, 20, 20)  # (T, B, C, H, W)
    out = build_augmentation(["cutout:6"])(x)
    assert torch.equal(out[0], out[2])  # the same hole at every time step
    holes = out[0, :, 0] == 0  # (B, H, W)
    rows, cols = holes.any(2), holes.any(1)
    for b in range(200):
        r, c = rows[b].nonzero().flatten(), cols[b].nonzero().flatten()
        assert holes[b].sum() == len(r) * len(c)  # a rectangle
        assert len(r) <= 6 and len(c) <= 6 and r.max() - r.min() + 1 == len(r)
        if r.min() >= 3 and r.max() < 17:
            assert len(r) == 6
    assert int((holes.sum((1, 2)) == 36).sum()) > 50  # most squares lie whole inside
