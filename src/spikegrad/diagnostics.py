"""Gradient diagnostics: per-layer gradient norms and the first layer's gradient histogram.

Every ``interval`` training iterations (the first one included), after backward and
before gradient clipping and the optimizer step, :class:`GradientDiagnostics` appends one
JSON object to ``gradients.jsonl`` in the run folder (none for a step whose gradients are
not finite, which is not taken)::

    {"epoch": 3, "iteration": 201,
     "norms": {"features.stem.0.module.0": 0.012, ..., "classifier.module.2": 0.35},
     "first_layer_hist": {"edges": [-g, ..., g], "counts": [...]}}

``epoch`` and ``iteration`` count from 1 (``iteration`` is the optimizer step the gradient
belongs to). ``norms`` maps every weight layer of the model (a module with a weight of
two or more dimensions: convolutions and linear layers, not batch norm), in model order, to
the L2 norm of its weight gradient; shortcut branches live outside the model and are not
listed. The histogram bins the first layer's weight gradient on ``bins`` equal bins over
``[-g, g]``, ``g`` its largest magnitude. Vanishing gradients show as a small ratio of the
first layer's norm to the last layer's (:func:`norm_ratio`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.component import Component, TrainingContext
from spikegrad.config import DiagnosticsConfig
from spikegrad.durable import atomic_write, split_jsonl
from spikegrad.errors import UserError

__all__ = [
    "GRADIENTS_FILE",
    "GradientDiagnostics",
    "gradient_histogram",
    "gradient_norms",
    "norm_ratio",
    "read_gradients",
    "read_jsonl",
    "weight_layers",
]

GRADIENTS_FILE = "gradients.jsonl"


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(module name, weight)`` of every convolution / linear layer, in model order."""
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and weight.requires_grad:
            out.append((name, weight))
    return out


def gradient_norms(layers: Sequence[tuple[str, nn.Parameter]]) -> dict[str, float]:
    """``‖∂L/∂W‖₂`` per layer; layers without a gradient are left out."""
    return {name: float(w.grad.detach().float().norm()) for name, w in layers if w.grad is not None}


def gradient_histogram(grad: Tensor, bins: int) -> dict[str, list[float]]:
    """Counts of ``grad``'s entries on ``bins`` equal bins over ``[-g, g]``, ``g = max|grad|``."""
    values = grad.detach().float().flatten()
    g = max(float(values.abs().max()), torch.finfo(torch.float32).tiny)
    counts = torch.histc(values, bins=bins, min=-g, max=g)
    edges = torch.linspace(-g, g, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}


_DEFAULT = DiagnosticsConfig()  # the constructor's defaults are the config's


class GradientDiagnostics(Component):
    """Records gradient norms (and the first layer's histogram) every ``interval`` steps.

    Records go to ``<run>/gradients.jsonl`` and to :attr:`records`. On resume the file keeps
    the records up to the checkpoint's iteration.
    """

    name = "gradient_diagnostics"

    def __init__(self, *, interval: int = _DEFAULT.gradient_interval,
                 bins: int = _DEFAULT.histogram_bins) -> None:
        if interval <= 0:
            raise UserError(f"diagnostics.gradient_interval must be positive, got {interval}")
        if bins < 2:
            raise UserError(f"diagnostics.histogram_bins must be at least 2, got {bins}")
        self.interval = interval
        self.bins = bins
        self.records: list[dict[str, Any]] = []
        self._path: Path | None = None
        self._layers: list[tuple[str, nn.Parameter]] = []

    @classmethod
    def from_config(cls, section: DiagnosticsConfig) -> GradientDiagnostics:
        """From the ``diagnostics`` section (``gradient_interval`` > 0)."""
        return cls(interval=section.gradient_interval, bins=section.histogram_bins)

    def section_settings(self) -> dict[str, Any]:
        return {"gradient_interval": self.interval, "histogram_bins": self.bins}

    def attach(self, ctx: TrainingContext) -> None:
        self._layers = weight_layers(ctx.model)
        if not self._layers:
            raise UserError("gradient diagnostics found no convolution or linear layer in the "
                            "model; set diagnostics.gradient_interval=0 to turn them off")

    def _open(self, ctx: TrainingContext) -> None:
        """On the first call of a process: start the file, or keep a resumed run's records up
        to the checkpoint's iteration (a resume may start mid-epoch, without an epoch start)."""
        if self._path is None and ctx.run_dir is not None:
            self._path = ctx.run_dir / GRADIENTS_FILE
            kept = []
            if ctx.iteration and self._path.exists():
                for number, record in enumerate(read_gradients(self._path), start=1):
                    step = record.get("iteration")
                    if not isinstance(step, int) or isinstance(step, bool):
                        raise UserError(f"{str(self._path)!r} record {number} has no whole 'iteration' "
                                        f"(got {step!r}); the file is damaged: delete it (the resumed "
                                        "run then records from the checkpoint on)")
                    if step <= ctx.iteration:
                        kept.append(record)
            with _naming(self._path):
                atomic_write(self._path, "".join(json.dumps(r) + "\n" for r in kept))

    def on_epoch_start(self, ctx: TrainingContext, epoch: int) -> dict[str, Any]:
        self._open(ctx)
        return {}

    def on_backward_end(self, ctx: TrainingContext) -> None:
        if ctx.iteration % self.interval:
            return
        self._open(ctx)
        first = self._layers[0][1]
        grad = first.grad if first.grad is not None else torch.zeros_like(first)  # none: zero
        norms = gradient_norms(self._layers)
        if not all(math.isfinite(v) for v in norms.values()):
            return  # a step that will not be taken (fp16 overflow or a non-finite guard)
        record = {
            "epoch": ctx.epoch + 1,
            "iteration": ctx.iteration + 1,
            "norms": norms,
            "first_layer_hist": gradient_histogram(grad, self.bins),
        }
        self.records.append(record)
        if self._path is not None:  # one write per line: one cut off is repaired on resume
            with _naming(self._path), self._path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An ``OSError`` of a write names the file it failed on (the trainer's error says it)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def read_gradients(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder (or of a ``gradients.jsonl`` path), in order."""
    path = Path(run)
    if path.is_dir():
        path = path / GRADIENTS_FILE
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist; gradient diagnostics are written by "
                        "`spikegrad train` unless diagnostics.gradient_interval is 0")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a run's ``.jsonl`` file (one per line; blank lines skipped).

    A torn last line (a write cut off, or one under way: :func:`spikegrad.durable.split_jsonl`)
    is left out. Any other line that is not UTF-8, not JSON, or JSON but not an object is a
    :class:`UserError` naming the line.
    """
    rows = []
    for number, raw in enumerate(split_jsonl(path.read_bytes())[0], start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{str(path)!r} line {number} is not UTF-8 text; the file is damaged "
                            "(fix or delete that line)") from exc
        except json.JSONDecodeError as exc:
            raise UserError(f"{str(path)!r} line {number} is not JSON ({exc.msg}); the file is "
                            "damaged or was cut off while being written") from exc
        if not isinstance(row, dict):
            raise UserError(f"{str(path)!r} line {number} is JSON but not an object ({{...}}), got "
                            f"{type(row).__name__}; the file is damaged (fix or delete that line)")
        rows.append(row)
    return rows


def norm_ratio(record: dict[str, Any]) -> float:
    """First layer's gradient norm over the last layer's (``nan`` if the last is zero)."""
    norms = list(record["norms"].values())
    if not norms:
        return float("nan")
    return norms[0] / norms[-1] if norms[-1] > 0 else float("nan")
