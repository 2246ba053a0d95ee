import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from spikegrad import models, surrogates
from spikegrad.checkpoint import load_checkpoint, load_model
from spikegrad.config import Config, ShortcutConfig, load_config
from spikegrad.data import build_datasets
from spikegrad.demo import recipe_path
from spikegrad.diagnostics import GradientDiagnostics
from spikegrad.errors import UserError
from spikegrad.methods.shortcut import (
    SCHEDULES,
    ShortcutBackprop,
    ShortcutBranch,
    balance_coefficient,
    combine_logits,
    default_attach_points,
)
from spikegrad.run import build_components, train
from spikegrad.trainer import Component, Trainer, evaluate_model


def small(name: str, **kwargs) -> nn.Module:
    extra = {"input_size": 16} if "input_size" in models.entry(name).arguments() else {}
    return models.create(name, num_classes=4, in_channels=1, T=2, width=0.125, **extra, **kwargs)


def toy_data(n: int = 48, side: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, side, side, generator=g), torch.randint(0, 4, (n,), generator=g))


def toy_trainer(model: nn.Module, components=(), **overrides) -> Trainer:
    config = Config().with_overrides({"train.epochs": 2, "train.progress": False, "data.batch_size": 16,
                                      "train.device": "cpu", **overrides})
    data = toy_data()
    return Trainer(model, data, data, config, components=list(components), verbose=False)


# ------------------------------------------------------------------ the balance coefficient


@pytest.mark.parametrize("schedule,start,middle,end", [
    ("constant", 0.25, 0.25, 0.25),
    ("linear", 0.25, 0.125, 0.0),
    ("cosine", 0.25, 0.125, 0.0),
    ("step", 0.25, 0.025, 0.0025),  # f = 0.5, γ = 0.1: one drop at the middle, a second at the end
])
def test_balance_coefficient_at_start_middle_and_end(schedule, start, middle, end):
    lam = [balance_coefficient(schedule, i, 1000, lambda0=0.25) for i in (0, 500, 1000)]
    assert lam == pytest.approx([start, middle, end])


