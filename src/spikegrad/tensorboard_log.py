"""TensorBoard scalars for a run (``analysis.tensorboard: true``), beside ``metrics.jsonl``.

Every number of an epoch's metrics line becomes a scalar at ``step = epoch``; a dict field
becomes one scalar per key under the field's name (``firing_rates/features.0.1``,
``dspike_similarity/3.0``, ``ltl_layer_losses/features.2``). Gradient records that another
part of the run appends to ``gradients.jsonl`` are logged as ``grad_norm/<layer>`` at
``step = iteration``, and the first layer's histogram as ``first_layer_grad``.

Needs the ``tensorboard`` package (``pip install 'spikegrad[tensorboard]'``).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from spikegrad.errors import UserError

__all__ = ["TensorBoardLogger", "scalar_items"]

SKIPPED_FIELDS = {"epoch"}


def scalar_items(row: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """``(tag, value)`` for every finite number of a metrics line, dicts flattened by ``/``."""
    items = []
    for key, value in row.items():
        if key in SKIPPED_FIELDS and not prefix:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(scalar_items(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            items.append((tag, float(value)))
    return items


class TensorBoardLogger:
    """Writes metrics lines (and new ``gradients.jsonl`` records) as TensorBoard events."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(
                "analysis.tensorboard is true but TensorBoard is not installed; install it with "
                "pip install 'spikegrad[tensorboard]', or set analysis.tensorboard=false"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._gradient_offset = 0

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for tag, value in scalar_items(row):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_gradients(self, path: str | Path) -> None:
        """Log the records appended to ``path`` since the last call (if the file exists)."""
        path = Path(path)
        if not path.is_file():
            return
        with path.open() as handle:
            handle.seek(self._gradient_offset)
            lines = handle.readlines()
        complete = [line for line in lines if line.endswith("\n")]  # a half-written line waits
        self._gradient_offset += sum(len(line.encode()) for line in complete)
        for line in complete:
            try:
                record = json.loads(line)
            except ValueError:  # blank, or damaged: the report names such a line
                continue
            if not isinstance(record, dict):
                continue
            step = int(record.get("iteration", 0))
            for layer, norm in record.get("norms", {}).items():
                self.writer.add_scalar(f"grad_norm/{layer}", float(norm), step)
            hist = record.get("first_layer_hist")
            if hist and hist.get("counts"):
                self._add_histogram(hist["edges"], hist["counts"], step)
        self.writer.flush()

    def _add_histogram(self, edges: list[float], counts: list[float], step: int) -> None:
        centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        total = sum(counts)
        if total <= 0:
            return
        total_sum = sum(c * x for c, x in zip(counts, centres, strict=True))
        sum_sq = sum(c * x * x for c, x in zip(counts, centres, strict=True))
        self.writer.add_histogram_raw(
            "first_layer_grad", min=edges[0], max=edges[-1], num=total, sum=total_sum,
            sum_squares=sum_sq, bucket_limits=list(edges[1:]), bucket_counts=list(counts),
            global_step=step,
        )

    def close(self) -> None:
        self.writer.close()
