"""Every command in README.md runs as written.

The test reads README.md itself (no copy of its lines): every ```bash block, line by line
(``\\`` continuations joined, comments dropped), in order, in a temporary folder holding a
copy of configs/, then the ```python block. To stay within a minute, the built-in digits
are cut to 160 training and 64 test images, every run trains 2 epochs and the Dspike
temperature search probes fewer weights on a smaller batch (``SMALL``, added to every config
loaded), and ``spikegrad fdg`` probes fewer weights and points (``FDG_SMALL``): the
commands, their recipes and their flags are the README's own.

Commands that cannot run here are checked as far as they can be:

- ``make demo`` runs the ``spikegrad`` line of the Makefile's ``demo`` target; ``make test``
  is this suite itself: its target must exist;
- ``spikegrad download`` needs the network, and a recipe of a dataset that is not built in
  needs those downloaded files: parsed, and the recipe loaded;
- ``torchrun`` starts two processes (tests/test_distributed.py trains under torchrun): its
  ``spikegrad`` arguments are parsed and the recipe loaded;
- ``spikegrad export`` needs the optional ``nir`` package: parsed only where it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from torch.utils.data import Subset

import spikegrad.config
import spikegrad.demo
from spikegrad.cli import DOWNLOADABLE, build_parser, main
from spikegrad.data import _registry
from spikegrad.data.digits import digits

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: added to every config loaded: 2 epochs and the data loaded in the main process
SMALL = ("train.epochs=2", "data.num_workers=0", "train.progress=false")
#: added to every config that searches a temperature: a cheaper search (fewer probed weights, a
#: smaller probe batch; refused where nothing searches)
SEARCH = {"dspike.num_weights": 8, "dspike.batch_size": 16}
#: added to the README's ``spikegrad fdg``: the same sweep on fewer probed weights and points
FDG_SMALL = ("--num-weights", "8", "--batch-size", "32", "--points", "3", "--batches", "2", "--extend", "1")
BUILT_IN = ("digits", "cluttered_digits", "event_digits")


def blocks(language: str, path: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.S | re.M)


def commands(path: Path = README) -> list[list[str]]:
    """Every command of the bash blocks of ``path`` (the README), in order, as argv lists."""
    out = []
    for block in blocks("bash", path):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def make_target(name: str) -> list[str]:
    """The recipe lines of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{name}:", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A folder with configs/, small digits and a cheaper search, as the cwd."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the threads note and choice are tested elsewhere

    def small(root: str | None = None):
        train_set, test_set, info = digits(root)
        return Subset(train_set, range(0, 1433, 9)), Subset(test_set, range(0, 364, 6)), info

    monkeypatch.setitem(_registry._DATASETS, "digits", small)
    real = spikegrad.config.load_config

    def load_small(path=None, overrides=()):
        config = real(path, [*overrides, *SMALL])
        return config.with_overrides(SEARCH) if config.dspike.adaptive else config

    monkeypatch.setattr(spikegrad.config, "load_config", load_small)
    monkeypatch.setattr(spikegrad.demo, "load_config", load_small)
    return tmp_path


def check_parses_and_loads(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):
        spikegrad.config.load_config(args.config, args.set)


def run(argv: list[str], capsys) -> str:
    """The spikegrad command ``argv``, which must succeed; its output."""
    args = build_parser().parse_args(argv)
    if args.command == "download":  # needs the network
        assert args.name in DOWNLOADABLE
        return ""
    if args.command == "train" and args.config and args.config.endswith(".yaml"):
        data = spikegrad.config.load_config(args.config, args.set).data.name
        if data not in BUILT_IN:  # needs the downloaded files
            return ""
    if args.command == "export" and importlib.util.find_spec("nir") is None:
        return ""  # the optional nir package is missing
    if args.command == "fdg":  # the README's probe, on fewer weights, points and batches
        argv = [*argv, *FDG_SMALL]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"spikegrad {shlex.join(argv)} exited with {code}: {err}"
    return out


def test_the_readme_sets_up_with_two_commands_and_says_where_spikegrad_lives():
    first, *_ = blocks("bash")
    assert [c for c in commands() if c[0] in ("make", "pip", "python", "python3")] == \
        [["make", "demo"], ["make", "test"]]  # the set-up: the main job and the tests
    assert [line.split("#")[0].strip() for line in first.splitlines()] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "VENV ?= .venv" in makefile and "$(VENV)/bin/spikegrad demo" in makefile
    text = " ".join(README.read_text().split())
    assert "`source .venv/bin/activate`" in text and "`.venv/bin/spikegrad`" in text
    assert "[docs/install.md](docs/install.md)" in text


def test_the_install_page_installs_the_makefiles_torch_and_this_project():
    page = ROOT / "docs" / "install.md"
    pips = [c for c in commands(page) if c[0] == "pip"]
    assert [c[:2] for c in pips] == [["pip", "install"]] * 2
    torch_pin, project = pips[0][2], pips[1][2:]
    assert f"TORCH_PIN := {torch_pin}" in (ROOT / "Makefile").read_text()
    assert project == ["-e", "."]


def test_plotting_is_installed_with_every_install():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"matplotlib\b", d) for d in project["dependencies"])


@pytest.mark.slow
def test_every_readme_command_runs_as_written(sandbox, capsys):
    seen = []
    for words in commands():
        program, argv = words[0], words[1:]
        if program == "make":
            (target,) = argv
            recipe = make_target(target)
            assert recipe, f"the Makefile has no {target} target"
            if target == "demo":
                (line,) = [r for r in recipe if "bin/spikegrad " in r]
                demo = line.split("bin/spikegrad ", 1)[1].replace("$(DEMO_ARGS)", "").split()
                run(demo, capsys)
            seen.append(f"make {target}")
        elif program == "torchrun":
            check_parses_and_loads(argv[argv.index("spikegrad") + 1:])
            seen.append("torchrun")
        elif program == "spikegrad":
            run(argv, capsys)
            seen.append(f"spikegrad {argv[0]}")
        else:
            pytest.fail(f"README command {shlex.join(words)!r}: this test does not know how to check it")
    # what the README promises exists and did what it says
    for path in ("runs/demo/demo.txt", "runs/t6/best.pt", "runs/demo/report.html", "gradients.png",
                 "runs/digits-ltl-offline/teacher/last.pt", "runs/digits-ltl-online/summary.json",
                 "calibrated.pt", "runs/adaptive/fdg.png"):
        assert (sandbox / path).is_file(), path
    assert {"make demo", "make test", "torchrun", "spikegrad train", "spikegrad eval",
            "spikegrad calibrate", "spikegrad fdg"} <= set(seen)
    # the README's Python snippet, twice: the same results
    (snippet,) = blocks("python")
    summaries = []
    for folder in ("a", "b"):
        (sandbox / folder).mkdir()
        run_in = {"__name__": "__main__"}
        exec(compile(snippet.replace('"runs/mine"', f'"{folder}/runs/mine"'), str(README), "exec"), run_in)
        summaries.append(run_in["summary"])
        assert capsys.readouterr().out.splitlines()[-1].startswith("dspike-adaptive 0.")
    timing = {"wall_seconds", "train_seconds"}
    assert [{k: v for k, v in s.items() if k not in timing} for s in summaries] == \
        [{**{k: v for k, v in summaries[0].items() if k not in timing}, "name": "mine"}] * 2
    assert summaries[0]["T"] == 4
    assert json.loads((sandbox / "a/runs/mine/summary.json").read_text())["method"] == "dspike-adaptive"