def test_balance_coefficient_between_points_and_out_of_range():
    assert balance_coefficient("linear", 250, 1000, 0.25) == pytest.approx(0.25 * 0.75)
    assert balance_coefficient("cosine", 250, 1000, 1.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert balance_coefficient("step", 499, 1000, 1.0, step_fraction=0.5, gamma=0.5) == 1.0
    assert balance_coefficient("step", 700, 1000, 1.0, step_fraction=0.25, gamma=0.5) == 0.25
    assert balance_coefficient("linear", 2000, 1000, 0.25) == 0.0  # clamped past the end
    with pytest.raises(UserError, match="did you mean 'linear'"):
        balance_coefficient("lineal", 0, 10)


def test_config_offers_exactly_the_implemented_schedules():
    import dataclasses

    from spikegrad.config import choices_of

    meta = {f.name: f.metadata for f in dataclasses.fields(ShortcutConfig)}
    assert set(choices_of(meta["schedule"])) == set(SCHEDULES)
    with pytest.raises(UserError, match=r"shortcut\.schedule"):
        Config().with_overrides({"shortcut.schedule": "exp"})


# ------------------------------------------------------------------ branches and combined loss


def test_branch_pools_space_then_maps_each_time_step():
    branch = ShortcutBranch(3, 2)
    x = torch.rand(4, 5, 3, 6, 6)  # (T, B, C, H, W)
    expected = branch.linear(x.mean((-2, -1)))
    assert torch.allclose(branch(x), expected)
    assert branch(x).shape == (4, 5, 2)
    flat = torch.rand(4, 5, 3)  # (T, B, F): a fully connected unit
    assert torch.allclose(branch(flat), branch.linear(flat))


def test_default_attach_points():
    assert default_attach_points(small("resnet34")) == [
        "features.layer1_2", "features.layer2_3", "features.layer3_5"]
    assert default_attach_points(small("resnet19")) == ["features.layer1_2", "features.layer2_2"]
    assert default_attach_points(small("plain_cnn")) == [
        "features.conv4", "features.conv8", "features.conv12"]
    assert default_attach_points(small("plain_cnn"), every=5) == [
        "features.conv5", "features.conv10", "features.conv15"]
    assert default_attach_points(small("vgg11")) == ["features.1", "features.3", "features.5"]
    assert default_attach_points(small("digits_cnn")) == ["features.0", "features.1"]
    with pytest.raises(UserError, match="leaves no attach point"):
        default_attach_points(small("digits_cnn"), every=3)


def test_a_misspelt_attach_point_names_the_nearest_unit():
    component = ShortcutBackprop(attach=["features.conv44"])
    with pytest.raises(UserError, match=r"did you mean 'features\.conv4'"):
        component.build(small("plain_cnn"), torch.rand(2, 1, 16, 16))


def test_combined_loss_is_one_cross_entropy_on_main_plus_lambda_times_branches():
    model = small("plain_cnn")
    component = ShortcutBackprop(schedule="linear", lambda0=0.25)
    trainer = toy_trainer(model, [component])
    trainer.iteration = trainer.total_iterations // 2  # λ = 0.125
    x, y = toy_data()[:8]
    out = component.compute_loss(trainer, x, y)
    # by hand: the outputs of the attach points, pooled, mapped, summed with the head
    captured = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in component.branches.names]
    main = model(x)
    for h in hooks:
        h.remove()
    branches = [head.linear(captured[n].mean((-2, -1)))
                for n, head in zip(component.branches.names, component.branches.heads, strict=True)]
    combined = main + 0.125 * sum(branches)
    expected = nn.functional.cross_entropy(combined.mean(0), y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(out.logits, main.mean(0))  # accuracy of the deployed head
    assert torch.equal(combine_logits(main, [], 0.5), main)


def test_separate_losses_variant():
    model = small("plain_cnn")
    component = ShortcutBackprop(schedule="constant", lambda0=0.5, loss="separate")
    trainer = toy_trainer(model, [component])
    x, y = toy_data()[:8]
    main, branches = component.outputs(model, x)
    expected = nn.functional.cross_entropy(main.mean(0), y) + 0.5 * sum(
        nn.functional.cross_entropy(b.mean(0), y) for b in branches)
    assert component.compute_loss(trainer, x, y).loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert component.method_name("dspike") == "dspike+shortcut-separate"


def test_branch_gradients_reach_the_first_layer():
    model = small("plain_cnn")
    component = ShortcutBackprop()
    component.build(model, torch.rand(2, 1, 16, 16))
    x, y = toy_data()[:8]
    _, branches = component.outputs(model, x)
    nn.functional.cross_entropy(branches[0].mean(0), y).backward()  # the first branch alone
    first = model.features.conv1[0].module[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    after = model.features.conv5[0].module[0].weight  # beyond the first attach point (conv4)
    assert after.grad is None
    assert all(p.grad is not None for p in component.branches.heads[0].parameters())


# ------------------------------------------------------------------ removal at inference


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_branches_are_removed_at_inference(tmp_path):
    torch.manual_seed(0)
    plain = small("plain_cnn")
    trained = small("plain_cnn")
    trained.load_state_dict(plain.state_dict())
    component = ShortcutBackprop(schedule="constant", lambda0=1.0)
    trainer = toy_trainer(trained, [component])
    trainer.fit()
    # the model's state dict is the plain SNN's: same keys, no branch parameter anywhere
    assert list(trained.state_dict()) == list(plain.state_dict())
    assert not any("linear" in k and k.startswith("features") for k in trained.state_dict())
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2  # the branches: a separate group, on the same schedule
    assert groups[1]["lr"] == groups[0]["lr"] < trainer.config.optim.lr
    branch_params = {id(p) for p in component.branches.parameters()}
    assert not branch_params & {id(p) for p in trained.parameters()}
    # no hook is left on the model: evaluation runs the plain network
    assert not any(m._forward_hooks for m in trained.modules())
    plain.load_state_dict(trained.state_dict())
    x = toy_data()[:8][0]
    trained.eval()
    plain.eval()
    assert torch.equal(trained(x), plain(x))
    assert evaluate_model(trained, trainer.test_loader, trainer.device) == \
        evaluate_model(plain, trainer.test_loader, trainer.device)
    # identical operation count at evaluation; the branches do cost ops while training
    eval_flops = count_flops(lambda: trained(x))
    assert eval_flops == count_flops(lambda: plain(x)) > 0
    trained.train()
    train_flops = count_flops(lambda: component.compute_loss(trainer, x, torch.zeros(8, dtype=torch.long)))
    assert train_flops > count_flops(lambda: trained(x))


class SwappedHead(nn.Module):
    """A one-hot input ``[B, 2]`` held for T = 2 steps, an identity block ``feat`` and a head
    that swaps the two classes: the network's own answer is always wrong."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x):
        return self.head(self.feat(x.unsqueeze(0).expand(2, -1, -1)))  # (T, B, 2)


def hand_set_shortcut_trainer(tmp_path, lambda0, loss="combined"):
    """The branch at ``feat`` maps x to 2·x: right on every sample. ``o = main + λ·branch`` is
    ``(P + 2λ·I)·x``: right for λ = 1 (2 > 1), wrong for λ = 0.25 (0.5 < 1); the separate
    losses' ``log softmax(Px) + λ·log softmax(2x)`` likewise (-1.44 > -2.44; -1.35 < -0.85)."""
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    data = TensorDataset(torch.eye(2)[labels], labels)
    component = ShortcutBackprop(["feat"], schedule="constant", lambda0=lambda0, loss=loss)
    config = Config().with_overrides({"train.epochs": 1, "train.progress": False, "data.batch_size": 3,
                                      "optim.lr": 1e-12, "optim.momentum": 0.0,
                                      "optim.weight_decay": 0.0, "diagnostics.gradient_interval": 0})
    trainer = Trainer(SwappedHead(), data, data, config, components=[component], out_dir=tmp_path,
                      verbose=False)
    with torch.no_grad():
        component.branches.heads[0].linear.weight.copy_(2 * torch.eye(2))
        component.branches.heads[0].linear.bias.zero_()
    return trainer


@pytest.mark.parametrize("loss", ["combined", "separate"])
@pytest.mark.parametrize("lambda0,combined", [(1.0, 1.0), (0.25, 0.0)])
def test_shortcut_runs_report_main_combined_and_branch_accuracy(tmp_path, loss, lambda0, combined):
    trainer = hand_set_shortcut_trainer(tmp_path, lambda0, loss)
    summary = trainer.fit()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["test_acc"] == 0.0  # the network's own head: what is deployed
    assert row["combined_test_acc"] == combined
    assert row["branch_test_acc"] == {"feat": 1.0}
    assert summary["final_test_acc"] == 0.0
    assert summary["final_combined_test_acc"] == combined
    assert summary["final_branch_test_acc"] == {"feat": 1.0}
    assert json.loads((tmp_path / "summary.json").read_text())["final_branch_test_acc"] == {"feat": 1.0}
    # at inference the branches are gone: the plain network, its own head, no hook left
    model = trainer.model
    assert not any(m._forward_hooks for m in model.modules())
    plain = evaluate_model(model, trainer.test_loader, trainer.device)
    assert plain["test_acc"] == 0.0 and "combined_test_acc" not in plain


def test_runs_without_branches_evaluate_as_before():
    trainer = toy_trainer(small("plain_cnn"))
    result = trainer.evaluate()
    assert not {"combined_test_acc", "branch_test_acc"} & set(result)
    assert result == evaluate_model(trainer.model, trainer.test_loader, trainer.device,
                                    analysis=trainer.config.analysis)
    assert "final_combined_test_acc" not in trainer.summary(0.0)


def shortcut_config(**overrides) -> Config:
    base = {"train.epochs": 2, "train.progress": False, "data.batch_size": 128, "model.width": 0.25,
            "model.T": 2, "shortcut.enabled": True, "shortcut.attach": ["features.1"],
            "diagnostics.gradient_interval": 4}
    base.update(overrides)
    return load_config(recipe_path("digits")).with_overrides(base)


def test_a_shortcut_run_deploys_the_plain_model(tmp_path):
    summary = train(shortcut_config(), tmp_path, verbose=False)
    assert summary["method"] == "dspike+evolutionary"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    iters = math.ceil(1433 / 128)
    # the mean of λ0·(1 - i/I) over each epoch's iterations
    expected = [0.25 * (1 - (e * iters + (iters - 1) / 2) / (2 * iters)) for e in range(2)]
    assert [r["shortcut_lambda"] for r in rows] == pytest.approx(expected)
    # the deploy weights load into the plain registered model and give the stored accuracy
    model, payload = load_model(tmp_path / "best.pt")
    plain = models.create(payload["model_args"]["name"], **payload["model_args"]["kwargs"])
    assert list(payload["model"]) == list(plain.state_dict())
    loader = torch.utils.data.DataLoader(build_datasets("digits")[1], batch_size=256)
    assert evaluate_model(model, loader, torch.device("cpu"))["test_acc"] == pytest.approx(
        summary["best_test_acc"])
    # everything resume needs: the branches ride in the checkpoint's components
    state = load_checkpoint(tmp_path / "last.pt")["components"]["shortcut"]
    assert state["attach"] == ["features.1"]
    assert set(state["branches"]) == {"heads.0.linear.weight", "heads.0.linear.bias"}


def test_component_state_round_trip():
    model = small("plain_cnn")
    a, b = ShortcutBackprop(seed=1), ShortcutBackprop(seed=2)
    example = torch.rand(2, 1, 16, 16)
    a.build(model, example)
    b.build(model, example)
    assert not torch.equal(a.branches.heads[0].linear.weight, b.branches.heads[0].linear.weight)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.branches.heads[0].linear.weight, b.branches.heads[0].linear.weight)
    c = ShortcutBackprop(attach=["features.conv2"])
    c.build(model, example)
    with pytest.raises(UserError, match=r"same shortcut\.attach"):
        c.load_state_dict(a.state_dict())


def test_the_branches_do_not_move_the_random_stream():
    """Same seed, same batches and augmentation draws as the vanilla run: neither building
    the branches nor attaching them to a trainer (which draws a probe batch) draws from the
    global generator."""
    model, example = small("plain_cnn"), torch.rand(2, 1, 16, 16)
    torch.manual_seed(3)
    ShortcutBackprop().build(model, example)
    after_build = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after_build)
    torch.manual_seed(3)
    toy_trainer(small("plain_cnn"), [ShortcutBackprop()])
    after_attach = torch.rand(3)
    torch.manual_seed(3)
    toy_trainer(small("plain_cnn"))
    assert torch.equal(torch.rand(3), after_attach)


