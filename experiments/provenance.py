"""Where and with what a result was made: machine, threads, versions, commit, device, command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: str) -> str:
    """``cpu: <model>`` or the CUDA device's name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device}: {torch.cuda.get_device_name(index)}"
    if device == "auto":
        return device_name("cuda" if torch.cuda.is_available() else "cpu")
    return f"{device}: {cpu_model()}"


def machine(device: str = "cpu") -> dict[str, Any]:
    """Everything about this machine and software that can change a result."""
    import numpy

    import spikegrad

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads_default": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "spikegrad": getattr(spikegrad, "__version__", None) or _version("spikegrad"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device_name(device),
        **{f"git_{k}": v for k, v in git_commit().items()},
    }


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that reproduces this invocation: ``python -m <module> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", module, *args])


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
