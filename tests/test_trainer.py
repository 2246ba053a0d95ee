import dataclasses
import json
import math
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import layers, neurons, surrogates
from spikegrad.checkpoint import load_checkpoint, load_model
from spikegrad.config import Config, load_config
from spikegrad.demo import recipe_path
from spikegrad.errors import UserError
from spikegrad.losses import tet_loss
from spikegrad.run import train
from spikegrad.trainer import Component, StepOutput, Trainer, lr_factor


def tiny_config(**overrides) -> Config:
    base = {"train.epochs": 1, "train.progress": False, "data.batch_size": 128,
            "model.width": 0.25, "model.T": 2}
    base.update(overrides)
    return load_config(recipe_path("digits")).with_overrides(base)


def test_run_folder_contents(tmp_path):
    summary = train(tiny_config(**{"train.epochs": 2}), tmp_path, verbose=False)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt"} <= {
        p.name for p in tmp_path.iterdir()}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds", "firing_rate"):
        assert key in rows[0]
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored == pytest.approx(summary)
    assert stored["method"] == "dspike" and stored["epochs"] == 2
    assert 0.0 <= stored["final_test_acc"] <= stored["best_test_acc"] <= 1.0
    assert stored["params"] > 0 and stored["wall_seconds"] > 0
    # the resolved recipe, with the name the run got from its method (the recipe sets none)
    named = tiny_config(**{"train.epochs": 2, "name": "digits-dspike"})
    assert load_config(tmp_path / "config.yaml") == named
    assert stored["name"] == "digits-dspike"


def test_seeded_runs_are_reproducible(tmp_path):
    train(tiny_config(), tmp_path / "a", verbose=False)
    train(tiny_config(), tmp_path / "b", verbose=False)
    train(tiny_config(**{"train.seed": 1}), tmp_path / "c", verbose=False)
    a, b, c = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ann_kind_reports_ann_method(tmp_path):
    summary = train(tiny_config(**{"model.kind": "ann"}), tmp_path, verbose=False)
    assert summary["method"] == "ann" and summary["firing_rate"] is None and summary["T"] == 1


def test_tet_loss_matches_its_formula():
    torch.manual_seed(0)
    out, y = torch.randn(4, 5, 3), torch.randint(0, 3, (5,))
    for lam, phi in ((0.2, 1.0), (0.05, 0.5), (0.7, -0.3)):
        ce = sum(nn.functional.cross_entropy(out[t], y) for t in range(4)) / 4
        mse = sum(((out[t] - phi) ** 2).mean() for t in range(4)) / 4
        assert tet_loss(out, y, lam, phi).item() == pytest.approx(((1 - lam) * ce + lam * mse).item())


def test_cosine_schedule_with_warmup():
    cfg = Config().with_overrides({"train.epochs": 10, "schedule.warmup_epochs": 1,
                                   "optim.lr": 0.1, "schedule.min_lr": 0.01})
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.1)  # warm-up: (0 + 1) / 10
    assert lr_factor(cfg, 10, 10) == pytest.approx(1.0)  # warm-up done
    mid = 10 + 45
    assert lr_factor(cfg, mid, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 100, 10) == pytest.approx(0.1)  # floor = min_lr / lr
    step = Config().with_overrides({"schedule.name": "step", "schedule.step_epochs": 2,
                                    "schedule.gamma": 0.5})
    assert [lr_factor(step, i * 10, 10) for i in range(5)] == [1, 1, 0.5, 0.5, 0.25]


class Counter(Component):
    name = "counter"

    def __init__(self):
        self.epochs, self.steps = [], 0

    def on_epoch_start(self, trainer, epoch):
        self.epochs.append(epoch)
        return {"counter_steps": self.steps}

    def on_step_end(self, trainer):
        self.steps += 1

    def method_name(self, base):
        return base + "+counter"


def fc_spiking_net(T: int) -> nn.Module:
    """A fully connected SNN built from spikegrad's layers, for 1-D features."""
    return nn.Sequential(
        layers.DirectEncoder(T),
        layers.TimeDistributed(nn.Linear(2, 32)),
        neurons.LIF(leak=0.5, surrogate=surrogates.ATan()),
        layers.TimeDistributed(nn.Linear(32, 2)),
    )


