"""The experiment runner: arms, the learning-rate search, seeds, resume, results, tables, plots.

An :class:`Experiment` is a list of :class:`Arm` objects (a recipe plus overrides, a dataset
split, an epoch budget and a learning-rate grid) and the comparisons between them. The runner

1. checks the plan against the protocol (:func:`experiments.protocol.check_plan`);
2. trains every arm's grid ``lr × tuning seed`` on the validation split, picks its rate
   (:func:`experiments.protocol.choose_lr`), then trains the final seeds on the training set
   and evaluates them on the test set; arms that need another arm's runs (an LTL teacher)
   wait for them;
3. writes ``results.json`` (every run's curves, plateau verdict, provenance), ``results.md``
   (the tables, with the command beside them) and ``curves.png``.

Run folders: ``OUT/runs/<arm>/tune/lr<lr>/seed<s>`` and ``OUT/runs/<arm>/final/seed<s>``;
probes (``--probe ARM=RATE``: a tuning run at a rate outside the arm's grid, to check a choice
at the grid's edge) in ``OUT/runs/<arm>/probe/lr<lr>/seed<s>``. A
folder that holds ``summary.json`` (or a recorded failure) is finished and never trained again,
so a killed experiment loses only the runs in flight; those continue from their last
checkpoint where spikegrad can resume them, else start over. SIGTERM or SIGINT to the runner
(or to its process group) stops it cleanly: no new run starts, the runs in flight save their
checkpoints and stop, and the runner exits with 128 + the signal's number; a run process
whose runner died (SIGKILL) finishes the run it is training and starts no other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from experiments import provenance
from experiments.claims import family
from experiments.protocol import PROTOCOL, Protocol, ProtocolError, check_plan, choose_lr, plateau
from experiments.splits import SPLIT_SOURCE, data_overrides
from experiments.stats import describe, paired_t_test
from spikegrad.checkpoint import load_checkpoint
from spikegrad.config import Config, from_dict, load_config, parse_override
from spikegrad.data import dataset_builder
from spikegrad.diagnostics import read_jsonl
from spikegrad.durable import atomic_write
from spikegrad.errors import TrainingDiverged, UserError
from spikegrad.resume import StopOnSignal, TrainingStopped, config_differences

__all__ = ["Arm", "Comparison", "DataSpec", "Experiment", "Runner", "RunnerStopped", "check_same_run",
           "execute", "load_run", "main", "markdown", "plot_curves", "verify"]

RECORD = "experiment_run.json"
RESULTS = "results.json"
TABLE = "results.md"
PLOT = "curves.png"
#: the phases that train on the training set less the validation split and evaluate on that split
SEARCH_PHASES = ("tune", "probe")
# per-epoch fields kept in results.json besides those whose name holds "acc"
CURVE_KEYS = ("train_loss", "test_loss", "dspike_temperature", "shortcut_lambda", "lr")


# --------------------------------------------------------------------------- definitions


@dataclass
class DataSpec:
    """A dataset and how a run uses it: ``validation`` (fraction of the training set held out for
    tuning), ``subset`` (at most this many training samples), ``split_seed`` (both cuts)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    validation: float = 0.1
    subset: int | None = None
    split_seed: int = 0


