"""The GPU session's scripts, checked on the CPU: bench/gpu_check.py in its dry-run mode, the
session report, and bench/gpu_session.sh's syntax and argument handling."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check, gpu_session_report

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / "bench" / "gpu_session.sh"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """Every row of bench.gpu_check runs on the CPU at tiny sizes (Triton through its interpreter,
    SpikingJelly's CPU path in its own process) and lands in the Markdown and JSON outputs."""
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny", "--Ts", "4",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=env(TRITON_INTERPRET="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["correctness"]["ok"]
    rows = result["neuron"]["4"]["rows"]
    for name in ("spikegrad triton (sigmoid)", "spikegrad triton (dspike)",
                 "spikegrad reference loop (sigmoid)", "copy floor (reads+writes 16 B/element)"):
        assert rows[name]["ms"] > 0, name
    sj = rows["spikingjelly LIFNode (cpu)"]
    if importlib.util.find_spec("spikingjelly") is None:
        assert sj.startswith("unavailable")
    else:
        assert sj["spike_mismatches"] == 0 and sj["grad_error"] < 1e-6
        for amp in ("off", "on"):
            assert result["resnet"]["spikingjelly"]["spikingjelly LIFNode (cpu)"][amp]["logit_error"] < 1e-5
    resnet = result["resnet"]["rows"]
    paths = {name: row["neuron path"] for name, row in resnet.items()}
    assert len(resnet) == 6
    assert re.fullmatch(r"cpu \(float32\) ×\d+", paths["SNN, fused neurons (auto), AMP off"]), paths
    # under autocast the neurons get bfloat16 currents and the fused kernel runs them
    assert re.fullmatch(r"cpu \(bfloat16\) ×\d+", paths["SNN, fused neurons (auto), AMP on"]), paths
    assert re.fullmatch(r"reference \(bfloat16\) ×\d+", paths["SNN, reference neurons, AMP on"]), paths
    assert paths["ANN at batch T·B, AMP on"] == "-"
    assert "spikegrad triton float16 (sigmoid)" in rows
    lines = result["correctness"]["lines"]
    assert any("Sigmoid float16: spikes identical to the float32 reference" in line for line in lines)
    assert any("Dspike bfloat16: spikes identical to the float32 reference" in line for line in lines)
    assert all(g["status"].startswith("dry run") for g in result["goals"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "### Goals" in markdown and "### Spiking ResNet-18 training step" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_check_needs_a_gpu_unless_told_cpu(capsys):
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().out


def test_goal_verdicts_and_the_tables_they_come_from():
    args = gpu_check.parse_args(["--tiny", "--Ts", "8"])
    assert args.shape == (2, 4, 4, 4) and args.Ts == [8] and args.reps == 2
    rows = {"spikegrad triton (sigmoid)": {"ms": 1.0, "peak_mb": 30.0},
            "copy floor (reads+writes 16 B/element)": {"ms": 0.4, "peak_mb": 0.0},
            "spikingjelly LIFNode (triton)": {"ms": 2.0, "peak_mb": 60.0, "spike_mismatches": 0,
                                              "grad_error": 0.0},
            "spikingjelly LIFNode (torch)": {"ms": 9.0, "peak_mb": 40.0, "spike_mismatches": 3,
                                             "grad_error": 0.1},
            "spikingjelly LIFNode (cuda)": "unavailable: not built"}
    table, summary = gpu_check.neuron_table(8, rows, args)
    assert summary["sj_speedup"] == 2.0 and summary["floor_ratio"] == 2.5
    assert summary["memory_ratio"] == pytest.approx(30 / 40)  # against SpikingJelly's lowest peak
    assert "DIFFER in 3" in table and "unavailable: not built" in table
    text, goals = gpu_check.goals_table({8: summary}, {}, 8)
    verdicts = {g["goal"]: g["status"] for g in goals}
    assert verdicts["neuron fwd+bwd T = 8: fastest SpikingJelly / spikegrad triton"] == "met"  # 2.0 >= 1.5
    assert verdicts["neuron fwd+bwd T = 8: spikegrad triton / copy floor"] == "NOT met"  # 2.5 > 2
    assert verdicts["neuron fwd+bwd T = 8: peak memory, spikegrad / SpikingJelly's lowest"] == "NOT met"
    assert verdicts["ResNet-18 step, AMP off: fused SNN / ANN at T·B"] == "not measured"
    assert "| ≥ 1.5 |" in text


def test_session_report_from_a_partial_work_folder(tmp_path):
    """The report tolerates steps that failed or never ran, and tabulates what is there."""
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "steps").mkdir(parents=True)
    (work / "steps.tsv").write_text("env\tok\t3\t\ntriton_grid\tFAILED (exit 1)\t20\t\n"
                                    "train\tTIMEOUT after 150 s\t150\tcut to 150 s by the budget\n")
    (work / "steps" / "triton_grid.log").write_text("FAIL triton float32 dspike: spikes differ in 2 places\n"
                                                    "triton on cuda: 105/106 cases equal to the reference\n")
    (work / "cuda_tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="0.1"><failure message="assert 1 == 2">x'
        '</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c" time="0">'
        '<skipped message="needs a CUDA device"/></testcase></testsuite></testsuites>')
    (work / "train").mkdir()
    row = {"epoch": 1, "train_acc": 0.9, "test_acc": 0.95, "dspike_temperature": 3.5, "seconds": 12.0}
    (work / "train" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    info = {"recipe": "r.yaml", "dataset": "mnist", "command": "c"}
    (work / "train_info.json").write_text(json.dumps(info))
    assert gpu_session_report.main(["report", str(work), str(out)]) == 0
    tables = (out / "tables.md").read_text()
    assert "| triton_grid | FAILED (exit 1) | 20 |  |" in tables
    assert "triton on cuda: 105/106 cases equal" in tables and "- FAIL triton float32 dspike" in tables
    assert "1 passed, 1 FAILED, 1 skipped" in tables
    assert "| test_cuda::test_b | FAILED | 0.1 | assert 1 == 2 |" in tables
    assert "## Training: r.yaml on mnist" in tables and "| 1 |  | 0.9 | 0.95 |  | 3.5 |" in tables
    result = json.loads((out / "results.json").read_text())
    assert result["env"] is None and result["gpu_check"] is None
    assert result["training"]["epochs"][0]["test_acc"] == 0.95
    assert gpu_session_report.main(["report", str(tmp_path / "missing"), str(out)]) == 0  # nothing at all


def test_session_helpers_find_datasets_and_build_the_training_recipe(capsys):
    assert gpu_session_report.main(["has-dataset", "digits"]) == 0
    assert gpu_session_report.main(["has-dataset", "no-such-set"]) == 1
    recipe = str(ROOT / "bench" / "gpu_mnist_resnet18.yaml")
    assert gpu_session_report.main(["build", recipe, "--set", "data.name=digits", "--set", "train.device=cpu",
                                    "--set", "model.width=0.125"]) == 0
    assert "digits: 1433 train / 364 test samples" in capsys.readouterr().out


def test_session_script_parses_and_refuses_bad_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(SESSION)]).returncode == 0
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_experiments.sh")]).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(SESSION), str(ROOT / "bench" / "gpu_experiments.sh")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    no_out = {k: v for k, v in os.environ.items() if k != "OUT"}
    for args, message in (([], "output folder"), (["--budget", "ten", str(tmp_path)], "--budget"),
                          (["--frobnicate", str(tmp_path)], "unknown option")):
        done = subprocess.run(["bash", str(SESSION), *args], capture_output=True, text=True, env=no_out,
                              timeout=30)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


def test_wheels_are_unpacked_where_pip_fails(tmp_path, monkeypatch):
    import zipfile

    wheels = tmp_path / "whl"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "tiny-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("tiny/__init__.py", "VALUE = 7\n")
        archive.writestr("tiny-1.0.dist-info/METADATA", "Name: tiny\nVersion: 1.0\n")
    failed = subprocess.CompletedProcess([], 1, "", "No module named pip")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: failed)
    assert gpu_session_report.main(["install-wheels", str(wheels), str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "tiny" / "__init__.py").read_text() == "VALUE = 7\n"
    assert gpu_session_report.main(["install-wheels", str(tmp_path / "none"), str(tmp_path / "site")]) == 1
