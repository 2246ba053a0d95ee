"""The adaptive Dspike temperature (Algorithm 1), its config, recipes and the fdg command."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import spikegrad.methods.dspike as dspike_module
import spikegrad.temperature_search as search_module
from spikegrad.alignment import cosine_similarity, probe_batch, surrogate_gradients
from spikegrad.checkpoint import load_checkpoint
from spikegrad.cli import main
from spikegrad.component import Component
from spikegrad.config import Config, DspikeConfig, load_config
from spikegrad.demo import demo_configs, recipe_path
from spikegrad.errors import UserError
from spikegrad.fdg import finite_difference_gradient, sample_weight_indices
from spikegrad.methods.dspike import AdaptiveTemperature, candidate_temperatures, choose_temperature
from spikegrad.modes import eval_mode
from spikegrad.run import build_components, build_parts, train
from spikegrad.surrogates import Dspike
from spikegrad.temperature_search import decide
from spikegrad.trainer import Trainer

DSPIKE_RECIPES = sorted(Path(str(recipe_path("digits"))).parent.glob("*_dspike.yaml"))


def tiny_config(**overrides) -> Config:
    base = {"train.epochs": 3, "train.progress": False, "data.batch_size": 128,
            "model.width": 0.25, "model.T": 2, "dspike.adaptive": True}
    if overrides.get("dspike.adaptive", True):  # search settings, refused without the search
        base.update({"dspike.num_weights": 16, "dspike.batch_size": 32})
    base.update(overrides)
    return load_config(recipe_path("digits")).with_overrides(base)


def test_candidates_are_clamped_sorted_and_unique():
    assert candidate_temperatures(3.0, 0.5, [-1, 0, 1], 0.5) == [2.5, 3.0, 3.5]
    assert candidate_temperatures(0.8, 0.5, [-1, 0, 1], 0.5) == [0.5, 0.8, 1.3]
    assert candidate_temperatures(0.5, 0.5, [-2, -1, 0, 2], 0.5) == [0.5, 1.5]
    assert candidate_temperatures(3.0, 1.0, [-1, 1], 0.5) == [2.0, 4.0]


def test_choice_is_the_most_similar_and_ties_stay_close_to_the_current_temperature():
    assert choose_temperature([2.5, 3.0, 3.5], [0.2, 0.1, 0.3], 3.0) == 3.5
    assert choose_temperature([2.5, 3.0, 3.5], [0.2, 0.2, 0.2], 3.0) == 3.0
    assert choose_temperature([2.5, 3.5], [0.0, 0.0], 3.4) == 3.5


def trainer_for(config: Config) -> tuple[Trainer, AdaptiveTemperature]:
    parts = build_parts(config)
    components = build_components(config, parts.model)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, components=components,
                      verbose=False)
    return trainer, components[0]


PAPER = {"dspike.rule": "paper", "dspike.bn_mode": "eval", "dspike.probe_batches": 1}


@pytest.mark.parametrize("options", [PAPER, {}], ids=["paper", "default"])
def test_search_picks_the_candidate_whose_gradient_matches_the_fdg(monkeypatch, options):
    """Constructed case: the 'FDG' is the Dspike gradient at b = 2, the search starts at 3."""
    config = tiny_config(**{"dspike.b0": 3.0, "dspike.delta": 1.0, "dspike.candidates": [-1, 0, 1]},
                         **options)
    trainer, search = trainer_for(config)
    group = search.groups[0]

    def fake_fdg(model, layer, inputs, targets, epsilon, indices, loss_fn, max_stacked, bn_mode, forward):
        assignment = {n: Dspike(2.0) for n in group.neurons}
        return surrogate_gradients(model, layer, inputs, targets, [assignment], indices, loss_fn, bn_mode,
                                   forward)[0]

    monkeypatch.setattr(search_module, "finite_difference_gradient", fake_fdg)  # where the search calls it
    row = search.on_epoch_start(trainer.context, 1)
    assert set(row["dspike_similarity"]) == {"2", "3", "4"}
    assert row["dspike_similarity"]["2"] == pytest.approx(1.0)
    assert row["dspike_similarity"]["3"] < 1.0 - 1e-6
    assert row["dspike_temperature"] == 2.0
    assert all(n.surrogate.temperature == 2.0 for n in group.neurons)
    assert search.state_dict() == {"temperatures": {"model": 2.0}}


def test_first_epoch_keeps_b0_and_searches_follow_every(monkeypatch):
    trainer, search = trainer_for(tiny_config(**{"dspike.b0": 2.0, "dspike.every": 2}))
    calls = []
    monkeypatch.setattr(search, "search", lambda tr, epoch: calls.append(epoch) or {"model": {}})
    rows = [search.on_epoch_start(trainer.context, e) for e in range(5)]
    assert calls == [2, 4]
    assert [("dspike_similarity" in r) for r in rows] == [False, False, True, False, True]
    assert all(r["dspike_temperature"] == 2.0 for r in rows)


@pytest.mark.parametrize("every, first_epoch, searched", [(1, 0, [0, 1, 2, 3, 4]), (2, 0, [0, 2, 4]),
                                                          (1, 3, [3, 4]), (2, 3, [4]), (3, 1, [3])])
def test_first_epoch_moves_the_first_search(monkeypatch, every, first_epoch, searched):
    """``dspike.first_epoch=0`` also searches before any training (Algorithm 1's first step)."""
    trainer, search = trainer_for(tiny_config(**{"train.epochs": 5, "dspike.every": every,
                                                 "dspike.first_epoch": first_epoch}))
    calls = []
    monkeypatch.setattr(search, "search", lambda tr, epoch: calls.append(epoch) or {"model": {}})
    for e in range(5):
        search.on_epoch_start(trainer.context, e)
    assert calls == searched
    assert dspike_module.first_search_epoch(every, first_epoch) == searched[0]


def test_a_search_before_any_training_is_recorded_in_the_first_row(tmp_path):
    train(tiny_config(**{**PAPER, "train.epochs": 1, "dspike.first_epoch": 0}), tmp_path, verbose=False)
    [row] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(row["dspike_similarity"]) == 3 and row["dspike_search_seconds"] > 0
    with pytest.raises(UserError, match=r"dspike\.first_epoch.*>= 0"):
        load_config(None, ["dspike.first_epoch=-1"])


def test_search_leaves_the_global_random_state_and_the_training_mode_alone():
    trainer, search = trainer_for(tiny_config(**{"model.encoder": "poisson"}))
    trainer.model.train()
    before = torch.get_rng_state()
    search.search(trainer.context, 1)
    assert torch.equal(before, torch.get_rng_state())
    assert trainer.model.training


def test_a_real_run_moves_the_temperature_and_records_it(tmp_path):
    """The paper's rule moves b on every search's argmax (the default rule may rightly stay)."""
    summary = train(tiny_config(**PAPER), tmp_path, verbose=False)
    assert summary["method"] == "dspike-adaptive"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    temps = [r["dspike_temperature"] for r in rows]
    assert temps[0] == 3.0 and "dspike_similarity" not in rows[0]
    for r in rows[1:]:
        assert len(r["dspike_similarity"]) == 3 and r["dspike_search_seconds"] > 0
        assert all(-1.0 <= s <= 1.0 for s in r["dspike_similarity"].values())
    assert len(set(temps)) > 1, f"the temperature never moved: {temps}"
    state = load_checkpoint(tmp_path / "last.pt")["components"]["dspike"]
    assert state == {"temperatures": {"model": temps[-1]}}


def test_the_search_composes_with_shortcut_branches_in_one_run(tmp_path):
    """Algorithm 1 probes the plain network while the branches train it; both are logged."""
    summary = train(tiny_config(**{"shortcut.enabled": True}), tmp_path, verbose=False)
    assert summary["method"] == "dspike-adaptive+evolutionary"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all({"dspike_temperature", "shortcut_lambda"} <= set(r) for r in rows)
    assert all(len(r["dspike_similarity"]) == 3 for r in rows[1:])
    lambdas = [r["shortcut_lambda"] for r in rows]
    assert lambdas == sorted(lambdas, reverse=True) and 0 < lambdas[-1] < lambdas[0] < 0.25
    weights = load_checkpoint(tmp_path / "best.pt")["model"]
    assert not any("branch" in key for key in weights)


@pytest.mark.parametrize("loss", ["combined", "separate"])
def test_under_shortcut_the_search_differentiates_the_training_loss(monkeypatch, loss):
    """With branches on, the loss of the FDG and of the surrogate gradients is the loss the
    training step optimises (main + λ·branches at the next step's λ), not the main head's:
    the same value on the same batch, and the stacked FDG is that loss's central difference."""
    config = tiny_config(**{"shortcut.enabled": True, "shortcut.loss": loss, "shortcut.lambda0": 1.0,
                            "dspike.num_weights": 4, "dspike.probe_batches": 1, "dspike.bn_mode": "eval",
                            "dspike.rule": "paper"})
    trainer, search = trainer_for(config)
    trainer.iteration = trainer.total_iterations // 4  # λ = 0.75 on the linear schedule
    seen = {}
    real_fdg, real_grads = search_module.finite_difference_gradient, search_module.surrogate_gradients

    def loss_of(model, forward, loss_fn, inputs, targets):
        with torch.no_grad(), eval_mode(model):
            return float(loss_fn(model(inputs) if forward is None else forward(model, inputs), targets))

    def fdg(model, layer, inputs, targets, epsilon, indices, loss_fn, max_stacked, bn_mode, forward):
        seen.update(fdg_loss=loss_of(model, forward, loss_fn, inputs, targets), inputs=inputs,
                    targets=targets, epsilon=epsilon, indices=indices, layer=layer)
        seen["fdg"] = real_fdg(model, layer, inputs, targets, epsilon, indices, loss_fn, max_stacked,
                               bn_mode, forward)
        return seen["fdg"]

    def grads(model, layer, inputs, targets, assignments, indices, loss_fn, bn_mode, forward):
        seen["grads_loss"] = loss_of(model, forward, loss_fn, inputs, targets)
        return real_grads(model, layer, inputs, targets, assignments, indices, loss_fn, bn_mode, forward)

    monkeypatch.setattr(search_module, "finite_difference_gradient", fdg)
    monkeypatch.setattr(search_module, "surrogate_gradients", grads)
    search.search(trainer.context, 1)
    model, x, y = trainer.model, seen["inputs"], seen["targets"]

    def step_loss():  # what the training step computes, in the probes' eval mode
        with torch.no_grad(), eval_mode(model):
            return float(trainer.compute_loss(x, y).loss)

    with torch.no_grad(), eval_mode(model):
        main_only = float(trainer.default_loss(model(x), y))
    assert seen["fdg_loss"] == pytest.approx(step_loss(), rel=1e-6)
    assert seen["grads_loss"] == pytest.approx(step_loss(), rel=1e-6)
    assert abs(main_only - step_loss()) > 1e-3  # the main head's loss is another loss
    forward, loss_fn = trainer.context.search_objective()  # what a search calls, as functions
    with torch.no_grad(), eval_mode(model):
        assert float(loss_fn(forward(model, x), y)) == pytest.approx(step_loss(), rel=1e-6)
    flat, expected = seen["layer"].weight.data.view(-1), []
    for i in seen["indices"].tolist():  # the central difference of the step's loss, by hand
        original = flat[i].clone()
        flat[i] = original + seen["epsilon"]
        plus = step_loss()
        flat[i] = original - seen["epsilon"]
        minus = step_loss()
        flat[i] = original
        expected.append((plus - minus) / (2 * seen["epsilon"]))
    assert torch.allclose(seen["fdg"].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    assert seen["fdg"].abs().sum() > 0


def test_without_branches_the_search_objective_is_the_default_loss():
    trainer, _ = trainer_for(tiny_config())
    assert trainer.context.search_objective() == (None, trainer.context.default_loss)


def test_state_restores_the_temperature_into_a_fresh_model():
    config = tiny_config()
    trainer, search = trainer_for(config)
    fresh = AdaptiveTemperature(config.dspike)
    fresh.load_state_dict({"temperatures": {"model": 1.25}})
    fresh.attach(trainer.context)
    assert all(n.surrogate.temperature == 1.25 for n in fresh.groups[0].neurons)
    search.load_state_dict({"temperatures": {"model": 4.5}})  # after attach: applied at once
    assert all(n.surrogate.temperature == 4.5 for n in search.groups[0].neurons)


def test_per_layer_temperatures_one_per_unit(tmp_path):
    config = tiny_config(**{"dspike.per_layer": True, "train.epochs": 2})
    train(config, tmp_path, verbose=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    units = ["features.0", "features.1", "features.2"]
    assert list(rows[-1]["dspike_temperatures"]) == units
    assert list(rows[-1]["dspike_similarities"]) == units
    assert rows[-1]["dspike_similarity"] == rows[-1]["dspike_similarities"]["features.0"]
    temps = rows[-1]["dspike_temperatures"]
    assert rows[-1]["dspike_temperature"] == pytest.approx(sum(temps.values()) / 3)


def test_per_layer_search_probes_each_units_own_layer_and_sets_only_its_neurons(monkeypatch):
    """dspike.per_layer: unit l's temperature is chosen on the FDG of unit l's first weight
    layer, over candidates applied to unit l's neurons alone; the other units keep theirs."""
    trainer, search = trainer_for(tiny_config(**{"dspike.per_layer": True, **PAPER}))
    model = trainer.model
    units = dict(model.units())
    seen = []
    wins = iter([0, 2, 1])  # unit 0 takes the lowest candidate, unit 1 the highest, unit 2 keeps b

    def fake_matrix(model, layer, batches, index_sets, epsilon, assignments, *rest):
        seen.append((layer, [set(map(id, a)) for a in assignments],
                     [a[next(iter(a))].temperature for a in assignments]))
        row = torch.zeros(len(assignments), dtype=torch.float64)
        row[next(wins)] = 1.0
        return row[None]

    monkeypatch.setattr(dspike_module, "similarity_matrix", fake_matrix)
    row = search.on_epoch_start(trainer.context, 1)
    assert len(seen) == 3
    for (layer, neuron_sets, candidates), name in zip(seen, units, strict=True):
        first = next(m for m in units[name].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert layer is first
        own = {id(m) for m in units[name].modules() if isinstance(getattr(m, "surrogate", None), Dspike)}
        assert own and all(ids == own for ids in neuron_sets)
        assert candidates == [2.5, 3.0, 3.5]
    assert row["dspike_temperatures"] == {"features.0": 2.5, "features.1": 3.5, "features.2": 3.0}
    for name, b in row["dspike_temperatures"].items():
        temps = {m.surrogate.temperature for m in units[name].modules()
                 if isinstance(getattr(m, "surrogate", None), Dspike)}
        assert temps == {b}


def test_fdg_command_on_event_frames_keeps_time_first(tmp_path, capsys):
    """Event datasets yield [T, ...] samples; the probe batch must be [T, B, ...] as in training."""
    config = load_config(recipe_path("event_digits")).with_overrides({
        "train.epochs": 1, "train.progress": False, "train.threads": 1, "model.width": 0.25,
        "data.batch_size": 64,
    })
    train(config, tmp_path / "run", verbose=False)
    code = main(["fdg", str(tmp_path / "run" / "last.pt"), "--batch-size", "16", "--num-weights",
                 "8", "--points", "1", "--surrogates", "dspike", "--out", str(tmp_path / "fdg")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fdg.json").read_text())
    assert report["batch_size"] == 16


def test_bad_dspike_settings_are_user_errors():
    with pytest.raises(UserError, match=r"dspike\.candidates"):
        AdaptiveTemperature(DspikeConfig(candidates=[]))
    with pytest.raises(UserError, match=r"dspike\.rule=significant needs dspike\.probe_batches >= 2"):
        AdaptiveTemperature(DspikeConfig(rule="significant", probe_batches=1))
    with pytest.raises(UserError, match=r"dspike\.bn_mode"):
        tiny_config(**{"dspike.bn_mode": "frozen"})
    with pytest.raises(UserError, match=r"dspike\.rule"):
        tiny_config(**{"dspike.rule": "argmax"})
    with pytest.raises(UserError, match=r"'dspike\.probe_batches' must be >= 1, got 0"):
        tiny_config(**{"dspike.probe_batches": 0})
    with pytest.raises(UserError, match=r"'dspike\.probe_batches' must be <= 1000"):
        tiny_config(**{"dspike.probe_batches": 1001})
    with pytest.raises(UserError, match="per_layer"):
        AdaptiveTemperature(DspikeConfig(per_layer=True, layer="features.0"))
    with pytest.raises(UserError, match=r"model\.surrogate\.name=dspike"):
        trainer_for(tiny_config(**{"model.surrogate": {"name": "sigmoid"}}))
    with pytest.raises(UserError, match="unknown weight layer"):
        trainer_for(tiny_config(**{"dspike.layer": "features.7"}))
    with pytest.raises(UserError, match=r"dspike\.epsilon"):
        tiny_config(**{"dspike.epsilon": 0})
    with pytest.raises(UserError, match=r"below dspike\.b_min"):
        trainer_for(tiny_config(**{"dspike.b0": 0.1, "dspike.b_min": 0.5}))
    assert not any(isinstance(c, AdaptiveTemperature)
               for c in build_components(tiny_config(**{"model.kind": "ann"}), None))


@pytest.mark.parametrize("recipe", DSPIKE_RECIPES, ids=lambda p: p.name)
def test_every_dspike_recipe_loads_with_the_papers_accuracy_and_the_search_on(recipe):
    config = load_config(recipe)
    assert config.paper.accuracy is not None and "Dspike" in config.paper.source
    assert config.dspike.adaptive and config.model.surrogate == {"name": "dspike", "temperature": 3.0,
                                                                 "window": 1.0}
    assert config.model.neuron.leak == 0.25 and config.model.neuron.threshold == 0.5
    assert config.model.neuron.reset == "hard" and config.model.name == "resnet18"
    assert recipe.name == f"{config.data.name}_resnet18_t{config.model.T}_dspike.yaml"


def test_the_demos_dspike_row_searches_the_temperature():
    assert len(DSPIKE_RECIPES) == 5
    rows = {row.folder: config for row, config in demo_configs(quick=True)}
    assert rows["dspike"].dspike.adaptive and not load_config(recipe_path("digits")).dspike.adaptive


def test_fdg_command_writes_a_table_json_and_plot(tmp_path, capsys):
    config = tiny_config(**{"train.epochs": 1, "dspike.adaptive": False})
    train(config, tmp_path / "run", verbose=False)
    out = tmp_path / "analysis" / "fdg"
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert main(["fdg", checkpoint, "--out", str(out)]) == 2  # no folders are made
    assert "does not exist; create it first" in capsys.readouterr().err
    out.parent.mkdir()
    code = main(["fdg", checkpoint, "--batch-size", "32", "--num-weights", "24", "--points", "3",
                 "--surrogates", "dspike,sigmoid", "--batches", "1", "--extend", "0", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "dspike" in stdout and "sigmoid" in stdout and "cosine" in stdout
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["probed"] == 24 and len(report["points"]) == 6
    assert report["epsilon_relative"] == DspikeConfig().epsilon
    assert report["bn_mode"] == DspikeConfig().bn_mode == "train"
    assert "batch norm in train mode" in stdout
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert main(["fdg", checkpoint, "--layer", "nope"]) == 2
    assert "unknown weight layer 'nope'" in capsys.readouterr().err
    assert main(["fdg", checkpoint, "--batch-size", "32", "--num-weights", "24", "--points", "1",
                 "--surrogates", "dspike", "--bn-mode", "eval", "--out", str(out)]) == 0
    evaluated = json.loads(out.with_suffix(".json").read_text())
    assert evaluated["bn_mode"] == "eval" and evaluated["points"][0]["similarity"] != report["points"][0][
        "similarity"]


# --------------------------------------------------------------------------- the decision rule


def test_significant_rule_keeps_b_within_the_standard_error_and_moves_beyond_it():
    candidates = [2.5, 3.0, 3.5]
    base = torch.tensor([0.40, 0.10, 0.70, 0.55], dtype=torch.float64)  # batch-to-batch spread
    # 3.5 beats 3.0 by 0.01, 0.03, 0.02, 0.02: mean 0.02, SE = std/2 = 0.0040825 -> moves
    clear = torch.stack([base - 0.05, base, base + torch.tensor([0.01, 0.03, 0.02, 0.02])], 1)
    d = decide("significant", candidates, clear, 3.0)
    assert d.chosen == 3.5
    assert d.difference[2] == pytest.approx(0.02)
    assert d.se[2] == pytest.approx(math.sqrt(((0.01 - 0.02) ** 2 + 0.01 ** 2) / 3) / 2)
    assert d.se[1] == 0.0 and d.mean[1] == pytest.approx(float(base.mean()))
    # 3.5 beats 3.0 by 0.05, -0.03, 0.04, -0.02: mean 0.01 < SE 0.0212 -> keeps b, the paper's moves
    noisy = torch.stack([base - 0.05, base, base + torch.tensor([0.05, -0.03, 0.04, -0.02])], 1)
    assert decide("significant", candidates, noisy, 3.0).chosen == 3.0
    assert decide("paper", candidates, noisy, 3.0).chosen == 3.5
    # two winners: the higher mean wins; what a batch adds to every candidate cancels
    both = torch.stack([base + 0.1, base, base + 0.05], 1)
    assert decide("significant", candidates, both, 3.0).chosen == 2.5
    shifted = both + torch.tensor([[5.0], [-3.0], [0.0], [1.0]], dtype=torch.float64)
    assert decide("significant", candidates, shifted, 3.0).chosen == 2.5
    tie = torch.stack([base + 0.05, base, base + 0.05], 1)
    assert decide("significant", [2.0, 3.0, 3.5], tie, 3.0).chosen == 3.5  # closest to b
    with pytest.raises(UserError, match="at least two probe batches"):
        decide("significant", candidates, clear[:1], 3.0)
    with pytest.raises(UserError, match=r"must be one of \['paper', 'significant'\]"):
        decide("vote", candidates, clear, 3.0)


def test_paper_rule_on_one_batch_is_choose_temperature():
    for candidates, row in [([2.5, 3.0, 3.5], [0.2, 0.1, 0.3]), ([2.5, 3.0, 3.5], [0.2, 0.2, 0.2]),
                            ([2.5, 3.1, 3.5], [0.3, 0.1, 0.3]), ([0.5, 1.0], [0.4, 0.1])]:
        got = decide("paper", candidates, torch.tensor([row], dtype=torch.float64), 3.0)
        assert got.chosen == choose_temperature(candidates, row, 3.0)
        assert got.mean == row and all(math.isnan(v) for v in got.se)  # no standard error from one batch
    two = torch.tensor([[0.2, 0.1, 0.3], [0.5, 0.1, 0.3]], dtype=torch.float64)
    assert decide("paper", [2.5, 3.0, 3.5], two, 3.0).chosen == 2.5  # argmax of the mean


def reference_paper_search(trainer, search, epoch):
    """The search as Algorithm 1 and the code before several batches and batch-norm modes did it:
    one probe batch seeded by seed·1000003 + epoch, the weights from a generator of that seed,
    FDG and surrogate gradients in eval mode, the argmax of the cosines."""
    group, cfg = search.groups[0], search.config
    seed = search.seed * 1_000_003 + epoch
    loader = trainer.train_loader
    inputs, targets = probe_batch(trainer.model, loader.dataset, cfg.batch_size, seed, trainer.device,
                                  loader.collate_fn)
    weight = group.layer.weight
    indices = sample_weight_indices(weight.numel(), cfg.num_weights, torch.Generator().manual_seed(seed))
    rms = float(weight.detach().pow(2).mean().sqrt())
    fdg = finite_difference_gradient(trainer.model, group.layer, inputs, targets, cfg.epsilon * rms, indices,
                                     trainer.default_loss, cfg.max_stacked)
    current = search.temperatures[group.name]
    candidates = candidate_temperatures(current, cfg.delta, cfg.candidates, cfg.b_min)
    assignments = [{n: n.surrogate.with_sharpness(b) for n in group.neurons} for b in candidates]
    grads = surrogate_gradients(trainer.model, group.layer, inputs, targets, assignments, indices,
                                trainer.default_loss)
    sims = [cosine_similarity(fdg, g) for g in grads]
    chosen = choose_temperature(candidates, sims, current)
    return {f"{b:.6g}": v for b, v in zip(candidates, sims, strict=True)}, chosen


def test_the_paper_options_reproduce_algorithm_1_as_before():
    trainer, search = trainer_for(tiny_config(**PAPER, **{"train.epochs": 6}))
    for x, y in trainer.train_loader:  # one epoch: batch norm's statistics let the network fire
        trainer.train_step(*trainer.to_device(x, y))
    moved = False
    for epoch in range(1, 6):
        trainer.train_step(*trainer.to_device(x, y))  # new weights and statistics between searches
        expected, chosen = reference_paper_search(trainer, search, epoch)
        before = search.temperatures["model"]
        row = search.on_epoch_start(trainer.context, epoch)
        assert row["dspike_similarity"] == expected  # exactly: same batch, weights and arithmetic
        assert row["dspike_temperature"] == chosen and "dspike_similarity_se" not in row
        moved |= chosen != before
    assert moved


def test_the_default_search_is_deterministic_and_records_its_standard_errors():
    rows = []
    for _ in range(2):
        trainer, search = trainer_for(tiny_config())
        rows.append(search.on_epoch_start(trainer.context, 1))
    assert rows[0] == {**rows[1], "dspike_search_seconds": rows[0]["dspike_search_seconds"]}
    config = search.config
    assert (config.rule, config.bn_mode, config.probe_batches) == ("significant", "train", 4)
    se = rows[0]["dspike_similarity_se"]
    assert set(se) == set(rows[0]["dspike_similarity"]) == {"2.5", "3", "3.5"}
    assert se["3"] == 0.0 and se["2.5"] > 0 and se["3.5"] > 0


def test_a_real_run_with_the_default_rule_moves_only_beyond_the_standard_error(tmp_path):
    train(tiny_config(**{"train.epochs": 4}), tmp_path, verbose=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for before, row in itertools.pairwise(rows):
        b, chosen = before["dspike_temperature"], row["dspike_temperature"]
        sims, se = row["dspike_similarity"], row["dspike_similarity_se"]
        beats = {c for c in sims if sims[c] - sims[f"{b:.6g}"] > se[c]}
        assert (f"{chosen:.6g}" in beats) if chosen != b else not beats


def test_the_search_differentiates_the_loss_of_a_component_that_defines_one(monkeypatch):
    """A component owning the training loss (e.g. shortcut branches) gives the search its objective."""

    def forward(model, inputs):
        out = model(inputs)
        return out, 0.5 * out

    def loss_fn(outputs, targets):
        return sum(trainer.default_loss(o, targets) for o in outputs)

    class Owner(Component):
        name = "owner"

        def search_objective(self, ctx):
            asked.append(ctx)
            return forward, loss_fn

    asked = []
    seen = []
    original = search_module.finite_difference_gradient

    def spy(model, layer, inputs, targets, epsilon, indices, loss, max_stacked, bn_mode, fwd):
        seen.append((fwd, loss))
        return original(model, layer, inputs, targets, epsilon, indices, loss, max_stacked, bn_mode, fwd)

    config = tiny_config(**PAPER)
    parts = build_parts(config)
    search = AdaptiveTemperature(config.dspike)
    owner = Owner()
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, components=[search, owner],
                      verbose=False)
    monkeypatch.setattr(search_module, "finite_difference_gradient", spy)
    search.on_epoch_start(trainer.context, 1)
    assert asked and all(ctx is trainer.context for ctx in asked)
    assert seen == [(forward, loss_fn)]
    assert trainer.context.components == (search, owner)
    assert trainer.context.search_objective() == (forward, loss_fn)
    # without such a component: the plain forward pass and the run's loss
    plain = trainer_for(config)[0].context
    assert plain.search_objective() == (None, plain.default_loss)


def test_the_search_refuses_two_components_that_each_define_its_loss():
    class Owner(Component):
        def search_objective(self, ctx):
            return None, ctx.default_loss

    first, second = Owner(), Owner()
    first.name, second.name = "first", "second"
    config = tiny_config(**PAPER)
    parts = build_parts(config)
    search = AdaptiveTemperature(config.dspike)
    with pytest.raises(UserError, match=r"components \['first', 'second'\] each define one"):
        Trainer(parts.model, parts.train_set, parts.test_set, config,  # refused before training
                components=[search, first, second], verbose=False)


def test_the_significant_rule_compares_with_b_also_when_the_candidates_leave_it_out(monkeypatch):
    trainer, search = trainer_for(tiny_config(**{"dspike.candidates": [-1, 1], "dspike.probe_batches": 2}))
    seen = []

    def fake_matrix(model, layer, batches, index_sets, epsilon, assignments, *rest):
        seen.append(([a[next(iter(a))].temperature for a in assignments], len(batches), len(index_sets)))
        return torch.tensor([[0.5, 0.4, 0.1], [0.6, 0.5, 0.2]], dtype=torch.float64)

    monkeypatch.setattr(dspike_module, "similarity_matrix", fake_matrix)
    row = search.on_epoch_start(trainer.context, 1)
    assert seen == [([2.5, 3.0, 3.5], 2, 2)]
    assert row["dspike_temperature"] == 2.5  # beats 3 by 0.1 in both batches (SE 0)
    assert row["dspike_similarity_se"] == pytest.approx({"2.5": 0.0, "3": 0.0, "3.5": 0.0}, abs=1e-12)


def test_an_adaptive_run_too_short_to_search_is_refused(tmp_path):
    """The first search is at the start of epoch every + 1: a run of fewer epochs would be
    labelled dspike-adaptive without ever searching."""
    with pytest.raises(UserError, match=r"dspike.adaptive never searches in train.epochs=2 with "
                                        r"dspike.every=2 and dspike.first_epoch=1 \(the first search is "
                                        r"at the start of epoch 3\)"):
        train(tiny_config(**{"train.epochs": 2, "dspike.every": 2}), tmp_path / "short", verbose=False)
    assert not (tmp_path / "short" / "last.pt").exists()
    AdaptiveTemperature.check_config(tiny_config(**{"train.epochs": 3, "dspike.every": 2}))  # one search
    AdaptiveTemperature.check_config(tiny_config(**{"train.epochs": 1, "dspike.first_epoch": 0}))
    with pytest.raises(UserError, match=r"first_epoch=3 \(the first search is at the start of epoch 4\)"):
        AdaptiveTemperature.check_config(tiny_config(**{"train.epochs": 3, "dspike.first_epoch": 3}))
    # a search called by hand (as the search study does) needs no epochs: only configs are checked
    config = tiny_config(**{"train.epochs": 1})
    parts = build_parts(config)
    search = AdaptiveTemperature(config.dspike)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, components=[search],
                      verbose=False)
    assert search.search(trainer.context, epoch=1)


@pytest.mark.parametrize("name", ["digits_cnn", "resnet18", "vgg11_ltl", "plain_cnn"])
def test_the_global_search_probes_the_layer_that_sees_the_input_and_sets_every_neuron(name):
    """Algorithm 1 takes the FDG of the first layer: the weight layer the input reaches first,
    found here by running the model, not by the code under test's own layer list."""
    from spikegrad import models
    from spikegrad.neurons import SpikingNeuron

    channels = 1 if name == "digits_cnn" else 3
    model = models.create(name, num_classes=10, T=2, width=0.125, in_channels=channels, surrogate="dspike")
    [group] = AdaptiveTemperature(DspikeConfig(adaptive=True)).build_groups(model)
    called = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(lambda mod, args, out: called.append(mod))
    size = {"digits_cnn": 8, "vgg11_ltl": 32}.get(name, 16)  # the LTL VGG keeps a 2×2 map of 32×32
    model(torch.rand(2, channels, size, size))
    assert group.layer is called[0]
    assert set(map(id, group.neurons)) == {id(m) for m in model.modules() if isinstance(m, SpikingNeuron)}