def test_an_attach_point_inside_a_time_distributed_layer_is_refused_by_name():
    model = small("plain_cnn")
    inner = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))  # [T·B, ...]
    with pytest.raises(UserError, match=rf"attach point '{inner}' must output .*\[T, B, C"):
        ShortcutBackprop(attach=[inner]).build(model, torch.rand(2, 1, 16, 16))


class TemperatureSetter(Component):
    """Stand-in for the adaptive Dspike temperature: sets every surrogate at epoch start."""

    name = "temperature"

    def __init__(self):
        self.seen = []

    def on_epoch_start(self, trainer, epoch):
        temperature = 2.0 + epoch
        for m in trainer.model.modules():
            if isinstance(m, surrogates.Dspike):
                m.temperature = temperature
        self.seen.append(temperature)
        return {"dspike_temperature": temperature}

    def method_name(self, base):
        return base + "-adaptive"


def test_shortcut_composes_with_a_component_that_changes_the_surrogate():
    model = small("plain_cnn", surrogate={"name": "dspike", "temperature": 3.0})
    setter, shortcut = TemperatureSetter(), ShortcutBackprop()
    trainer = toy_trainer(model, [setter, shortcut])
    trainer.fit()
    assert trainer.method_name() == "dspike-adaptive+evolutionary"
    assert setter.seen == [2.0, 3.0]
    assert {m.temperature for m in model.modules() if isinstance(m, surrogates.Dspike)} == {3.0}
    assert [set(r) >= {"dspike_temperature", "shortcut_lambda"} for r in trainer.history] == [True, True]


def test_build_components_follows_the_config():
    model = small("digits_cnn")
    names = [type(c).__name__ for c in build_components(Config(), model)]
    assert names == ["GradientDiagnostics"]
    config = Config().with_overrides({"shortcut.enabled": True, "diagnostics.gradient_interval": 0})
    (component,) = build_components(config, model)
    assert isinstance(component, ShortcutBackprop) and component.method_name("dspike") == \
        "dspike+evolutionary"
    constant = Config().with_overrides({"shortcut.enabled": True, "shortcut.schedule": "constant",
                                        "shortcut.lambda0": 1.0})
    assert build_components(constant, model)[-1].method_name("sigmoid") == "sigmoid+shortcut"


def test_shortcut_and_diagnostics_under_mixed_precision():
    diagnostics = GradientDiagnostics(interval=1)
    trainer = toy_trainer(small("plain_cnn"), [diagnostics, ShortcutBackprop()], **{"train.amp": True})
    trainer.fit()
    assert all(math.isfinite(r["train_loss"]) for r in trainer.history)
    assert len(diagnostics.records) == trainer.iteration
    assert all(math.isfinite(v) for r in diagnostics.records for v in r["norms"].values())
