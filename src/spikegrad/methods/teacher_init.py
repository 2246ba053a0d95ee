"""Initialise an LTL student from its ANN teacher: fold batch norm, scale by activation percentiles.

The student has no batch norm. For a unit ``[conv | linear] -> BN -> [pool] -> ClippedReLU``
of the teacher and ``[conv | linear] (with bias) -> [pool] -> neuron`` of the student:

1. BN (eval statistics) folds into the layer, per output channel ``c``:
   ``W'_c = W_c·γ_c/√(σ²_c + ε)``, ``b'_c = (b_c − μ_c)·γ_c/√(σ²_c + ε) + β_c``.
2. The student's unit ``l`` fires at a rate ``r_l ≈ a_l / P_l`` (the LTL target), with ``a_l``
   the teacher's activation and ``P_l`` its percentile. Its input is ``r_{l-1} ≈ a_{l-1} /
   P_{l-1}`` (``P_0 = 1``: direct encoding feeds the analog input). For an integrate-and-fire
   neuron with threshold ``θ_l`` the rate is about ``I/θ_l`` (soft reset, long ``T``), so
   ``W_l ← W'_l·θ_l·P_{l-1}/P_l`` and ``b_l ← b'_l·θ_l/P_l``. Leaky neurons fire less than
   that, so this is a starting point that local tandem learning then refines.
3. The readout takes rates: ``W_out ← W_out·P_L`` on its first linear layer.

Pooling (average or max) and stride commute with the positive scale, so the scaling is exact
for the ANN; only the rate approximation of step 2 is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikegrad.errors import UserError
from spikegrad.neurons import SpikingNeuron

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_batch_norm(layer: nn.Module, bn: _BatchNorm | None) -> tuple[Tensor, Tensor]:
    """``(W', b')`` of ``layer`` followed by ``bn`` in eval mode, as one affine layer."""
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0],
                                                                          device=weight.device)
    if bn is None:
        return weight.clone(), bias.clone()
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_var)
    gain = scale / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * gain.view(shape), (bias - bn.running_mean) * gain + shift


def _parts(name: str, unit: nn.Module, role: str) -> tuple[nn.Module, _BatchNorm | None]:
    layers = [m for m in unit.modules() if isinstance(m, WEIGHTED)]
    norms = [m for m in unit.modules() if isinstance(m, _BatchNorm)]
    if len(layers) != 1 or len(norms) > 1:
        raise UserError(
            f"ltl.student_init=teacher needs units with one conv or linear layer (and at most one "
            f"batch norm); {role} unit {name} has {len(layers)} weighted layers and {len(norms)} "
            "batch norms (residual blocks are not supported); use ltl.student_init=random"
        )
    return layers[0], (norms[0] if norms else None)


def _threshold(name: str, unit: nn.Module) -> float:
    found = [m for m in unit.modules() if isinstance(m, SpikingNeuron)]
    if len(found) != 1:
        raise UserError(f"ltl.student_init=teacher needs one spiking neuron per student unit; "
                        f"unit {name} has {len(found)}")
    return float(found[0].threshold)


@torch.no_grad()
def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, percentiles: Sequence[float]
) -> None:
    """Set the student's weights from the teacher's (see the module docstring); in place."""
    pairs = list(zip(student.units(), teacher.units(), strict=True))
    if len(percentiles) != len(pairs):
        raise ValueError(f"{len(percentiles)} percentiles for {len(pairs)} units")
    previous = 1.0
    for ((name, s_unit), (_, t_unit)), p in zip(pairs, percentiles, strict=True):
        s_layer, s_norm = _parts(name, s_unit, "student")
        t_layer, t_norm = _parts(name, t_unit, "teacher")
        if s_norm is not None:
            raise UserError(f"ltl.student_init=teacher folds batch norm into the weights, but the "
                            f"student's unit {name} has one; set model.options.batch_norm=false")
        if s_layer.bias is None:
            raise UserError(f"the student's unit {name} has no bias to hold the folded batch norm")
        weight, bias = fold_batch_norm(t_layer, t_norm)
        if weight.shape != s_layer.weight.shape:
            raise UserError(f"unit {name}: teacher weight {tuple(weight.shape)} does not fit the "
                            f"student's {tuple(s_layer.weight.shape)}")
        current = max(float(p), 1e-12)
        theta = _threshold(name, s_unit)
        s_layer.weight.copy_(weight * theta * previous / current)
        s_layer.bias.copy_(bias * theta / current)
        previous = current
    # parameters in order, not state-dict keys: a dropout layer (the teacher's, while training)
    # shifts the keys without changing what the classifier computes in eval mode
    s_head, t_head = list(student.classifier.parameters()), list(teacher.classifier.parameters())
    if [p.shape for p in s_head] != [p.shape for p in t_head]:
        raise UserError("ltl.student_init=teacher: the student's and teacher's classifiers differ "
                        f"(parameter shapes {[tuple(p.shape) for p in s_head]} and "
                        f"{[tuple(p.shape) for p in t_head]})")
    for s_param, t_param in zip(s_head, t_head, strict=True):
        s_param.copy_(t_param)
    first = next(m for m in student.classifier.modules() if isinstance(m, WEIGHTED))
    first.weight.mul_(previous)
