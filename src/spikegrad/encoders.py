"""Input encoders: a static sample ``[B, ...]`` (or a sequence ``[T, B, ...]``) to ``[T, B, ...]``.

The registry (:func:`available`, :func:`create`) is what ``model.encoder`` names:

- ``direct``: the analog input repeated at every step (:class:`~spikegrad.layers.DirectEncoder`);
- ``poisson``: a spike with probability ``clamp(x, 0, 1)`` at every step
  (:class:`~spikegrad.layers.PoissonEncoder`);
- ``latency``: time to first spike, one spike per input, brighter earlier
  (:class:`LatencyEncoder`);
- ``delta``: a spike where the input changes by at least a threshold between steps
  (:class:`DeltaEncoder`).

Latency and Poisson expect intensities in ``[0, 1]`` (pixel values, not mean/std
normalised); both are deterministic except Poisson. ``direct`` passes the gradient to the
input (it repeats it); the others pass none.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.errors import UserError, check_time_major, did_you_mean, unknown_name_error
from spikegrad.layers import DirectEncoder, PoissonEncoder

__all__ = ["DeltaEncoder", "LatencyEncoder", "available", "create"]


def _steps(T: int) -> int:
    if int(T) <= 0:
        raise UserError(f"the number of time steps T must be positive, got {T}")
    return int(T)


class LatencyEncoder(nn.Module):
    """Time-to-first-spike coding: every input spikes once, brighter inputs earlier.

    With ``x̃ = clamp(x, 0, 1)`` and steps ``t = 0 .. T-1``, input ``i`` spikes only at

    - ``scale="linear"``: ``t_i = ⌊(T - 1)·(1 - x̃_i) + 1/2⌋`` (``x̃ = 1`` at step 0,
      ``x̃ = 0`` at step ``T - 1``);
    - ``scale="log"``: ``t_i = ⌊(T - 1)·ln(max(x̃_i, ε)) / ln(ε) + 1/2⌋`` with
      ``ε = min_intensity``: equal intensity ratios are equal delays (``x̃ = 1`` at step 0,
      ``x̃ <= ε`` at step ``T - 1``);

    and inputs with ``x̃ <= threshold`` (default 0: exactly dark pixels) never spike.
    Output ``[T, B, ...]`` of 0/1 in the input's dtype.
    """

    def __init__(self, T: int, *, scale: str = "linear", threshold: float = 0.0,
                 min_intensity: float = 0.01) -> None:
        super().__init__()
        self.T = _steps(T)
        if scale not in ("linear", "log"):
            raise unknown_name_error("latency scale", scale, ["linear", "log"])
        if not 0.0 <= threshold < 1.0:
            raise UserError(f"the latency threshold must lie in [0, 1), got {threshold}")
        if not 0.0 < min_intensity < 1.0:
            raise UserError(f"min_intensity must lie in (0, 1), got {min_intensity}")
        self.scale = scale
        self.threshold = float(threshold)
        self.min_intensity = float(min_intensity)

    def spike_times(self, x: Tensor) -> Tensor:
        """``t_i`` of every input (an integer tensor shaped like ``x``; silent inputs included)."""
        x = x.detach().clamp(0.0, 1.0)
        if self.scale == "linear":
            delay = 1.0 - x
        else:
            delay = x.clamp(min=self.min_intensity).log() / math.log(self.min_intensity)
        return torch.floor((self.T - 1) * delay + 0.5).long().clamp(0, self.T - 1)

    def forward(self, x: Tensor) -> Tensor:
        times = self.spike_times(x)  # (B, ...)
        steps = torch.arange(self.T, device=x.device).view(-1, *([1] * x.dim()))  # (T, 1, ...)
        fires = x.detach().clamp(0.0, 1.0) > self.threshold
        return ((steps == times.unsqueeze(0)) & fires.unsqueeze(0)).to(x.dtype)  # (T, B, ...)

    def extra_repr(self) -> str:
        return f"T={self.T}, scale={self.scale!r}, threshold={self.threshold:g}"


class DeltaEncoder(nn.Module):
    """Delta (change) coding: a spike where the input changed by at least ``threshold``.

    With ``d_t = x_t - x_(t-1)`` and ``x_(-1) = 0`` (so step 0 codes the input itself):

    - ``mode="signed"``: ``s_t = sign(d_t)·[|d_t| >= θ]`` in ``{-1, 0, 1}``, same shape;
    - ``mode="on_off"``: two channels per input, ``on = [d_t >= θ]`` then
      ``off = [d_t <= -θ]``, concatenated along the channel axis (``[T, B, 2C, ...]``; the
      first layer must take ``2C`` channels).

    A time-major sequence ``[T', B, ...]`` (frames, a signal) is coded step by step and
    keeps its ``T'`` steps; a static sample ``[B, ...]`` is held for ``T`` steps, so only
    step 0 can spike (``x >= θ``). As in snnTorch's ``spikegen.delta``, the reference is
    the previous step, not the level at the last spike.
    """

    #: :class:`~spikegrad.models.common.SpikingNetwork` passes time-major input through it
    sequence_input = True

    def __init__(self, T: int, *, threshold: float = 0.1, mode: str = "signed") -> None:
        super().__init__()
        self.T = _steps(T)
        if not threshold > 0:
            raise UserError(f"the delta threshold must be positive, got {threshold}")
        if mode not in ("signed", "on_off"):
            raise unknown_name_error("delta mode", mode, ["signed", "on_off"])
        self.threshold = float(threshold)
        self.mode = mode

    def forward(self, x: Tensor, time_major: bool = False) -> Tensor:
        """Code a static batch ``[B, ...]``, or with ``time_major`` a sequence ``[T', B, ...]``."""
        if time_major:
            check_time_major(x, "delta encoder input")
            seq = x.detach()
        else:
            seq = x.detach().unsqueeze(0).expand(self.T, *x.shape)  # (T, B, ...)
        previous = torch.cat([torch.zeros_like(seq[:1]), seq[:-1]])
        d = seq - previous  # (T, B, ...)
        on, off = d >= self.threshold, d <= -self.threshold
        if self.mode == "signed":
            return on.to(x.dtype) - off.to(x.dtype)
        if d.dim() < 3:
            raise UserError("delta mode on_off needs a channel axis: input [B, C, ...] or [T, B, C, ...]")
        return torch.cat([on, off], dim=2).to(x.dtype)  # (T, B, 2C, ...)

    def extra_repr(self) -> str:
        return f"T={self.T}, threshold={self.threshold:g}, mode={self.mode!r}"


_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "direct": DirectEncoder,
    "poisson": PoissonEncoder,
    "latency": LatencyEncoder,
    "delta": DeltaEncoder,
}


def available() -> list[str]:
    """Encoder names accepted by :func:`create` (and by ``model.encoder``)."""
    return list(_ENCODERS)


def create(name: str | Mapping[str, Any], T: int, **kwargs) -> nn.Module:
    """The encoder ``name`` for ``T`` steps, with its keyword arguments; ``name`` may also be
    a mapping ``{"name": ..., **options}`` (as ``model.encoder`` in a recipe)."""
    if isinstance(name, Mapping):
        options = dict(name)
        if "name" not in options:
            raise UserError(f"an encoder mapping needs a 'name' (one of {available()}), got {options}")
        name = options.pop("name")
        kwargs = {**options, **kwargs}
    if name not in _ENCODERS:
        raise unknown_name_error("encoder", name, available())
    accepted = [p for p in inspect.signature(_ENCODERS[name]).parameters if p not in ("self", "T")]
    for key in kwargs:
        if key not in accepted:
            raise UserError(f"encoder {name!r} has no option {key!r}{did_you_mean(key, accepted)}; "
                            f"it takes {', '.join(accepted) if accepted else 'no options'}")
    try:
        return _ENCODERS[name](T, **kwargs)
    except TypeError as exc:
        raise UserError(f"encoder {name!r}: {exc}") from exc
