"""Local tandem learning (LTL; Yang et al., NeurIPS 2022): each SNN unit learns locally to
reproduce the hidden activation of a pre-trained ANN teacher of the same architecture.

Teacher and student are paired unit by unit (``model.units()``; each unit ends in one
activation). For a batch, the teacher (eval mode, no gradient) gives each unit's activation
``a_l``; the target is ``â_l = clamp(a_l / P_p(a_l), 0, 1)`` with ``P_p`` the p-th percentile
over the whole batch tensor (p = 99.9 offline, 99 online), a firing rate in ``[0, 1]``.

**Offline.** Unit ``l`` takes the *detached* spikes of unit ``l - 1`` and runs all ``T``
steps (BPTT inside the unit only); its rate ``r_l = (1/T)·Σ_t s_{l,t}``. The loss is::

    L = CE(ȳ, y) + Σ_l C_l · MSE(r_l, â_l)   [+ α·τ²·KL(softmax(z/τ) ‖ softmax(ȳ/τ))]

with ``ȳ`` the readout of the detached last spikes averaged over ``T`` and ``z`` the
teacher's logits (distillation, off by default). Each unit's loss is back-propagated as soon
as it exists, so at most one unit's graph is alive.

**Online.** Time steps run one at a time with every neuron's state detached between steps
(:func:`spikegrad.neurons.streaming` with ``detach=True``), so the gradient at step ``t`` is
local in time too and memory does not grow with ``T``. Running sums ``S_{l,t} = S_{l,t-1} +
s_{l,t}`` (the past detached) give rates ``r_{l,t} = S_{l,t}/(t+1)``. The readout keeps one
too, as published: ``R_t = R_{t-1} + o_t`` with ``o_t = classifier(s_{L,t})`` and the past
detached, so the readout's gradient at step ``t`` sees step ``t``'s spikes only
(``readout_detach``; off, the readout of the running rate ``classifier(r_{L,t})``, the same
value, whose gradient sees every past step). From ``t = T_warm`` on each step adds
``Σ_l C_l·MSE(r_{l,t}, â_l) + CE(R_t/(t+1), y)`` and is back-propagated at once. Inference
averages the readout over ``t >= T_warm`` (the component's ``readout_start``; ``spikegrad
eval`` reads it from the stored config).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from spikegrad.component import Component, StepOutput, TrainingContext
from spikegrad.config import LTL_MODES, LTL_STUDENT_INITS, Config, LTLConfig, TrainConfig
from spikegrad.data.loader import collate_for
from spikegrad.distributed import DistributedContext
from spikegrad.errors import UserError
from spikegrad.losses import check_loss_options
from spikegrad.methods.teacher_init import init_student_from_teacher
from spikegrad.modes import eval_mode
from spikegrad.neurons import streaming

__all__ = [
    "LocalTandemLearning", "check_readout_loss", "distillation_loss", "normalised_targets",
    "offline_unit_outputs", "online_running_rates", "pair_units", "percentile", "readout_start",
    "resolve_T_warm", "teacher_activations",
]

#: p of the target normalisation for each mode (``ltl.mode`` but none), when ltl.percentile is None
DEFAULT_PERCENTILE = {"offline": 99.9, "online": 99.0}
assert set(DEFAULT_PERCENTILE) == set(LTL_MODES) - {"none"}


# --------------------------------------------------------------------------- targets


def percentile(x: Tensor, p: float, dist: DistributedContext | None = None) -> Tensor:
    """``P_p(x)`` over all elements of ``x`` (0-dim tensor), as ``numpy.percentile``.

    With the sorted values ``v_0 <= ... <= v_{n-1}`` and ``r = (p/100)·(n - 1)``:
    ``P_p = v_⌊r⌋ + (r - ⌊r⌋)·(v_⌊r⌋+1 - v_⌊r⌋)`` (linear interpolation).

    ``dist``: under torchrun, the percentile of every process's ``x`` together, exactly the
    value one process gets for the whole global batch: ``v_⌊r⌋`` and ``v_⌊r⌋+1`` are among the
    ``k = n - ⌊r⌋`` largest values, so each process sends only its ``k`` largest (for p = 99.9,
    about 0.1% of the elements; collective).
    """
    if not 0.0 <= p <= 100.0:
        raise UserError(f"a percentile must lie in [0, 100], got {p}")
    flat = x.detach().flatten().float()
    across = dist is not None and dist.enabled
    n = int(dist.sum([flat.numel()])[0]) if across else flat.numel()
    if n == 0:
        raise UserError("the percentile of an empty tensor is undefined")
    rank = p / 100.0 * (n - 1)
    lo = min(math.floor(rank), n - 1)
    if across:
        k = n - lo  # v_lo is the k-th largest value, v_lo+1 the (k-1)-th
        top = flat.topk(min(k, flat.numel())).values
        top = F.pad(top, (0, k - top.numel()), value=-math.inf)  # (k,) on every process
        gathered = [torch.empty_like(top) for _ in range(dist.world_size)]
        torch.distributed.all_gather(gathered, top)
        largest = torch.cat(gathered).topk(k).values  # (k,) descending
        value = lambda i: largest[n - 1 - i]  # noqa: E731  (v_i, i >= lo)
    else:
        value = lambda i: flat.kthvalue(i + 1).values  # noqa: E731
    low = value(lo)
    if lo + 1 >= n or rank == lo:
        return low
    high = value(lo + 1)
    return low + (rank - lo) * (high - low)


def normalised_targets(activation: Tensor, p: float, dist: DistributedContext | None = None) -> Tensor:
    """``â = clamp(a / P_p(a), 0, 1)`` over the whole batch tensor ``a`` (a dead layer gives 0);
    under torchrun (``dist``) ``P_p`` is that of the global batch (:func:`percentile`)."""
    scale = percentile(activation, p, dist).clamp_min(1e-12)
    return (activation.float() / scale).clamp(0.0, 1.0)


@torch.no_grad()
def teacher_activations(teacher: nn.Module, inputs: Tensor) -> tuple[list[Tensor], Tensor]:
    """The teacher's unit outputs ``[B, ...]`` and logits ``[B, classes]``, in eval mode.

    A static input gives one step (``T = 1``); time-major input (event frames) is averaged
    over its frames.
    """
    teacher.eval()
    h = teacher.encode(inputs)  # (1, B, ...), or (T, B, ...) for event frames
    activations = []
    for _, unit in teacher.units():
        h = unit(h)
        activations.append(h.mean(0))
    return activations, teacher.classifier(h).mean(0)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``τ²·KL(p ‖ q) = τ²·Σ_k p_k·(log p_k − log q_k)``, batch mean (Hinton et al.), with
    ``p = softmax(z/τ)`` of the teacher's logits ``z`` and ``q = softmax(y/τ)`` of the student's
    ``y``; dimensionless."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")


# --------------------------------------------------------------------------- pairing


def _check_network(model: nn.Module, role: str) -> None:
    for attr in ("units", "encode", "classifier"):
        if not hasattr(model, attr):
            raise UserError(f"the LTL {role} needs units(), encode() and classifier (a registered "
                            f"model or a SpikingNetwork subclass); {type(model).__name__} has no "
                            f"{attr}")


@torch.no_grad()
def pair_units(student: nn.Module, teacher: nn.Module, example: Tensor) -> list[str]:
    """Pair the units of student and teacher one to one by running ``example`` through both.

    Returns the unit names; a different number of units, or a unit whose output has another
    shape (per sample), is a :class:`UserError` naming the first such unit and both shapes.
    """
    _check_network(student, "student")
    _check_network(teacher, "teacher")
    s_units, t_units = student.units(), teacher.units()
    with eval_mode(student, teacher):
        s_h, t_h = student.encode(example), teacher.encode(example)
        for i in range(max(len(s_units), len(t_units))):
            if i >= len(s_units) or i >= len(t_units):
                longer, role = (s_units, "student") if i < len(s_units) else (t_units, "teacher")
                raise UserError(
                    f"LTL pairs units one to one, but the student has {len(s_units)} units and the "
                    f"teacher {len(t_units)}: the {role}'s unit {longer[i][0]} has no partner; use "
                    "the ANN twin of the student's architecture as the teacher"
                )
            (s_name, s_unit), (t_name, t_unit) = s_units[i], t_units[i]
            s_h, t_h = s_unit(s_h), t_unit(t_h)
            if s_h.shape[2:] != t_h.shape[2:]:
                raise UserError(
                    f"LTL unit mismatch at student unit {s_name} / teacher unit {t_name}: the "
                    f"student gives {tuple(s_h.shape[2:])} per sample, the teacher "
                    f"{tuple(t_h.shape[2:])}; the teacher must be the ANN twin of the student "
                    "(same model.name, width and options)"
                )
    return [name for name, _ in s_units]


# --------------------------------------------------------------------------- local forward passes


def offline_unit_outputs(model: nn.Module, x: Tensor) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, spikes [T, B, ...])`` of each unit fed the detached spikes of the last one."""
    h = x
    for name, unit in model.units():
        out = unit(h.detach())
        yield name, out
        h = out