@dataclass
class Arm:
    """One row of an experiment: a recipe, overrides, data, epochs and how its rate is set.

    Exactly one of ``lr_grid`` (tuned), ``lr`` with ``lr_reason`` (fixed, e.g. published) or
    ``lr_from`` with ``lr_reason`` (the rate chosen for another arm) sets the rate.
    ``depends`` maps a config key to another arm whose run of the same phase and seed provides
    its ``last.pt`` (an LTL teacher). ``epochs_from`` names an arm whose epochs this one trains
    ``epochs_factor`` times (vanilla trained twice as long) and then gives no ``epochs`` of its
    own: the experiment derives them, and ``--epochs`` keeps the ratio. ``name`` is ``group/label``.
    """

    name: str
    recipe: str
    data: DataSpec
    #: epochs of training; ``None`` only with ``epochs_from`` (set by the experiment)
    epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    lr_grid: list[float] = field(default_factory=list)
    lr: float | None = None
    lr_reason: str = ""
    lr_from: str | None = None
    lr_key: str = "optim.lr"
    depends: dict[str, str] = field(default_factory=dict)
    epochs_from: str | None = None
    epochs_factor: int = 1
    note: str = ""

    @property
    def group(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

    @property
    def label(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass
class Comparison:
    """The paired difference ``a - b`` (same seeds) between two arms."""

    a: str
    b: str


@dataclass
class Experiment:
    name: str
    title: str
    arms: list[Arm]
    seeds: list[int]
    tuning_seeds: list[int]
    comparisons: list[Comparison] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    claims: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    extra_overrides: list[str] = field(default_factory=list)
    protocol: Protocol = PROTOCOL
    #: called with the runner before the arms are scheduled (e.g. a check that picks a setting
    #: of every arm); it may change ``arms`` and returns what it found for results.json
    prepare: Callable[[Runner], dict[str, Any]] | None = None
    #: arm -> rates outside its grid, each trained on the tuning seeds after the arms' runs and
    #: set beside the grid's choice (:meth:`add_probe`); they never change the choice
    probes: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for arm in self.arms:
            if arm.epochs_from is None and arm.epochs is None:
                raise UserError(f"arm {arm.name!r}: give its epochs, or epochs_from the arm it trains "
                                "a multiple of")
            if arm.epochs_from is not None and arm.epochs is not None:
                raise UserError(f"arm {arm.name!r}: epochs={arm.epochs} and epochs_from="
                                f"{arm.epochs_from!r} both set its epochs; give one")
        self._derive_epochs()

    def _derive_epochs(self) -> None:
        """Set every ``epochs_from`` arm's epochs to its factor times its source's (through chains)."""
        derived: dict[str, int] = {}

        def epochs_of(arm: Arm, chain: tuple[str, ...]) -> int:
            if arm.epochs_from is None:
                return int(arm.epochs)  # type: ignore[arg-type]  # checked in __post_init__
            path = (*chain, arm.name)
            if arm.name in chain:
                raise UserError(f"arms {' -> '.join(path)}: epochs_from goes round in a circle")
            if arm.name not in derived:
                derived[arm.name] = arm.epochs_factor * epochs_of(self.arm(arm.epochs_from), path)
            return derived[arm.name]

        for arm in self.arms:
            if arm.epochs_from is not None:
                arm.epochs = epochs_of(arm, ())

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise UserError(f"experiment {self.name!r} has no arm {name!r}; its arms: "
                        f"{', '.join(a.name for a in self.arms)}")

    def add_probe(self, name: str, rate: float) -> None:
        """Train the tuned arm ``name`` at ``rate``, a rate outside its grid, on the tuning seeds
        and the validation split: whether a choice at the grid's edge would stand with that rate
        in the grid (the report says; the arm keeps the grid's choice)."""
        self.probes.setdefault(name, []).append(rate)
        try:
            self.check_probes()
        except UserError:
            self.probes[name].pop()
            if not self.probes[name]:
                del self.probes[name]
            raise

    def check_probes(self) -> None:
        """A :class:`UserError` for a probe of an unknown or untuned arm, a rate that is not a
        positive number, one in the arm's grid, or one given twice."""
        for name, rates in self.probes.items():
            arm = self.arm(name)
            if not arm.lr_grid:
                raise UserError(f"probe of {name!r}: the arm does not tune its rate "
                                f"({arm.lr_reason or 'fixed'}), so there is no choice to check; drop it")
            grid = ", ".join(f"{lr:g}" for lr in arm.lr_grid)
            for index, rate in enumerate(rates):
                if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
                    raise UserError(f"probe of {name!r}: the rate {rate!r} is not a positive number")
                if any(math.isclose(rate, lr, rel_tol=1e-9) for lr in arm.lr_grid):
                    raise UserError(f"probe of {name!r} at {rate:g}: that rate is in the arm's grid "
                                    f"({grid}); a probe tries a rate outside it")
                if any(math.isclose(rate, other, rel_tol=1e-9) for other in rates[:index]):
                    raise UserError(f"probe of {name!r} at {rate:g} is given twice; give it once")

    def set_epochs(self, epochs: int) -> None:
        """Train every arm ``epochs`` epochs, but for two kinds that keep their own budget: an arm
        another arm depends on (an LTL teacher is trained to its plateau, not to the students'
        epochs) and an arm with ``epochs_from`` (it trains its factor times its source's)."""
        if epochs < 1:
            raise UserError(f"--epochs {epochs}: give a positive number of epochs")
        providers = {name for arm in self.arms for name in arm.depends.values()}
        for arm in self.arms:
            if arm.epochs_from is None and arm.name not in providers:
                arm.epochs = epochs
        self._derive_epochs()
        if "epochs" in self.settings:  # the scale's value, recorded in results.json
            self.settings = {**self.settings, "epochs": epochs}

    def plan(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "tuning_seeds": self.tuning_seeds,
                "arms": [{"name": a.name, "epochs": a.epochs, "lr_grid": a.lr_grid, "lr": a.lr,
                          "lr_reason": a.lr_reason, "lr_from": a.lr_from, "epochs_from": a.epochs_from,
                          "validation": a.data.validation} for a in self.arms]}


def epochs_note(arms: list[Arm]) -> str:
    """The epochs the arms train, read from the arms (so ``--epochs`` shows): the most common
    count, then each arm that trains a different count."""
    counts = Counter(arm.epochs for arm in arms)
    common = counts.most_common(1)[0][0]
    others = [f"{arm.name} {arm.epochs}" for arm in arms if arm.epochs != common]
    return f"Epochs: {common}" + (f" ({', '.join(others)})." if others else " for every arm.")


def paired_comparisons(comparisons: list[Comparison], arms: dict[str, dict[str, Any]],
                       protocol: Protocol) -> list[dict[str, Any]]:
    """Each comparison ``a - b`` over the seeds both arms finished: the paired t-test of the final
    and of the best accuracies. ``arms``: name -> ``{"runs": [{"seed", "final_acc", "best_acc"}],
    "converged", "runs_total"}`` (a failed run has ``final_acc`` None and is left out)."""
    out = []
    for c in comparisons:
        ra = {r["seed"]: r for r in arms[c.a]["runs"] if r["final_acc"] is not None}
        rb = {r["seed"]: r for r in arms[c.b]["runs"] if r["final_acc"] is not None}
        seeds = sorted(set(ra) & set(rb))
        out.append({
            "a": c.a, "b": c.b, "seeds": seeds,
            "final": paired_t_test([ra[s]["final_acc"] for s in seeds],
                                   [rb[s]["final_acc"] for s in seeds], protocol.confidence),
            "best": paired_t_test([ra[s]["best_acc"] for s in seeds],
                                  [rb[s]["best_acc"] for s in seeds], protocol.confidence),
            "not_converged": [n for n in (c.a, c.b) if arms[n]["converged"] < arms[n]["runs_total"]],
        })
    return out


def recipe_file(recipe: str) -> Path:
    """A recipe path, or the name of a packaged recipe (``digits`` -> ``configs/digits.yaml``)."""
    from spikegrad.recipes import CONFIG_DIR

    path = Path(recipe)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.stem if path.suffix == '.yaml' else recipe}.yaml"
    if packaged.is_file():
        return packaged
    raise UserError(f"recipe {recipe!r} is neither a file nor a packaged recipe")


def _lr_name(lr: float) -> str:
    return f"lr{lr:g}"


# --------------------------------------------------------------------------- one run


def _finished(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or _failure(folder) is not None


def _failure(folder: Path) -> str | None:
    path = folder / RECORD
    if path.is_file():
        return json.loads(path.read_text()).get("failed")
    return None


def _stored_config(folder: Path) -> dict[str, Any] | None:
    """The config of the run already in ``folder`` (its record's, else its ``last.pt``'s), or None."""
    if (folder / RECORD).is_file():
        return json.loads((folder / RECORD).read_text()).get("config")
    if (folder / "last.pt").is_file():
        try:
            return load_checkpoint(folder / "last.pt").get("config")
        except UserError:
            return None  # unreadable: the run starts over below
    return None


def check_same_run(folder: Path, config: Config, depends: dict[str, str] | None = None) -> list[str]:
    """A :class:`UserError` when ``folder`` holds a run made with settings that compute another
    run than ``config`` (an experiment changed since it wrote ``--out``): neither reused as if it
    were this run nor deleted.

    ``depends`` maps a config key to the checkpoint it names, relative to the experiment's
    folder: a stored path that ends in it is the same dependency, so an experiment folder that
    was moved or archived (:mod:`experiments.archive`) is still the same experiment. Returns the
    keys whose stored path differs only by that move.
    """
    stored = _stored_config(folder)
    moved: list[str] = []
    if stored is not None:
        for key, relative in (depends or {}).items():
            *parents, leaf = key.split(".")
            section = stored
            for part in parents:
                section = section.get(part) if isinstance(section, dict) else None
            value = section.get(leaf) if isinstance(section, dict) else None
            now = _config_value(config, key)
            if isinstance(value, str) and value != now and _same_dependency(value, relative):
                section[leaf] = now
                moved.append(key)
    differences = [] if stored is None else config_differences(stored, config)
    if differences:
        more = len(differences) - 4
        shown = "; ".join(differences[:4]) + (f"; and {more} more" if more > 0 else "")
        raise UserError(f"{str(folder)!r} holds a run made with other settings ({shown}): give the "
                        "experiment another --out, or delete that folder to train the run anew")
    return moved


def _same_dependency(stored: str, relative: str) -> bool:
    """Whether the stored checkpoint path is ``relative`` inside some experiment folder."""
    stored, relative = Path(stored).as_posix(), Path(relative).as_posix()
    return stored == relative or stored.endswith("/" + relative)


def _config_value(config: Config, key: str) -> Any:
    """The value of the dotted ``key`` in ``config``."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


class RunnerStopped(Exception):
    """The runner, or one of its runs, stopped on a signal after saving; the same command continues."""

    def __init__(self, message: str, status: int = 128 + signal.SIGTERM, saved: bool = True) -> None:
        super().__init__(message, status, saved)
        self.message, self.status, self.saved = message, status, saved

    def __str__(self) -> str:
        return self.message


_RUNNER_PID: int | None = None  # in a run process: the runner that started it
_STOPPED = False  # in a run process: a run stopped on a signal, so this process starts no other
_CURRENT: str | None = None  # in a run process: the folder of the run it is executing


def _run_process_init(runner_pid: int) -> None:
    """A run process: remember its runner; a Ctrl-C reaches it only while a trainer listens
    (which then saves and stops), the runner stops the rest."""
    global _RUNNER_PID
    _RUNNER_PID = runner_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_between_runs)


def _stop_between_runs(_signum: int, _frame: Any) -> None:
    """SIGTERM to a run process outside training (a trainer's own handler replaces this one
    while a run trains, and saves): it starts no further run, and a run being set up or
    finished off stops there (its folder holds no new training to lose)."""
    global _STOPPED
    _STOPPED = True
    if _CURRENT is not None:
        raise RunnerStopped(f"stopped by SIGTERM outside training: {_CURRENT}", saved=False)


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """In a run process: :func:`_execute`, unless the runner is gone (SIGKILL: the process exits
    instead of starting a run nobody waits for) or a signal already stopped a run here."""
    global _STOPPED, _CURRENT
    if _RUNNER_PID is not None and os.getppid() != _RUNNER_PID:
        os._exit(1)
    if _STOPPED:
        raise RunnerStopped(f"not started after a stop: {spec['folder']}", saved=False)
    _CURRENT = spec["folder"] if _RUNNER_PID is not None else None
    try:
        return _execute(spec)
    except TrainingStopped as exc:  # re-raised as a picklable error for the runner
        _STOPPED = _RUNNER_PID is not None
        raise RunnerStopped(str(exc), exc.exit_status) from None
    finally:
        _CURRENT = None


def _execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the run ``spec`` describes into its folder (unless finished); returns its record.

    A run stopped half-way continues from its ``last.pt`` (a checkpoint that cannot be
    continued starts the run over). A diverged run is recorded as failed. A folder holding a
    run of other settings is a :class:`UserError` (:func:`check_same_run`).
    """
    from spikegrad import train

    folder = Path(spec["folder"])
    record_path = folder / RECORD
    config = from_dict(Config, spec["config"])
    moved = check_same_run(folder, config, spec.get("depends"))
    if _finished(folder):
        if record_path.is_file():
            return json.loads(record_path.read_text())
        return _write_record(folder, spec, None, None)
    resume = folder / "last.pt"
    can_resume = resume.is_file()
    if folder.exists() and not can_resume:
        shutil.rmtree(folder)
    machine = provenance.machine(spec["config"]["train"]["device"])  # read before the code trains
    tic = time.perf_counter()
    try:
        try:
            if can_resume:  # a dependency that only moved with the experiment's folder is the same
                train(config, folder, verbose=False, resume_from=resume, allow_config_change=bool(moved))
            else:
                train(config, folder, verbose=False)
        except TrainingDiverged:
            raise
        except UserError:
            if not can_resume:
                raise
            shutil.rmtree(folder)  # the partial run could not be continued: start it over
            can_resume = False
            train(config, folder, verbose=False)
    except TrainingDiverged as exc:
        return _write_record(folder, spec, _run_wall(folder, tic), str(exc), machine, can_resume)
    return _write_record(folder, spec, _run_wall(folder, tic), None, machine, can_resume)


def _run_wall(folder: Path, tic: float) -> float:
    """The run's wall time in seconds: the trainer's (:func:`_trainer_wall`), else this process's
    since ``tic``."""
    wall = _trainer_wall(folder)
    return time.perf_counter() - tic if wall is None else wall


def _trainer_wall(folder: Path) -> float | None:
    """The wall time in the run's ``summary.json``, which adds up every process that trained it
    (a run continued after a stop); None without one."""
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    wall = json.loads(summary.read_text()).get("wall_seconds")
    return float(wall) if isinstance(wall, (int, float)) else None


def _write_record(folder: Path, spec: dict[str, Any], wall: float | None, failed: str | None,
                  machine: dict[str, Any] | None = None, resumed: bool = False) -> dict[str, Any]:
    """The run's record; ``machine`` as read when the run started (a checkout that moves during
    a run must not be recorded as the code that trained it); ``resumed``: this process continued
    a run an earlier one had stopped, so ``machine`` is the code that finished it."""
    import torch

    record = {**{k: v for k, v in spec.items() if k != "config"}, "config": spec["config"],
              "wall_seconds": wall, "resumed": resumed, "failed": failed, "threads": torch.get_num_threads(),
              "machine": machine or provenance.machine(spec["config"]["train"]["device"]),
              "finished_at": provenance.now()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / RECORD, json.dumps(record, indent=1) + "\n")  # a stop mid-write: the old one
    return record


def _runs_line(results: dict[str, Any]) -> str:
    """What the stored runs say of themselves: their wall times added up, and the commits that
    finished them (an experiment continued across stops may span several)."""
    runs = [r for arm in results["arms"].values() for r in arm["runs"] + arm["tuning_runs"]
            + [r for probe in arm.get("probes") or [] for r in probe["runs"]]]
    if not runs:
        return ""
    hours = sum(r.get("wall_seconds") or 0.0 for r in runs) / 3600
    commits = sorted({(r.get("machine") or {}).get("git_commit") or "unknown" for r in runs})
    return (f" The {len(runs)} runs' own wall times add up to {hours:.1f} h; "
            f"finished at commit {', '.join(c[:12] for c in commits)}.")


def load_run(folder: Path, protocol: Protocol = PROTOCOL) -> dict[str, Any]:
    """One finished run as results.json stores it: accuracies, curves, plateau, extras."""
    record = json.loads((folder / RECORD).read_text()) if (folder / RECORD).is_file() else {}
    rows = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    keys = ("arm", "phase", "seed", "lr", "eval_set", "wall_seconds", "resumed", "threads", "failed",
            "depends", "machine")
    out: dict[str, Any] = {k: record.get(k) for k in keys}
    out["wall_seconds"] = _trainer_wall(folder) or out["wall_seconds"]  # records of old runners: one process
    out["folder"] = str(folder)
    out["epochs"] = len(rows)
    if not rows or record.get("failed"):
        out.update(final_acc=None, best_acc=None, converged=False, curves={})
        return out
    eval_acc = [r["test_acc"] for r in rows]
    train_acc = [r["train_acc"] for r in rows]
    curves: dict[str, list] = {"train_acc": train_acc, "eval_acc": eval_acc}
    for key in dict.fromkeys(k for r in rows for k in r):  # in the order the rows name them
        if key in ("train_acc", "test_acc"):
            continue
        values = [r.get(key) for r in rows]
        if (key in CURVE_KEYS or "acc" in key) and all(isinstance(v, (int, float, dict)) or v is None
                                                        for v in values):
            curves[key] = values
    best = max(range(len(eval_acc)), key=lambda i: eval_acc[i])
    verdict = plateau(train_acc, protocol, [r.get("train_loss") for r in rows])
    last = rows[-1]
    extras = {k: v for k, v in last.items() if "acc" in k and k not in ("train_acc", "test_acc")}
    out.update(final_acc=eval_acc[-1], best_acc=eval_acc[best], best_epoch=best + 1,
               final_train_acc=train_acc[-1], final_train_loss=last.get("train_loss"),
               converged=verdict["converged"], plateau=verdict, extras=extras, curves=curves,
               train_seconds=sum(r.get("seconds", 0.0) for r in rows))
    return out


# --------------------------------------------------------------------------- the runner


class _Serial:
    """An executor that runs each job at once in this process (``--jobs 1``)."""

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Runner:
    """Runs an :class:`Experiment` into ``out`` (see the module docstring)."""

    def __init__(self, experiment: Experiment, out: str | Path, *, device: str = "cpu", jobs: int = 1,
                 threads: int | None = None, smoke: bool = False, command: str = "",
                 verbose: bool = True) -> None:
        self.experiment = experiment
        self.out = Path(out)
        self.device = device
        self.jobs = max(1, int(jobs))
        if threads is None and device == "cpu":
            threads = max(1, provenance.usable_cores() // self.jobs)
        self.threads = threads
        self.smoke = smoke
        self.command = command
        self.verbose = verbose
        self.prepared: dict[str, Any] = {}
        self.training = True  # False under --report: nothing is trained, finished runs are read
        self._done: dict[str, dict[str, Any]] = {}  # folder -> record
        self._chosen: dict[str, dict[str, Any]] = {}  # arm -> choose_lr's answer
        self.violations = self.check()

    # ---------------------------------------------------------------- planning

    def check(self) -> list[str]:
        """The protocol check (raises unless smoke) plus the structure of the arms."""
        exp = self.experiment
        names = [a.name for a in exp.arms]
        if len(set(names)) != len(names):
            raise UserError(f"experiment {exp.name!r} names an arm twice: {names}")
        for index, arm in enumerate(exp.arms):
            earlier = set(names[:index])
            for key, other in arm.depends.items():
                if other not in earlier:
                    raise UserError(f"arm {arm.name!r}: {key} needs arm {other!r}, which must come "
                                    "before it")
                if arm.lr_grid and not exp.arm(other).lr_grid:
                    raise UserError(f"arm {arm.name!r} is tuned but the arm it needs, {other!r}, has no "
                                    "tuning runs to pair its tuning runs with")
        for c in exp.comparisons:
            exp.arm(c.a), exp.arm(c.b)
        exp.check_probes()
        self.check_set()
        violations = check_plan(exp.plan(), smoke=self.smoke, protocol=exp.protocol, out=self.out,
                                repo=provenance.REPO)
        for name in dict.fromkeys(a.data.name for a in exp.arms):
            dataset_builder(name)  # an unknown dataset fails before any training, naming the known ones
        return violations

    def folder(self, arm: Arm, phase: str, seed: int, lr: float | None = None) -> Path:
        base = self.out / "runs" / arm.name / phase
        return base / _lr_name(lr) / f"seed{seed}" if phase in SEARCH_PHASES else base / f"seed{seed}"

    def lr_of(self, arm: Arm) -> float | None:
        """The arm's final learning rate, or None while its tuning runs are unfinished."""
        if arm.lr_grid:
            chosen = self._chosen.get(arm.name)
            return None if chosen is None else chosen["lr"]
        if arm.lr_from:
            return self.lr_of(self.experiment.arm(arm.lr_from))
        return arm.lr

    def config(self, arm: Arm, phase: str, seed: int, lr: float,
               depends: dict[str, str] | None = None) -> Config:
        """The resolved config of one run."""
        config = load_config(recipe_file(arm.recipe)).with_overrides(arm.overrides)
        config = config.with_overrides(self.split_overrides(arm, phase))
        config = config.with_overrides(self.experiment.extra_overrides)  # --set wins over the arm's own
        return config.with_overrides(self.run_overrides(arm, phase, seed, lr, depends))

    @staticmethod
    def split_overrides(arm: Arm, phase: str) -> dict[str, Any]:
        """The ``data.*`` keys of one run: the arm's dataset and the protocol's split (a validation
        split cut from the training set for tuning runs, the test set for final runs)."""
        data = arm.data
        validation = data.validation if phase in SEARCH_PHASES else None
        return data_overrides(data.name, data.options, validation=validation, split_seed=data.split_seed,
                              subset=data.subset)

    def run_overrides(self, arm: Arm, phase: str, seed: int, lr: float,
                      depends: dict[str, str] | None = None) -> dict[str, Any]:
        """What the runner sets in one run's config, over the recipe, the arm and ``--set``."""
        run: dict[str, Any] = {
            arm.lr_key: lr, "train.epochs": arm.epochs, "train.seed": seed,
            "train.device": self.device, "train.progress": False,
            "name": f"{self.experiment.name}/{arm.name}/{phase}/seed{seed}",
        }
        if self.threads is not None:
            run["train.threads"] = self.threads
        run.update(depends or {})
        return run

    def check_set(self) -> None:
        """Refuse a ``--set`` of a key :meth:`run_overrides` sets in every run (it would be ignored)
        or of the dataset and split of :meth:`split_overrides` (it would break the protocol's split)."""
        for arm in self.experiment.arms:
            owned = self.run_overrides(arm, "tune", 0, 0.0, dict.fromkeys(arm.depends, ""))
            split = self.split_overrides(arm, "tune")
            for item in self.experiment.extra_overrides:
                key, _ = parse_override(item)
                for target in owned:
                    if target == key or target.startswith(key + "."):
                        raise UserError(f"--set {item!r}: the runner sets each run's {target} "
                                        f"{_set_by(arm, target)}, so this override would be ignored; drop it")
                for target, value in split.items():
                    if target == key or target.startswith(key + ".") or _sets_within(value, target, key):
                        raise UserError(
                            f"--set {item!r}: each run's {target} is the experiment's dataset and split "
                            "(a validation split of the training set to tune the rate, the test set for "
                            "the final runs); choose the dataset with the experiment's own option "
                            "(e.g. --dataset) instead")

    def _spec(self, phase: str, arm: Arm, seed: int, lr: float | None) -> dict[str, Any] | None:
        """The spec of a run whose prerequisites are met, else None. A probe is a tuning run at a
        rate outside the grid: the same config, its own folder."""
        lr = lr if phase in SEARCH_PHASES else self.lr_of(arm)
        if lr is None:
            return None
        setting = "tune" if phase == "probe" else phase
        depends, relative = {}, {}
        for key, other_name in arm.depends.items():
            other = self.experiment.arm(other_name)
            other_lr = self.lr_of(other) if phase == "final" else self._chosen.get(other.name, {}).get("lr")
            if other_lr is None:
                return None
            folder = self.folder(other, setting, seed, other_lr)
            if str(folder) not in self._done:
                return None
            if self._done[str(folder)].get("failed"):
                raise UserError(f"arm {arm.name!r} needs {other.name!r} {phase} seed {seed}, which "
                                f"failed: {self._done[str(folder)]['failed']}")
            depends[key] = str(folder / "last.pt")
            relative[key] = str((folder / "last.pt").relative_to(self.out))
        folder = self.folder(arm, phase, seed, lr)
        return {"experiment": self.experiment.name, "arm": arm.name, "phase": phase, "seed": seed,
                "lr": lr, "eval_set": "validation" if phase in SEARCH_PHASES else "test",
                "folder": str(folder), "depends": relative, "smoke": self.smoke,
                "config": self.config(arm, setting, seed, lr, depends).to_dict()}

    def tasks(self) -> list[tuple[str, Arm, int, float | None]]:
        """Every run, in the order they are started: each arm's tuning then final runs, then
        the probes (they decide nothing, so they come last)."""
        out: list[tuple[str, Arm, int, float | None]] = []
        exp = self.experiment
        for arm in exp.arms:
            out += [("tune", arm, s, lr) for lr in arm.lr_grid for s in exp.tuning_seeds]
            out += [("final", arm, s, None) for s in exp.seeds]
        for arm in exp.arms:
            out += [("probe", arm, s, lr) for lr in exp.probes.get(arm.name, []) for s in exp.tuning_seeds]
        return out

    # ---------------------------------------------------------------- running

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def _record_done(self, task: tuple, record: dict[str, Any], folder: str) -> None:
        phase, arm, _, _ = task
        self._done[folder] = record
        if phase == "tune" and arm.name not in self._chosen:
            folders = [self.folder(arm, "tune", s, lr) for lr in arm.lr_grid
                       for s in self.experiment.tuning_seeds]
            if all(str(f) in self._done for f in folders):
                self._chosen[arm.name] = self.choose(arm)
                chosen = self._chosen[arm.name]
                self.log(f"   {arm.name}: learning rate {chosen['lr']:g}"
                         + (" (at the edge of the grid)" if chosen["at_edge"] else ""))

    def choose(self, arm: Arm) -> dict[str, Any]:
        table = {}
        for lr in arm.lr_grid:
            runs = [load_run(self.folder(arm, "tune", s, lr), self.experiment.protocol)
                    for s in self.experiment.tuning_seeds]
            table[lr] = [r["final_acc"] for r in runs]
        return choose_lr(table)

    def train(self) -> None:
        """Train every run not yet finished (in ``jobs`` processes), in dependency order."""
        self.out.mkdir(parents=True, exist_ok=True)
        pending = self.tasks()
        running: dict[Future, tuple] = {}
        executor = _Serial() if self.jobs == 1 else ProcessPoolExecutor(
            self.jobs, get_context("spawn"), initializer=_run_process_init, initargs=(os.getpid(),))
        started = time.perf_counter()
        with executor, StopOnSignal() as stop:
            while pending or running:
                if stop.signum is not None:
                    self._stop(executor, running, stop.signum)
                progressed = True
                while progressed:
                    progressed = False
                    for task in list(pending):
                        spec = self._spec(*task)
                        if spec is None:
                            continue
                        pending.remove(task)
                        progressed = True
                        if _finished(Path(spec["folder"])):
                            self._record_done(task, execute(spec), spec["folder"])
                            continue
                        self.log(f"== {spec['arm']} {spec['phase']} seed {spec['seed']} lr {spec['lr']:g}")
                        running[executor.submit(execute, spec)] = (task, spec["folder"])
                        if isinstance(executor, _Serial):  # done already: record it first
                            progressed = False
                            break
                if not running:
                    if pending:
                        names = sorted({f"{t[1].name} {t[0]}" for t in pending})
                        raise UserError(f"cannot schedule {names}: what they need never finished")
                    break
                finished, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    task, folder = running.pop(future)
                    try:
                        record = future.result()
                    except RunnerStopped as exc:  # a signal reached the run (usually the runner too)
                        self._stop(executor, running, stop.signum or signal.SIGTERM,
                                   [folder] if exc.saved else [])
                    self._record_done(task, record, folder)
                    acc = load_run(Path(folder), self.experiment.protocol)["final_acc"]
                    state = f"FAILED: {record['failed']}" if record.get("failed") else \
                        f"{record['eval_set']} acc {100 * acc:.2f}%"
                    self.log(f"   done {record['arm']} {record['phase']} seed {record['seed']}: {state}"
                             f" ({(record['wall_seconds'] or 0):.0f} s)")
        self.train_wall = time.perf_counter() - started

    def _stop(self, executor: Any, running: dict[Future, tuple], signum: int,
              saved: list[str] | None = None) -> None:
        """On SIGTERM/SIGINT: start nothing more, let the runs in flight save and stop (SIGTERM is
        passed on to their processes, which a signal to this process alone does not reach),
        record those that finished meanwhile, and raise :class:`RunnerStopped`."""
        saved = list(saved or [])
        for pid in list(getattr(executor, "_processes", None) or {}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for future in running:
            future.cancel()
        for future, (task, folder) in running.items():
            if future.cancelled():
                continue
            try:
                self._record_done(task, future.result(), folder)
            except RunnerStopped as exc:
                if exc.saved:
                    saved.append(folder)
            except Exception as exc:  # e.g. a run process that the signal ended while idle
                self.log(f"   {folder}: {type(exc).__name__}: {exc}")
        name = signal.Signals(signum).name
        where = f" ({len(saved)} run(s) in flight saved their checkpoints)" if saved else ""
        raise RunnerStopped(f"stopped by {name}{where}; run the same command again to continue",
                            128 + signum)

    def run(self, train: bool = True) -> dict[str, Any]:
        """Prepare, train (unless ``train`` is False: only finished runs are read) and report."""
        self.training = train
        if self.experiment.prepare is not None:
            self.prepared = self.experiment.prepare(self)
            self.violations = self.check()
        if train:
            self.train()
        else:
            for task in self.tasks():  # fill in what is on disk
                spec = self._spec(*task)
                if spec is not None and _finished(Path(spec["folder"])):
                    self._record_done(task, execute(spec), spec["folder"])
            self._refuse_finals_of_unknown_rate()
        results = self.collect()
        self.write(results)
        return results

    def _refuse_finals_of_unknown_rate(self) -> None:
        """``--report``: an arm whose final runs are on disk while its rate is unknown here (its
        tuning runs incomplete, e.g. its rate was given by ``--tuned-lr``) would be tabulated
        without them."""
        for arm in self.experiment.arms:
            if self.lr_of(arm) is not None:
                continue
            finished = [s for s in self.experiment.seeds if _finished(self.folder(arm, "final", s))]
            if finished:
                raise UserError(
                    f"{self.out} holds final runs of {arm.name} (seeds {', '.join(map(str, finished))}) "
                    "but not all of its tuning runs, so this report cannot tell their rate: if the "
                    "rate came from an earlier tuning or another arm, repeat the --tuned-lr or --lr-from "
                    "of the command that trained them (results.json's \"command\")")

    def run_check(self, arm: Arm, seed: int, lr: float, phase: str = "check") -> dict[str, Any]:
        """Train (or read) one validation-split run outside the arms' grid (a preparatory check)."""
        spec = {"experiment": self.experiment.name, "arm": arm.name, "phase": phase, "seed": seed,
                "lr": lr, "eval_set": "validation", "depends": {}, "smoke": self.smoke,
                "folder": str(self.out / "runs" / phase / arm.name / f"seed{seed}"),
                "config": self.config(arm, "tune", seed, lr).to_dict()}
        if not _finished(Path(spec["folder"])):
            if not self.training:
                raise UserError(f"--report reads finished runs only, and the {phase} run of {arm.name} "
                                f"(seed {seed}, lr {lr:g}) that this experiment needs first is not in "
                                f"{self.out}; run the command without --report first")
            self.log(f"== {phase} {arm.name} seed {seed} lr {lr:g}")
        execute(spec)
        return load_run(Path(spec["folder"]), self.experiment.protocol)

    # ---------------------------------------------------------------- results

    def collect(self) -> dict[str, Any]:
        exp, protocol = self.experiment, self.experiment.protocol
        arms: dict[str, Any] = {}
        for arm in exp.arms:
            tune_runs = [load_run(self.folder(arm, "tune", s, lr), protocol) for lr in arm.lr_grid
                         for s in exp.tuning_seeds if _finished(self.folder(arm, "tune", s, lr))]
            chosen = self._chosen.get(arm.name)
            lr = self.lr_of(arm)
            finals = [] if lr is None else [
                load_run(self.folder(arm, "final", s, lr), protocol) for s in exp.seeds
                if _finished(self.folder(arm, "final", s, lr))]
            for run in finals + tune_runs:
                run["run_dir"] = str(Path(run["folder"]).relative_to(self.out))
            ok = [r for r in finals if r["final_acc"] is not None]
            probes = self._probes(arm)
            arms[arm.name] = {
                "group": arm.group, "label": arm.label, "recipe": arm.recipe,
                "overrides": arm.overrides, "data": asdict(arm.data), "epochs": arm.epochs,
                "note": arm.note, "lr": lr,
                "lr_source": "tuned" if arm.lr_grid else ("from " + arm.lr_from if arm.lr_from else "fixed"),
                "lr_reason": arm.lr_reason, "lr_grid": arm.lr_grid, "lr_choice": chosen,
                "seeds": [r["seed"] for r in ok], "failed_seeds": [r["seed"] for r in finals if r not in ok],
                "final_acc": describe([r["final_acc"] for r in ok], protocol.confidence),
                "best_acc": describe([r["best_acc"] for r in ok], protocol.confidence),
                "final_train_acc": describe([r["final_train_acc"] for r in ok], protocol.confidence),
                "converged": sum(bool(r["converged"]) for r in ok), "runs_total": len(ok),
                "train_seconds": sum(r.get("train_seconds") or 0.0 for r in finals + tune_runs),
                "probe_seconds": sum(r.get("train_seconds") or 0.0 for p in probes for r in p["runs"]),
                "runs": finals, "tuning_runs": tune_runs, "probes": probes,
            }
        comparisons = paired_comparisons(exp.comparisons, arms, protocol)
        results: dict[str, Any] = {
            "experiment": exp.name, "title": exp.title, "smoke": self.smoke,
            "violations": self.violations, "command": self.command, "written_at": provenance.now(),
            "machine": provenance.machine(self.device), "device": self.device, "jobs": self.jobs,
            "threads_per_run": self.threads, "train_wall_seconds": getattr(self, "train_wall", None),
            "protocol": {**protocol.to_dict(), "lr_rule": choose_lr({1.0: [1.0]})["rule"]},
            "split": SPLIT_SOURCE, "seeds": exp.seeds, "tuning_seeds": exp.tuning_seeds,
            "settings": exp.settings, "notes": [epochs_note(exp.arms), *exp.notes],
            "prepared": self.prepared,
            "arms": arms, "comparisons": comparisons,
        }
        claims = exp.claims(results) if exp.claims is not None else []
        results["claims"] = family(claims, protocol.confidence, smoke=self.smoke)
        return results

    def _probes(self, arm: Arm) -> list[dict[str, Any]]:
        """The arm's finished probes: per rate its runs and ``beats_choice``, whether the protocol's
        rule (:func:`~experiments.protocol.choose_lr`) would pick the probe's rate over the grid's
        choice if it were in the grid (None until the grid and the probe are complete)."""
        exp, out = self.experiment, []
        chosen = self._chosen.get(arm.name)
        for lr in exp.probes.get(arm.name, []):
            folders = [self.folder(arm, "probe", s, lr) for s in exp.tuning_seeds]
            runs = [load_run(f, exp.protocol) for f in folders if _finished(f)]
            for run in runs:
                run["run_dir"] = str(Path(run["folder"]).relative_to(self.out))
            values = [r["final_acc"] for r in runs]
            beats = None
            if chosen is not None and len(runs) == len(folders):
                table = {row["lr"]: row["values"] for row in chosen["rows"]}
                beats = choose_lr({**table, lr: values})["lr"] == lr
            stats = describe([v for v in values if v is not None])
            out.append({"lr": lr, "runs": runs, "mean": stats["mean"], "std": stats["std"],
                        "beats_choice": beats})
        return out

    def write(self, results: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / RESULTS, json.dumps(_finite(results), indent=1, allow_nan=False,
                                                    default=_json_default) + "\n")
        atomic_write(self.out / TABLE, markdown(results))
        plot_curves(results, self.out / PLOT)
        self.log(f"\nwrote {self.out / RESULTS}, {self.out / TABLE}, {self.out / PLOT}")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON; a diverged loss)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------- tables


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def fmt_stats(stats: dict[str, Any]) -> str:
    """``91.30 ± 1.11 [89.92, 92.68]`` (percent; the interval is the t-interval of the mean)."""
    if stats["mean"] is None:
        return "-"
    if stats["std"] is None:
        return f"{_pct(stats['mean'])} (n = 1)"
    lo, hi = stats["ci"]
    return f"{_pct(stats['mean'])} ± {_pct(stats['std'])} [{_pct(lo)}, {_pct(hi)}]"


def fmt_diff(test: dict[str, Any]) -> str:
    """``+1.23 [+0.10, +2.36], p = 0.036`` (points)."""
    if test["mean_diff"] is None:
        return "-"
    text = f"{100 * test['mean_diff']:+.2f}"
    if test["ci"] is not None:
        text += f" [{100 * test['ci'][0]:+.2f}, {100 * test['ci'][1]:+.2f}]"
    if test["p"] is not None:
        text += f", p = {test['p']:.3g}" + (" (all differences equal)" if test["degenerate"] else "")
    return text


def converged_cell(arm: dict[str, Any]) -> str:
    """``n/total``, or how many plateaued and how much the others still gained in the window."""
    n, total = arm["converged"], arm["runs_total"]
    if n == total:
        return f"{n}/{total}"
    runs = [r for r in arm.get("runs", []) if r.get("final_acc") is not None and not r["converged"]]
    known = [r["plateau"] for r in runs if (r.get("plateau") or {}).get("gain") is not None]
    still = ""
    if known:
        gains, window = [100 * p["gain"] for p in known], max(p["window"] for p in known)
        low, high = f"+{min(gains):.2f}", f"+{max(gains):.2f}"
        amount = low if low == high else f"{low} to {high}"
        rest = ("the other: " if len(runs) == 1 else "the rest: ") if n else ""
        still = f"; {rest}training accuracy {amount} points in the last {window} epochs"
    return f"**not converged** ({n}/{total} plateaued{still})"


def _arm_cell(results: dict[str, Any], name: str) -> str:
    arm = results["arms"][name]
    flag = "" if arm["converged"] == arm["runs_total"] else " ⚠ not converged"
    return f"{arm['label']}{flag}"


def markdown(results: dict[str, Any]) -> str:
    """The experiment's tables, ready for docs/results.md, with the command beside them."""
    m = results["machine"]
    lines = [f"### {results['title']}", ""]
    if results["smoke"]:
        lines += ["> **SMOKE TEST: tiny settings below the protocol's minimums; not a result.**",
                  f"> Violations: {'; '.join(results['violations']) or 'none'}", ""]
    module = results["command"].split()[2] if results["command"].startswith("python -m") else "experiments.X"
    lines += ["```bash", results["command"], "```", "",
              "One stored seed is trained again and compared, bit for bit, with "
              f"`python -m {module} --verify OUT/results.json --arm ARM --seed SEED --out DIR` "
              "(on another machine too).", ""]
    commit = (m.get("git_commit") or "unknown")[:12]
    commit += " (uncommitted changes)" if m.get("git_dirty") else ""
    wall = results.get("train_wall_seconds")
    threads = results["threads_per_run"] or "default"
    lines += [f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {threads} torch thread(s) per run, "
              f"{results['jobs']} run(s) at a time; device {m['device']}. "
              f"Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, spikegrad {m['spikegrad']}, "
              f"commit {commit}. Written {results['written_at']}"
              + (f"; training wall time of this invocation {wall / 60:.1f} min." if wall else ".")
              + _runs_line(results), ""]
    p = results["protocol"]
    seeds = ", ".join(map(str, results["seeds"]))
    lines += [f"Protocol: {len(results['seeds'])} paired seeds per arm ({seeds}); "
              f"learning rates tuned on a validation split of the training set over tuning seeds "
              f"{', '.join(map(str, results['tuning_seeds']))} ({p['lr_rule']}); plateau: training "
              f"accuracy gained < {100 * p['plateau_delta']:g} points over the last "
              f"max({p['plateau_min_window']}, ⌈{p['plateau_fraction']:g}·E⌉) epochs. Accuracies in %: "
              f"mean ± sample std [{100 * p['confidence']:g}% t-interval]; final = last epoch, best = best "
              "epoch (an optimistic estimate: it is picked on the test set).", ""]
    lines += [f"- {note}" for note in results["notes"]]
    if results["notes"]:
        lines.append("")
    groups = list(dict.fromkeys(a["group"] for a in results["arms"].values()))
    for group in groups:
        names = [n for n, a in results["arms"].items() if a["group"] == group]
        if group:
            lines += [f"#### {group}", ""]
        lines += ["| arm | learning rate | seeds | final acc | best acc | final train acc | plateaued | "
                  "epochs |", "|---|---|---|---|---|---|---|---|"]
        for name in names:
            a = results["arms"][name]
            lr = "-" if a["lr"] is None else f"{a['lr']:g}"
            if a["lr_source"] == "tuned" and a["lr_choice"] and a["lr_choice"]["at_edge"]:
                lr += f" (grid edge{_probes_cell(a)})"
            elif a["lr_source"] != "tuned":
                lr += f" ({a['lr_source']}: {a['lr_reason']})" if a["lr_reason"] else f" ({a['lr_source']})"
            failed = f" ({len(a['failed_seeds'])} failed)" if a["failed_seeds"] else ""
            lines.append(f"| {_arm_cell(results, name)} | {lr} | {len(a['seeds'])}{failed} | "
                         f"{fmt_stats(a['final_acc'])} | {fmt_stats(a['best_acc'])} | "
                         f"{fmt_stats(a['final_train_acc'])} | {converged_cell(a)} | {a['epochs']} |")
        lines.append("")
        comps = [c for c in results["comparisons"] if results["arms"][c["a"]]["group"] == group]
        if comps:
            lines += ["| paired difference (points) | seeds | final: mean [CI], p | best: mean [CI], p | "
                      "per seed (final) |", "|---|---|---|---|---|"]
            for c in comps:
                per_seed = ", ".join(f"{100 * d:+.2f}" for d in c["final"]["diffs"])
                lines.append(f"| {_arm_cell(results, c['a'])} − {_arm_cell(results, c['b'])} | "
                             f"{len(c['seeds'])} | {fmt_diff(c['final'])} | {fmt_diff(c['best'])} | "
                             f"{per_seed} |")
            lines.append("")
        extras = _extras_rows(results, names)
        if extras:
            lines += [*extras, ""]
    lines += _lr_tables(results)
    if results["claims"]:
        lines += _claims_table(results["claims"])
    return "\n".join(lines) + "\n"


def _claims_table(claims: list[dict[str, Any]]) -> list[str]:
    """Each claim's verdict alone, and where the table tests several, with all of them tested
    together (:func:`experiments.claims.family`)."""
    together = [c for c in claims if "family_verdict" in c]
    if len(together) < 2:
        return ["| claim | verdict | evidence |", "|---|---|---|",
                *[f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in claims], ""]
    first = together[0]
    k, level, base = first["family_size"], 100 * first["family_confidence"], 100 * first["family_base"]
    lines = [f"| claim | verdict | evidence | verdict with the {k} claims tested together |",
             "|---|---|---|---|"]
    for c in claims:
        cell = "-"
        if "family_verdict" in c:
            lo, hi = c["family_ci"]
            cell = f"**{c['family_verdict']}**: [{100 * lo:+.2f}, {100 * hi:+.2f}] at {level:.4g}%"
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} | {cell} |")
    return [*lines, "", f"The last column tests the {k} claims together (Bonferroni): each difference's "
            f"interval at {level:.4g}% instead of {base:g}%, so that all {k} hold together with at least "
            f"{base:g}% confidence; a claim that holds alone but not together may have passed by chance "
            f"among the {k}.", ""]


def _extras_rows(results: dict[str, Any], names: Iterable[str]) -> list[str]:
    """Other accuracies the runs report at their last epoch (e.g. shortcut heads), mean over seeds."""
    keys: dict[str, None] = {}
    for name in names:
        for run in results["arms"][name]["runs"]:
            for key, value in (run.get("extras") or {}).items():
                if isinstance(value, dict):
                    keys.update({f"{key}.{k}": None for k in value})
                elif isinstance(value, (int, float)):
                    keys[key] = None
    if not keys:
        return []
    rows = ["| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        runs = [r for r in results["arms"][name]["runs"] if r.get("extras")]
        cells = []
        for key in keys:
            head, _, sub = key.partition(".")
            vals = [r["extras"].get(head) for r in runs]
            vals = [v.get(sub) if sub and isinstance(v, dict) else v for v in vals]
            vals = [v for v in vals if isinstance(v, (int, float))]
            cells.append(fmt_stats(describe(vals)) if vals else "-")
        rows.append(f"| {_arm_cell(results, name)} | " + " | ".join(cells) + " |")
    return rows


def _probes_cell(arm: dict[str, Any]) -> str:
    """What the probes past a grid edge found, for the arm's learning-rate cell."""
    parts = []
    for probe in arm.get("probes") or []:
        if probe["beats_choice"] is True:
            parts.append(f"the probe at {probe['lr']:g} scored higher: widen the grid")
        elif probe["beats_choice"] is False:
            parts.append(f"probe at {probe['lr']:g} lower")
    return "; " + ", ".join(parts) if parts else ""


def _lr_tables(results: dict[str, Any]) -> list[str]:
    tuned = [(n, a) for n, a in results["arms"].items() if a["lr_choice"]]
    if not tuned:
        return []
    lines = ["Learning-rate search (final validation accuracy, %, per tuning seed; the chosen rate in bold; "
             "⚠ marks a run that had not plateaued; a probe is a tuning run at a rate outside the grid):",
             "", "| arm | " + " | ".join(["learning rate", "per tuning seed", "mean ± std"]) + " |",
             "|---|---|---|---|"]
    verdicts = []
    for name, arm in tuned:
        by_lr: dict[float, list] = {}
        for run in arm["tuning_runs"]:
            by_lr.setdefault(run["lr"], []).append(run)
        rows = [(row["lr"], by_lr.get(row["lr"], []), row["mean"], row["std"], "") for row in
                arm["lr_choice"]["rows"]]
        rows += [(p["lr"], p["runs"], p["mean"], p["std"], " (probe)") for p in arm.get("probes") or []]
        for lr, runs, mean, std, kind in sorted(rows, key=lambda row: row[0]):
            seeds = ", ".join(("failed" if r["final_acc"] is None else _pct(r["final_acc"]))
                              + ("" if r["converged"] else " ⚠") for r in runs)
            rate = f"**{lr:g}**" if lr == arm["lr_choice"]["lr"] else f"{lr:g}{kind}"
            stats = "-" if mean is None else _pct(mean) + (f" ± {_pct(std)}" if std is not None else "")
            lines.append(f"| {name} | {rate} | {seeds} | {stats} |")
        verdicts += [_probe_verdict(name, arm, probe) for probe in arm.get("probes") or []]
    return [*lines, "", *[f"- {v}" for v in verdicts], *([""] if verdicts else [])]


def _probe_verdict(name: str, arm: dict[str, Any], probe: dict[str, Any]) -> str:
    chosen = arm["lr_choice"]
    row = next(r for r in chosen["rows"] if r["lr"] == chosen["lr"])
    head = f"Probe of {name} at {probe['lr']:g}"
    if probe["beats_choice"] is None:
        return f"{head}: unfinished ({len(probe['runs'])} of the tuning seeds' runs), no verdict yet."
    score = f"{_pct(probe['mean'])}% against {_pct(row['mean'])}% at the chosen {chosen['lr']:g}"
    if probe["beats_choice"]:
        return (f"{head}: **{score}; with this rate in the grid the protocol would choose it**, so the "
                "arm's rate is not tuned: add the rate to its grid and run the experiment again.")
    return f"{head}: {score}; with this rate in the grid the choice would stand."


# --------------------------------------------------------------------------- plot


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Training accuracy and evaluation accuracy per epoch, mean ± std band per arm, one row of
    panels per group (final runs only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(a["group"] for a in results["arms"].values()))
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.4 * len(groups)), squeeze=False,
                             layout="constrained")
    for row, group in enumerate(groups):
        for arm in results["arms"].values():
            if arm["group"] != group:
                continue
            for col, key in enumerate(("train_acc", "eval_acc")):
                curves = [r["curves"][key] for r in arm["runs"] if r["curves"].get(key)]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                data = 100 * np.array([c[:length] for c in curves], dtype=float)
                epochs = np.arange(1, length + 1)
                mean = data.mean(0)
                std = data.std(0, ddof=1) if len(curves) > 1 else np.zeros(length)
                flag = "" if arm["converged"] == arm["runs_total"] else " (not converged)"
                line, = axes[row, col].plot(epochs, mean, label=f"{arm['label']}{flag}")
                axes[row, col].fill_between(epochs, mean - std, mean + std, color=line.get_color(),
                                            alpha=0.2)
        for col, what in enumerate(("training accuracy, %", "test accuracy, %")):
            ax = axes[row, col]
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.set_title(f"{group}: {what.split(',')[0]}" if group else what.split(",")[0])
        axes[row, 1].legend(fontsize="small")
    title = results["title"] + (" — SMOKE TEST, not a result" if results["smoke"] else "")
    fig.suptitle(f"{title}\nmean ± std over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- verify


def verify(results_path: str | Path, arm: str, seed: int, out: str | Path, *, phase: str = "final",
           lr: float | None = None, device: str | None = None, threads: int | None = None,
           verbose: bool = True) -> dict[str, Any]:
    """Train one stored run again from its stored config and compare it with the stored result.

    ``bitwise``: every per-epoch training loss and accuracy and evaluation accuracy is equal.
    The dependencies (an LTL teacher) are read from the stored experiment's folder.
    """
    results_path = Path(results_path)
    if not results_path.is_file():
        raise UserError(f"--verify {str(results_path)!r} does not exist (give an experiment's results.json)")
    results = json.loads(results_path.read_text())
    if arm not in results["arms"]:
        raise UserError(f"{str(results_path)!r} has no arm {arm!r}; its arms: {', '.join(results['arms'])}")
    stored_arm = results["arms"][arm]
    runs = {"final": stored_arm["runs"], "tune": stored_arm["tuning_runs"],
            "probe": [r for p in stored_arm.get("probes") or [] for r in p["runs"]]}[phase]
    stored = [r for r in runs if r["seed"] == seed and (lr is None or r["lr"] == lr)]
    if not stored:
        raise UserError(f"{str(results_path)!r} holds no {phase} run of arm {arm!r} with seed {seed}"
                        + ("" if lr is None else f" at learning rate {lr:g}"))
    if len(stored) > 1:
        rates = ", ".join(f"{r['lr']:g}" for r in stored)
        raise UserError(f"{str(results_path)!r} holds {phase} runs of arm {arm!r} with seed {seed} at "
                        f"{rates}: give --lr to pick one")
    run = stored[0]
    record_path = results_path.parent / run["run_dir"] / RECORD  # beside results.json, wherever it moved
    record = json.loads(record_path.read_text())
    config = from_dict(Config, record["config"])
    depends = record.get("depends") or {}
    changes: dict[str, Any] = {k: str(results_path.parent / rel) for k, rel in depends.items()}
    if device is not None:
        changes["train.device"] = device
    changes["train.threads"] = threads if threads is not None else record.get("threads")
    config = config.with_overrides(changes)
    folder = Path(out) / "verify" / arm / phase / f"seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    spec = {**{k: record[k] for k in ("experiment", "arm", "phase", "seed", "lr", "eval_set")},
            "folder": str(folder), "depends": record.get("depends") or {}, "smoke": record.get("smoke"),
            "config": config.to_dict()}
    new_record = execute(spec)
    again = load_run(folder)
    keys = ("train_loss", "train_acc", "eval_acc")
    old_curves = {k: run["curves"].get(k) for k in keys}
    new_curves = {k: again["curves"].get(k) for k in keys}
    bitwise = old_curves == new_curves
    report = {
        "arm": arm, "phase": phase, "seed": seed, "bitwise": bitwise,
        "stored": {"final_acc": run["final_acc"], "best_acc": run["best_acc"], "machine": record["machine"],
                   "threads": record.get("threads")},
        "rerun": {"final_acc": again["final_acc"], "best_acc": again["best_acc"],
                  "machine": new_record["machine"], "threads": new_record.get("threads")},
        "final_acc_diff": None if again["final_acc"] is None or run["final_acc"] is None
        else again["final_acc"] - run["final_acc"],
        "first_differing_epoch": _first_difference(old_curves, new_curves),
    }
    atomic_write(Path(out) / "verify.json", json.dumps(report, indent=1) + "\n")
    if verbose:
        same = "bit for bit identical" if bitwise else (
            f"different from epoch {report['first_differing_epoch']} on; final accuracy "
            f"{_pct(run['final_acc'])}% stored, {_pct(again['final_acc'])}% now "
            f"({100 * (report['final_acc_diff'] or 0):+.2f} points)")
        print(f"{arm} {phase} seed {seed}: {same}\nwrote {Path(out) / 'verify.json'}")
    return report


def _first_difference(a: dict[str, list | None], b: dict[str, list | None]) -> int | None:
    epochs = max(len(v or []) for v in (*a.values(), *b.values()))
    for e in range(epochs):
        for key in a:
            x, y = a[key] or [], b[key] or []
            if (x[e] if e < len(x) else None) != (y[e] if e < len(y) else None):
                return e + 1
    return None


# --------------------------------------------------------------------------- command line


SCALES = {"small": "sized for 2 CPU cores (the default)",
          "large": "bigger nets, more epochs and seeds, for a GPU"}


def add_common_arguments(parser: argparse.ArgumentParser, scales: dict[str, str] | None = None) -> None:
    """The arguments every experiment takes; ``scales``: its scales (name -> what it is for)."""
    scales = SCALES if scales is None else scales
    parser.add_argument("--out", required=True, help="output folder (results, tables, plot, run folders)")
    parser.add_argument("--scale", choices=tuple(scales), default="small",
                        help="; ".join(f"{name}: {text}" for name, text in scales.items()))
    parser.add_argument("--device", help="cpu (the default), cuda, cuda:N or auto; with --verify: "
                        "the stored run's device unless given")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings on the built-in digits, allowed below the protocol's "
                             "minimums; outputs are marked SMOKE and are not results")
    parser.add_argument("--seeds", type=int, nargs="+", help="final seeds (default: the scale's)")
    parser.add_argument("--tuning-seeds", type=int, nargs="+", help="tuning seeds (default: the scale's)")
    parser.add_argument("--epochs", type=int,
                        help="every arm's epochs, but for an arm trained relative to another (vanilla-long "
                             "keeps twice vanilla's) and a teacher other arms learn from (it keeps its own)")
    parser.add_argument("--arms", nargs="+", help="run only these arms (names as in results.md)")
    parser.add_argument("--jobs", type=int, help="runs at a time (default: one per core on CPU, 1 on GPU)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs on CPU)")
    parser.add_argument("--tuned-lr", nargs="+", default=[], metavar="ARM=RATE",
                        help="skip a tuned arm's tuning and use RATE, a value of its grid that an earlier "
                             "tuning of this experiment chose (recorded as such in the results)")
    parser.add_argument("--lr-from", nargs="+", default=[], metavar="ARM=SOURCE",
                        help="skip a tuned arm's tuning and train it at the rate chosen for the arm "
                             "SOURCE (recorded as not tuned on its own); SOURCE comes along with --arms")
    parser.add_argument("--probe", nargs="+", default=[], metavar="ARM=RATE",
                        help="also train a tuned arm at RATE, outside its grid, on the tuning seeds (after "
                             "the arms' runs) and report whether its choice would stand with RATE in the "
                             "grid (checks a choice at the grid's edge; the arm keeps its choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (recorded in the command)")
    parser.add_argument("--report", action="store_true", help="only tabulate the finished runs")
    parser.add_argument("--verify", metavar="RESULTS_JSON",
                        help="re-train one stored run (--arm, --seed) and compare it with the stored one")
    parser.add_argument("--arm", help="with --verify: the arm")
    parser.add_argument("--seed", type=int, help="with --verify: the seed")
    parser.add_argument("--phase", choices=("final", "tune", "probe"), default="final", help="with --verify")
    parser.add_argument("--lr", type=float,
                        help="with --verify --phase tune or probe: the learning rate of the run")
    parser.add_argument("--quiet", action="store_true")


