"""spikegrad: training spiking neural networks by gradient descent.

Time-major tensors ``[T, B, ...]`` throughout. The functional core is
:mod:`spikegrad.dynamics` (neuron equations) and :mod:`spikegrad.surrogates`; thin layers
live in :mod:`spikegrad.neurons` and :mod:`spikegrad.layers`; networks in
:mod:`spikegrad.models`; datasets in :mod:`spikegrad.data`; the training methods in
:mod:`spikegrad.methods`; the one training loop in :mod:`spikegrad.trainer`; and
:mod:`spikegrad.build` turns a config into all of these (:func:`train` runs it).
"""

__version__ = "0.1.0"

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

__all__ = [
    "AdaptiveTemperature", "Component", "Config", "GradientDiagnostics", "LocalTandemLearning",
    "RunParts", "ShortcutBackprop", "StepOutput", "Trainer", "UserError", "__version__",
    "build_components", "build_model", "build_parts", "data", "datasets_from_config",
    "evaluate_model", "from_checkpoint", "layers", "load_config", "models", "neurons",
    "seed_everything", "surrogates", "train",
]
