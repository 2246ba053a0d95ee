"""Surrogate spike functions: Heaviside forward, smooth derivative backward.

Every surrogate is a callable applied to ``x = u - threshold`` (membrane potential minus
firing threshold, in the units of the membrane potential). Its forward pass is the
Heaviside step ``H(x) = 1 if x >= 0 else 0``; its backward pass replaces ``dH/dx`` (a
Dirac delta) by the derivative ``g(x)`` of a smooth *primitive* ``F(x)``, written once in
:meth:`Surrogate.derivative`. :meth:`Surrogate.primitive` gives ``F`` itself, so the tests
can check ``g == dF/dx`` with autograd.

Each surrogate has one *sharpness* parameter (how peaked ``g`` is), named by
``sharpness_name``; :meth:`Surrogate.with_sharpness` builds a copy with another value, which
is how the gradient-alignment analysis sweeps the family.

Surrogates are ``nn.Module`` subclasses so that they print inside the model and can be
found with ``model.modules()``; they hold no tensors, only Python floats, which can be
changed during training (``Dspike.temperature``) without rebuilding the model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from spikegrad.errors import UserError, unknown_name_error

__all__ = [
    "DEFAULT",
    "ATan",
    "Dspike",
    "FastSigmoid",
    "Rectangle",
    "Sigmoid",
    "SpikeFunction",
    "Surrogate",
    "Triangle",
    "available",
    "create",
    "default",
    "heaviside",
    "register",
]


def heaviside(x: Tensor) -> Tensor:
    """Spike where ``x >= 0`` (the firing convention ``u >= threshold``), same dtype as ``x``."""
    return (x >= 0).to(x.dtype)


class SpikeFunction(torch.autograd.Function):
    """``H(x)`` forward, ``grad · surrogate.derivative(x)`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: Surrogate) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return heaviside(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"surrogate parameter {name!r} must be a positive finite number, got "
                        f"{value!r} ({type(value).__name__})")
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise UserError(f"surrogate parameter {name!r} must be a positive finite number, got {value}")
    return value


class Surrogate(nn.Module):
    """Base class: subclasses define :meth:`primitive` and :meth:`derivative`."""

    sharpness_name: str = ""

    def forward(self, x: Tensor) -> Tensor:
        return SpikeFunction.apply(x, self)

    def primitive(self, x: Tensor) -> Tensor:
        """The smooth function ``F`` whose derivative is used in the backward pass."""
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        """``g(x) = dF/dx``, the surrogate gradient of the spike with respect to ``x``."""
        raise NotImplementedError

    @property
    def sharpness(self) -> float:
        return float(getattr(self, self.sharpness_name))

    def with_sharpness(self, value: float) -> Surrogate:
        """A copy of this surrogate with its sharpness parameter set to ``value``."""
        params = self.params()
        params[self.sharpness_name] = value
        return type(self)(**params)

    def params(self) -> dict[str, float]:
        """The constructor arguments that rebuild this surrogate."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.params().items())


_REGISTRY: dict[str, type[Surrogate]] = {}


def register(name: str) -> Callable[[type[Surrogate]], type[Surrogate]]:
    """Class decorator adding a surrogate to the registry used by configs and analyses."""

    def decorate(cls: type[Surrogate]) -> type[Surrogate]:
        _REGISTRY[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(name: str, **params: float) -> Surrogate:
    """Build a registered surrogate by name, e.g. ``create("dspike", temperature=3.0)``."""
    key = name.lower()
    if key not in _REGISTRY:
        raise unknown_name_error("surrogate", name, available())
    cls = _REGISTRY[key]
    try:
        return cls(**params)
    except TypeError as exc:
        raise UserError(f"surrogate {name!r}: {exc}; see help(spikegrad.surrogates.{cls.__name__})") from exc


#: the surrogate of a neuron or network given none, and the default of ``model.surrogate``
DEFAULT: dict = {"name": "dspike", "temperature": 3.0}


def default() -> Surrogate:
    """A fresh instance of :data:`DEFAULT`: Dspike with temperature 3."""
    params = dict(DEFAULT)
    return create(params.pop("name"), **params)


@register("rectangle")
class Rectangle(Surrogate):
    """Rectangular (straight-through) surrogate.

    ``g(x) = height`` for ``|x| < width/2``, else 0, with ``x = u - θ``: ``width`` is the whole
    window, its half-width is ``width/2``. ``height`` defaults to ``1/width`` so that ``g``
    integrates to 1; give it to decouple the two. Primitive:
    ``F(x) = height·clamp(x + width/2, 0, width)``. Sharpness: ``1/width``
    (:meth:`with_sharpness` returns the unit-integral rectangle of that width). STBP (Wu et
    al. 2018) uses ``width = 1``; the published local tandem learning code uses height 1 and
    half-width 0.2, i.e. ``Rectangle(width=0.4, height=1.0)`` (the default height would be 2.5).
    """

    sharpness_name = "inverse_width"

    def __init__(self, width: float = 1.0, height: float | None = None) -> None:
        super().__init__()
        self.width = _positive("width", width)
        self.height = 1.0 / self.width if height is None else _positive("height", height)

    @property
    def inverse_width(self) -> float:
        return 1.0 / self.width

    def with_sharpness(self, value: float) -> Surrogate:
        return Rectangle(width=1.0 / _positive("inverse_width", value))

    def primitive(self, x: Tensor) -> Tensor:
        return self.height * (x + self.width / 2).clamp(0.0, self.width)

    def derivative(self, x: Tensor) -> Tensor:
        return (x.abs() < self.width / 2).to(x.dtype) * self.height

    def params(self) -> dict[str, float]:
        return {"width": self.width, "height": self.height}


@register("triangle")
class Triangle(Surrogate):
    """Triangular surrogate (SpikingJelly's ``PiecewiseQuadratic`` convention).

    ``g(x) = max(0, alpha - alpha²·|x|)``: peak ``alpha`` at the threshold, support
    ``|x| < 1/alpha``, integral 1. Primitive: the piecewise quadratic
    ``F(x) = 1/2 + alpha·x - sign(x)·alpha²·x²/2`` clamped to ``[0, 1]``.
    Sharpness: ``alpha``.
    """

    sharpness_name = "alpha"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def primitive(self, x: Tensor) -> Tensor:
        a = self.alpha
        inside = 0.5 + a * x - torch.sign(x) * a * a * x * x / 2
        return torch.where(x.abs() < 1 / a, inside, (x > 0).to(x.dtype))

    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha - self.alpha**2 * x.abs()).clamp_min(0.0)

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha}


@register("sigmoid")
class Sigmoid(Surrogate):
    """Sigmoid surrogate (SpikingJelly's ``Sigmoid`` convention).

    ``F(x) = σ(alpha·x)``, ``g(x) = alpha·σ(alpha·x)·(1 - σ(alpha·x))``; peak ``alpha/4``,
    integral 1. Sharpness: ``alpha`` (SpikingJelly's default 4).
    """

    sharpness_name = "alpha"

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def primitive(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.alpha * x)

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha}


@register("atan")
class ATan(Surrogate):
    """Arc-tangent surrogate (SpikingJelly's ``ATan`` convention).

    ``F(x) = arctan(π/2·alpha·x)/π + 1/2``, ``g(x) = (alpha/2) / (1 + (π/2·alpha·x)²)``;
    peak ``alpha/2``, integral 1. Sharpness: ``alpha`` (SpikingJelly's default 2).
    """

    sharpness_name = "alpha"

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def primitive(self, x: Tensor) -> Tensor:
        return torch.atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5

    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha}


@register("fast_sigmoid")
class FastSigmoid(Surrogate):
    """Fast sigmoid, SuperSpike (Zenke & Ganguli 2018), in snnTorch's ``fast_sigmoid`` convention.

    ``F(x) = x / (1 + slope·|x|)``, ``g(x) = 1 / (1 + slope·|x|)²``; peak 1, integral
    ``2/slope`` (not normalised, as in snnTorch). Sharpness: ``slope`` (snnTorch's default 25).
    """

    sharpness_name = "slope"

    def __init__(self, slope: float = 25.0) -> None:
        super().__init__()
        self.slope = _positive("slope", slope)

    def primitive(self, x: Tensor) -> Tensor:
        return x / (1 + self.slope * x.abs())

    def derivative(self, x: Tensor) -> Tensor:
        return 1.0 / (1 + self.slope * x.abs()) ** 2

    def params(self) -> dict[str, float]:
        return {"slope": self.slope}


@register("dspike")
class Dspike(Surrogate):
    """Differentiable spike, Dspike (Li et al., NeurIPS 2021).

    The membrane potential is mapped onto the window ``[0, 1]`` with the threshold at its
    centre, ``z = x/window + 1/2`` (``x = u - threshold``), and

    ``F(z) = (tanh(b·(z - 1/2)) + tanh(b/2)) / (2·tanh(b/2))`` for ``z`` in ``[0, 1]``,
    0 below, 1 above; ``b`` is the ``temperature``. The gradient with respect to ``x`` is

    ``g(x) = b / (2·tanh(b/2)) · sech²(b·x/window) / window`` for ``|x| <= window/2``,
    else 0,

    which integrates to 1 over the window. ``b -> 0`` gives the rectangle of width ``window``
    (straight-through estimator), ``b -> inf`` the step itself. The paper's authors start at
    ``b = 3``. ``temperature`` may be reassigned at any time, e.g. by the adaptive search.
    Sharpness: ``temperature``.
    """

    sharpness_name = "temperature"

    def __init__(self, temperature: float = 3.0, window: float = 1.0) -> None:
        super().__init__()
        self.window = _positive("window", window)
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = _positive("temperature", value)

    def _scale(self) -> float:
        """``b / (2·tanh(b/2))``; tends to 1 as ``b -> 0`` (series used below 1e-4)."""
        b = self._temperature
        return 1.0 + b * b / 12.0 if b < 1e-4 else b / (2.0 * math.tanh(b / 2.0))

    def primitive(self, x: Tensor) -> Tensor:
        b, w = self._temperature, self.window
        z = (x / w + 0.5).clamp(0.0, 1.0)
        return (torch.tanh(b * (z - 0.5)) + math.tanh(b / 2)) / (2 * math.tanh(b / 2))

    def derivative(self, x: Tensor) -> Tensor:
        b, w = self._temperature, self.window
        inside = (x.abs() <= w / 2).to(x.dtype)
        sech2 = 1 - torch.tanh(b * x / w) ** 2
        return inside * (self._scale() / w) * sech2

    def params(self) -> dict[str, float]:
        return {"temperature": self._temperature, "window": self.window}
