"""spikegrad: training spiking neural networks by gradient descent.

Time-major tensors ``[T, B, ...]`` throughout. The functional core is
:mod:`spikegrad.dynamics` (neuron equations) and :mod:`spikegrad.surrogates`; thin layers
live in :mod:`spikegrad.neurons` and :mod:`spikegrad.layers`; networks in
:mod:`spikegrad.models`; datasets in :mod:`spikegrad.data`; the training methods in
:mod:`spikegrad.methods`; the one training loop in :mod:`spikegrad.trainer`; and
:mod:`spikegrad.build` turns a config into all of these (:func:`train` runs it).

The names below are imported on first use, so ``import spikegrad`` (and ``spikegrad
--help``) does not load torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: where each public name lives (a module itself when the value is None)
_EXPORTS: dict[str, str | None] = {
    "data": None, "layers": None, "models": None, "neurons": None, "surrogates": None,
    "AdaptiveTemperature": "spikegrad.methods", "GradientDiagnostics": "spikegrad.methods",
    "LocalTandemLearning": "spikegrad.methods", "ShortcutBackprop": "spikegrad.methods",
    "Component": "spikegrad.component", "StepOutput": "spikegrad.component",
    "Config": "spikegrad.config", "load_config": "spikegrad.config",
    "RunParts": "spikegrad.build", "build_components": "spikegrad.build",
    "build_model": "spikegrad.build", "build_parts": "spikegrad.build",
    "datasets_from_config": "spikegrad.build", "from_checkpoint": "spikegrad.build",
    "UserError": "spikegrad.errors", "evaluate_model": "spikegrad.evaluation",
    "train": "spikegrad.run", "seed_everything": "spikegrad.seeding", "Trainer": "spikegrad.trainer",
}

__all__ = [
    "AdaptiveTemperature", "Component", "Config", "GradientDiagnostics", "LocalTandemLearning",
    "RunParts", "ShortcutBackprop", "StepOutput", "Trainer", "UserError", "__version__",
    "build_components", "build_model", "build_parts", "data", "datasets_from_config",
    "evaluate_model", "from_checkpoint", "layers", "load_config", "models", "neurons",
    "seed_everything", "surrogates", "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spikegrad' has no attribute {name!r}")
    home = _EXPORTS[name]
    value = importlib.import_module(f"spikegrad.{name}") if home is None \
        else getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from spikegrad import data, layers, models, neurons, surrogates
    from spikegrad.build import (
        RunParts,
        build_components,
        build_model,
        build_parts,
        datasets_from_config,
        from_checkpoint,
    )
    from spikegrad.component import Component, StepOutput
    from spikegrad.config import Config, load_config
    from spikegrad.errors import UserError
    from spikegrad.evaluation import evaluate_model
    from spikegrad.methods import (
        AdaptiveTemperature,
        GradientDiagnostics,
        LocalTandemLearning,
        ShortcutBackprop,
    )
    from spikegrad.run import train
    from spikegrad.seeding import seed_everything
    from spikegrad.trainer import Trainer
