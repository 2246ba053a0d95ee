"""Training methods that plug into :class:`spikegrad.Trainer` as components, and their registry.

Each method is built from its config section by ``from_config`` (see
:mod:`spikegrad.methods.registry`): ``dspike`` (:class:`AdaptiveTemperature`), ``shortcut``
(:class:`ShortcutBackprop`), ``ltl`` (:class:`LocalTandemLearning`) and ``diagnostics``
(:class:`~spikegrad.diagnostics.GradientDiagnostics`).
"""

from spikegrad.diagnostics import GradientDiagnostics
from spikegrad.methods.dspike import AdaptiveTemperature
from spikegrad.methods.ltl import LocalTandemLearning
from spikegrad.methods.registry import (
    Method,
    components_from_config,
    enabled_methods,
    method,
    methods,
    register_method,
)
from spikegrad.methods.shortcut import ShortcutBackprop, default_attach_points

__all__ = [
    "AdaptiveTemperature", "GradientDiagnostics", "LocalTandemLearning", "Method", "ShortcutBackprop",
    "components_from_config", "default_attach_points", "enabled_methods", "method", "methods",
    "register_method",
]
