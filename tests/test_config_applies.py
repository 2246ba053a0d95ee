"""A setting that cannot apply is an error: each key read by one variant only (an optimizer, a
schedule, a loss, a method's option) is refused, set to other than its default, with another;
every packaged recipe sets only what its variants read."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import models, neurons
from spikegrad.analysis import check_analysis
from spikegrad.config import Config, load_config
from spikegrad.data._registry import dataset_builder
from spikegrad.dynamics import NeuronParams
from spikegrad.errors import UserError
from spikegrad.losses import training_loss
from spikegrad.methods.ltl import LocalTandemLearning, check_readout_loss
from spikegrad.methods.shortcut import ShortcutBackprop
from spikegrad.recipes import recipe_files
from spikegrad.schedules import check_lr_schedule
from spikegrad.trainer import Trainer, build_optimizer

RECIPES = recipe_files()


def teacher() -> nn.Module:
    return models.create("digits_cnn", kind="ann", width=0.25)


def check(config: Config) -> None:
    """Every check of what a variant reads that the config alone decides (no data, no training)."""
    build_optimizer(config, [nn.Parameter(torch.zeros(1))])
    check_lr_schedule(config.schedule, config.train.epochs, config.optim.lr)
    config.model.neuron.kwargs()
    if config.ltl.mode == "none":
        training_loss(config.train)
    else:
        check_readout_loss(config.train)
        LocalTandemLearning.from_config(config.ltl, teacher=teacher())
    if config.shortcut.enabled:
        ShortcutBackprop.from_config(config.shortcut)
    neuron = config.model.neuron
    NeuronParams(reset=neuron.reset, v_reset=neuron.v_reset)
    check_analysis(config.analysis)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_sets_only_what_its_variants_read(path):
    check(load_config(path))


REFUSED = [
    (["optim.name=adam", "optim.momentum=0.5"], r"optim\.momentum=0\.5 does not apply to optim\.name adam"),
    (["optim.name=adamw", "optim.nesterov=true"], r"optim\.nesterov=true does not apply .*SGD only"),
    (["optim.betas=[0.8, 0.99]"], r"optim\.betas=\[0\.8, 0\.99\] does not apply to optim\.name sgd"),
    (["schedule.name=constant", "schedule.min_lr=0.01"],
     r"schedule\.min_lr=0\.01 does not apply .*cosine"),
    (["schedule.step_epochs=5"], r"schedule\.step_epochs=5 does not apply to schedule\.name cosine"),
    (["schedule.name=constant", "schedule.gamma=0.5"], r"schedule\.gamma=0\.5 does not apply .*step only"),
    (["train.tet_lambda=0.1"], r"train\.tet_lambda=0\.1 does not apply to train\.loss ce .*reset"),
    (["train.loss=membrane", "train.tet_phi=0.5"],
     r"train\.tet_phi=0\.5 does not apply to train\.loss membrane"),
    (["ltl.mode=online", "train.loss=tet"], r"train\.loss tet does not apply with ltl\.mode"),
    (["ltl.mode=offline", "train.loss=membrane"], r"train\.loss membrane does not apply with ltl\.mode"),
    (["ltl.mode=offline", "train.tet_lambda=0.2"], r"train\.tet_lambda=0\.2 does not apply to .*ce"),
    (["ltl.mode=online", "train.correct_rate=0.5"], r"do not apply to train\.loss ce"),
    (["shortcut.enabled=true", "shortcut.step_fraction=0.25"], r"shortcut\.step_fraction .*schedule linear"),
    (["shortcut.enabled=true", "shortcut.schedule=constant", "shortcut.gamma=0.5"],
     r"shortcut\.gamma .*schedule constant"),
    (["shortcut.enabled=true", "shortcut.attach=[features.1]", "shortcut.every=2"],
     r"shortcut\.every .*shortcut\.attach"),
    (["ltl.mode=offline", "ltl.T_warm=2"], r"ltl\.T_warm applies to online LTL only"),
    (["ltl.mode=online", "ltl.distill_temperature=2.0"], r"ltl\.distill_temperature applies only with"),
    (["ltl.mode=offline", "ltl.init_batches=8"], r"ltl\.init_batches applies to ltl\.student_init teacher"),
    (["ltl.mode=offline", "ltl.teacher_set=[model.kind=ann]"], r"ltl\.teacher_set .*ltl\.teacher_recipe"),
    (["model.neuron.reset=soft", "model.neuron.v_reset=-0.5"], r"v_reset \(-0\.5\) applies to a hard reset"),
    (["analysis.monitors=false", "analysis.membrane=true"],
     r"analysis\.membrane=true does not apply with analysis\.monitors=false"),
    (["analysis.monitors=false", "analysis.pj_per_ac=0.5"], r"analysis\.pj_per_ac=0\.5 does not apply"),
    (["optim.momentum=0", "optim.nesterov=true"], r"optim\.nesterov=true needs momentum"),
    (["schedule.warmup_epochs=20", "train.epochs=20"],
     r"schedule\.warmup_epochs=20 does not end within train\.epochs=20"),
    (["schedule.name=step", "schedule.step_epochs=25", "train.epochs=20"],
     r"step_epochs=25 epochs, but train\.epochs=20 ends first, so schedule\.gamma never applies"),
    (["schedule.min_lr=1.0", "optim.lr=0.1"], r"schedule\.min_lr=1 is above optim\.lr=0\.1"),
    (["model.neuron.type=if", "model.neuron.leak=0.9"],
     r"model\.neuron\.leak=0\.9 does not apply to model\.neuron\.type if"),
]


@pytest.mark.parametrize("overrides,match", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_a_key_the_chosen_variant_does_not_read_is_refused(overrides, match):
    with pytest.raises(UserError, match=match):
        check(load_config(None, overrides))


ACCEPTED = [
    ["optim.name=adam", "optim.betas=[0.8, 0.99]"],
    ["optim.momentum=0.5", "optim.nesterov=true"],
    ["schedule.min_lr=0.01"],
    ["schedule.name=step", "schedule.step_epochs=5", "schedule.gamma=0.5"],
    ["train.loss=tet", "train.tet_lambda=0.1", "train.tet_phi=0.5"],
    ["ltl.mode=online", "ltl.T_warm=2", "ltl.distill=0.5", "ltl.distill_temperature=2.0"],
    ["ltl.mode=offline", "ltl.student_init=teacher", "ltl.init_batches=8", "train.label_smoothing=0.1"],
    ["ltl.mode=offline", "ltl.teacher_recipe=digits", "ltl.teacher_set=[model.kind=ann]"],
    ["shortcut.enabled=true", "shortcut.schedule=step", "shortcut.step_fraction=0.25", "shortcut.gamma=0.5"],
    ["shortcut.enabled=true", "shortcut.every=2"],
    ["model.neuron.v_reset=-0.5"],
    ["dspike.adaptive=true", "dspike.rule=paper"],
    ["analysis.membrane=true", "analysis.pj_per_ac=0.5"],
    ["analysis.monitors=false", "analysis.tensorboard=true"],
    ["schedule.warmup_epochs=19.5", "train.epochs=20"],
    ["schedule.name=step", "schedule.step_epochs=19", "train.epochs=20"],
    ["schedule.min_lr=0.1", "optim.lr=0.1"],
    ["model.neuron.type=if", "model.neuron.threshold=0.5"],
]


@pytest.mark.parametrize("overrides", ACCEPTED, ids=[" ".join(o) for o in ACCEPTED])
def test_the_same_keys_with_the_variant_that_reads_them_are_accepted(overrides):
    check(load_config(None, overrides))


def test_a_tet_recipe_switched_to_another_loss_must_reset_its_tet_keys():
    recipe = next(p for p in RECIPES if p.name == "cifar10_resnet19_t4_tet.yaml")
    check(load_config(recipe, ["train.loss=ce"]))  # its tet keys are the defaults
    with pytest.raises(UserError, match=r"train\.tet_lambda=0\.2 .*train\.loss ce.*reset.*tet_lambda=0\.05"):
        check(load_config(recipe, ["train.tet_lambda=0.2", "train.loss=ce"]))


def test_a_trainer_refuses_them_before_training():
    """Trainer builds the optimizer and the schedule and checks the analysis settings, so it
    refuses their unread keys at once."""
    data = TensorDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    analysis = [(o, m) for o, m in REFUSED if o[0].startswith("analysis.")]
    losses = [(o, m) for o, m in REFUSED if o[0].startswith("train.")]
    for overrides, match in [*REFUSED[:6], *analysis, *losses]:
        config = load_config(None, [*overrides, "train.device=cpu", "train.progress=false",
                                    "diagnostics.gradient_interval=0"])
        with pytest.raises(UserError, match=match):
            Trainer(models.create("digits_cnn", T=1, width=0.25), data, data, config, verbose=False)


def test_a_spiking_neuron_with_a_soft_reset_refuses_a_v_reset():
    with pytest.raises(UserError, match=r"v_reset \(0\.3\) applies to a hard reset only"):
        neurons.LIF(reset="soft", v_reset=0.3)
    config = load_config(None, ["model.neuron.reset=soft", "model.neuron.v_reset=0.3"])
    with pytest.raises(UserError, match=r"model\.neuron\.v_reset"):
        models.create("digits_cnn", T=1, width=0.25, neuron=config.model.neuron.kwargs())
    assert neurons.LIF(reset="soft").v_reset == 0.0 and neurons.LIF(v_reset=0.3).v_reset == 0.3
    # the ANN twin of a recipe keeps its neuron keys, which it has no neuron to apply to (an LTL
    # teacher_set changes model.kind only)
    models.create("digits_cnn", kind="ann", width=0.25, neuron=config.model.neuron.kwargs())


@pytest.mark.parametrize("name", ["digits", "cluttered_digits", "event_digits", "mnist1d"])
def test_a_built_in_dataset_refuses_a_data_root(name):
    with pytest.raises(UserError, match=rf"dataset '{name}' is .*unset data\.root"):
        dataset_builder(name)(root="data")


def test_ltl_refuses_another_loss_when_it_attaches_to_a_trainer():
    data = TensorDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    config = load_config(None, ["train.loss=tet", "train.device=cpu", "train.progress=false",
                                "diagnostics.gradient_interval=0"])
    with pytest.raises(UserError, match=r"train\.loss tet does not apply with ltl\.mode"):
        Trainer(models.create("digits_cnn", T=2, width=0.25), data, data, config, verbose=False,
                components=[LocalTandemLearning(teacher(), "offline")])
