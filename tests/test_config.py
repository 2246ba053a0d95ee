import subprocess
import sys

import pytest

from spikegrad.config import Config, load_config
from spikegrad.errors import UserError
from spikegrad.recipes import recipe_files


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model: {T: 6}\n"), ["optim.lr=0.05", "data.augment=[crop:4]"])
    assert cfg.model.T == 6 and cfg.optim.lr == 0.05 and cfg.data.augment == ["crop:4"]
    assert cfg.train.epochs == Config().train.epochs


def test_extends_merges_and_a_renamed_surrogate_replaces(tmp_path):
    write(tmp_path, "model: {T: 6, surrogate: {name: dspike, temperature: 2}}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nmodel: {surrogate: {name: sigmoid, alpha: 4}}\n")
    cfg = load_config(child)
    assert cfg.model.T == 6
    assert cfg.model.surrogate == {"name": "sigmoid", "alpha": 4}


@pytest.mark.parametrize("text,match", [
    ("model: {nmae: x}", r"unknown config key 'model.nmae' \(did you mean 'model.name'\?\)"),
    ("trian: {epochs: 3}", r"unknown config key 'trian' \(did you mean 'train'\?\)"),
    ("train: {epochs: three}", r"'train.epochs' must be an integer"),
    ("train: {amp: 1}", r"'train.amp' must be true or false"),
    ("model: {T: 0}", r"'model.T' must be > 0"),
    ("model: {T: -2}", r"'model.T' must be > 0"),
    ("model: {neuron: {reset: zero}}", r"'model.neuron.reset' must be one of"),
    ("optim: {lr: -1}", r"'optim.lr' must be > 0"),
])
def test_bad_configs_name_the_key(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("override,key", [
    ("model.nmae=x", "model.nmae"),
    ("train.epochs=abc", "train.epochs"),
    ("model.T=0", "model.T"),
])
def test_cli_exits_2_with_a_message_naming_the_key(tmp_path, override, key):
    recipe = write(tmp_path, "train: {epochs: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spikegrad.cli", "train", str(recipe), "--set", override,
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")



LTL_RECIPES = [p for p in recipe_files() if load_config(p).ltl.mode != "none"]


@pytest.mark.parametrize("path", LTL_RECIPES, ids=[p.stem for p in LTL_RECIPES])
def test_every_ltl_recipe_names_the_ann_twin_as_its_teacher(path):
    config = load_config(path)
    teacher = load_config(path.parent / f"{config.ltl.teacher_recipe.removesuffix('.yaml')}.yaml",
                          config.ltl.teacher_set)
    assert teacher.model.kind == "ann" and teacher.ltl.mode == "none"
    assert teacher.model.name == config.model.name and teacher.data.name == config.data.name
    # the student drops batch norm; the published teacher trains with dropout, its student not
    student_options = {k: v for k, v in config.model.options.items() if k != "batch_norm"}
    teacher_options = {k: v for k, v in teacher.model.options.items() if k != "dropout"}
    assert teacher_options == student_options
    assert config.model.options.get("batch_norm") is False  # the published student has no BN


def test_ltl_mode_none_survives_a_command_line_override():
    config = load_config(None, ["ltl.mode=none", "ltl.T_warm=3"])
    assert config.ltl.mode == "none" and config.ltl.T_warm == 3


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; a float key accepts it (but not 'inf' or words)."""
    cfg = load_config(write(tmp_path, "optim: {lr: 1e-3}\n"), ["optim.weight_decay=5E-4"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 5e-4
    with pytest.raises(UserError, match=r"'optim\.lr' must be a number, got 'inf'"):
        load_config(None, ["optim.lr=inf"])
