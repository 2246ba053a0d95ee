"""One source for each name and default: registries behind the config's choices, one model
spec, one default surrogate, one eval-mode context, one recipe lookup."""

import dataclasses

import pytest
import torch
from torch import nn

from spikegrad import encoders, fused, losses, models, neurons, surrogates
from spikegrad.build import model_arguments
from spikegrad.config import (
    LTL_MODES,
    SHORTCUT_LOSSES,
    Config,
    DspikeConfig,
    LTLConfig,
    ModelConfig,
    NeuronConfig,
    ScheduleConfig,
    ShortcutConfig,
    TrainConfig,
    choices_of,
)
from spikegrad.data import build_datasets
from spikegrad.errors import UserError
from spikegrad.fdg import BN_MODES
from spikegrad.methods.ltl import LocalTandemLearning, pair_units
from spikegrad.methods.shortcut import ShortcutBranches
from spikegrad.models import ModelSpec
from spikegrad.models.common import KINDS
from spikegrad.modes import eval_mode
from spikegrad.recipes import CONFIG_DIR, recipe_path
from spikegrad.schedules import BALANCE_SCHEDULES, LR_SCHEDULES
from spikegrad.temperature_search import RULES


def choices(section, key):
    return choices_of({f.name: f.metadata for f in dataclasses.fields(section)}[key])


def test_config_choices_are_the_registries_names():
    assert set(choices(NeuronConfig, "type")) == set(neurons.available())
    assert set(choices(NeuronConfig, "backend")) == set(fused.BACKENDS)
    assert set(choices(ModelConfig, "kind")) == set(KINDS)
    assert set(choices(ModelConfig, "encoder")) == set(encoders.available())
    assert set(choices(ScheduleConfig, "name")) == set(LR_SCHEDULES)
    assert set(choices(ShortcutConfig, "schedule")) == set(BALANCE_SCHEDULES)
    assert set(choices(ShortcutConfig, "loss")) == set(SHORTCUT_LOSSES)
    assert set(choices(TrainConfig, "loss")) == set(losses.available())
    assert set(choices(LTLConfig, "mode")) == set(LTL_MODES)
    assert set(choices(DspikeConfig, "rule")) == set(RULES) == {"paper", "significant"}
    assert set(choices(DspikeConfig, "bn_mode")) == set(BN_MODES) == {"eval", "train"}
    with pytest.raises(UserError, match=r"'model\.surrogate': unknown surrogate 'dspik' \(did you mean "
                                        r"'dspike'\?\)"):
        Config().with_overrides({"model.surrogate": {"name": "dspik"}})
    with pytest.raises(UserError, match=r"'model\.surrogate': needs a 'name' key"):
        Config().with_overrides({"model.surrogate": {"temperature": 2.0}})
    with pytest.raises(UserError, match="LTL mode must be one of"):
        LocalTandemLearning(models.create("digits_cnn", kind="ann", width=0.25), "none")


def test_config_choices_read_a_registry_when_a_config_is_checked(monkeypatch):
    from spikegrad import schedules

    with pytest.raises(UserError, match=r"'schedule\.name' must be one of"):
        Config().with_overrides({"schedule.name": "flat"})
    monkeypatch.setitem(schedules.LR_SCHEDULES, "flat", lambda p, epoch, s, lr: 1.0)
    assert Config().with_overrides({"schedule.name": "flat"}).schedule.name == "flat"


def test_one_default_surrogate_for_the_config_a_neuron_and_a_network():
    assert Config().model.surrogate == surrogates.DEFAULT
    own = surrogates.default()
    assert own.registry_name == surrogates.DEFAULT["name"]
    assert own.params()["temperature"] == surrogates.DEFAULT["temperature"]
    assert neurons.LIF().surrogate.params() == own.params()
    net = models.create("digits_cnn", width=0.25)
    assert {type(m.surrogate) for m in net.modules() if isinstance(m, neurons.SpikingNeuron)} == {type(own)}
    assert surrogates.default() is not surrogates.default()  # a fresh one each time


def test_one_model_spec_for_every_registered_network():
    for name in models.list():
        entry = models.entry(name)
        assert entry.arguments()[:len(ModelSpec.names())] == ModelSpec.names(), name
        assert not set(entry.own_arguments()) & set(ModelSpec.names()), name
    net = models.create("vgg11", num_classes=7, in_channels=2, input_size=16, T=3, width=0.125,
                        batch_norm=False, hidden_fc=(8,))
    assert net.T == 3 and net.classifier.module[-1].out_features == 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert models.entry("digits_cnn").spec.in_channels == 1  # the digits' own defaults
    with pytest.raises(UserError, match=r"model 'resnet18' has no argument 'depht'"):
        models.create("resnet18", depht=3)


def test_checkpoint_model_arguments_are_the_spec_and_the_options():
    config = Config().with_overrides({"model.options": {"batch_norm": False}, "model.T": 3})
    _, _, info = build_datasets("digits")
    args = model_arguments(config, info)
    assert list(args["kwargs"])[:len(ModelSpec.names())] == ModelSpec.names()
    assert args["kwargs"]["batch_norm"] is False and args["kwargs"]["T"] == 3
    assert args["kwargs"]["input_size"] == 8 and args["kwargs"]["in_channels"] == 1
    models.create(args["name"], **args["kwargs"])


def frozen_bn_net() -> nn.Module:
    net = models.create("digits_cnn", width=0.25, T=2)
    net.train()
    net.features[0][0].module[1].eval()  # a batch norm frozen on purpose
    return net


def test_eval_mode_gives_every_module_its_own_flag_back():
    net, other = frozen_bn_net(), nn.Linear(2, 2)
    with eval_mode(net, other) as both:
        assert both == (net, other)
        assert not any(m.training for m in [*net.modules(), other])
    assert net.training and other.training and not net.features[0][0].module[1].training


def test_probing_shortcut_sizes_and_pairing_ltl_units_keep_a_frozen_batch_norm_frozen():
    net = frozen_bn_net()
    ShortcutBranches.for_model(net, ["features.0"], torch.rand(2, 1, 8, 8))
    assert net.training and not net.features[0][0].module[1].training
    pair_units(net, models.create("digits_cnn", width=0.25, kind="ann"), torch.rand(2, 1, 8, 8))
    assert net.training and not net.features[0][0].module[1].training


def test_one_recipe_lookup(tmp_path, monkeypatch):
    assert recipe_path("digits") == recipe_path("digits.yaml") == CONFIG_DIR / "digits.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: x\n")
    assert recipe_path(mine) == mine
    monkeypatch.chdir(tmp_path)
    assert recipe_path("mine.yaml") == mine.relative_to(tmp_path)  # a file beats a packaged name
    with pytest.raises(UserError, match=r"ltl\.teacher_recipe 'nope' is neither a file nor a packaged "
                                        r"recipe; packaged recipes: .*digits"):
        recipe_path("nope", what="ltl.teacher_recipe")
