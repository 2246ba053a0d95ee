"""A config becomes objects in one place: the method registry, the build package, and the
Python Trainer doing what its config says."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import spikegrad
from spikegrad import Config, Trainer, UserError, layers, neurons, surrogates
from spikegrad.build import build_components, build_parts
from spikegrad.calibration import calibration_config
from spikegrad.checkpoint import load_checkpoint
from spikegrad.config import load_config
from spikegrad.demo import recipe_path
from spikegrad.methods import (
    AdaptiveTemperature,
    GradientDiagnostics,
    LocalTandemLearning,
    ShortcutBackprop,
    enabled_methods,
    method,
)
from spikegrad.methods.registry import run_name, unused_note, unused_settings
from spikegrad.run import train


def tiny_config(**overrides) -> Config:
    return load_config(recipe_path("digits")).with_overrides({
        "train.epochs": 1, "train.progress": False, "data.batch_size": 128, "model.width": 0.25,
        "model.T": 2, "train.threads": 1, "train.device": "cpu", **overrides})


def sequential(T: int = 4, spiking: bool = True) -> nn.Sequential:
    """``[B, 2] -> [T, B, 2]``: encoder, linear, activation, linear, activation, linear."""
    def act() -> nn.Module:
        return neurons.LIF(leak=0.5, surrogate=surrogates.Dspike(temperature=3.0)) if spiking else nn.ReLU()

    return nn.Sequential(layers.DirectEncoder(T), layers.TimeDistributed(nn.Linear(2, 16)), act(),
                         layers.TimeDistributed(nn.Linear(16, 16)), act(),
                         layers.TimeDistributed(nn.Linear(16, 2)))


def toy_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def toy_config(**overrides) -> Config:
    return Config().with_overrides({"train.epochs": 1, "train.progress": False, "train.device": "cpu",
                                    "data.batch_size": 16, "train.threads": 1, **overrides})


# --------------------------------------------------------------------------- the registry


def test_the_registry_maps_sections_to_methods_in_build_order():
    config = Config().with_overrides({"dspike.adaptive": True, "shortcut.enabled": True,
                                      "ltl.mode": "offline"})
    assert [m.section for m in enabled_methods(config)] == ["ltl", "dspike", "diagnostics", "shortcut"]
    assert [m.section for m in enabled_methods(Config())] == ["diagnostics"]
    assert method("shortcut").component is ShortcutBackprop
    assert method("dspike").component is AdaptiveTemperature
    assert method("ltl").component is LocalTandemLearning
    assert method("diagnostics").component is GradientDiagnostics
    with pytest.raises(UserError, match=r"unknown method section 'shortcuts' \(did you mean "
                                        r"'shortcut'\?\); available: diagnostics, dspike, ltl"):
        method("shortcuts")


def test_the_ann_twin_of_an_adaptive_recipe_searches_no_temperature():
    config = tiny_config(**{"dspike.adaptive": True})
    assert "dspike" in [m.section for m in enabled_methods(config)]
    ann = tiny_config(**{"dspike.adaptive": True, "model.kind": "ann"})
    assert "dspike" not in [m.section for m in enabled_methods(ann)]
    assert "dspike" not in [m.section for m in enabled_methods(config, build_parts(ann).model)]


def test_the_settings_of_a_method_switched_off_are_kept_and_named_as_unused(capsys):
    """An LTL recipe with ltl.mode=none is its own BPTT baseline (and stored runs rebuild): the
    switched-off method's settings are kept, and the trainer names them as unused."""
    config = load_config(recipe_path("digits_ltl"), ["ltl.mode=none", "shortcut.lambda0=1",
                                                     "diagnostics.gradient_interval=0",
                                                     "diagnostics.histogram_bins=5", "dspike.every=2"])
    assert build_components(config) == []
    assert unused_settings(config) == [
        "ltl.teacher_recipe='digits'", "ltl.teacher_set=['model.kind=ann', 'name=digits-ann']",
        "dspike.every=2", "diagnostics.histogram_bins=5", "shortcut.lambda0=1.0"]
    assert unused_settings(config.with_overrides({"ltl.mode": "offline", "dspike.adaptive": True,
                                                  "shortcut.enabled": True,
                                                  "diagnostics.gradient_interval": 3})) == []
    config = config.with_overrides({"train.epochs": 1, "model.width": 0.25, "train.device": "cpu"})
    parts = build_parts(config)
    Trainer(parts.model, parts.train_set, parts.test_set, config, verbose=True)
    out = capsys.readouterr().out
    assert ("note: not used, their methods being switched off: ltl.teacher_recipe='digits', "
            "ltl.teacher_set=['model.kind=ann', 'name=digits-ann'], dspike.every=2") in out
    from spikegrad import run  # what `spikegrad train` builds its components with

    run.build_components(config, parts.model, verbose=True)
    assert "note: not used, their methods being switched off: ltl.teacher_recipe=" in capsys.readouterr().out
    ann = load_config(recipe_path("digits"), ["dspike.adaptive=true", "model.kind=ann",
                                               "diagnostics.gradient_interval=0"])
    assert build_components(ann) == []  # the ANN twin has no surrogate to search
    assert unused_note(ann) == ("note: dspike.adaptive=True does not apply to this model (model.kind "
                                "ann): it trains without the adaptive Dspike temperature (Algorithm 1)")


