"""The experiment protocol (docs/protocol.md), as code: its minimums, rules and refusals.

- **Seeds.** At least ``min_seeds`` (5) final seeds per arm, paired: seed ``s`` of every arm
  trains with ``train.seed = s`` (initial weights, data order, augmentation) on the same split.
- **Learning rate.** Each arm's learning rate is chosen from a grid of at least ``min_grid``
  (3) values on a validation split cut from the training set (never the test set), over at
  least ``min_tuning_seeds`` (2) tuning seeds kept apart from the final seeds. Rule
  (:func:`choose_lr`): the highest mean final validation accuracy; ties go to the smaller rate.
  A fixed rate is allowed only with a stated reason (a claim about published hyperparameters).
- **Training length.** A run has *plateaued* when its training accuracy gained less than
  ``plateau_delta`` (0.5 points) over the last ``w = max(plateau_min_window, ⌈plateau_fraction · E⌉)``
  epochs of its ``E``: ``max(a_(E-w+1..E)) - max(a_(1..E-w)) < δ`` (:func:`plateau`). A run that
  has not is flagged *not converged* wherever it is reported.
- **Statistics.** Mean ± sample std and the 95% t-interval of the final and the best accuracy;
  paired differences between arms with a paired t-test (:mod:`experiments.stats`).

:func:`check_plan` refuses a plan below these minimums unless it is a smoke run, whose outputs
are marked SMOKE and may not be written into ``docs/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.stats import describe
from spikegrad.errors import UserError

__all__ = ["PROTOCOL", "Protocol", "ProtocolError", "check_plan", "choose_lr", "plateau"]


class ProtocolError(UserError):
    """A plan that breaks the protocol (the message lists every violation and the way out)."""


@dataclass(frozen=True)
class Protocol:
    min_seeds: int = 5
    min_tuning_seeds: int = 2
    min_grid: int = 3
    plateau_delta: float = 0.005  # gain of training accuracy (fraction) allowed in the window
    plateau_fraction: float = 0.25  # window: this fraction of the epochs ...
    plateau_min_window: int = 3  # ... but at least this many
    confidence: float = 0.95

    def window(self, epochs: int) -> int:
        """The plateau window ``w`` for a run of ``epochs`` epochs."""
        return max(self.plateau_min_window, math.ceil(self.plateau_fraction * epochs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOL = Protocol()


def plateau(train_acc: Sequence[float], protocol: Protocol = PROTOCOL,
            train_loss: Sequence[float] | None = None) -> dict[str, Any]:
    """The plateau verdict of one run from its training accuracy per epoch.

    ``converged``: the gain ``max(a[E-w:]) - max(a[:E-w])`` is below ``δ`` (False when the run is
    too short to have a window and something before it). ``plateau_epoch``: the first epoch
    ``e`` (1-based) from which the criterion holds at every later epoch ``e' >= e`` (None if
    not at the end). ``loss_change``: relative change of the training loss over the window.
    """
    acc = [float(a) for a in train_acc]
    E, w = len(acc), protocol.window(len(acc))
    out: dict[str, Any] = {"window": w, "delta": protocol.plateau_delta, "gain": None,
                           "converged": False, "plateau_epoch": None, "loss_change": None}
    if w >= E:
        return out

    def gain_at(e: int) -> float:  # criterion evaluated at the end of epoch e (1-based)
        return max(acc[e - w:e]) - max(acc[:e - w])

    out["gain"] = gain_at(E)
    out["converged"] = out["gain"] < protocol.plateau_delta
    if out["converged"]:
        first = E
        while first - 1 > w and gain_at(first - 1) < protocol.plateau_delta:
            first -= 1
        out["plateau_epoch"] = first
    if train_loss is not None and len(train_loss) == E and train_loss[E - w - 1]:
        before = float(train_loss[E - w - 1])
        out["loss_change"] = (float(train_loss[-1]) - before) / abs(before)
    return out


def choose_lr(table: Mapping[float, Sequence[float | None]]) -> dict[str, Any]:
    """The protocol's pick from ``{lr: [final validation accuracy per tuning seed]}``.

    The highest mean wins; ties (within 1e-12) go to the smaller rate; a rate with a failed
    (None) run is not chosen. Returns the chosen rate, every row's summary, and ``at_edge``
    (the winner is the grid's smallest or largest value: the grid may be too narrow).
    """
    if not table:
        raise ProtocolError("the learning-rate grid is empty")
    rows = []
    for lr in sorted(table):
        values = list(table[lr])
        failed = any(v is None for v in values)
        stats = describe([v for v in values if v is not None])
        rows.append({"lr": lr, "values": values, "failed": failed, "mean": stats["mean"],
                     "std": stats["std"]})
    usable = [r for r in rows if not r["failed"] and r["mean"] is not None]
    if not usable:
        raise ProtocolError(f"every learning rate of the grid {sorted(table)} failed; widen the grid")
    best = max(r["mean"] for r in usable)
    chosen = min(r["lr"] for r in usable if r["mean"] >= best - 1e-12)
    grid = sorted(table)
    return {"lr": chosen, "rows": rows, "at_edge": len(grid) > 1 and chosen in (grid[0], grid[-1]),
            "rule": "highest mean final validation accuracy over the tuning seeds; ties: smaller rate"}


def check_plan(plan: Mapping[str, Any], *, smoke: bool, protocol: Protocol = PROTOCOL,
               out: str | Path | None = None, repo: Path | None = None) -> list[str]:
    """Violations of the protocol by ``plan``; raises :class:`ProtocolError` unless ``smoke``.

    ``plan``: ``{"seeds": [...], "tuning_seeds": [...], "arms": [{"name", "epochs",
    "lr_grid", "lr", "lr_reason", "lr_from", "epochs_from", "validation"}, ...]}``.
    """
    problems: list[str] = []
    seeds, tuning = list(plan["seeds"]), list(plan["tuning_seeds"])
    if len(set(seeds)) != len(seeds):
        problems.append(f"the seeds {seeds} repeat a seed")
    if len(set(seeds)) < protocol.min_seeds:
        problems.append(f"{len(set(seeds))} seeds per arm, the protocol needs at least {protocol.min_seeds}")
    tuned = [a for a in plan["arms"] if a.get("lr_grid")]
    if tuned and len(set(tuning)) < protocol.min_tuning_seeds:
        problems.append(f"{len(set(tuning))} tuning seeds, the protocol needs at least "
                        f"{protocol.min_tuning_seeds}")
    if tuned and set(tuning) & set(seeds):
        problems.append(f"the tuning seeds {sorted(set(tuning) & set(seeds))} are also final seeds; the "
                        "protocol keeps them apart (a rate picked on a seed's own run favours it)")
    names = {a["name"] for a in plan["arms"]}
    for arm in plan["arms"]:
        name, grid = arm["name"], arm.get("lr_grid") or []
        if grid:
            if len(set(grid)) < protocol.min_grid:
                problems.append(f"arm {name!r}: a learning-rate grid of {len(set(grid))} values, the "
                                f"protocol needs at least {protocol.min_grid}")
            if not arm.get("validation"):
                problems.append(f"arm {name!r}: its learning rate would be tuned without a "
                                "validation split (the protocol never tunes on the test set)")
        elif arm.get("lr_from"):
            if arm["lr_from"] not in names:
                problems.append(f"arm {name!r}: takes its learning rate from the unknown arm "
                                f"{arm['lr_from']!r}")
            if not arm.get("lr_reason"):
                problems.append(f"arm {name!r}: takes another arm's learning rate without a stated reason")
        elif not arm.get("lr_reason"):
            problems.append(f"arm {name!r}: a fixed learning rate needs a stated reason (e.g. the "
                            "published value); otherwise give it a grid")
        if arm.get("epochs_from") and arm["epochs_from"] not in names:
            problems.append(f"arm {name!r}: takes its epochs from the unknown arm {arm['epochs_from']!r}")
        epochs = int(arm["epochs"])
        if epochs <= protocol.window(epochs):
            problems.append(f"arm {name!r}: {epochs} epochs are too few to judge a plateau (window "
                            f"{protocol.window(epochs)} epochs plus at least one before it)")
    if smoke and out is not None and repo is not None:
        docs = (repo / "docs").resolve()
        target = Path(out).resolve()
        if target == docs or docs in target.parents:
            raise ProtocolError(f"a smoke run may not write into {docs}; choose another --out")
    if problems and not smoke:
        raise ProtocolError("protocol: " + "; ".join(problems) + ". Fix the plan, or add --smoke for a "
                            "test run (its outputs are marked SMOKE and are not results)")
    return problems