def apply_common(experiment: Experiment, args: argparse.Namespace) -> Experiment:
    """The command line's seeds, epochs, arm selection and overrides applied to an experiment."""
    if args.seeds:
        experiment.seeds = list(args.seeds)
    if args.tuning_seeds:
        experiment.tuning_seeds = list(args.tuning_seeds)
    if args.epochs is not None:
        experiment.set_epochs(args.epochs)
    _once("--lr-from", args.lr_from)
    for item in args.lr_from:  # before --arms, which brings each source along
        set_lr_from(experiment, item)
    if args.arms:
        keep = set(args.arms)
        unknown = keep - {a.name for a in experiment.arms}
        if unknown:
            raise UserError(f"unknown arms {sorted(unknown)}; this experiment has: "
                            f"{', '.join(a.name for a in experiment.arms)}")
        needed = set(keep)
        for arm in reversed(experiment.arms):  # what the kept arms need comes along
            if arm.name in needed:
                needed |= set(arm.depends.values()) | {a for a in (arm.lr_from, arm.epochs_from) if a}
        experiment.arms = [a for a in experiment.arms if a.name in needed]
        experiment.comparisons = [c for c in experiment.comparisons if {c.a, c.b} <= needed]
    _once("--tuned-lr", args.tuned_lr)
    for item in args.tuned_lr:
        set_tuned_lr(experiment, item)
    for item in args.probe:
        arm, rate = _arm_at_rate(experiment, "--probe", item, "plain16/shortcut=3e-4")
        experiment.add_probe(arm.name, rate)
    experiment.extra_overrides = list(args.set)
    return experiment


