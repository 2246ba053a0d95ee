from importlib import resources
from pathlib import Path

import pytest

from spikegrad.config import load_config
from spikegrad.data import DatasetInfo, build_augmentation

RECIPES = sorted(Path(str(resources.files("spikegrad") / "configs")).glob("*.yaml"))

# What the shortcut back-propagation paper reports for each recipe that mirrors it (None: the
# pair is not in the paper).
SHORTCUT_PAPER = {
    "cifar100_resnet18_t2": 71.42, "cifar100_resnet18_t2_shortcut": 73.68,
    "cifar100_resnet18_t2_evolutionary": 74.02, "cifar100_resnet18_t4": 72.22,
    "cifar100_resnet18_t4_shortcut": 74.78, "cifar100_resnet18_t4_evolutionary": 74.83,
    "cifar100_resnet34_t2": 69.82, "cifar100_resnet34_t2_shortcut": 74.06,
    "cifar100_resnet34_t2_evolutionary": None, "cifar100_resnet34_t4": 69.98,
    "cifar100_resnet34_t4_shortcut": 75.67, "cifar100_resnet34_t4_evolutionary": None,
    "cifar100_resnet19_t2_evolutionary": 77.79, "cifar10_resnet19_t2_evolutionary": 95.36,
    "cifar10_resnet18_t4_evolutionary": 93.92, "imagenet_resnet34_t4_evolutionary": 68.14,
    "cifar10_dvs_resnet18_t10_evolutionary": 83.30,
}


@pytest.mark.parametrize("stem", sorted(SHORTCUT_PAPER))
def test_shortcut_paper_recipes(stem):
    path = next(p for p in RECIPES if p.stem == stem)
    config = load_config(path)
    assert config.paper.accuracy == SHORTCUT_PAPER[stem]
    dataset, model = stem.rsplit("_t", 1)[0].rsplit("_", 1)
    assert (config.data.name, config.model.name) == (dataset, model)
    assert f"_t{config.model.T}" in stem
    assert config.model.neuron.leak == 0.5 and config.model.neuron.threshold == 1.0
    method = stem.rsplit("_", 1)[-1]
    if method == "evolutionary":
        assert config.shortcut.enabled and config.shortcut.schedule == "linear"
        assert config.shortcut.lambda0 == 0.25
    elif method == "shortcut":
        assert config.shortcut.enabled and config.shortcut.schedule == "constant"
        assert config.shortcut.lambda0 == 1.0
    else:
        assert not config.shortcut.enabled
    assert config.optim.name == "adamw" and config.optim.weight_decay == 0.02
    assert config.optim.lr == 0.01 and config.model.neuron.reset == "hard"
    assert config.schedule.name == "cosine" and config.schedule.min_lr == 0.0  # cosine to 0
    if dataset in ("cifar10", "cifar100"):
        assert (config.data.batch_size, config.train.epochs) == (128, 300)
    base = load_config(next(p for p in RECIPES if p.stem == f"base_{dataset}"))
    assert config.data.root == base.data.root and config.data.options == base.data.options
    info = DatasetInfo(100, (3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # CIFAR-like
    assert build_augmentation(config.data.augment, info) is not None