def online_running_rates(
    model: nn.Module, x: Tensor, T_warm: int, readout: nn.Module | None = None
) -> Iterator[tuple[int, list[Tensor], Tensor]]:
    """Run ``x [T, B, ...]`` one step at a time, every state and spike detached between steps.

    For ``t >= T_warm`` yields ``(t, rates, last)``: the running rates
    ``r_{l,t} = (S_{l,t-1} + s_{l,t})/(t + 1)`` of every unit ``[B, ...]``, with a graph through
    step ``t`` only, and the last unit's spikes ``s_{L,t}`` (detached). With ``readout`` (the
    classifier) it runs as one more unit after the last: the last entry of ``rates`` is then
    its running average ``R_t/(t + 1)``, ``R_t = R_{t-1} + readout(s_{L,t})`` (the past
    detached), and ``last`` is ``readout(s_{L,t})`` (detached). Steps before ``T_warm`` run
    without a graph. Consume each item (e.g. back-propagate) before the next.
    """
    units = [unit for _, unit in model.units()] + ([readout] if readout is not None else [])
    sums: list[Tensor | None] = [None] * len(units)
    grad = torch.is_grad_enabled()
    with streaming(model, detach=True):
        for t in range(x.shape[0]):
            with torch.set_grad_enabled(grad and t >= T_warm):
                h = x[t : t + 1]  # (1, B, ...)
                rates = []
                for i, unit in enumerate(units):
                    spikes = unit(h.detach())  # (1, B, ...)
                    total = spikes[0] if sums[i] is None else sums[i] + spikes[0]
                    sums[i] = total.detach()
                    rates.append(total / (t + 1))
                    h = spikes
            if t >= T_warm:
                yield t, rates, h[0].detach()


