import math

import numpy as np
import pytest
import torch

from spikegrad import surrogates
from spikegrad.errors import UserError

FAMILY = [
    surrogates.Rectangle(width=0.8),
    surrogates.Rectangle(width=0.4, height=1.0),
    surrogates.Triangle(alpha=1.5),
    surrogates.Sigmoid(alpha=4.0),
    surrogates.ATan(alpha=2.0),
    surrogates.FastSigmoid(slope=25.0),
    surrogates.Dspike(temperature=3.0),
    surrogates.Dspike(temperature=0.5, window=0.6),
    surrogates.Dspike(temperature=8.0, window=2.0),
]


def sample_points(s: surrogates.Surrogate) -> torch.Tensor:
    """Points in [-1.5, 1.5], away from the kinks of piecewise surrogates."""
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    kinks = {
        surrogates.Rectangle: lambda: [s.width / 2],
        surrogates.Triangle: lambda: [0.0, 1 / s.alpha],
        surrogates.FastSigmoid: lambda: [0.0],
        surrogates.Dspike: lambda: [s.window / 2],
    }.get(type(s), list)()
    keep = torch.ones_like(x, dtype=torch.bool)
    for k in kinks:
        keep &= (x.abs() - k).abs() > 1e-3
    return x[keep]


@pytest.mark.parametrize("s", FAMILY, ids=lambda s: f"{type(s).__name__}({s.extra_repr()})")
def test_derivative_is_derivative_of_documented_primitive(s):
    x = sample_points(s).requires_grad_(True)
    (grad,) = torch.autograd.grad(s.primitive(x).sum(), x)
    torch.testing.assert_close(s.derivative(x.detach()), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s", FAMILY, ids=lambda s: type(s).__name__)
def test_forward_is_heaviside_and_backward_is_derivative(s):
    x = torch.tensor([-1.0, -0.1, 0.0, 1e-7, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    y = s(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # spike when u >= threshold
    upstream = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(grad, upstream * s.derivative(x.detach()))


def test_documented_conventions_at_zero():
    """Peak heights that follow from the documented formulas."""
    zero = torch.zeros(1, dtype=torch.float64)
    assert surrogates.Sigmoid(4.0).derivative(zero).item() == pytest.approx(1.0)  # alpha/4
    assert surrogates.ATan(2.0).derivative(zero).item() == pytest.approx(1.0)  # alpha/2
    assert surrogates.Triangle(3.0).derivative(zero).item() == pytest.approx(3.0)  # alpha
    assert surrogates.FastSigmoid(10.0).derivative(zero).item() == pytest.approx(1.0)
    assert surrogates.Rectangle(0.5).derivative(zero).item() == pytest.approx(2.0)  # 1/width
    b = 3.0
    assert surrogates.Dspike(b).derivative(zero).item() == pytest.approx(b / (2 * math.tanh(b / 2)))


def test_rectangle_height_and_window_by_hand():
    """Published LTL surrogate: height 1, half-width 0.2, i.e. width (the whole window) 0.4."""
    ltl = surrogates.create("rectangle", width=0.4, height=1.0)
    x = torch.tensor([-0.3, -0.2, -0.19, 0.0, 0.1, 0.19, 0.2, 0.5], dtype=torch.float64,
                     requires_grad=True)
    y = ltl(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # Heaviside(x)
    (grad,) = torch.autograd.grad(y, x, torch.full_like(x, 3.0))
    assert grad.tolist() == [0.0, 0.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0]  # 3 · 1 inside |x| < 0.2
    default = surrogates.Rectangle(width=0.4)  # height 1/width = 2.5 unless given
    assert default.height == pytest.approx(2.5) and ltl.params() == {"width": 0.4, "height": 1.0}
    (grad,) = torch.autograd.grad(default(x).sum(), x)
    assert grad.tolist() == pytest.approx([0.0, 0.0, 2.5, 2.5, 2.5, 2.5, 0.0, 0.0])
    # the primitive: height · clamp(x + 0.2, 0, 0.4); its integral over the window is 0.4 · 1
    assert ltl.primitive(torch.tensor([-1.0, 0.05, 1.0], dtype=torch.float64)).tolist() == \
        pytest.approx([0.0, 0.25, 0.4])
    with pytest.raises(UserError, match="height"):
        surrogates.Rectangle(width=0.4, height=0.0)


def test_triangle_by_hand_and_its_unit_integral():
    """SpikingJelly's piecewise-quadratic convention: g(x) = max(0, alpha - alpha²|x|), so
    alpha = 2 gives 2 at 0, 1 at ±0.25, 0 from ±0.5 on, and the triangle's area is 1."""
    tri = surrogates.Triangle(alpha=2.0)
    x = torch.tensor([-0.6, -0.5, -0.25, 0.0, 0.1, 0.25, 0.5, 0.7], dtype=torch.float64)
    assert tri.derivative(x).tolist() == pytest.approx([0.0, 0.0, 1.0, 2.0, 1.6, 1.0, 0.0, 0.0])
    grid = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)
    assert torch.trapezoid(tri.derivative(grid), grid).item() == pytest.approx(1.0, abs=1e-6)
    # the primitive rises from 0 to 1 over the support: 1/2 + 0.2 - 4·0.01/2 = 0.68 at x = 0.1
    assert tri.primitive(torch.tensor([-0.5, 0.1, 0.5], dtype=torch.float64)).tolist() == \
        pytest.approx([0.0, 0.68, 1.0])


def dspike_reference(u_minus_theta: np.ndarray, b: float, w: float) -> np.ndarray:
    """docs/methods.md §2 written independently: z = x/w + 1/2, g = b/(2 tanh(b/2)) sech²(b(z-1/2)) / w."""
    z = u_minus_theta / w + 0.5
    g = b / (2 * np.tanh(b / 2)) / np.cosh(b * (z - 0.5)) ** 2 / w
    return np.where((z >= 0) & (z <= 1), g, 0.0)


@pytest.mark.parametrize("b,w", [(3.0, 1.0), (1.0, 0.5), (10.0, 2.0)])
def test_dspike_matches_the_paper_formula(b, w):
    x = np.linspace(-2, 2, 1001)
    ours = surrogates.Dspike(b, w).derivative(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, dspike_reference(x, b, w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("b,w", [(0.1, 1.0), (3.0, 1.0), (10.0, 0.5), (30.0, 2.0)])
def test_dspike_integrates_to_one_over_its_window(b, w):
    x = torch.linspace(-w / 2, w / 2, 200_001, dtype=torch.float64)
    g = surrogates.Dspike(b, w).derivative(x)
    assert torch.trapezoid(g, x).item() == pytest.approx(1.0, abs=1e-6)
    outside = torch.tensor([-w / 2 - 1e-6, w / 2 + 1e-6, 5 * w], dtype=torch.float64)
    assert surrogates.Dspike(b, w).derivative(outside).abs().max().item() == 0.0


def test_dspike_tends_to_the_rectangle_as_temperature_goes_to_zero():
    x = torch.linspace(-0.49, 0.49, 99, dtype=torch.float64)
    rect = surrogates.Rectangle(width=1.0).derivative(x)
    errors = [
        (surrogates.Dspike(b, 1.0).derivative(x) - rect).abs().max().item()
        for b in (1.0, 0.1, 1e-3, 1e-6)
    ]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-9
    assert errors[0] > 1e-2


def test_dspike_tends_to_a_step_as_temperature_grows():
    x = torch.tensor([0.25], dtype=torch.float64)
    assert surrogates.Dspike(50.0).derivative(x).item() < 1e-8
    assert surrogates.Dspike(50.0).derivative(torch.zeros(1)).item() == pytest.approx(25.0, rel=1e-6)


def test_dspike_temperature_changes_in_place_without_rebuilding():
    s = surrogates.Dspike(3.0)
    x = torch.tensor([0.2], requires_grad=True)
    g3 = torch.autograd.grad(s(x).sum(), x)[0].item()
    s.temperature = 6.0
    g6 = torch.autograd.grad(s(x).sum(), x)[0].item()
    assert g3 == pytest.approx(surrogates.Dspike(3.0).derivative(x.detach()).item())
    assert g6 == pytest.approx(surrogates.Dspike(6.0).derivative(x.detach()).item())
    with pytest.raises(UserError, match="temperature"):
        s.temperature = 0.0


def test_registry_and_sharpness():
    assert set(surrogates.available()) == {
        "rectangle", "triangle", "sigmoid", "atan", "fast_sigmoid", "dspike"}
    s = surrogates.create("dspike", temperature=2.0)
    assert s.sharpness == 2.0 and s.with_sharpness(5.0).temperature == 5.0
    assert surrogates.create("rectangle").with_sharpness(4.0).width == 0.25
    with pytest.raises(UserError, match="did you mean 'sigmoid'"):
        surrogates.create("sigmoidd")
    with pytest.raises(UserError, match="temprature"):
        surrogates.create("dspike", temprature=2.0)
