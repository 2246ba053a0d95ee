"""A run folder and its bookkeeping: every file a training run writes, and its checkpoints.

:class:`RunFolder` is the one place that

- prepares the folder (:meth:`~RunFolder.prepare`: checks it can be written, writes
  ``config.yaml`` and ``metrics.jsonl`` with the rows so far);
- appends a metrics row (:meth:`~RunFolder.append_metrics`), writes ``summary.json`` and
  ``analysis.json``;
- saves checkpoints (:meth:`~RunFolder.save_checkpoint`: ``last.pt``, keeping the one
  before as ``last.prev.pt``, and ``best.pt``) and reads one back to resume
  (:meth:`~RunFolder.read_checkpoint`, with the config check of :mod:`spikegrad.resume`).

Under ``torchrun`` only rank 0 touches the files; every collective that keeps the other
processes in step with it is here too: a failure on rank 0 (a folder it cannot write, a
full disk, a bad checkpoint) stops every process with the same error, the checkpoint read by
rank 0 reaches every process, the training sums of an epoch in progress and every process's
random state go into the checkpoint, and a stop signal seen by any process stops all.
Without a folder (``path`` None) nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from spikegrad.analysis import write_analysis
from spikegrad.checkpoint import load_checkpoint, previous_path, save_checkpoint
from spikegrad.config import Config
from spikegrad.distributed import DistributedContext
from spikegrad.errors import UserError
from spikegrad.resume import EpochProgress, StopOnSignal, check_resume_config, rng_state

__all__ = ["CONFIG_FILE", "METRICS_FILE", "SUMMARY_FILE", "RunFolder", "finished_summary", "holds_run",
           "refuse_existing_run"]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST, BEST = "last.pt", "best.pt"


class RunFolder:
    """The folder ``path`` of one run, written by the main process only (None: no files)."""

    def __init__(self, path: str | Path | None, dist: DistributedContext) -> None:
        self.path = Path(path) if path is not None else None
        self.dist = dist
        #: whether this process writes the files
        self.writes = self.path is not None and dist.is_main
        #: where ``last.pt`` stands, in words (None: not written nor resumed from yet)
        self.last_saved: str | None = None
        self._last_is_good = False  # written or resumed from here: worth keeping as previous

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

    def prepare(self, config: Config, history: list[dict[str, Any]]) -> None:
        """Check rank 0 can write the folder before training starts (every process stops if
        not); write ``config.yaml`` and ``metrics.jsonl`` (the rows so far, on a resume)."""
        error = None
        if self.writes:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                error = UserError(f"cannot write to the run folder {str(self.path)!r}: {exc}")
        self.dist.agree(error)
        if not self.writes:
            return
        (self.path / CONFIG_FILE).write_text(config.to_yaml())
        (self.path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
        (self.path / SUMMARY_FILE).unlink(missing_ok=True)  # written again when the run ends
        if self.last_saved is None:  # a fresh run: an older run's fallback is no fallback
            previous_path(self.path / LAST).unlink(missing_ok=True)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One epoch's line of ``metrics.jsonl``."""
        if self.writes:
            with (self.path / METRICS_FILE).open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writes:
            (self.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    def write_analysis(self, detail: dict[str, Any] | None, epoch: int) -> None:
        """The last evaluation's ``analysis.json`` (when the evaluation measured one)."""
        if self.writes and detail is not None:
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
                if best:
                    save_checkpoint(self.path / BEST, model, model_args, **state)
                save_checkpoint(self.path / LAST, model, model_args,
                                keep_previous=self._last_is_good, **state)
            except OSError as exc:
                kept = ("no earlier checkpoint" if self.last_saved is None else
                        f"'last.pt' keeps {self.last_saved}")
                error = UserError(f"cannot write a checkpoint to {str(self.path)!r}: {exc}; "
                                  f"{kept}. Free space or choose another --out, then --resume")
        self.dist.agree(error)
        self.last_saved, self._last_is_good = position, True

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
        self.last_saved = position
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
        totals = self.dist.sum([progress.loss_sum, progress.correct, progress.seen, progress.nonfinite])
        return {**progress.to_dict(), "loss_sum": totals[0], "correct": int(totals[1]),
                "seen": int(totals[2]), "nonfinite": int(totals[3])}

    def rng_states(self) -> list[dict[str, Any]]:
        """Every process's random generators, in rank order."""
        return self.dist.gather(rng_state())

    def stop_requested(self, stop: StopOnSignal) -> bool:
        """Whether SIGTERM/SIGINT reached any process (only while a folder can take the save)."""
        return stop.enabled and self.dist.any(stop.signum is not None)[0]


# ------------------------------------------------------------------ the guard against training into a run


def holds_run(path: str | Path) -> bool:
    """Whether the folder ``path`` holds a run (its ``last.pt``)."""
    return (Path(path) / LAST).is_file()


def refuse_existing_run(path: str | Path | None, fix: str) -> None:
    """The one guard against training a new run into a folder that already holds one: a
    :class:`UserError` whose message ends with ``fix`` (how to continue or start over, in the
    caller's terms: command-line flags or Python arguments)."""
    if path is not None and holds_run(path):
        raise UserError(f"{str(path)!r} already holds a run (last.pt); {fix}")


def finished_summary(path: str | Path, epochs: int) -> dict[str, Any] | None:
    """The summary of the run in ``path`` if it has trained ``epochs`` epochs and ended (its
    ``summary.json``, which :meth:`RunFolder.prepare` removes while a run trains, and a
    ``last.pt`` of that epoch), else None. A ``last.pt`` that cannot be read is the
    :class:`UserError` of :func:`~spikegrad.checkpoint.load_checkpoint` (naming
    ``last.prev.pt``), not a finished run."""
    summary_path = Path(path) / SUMMARY_FILE
    if not (holds_run(path) and summary_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    done = summary.get("epochs") if isinstance(summary, dict) else None
    if not (isinstance(done, int) and done >= epochs):
        return None
    return summary if load_checkpoint(Path(path) / LAST)["epoch"] >= epochs else None