def _once(option: str, items: list[str]) -> None:
    """A :class:`UserError` for an arm that ``option``'s ``ARM=VALUE`` items name twice."""
    given = [item.partition("=")[0] for item in items]
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise UserError(f"{option}: arm {', '.join(map(repr, twice))} is given twice; give each arm once")


def _arm_at_rate(experiment: Experiment, option: str, item: str, example: str) -> tuple[Arm, float]:
    """The arm (among those this command runs) and the rate of ``option``'s ``ARM=RATE``."""
    name, sep, text = item.partition("=")
    if not sep:
        raise UserError(f"{option} {item!r}: write ARM=RATE, e.g. {option} {example}")
    arm = next((a for a in experiment.arms if a.name == name), None)
    if arm is None:
        raise UserError(f"{option} {item!r}: no arm {name!r} among the arms this command runs "
                        f"(--arms selects them): {', '.join(a.name for a in experiment.arms)}")
    try:
        return arm, float(text)
    except ValueError:
        raise UserError(f"{option} {item!r}: {text!r} is not a number; write ARM=RATE, e.g. "
                        f"{option} {example}") from None


def set_tuned_lr(experiment: Experiment, item: str) -> None:
    """``ARM=RATE``: the arm trains its final runs at RATE, which an earlier tuning over the arm's
    grid chose, instead of tuning again; the results name the rate as fixed, with that reason."""
    arm, rate = _arm_at_rate(experiment, "--tuned-lr", item, "mnist/atan=0.1")
    if not arm.lr_grid:
        raise UserError(f"--tuned-lr {item!r}: arm {arm.name!r} does not tune its rate "
                        f"({arm.lr_reason or 'fixed'}); drop it")
    match = [lr for lr in arm.lr_grid if math.isclose(rate, lr, rel_tol=1e-9)]
    grid = ", ".join(f"{lr:g}" for lr in arm.lr_grid)
    if not match:
        raise UserError(f"--tuned-lr {item!r}: {rate:g} is not in the arm's grid ({grid}); a tuning "
                        "over that grid can only have chosen one of its values")
    arm.lr_reason = f"chosen by an earlier tuning over {grid} (--tuned-lr)"
    arm.lr, arm.lr_grid = match[0], []  # the grid's own value, not a float near it


