"""The measurement behind the Dspike temperature search and the rule that decides on it.

On probe batches ``n = 1..N`` (each with its own subset of probed weights) and candidate
temperatures ``b_c``, the search measures

    s[n, c] = cos(ĝ_n, g_n(b_c))

the cosine similarity of the finite difference gradient ``ĝ_n`` of batch ``n``
(:mod:`spikegrad.fdg`) with the Dspike surrogate gradient ``g_n(b_c)`` of the same weights
and batch (:mod:`spikegrad.alignment`). Two rules turn ``s`` into a temperature:

- ``paper`` (Algorithm 1 of Li et al. 2021, which uses ``N = 1``): the candidate of highest
  mean similarity ``m_c = mean_n s[n, c]``; ties go to the candidate closest to the current
  ``b``.
- ``significant``: with ``d[n, c] = s[n, c] - s[n, current]`` the paired difference from the
  current temperature, its mean ``D_c`` and standard error
  ``SE_c = std_n(d[·, c]) / sqrt(N)`` (sample standard deviation, ``N - 1`` in the
  denominator), a candidate *wins* when ``D_c > SE_c``; the winner of highest ``m_c`` is
  chosen (ties: closest to the current ``b``), and without a winner ``b`` stays. The
  batches pair the comparison: what one batch adds to every candidate's similarity cancels
  in ``d``. It needs ``N >= 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from spikegrad.alignment import Assignment, cosine_similarity, surrogate_gradients
from spikegrad.errors import UserError
from spikegrad.fdg import ForwardFn, LossFn, finite_difference_gradient
from spikegrad.losses import mean_logit_cross_entropy

__all__ = ["RULES", "Decision", "decide", "similarity_matrix"]

RULES = ("paper", "significant")


@dataclass(frozen=True)
class Decision:
    """The chosen temperature and the statistics it was chosen on (one entry per candidate)."""

    chosen: float
    candidates: list[float]
    mean: list[float]  # m_c, mean similarity over the batches
    difference: list[float]  # D_c, mean paired difference from the current temperature
    se: list[float]  # SE_c of that difference (NaN with one batch; 0 for the current b)


def _closest(values: Sequence[float], current: float) -> float:
    return min(values, key=lambda c: abs(c - current))


def decide(rule: str, candidates: Sequence[float], similarities: Tensor, current: float) -> Decision:
    """Apply ``rule`` to ``similarities [N, C]`` (batch × candidate); see the module docstring.

    ``current`` must be one of ``candidates`` for the ``significant`` rule.
    """
    if rule not in RULES:
        raise UserError(f"the temperature search rule must be one of {list(RULES)}, got {rule!r}")
    s = torch.as_tensor(similarities, dtype=torch.float64)
    if s.dim() != 2 or s.shape[1] != len(candidates) or s.shape[0] == 0:
        raise ValueError(f"similarities must be [batches, {len(candidates)}], got {tuple(s.shape)}")
    n = s.shape[0]
    mean = s.mean(0)
    if current in candidates:
        d = s - s[:, list(candidates).index(current)].unsqueeze(1)  # (N, C)
        difference = d.mean(0)
        se = d.std(0, correction=1) / math.sqrt(n) if n > 1 else torch.full_like(difference, math.nan)
    else:
        difference = se = torch.full_like(mean, math.nan)
    if rule == "paper":
        best = float(mean.max())
        chosen = _closest([c for c, m in zip(candidates, mean.tolist(), strict=True) if m == best], current)
    else:
        if n < 2:
            raise UserError("the significant rule needs at least two probe batches (its standard error "
                            "is over batches); set dspike.probe_batches >= 2 or dspike.rule=paper")
        if current not in candidates:
            raise ValueError(f"the current temperature {current} must be a candidate of the significant rule")
        winners = [(c, m) for c, m, dc, e in zip(candidates, mean.tolist(), difference.tolist(), se.tolist(),
                                                strict=True) if dc > e]
        if winners:
            best = max(m for _, m in winners)
            chosen = _closest([c for c, m in winners if m == best], current)
        else:
            chosen = current
    return Decision(chosen, list(candidates), mean.tolist(), difference.tolist(), se.tolist())


def similarity_matrix(
    model: nn.Module,
    layer: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    index_sets: Sequence[Tensor],
    epsilon: float,
    assignments: Sequence[Assignment],
    loss_fn: LossFn = mean_logit_cross_entropy,
    bn_mode: str = "eval",
    forward: ForwardFn | None = None,
    max_stacked: int | None = None,
) -> Tensor:
    """``s [N, C]``: on batch ``n`` with the weights ``index_sets[n]``, the cosine of the FDG
    (step ``epsilon``, absolute) with the surrogate gradient under each assignment.
    ``max_stacked`` as in :func:`~spikegrad.fdg.finite_difference_gradient` (None: by device).

    A non-finite FDG or surrogate gradient is a :class:`UserError` (the loss overflowed at
    ``w ± ε``), never a similarity of 0.
    """
    if len(batches) != len(index_sets) or not batches:
        raise ValueError(f"need one index set per batch, got {len(batches)} batches and "
                         f"{len(index_sets)} index sets")
    rows = []
    for (inputs, targets), indices in zip(batches, index_sets, strict=True):
        fdg = finite_difference_gradient(model, layer, inputs, targets, epsilon, indices, loss_fn,
                                         max_stacked, bn_mode, forward)
        grads = surrogate_gradients(model, layer, inputs, targets, assignments, indices, loss_fn,
                                    bn_mode, forward)
        row = [cosine_similarity(fdg, g) for g in grads]
        if any(math.isnan(v) for v in row):
            what = "finite difference gradient" if not torch.isfinite(fdg).all() else "surrogate gradient"
            raise UserError(f"the temperature search met a non-finite {what} (the loss is not finite "
                            "at w ± ε); lower dspike.epsilon or optim.lr")
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)
