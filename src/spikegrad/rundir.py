"""A run folder and its bookkeeping: every file a training run writes, and its checkpoints.

:class:`RunFolder` is the one place that

- claims the folder for one process (:func:`claim`, :meth:`~RunFolder.prepare`: the lock of
  :mod:`spikegrad.runlock`), refuses one that holds another run unless told to replace it
  (:func:`check_destination`), and removes an old run's files for ``--overwrite``
  (:func:`remove_run`: only the files spikegrad writes, :data:`RUN_FILES`);
- prepares the folder (:meth:`~RunFolder.prepare`: checks it can be written, removes the
  temporaries of killed writes, writes ``config.yaml`` and ``metrics.jsonl`` with the rows so
  far, repairs a torn last line of ``gradients.jsonl`` on a resume);
- appends a metrics row (:meth:`~RunFolder.append_metrics`), writes ``summary.json`` and
  ``analysis.json`` (atomically: :mod:`spikegrad.durable`);
- saves checkpoints (:meth:`~RunFolder.save_checkpoint`: ``last.pt``, keeping the one
  before as ``last.prev.pt``, and ``best.pt``) and reads one back to resume
  (:meth:`~RunFolder.read_checkpoint`, with the config check of :mod:`spikegrad.resume`).

Under ``torchrun`` only rank 0 touches the files; every collective that keeps the other
processes in step with it is here too: a failure on rank 0 (a folder it cannot write, a
full disk, a bad checkpoint) stops every process with the same error, the checkpoint read by
rank 0 reaches every process, the training sums of an epoch in progress and every process's
random state go into the checkpoint, and a stop signal seen by any process stops all.
Without a folder (``path`` None) nothing is written. A write that fails (a full disk, a
file-size limit, a folder that became read-only) stops the run with one line saying what
``last.pt`` still holds (:meth:`RunFolder.write_failure`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from torch import nn

from spikegrad import durable, runlock
from spikegrad.analysis import ANALYSIS_FILE, write_analysis
from spikegrad.checkpoint import load_checkpoint, previous_path, save_checkpoint
from spikegrad.config import Config
from spikegrad.diagnostics import GRADIENTS_FILE
from spikegrad.distributed import DistributedContext
from spikegrad.errors import UserError
from spikegrad.resume import EpochProgress, StopOnSignal, check_resume_config, config_differences, rng_state

__all__ = [
    "CLI_TERMS", "CONFIG_FILE", "METRICS_FILE", "PYTHON_TERMS", "RUN_FILES", "RUN_FOLDERS", "SUMMARY_FILE",
    "TRAINER_TERMS", "RunFolder", "Terms", "check_destination", "claim", "default_run_folder",
    "finished_summary", "remove_run", "run_markers", "run_state", "take",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST, BEST = "last.pt", "best.pt"
PREVIOUS = "last.prev.pt"
#: a folder holding one of these holds a run (in the order an error names them)
MARKERS = (LAST, BEST, PREVIOUS, SUMMARY_FILE, METRICS_FILE, CONFIG_FILE)
#: every file spikegrad writes into a run folder (training, ``eval --raster``, ``report``,
#: ``fdg``): what ``--overwrite`` removes, with :data:`RUN_FOLDERS`
RUN_FILES = (*MARKERS, ANALYSIS_FILE, GRADIENTS_FILE, "recording.npz", "raster.png",
             "membrane.png", "report.html", "fdg.json", "fdg.png", ".write-test")
#: subfolders spikegrad writes: TensorBoard events, and an LTL teacher trained first (itself
#: a run folder)
RUN_FOLDERS = ("tensorboard", "teacher")
RUNS = "runs"


# --------------------------------------------------------------------------- where a run goes


def default_run_folder(name: str) -> Path:
    """``runs/<name>`` (``runs/run`` without a name); a name that would leave ``runs/`` (an
    absolute path, ``..``, a backslash) is a :class:`UserError`. Names are free labels and may
    nest with ``/`` (``cifar10/resnet19``), so they are checked here, where one becomes a
    folder, not when a config loads."""
    name = name or "run"
    pure = PurePath(name)
    why = ("it is an absolute path" if pure.is_absolute() or pure.drive or pure.root
           else "it climbs out with '..'" if ".." in pure.parts
           else "it holds a backslash" if "\\" in name
           else "it holds a NUL character" if "\0" in name
           else "it names no folder" if not pure.parts else None)
    if why:
        raise UserError(f"the run name {name!r} cannot be a folder under {RUNS}/ ({why}); use a plain "
                        "name such as 'cifar10-resnet19', or give the folder with --out")
    return Path(RUNS) / pure


def run_markers(folder: str | Path) -> list[str]:
    """The files that make ``folder`` hold a run (:data:`MARKERS`), in that order."""
    folder = Path(folder)
    return [name for name in MARKERS if (folder / name).exists()]


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@dataclass(frozen=True)
class Terms:
    """How the guard's errors name the ways out, in the caller's terms: command-line flags
    (:data:`CLI_TERMS`), :func:`spikegrad.train`'s arguments (:data:`PYTHON_TERMS`) or
    :class:`~spikegrad.trainer.Trainer`'s (:data:`TRAINER_TERMS`). ``resume`` and ``own_folder``
    are formats of ``last`` (the folder's ``last.pt``) and ``folder`` (a checkpoint's folder)."""

    resume: str  #: how to continue the run in the folder
    overwrite: str  #: how to start over in it
    out: str  #: the run folder's argument
    own_folder: str  #: how to train in a checkpoint's own folder


CLI_TERMS = Terms(resume="--resume", overwrite="--overwrite", out="--out", own_folder="leave out --out")
PYTHON_TERMS = Terms(resume="resume_from={last!r}", overwrite="overwrite=True", out="out_dir",
                     own_folder="out_dir={folder!r}")
TRAINER_TERMS = Terms(resume="trainer.resume({last!r}) before fit()",
                      overwrite="Trainer(..., overwrite=True)", out="out_dir",
                      own_folder="out_dir={folder!r}")


def check_destination(folder: str | Path, resume_from: str | Path | None, overwrite: bool,
                      terms: Terms = CLI_TERMS) -> None:
    """The one guard of a run folder (``spikegrad train``, :func:`spikegrad.train`,
    :meth:`Trainer.fit <spikegrad.trainer.Trainer.fit>`, ``spikegrad demo``): a folder that
    holds a run (:func:`run_markers`) is only written by a run that continues it
    (``resume_from`` in that folder) or with ``overwrite``; ``overwrite`` never removes the
    checkpoint it resumes from. Errors name the ways out in ``terms``."""
    folder = Path(folder)
    resume_from = Path(resume_from) if resume_from is not None else None
    if overwrite and resume_from is not None and _inside(resume_from, folder):
        raise UserError(f"{terms.overwrite} would delete {str(resume_from)!r}, the checkpoint the run "
                        f"continues from; drop {terms.overwrite} to continue the run in {str(folder)!r}")
    if overwrite or (resume_from is not None and _same_folder(resume_from.parent, folder)):
        return
    held = run_markers(folder)
    if not held:
        return
    if resume_from is not None:
        own = terms.own_folder.format(folder=str(resume_from.parent))
        raise UserError(
            f"cannot continue {str(resume_from)!r} into {str(folder)!r}: that folder already holds "
            f"another run ({held[0]}); continue in the checkpoint's own folder ({own}), choose an "
            f"empty {terms.out}, or replace that run with {terms.overwrite}")
    resume = terms.resume.format(last=str(folder / LAST))
    raise UserError(f"{str(folder)!r} already holds a run ({held[0]}); continue it with {resume}, "
                    f"start it over with {terms.overwrite}, or choose another {terms.out}")


def take(folder: str | Path, *, resume_from: str | Path | None = None, overwrite: bool | None = None,
         terms: Terms = CLI_TERMS, verbose: bool = False) -> None:
    """On the process that writes ``folder``: take its lock (:mod:`spikegrad.runlock`), then
    apply the guard (:func:`check_destination`; ``overwrite`` None skips it, for a folder its
    caller already took) and, with ``overwrite``, remove the old run (:func:`remove_run`).
    The lock stays taken: give it back with :func:`spikegrad.runlock.release`."""
    folder = Path(folder)
    runlock.acquire(folder, out=terms.out)
    try:
        if overwrite is not None:
            check_destination(folder, resume_from, overwrite, terms)
        if overwrite:
            try:
                removed = remove_run(folder)
            except OSError as exc:
                raise UserError(f"cannot remove the old run in {str(folder)!r}: {exc}; remove it "
                                f"yourself or choose another {terms.out}") from exc
            if removed and verbose:
                print(f"removed the old run in {str(folder)!r}: {', '.join(removed)}", flush=True)
    except BaseException:
        runlock.release(folder)
        raise


def remove_run(folder: str | Path) -> list[str]:
    """Delete the run in ``folder``: its files (:data:`RUN_FILES`, the temporaries of their
    killed writes), TensorBoard events and LTL teacher run; any other file stays (and keeps its
    subfolder). Returns what was removed, relative to ``folder``."""
    folder = Path(folder)
    removed = [name for name in RUN_FILES if _unlink(folder / name)]
    removed += durable.remove_orphans(folder, RUN_FILES)
    events = folder / "tensorboard"
    if events.is_dir() and not events.is_symlink():
        removed += [f"tensorboard/{p.name}" for p in sorted(events.glob("events.out.tfevents.*"))
                    if _unlink(p)]
        _remove_if_empty(events)
    teacher = folder / "teacher"
    if teacher.is_dir() and not teacher.is_symlink():
        removed += [f"teacher/{name}" for name in remove_run(teacher)]
        _remove_if_empty(teacher / runlock.LOCK_FILE, teacher)
    return removed


def _unlink(path: Path) -> bool:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    return False


def _remove_if_empty(*paths: Path) -> None:
    """Remove each folder once it holds nothing (a teacher's lock file of a finished run goes
    first); a folder with anything else in it stays."""
    for path in paths:
        if path.is_file() and path.name == runlock.LOCK_FILE and runlock.holder(path.parent) is None:
            if len(list(path.parent.iterdir())) == 1:
                path.unlink()
            continue
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def claim(folder: str | Path | None, dist: DistributedContext, *, resume_from: str | Path | None = None,
          overwrite: bool = False, terms: Terms = CLI_TERMS, verbose: bool = False) -> Iterator[None]:
    """Hold ``folder``'s lock (rank 0) while the block trains into it, after the guard
    (:func:`take`): a folder that holds another run is refused unless the run continues from
    it (``resume_from``), or ``overwrite`` removes the old run first. Every process stops
    with rank 0's error."""
    if folder is None:
        yield
        return
    folder = Path(folder)
    error, locked = None, False
    if dist.is_main:
        try:
            take(folder, resume_from=resume_from, overwrite=overwrite, terms=terms, verbose=verbose)
            locked = True
        except UserError as exc:
            error = exc
    try:
        dist.agree(error)  # also: nobody looks at the folder before the old run is gone
        yield
    finally:
        if locked:
            runlock.release(folder)


