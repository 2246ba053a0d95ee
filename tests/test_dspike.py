"""The adaptive Dspike temperature (Algorithm 1), its config, recipes and the fdg command."""

import json
from pathlib import Path

import pytest
import torch

import spikegrad.methods.dspike as dspike_module
from spikegrad.alignment import surrogate_gradients
from spikegrad.checkpoint import load_checkpoint
from spikegrad.cli import main
from spikegrad.config import Config, DspikeConfig, load_config
from spikegrad.demo import demo_configs, recipe_path
from spikegrad.errors import UserError
from spikegrad.methods.dspike import AdaptiveTemperature, candidate_temperatures, choose_temperature
from spikegrad.run import build_components, build_parts, train
from spikegrad.surrogates import Dspike
from spikegrad.trainer import Trainer

DSPIKE_RECIPES = sorted(Path(str(recipe_path("digits"))).parent.glob("*_dspike.yaml"))


def tiny_config(**overrides) -> Config:
    base = {"train.epochs": 3, "train.progress": False, "data.batch_size": 128,
            "model.width": 0.25, "model.T": 2, "dspike.adaptive": True,
            "dspike.num_weights": 16, "dspike.batch_size": 32}
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


def test_search_picks_the_candidate_whose_gradient_matches_the_fdg(monkeypatch):
    """Constructed case: the 'FDG' is the Dspike gradient at b = 2, the search starts at 3."""
    config = tiny_config(**{"dspike.b0": 3.0, "dspike.delta": 1.0, "dspike.candidates": [-1, 0, 1]})
    trainer, search = trainer_for(config)
    group = search.groups[0]

    def fake_fdg(model, layer, inputs, targets, epsilon, indices, loss_fn, max_stacked):
        assignment = {n: Dspike(2.0) for n in group.neurons}
        return surrogate_gradients(model, layer, inputs, targets, [assignment], indices, loss_fn)[0]

    monkeypatch.setattr(dspike_module, "finite_difference_gradient", fake_fdg)
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


def test_search_leaves_the_global_random_state_and_the_training_mode_alone():
    trainer, search = trainer_for(tiny_config(**{"model.encoder": "poisson"}))
    trainer.model.train()
    before = torch.get_rng_state()
    search.search(trainer.context, 1)
    assert torch.equal(before, torch.get_rng_state())
    assert trainer.model.training


def test_a_real_run_moves_the_temperature_and_records_it(tmp_path):
    summary = train(tiny_config(), tmp_path, verbose=False)
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


def test_state_restores_the_temperature_into_a_fresh_model():
    config = tiny_config()
    trainer, search = trainer_for(config)
    fresh = AdaptiveTemperature(config.dspike)
    fresh.load_state_dict({"temperatures": {"model": 1.25}})
    fresh.attach(trainer)
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
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert main(["fdg", checkpoint, "--layer", "nope"]) == 2
    assert "unknown weight layer 'nope'" in capsys.readouterr().err