def test_from_config_takes_every_setting_of_its_section():
    config = Config().with_overrides({
        "shortcut.attach": ["features.1"], "shortcut.schedule": "step", "shortcut.lambda0": 0.5,
        "shortcut.step_fraction": 0.25, "shortcut.gamma": 0.2, "shortcut.loss": "separate",
        "ltl.mode": "online", "ltl.percentile": 97.5, "ltl.layer_weights": [1.0, 2.0],
        "ltl.T_warm": 1, "ltl.distill": 0.5, "ltl.distill_temperature": 2.0,
        "ltl.readout_detach": False, "diagnostics.gradient_interval": 7, "diagnostics.histogram_bins": 5})
    shortcut = ShortcutBackprop.from_config(config.shortcut, seed=3)
    assert (shortcut.attach_names, shortcut.schedule, shortcut.lambda0, shortcut.step_fraction,
            shortcut.gamma, shortcut.loss, shortcut.seed) == (["features.1"], "step", 0.5, 0.25, 0.2,
                                                             "separate", 3)
    teacher = spikegrad.models.create("digits_cnn", kind="ann", width=0.25)
    ltl = LocalTandemLearning.from_config(config.ltl, teacher=teacher)
    assert (ltl.mode, ltl.percentile, ltl.layer_weights, ltl.T_warm_option, ltl.distill,
            ltl.distill_temperature, ltl.readout_detach) == ("online", 97.5, [1.0, 2.0], 1, 0.5, 2.0,
                                                             False)
    diagnostics = GradientDiagnostics.from_config(config.diagnostics)
    assert (diagnostics.interval, diagnostics.bins) == (7, 5)
    with pytest.raises(TypeError):
        ShortcutBackprop(["features.1"], None, "linear")  # no positional settings


def test_constructor_defaults_are_the_configs():
    shortcut, section = ShortcutBackprop(), Config().shortcut
    assert (shortcut.every, shortcut.schedule, shortcut.lambda0, shortcut.step_fraction, shortcut.gamma,
            shortcut.loss) == (section.every, section.schedule, section.lambda0, section.step_fraction,
                               section.gamma, section.loss)
    diagnostics = GradientDiagnostics()
    assert (diagnostics.interval, diagnostics.bins) == (Config().diagnostics.gradient_interval,
                                                        Config().diagnostics.histogram_bins)


# --------------------------------------------------------------------------- the Python Trainer