def set_lr_from(experiment: Experiment, item: str) -> None:
    """``ARM=SOURCE``: the tuned arm ARM skips its tuning and trains its final runs at the rate
    chosen for SOURCE (an ablation at its parent's rate); the results name it as taken from
    SOURCE, not tuned on its own."""
    name, sep, source_name = item.partition("=")
    example = "plain16/evolutionary-deep=plain16/evolutionary"
    if not sep:
        raise UserError(f"--lr-from {item!r}: write ARM=SOURCE, e.g. --lr-from {example}")
    names = [a.name for a in experiment.arms]
    for given in (name, source_name):
        if given not in names:
            raise UserError(f"--lr-from {item!r}: no arm {given!r}; this experiment has: {', '.join(names)}")
    arm, source = experiment.arm(name), experiment.arm(source_name)
    if not arm.lr_grid:
        raise UserError(f"--lr-from {item!r}: arm {name!r} does not tune its rate "
                        f"({arm.lr_reason or 'fixed'}); drop it")
    chain = source
    while chain.lr_from:  # the source's own rate may come from another arm, but not from this one
        chain = experiment.arm(chain.lr_from)
    if chain is arm:
        raise UserError(f"--lr-from {item!r}: {source_name!r} takes its rate from {name!r} itself; "
                        "name an arm whose rate is tuned or fixed")
    arm.lr_from, arm.lr, arm.lr_grid = source.name, None, []
    arm.lr_reason = "not tuned on its own (--lr-from)"