def test_python_api_trains_a_custom_model_on_a_custom_dataset(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(400, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()  # XOR-like quadrants: needs the hidden layer
    train_set, test_set = TensorDataset(x[:300], y[:300]), TensorDataset(x[300:], y[300:])
    config = Config().with_overrides({"train.epochs": 30, "optim.name": "adamw", "optim.lr": 0.01,
                                      "data.batch_size": 32, "train.progress": False})
    counter = Counter()
    trainer = Trainer(fc_spiking_net(T=4), train_set, test_set, config, components=[counter],
                      out_dir=tmp_path, verbose=False)
    summary = trainer.fit()
    assert summary["final_test_acc"] > 0.85
    assert summary["method"] == "atan+counter"
    assert counter.epochs == list(range(30)) and counter.steps == 30 * math.ceil(300 / 32)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["counter_steps"] == 10


def test_two_loss_owners_are_refused():
    class Owner(Component):
        def compute_loss(self, trainer, inputs, targets):
            return StepOutput(torch.zeros(()), torch.zeros(len(targets), 2))

    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match="only one training component"):
        Trainer(fc_spiking_net(2), data, data, components=[Owner(), Owner()], verbose=False)


def test_model_returning_the_wrong_layout_is_explained():
    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    trainer = Trainer(nn.Linear(2, 2), data, data, Config().with_overrides({"train.epochs": 1}),
                      verbose=False)
    with pytest.raises(UserError, match=r"\[T, B, classes\]"):
        trainer.fit()


def test_eval_cli_reproduces_the_stored_accuracy(tmp_path):
    train(tiny_config(), tmp_path, verbose=False)
    proc = subprocess.run([sys.executable, "-m", "spikegrad.cli", "eval", str(tmp_path / "best.pt"),
                           "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    best = json.loads((tmp_path / "summary.json").read_text())["best_test_acc"]
    assert result["test_acc"] == pytest.approx(best)
    model, payload = load_model(tmp_path / "best.pt")
    assert payload["method"] == "dspike" and isinstance(model, nn.Module)


def test_checkpoint_errors(tmp_path):
    train(tiny_config(), tmp_path, verbose=False)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.pt.*cannot be read"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a spikegrad checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['SPIKEGRAD_PWNED'], 'w').write('x')",))


def test_loading_never_executes_code_from_the_file(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SPIKEGRAD_PWNED", str(marker))
    with open(tmp_path / "evil.pt", "wb") as handle:
        torch.save({"format": "spikegrad-checkpoint", "payload": Exploit()}, handle,
                   pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_config_built_in_python_gets_the_checks_of_a_recipe():
    """Section constructors and ``dataclasses.replace`` skip loading; the trainer checks every
    value as loading would, and the settings of a method component given by hand too."""
    from spikegrad.config import DspikeConfig, NeuronConfig
    from spikegrad.methods.dspike import AdaptiveTemperature
    from spikegrad.methods.ltl import LocalTandemLearning
    from spikegrad.methods.shortcut import ShortcutBackprop

    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    base, replace = Config(), dataclasses.replace
    bad = [
        (replace(base, dspike=DspikeConfig(adaptive=True, every=0)), r"'dspike\.every' must be > 0"),
        (replace(base, train=replace(base.train, epochs=0)), r"'train\.epochs' must be"),
        (replace(base, model=replace(base.model, neuron=NeuronConfig(reset="soft-ish"))),
         r"'model\.neuron\.reset' must be one of \['hard', 'soft'\]"),
        (replace(base, optim=replace(base.optim, lr="fast")), r"'optim\.lr'"),
    ]
    for config, message in bad:
        with pytest.raises(UserError, match=message):
            Trainer(fc_spiking_net(2), data, data, config, verbose=False)
    for component, message in [
        (AdaptiveTemperature(DspikeConfig(first_epoch=-1)), r"'dspike\.first_epoch' must be >= 0"),
        (ShortcutBackprop(lambda0=-1.0), r"'shortcut\.lambda0' must be >= 0"),
        (LocalTandemLearning(fc_spiking_net(2), "offline", percentile=150.0), r"'ltl\.percentile'"),
    ]:
        with pytest.raises(UserError, match=message):
            Trainer(fc_spiking_net(2), data, data, components=[component], verbose=False)


def test_trainer_arguments_of_the_wrong_kind_are_explained():
    from spikegrad.methods.shortcut import ShortcutBackprop

    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match=r"config must be a spikegrad Config, got dict.*load_config"):
        Trainer(fc_spiking_net(2), data, data, {"train": {"epochs": 1}}, verbose=False)
    with pytest.raises(UserError, match=r"components must be a list of Component instances, got "
                                        r"ShortcutBackprop"):
        Trainer(fc_spiking_net(2), data, data, components=ShortcutBackprop(), verbose=False)
    with pytest.raises(UserError, match=r"components must be Component instances; got <object"):
        Trainer(fc_spiking_net(2), data, data, components=[object()], verbose=False)
    with pytest.raises(UserError, match=r"\(a class: call it\)"):
        Trainer(fc_spiking_net(2), data, data, components=[ShortcutBackprop], verbose=False)
    with pytest.raises(UserError, match=r"a model factory is called with no arguments"):
        Trainer(lambda x: x, data, data, verbose=False)
    with pytest.raises(UserError, match=r"a model factory is called with no arguments"):
        Trainer(nn.Linear, data, data, verbose=False)  # a class whose constructor needs sizes

    class TwoStep(nn.Module):  # a class that needs no argument is a factory like any other
        def __init__(self):
            super().__init__()
            self.net = fc_spiking_net(2)

        def forward(self, x):
            return self.net(x)

    assert isinstance(Trainer(TwoStep, data, data, verbose=False).model, TwoStep)


def test_devices_it_cannot_train_on_are_refused():
    from spikegrad.trainer import resolve_device

    with pytest.raises(UserError, match=r"trains on cpu, cuda or mps, not on 'meta' devices"):
        resolve_device("meta")
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match=r"no usable MPS"):
            resolve_device("mps")


def test_tuple_outputs_and_batch_major_sequences_are_explained():
    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = fc_spiking_net(2)

        def forward(self, x):
            y = self.net(x)
            return y, y

    config = Config().with_overrides({"train.epochs": 1, "train.progress": False})
    with pytest.raises(UserError, match=r"one tensor of per-time-step logits .* got tuple"):
        Trainer(Pair(), data, data, config, verbose=False).fit()
    # [T, ...] samples in a plain dataset collate batch-major [B, T, ...]: the model reads
    # the batch as time
    sequences = TensorDataset(torch.rand(16, 4, 2), torch.zeros(16, dtype=torch.long))
    seq_config = config.with_overrides({"data.batch_size": 8})
    net = nn.Sequential(layers.TimeDistributed(nn.Linear(2, 2)))
    with pytest.raises(UserError, match=r"axis 1 must be the batch.*time_major = True"):
        Trainer(net, sequences, sequences, seq_config, verbose=False).fit()


def test_datasets_given_as_they_are_are_evaluated_as_the_test_set(capsys):
    """data.validation cuts datasets built from the config; given ones are used as they are,
    and the summary says the second one is the test set."""
    from spikegrad.build import build_parts

    data = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    config = Config().with_overrides({"train.epochs": 1, "train.progress": False,
                                      "data.validation": 0.2})
    trainer = Trainer(fc_spiking_net(2), data, data, config)
    assert trainer.summary(0.0)["eval_split"] == "test"
    assert "data.subset and data.validation cut datasets built from the config" in capsys.readouterr().out
    recipe = load_config(recipe_path("digits"), ["data.validation=0.2", "model.width=0.25"])
    parts = build_parts(recipe)
    built = Trainer(parts.model, parts.train_set, parts.test_set, recipe, verbose=False)
    assert built.summary(0.0)["eval_split"] == "validation"


def test_distributed_settings_in_one_process_are_named_as_unused(capsys):
    data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    config = Config().with_overrides({"distributed.sync_bn": True, "distributed.timeout_minutes": 5.0})
    Trainer(fc_spiking_net(2), data, data, config)
    assert ("note: not used in one process (they apply under torchrun): distributed.sync_bn=True, "
            "distributed.timeout_minutes=5.0") in capsys.readouterr().out
    Trainer(fc_spiking_net(2), data, data, Config())
    assert "torchrun" not in capsys.readouterr().out


def test_components_given_that_differ_from_the_config_are_named(capsys):
    from spikegrad import models
    from spikegrad.methods.dspike import AdaptiveTemperature
    from spikegrad.methods.shortcut import ShortcutBackprop

    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 2)
    net = models.create("digits_cnn", T=2, width=0.25, in_channels=1, input_size=8)
    off = load_config(recipe_path("digits"), ["diagnostics.gradient_interval=0"])
    Trainer(net, data, data, off, components=[ShortcutBackprop(), Counter()])
    out = capsys.readouterr().out
    assert ("note: the components given differ from the config's methods (shortcut given, switched "
            "off in the config)") in out and "components=None" in out
    on = off.with_overrides({"dspike.adaptive": True})
    Trainer(net, data, data, on, components=[])
    assert "(dspike on in the config, not given)" in capsys.readouterr().out
    Trainer(net, data, data, on, components=[AdaptiveTemperature(on.dspike), Counter()])
    assert "differ" not in capsys.readouterr().out  # your own components do not count


