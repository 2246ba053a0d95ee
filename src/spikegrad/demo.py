"""``spikegrad demo``: train the built-in digits with each method and compare them.

Each row is a run folder under ``--out`` (default ``runs/demo``); the table shows the test
accuracy after the last epoch, the epochs, the training time (training epochs and what the
methods do at their start, such as the temperature search; without evaluation) and the mean
firing rate of the spiking neurons on the test set.

Rows: the ANN twin; the spiking CNN with the adaptive Dspike temperature; the same with
evolutionary shortcut branches; offline and online local tandem learning from the ANN row.
Each row is named after its method (:func:`spikegrad.methods.registry.run_name`).

Every row computes with ``threads`` CPU threads (1 by default), so the table does not
depend on how many cores the machine has. A folder that holds an earlier demo is refused
unless ``resume`` (rows that finished are kept, the others continue from their ``last.pt``)
or ``overwrite`` (every row trains again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikegrad.config import Config, load_config
from spikegrad.errors import UserError
from spikegrad.methods.registry import run_name
from spikegrad.recipes import recipe_path
from spikegrad.run import train
from spikegrad.rundir import LAST, Terms, check_destination, finished_summary

__all__ = ["DEMO_ROWS", "DEMO_TERMS", "DEMO_THREADS", "DemoRow", "demo_configs", "format_table",
           "recipe_path", "run_demo"]

DEMO_JSON, DEMO_TXT = "demo.json", "demo.txt"
#: how the run-folder guard names the ways out of a folder holding an earlier demo
DEMO_TERMS = Terms(resume="`spikegrad demo --resume`", overwrite="`spikegrad demo --overwrite`",
                   out="--out", own_folder="leave out --out")


@dataclass(frozen=True)
class DemoRow:
    folder: str
    overrides: tuple[str, ...] = ()
    recipe: str = "digits"
    #: the row whose ``last.pt`` is this row's LTL teacher
    teacher_row: str | None = None


DEMO_ROWS: Sequence[DemoRow] = (
    DemoRow("ann", ("model.kind=ann",)),
    DemoRow("dspike", ("dspike.adaptive=true",)),
    DemoRow("evolutionary", ("dspike.adaptive=true", "shortcut.enabled=true")),
    # The LTL students learn from the ann row: the ANN twin that digits_ltl.yaml names as its
    # teacher (digits.yaml with model.kind=ann), so it is trained once.
    DemoRow("ltl-offline", (), "digits_ltl", teacher_row="ann"),
    DemoRow("ltl-online", ("ltl.mode=online",), "digits_ltl", teacher_row="ann"),
)
#: the demo's ``train.threads`` unless told otherwise
DEMO_THREADS = 1


def demo_configs(quick: bool = False, out_dir: str | Path = "runs/demo", threads: int | None = DEMO_THREADS
                 ) -> list[tuple[DemoRow, Config]]:
    """The config of every demo row (``quick``: 2 epochs each, for tests; ``threads``:
    ``train.threads``, None leaving it to :func:`spikegrad.threads.apply_threads`)."""
    rows = []
    for row in DEMO_ROWS:
        overrides = [*row.overrides, *(["train.epochs=2"] if quick else []),
                     *([f"train.threads={threads}"] if threads is not None else [])]
        config = load_config(recipe_path(row.recipe), overrides)
        if row.teacher_row is not None:
            teacher = Path(out_dir) / row.teacher_row / "last.pt"
            config = config.with_overrides({"ltl.teacher_checkpoint": str(teacher)})
        rows.append((row, config))
    return rows


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    w = max([16, *(len(s["method"]) for s in summaries)])
    header = (f"{'method':<{w}} {'test acc':>8} {'best':>7} {'epochs':>6} {'train time':>10} "
              f"{'firing rate':>11}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        rate = "-" if s.get("firing_rate") is None else f"{s['firing_rate']:.3f}"
        lines.append(
            f"{s['method']:<{w}} {100 * s['final_test_acc']:7.2f}% {100 * s['best_test_acc']:6.2f}% "
            f"{s['epochs']:>6} {s['train_seconds']:>9.1f}s {rate:>11}"
        )
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, verbose: bool = True, *,
             resume: bool = False, overwrite: bool = False, threads: int | None = DEMO_THREADS) -> str:
    """Train every demo row into ``out_dir/<row>`` and return the comparison table.

    A folder holding an earlier demo needs ``resume`` (finished rows are kept, stopped ones
    continue) or ``overwrite`` (every row trains again).
    """
    if resume and overwrite:
        raise UserError("--resume continues the demo and --overwrite starts it over: give one")
    out_dir = Path(out_dir)
    rows = demo_configs(quick, out_dir, threads)
    if not (resume or overwrite):  # before any row trains (each is guarded again as it starts)
        for row, _ in rows:
            check_destination(out_dir / row.folder, None, False, DEMO_TERMS)
    try:
        for stale in (DEMO_JSON, DEMO_TXT):  # written again when every row has finished
            (out_dir / stale).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to the demo folder {str(out_dir)!r}: {exc}; choose another "
                        "--out") from exc
    summaries = []
    for row, config in rows:
        folder = out_dir / row.folder
        done = finished_summary(folder, config) if resume else None  # its last.pt says so
        resume_from = folder / LAST if resume and (folder / LAST).is_file() else None
        if verbose:
            what = ("finished earlier, kept" if done is not None else
                    "continuing" if resume_from is not None else "training")
            print(f"\n== {row.folder}: {config.name or run_name(config)}, {what} ({folder})", flush=True)
        if done is None:
            # resuming a row stopped before its first checkpoint: nothing there to keep
            done = train(config, folder, verbose=verbose, resume_from=resume_from,
                         overwrite=overwrite or (resume and resume_from is None), terms=DEMO_TERMS)
        summaries.append(done)
    table = format_table(summaries)
    (out_dir / DEMO_JSON).write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")
    (out_dir / DEMO_TXT).write_text(table + "\n")
    return table
