"""``spikegrad demo``: train the built-in digits with each method and compare them.

Each row is a run folder under ``--out`` (default ``runs/demo``); the table shows the test
accuracy after the last epoch, the epochs, the training time (training epochs and what the
methods do at their start, such as the temperature search; without evaluation) and the mean
firing rate of the spiking neurons on the test set.

Rows: the ANN twin; the spiking CNN with the adaptive Dspike temperature; the same with
evolutionary shortcut branches; offline and online local tandem learning from the ANN row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikegrad.config import Config, load_config
from spikegrad.recipes import recipe_path
from spikegrad.run import train

__all__ = ["DEMO_ROWS", "DemoRow", "demo_configs", "format_table", "recipe_path", "run_demo"]


@dataclass(frozen=True)
class DemoRow:
    folder: str
    overrides: tuple[str, ...] = ()
    recipe: str = "digits"
    #: the row whose ``last.pt`` is this row's LTL teacher
    teacher_row: str | None = None


DEMO_ROWS: Sequence[DemoRow] = (
    DemoRow("ann", ("model.kind=ann", "name=digits-ann")),
    DemoRow("dspike", ("dspike.adaptive=true", "name=digits-dspike-adaptive")),
    DemoRow("evolutionary", ("dspike.adaptive=true", "shortcut.enabled=true",
                             "name=digits-dspike-adaptive-evolutionary")),
    # The LTL students learn from the ann row: the ANN twin that digits_ltl.yaml names as its
    # teacher (digits.yaml with model.kind=ann), so it is trained once.
    DemoRow("ltl-offline", (), "digits_ltl", teacher_row="ann"),
    DemoRow("ltl-online", ("ltl.mode=online", "name=digits-ltl-online"), "digits_ltl",
            teacher_row="ann"),
)


def demo_configs(quick: bool = False, out_dir: str | Path = "runs/demo"
                 ) -> list[tuple[DemoRow, Config]]:
    """The config of every demo row (``quick``: 2 epochs each, for tests)."""
    rows = []
    for row in DEMO_ROWS:
        overrides = [*row.overrides, *(["train.epochs=2"] if quick else [])]
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


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, verbose: bool = True) -> str:
    """Train every demo row into ``out_dir/<row>`` and return the comparison table."""
    out_dir = Path(out_dir)
    summaries = []
    for row, config in demo_configs(quick, out_dir):
        if verbose:
            print(f"\n== {row.folder}: {config.name} ({out_dir / row.folder})", flush=True)
        summaries.append(train(config, out_dir / row.folder, verbose=verbose))
    table = format_table(summaries)
    (out_dir / "demo.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out_dir / "demo.txt").write_text(table + "\n")
    return table