class RunFolder:
    """The folder ``path`` of one run, written by the main process only (None: no files)."""

    def __init__(self, path: str | Path | None, dist: DistributedContext, verbose: bool = False, *,
                 terms: Terms = CLI_TERMS) -> None:
        self.path = Path(path) if path is not None else None
        self.dist = dist
        #: whether this process writes the files
        self.writes = self.path is not None and dist.is_main
        #: where ``last.pt`` stands, in words (None: not written nor resumed from yet)
        self.last_saved: str | None = None
        self.verbose = verbose
        #: how errors name the ways out (command-line flags or Python arguments)
        self.terms = terms
        self._last_is_good = False  # written or resumed from here: worth keeping as previous
        self._locked = False
        self._source: Path | None = None  # the checkpoint the run continues from
        self._wrote = False  # this run has saved a checkpoint here

    @property
    def enabled(self) -> bool:
        """Whether the run has a folder (true on every process of such a run)."""
        return self.path is not None

    @property
    def local_path(self) -> Path | None:
        """The folder on the process that writes it, else None."""
        return self.path if self.writes else None

    @property
    def last_checkpoint(self) -> Path | None:
        return None if self.path is None else self.path / LAST

    # ------------------------------------------------------------------ files

    def prepare(self, config: Config, history: list[dict[str, Any]], *,
                overwrite: bool | None = None) -> None:
        """Before training starts, on rank 0 (every process stops if it fails): take the
        folder's lock and apply the guard (:func:`take`: a folder holding another run is
        refused unless the run continues from it or ``overwrite`` removes it; None: no guard,
        for a folder its caller took), check it can be written, remove the temporaries of
        killed writes, write ``config.yaml`` and ``metrics.jsonl`` (the rows so far, on a
        resume) and, on a resume, cut a torn last line off ``gradients.jsonl``. A fresh run
        removes an earlier ``summary.json`` and ``last.prev.pt``; ``summary.json`` is written
        again when the run ends. The lock is held until :meth:`release`."""
        error = None
        if self.writes:
            try:
                self._prepare(config, history, None if self._wrote else overwrite)
            except UserError as exc:
                error = exc
        self.dist.agree(error)

    def _prepare(self, config: Config, history: list[dict[str, Any]], overwrite: bool | None) -> None:
        if not self._locked:
            take(self.path, resume_from=self._source, overwrite=overwrite, terms=self.terms,
                 verbose=self.verbose)
            self._locked = True
        try:
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
            orphans = durable.remove_orphans(self.path, RUN_FILES)
        except OSError as exc:
            raise UserError(f"cannot write to the run folder {str(self.path)!r}: {exc}") from exc
        if orphans:
            self._note(f"removed {len(orphans)} temporary file(s) of writes that were cut off: "
                       + ", ".join(orphans))
        with self.writing(CONFIG_FILE):
            durable.atomic_write(self.path / CONFIG_FILE, config.to_yaml())
        metrics = self.path / METRICS_FILE
        resumed = self.last_saved is not None
        with self.writing(METRICS_FILE):
            if resumed and metrics.is_file() and durable.split_jsonl(metrics.read_bytes())[1]:
                self._note(f"{str(metrics)!r} ended in a torn line (a write cut off); rewritten from "
                           "the checkpoint's history")
            durable.atomic_write(metrics, "".join(json.dumps(r) + "\n" for r in history))
        with self.writing(SUMMARY_FILE):
            (self.path / SUMMARY_FILE).unlink(missing_ok=True)  # written again when the run ends
        if not resumed:  # a fresh run: an older run's fallback is no fallback
            previous_path(self.path / LAST).unlink(missing_ok=True)
            return
        with self.writing(GRADIENTS_FILE):
            torn = durable.repair_jsonl(self.path / GRADIENTS_FILE)
        if torn:
            self._note(f"{str(self.path / GRADIENTS_FILE)!r} ended in a torn line of {torn} bytes (a "
                       "write cut off); truncated it to its last complete line")

    def release(self) -> None:
        """Give back the folder's lock taken by :meth:`prepare`."""
        if self._locked:
            runlock.release(self.path)
            self._locked = False

    def _note(self, text: str) -> None:
        if self.verbose:
            print(f"note: {text}", flush=True)

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Turn a failed write of ``what`` (files of the run folder; an ``OSError``, or torch's
        ``RuntimeError`` around a full disk) into :meth:`write_failure`."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and durable.disk_error(exc) is None:
                raise
            raise self.write_failure(f"{what} in {str(self.path)!r}", exc) from exc

    def write_failure(self, what: str, exc: BaseException) -> UserError:
        """The one-line error for a write of ``what`` that failed with ``exc``: the reason, what
        ``last.pt`` still holds, and how to go on."""
        cause = durable.disk_error(exc) or exc
        reason, fix = durable.describe(cause) if isinstance(cause, OSError) else (str(cause), "Fix it")
        resume = self.terms.resume.format(last=str(self.path / LAST) if self.path else LAST)
        kept, then = (("no checkpoint was written yet", "then train again") if self.last_saved is None
                      else (f"'last.pt' keeps {self.last_saved}", f"then continue with {resume}"))
        return UserError(f"cannot write {what}: {reason}; {kept}. {fix} or choose another "
                         f"{self.terms.out}, {then}")

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One epoch's line of ``metrics.jsonl`` (one write: a cut-off one is repaired on resume)."""
        if self.writes:
            with self.writing(METRICS_FILE), (self.path / METRICS_FILE).open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writes:
            with self.writing(SUMMARY_FILE):
                durable.atomic_write(self.path / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    def write_analysis(self, detail: dict[str, Any] | None, epoch: int) -> None:
        """The last evaluation's ``analysis.json`` (when the evaluation measured one)."""
        if self.writes and detail is not None:
            with self.writing(ANALYSIS_FILE):
                write_analysis(self.path, detail, epoch)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, model: nn.Module, model_args: dict[str, Any] | None,
                        state: dict[str, Any], position: str, best: bool = False) -> None:
        """Write ``last.pt`` (keeping the one before as ``last.prev.pt``) and, if ``best``,
        ``best.pt``; a failed write leaves the previous files as they were and stops every
        process with an error saying what ``last.pt`` still holds. ``position`` says in words
        where training stands."""
        error = None
        if self.writes:
            try:
                with self.writing("a checkpoint"):
                    if best:
                        save_checkpoint(self.path / BEST, model, model_args, **state)
                    save_checkpoint(self.path / LAST, model, model_args,
                                    keep_previous=self._last_is_good, **state)
            except UserError as exc:
                error = exc
        self.dist.agree(error)
        self.last_saved, self._last_is_good, self._wrote = position, True, True

    def read_checkpoint(self, path: str | Path, config: Config,
                        allow_config_change: bool = False) -> dict[str, Any]:
        """The checkpoint ``path`` on every process (rank 0 reads it and checks that ``config``
        computes the same run, :func:`spikegrad.resume.check_resume_config`)."""
        payload, error = None, None
        if self.dist.is_main:
            try:
                payload = load_checkpoint(path)
                if not allow_config_change:
                    check_resume_config(payload["config"], config, str(path))
            except UserError as exc:
                error = exc
        self.dist.agree(error)
        return self.dist.broadcast(payload)

    def resumed_from(self, source: str | Path, position: str) -> None:
        """Note that training continues from ``source`` (standing at ``position``)."""
        self.last_saved, self._source = position, Path(source)
        self._last_is_good = self.path is not None and Path(source) == self.path / LAST

    def last_good_state(self) -> str:
        """For an error message: what ``last.pt`` keeps, if anything."""
        if self.path is None or self.last_saved is None:
            return "no checkpoint was written yet"
        return f"{str(self.path / LAST)!r} keeps the last good state: {self.last_saved}"

    # ------------------------------------------------------------------ collectives for a checkpoint

    def progress_totals(self, progress: EpochProgress | None) -> dict[str, Any] | None:
        """The epoch in progress with its training sums over every process (None between epochs)."""
        if progress is None:
            return None
        progress.flush()  # the running sums kept on the device
        totals = self.dist.sum([progress.loss_sum, progress.correct, progress.seen, progress.nonfinite])
        return {**progress.to_dict(), "loss_sum": totals[0], "correct": int(totals[1]),
                "seen": int(totals[2]), "nonfinite": int(totals[3])}

    def rng_states(self) -> list[dict[str, Any]]:
        """Every process's random generators, in rank order."""
        return self.dist.gather(rng_state())

    def stop_requested(self, stop: StopOnSignal) -> bool:
        """Whether SIGTERM/SIGINT reached any process (only while a folder can take the save)."""
        return stop.enabled and self.dist.any(stop.signum is not None)[0]


