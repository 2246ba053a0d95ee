"""The archived experiments in ``experiments/records/`` are what docs/results.md quotes: each
one's own command, with ``--report``, writes its tables again from the archived runs."""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

RECORDS = Path(__file__).resolve().parents[1] / "experiments" / "records"
ARCHIVES = sorted(p.parent for p in RECORDS.glob("*/results.json"))


def test_there_are_archives():
    assert ARCHIVES, f"docs/protocol.md promises the archives of docs/results.md's runs in {RECORDS}"


def _report_argv(command: str, out: Path) -> tuple[str, list[str]]:
    """The stored command as ``(module, argv)``, writing to ``out`` and reporting only."""
    words = shlex.split(command)
    assert words[:2] == ["python", "-m"], command
    module, argv = words[2], words[3:]
    argv[argv.index("--out") + 1] = str(out)
    for flag, takes_value in (("--jobs", True), ("--threads", True), ("--quiet", False), ("--report", False)):
        if flag in argv:
            at = argv.index(flag)
            del argv[at:at + 1 + takes_value]
    return module, [*argv, "--report", "--quiet"]


@pytest.mark.parametrize("archive", ARCHIVES, ids=[p.name for p in ARCHIVES])
def test_an_archive_reports_its_own_tables(archive, tmp_path):
    from experiments.runner import main

    out = tmp_path / archive.name
    shutil.copytree(archive, out)  # --report writes its tables into the folder it reads
    stored = json.loads((archive / "results.json").read_text())
    module, argv = _report_argv(stored["command"], out)
    experiment = importlib.import_module(module)
    results = main(module, experiment.build, getattr(experiment, "add_arguments", None), argv=argv,
                   scales=getattr(experiment, "SCALE_HELP", None))  # as the module's __main__ calls it
    for name, arm in stored["arms"].items():
        again = results["arms"][name]
        assert again["final_acc"] == arm["final_acc"], name
        assert [r["seed"] for r in again["runs"]] == [r["seed"] for r in arm["runs"]], name
    rows = lambda path: [line for line in path.read_text().splitlines() if line.startswith("|")]  # noqa: E731
    assert rows(out / "results.md") == rows(archive / "results.md")


@pytest.mark.parametrize("archive", ARCHIVES, ids=[p.name for p in ARCHIVES])
def test_an_archives_run_records_are_not_ignored_by_git(archive):
    """A clean clone must hold them: a ``runs/`` pattern once ignored every archive's runs."""
    files = sorted((archive / "runs").rglob("experiment_run.json"))
    assert files, f"{archive} holds no run records"
    try:
        ignored = subprocess.run(["git", "check-ignore", *map(str, files[:5])], cwd=archive,
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.stdout == "", f"ignored by git: {ignored.stdout}"
