"""Every script in bench/ (speed and memory), experiments/ (re-runs of the papers' claims)
and tools/ (documentation generators) runs here with tiny arguments, and every module there
imports only the public API: the ``spikegrad`` package's exports or a module listed in
docs/architecture.md.

A script is a module with an ``if __name__ == "__main__":`` entry (``python -m folder.name``);
the other modules there (``experiments.runner``, ``.protocol``, ``.stats``, ``bench._harness``,
...) are helpers the scripts import, tested in their own files.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("bench", "experiments", "tools")
#: the documented module APIs (docs/architecture.md, "Public API")
PUBLIC_MODULES = {
    "spikegrad", "spikegrad.alignment", "spikegrad.analysis", "spikegrad.build",
    "spikegrad.calibration", "spikegrad.checkpoint", "spikegrad.config", "spikegrad.data",
    "spikegrad.devices", "spikegrad.dynamics", "spikegrad.diagnostics", "spikegrad.errors", "spikegrad.fdg",
    "spikegrad.fused", "spikegrad.fused.check", "spikegrad.layers", "spikegrad.lean",
    "spikegrad.losses", "spikegrad.methods", "spikegrad.models", "spikegrad.monitors",
    "spikegrad.neurons", "spikegrad.recipes", "spikegrad.surrogates", "spikegrad.cli",
    "spikegrad.encoders", "spikegrad.recording", "spikegrad.report", "spikegrad.alignment_report",
    "spikegrad.demo", "spikegrad.temperature_search", "spikegrad.resume",
    "spikegrad.durable",
}


def modules() -> list[Path]:
    """Every module of bench/, experiments/ and tools/."""
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")


def has_main_entry(path: Path) -> bool:
    """Whether the module has a top-level ``if __name__ == "__main__":`` block."""
    for node in ast.parse(path.read_text()).body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__" \
                and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant) \
                and test.comparators[0].value == "__main__":
            return True
    return False


def scripts() -> list[Path]:
    """The runnable modules: those with a ``__main__`` entry."""
    return [p for p in modules() if has_main_entry(p)]


def module_name(path: Path) -> str:
    return f"{path.parent.name}.{path.stem}"


def spikegrad_imports(path: Path) -> set[str]:
    """Every ``spikegrad`` module the file imports, in its code or in snippets it runs."""
    tree = ast.parse(path.read_text())
    trees = [tree] + [ast.parse(node.value) for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and "spikegrad" in node.value and _parses(node.value)]
    found = set()
    for node in (n for t in trees for n in ast.walk(t)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spikegrad"):
            found.add(node.module)
            if node.module == "spikegrad":  # ``from spikegrad import models``: the submodule too
                found |= {f"spikegrad.{a.name}" for a in node.names
                          if (ROOT / "src" / "spikegrad" / f"{a.name}.py").exists()
                          or (ROOT / "src" / "spikegrad" / a.name).is_dir()}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("spikegrad")}
    return found


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def test_scripts_import_only_the_public_api():
    private = {module_name(p): sorted(spikegrad_imports(p) - PUBLIC_MODULES) for p in modules()}
    assert {k: v for k, v in private.items() if v} == {}


def test_bench_holds_speed_and_memory_benchmarks_only():
    # gpu_session_report: the tables and environment record of bench/gpu_session.sh's GPU runs;
    # half_potentials: the gradient error of the Triton neuron's half-precision potentials
    assert {p.stem for p in (ROOT / "bench").glob("*.py")} == {
        "__init__", "_harness", "dspike_search", "fdg_search", "gpu_check", "gpu_session_report",
        "half_potentials", "loader", "monitor_overhead", "neuron", "train_step"}


def test_scripts_are_told_from_helper_modules_by_their_main_entry():
    found = {module_name(p) for p in scripts()}
    assert {"experiments.ltl_claims", "bench.half_potentials", "tools.api_reference"} <= found
    helpers = {"bench._harness", "experiments.claims", "experiments.protocol", "experiments.provenance",
               "experiments.runner", "experiments.splits", "experiments.stats"}
    assert helpers == {module_name(p) for p in modules()} - found


def test_every_script_has_a_smoke_test():
    assert {module_name(p) for p in scripts()} == set(SMOKE) | set(SMOKE_ELSEWHERE)
    assert not set(SMOKE) & set(SMOKE_ELSEWHERE)
    for module, test_file in SMOKE_ELSEWHERE.items():  # an experiment's smoke run in its own test file
        text = (ROOT / "tests" / test_file).read_text()
        assert f'MODULE = "{module}"' in text and "run_experiment(MODULE" in text, test_file


def run_script(module: str, *args: str, cwd: Path = ROOT, timeout: int = 180,
               env: dict[str, str] | None = None) -> str:
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{module} {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    """An untrained spiking digits_cnn (width 0.125, T = 2) and its ANN twin, as checkpoints."""
    from spikegrad import build_model, datasets_from_config, load_config
    from spikegrad.checkpoint import save_checkpoint
    from spikegrad.recipes import recipe_path

    paths = []
    for kind in ("snn", "ann"):
        config = load_config(recipe_path("digits"), [f"model.kind={kind}", "model.width=0.125",
                                                     "model.T=2", "data.batch_size=64"])
        model, args = build_model(config, datasets_from_config(config.data)[2])
        paths.append(folder / f"{kind}.pt")
        save_checkpoint(paths[-1], model, args, config=config.to_dict())
    return paths[0], paths[1]


def smoke_dspike_search(tmp_path: Path) -> None:
    out = run_script("bench.dspike_search", "--recipe", "digits", "--iterations", "1", "--width", "0.125",
                     "--set", "data.batch_size=16", "--set", "dspike.batch_size=8",
                     "--set", "dspike.num_weights=4")
    assert "one search = " in out and '"search_fdg_s"' in out


def smoke_fdg_search(tmp_path: Path) -> None:
    out = run_script("bench.fdg_search", "--width", "0.125", "--size", "8", "--max-stacked", "16", "32",
                     "--rounds", "1", "--set", "data.batch_size=8", "--set", "dspike.batch_size=8",
                     "--set", "dspike.num_weights=2")
    rows = [line for line in out.splitlines() if line.startswith("| current:")]
    assert len(rows) == 2 and "# finished" in out
    assert all(float(row.split("|")[5]) == 0.0 for row in rows)  # the same similarities at any stacking


def smoke_loader(tmp_path: Path) -> None:
    run_script("bench.loader", "--batch", "4", "--T", "1", "--width", "0.0625", "--steps", "1",
               "--loader-batches", "1", "--workers", "0", "--repeats", "1", "--images", "16",
               "--device", "cpu", "--json", str(tmp_path / "loader.json"))
    assert "fed_over_step" in json.loads((tmp_path / "loader.json").read_text())


def smoke_monitor_overhead(tmp_path: Path) -> None:
    out = run_script("bench.monitor_overhead", "--rounds", "1", "--batches", "1")
    assert "activity + SOPs (default)" in out


def smoke_neuron(tmp_path: Path) -> None:
    out = run_script("bench.neuron", "--only", "spikegrad", "--T", "2",
                     "--batch", "2", "--channels", "2", "--size", "4", "--threads", "1",
                     "--rounds", "1", "--reps", "1")
    assert "| spikegrad " in out and "# finished" in out


def smoke_train_step(tmp_path: Path) -> None:
    out = run_script("bench.train_step", "--only", "spikegrad", "--batch", "2", "--T", "1",
                     "--threads", "1", "--rounds", "1", "--reps", "1")
    assert "| spikegrad " in out and "# finished" in out


def smoke_gpu_check(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        assert "Triton" in run_script("bench.gpu_check", "--help")  # its GPU checks need CUDA
        return
    run_script("bench.gpu_check", timeout=600)


def smoke_half_potentials(tmp_path: Path) -> None:
    if importlib.util.find_spec("triton") is None:
        assert "Triton" in run_script("bench.half_potentials", "--help")  # it measures Triton's kernel
        return
    out = run_script("bench.half_potentials", "--device", "cpu", "--shape", "2,8",
                     env={"TRITON_INTERPRET": "1"})  # Triton's interpreter runs the kernel on the CPU
    from spikegrad import surrogates

    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith(("| float16", "| bfloat16"))]
    assert len(rows) == 2 * len(surrogates.available())  # two dtypes × every surrogate
    for row in rows:  # errors relative to the largest gradient: none above a few bfloat16 roundings
        errors = [float(v) for v in row[2:]]
        assert len(errors) == 4 and all(0 <= e < 0.1 for e in errors), row


def smoke_gpu_session_report(tmp_path: Path) -> None:
    run_script("bench.gpu_session_report", "report", str(tmp_path / "work"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "tables.md").is_file() and (tmp_path / "out" / "results.json").is_file()
    out = run_script("bench.gpu_session_report", "build", "digits.yaml", "--set", "model.width=0.125",
                     cwd=ROOT / "src" / "spikegrad" / "configs")
    assert "digits_cnn:" in out and "logits (4, 1, 10)" in out


def smoke_dspike_search_study(tmp_path: Path) -> None:
    snn, _ = tiny_checkpoints(tmp_path)
    out = run_script("experiments.dspike_search_study", "--checkpoint", f"tiny={snn}",
                     "--out", str(tmp_path / "study"), "--batches", "3", "--batch-size", "8", "--pool", "6",
                     "--epsilons", "1", "--epsilon-batches", "2", "--epsilon-weights", "4",
                     "--temperatures", "2.5", "3", "3.5", "--draws", "3", "--ks", "4", "--ms", "1", "2",
                     "--searches", "1")
    assert "tiny" in out and (tmp_path / "study" / "study.md").is_file()
    assert json.loads((tmp_path / "study" / "study.json").read_text())["models"].keys() == {"tiny"}


def smoke_costs(tmp_path: Path) -> None:
    out = run_script("experiments.costs", "--samples", "2")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms/sample" not in line]
    assert len(rows) == 8 and rows[0].startswith("| Dspike CNN, width 0.25, T = 4")
    for row in rows:
        train_ms, eval_ms = (float(v) for v in row.split("|")[-3:-1])
        assert train_ms > 0 and eval_ms > 0, row


def smoke_archive(tmp_path: Path) -> None:
    """A hand-made experiment folder: a teacher another run depends on, its student, a run in progress."""
    runs = tmp_path / "exp" / "runs"
    teacher, student, partial = (runs / "t/final/seed0", runs / "s/final/seed0", runs / "s/final/seed1")
    on_teacher = {"ltl.teacher_checkpoint": "runs/t/final/seed0/last.pt"}
    for folder, depends in ((teacher, {}), (student, on_teacher)):
        folder.mkdir(parents=True)
        (folder / "experiment_run.json").write_text(json.dumps({"depends": depends}))
        for name in ("metrics.jsonl", "summary.json", "config.yaml", "last.pt", "best.pt"):
            (folder / name).write_text("x")
    partial.mkdir(parents=True)
    (partial / "last.pt").write_text("x")
    (tmp_path / "exp" / "results.json").write_text("{}")
    out = run_script("experiments.archive", str(tmp_path / "exp"), str(tmp_path / "kept"))
    assert "archived 2 finished runs (1 checkpoints other runs need)" in out and "1 unfinished" in out
    kept = sorted(p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*.*"))
    assert kept == ["results.json", *(f"runs/s/final/seed0/{n}" for n in (
        "config.yaml", "experiment_run.json", "metrics.jsonl", "summary.json")), *(
        f"runs/t/final/seed0/{n}" for n in ("config.yaml", "experiment_run.json", "last.pt", "metrics.jsonl",
                                            "summary.json"))]


def smoke_dspike_ablation(tmp_path: Path) -> None:
    out = run_script("experiments.dspike_ablation", "--out", str(tmp_path / "runs"), "--seeds", "0",
                     "--rows", "dspike-adaptive", "--epochs", "2", "--plot", str(tmp_path / "b.png"),
                     "--set", "model.width=0.125", "--set", "model.T=2", "--set", "data.batch_size=256",
                     "--set", "data.name=digits", "--set", "diagnostics.gradient_interval=0", cwd=tmp_path)
    assert "| dspike-adaptive |" in out and (tmp_path / "b.png").is_file()


def smoke_shortcut_depth(tmp_path: Path) -> None:
    out = run_script("experiments.shortcut_depth", "--out", str(tmp_path / "runs"), "--seeds", "0",
                     "--models", "plain4", "--epochs", "1", "--docs", str(tmp_path / "img"),
                     "--set", "model.width=0.125", "--set", "data.batch_size=256",
                     "--set", "data.name=digits", cwd=tmp_path)
    assert "| plain4 | " in out and (tmp_path / "img" / "shortcut_depth.png").is_file()


def smoke_ltl(tmp_path: Path) -> None:
    out = run_script("experiments.ltl", "memory", "--dataset", "digits", "--T", "2", "--width", "0.125",
                     "--batch", "8", "--steps", "1", "--methods", "ltl-online", "--out", str(tmp_path))
    (row,) = json.loads((tmp_path / "memory_digits.json").read_text())
    assert row["label"] == "ltl-online" and row["peak_mib"] >= 0 and "| 2 |" in out


def smoke_ltl_devices(tmp_path: Path) -> None:
    student, teacher = tiny_checkpoints(tmp_path)
    out = run_script("experiments.ltl_devices", "--student", str(student), "--teacher", str(teacher),
                     "--steps", "1", "--seeds", "0", "--sweeps", "sigma", "--first", "2", "--out",
                     str(tmp_path / "devices.json"), "--plot", str(tmp_path / "devices.png"))
    assert "| σ=0.1 |" in out and (tmp_path / "devices.png").is_file()


def smoke_reliability_table(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("before\n<!-- table:begin -->\nSTALE\n<!-- table:end -->\nmiddle\n"
                   "<!-- adversarial:begin -->\nSTALE\n<!-- adversarial:end -->\nafter\n")
    run_script("tools.reliability_table", "--cases", "unknown surrogate", "pickle-cycle", "--doc", str(doc))
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE" not in text
    assert "| config | unknown surrogate | `spikegrad train tiny.yaml --set model.surrogate={name: " \
        "dspik}` | 2 |" in text and "unknown surrogate 'dspik' (did you mean 'dspike'?)" in text
    # the hostile-input table: its counts (tried, clear, correct and the five defects) and row
    assert "| pickled data | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| **all** | **1** | **1** | **0** | **0** | **0** | **0** | **0** | **0** |" in text
    assert "| pickled data | `pickle-cycle` | a list that contains itself | clear | " in text


def smoke_api_reference(tmp_path: Path) -> None:
    run_script("tools.api_reference", "--check")  # exit 1 when docs/api.md is stale


def smoke_plot_screenshots(tmp_path: Path) -> None:
    runs, img = tmp_path / "runs", tmp_path / "img"
    run_script("tools.plot_screenshots", "--runs", str(runs), "--out", str(img), "--epochs", "2",
               "--skip", "fdg", "--set", "model.width=0.125", "--set", "data.batch_size=256",
               "--set", "diagnostics.gradient_interval=2", timeout=600)
    assert (img / "gradients.png").is_file() and (runs / "dspike" / "recording.npz").is_file()
    assert any(p.name.startswith("report-spike-raster") for p in img.glob("*.png"))


def smoke_code_metrics(tmp_path: Path) -> None:
    out = run_script("tools.code_metrics", "--top", "1")
    assert "longest files: src/spikegrad/" in out and "longest functions: spikegrad/" in out
    # the package's modules import one another one way only, even inside functions
    assert "import cycles (module level): 0" in out and "import cycles (any level): 0" in out


SMOKE = {
    "bench.dspike_search": smoke_dspike_search,
    "bench.fdg_search": smoke_fdg_search,
    "bench.loader": smoke_loader,
    "bench.monitor_overhead": smoke_monitor_overhead,
    "bench.neuron": smoke_neuron,
    "bench.train_step": smoke_train_step,
    "bench.gpu_check": smoke_gpu_check,
    "bench.gpu_session_report": smoke_gpu_session_report,
    "bench.half_potentials": smoke_half_potentials,
    "experiments.archive": smoke_archive,
    "experiments.costs": smoke_costs,
    "experiments.dspike_ablation": smoke_dspike_ablation,
    "experiments.dspike_search_study": smoke_dspike_search_study,
    "experiments.shortcut_depth": smoke_shortcut_depth,
    "experiments.ltl": smoke_ltl,
    "experiments.ltl_devices": smoke_ltl_devices,
    "tools.reliability_table": smoke_reliability_table,
    "tools.code_metrics": smoke_code_metrics,
    "tools.api_reference": smoke_api_reference,
    "tools.plot_screenshots": smoke_plot_screenshots,
}


#: experiments run in-process by their own test file (``--smoke``, see tests/experiment_helpers.py)
SMOKE_ELSEWHERE = {
    "experiments.dspike_surrogates": "test_experiments_dspike_surrogates.py",
    "experiments.ltl_claims": "test_experiments_ltl_claims.py",
    "experiments.ltl_rates": "test_experiments_ltl_rates.py",
    "experiments.shortcut_claims": "test_experiments_shortcut_claims.py",
}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(SMOKE))
def test_script_runs_with_tiny_arguments(module, tmp_path):
    SMOKE[module](tmp_path)