def resolve_T_warm(T_warm: int | None, T: int) -> int:
    """The first step with a loss (online): ``T_warm`` or ``⌊3T/4⌋`` (12 of 16, as published)."""
    value = (3 * T) // 4 if T_warm is None else int(T_warm)
    if not 0 <= value < T:
        raise UserError(f"ltl.T_warm must lie in [0, T) = [0, {T}), got {value}; lower ltl.T_warm "
                        "or raise model.T")
    return value


def readout_start(config: Config, T: int) -> int:
    """The first time step of the readout for a run of ``config`` (``T_warm`` for online LTL)."""
    return resolve_T_warm(config.ltl.T_warm, T) if config.ltl.mode == "online" else 0


# --------------------------------------------------------------------------- the component


_DEFAULT = LTLConfig()  # the constructor's defaults are the config's


def check_readout_loss(train: TrainConfig) -> None:
    """LTL trains its readout with cross-entropy (plus ``ltl.distill``): refuse another
    ``train.loss`` and the keys of another loss (:func:`spikegrad.losses.check_loss_options`)."""
    if train.loss != "ce":
        raise UserError(f"train.loss {train.loss} does not apply with ltl.mode: LTL trains its readout "
                        "with cross-entropy (add ltl.distill for the teacher's logits); remove "
                        "train.loss or set it to ce")
    check_loss_options(train, "ce")