@pytest.mark.slow
def test_trainer_given_a_config_trains_what_spikegrad_train_trains(tmp_path):
    """The Python API honours the method sections: same components, same weights, same summary."""
    config = tiny_config(**{"dspike.adaptive": True, "shortcut.enabled": True, "train.epochs": 2,
                            "dspike.batch_size": 32, "dspike.num_weights": 16})
    reference = train(config, tmp_path / "cli", verbose=False)
    parts = build_parts(config)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, out_dir=tmp_path / "api",
                      model_args=parts.model_args, verbose=False)
    assert [type(c) for c in trainer.components] == [AdaptiveTemperature, GradientDiagnostics,
                                                     ShortcutBackprop]
    summary = trainer.fit()
    assert summary["method"] == reference["method"] == "dspike-adaptive+evolutionary"
    assert summary["final_test_acc"] == reference["final_test_acc"]
    rows = [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert {"dspike_temperature", "dspike_similarity", "shortcut_lambda"} <= set(rows[-1])
    ours, theirs = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("api", "cli"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_section_that_cannot_apply_to_a_custom_model_is_refused_naming_why():
    data = toy_data()
    with pytest.raises(UserError, match=r"Sequential has no units\(\).*shortcut\.attach.*'2', '4'"):
        Trainer(sequential(), data, data, toy_config(**{"shortcut.enabled": True}), verbose=False)
    with pytest.raises(UserError, match=r"attach point '9' .*it can branch from: 2, 4"):
        Trainer(sequential(), data, data, toy_config(**{"shortcut.enabled": True, "shortcut.attach": ["9"]}),
                verbose=False)
    with pytest.raises(UserError, match=r"dspike\.adaptive needs spiking neurons with the Dspike"):
        Trainer(sequential(spiking=False), data, data,
                toy_config(**{"dspike.adaptive": True, "train.epochs": 2}), verbose=False)
    with pytest.raises(UserError, match=r"ltl\.teacher_recipe 'digits' is trained before the student"):
        Trainer(sequential(), data, data,
                toy_config(**{"ltl.mode": "offline", "ltl.teacher_recipe": "digits"}), verbose=False)
    with pytest.raises(UserError, match=r"the LTL student needs units\(\)"):
        teacher = spikegrad.models.create("digits_cnn", kind="ann", width=0.25)
        Trainer(sequential(), data, data, toy_config(**{"ltl.mode": "offline"}),
                components=build_components(toy_config(**{"ltl.mode": "offline"}), teacher=teacher),
                verbose=False)


def test_a_custom_model_trains_with_shortcut_branches_at_the_named_activations():
    data = toy_data()
    config = toy_config(**{"shortcut.enabled": True, "shortcut.attach": ["2", "4"],
                           "shortcut.schedule": "constant", "shortcut.lambda0": 1.0})
    trainer = Trainer(sequential(), data, data, config, verbose=False)
    (shortcut,) = [c for c in trainer.components if isinstance(c, ShortcutBackprop)]
    assert shortcut.branches.names == ["2", "4"]
    assert trainer.fit()["method"] == "dspike+shortcut"


def test_the_summary_of_a_custom_model_names_its_method_and_time_steps(tmp_path):
    data = toy_data()
    summary = Trainer(sequential(T=3, spiking=False), data, data, toy_config(), out_dir=tmp_path,
                      verbose=False).fit()
    # unnamed: the run folder's name, or without a folder the model's class and the method
    assert (summary["method"], summary["T"], summary["name"]) == ("ann", 3, tmp_path.name)
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == "ann"
    folderless = Trainer(sequential(T=2), data, data, toy_config(), verbose=False).fit()
    assert folderless["name"] == "Sequential-dspike"
    named = Trainer(sequential(T=2), data, data, toy_config(name="mine"), verbose=False).fit()
    assert (named["method"], named["T"], named["name"]) == ("dspike", 2, "mine")


def test_a_model_factory_is_seeded_by_the_config():
    data = toy_data()

    def weights(seed: int) -> dict:
        torch.manual_seed(1234 + seed)  # whatever the global state, the config's seed decides
        trainer = Trainer(sequential, data, data, toy_config(**{"train.seed": seed}), verbose=False)
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(UserError, match=r"returned int, not an nn\.Module"):
        Trainer(lambda: 3, data, data, toy_config(), verbose=False)


def test_calibration_builds_online_ltl_from_the_stored_section():
    teacher = spikegrad.models.create("digits_cnn", kind="ann", width=0.25)
    stored = tiny_config(**{"ltl.mode": "offline", "ltl.percentile": 95.0, "ltl.layer_weights": [1, 2, 3],
                            "ltl.student_init": "teacher", "dspike.adaptive": True,
                            "shortcut.enabled": True})
    (ltl,) = build_components(calibration_config(stored, method="ltl-online"), teacher=teacher)
    assert (ltl.mode, ltl.percentile, ltl.layer_weights, ltl.student_init) == (
        "online", 95.0, [1, 2, 3], "random")
    assert build_components(calibration_config(stored, method="bptt")) == []
    # one epoch at a constant rate (the stored one unless given), no weight decay, no warm-up
    trained = stored.with_overrides({"schedule.name": "cosine", "schedule.warmup_epochs": 2.0,
                                     "optim.weight_decay": 5e-4, "train.epochs": 30})
    for method_name, lr in (("bptt", None), ("ltl-online", 0.01)):
        calib = calibration_config(trained, lr, method_name)
        assert (calib.schedule.name, calib.schedule.warmup_epochs) == ("constant", 0.0)
        assert (calib.optim.weight_decay, calib.train.epochs) == (0.0, 1)
        assert calib.optim.lr == (trained.optim.lr if lr is None else lr)
    # the methods calibration switches off keep none of the trained run's settings of them
    stored = stored.with_overrides({"dspike.every": 2, "shortcut.lambda0": 1.0,
                                    "diagnostics.histogram_bins": 5})
    for method_name in ("bptt", "ltl-online"):
        assert unused_settings(calibration_config(stored, method=method_name)) == []


def test_the_public_api_exports_what_a_user_needs():
    for name in ("AdaptiveTemperature", "ShortcutBackprop", "LocalTandemLearning", "GradientDiagnostics",
                 "build_components", "build_parts", "build_model", "datasets_from_config",
                 "seed_everything", "train", "Trainer", "Component", "models", "data"):
        assert hasattr(spikegrad, name) and name in spikegrad.__all__, name


# --------------------------------------------------------------------------- the model spec


def test_model_options_readout_and_encoder_mapping_round_trip_through_a_checkpoint(tmp_path):
    from spikegrad.build import build_model, datasets_from_config
    from spikegrad.checkpoint import load_model, save_checkpoint

    config = tiny_config(**{"model.options": {"readout": "spikes"}, "model.T": 3,
                            "model.encoder": {"name": "latency", "scale": "log"}})
    _, test_set, info = datasets_from_config(config.data)
    model, args = build_model(config, info)
    assert args["kwargs"]["readout"] == "spikes" and model.output_neuron is not None
    save_checkpoint(tmp_path / "m.pt", model, args, config=config.to_dict())
    rebuilt, _ = load_model(tmp_path / "m.pt")
    assert isinstance(rebuilt.output_neuron, neurons.LIF) and rebuilt.encoder.scale == "log"
    x = torch.stack([test_set[i][0] for i in range(4)])
    with torch.no_grad():
        model.eval(), rebuilt.eval()
        assert torch.equal(model(x), rebuilt(x)) and set(model(x).unique().tolist()) <= {0.0, 1.0}


def test_model_create_checks_shared_and_own_arguments_by_type_and_size():
    from spikegrad import models

    with pytest.raises(UserError, match=r"'batch_norm' must be bool, got 'maybe'"):
        models.create("vgg11", batch_norm="maybe")  # a ModelSpec field
    with pytest.raises(UserError, match=r"'width' must lie in \(0, 64\]"):
        models.create("digits_cnn", width=-1.0)
    with pytest.raises(UserError, match=r"'stem' must be str"):
        models.create("resnet18", stem=3)  # the network's own argument
    with pytest.raises(UserError, match=r"'depth' must lie in"):
        models.create("plain_cnn", depth=0)


def test_a_teacher_recipe_inherits_the_students_training_set_cuts(tmp_path):
    """A teacher trained for a student tuned on a validation split never sees that split: it
    takes data.validation, data.split_seed and data.subset from the student unless its recipe
    or ltl.teacher_set sets them."""
    import yaml

    from spikegrad.build import datasets_from_config, teacher_config

    cuts = {"data.validation": 0.25, "data.subset": 600, "data.split_seed": 3}
    student = tiny_config(**{"ltl.mode": "offline", "ltl.teacher_recipe": "digits",
                             "ltl.teacher_set": ["model.kind=ann", "model.width=0.25", "train.epochs=1",
                                                 "train.progress=false", "train.threads=1"], **cuts})
    teacher = teacher_config(student.ltl, student.data)
    assert (teacher.data.validation, teacher.data.subset, teacher.data.split_seed) == (0.25, 600, 3)
    recipe_data = load_config(recipe_path("digits")).data
    assert teacher_config(student.ltl).data == recipe_data  # without the student: the recipe's own
    own = student.with_overrides({"ltl.teacher_set": [*student.ltl.teacher_set, "data.validation=0.0"]})
    taught = teacher_config(own.ltl, own.data)  # teacher_set wins, the rest is inherited
    assert (taught.data.validation, taught.data.subset, taught.data.split_seed) == (0.0, 600, 3)
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(yaml.safe_dump({"extends": str(recipe_path("digits")), "model": {"kind": "ann"},
                                      "data": {"split_seed": 9, "subset": None}}))
    fixed = student.with_overrides({"ltl.teacher_recipe": str(recipe), "ltl.teacher_set": []})
    taught = teacher_config(fixed.ltl, fixed.data)  # the recipe's own keys win, even a null
    assert (taught.data.validation, taught.data.subset, taught.data.split_seed) == (0.25, None, 9)
    # trained first by train(): the teacher's run evaluates on the student's validation split
    summary = train(student, tmp_path / "run", verbose=False)
    assert summary["eval_split"] == "validation"
    teacher_summary = json.loads((tmp_path / "run" / "teacher" / "summary.json").read_text())
    assert teacher_summary["eval_split"] == "validation"
    stored = load_config(tmp_path / "run" / "teacher" / "config.yaml")
    assert stored == teacher.with_overrides({"name": run_name(teacher)})  # named as every run is
    t_train, t_val, _ = datasets_from_config(stored.data)
    s_train, s_val, _ = datasets_from_config(student.data)
    assert t_val.indices == s_val.indices and t_train.indices == s_train.indices


def test_a_teacher_with_no_cut_takes_no_split_seed_from_its_student():
    """The student's seed of its own cuts has nothing to seed in a teacher trained on the whole
    training set; inherited, it would be refused there as a setting that cannot apply."""
    from spikegrad.build import teacher_config
    from spikegrad.config import DataConfig, LTLConfig

    ltl = LTLConfig(mode="offline", teacher_recipe="digits",
                    teacher_set=["model.kind=ann", "data.validation=0", "data.subset=null"])
    teacher = teacher_config(ltl, DataConfig(name="digits", validation=0.2, split_seed=3))
    assert (teacher.data.validation, teacher.data.subset, teacher.data.split_seed) == (0.0, None, 0)
    build_parts(teacher.with_overrides({"model.width": 0.25}))  # trains: no unread seed
