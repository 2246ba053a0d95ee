"""Which surrogate formula a fused kernel evaluates, and with which constants.

The kernels compute the surrogate derivative ``g(x)`` themselves for the built-in
surrogates: reading ``x`` once and computing ``g`` in registers costs far less memory
traffic than materialising ``g = surrogate.derivative(h - threshold)`` as a tensor (about
eight elementwise passes for Dspike). Each kernel formula mirrors the ``derivative`` method
operation for operation, and the tests pin each one against it at sampled points. Any
other surrogate (a user's own, or a subclass that overrides ``derivative``) takes the
*given* path: ``derivative`` is called on the recomputed potentials and the kernel reads the
resulting tensor, so every surrogate works with every backend.

The constants are read when the backward pass runs, as the reference reads
``surrogate.derivative`` then: a Dspike temperature changed between calls takes effect.
"""

from __future__ import annotations

import math

from spikegrad import surrogates

__all__ = ["GIVEN", "KINDS", "kernel_formula"]

GIVEN = 0
KINDS = {"rectangle": 1, "triangle": 2, "sigmoid": 3, "atan": 4, "fast_sigmoid": 5, "dspike": 6}


def kernel_formula(surrogate: surrogates.Surrogate) -> tuple[int, tuple[float, float, float, float]]:
    """``(kind, constants)`` for the kernels; ``(GIVEN, zeros)`` when no kernel formula applies.

    The constants are computed as the matching ``derivative`` computes them in Python
    (double precision) before torch casts them to the tensor's dtype.
    """
    s, kind = surrogate, type(surrogate)  # exact type: a subclass may change the formula
    if kind is surrogates.Rectangle:
        return KINDS["rectangle"], (s.width / 2, s.height, 0.0, 0.0)
    if kind is surrogates.Triangle:
        return KINDS["triangle"], (s.alpha, s.alpha**2, 0.0, 0.0)
    if kind is surrogates.Sigmoid:
        return KINDS["sigmoid"], (s.alpha, 0.0, 0.0, 0.0)
    if kind is surrogates.ATan:
        return KINDS["atan"], (math.pi / 2 * s.alpha, s.alpha / 2, 0.0, 0.0)
    if kind is surrogates.FastSigmoid:
        return KINDS["fast_sigmoid"], (s.slope, 0.0, 0.0, 0.0)
    if kind is surrogates.Dspike:
        w = s.window
        return KINDS["dspike"], (w / 2, s.temperature, w, s._scale() / w)
    return GIVEN, (0.0, 0.0, 0.0, 0.0)
