"""Running an experiment module's smoke command in-process and checking what it wrote."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

import spikegrad

SMOKE_FLAGS = ["--smoke", "--jobs", "1", "--threads", "1", "--quiet"]


def run_experiment(module: str, out: Path, *extra: str) -> dict[str, Any] | None:
    """``python -m <module> --out OUT --smoke ...`` in this process (returns the results)."""
    mod = importlib.import_module(module)
    from experiments.runner import main

    return main(module, mod.build, mod.add_arguments, argv=["--out", str(out), *SMOKE_FLAGS, *extra])


def count_trainings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch :func:`spikegrad.train` (what the runner calls) to record the run folder of every
    training it starts."""
    calls: list[str] = []
    real = spikegrad.train

    def counting(config, out_dir, *args, **kwargs):
        calls.append(str(out_dir))
        return real(config, out_dir, *args, **kwargs)

    monkeypatch.setattr(spikegrad, "train", counting)
    return calls


def check_outputs(out: Path, results: dict[str, Any], module: str) -> None:
    """The files and the results.json schema every experiment writes."""
    stored = json.loads((out / "results.json").read_text())
    assert stored["smoke"] is True and stored["violations"], "a smoke run records what it violates"
    for key in ("experiment", "command", "machine", "protocol", "seeds", "tuning_seeds", "arms",
                "comparisons", "claims", "split", "threads_per_run", "train_wall_seconds"):
        assert key in stored, key
    assert stored["command"].startswith(f"python -m {module} --out")
    machine = stored["machine"]
    for key in ("cpu", "cores", "python", "torch", "numpy", "spikegrad", "git_commit", "device"):
        assert key in machine, key
    for name, arm in stored["arms"].items():
        assert len(arm["runs"]) == len(stored["seeds"]), name
        assert arm["seeds"] == stored["seeds"], name
        assert arm["lr"] is not None, name
        if arm["lr_source"] == "tuned":
            assert arm["lr_choice"]["lr"] in arm["lr_grid"]
            assert len(arm["tuning_runs"]) == len(arm["lr_grid"]) * len(stored["tuning_seeds"])
            assert {r["eval_set"] for r in arm["tuning_runs"]} == {"validation"}
        for run in arm["runs"]:
            assert run["eval_set"] == "test" and run["lr"] == arm["lr"]
            assert (out / run["run_dir"] / "summary.json").is_file()
            assert len(run["curves"]["train_acc"]) == run["epochs"] == arm["epochs"]
            assert len(run["curves"]["eval_acc"]) == run["epochs"]
            assert run["machine"]["torch"] and run["threads"] == 1
            assert run["wall_seconds"] is not None and "converged" in run["plateau"]
            assert run["best_acc"] >= run["final_acc"]
        for key in ("final_acc", "best_acc"):
            assert arm[key]["n"] == len(stored["seeds"]) and len(arm[key]["ci"]) == 2
    for c in stored["comparisons"]:
        assert c["seeds"] == stored["seeds"] and len(c["final"]["diffs"]) == len(stored["seeds"])
    for claim in stored["claims"]:  # a smoke run's verdicts, alone and together, say SMOKE
        assert claim["verdict"].startswith("SMOKE: "), claim
        assert claim.get("family_verdict", "SMOKE: ").startswith("SMOKE: "), claim
    table = (out / "results.md").read_text()
    assert "SMOKE TEST" in table and stored["command"] in table
    assert "not converged" in table  # two epochs never plateau: flagged in the tables
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert results is not None and results["arms"].keys() == stored["arms"].keys()
