"""spikegrad: training spiking neural networks by gradient descent.

Time-major tensors ``[T, B, ...]`` throughout. The functional core is
:mod:`spikegrad.dynamics` (neuron equations) and :mod:`spikegrad.surrogates`; thin layers
live in :mod:`spikegrad.neurons` and :mod:`spikegrad.layers`; networks in
:mod:`spikegrad.models`; training in :mod:`spikegrad.trainer`.
"""

__version__ = "0.1.0"

from spikegrad import layers, neurons, surrogates
from spikegrad.config import Config, load_config
from spikegrad.errors import UserError
from spikegrad.trainer import Component, Trainer

__all__ = ["Component", "Config", "Trainer", "UserError", "__version__", "layers", "load_config",
           "neurons", "surrogates"]