# ------------------------------------------------------------------ where a run stands


def run_state(folder: str | Path, config: Config) -> tuple[str, list[str]]:
    """Where the run in ``folder`` stands for ``config``, from its ``last.pt`` alone (never from
    a side file such as ``summary.json``, which an older run may have left): ``("finished",
    [])`` (the same config, no epoch in progress, ``train.epochs`` trained), ``("stopped", [])``
    (the same config, not finished: it can continue), ``("other", differences)`` (trained with
    another config, :func:`spikegrad.resume.config_differences`) or ``("none", [])`` (no
    ``last.pt``). A ``last.pt`` that cannot be read is the :class:`UserError` of
    :func:`~spikegrad.checkpoint.load_checkpoint` (naming ``last.prev.pt``)."""
    last = Path(folder) / LAST
    if not last.is_file():
        return "none", []
    payload = load_checkpoint(last)
    differences = config_differences(payload.get("config", {}), config)
    if differences:
        return "other", differences
    if payload.get("progress") is None and payload.get("epoch") == config.train.epochs:
        return "finished", []
    return "stopped", []


def finished_summary(folder: str | Path, config: Config) -> dict[str, Any] | None:
    """The ``summary.json`` of the run in ``folder`` if that run has finished for ``config``
    (:func:`run_state`), else None (also when the summary is missing or unreadable: training
    from the finished ``last.pt`` writes it again)."""
    if run_state(folder, config)[0] != "finished":
        return None
    try:
        summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