class LocalTandemLearning(Component):
    """LTL as a trainer component: owns the loss and back-propagates unit by unit (or step by step).

    Args:
        teacher: the trained ANN twin of the student (``kind="ann"``, ``T = 1``).
        mode: ``"offline"`` or ``"online"``.
        The other arguments default to the ``ltl`` section's defaults:
        percentile: p of the target normalisation (None: 99.9 offline, 99 online).
        layer_weights: ``C_l`` per unit (None or empty: 1 each).
        T_warm: online: first step with a loss and in the readout (None: ``⌊3T/4⌋``).
        distill: weight α of distilling the teacher's logits at the readout (0: off).
        distill_temperature: τ of the distillation.
        student_init: ``"random"`` (keep the student's weights) or ``"teacher"`` (see
            :mod:`spikegrad.methods.teacher_init`).
        init_batches: teacher init: training batches (in order) that estimate the percentiles.
        readout_detach: online: the readout's running sum detached every step (None: True,
            as published); False: the readout of the running rate. Offline has no running
            sums, so a value there is an error.
    """

    name = "ltl"
    owns_loss = True

    def __init__(
        self,
        teacher: nn.Module,
        mode: str,
        *,
        percentile: float | None = _DEFAULT.percentile,
        layer_weights: Sequence[float] | None = None,
        T_warm: int | None = _DEFAULT.T_warm,
        distill: float = _DEFAULT.distill,
        distill_temperature: float = _DEFAULT.distill_temperature,
        student_init: str = _DEFAULT.student_init,
        init_batches: int = _DEFAULT.init_batches,
        readout_detach: bool | None = _DEFAULT.readout_detach,
    ) -> None:
        if mode not in DEFAULT_PERCENTILE:
            raise UserError(f"LTL mode must be one of {list(DEFAULT_PERCENTILE)}, got {mode!r} "
                            "(ltl.mode none turns it off)")
        if mode == "offline" and readout_detach is not None:
            raise UserError("ltl.readout_detach applies to online LTL only (offline LTL keeps no "
                            "running sums); leave it unset or set ltl.mode=online")
        if mode == "offline" and T_warm is not None:
            raise UserError("ltl.T_warm applies to online LTL only (offline LTL has a loss at every "
                            "step); leave it unset or set ltl.mode=online")
        if not distill and distill_temperature != _DEFAULT.distill_temperature:
            raise UserError(f"ltl.distill_temperature applies only with distillation on (ltl.distill > "
                            f"0, got {distill}); set ltl.distill or reset ltl.distill_temperature to "
                            f"{_DEFAULT.distill_temperature}")
        if student_init != "teacher" and init_batches != _DEFAULT.init_batches:
            raise UserError(f"ltl.init_batches applies to ltl.student_init teacher only (got "
                            f"{student_init!r}); set ltl.student_init=teacher or reset ltl.init_batches "
                            f"to {_DEFAULT.init_batches}")
        if student_init not in LTL_STUDENT_INITS:
            raise UserError(f"ltl.student_init must be one of {list(LTL_STUDENT_INITS)}, got "
                            f"{student_init!r}")
        if getattr(teacher, "kind", "ann") != "ann" or getattr(teacher, "T", 1) != 1:
            raise UserError("the LTL teacher must be an ANN (model.kind: ann, T = 1); train the "
                            "ANN twin of the student first")
        self.teacher = teacher
        self.mode = mode
        self.percentile = DEFAULT_PERCENTILE[mode] if percentile is None else float(percentile)
        self.layer_weights = list(layer_weights or [])
        self.T_warm_option = T_warm
        self.T_warm = 0
        self.distill = float(distill)
        self.distill_temperature = float(distill_temperature)
        self.student_init = student_init
        self.init_batches = int(init_batches)
        self.readout_detach = True if readout_detach is None else bool(readout_detach)
        self.initialised = False
        self.unit_names: list[str] = []
        self._loss_sums: dict[str, float] = {}
        self._loss_counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, section: LTLConfig, *, teacher: nn.Module) -> LocalTandemLearning:
        """From the ``ltl`` section (``mode`` offline or online) and the resolved ANN teacher."""
        if section.teacher_set and section.teacher_recipe is None:
            raise UserError("ltl.teacher_set overrides ltl.teacher_recipe, which is unset (the teacher "
                            "comes from ltl.teacher_checkpoint); set ltl.teacher_recipe or remove "
                            "ltl.teacher_set")
        return cls(teacher, section.mode, percentile=section.percentile,
                   layer_weights=section.layer_weights, T_warm=section.T_warm,
                   distill=section.distill, distill_temperature=section.distill_temperature,
                   student_init=section.student_init, init_batches=section.init_batches,
                   readout_detach=section.readout_detach)

    def section_settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "percentile": self.percentile, "layer_weights": self.layer_weights,
                "T_warm": self.T_warm_option, "distill": self.distill,
                "distill_temperature": self.distill_temperature, "student_init": self.student_init,
                "init_batches": self.init_batches, "readout_detach": self.readout_detach}

    # ---------------------------------------------------------------- set-up

    def attach(self, ctx: TrainingContext) -> None:
        student = ctx.model
        if getattr(student, "kind", "snn") == "ann":
            raise UserError("LTL trains a spiking student from an ANN teacher, but the model is an "
                            "ANN (model.kind=ann, the teacher's kind); set model.kind=snn, or "
                            "ltl.mode=none to train the ANN itself")
        if getattr(student, "output_neuron", None) is not None:
            raise UserError("LTL trains a non-spiking readout (the classifier's values, as "
                            "published) and would skip the output neuron of model.options.readout: "
                            "spikes; use model.options.readout: logits with ltl.mode")
        check_readout_loss(ctx.config.train)
        dataset = ctx.train_set
        example = collate_for(dataset)([dataset[i] for i in range(min(2, len(dataset)))])[0]
        self.teacher.to(ctx.device).eval().requires_grad_(False)
        self.unit_names = pair_units(student, self.teacher, example.to(ctx.device))
        if not self.layer_weights:
            self.layer_weights = [1.0] * len(self.unit_names)
        if len(self.layer_weights) != len(self.unit_names):
            raise UserError(f"ltl.layer_weights has {len(self.layer_weights)} values but the student "
                            f"has {len(self.unit_names)} units ({', '.join(self.unit_names)})")
        T = getattr(student, "T", None)
        if self.mode == "online":
            if T is None:
                raise UserError("online LTL needs the student's number of time steps (model.T)")
            self.T_warm = resolve_T_warm(self.T_warm_option, T)
            self.readout_start = self.T_warm  # inference reads out t >= T_warm too
        if self.student_init == "teacher" and not self.initialised:
            loader = DataLoader(dataset, batch_size=ctx.config.data.batch_size, shuffle=False,
                                collate_fn=collate_for(dataset))
            init_student_from_teacher(student, self.teacher, self.estimate_percentiles(
                loader, ctx.device))
            self.initialised = True

    def estimate_percentiles(self, loader: DataLoader, device: torch.device) -> list[float]:
        """Mean over the first ``init_batches`` batches of each teacher unit's ``P_p``."""
        sums, batches = [0.0] * len(self.unit_names), 0
        for inputs, _ in loader:
            activations, _ = teacher_activations(self.teacher, inputs.to(device))
            sums = [s + float(percentile(a, self.percentile)) for s, a in zip(sums, activations,
                                                                               strict=True)]
            batches += 1
            if batches == self.init_batches:
                break
        return [s / batches for s in sums]

    # ---------------------------------------------------------------- loss

    def targets(self, inputs: Tensor, dist: DistributedContext | None = None) -> tuple[list[Tensor], Tensor]:
        """Normalised teacher targets ``â_l [B, ...]`` and the teacher's logits; under torchrun
        (``dist``) each unit's percentile is that of the global batch, as with one process."""
        activations, logits = teacher_activations(self.teacher, inputs)
        return [normalised_targets(a, self.percentile, dist) for a in activations], logits

    def _readout_loss(self, ctx: TrainingContext, logits: Tensor, targets: Tensor,
                      teacher_logits: Tensor) -> Tensor:
        loss = F.cross_entropy(logits, targets, label_smoothing=ctx.config.train.label_smoothing)
        if self.distill > 0:
            loss = loss + self.distill * distillation_loss(logits, teacher_logits,
                                                           self.distill_temperature)
        return loss

    def _record(self, name: str, loss: Tensor, n: int) -> None:
        self._loss_sums[name] = self._loss_sums.get(name, 0.0) + float(loss.detach()) * n
        self._loss_counts[name] = self._loss_counts.get(name, 0) + n

    def compute_loss(self, ctx: TrainingContext, inputs: Tensor, targets: Tensor) -> StepOutput:
        unit_targets, teacher_logits = self.targets(inputs, ctx.dist)
        if self.mode == "offline":
            return self._offline(ctx, inputs, targets, unit_targets, teacher_logits)
        return self._online(ctx, inputs, targets, unit_targets, teacher_logits)

    def _offline(self, ctx: TrainingContext, inputs: Tensor, targets: Tensor,
                 unit_targets: list[Tensor], teacher_logits: Tensor) -> StepOutput:
        model, n = ctx.model, targets.shape[0]
        total = 0.0
        last = None
        outputs = offline_unit_outputs(model, model.encode(inputs))
        for (name, spikes), target, weight in zip(outputs, unit_targets, self.layer_weights,
                                                  strict=True):
            loss = F.mse_loss(spikes.mean(0).float(), target)  # rate over T vs â_l
            ctx.backward(weight * loss)
            self._record(name, loss, n)
            total += weight * loss.item()
            last = spikes.detach()
        logits = model.classifier(last).mean(0)  # (B, classes), readout averaged over T
        readout = self._readout_loss(ctx, logits.float(), targets, teacher_logits)
        ctx.backward(readout)
        total += readout.item()
        return StepOutput(torch.tensor(total), logits.detach(), backpropagated=True)

    def _online(self, ctx: TrainingContext, inputs: Tensor, targets: Tensor,
                unit_targets: list[Tensor], teacher_logits: Tensor) -> StepOutput:
        model, n = ctx.model, targets.shape[0]
        total, readout_sum = 0.0, None
        x = model.encode(inputs)  # (T, B, ...)
        readout = model.classifier if self.readout_detach else None
        for _, rates, last in online_running_rates(model, x, self.T_warm, readout):
            loss = torch.zeros((), device=inputs.device)
            hidden = rates[:len(self.unit_names)]
            for name, rate, target, weight in zip(self.unit_names, hidden, unit_targets,
                                                  self.layer_weights, strict=True):
                unit_loss = F.mse_loss(rate.float(), target)
                self._record(name, unit_loss, n)
                loss = loss + weight * unit_loss
            if self.readout_detach:  # R_t/(t+1), graph through step t; last = o_t
                logits_t, step_logits = rates[-1], last
            else:  # classifier(r_{L,t}): its weights' gradient δ_t·r_{L,t}ᵀ sees every past step
                logits_t = model.classifier(rates[-1].detach().unsqueeze(0))[0]
                with torch.no_grad():
                    step_logits = model.classifier(last.unsqueeze(0))[0]
            loss = loss + self._readout_loss(ctx, logits_t.float(), targets, teacher_logits)
            ctx.backward(loss)
            total += loss.item()
            # the inference readout: o_t averaged over t >= T_warm
            readout_sum = step_logits if readout_sum is None else readout_sum + step_logits
        return StepOutput(torch.tensor(total), readout_sum / (x.shape[0] - self.T_warm),
                          backpropagated=True)

    # ---------------------------------------------------------------- bookkeeping

    def on_epoch_start(self, ctx: TrainingContext, epoch: int) -> dict[str, Any]:
        self._loss_sums, self._loss_counts = {}, {}
        return {}

    def epoch_metrics(self, ctx: TrainingContext) -> dict[str, Any]:
        """``ltl_layer_losses``: unit name -> mean MSE over the epoch (per step, online), over
        every process under torchrun."""
        names = [n for n in self.unit_names if self._loss_counts.get(n)]
        totals = ctx.dist.sum([self._loss_sums[n] for n in names]
                                  + [self._loss_counts[n] for n in names])
        sums, counts = totals[:len(names)], totals[len(names):]
        return {"ltl_layer_losses": {n: s / c for n, s, c in zip(names, sums, counts, strict=True)}}

    def method_name(self, base: str) -> str:
        return f"ltl-{self.mode}"

    @classmethod
    def section_method_name(cls, section: LTLConfig, base: str) -> str:
        return f"ltl-{section.mode}"

    def state_dict(self) -> dict[str, Any]:
        # the epoch's running loss sums too: a mid-epoch resume reports the same ltl_layer_losses
        return {"mode": self.mode, "initialised": self.initialised,
                "loss_sums": dict(self._loss_sums), "loss_counts": dict(self._loss_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise UserError(f"this checkpoint was trained with ltl.mode={state['mode']!r}, not "
                            f"{self.mode!r}")
        self.initialised = bool(state.get("initialised", self.initialised))
        self._loss_sums = dict(state.get("loss_sums", {}))
        self._loss_counts = dict(state.get("loss_counts", {}))
