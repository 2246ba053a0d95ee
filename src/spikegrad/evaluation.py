"""Evaluating a model: accuracy, loss and firing rate over a dataset, in eval mode.

A training method may also score predictions of its own in the same pass (the shortcut
branches, which exist only while training): an :class:`ExtraHeads` gives their logits per
batch from the model's outputs and whatever it captured during the forward pass. A run
without extra heads evaluates exactly as before, at the same cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.analysis import EvalProbe
from spikegrad.config import AnalysisConfig
from spikegrad.errors import UserError, check_labels
from spikegrad.layers import mean_over_time

__all__ = ["ExtraHeads", "evaluate_model"]


class ExtraHeads:
    """Predictions besides the model's output, scored by :func:`evaluate_model` in its pass.

    ``names()`` lists the predictions; ``capture(model)`` installs what the pass needs (e.g.
    forward hooks) for the whole evaluation; ``logits(outputs, readout_start)`` returns, for
    the batch just run, name -> logits ``[B, classes]`` (called under the evaluation's
    autocast); ``metrics(accuracy)`` turns name -> accuracy over the evaluation set into
    metrics fields. A sample whose logits are not finite counts as wrong.
    """

    def names(self) -> list[str]:
        raise NotImplementedError

    def capture(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def logits(self, outputs: Tensor, readout_start: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def metrics(self, accuracy: dict[str, float]) -> dict[str, Any]:
        return dict(accuracy)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
    analysis: AnalysisConfig | None = None, readout_start: int = 0,
    reduce: Callable[[list[float]], list[float]] | None = None, nonfinite: str = "refuse",
    heads: Sequence[ExtraHeads] = (),
) -> dict[str, Any]:
    """Test accuracy, loss (of the time-averaged logits) and mean firing rate, in eval mode.

    With ``analysis.monitors``, the result also holds ``"analysis"``: per-layer activity,
    SOPs and energy (:class:`spikegrad.analysis.EvalProbe`). The logits are averaged over
    the time steps ``t >= readout_start`` (0: all of them; online local tandem learning
    reads out from its warm-up step on). ``reduce`` sums the running totals over processes
    when each evaluates a shard (the ``"analysis"`` detail stays this process's own).

    Logits that are NaN or infinite mean no prediction: ``nonfinite="refuse"`` raises a
    :class:`UserError` (an accuracy of them would mean nothing); ``"count"`` (training with
    ``train.nonfinite: skip``) counts those samples as wrong, leaves them out of the loss
    (None when no sample is left) and reports how many in ``"nonfinite_samples"``.

    ``heads`` score further predictions in the same pass (:class:`ExtraHeads`); their fields
    join the result.
    """
    if nonfinite not in ("refuse", "count"):
        raise UserError(f"nonfinite must be 'refuse' or 'count', got {nonfinite!r}")
    model.eval()
    loss_sum, correct, seen, bad = 0.0, 0, 0, 0
    hits = [dict.fromkeys(extra.names(), 0) for extra in heads]  # per extra head: name -> correct
    with EvalProbe(model, analysis) as monitor, contextlib.ExitStack() as captures:
        for extra in heads:
            captures.enter_context(extra.capture(model))
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(inputs)  # (T, B, classes)
                extra_logits = [extra.logits(outputs, readout_start) for extra in heads]
            logits = mean_over_time(outputs[readout_start:]).float()
            check_labels(targets, logits.shape[1], "test labels")
            finite = torch.isfinite(logits).all(1)  # (B,)
            if nonfinite == "refuse" and not finite.all():
                raise UserError("the model's logits on the test set are NaN or inf; check the model's "
                                "weights (a diverged checkpoint?) and the test inputs")
            loss_sum += float(nn.functional.cross_entropy(logits[finite], targets[finite], reduction="sum"))
            correct += int(((logits.argmax(1) == targets) & finite).sum())
            seen += targets.shape[0]
            bad += int((~finite).sum())
            for counts, named in zip(hits, extra_logits, strict=True):
                for name, head in named.items():
                    head = head.float()
                    ok = (head.argmax(1) == targets) & torch.isfinite(head).all(1)
                    counts[name] += int(ok.sum())
            monitor.add_samples(targets.shape[0])
    spikes, slots = monitor.monitor.spike_totals()
    extra_counts = [v for counts in hits for v in counts.values()]
    if reduce is not None:
        loss_sum, correct, seen, spikes, slots, bad, *extra_counts = reduce(
            [loss_sum, correct, seen, spikes, slots, bad, *extra_counts])
    if seen == 0:
        raise UserError("the evaluation set is empty")
    result = {"test_loss": loss_sum / (seen - bad) if seen > bad else None, "test_acc": correct / seen,
              "firing_rate": spikes / slots if slots else None}
    totals = iter(extra_counts)
    for extra, counts in zip(heads, hits, strict=True):
        result.update(extra.metrics({name: next(totals) / seen for name in counts}))
    if nonfinite == "count":
        result["nonfinite_samples"] = int(bad)
    detail = monitor.summary()
    if detail is not None:
        result["analysis"] = detail
    return result
