"""Training methods that plug into :class:`spikegrad.Trainer` as components, and their registry.

Each method is built from its config section by ``from_config`` (see
:mod:`spikegrad.methods.registry`): ``dspike`` (:class:`AdaptiveTemperature`), ``shortcut``
(:class:`ShortcutBackprop`), ``ltl`` (:class:`LocalTandemLearning`) and ``diagnostics``
(:class:`~spikegrad.diagnostics.GradientDiagnostics`). :func:`search_objective` is the loss
the temperature search differentiates: the one a loss-owning component offers through
:meth:`~spikegrad.component.Component.search_objective`, else the run's default loss.
"""

from spikegrad.diagnostics import GradientDiagnostics
from spikegrad.methods.dspike import AdaptiveTemperature, search_objective
from spikegrad.methods.ltl import LocalTandemLearning
from spikegrad.methods.registry import (
    Method,
    components_from_config,
    enabled_methods,
    method,
    methods,
    register_method,
)
from spikegrad.methods.shortcut import ShortcutBackprop

__all__ = [
    "AdaptiveTemperature", "GradientDiagnostics", "LocalTandemLearning", "Method", "ShortcutBackprop",
    "components_from_config", "enabled_methods", "method", "methods", "register_method", "search_objective",
]
