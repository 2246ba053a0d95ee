"""Registered spiking networks: ``create(name, **kwargs)`` and ``list()``.

>>> from spikegrad import models
>>> models.list("resnet*")
['resnet18', 'resnet19', 'resnet20', 'resnet34']
>>> net = models.create("resnet18", num_classes=100, T=4, surrogate="dspike")
"""

from spikegrad.models import cnn, plain, resnet, vgg  # noqa: F401  (register the models)
from spikegrad.models._registry import create, entry, list_models, register_model
from spikegrad.models.common import ModelSpec, SpikingNetwork, activation_factory

list = list_models

__all__ = [
    "ModelSpec",
    "SpikingNetwork",
    "activation_factory",
    "create",
    "entry",
    "list",
    "list_models",
    "register_model",
]