def test_components_given_with_other_settings_than_the_config_are_named(capsys):
    from spikegrad import models
    from spikegrad.diagnostics import GradientDiagnostics
    from spikegrad.methods.shortcut import ShortcutBackprop

    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 2)
    net = models.create("digits_cnn", T=2, width=0.25, in_channels=1, input_size=8)
    config = load_config(recipe_path("digits"), ["shortcut.enabled=true", "shortcut.lambda0=0.5",
                                                 "diagnostics.gradient_interval=7"])
    Trainer(net, data, data, config, components=[
        ShortcutBackprop(lambda0=1.0, schedule="constant"), GradientDiagnostics(interval=7)])
    out = capsys.readouterr().out
    assert "shortcut.lambda0: 1.0 given, 0.5 in the config" in out
    assert "shortcut.schedule: 'constant' given, 'linear' in the config" in out
    assert "diagnostics" not in out  # its settings agree
    same = [ShortcutBackprop(lambda0=0.5), GradientDiagnostics(interval=7)]
    Trainer(net, data, data, config, components=same)
    assert "differ" not in capsys.readouterr().out
    # tuples given where the config holds lists are the same setting
    attached = config.with_overrides({"shortcut.attach": ["features.0"]})
    Trainer(net, data, data, attached, components=[ShortcutBackprop(("features.0",), lambda0=0.5),
                                                   GradientDiagnostics(interval=7)])
    assert "differ" not in capsys.readouterr().out