def _sets_within(value: Any, target: str, key: str) -> bool:
    """Whether ``key`` names an entry the runner gave inside ``target``'s value (``data.options.x``
    where the arm's options have ``x``); entries it did not give (a dataset option of the user's)
    are free."""
    if not key.startswith(target + "."):
        return False
    for part in key[len(target) + 1:].split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


#: what sets the keys of :meth:`Runner.run_overrides` (the arm's rate and teacher aside)
SET_BY = {"train.epochs": "from --epochs", "train.seed": "from --seeds and --tuning-seeds",
          "train.device": "from --device", "train.threads": "from --threads"}


def _set_by(arm: Arm, key: str) -> str:
    if key == arm.lr_key:
        return "from the arms' learning rates (tuned on the validation split, or fixed)"
    if key in arm.depends:
        return f"to the checkpoint of {arm.depends[key]}"
    return SET_BY.get(key, "itself")


#: the options only ``--verify`` reads, and the ones every mode reads; ``--verify`` takes the
#: rest from the stored run
VERIFY_ONLY = {"verify", "arm", "seed", "phase", "lr"}
EVERY_MODE = {"help", "out", "device", "threads", "quiet"}


def refuse_unused_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An option the chosen mode would not read is an error, not silently dropped."""
    for action in parser._actions:
        if action.dest == "help" or getattr(args, action.dest) == action.default:
            continue
        option = "/".join(action.option_strings)
        if args.verify and action.dest not in VERIFY_ONLY | EVERY_MODE:
            raise UserError(f"{option} does not apply to --verify, which trains the stored run again with "
                            "its stored settings; drop it")
        if not args.verify and action.dest in VERIFY_ONLY:
            raise UserError(f"{option} applies only with --verify RESULTS_JSON; drop it or add --verify")


def main(module: str, build: Callable[[argparse.Namespace], Experiment],
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         argv: list[str] | None = None, description: str = "",
         scales: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The command line of an experiment module: run (resumable), ``--report`` or ``--verify``;
    ``scales``: the module's ``--scale`` choices (default: :data:`SCALES`)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    add_common_arguments(parser, scales)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        refuse_unused_options(parser, args)
        if args.verify:
            if args.arm is None or args.seed is None:
                raise UserError("--verify needs --arm and --seed (which stored run to train again)")
            verify(args.verify, args.arm, args.seed, args.out, phase=args.phase, lr=args.lr,
                   device=args.device, threads=args.threads, verbose=not args.quiet)
            return None
        args.device = args.device or "cpu"
        experiment = apply_common(build(args), args)
        jobs = args.jobs or (1 if args.device != "cpu" else provenance.usable_cores())
        runner = Runner(experiment, args.out, device=args.device, jobs=jobs, threads=args.threads,
                        smoke=args.smoke, command=provenance.command_line(module, argv),
                        verbose=not args.quiet)
        results = runner.run(train=not args.report)
        if not args.quiet:
            print("\n" + markdown(results))
        return results
    except RunnerStopped as exc:
        print(exc.message, file=sys.stderr)
        raise SystemExit(exc.status) from None
    except ProtocolError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
