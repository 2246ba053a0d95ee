"""Registered spiking networks: ``create(name, **kwargs)`` and ``list()``.

>>> from spikegrad import models
>>> models.list("resnet*")
['resnet18', 'resnet19', 'resnet20', 'resnet34']
>>> net = models.create("resnet18", num_classes=100, T=4, surrogate="dspike")
"""

from spikegrad.models import cnn, cnn1d, plain, resnet, vgg  # noqa: F401  (register the models)
from spikegrad.models._registry import create, entry, list_models, register_model
from spikegrad.models.common import (
    ConvUnit,
    LinearUnit,
    ModelSpec,
    SpikingNetwork,
    activation_factory,
    global_pool_classifier,
)

list = list_models

__all__ = [
    "ConvUnit",
    "LinearUnit",
    "ModelSpec",
    "SpikingNetwork",
    "activation_factory",
    "create",
    "entry",
    "global_pool_classifier",
    "list",
    "list_models",
    "register_model",
]