def test_an_ltl_component_given_is_compared_with_the_ltl_section_on_its_own_teacher(capsys):
    from spikegrad import models
    from spikegrad.methods.ltl import LocalTandemLearning

    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 2)
    net = models.create("digits_cnn", T=2, width=0.25, in_channels=1, input_size=8)
    teacher = models.create("digits_cnn", kind="ann", width=0.25, in_channels=1, input_size=8)
    config = load_config(recipe_path("digits"), ["ltl.mode=offline", "ltl.percentile=99",
                                                 "diagnostics.gradient_interval=0"])
    Trainer(net, data, data, config, components=[LocalTandemLearning(teacher, "offline")])
    assert "ltl.percentile: 99.9 given, 99.0 in the config" in capsys.readouterr().out
    Trainer(net, data, data, config, components=[LocalTandemLearning(teacher, "offline", percentile=99)])
    assert "differ" not in capsys.readouterr().out
    unbuildable = config.with_overrides({"ltl.teacher_set": ["train.epochs=1"]})
    Trainer(net, data, data, unbuildable, components=[LocalTandemLearning(teacher, "offline", percentile=99)])
    assert "ltl given, its config section does not build: ltl.teacher_set" in capsys.readouterr().out


def test_every_registered_method_reads_back_its_section():
    from spikegrad.component import Component
    from spikegrad.methods.registry import methods

    missing = [m.section for m in methods() if m.component.section_settings is Component.section_settings]
    assert not missing, f"{missing}: section_settings() not defined, hand-given components go uncompared"


@pytest.mark.parametrize("component, settings", [
    ("shortcut", {"lambda0": 1.0, "schedule": "step", "step_fraction": 0.25, "gamma": 0.5,
                  "loss": "separate", "every": 2}),
    ("dspike", {"delta": 0.25, "b_min": 1.0, "epsilon": 0.5, "rule": "paper", "bn_mode": "eval",
                "probe_batches": 3, "num_weights": 16}),
    ("diagnostics", {"gradient_interval": 3, "histogram_bins": 9}),
    ("ltl", {"mode": "online", "percentile": 95.0, "layer_weights": [1.0, 2.0, 3.0], "T_warm": 2,
             "readout_detach": False, "distill": 0.5, "distill_temperature": 2.0,
             "student_init": "teacher", "init_batches": 2}),
])
def test_section_settings_read_back_the_section_they_were_built_from(component, settings):
    """from_config's inverse: every changed key of the section comes back from the component, so
    a hand-given component that differs in any of them is found."""
    from spikegrad import models
    from spikegrad.methods.registry import method

    entry = method(component)
    config = Config().with_overrides({f"{component}.{k}": v for k, v in settings.items()})
    resources = {"seed": 0, "teacher": models.create("digits_cnn", kind="ann", width=0.25)}
    built = entry.component.from_config(getattr(config, component),
                                        **{n: resources[n] for n in entry.needs})
    read = built.section_settings()
    assert {k: read[k] for k in settings} == settings
    assert set(read) <= {f.name for f in dataclasses.fields(getattr(config, component))}
