"""Typed run configuration: one dataclass per section, one source of defaults.

A recipe is a YAML file whose keys mirror these dataclasses; anything not given takes
the default written here. ``extends: other.yaml`` (relative to the recipe) starts from
another recipe. Command-line overrides use dotted keys: ``--set model.T=6``.

Every problem is a :class:`~spikegrad.errors.UserError` that names the key: an unknown key
(with the nearest valid one), a value of the wrong type (list items too), a number that is
NaN or infinite (no key takes either), or a value out of range. Files are read by
:mod:`spikegrad.safe_yaml` (bounded size and aliases, duplicate keys refused, UTF-8 only).

Names that a registry owns (neuron types, surrogates, encoders, learning rate and balance
schedules, training losses) are read from it each time a config is checked, so a name
registered later counts too; the few choices no registry owns (``ltl.mode``,
``shortcut.loss``) are defined here once and used by their methods.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikegrad import encoders, fused, losses, neurons, schedules, surrogates
from spikegrad.errors import UserError, did_you_mean, refuse_unread
from spikegrad.fdg import BN_MODES
from spikegrad.models.common import KINDS
from spikegrad.safe_yaml import load_yaml, read_text, yaml_problem
from spikegrad.temperature_search import RULES

#: ``ltl.mode``: none, or the two ways of local tandem learning
LTL_MODES = ("none", "offline", "online")
#: ``ltl.student_init``: keep the student's weights, or start from the teacher's
LTL_STUDENT_INITS = ("random", "teacher")
#: ``shortcut.loss``: one loss on the combined logits (the paper), or one per head
SHORTCUT_LOSSES = ("combined", "separate")


def option(default: Any = dataclasses.MISSING, *, doc: str = "",
           choices: Iterable | Callable[[], Iterable] | None = None,
           min: float | None = None, gt: float | None = None, max: float | Any | None = None,
           lt: float | None = None, length: int | None = None,
           factory: Any = dataclasses.MISSING, check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with a docstring and range/choice constraints checked on load.

    The bounds apply to a number, or to every number of a list; ``max`` may be a function
    returning ``(bound, reason)`` (a bound that depends on the machine); ``length`` is the
    required length of a list. ``choices`` is a fixed tuple, or a registry's function
    returning its names (``neurons.available``: read each time a config is checked, see
    :func:`choices_of`); a mapping value is checked by its ``name``. ``check(value)`` returns
    a problem in words, or None.
    """
    meta = {"doc": doc, "choices": choices if callable(choices) else tuple(choices) if choices else None,
            "min": min, "gt": gt, "max": max, "lt": lt, "length": length, "check": check}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(meta: Mapping[str, Any]) -> tuple | None:
    """The choices in a field's metadata, now (a registry's names are read at this call)."""
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


@dataclass
class NeuronConfig:
    """Neuron of every spiking unit (see :mod:`spikegrad.dynamics`)."""

    type: str = option("lif", doc="lif, if or plif (learnable leak)", choices=neurons.available)
    leak: float = option(0.5, doc="λ in u_t = λ·u_(t-1) + I_t (if has none: leave the default)",
                         min=0.0, max=1.0)
    threshold: float = option(1.0, doc="firing threshold", gt=0.0)
    reset: str = option("hard", doc="hard: set to v_reset; soft: subtract threshold",
                        choices=("hard", "soft"))
    v_reset: float = option(0.0, doc="potential after a spike (hard reset)")
    detach_reset: bool = option(False, doc="cut the gradient through the reset")
    backend: str = option("auto", choices=fused.BACKENDS,
                          doc="who runs the time loop: auto (a fused kernel where one runs), "
                          "reference (the plain loop), cpu or triton (spikegrad.fused)")

    def kwargs(self) -> dict[str, Any]:
        """Arguments for :func:`spikegrad.neurons.create` (``if`` takes no leak: one set is refused)."""
        out = dataclasses.asdict(self)
        if self.type == "if":
            refuse_unread(self, "model.neuron", ["leak"], "to model.neuron.type if (integrate-and-fire "
                          "neurons do not leak)")
            out.pop("leak")
        return out


@dataclass
class ModelConfig:
    name: str = option("digits_cnn", doc="registered model (spikegrad models lists them)")
    kind: str = option("snn", doc="snn, or ann for the ANN twin", choices=KINDS)
    T: int = option(4, doc="time steps (ignored by ann)", gt=0)
    encoder: str | dict = option("direct", choices=encoders.available,
                                 doc="input encoder (spikegrad.encoders): direct, poisson, latency or "
                                 "delta; or {name: latency, scale: log} with its options")
    width: float = option(1.0, doc="channel width multiplier", gt=0.0)
    activation_max: float = option(2.0, doc="clip of the ANN twin's ReLU", gt=0.0)
    neuron: NeuronConfig = option(factory=NeuronConfig)
    surrogate: dict = option(factory=lambda: dict(surrogates.DEFAULT),
                             doc="name plus the surrogate's parameters",
                             check=lambda value: _check_surrogate(value))
    options: dict = option(factory=dict, doc="further model-specific constructor arguments")
    lean_memory: bool = option(False, doc="keep binary inputs of conv/linear layers as bits and nothing "
                               "in pools for backward (same gradients, less memory; spikegrad.lean)")


@dataclass
class DataConfig:
    name: str = option("digits", doc="registered dataset")
    root: str | None = option(None, doc="folder holding the dataset files")
    batch_size: int = option(64, gt=0)
    eval_batch_size: int = option(256, gt=0)
    num_workers: int = option(0, min=0, max=lambda: _thread_limit(),
                              doc="DataLoader worker processes (0: load in the main process)")
    augment: list[str] = option(factory=list, doc='batched augmentation ops, e.g. ["crop:4", "hflip"]')
    options: dict = option(factory=dict, doc="further dataset-specific options")
    subset: int | None = option(None, gt=0, doc="train on a stratified subset of at most this many "
                                "training samples (None: all); cut before data.validation")
    validation: float = option(0.0, check=lambda v: _check_holdout_fraction(v),
                               doc="fraction 0 < v < 1 of the training set held out, stratified, and "
                               "evaluated on instead of the test set (0: no split, the test set)")
    split_seed: int = option(0, min=0, doc="seed of data.subset and data.validation (not train.seed: "
                             "every run tunes on the same validation samples)")


@dataclass
class OptimConfig:
    name: str = option("sgd", choices=("sgd", "adamw", "adam"))
    lr: float = option(0.1, gt=0.0)
    momentum: float = option(0.9, min=0.0, max=1.0, doc="SGD only")
    nesterov: bool = option(False, doc="SGD only")
    weight_decay: float = option(1e-4, min=0.0)
    betas: list[float] = option(factory=lambda: [0.9, 0.999], min=0.0, lt=1.0, length=2,
                                doc="Adam/AdamW only")


@dataclass
class ScheduleConfig:
    name: str = option("cosine", choices=schedules.lr_schedules,
                       doc="per-iteration learning-rate schedule")
    warmup_epochs: float = option(0.0, min=0.0, doc="linear warm-up from 0")
    min_lr: float = option(0.0, min=0.0, doc="cosine floor")
    step_epochs: int = option(30, gt=0, doc="step: decay every this many epochs")
    gamma: float = option(0.1, gt=0.0, doc="step: decay factor")


@dataclass
class TrainConfig:
    epochs: int = option(10, gt=0)
    seed: int = option(0, min=0, max=2**32 - 1, doc="seeds Python, NumPy (whose seeds are 32-bit) "
                       "and torch")
    device: str = option("auto", doc="auto, cpu, cuda, cuda:N or mps")
    amp: bool = option(False, doc="mixed precision (fp16 + grad scaling on CUDA, bf16 on CPU)")
    loss: str = option("ce", choices=losses.available,
                       doc="ce on the time-averaged logits, tet (TET's per-step loss), spike_count "
                       "(MSE of output spike counts; needs model.options.readout: spikes) or membrane "
                       "(CE of each class's highest output over time); spikegrad.losses")
    correct_rate: float = option(1.0, min=0.0, max=1.0,
                                 doc="spike_count: target spikes per step of the labelled class")
    incorrect_rate: float = option(0.0, min=0.0, max=1.0,
                                   doc="spike_count: target spikes per step of the other classes")
    tet_lambda: float = option(0.05, min=0.0, max=1.0, doc="TET: weight of the MSE term")
    tet_phi: float = option(1.0, doc="TET: MSE target")
    label_smoothing: float = option(0.0, min=0.0, max=1.0)
    grad_clip: float | None = option(None, gt=0.0, doc="clip the gradient norm (None: off)")
    progress: bool = option(True, doc="progress bar when the terminal is interactive")
    threads: int | None = option(None, gt=0, max=lambda: _thread_limit(),
                                 doc="torch CPU threads (None: the free cores, see spikegrad.threads)")
    checkpoint_every: int = option(0, min=0, doc="also write last.pt every this many iterations "
                                   "(0: at epoch ends only); a resume continues mid-epoch")
    nonfinite: str = option("stop", choices=("stop", "skip"),
                            doc="a NaN/inf loss or gradient: stop the run, or skip the step and "
                            "count it (nonfinite_steps in metrics.jsonl)")


@dataclass
class DistributedConfig:
    """Multi-process training under ``torchrun`` (see docs/reliability.md); unused otherwise."""

    backend: str = option("auto", choices=("auto", "gloo", "nccl"),
                          doc="auto: nccl on CUDA, gloo on CPU")
    sync_bn: bool = option(False, doc="batch norm statistics over all processes (CUDA only); "
                           "off: each process normalises over its own T·B/world samples")
    find_unused_parameters: bool = option(False, doc="DDP: allow parameters without a gradient")
    timeout_minutes: float = option(30.0, gt=0.0, max=7 * 24 * 60.0, doc="collective timeout")


@dataclass
class AnalysisConfig:
    """Measurements at every evaluation (:mod:`spikegrad.monitors`, :mod:`spikegrad.energy`)."""

    monitors: bool = option(True, doc="per-layer firing rates, dead/saturated neurons, SOPs and "
                            "energy at every evaluation (metrics.jsonl, analysis.json)")
    membrane: bool = option(False, doc="also membrane-potential statistics (keeps h of each step)")
    pj_per_ac: float = option(0.9, gt=0.0, doc="energy of an accumulate, pJ (45 nm, 32-bit float)")
    pj_per_mac: float = option(4.6, gt=0.0, doc="energy of a multiply-accumulate, pJ (45 nm)")
    tensorboard: bool = option(False, doc="also write the metrics as TensorBoard scalars into "
                               "<run>/tensorboard (needs the tensorboard package)")


@dataclass
class LTLConfig:
    """Local tandem learning: SNN units learn locally to match an ANN teacher (docs/methods.md)."""

    mode: str = option("none", choices=LTL_MODES,
                       doc="none, offline (BPTT inside each unit) or online (state detached every step)")
    teacher_checkpoint: str | None = option(
        None, doc="checkpoint of a trained ANN twin (kind ann); when set it is the teacher, and a "
                  "recipe's ltl.teacher_recipe is not trained")
    teacher_recipe: str | None = option(
        None, doc="recipe of the ANN teacher, trained first into <run>/teacher (a path, or the "
                  "name of a packaged recipe); unused when ltl.teacher_checkpoint is set")
    teacher_set: list[str] = option(factory=list, doc='overrides of the teacher recipe, e.g. '
                                                 '["model.kind=ann", "train.epochs=5"]')
    percentile: float | None = option(None, gt=0.0, max=100.0,
                                      doc="p of the target normalisation; None: 99.9 offline, 99 online")
    layer_weights: list[float] = option(factory=list, min=0.0,
                                        doc="C_l per unit; empty: 1 for every unit")
    T_warm: int | None = option(None, min=0,
                                doc="online: first step with a loss and in the readout; None: 3T/4")
    readout_detach: bool | None = option(
        None, doc="online: the readout's running sum detached every step, so step t's readout "
                  "gradient sees step t's spikes only (None: true, as published); false: the "
                  "readout of the running rate, whose gradient sees every past step")
    distill: float = option(0.0, min=0.0, doc="weight of distilling the teacher's logits (0: off)")
    distill_temperature: float = option(4.0, gt=0.0, doc="softmax temperature of the distillation")
    student_init: str = option("random", choices=LTL_STUDENT_INITS,
                               doc="random, or teacher: BN folded in, weights scaled by percentiles")
    init_batches: int = option(4, gt=0, doc="teacher init: batches that estimate the percentiles")


@dataclass
class DspikeConfig:
    """Adaptive Dspike temperature (Algorithm 1 of Li et al. 2021; see docs/dspike.md).

    At the start of every ``every``-th epoch ``e`` (counted from 0) with ``e >= first_epoch``
    (by default from the second epoch on: before any training, batch norm's running statistics
    are still the initial ones, which eval-mode probes would read) the finite difference
    gradient of the probed layer is compared with the Dspike surrogate gradient for each
    candidate ``b + j·delta`` (``j`` in ``candidates``, never below ``b_min``) on
    ``probe_batches`` probe batches, and ``rule`` decides from the cosine similarities.
    """

    adaptive: bool = option(False, doc="search the temperature during training (model.surrogate "
                                       "must be dspike; method name dspike-adaptive)")
    b0: float | None = option(None, gt=0.0, doc="initial temperature (None: model.surrogate's)")
    delta: float = option(0.5, gt=0.0, doc="Δb, the step between candidates")
    candidates: list[float] = option(factory=lambda: [-1, 0, 1],
                              doc="candidate offsets in units of delta (the paper: -1, 0, 1)")
    b_min: float = option(0.5, gt=0.0, doc="lower bound on the temperature")
    epsilon: float = option(1.0, gt=0.0,
                            doc="FDG step as a fraction of the RMS of the probed layer's weights")
    num_weights: int | None = option(32, gt=0, doc="K, weights probed per probe batch (a seeded random "
                                                   "subset; None: all; the paper's search: 64)")
    batch_size: int = option(64, gt=0, doc="samples in the fixed mini-batch of each search")
    every: int = option(1, gt=0, doc="search every this many epochs")
    first_epoch: int = option(1, min=0, doc="no search before the start of this epoch (counted from 0; "
                                            "0: also before any training, as Algorithm 1 lists it)")
    layer: str | None = option(None, doc="probed layer (qualified name; None: the first weight "
                                         "layer); ignored with per_layer")
    per_layer: bool = option(False, doc="one temperature per unit, each chosen by the FDG of the "
                                        "unit's first weight layer (an extension, off in the paper)")
    max_stacked: int | None = option(None, gt=0, doc="samples per stacked FDG forward call (None: one ± "
                                                     "pair, 2·batch_size, on a CPU, where small calls are "
                                                     "fastest; 512 on a GPU)")
    rule: str = option("significant", choices=RULES,
                       doc="significant: keep b unless a candidate's mean cosine beats b's by more than "
                           "the standard error of the paired difference over the probe batches; paper: "
                           "the candidate of highest mean cosine (Algorithm 1)")
    bn_mode: str = option("train", choices=BN_MODES,
                          doc="batch norm in the FDG and surrogate gradients: train (the probe batch's "
                              "own statistics, as training uses; running statistics untouched) or eval "
                              "(running statistics, the paper's code)")
    probe_batches: int = option(4, min=1, max=1000,
                                doc="probe batches per search, each with its own weights; the cosines are "
                                    "averaged (rule significant needs >= 2)")


@dataclass
class PaperConfig:
    """What the paper a recipe mirrors reports (shown by ``spikegrad recipes``; not used in training)."""

    accuracy: float | None = option(None, min=0.0, max=100.0, doc="reported top-1 accuracy, %")
    source: str = option("", doc="paper and table, tagged [paper] (stated in the paper), [later] "
                         "(quoted by later papers) or [open] (our choice); see docs/methods.md")


@dataclass
class ShortcutConfig:
    """Shortcut back-propagation branches (training only; see :mod:`spikegrad.methods.shortcut`).

    Plain shortcut BP: ``schedule: constant, lambda0: 1``; the evolutionary method: ``linear``
    with ``lambda0: 0.25`` (the defaults).
    """

    enabled: bool = option(False, doc="train with shortcut branches")
    attach: list[str] = option(factory=list, doc="module names to branch from ([]: the model's "
                          "default: ResNet stage ends but the last, else every k-th unit)")
    every: int | None = option(None, gt=0, doc="branch after every k-th unit (None: about four "
                               "blocks; ResNets use their stage ends)")
    schedule: str = option("linear", choices=schedules.balance_schedules,
                           doc="balance coefficient λ(i) per iteration")
    lambda0: float = option(0.25, min=0.0, doc="λ at the first iteration")
    step_fraction: float = option(0.5, gt=0.0, max=1.0, doc="step: drop every this fraction of training")
    gamma: float = option(0.1, min=0.0, doc="step: factor of each drop")
    loss: str = option("combined", choices=SHORTCUT_LOSSES,
                       doc="combined: one CE on main + λ·Σ branches (the paper); separate: one per head")


@dataclass
class DiagnosticsConfig:
    """Gradient diagnostics written with every run (``gradients.jsonl``)."""

    gradient_interval: int = option(50, min=0, doc="record gradient norms every this many "
                                    "iterations (0: off)")
    histogram_bins: int = option(41, min=2, max=10_000,
                                 doc="bins of the first layer's gradient histogram")


@dataclass
class Config:
    """A whole run: what to train, on what, how."""

    name: str = option("", doc="the run's name ('': <data.name>-<method>, e.g. digits-dspike-adaptive); "
                       "the default run folder is runs/<name>")
    paper: PaperConfig = option(factory=PaperConfig)
    model: ModelConfig = option(factory=ModelConfig)
    data: DataConfig = option(factory=DataConfig)
    optim: OptimConfig = option(factory=OptimConfig)
    schedule: ScheduleConfig = option(factory=ScheduleConfig)
    train: TrainConfig = option(factory=TrainConfig)
    analysis: AnalysisConfig = option(factory=AnalysisConfig)
    ltl: LTLConfig = option(factory=LTLConfig)
    distributed: DistributedConfig = option(factory=DistributedConfig)
    shortcut: ShortcutConfig = option(factory=ShortcutConfig)
    diagnostics: DiagnosticsConfig = option(factory=DiagnosticsConfig)
    dspike: DspikeConfig = option(factory=DspikeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts (a copy, bounded like loading: see :func:`_plain`)."""
        return _as_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> Config:
        """A new config with dotted overrides (``"train.epochs=3"`` or ``{"train.epochs": 3}``)."""
        data = self.to_dict()
        apply_overrides(data, overrides)
        return from_dict(Config, data)


# --------------------------------------------------------------------------- loading


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
INT_LIMIT = 2**63 - 1  # what torch and NumPy take; no key means more
MAX_VALUES = 10_000  # values in one list or mapping value (model.options, data.augment, ...)
THREADS_PER_CPU = 4


MIN_THREAD_LIMIT = 64  # so a config written on a larger machine still loads here


def _thread_limit() -> tuple[int, str]:
    cpus = os.cpu_count() or 1
    return (max(THREADS_PER_CPU * cpus, MIN_THREAD_LIMIT),
            f"{THREADS_PER_CPU} per CPU of the {cpus} here, at least {MIN_THREAD_LIMIT}; more "
            "only slow the run down, and far more crash it")


class _BadValue(UserError):
    """A value of the right type that is not allowed (NaN, inf, beyond 64 bits)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _plain(value: Any, key: str, finite: bool = True) -> Any:
    """A fresh copy of nested lists and mappings, refused beyond ``MAX_VALUES`` values.

    Shared references (YAML aliases, a checkpoint's pickled lists) are copied each time
    they occur, so the copy is bounded before it is made: the config then holds a tree.
    """
    count = 0

    def copy(item: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES or depth > 32:
            raise UserError(f"config key {key!r} holds more than {MAX_VALUES} values or nests deeper "
                            "than 32 levels (shared references expanded); that is not a setting")
        if isinstance(item, Mapping):
            return {k: copy(v, depth + 1) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [copy(v, depth + 1) for v in item]
        if finite and isinstance(item, float) and not math.isfinite(item):
            raise _BadValue(f"config key {key!r} holds {item}; every number must be finite")
        return item

    return copy(value, 0)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _BadValue:
                raise
            except UserError:
                continue
        raise UserError(
            f"config key {key!r} must be {' or '.join(_type_name(a) for a in args)}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UserError(f"config key {key!r} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    base = origin or tp
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key!r} must be an integer, got {value!r} "
                            f"({type(value).__name__})")
        if abs(value) > INT_LIMIT:
            raise _BadValue(f"config key {key!r} must lie within ±{INT_LIMIT} (64-bit), got {value}")
        return value
    if base is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key!r} must be a number, got {value!r} "
                            f"({type(value).__name__})")
        if not math.isfinite(value):
            raise _BadValue(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key!r} must be a string, got {value!r} "
                            f"({type(value).__name__})")
        return value
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        items = typing.get_args(tp)
        if items:  # list[str], list[float]: each item checked, numbers kept as given (1 stays 1)
            return [v if isinstance(v, int) and items[0] is float and not isinstance(v, bool)
                    else _coerce(v, items[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return _plain(list(value), key)
    if base is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key {key!r} must be a mapping, got {value!r}")
        return _plain(dict(value), key)
    return value


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if meta.get("length") is not None and len(value) != meta["length"]:
        raise UserError(f"config key {key!r} must hold {meta['length']} values, got {value!r}")
    problem = meta["check"](value) if meta.get("check") else None
    if problem:
        raise UserError(f"config key {key!r}: {problem}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                _check_range(item, {**meta, "length": None, "choices": None, "check": None},
                             f"{key}[{index}]")
        return
    choices = choices_of(meta)
    name = value.get("name", value) if isinstance(value, Mapping) else value
    if choices and name not in choices:
        raise UserError(f"config key {key!r} must be one of {list(choices)}, got {name!r}"
                        f"{did_you_mean(str(name), map(str, choices))}")
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise UserError(f"config key {key!r} must be > {meta['gt']}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise UserError(f"config key {key!r} must be >= {meta['min']}, got {value!r}")
    if meta.get("lt") is not None and not value < meta["lt"]:
        raise UserError(f"config key {key!r} must be < {meta['lt']}, got {value!r}")
    limit = meta.get("max")
    if callable(limit):
        bound, reason = limit()
        if value > bound:
            raise UserError(f"config key {key!r} must be <= {bound} ({reason}), got {value!r}")
    elif limit is not None and value > limit:
        raise UserError(f"config key {key!r} must be <= {limit}, got {value!r}")


def _check_holdout_fraction(value: float) -> str | None:
    """``data.validation``: 0 (no validation split) or a fraction strictly between 0 and 1."""
    if value == 0 or 0 < value < 1:
        return None
    return (f"must be a fraction 0 < v < 1 of the training set to hold out for validation (e.g. 0.1), "
            f"or 0 to evaluate on the test set; got {value!r}")


def _check_surrogate(value: Mapping[str, Any]) -> str | None:
    """``model.surrogate`` names a registered surrogate."""
    name = value.get("name")
    if not isinstance(name, str):
        return "needs a 'name' key, e.g. {name: dspike, temperature: 3.0}"
    if name.lower() not in surrogates.available():
        return (f"unknown surrogate {name!r}{did_you_mean(name, surrogates.available())}; "
                f"available: {', '.join(surrogates.available())}")
    return None


def _as_dict(section: Any, prefix: str = "") -> dict[str, Any]:
    """``dataclasses.asdict`` without its unbounded deep copy of shared lists and mappings."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _as_dict(value, f"{prefix}{f.name}.")
        elif isinstance(value, (list, tuple, Mapping)):
            out[f.name] = _plain(value, f"{prefix}{f.name}", finite=False)
        else:
            out[f.name] = value
    return out


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, naming any bad key in the error."""
    if not isinstance(data, Mapping):
        raise UserError(f"config section {prefix.rstrip('.') or 'top level'!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            candidates = [f"{prefix}{k}" for k in fields]
            raise UserError(
                f"unknown config key {full!r}{did_you_mean(full, candidates)}; "
                f"valid keys here: {', '.join(fields)}"
            )
        value = _coerce(value, hints[key], full)
        _check_range(value, fields[key].metadata, full)
        kwargs[key] = value
    return cls(**kwargs)


def check_values(config: Config) -> Config:
    """``config``, once every value has passed the checks loading a recipe applies (known keys,
    types, ranges, choices): a config built in Python (section constructors,
    ``dataclasses.replace``) is refused where the same values in a recipe would be, with the
    same message naming the key."""
    if not isinstance(config, Config):
        raise UserError(f"config must be a spikegrad Config, got {type(config).__name__}; use "
                        "spikegrad.config.load_config(path) or Config().with_overrides({...})")
    from_dict(Config, config.to_dict())
    return config


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
    value = load_yaml(text, f"override {item!r}: the value") if text.strip() else None
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> None:
    """Set dotted keys in a nested mapping (in place); unknown keys are caught by ``from_dict``."""
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"override {key!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value


#: the keys that make the datasets (:func:`spikegrad.data.from_config.datasets_from_config`)
DATASET_KEYS = ("data.name", "data.root", "data.options", "data.subset", "data.validation",
                "data.split_seed")
#: the settings of ``train.loss`` (:func:`spikegrad.losses.training_loss`)
LOSS_KEYS = ("train.loss", "train.label_smoothing", "train.tet_lambda", "train.tet_phi",
             "train.correct_rate", "train.incorrect_rate")
#: :func:`refuse_unread_overrides`'s way out for ``model.*`` in a command that reads a checkpoint's model
CHECKPOINT_MODEL = {"model": "the model is the checkpoint's, rebuilt from its stored arguments; train "
                             "another run to change it"}


def _under(key: str, prefixes: Iterable[str]) -> str | None:
    """The longest of ``prefixes`` that is ``key`` or a section holding it (``data`` holds
    ``data.root``), else None."""
    found = [p for p in prefixes if key == p or key.startswith(p + ".")]
    return max(found, key=len) if found else None


def refuse_unread_overrides(overrides: Iterable[str], reads: Iterable[str], command: str,
                            instead: Mapping[str, str] | None = None) -> None:
    """Refuse every ``--set KEY=VALUE`` of ``overrides`` whose key ``command`` does not read.

    ``reads``: the keys and sections it reads; ``instead``: for keys or sections it does not
    read, what to do instead (the most specific entry wins). A setting that cannot apply is
    an error, never ignored: a :class:`UserError` names the key and the way out.
    """
    reads, instead = list(reads), dict(instead or {})
    for item in overrides:
        key = parse_override(item)[0]
        if _under(key, reads) is not None:
            continue
        hint = instead.get(_under(key, instead) or "", "")
        raise UserError(f"--set {key}: {command} does not read it"
                        + (f"; {hint}" if hint else "")
                        + f" (it reads {', '.join(sorted(reads))})")


_yaml_problem = yaml_problem  # the name this module used before spikegrad.safe_yaml


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe, following ``extends:`` (relative paths) with later keys winning."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    if path.resolve() in _seen:
        raise UserError(f"config {str(path)!r} extends itself through {[str(p) for p in _seen]}")
    data = load_yaml(read_text(path, "config file"), f"config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"config file {str(path)!r}: extends must name a recipe file, e.g. "
                        f"extends: base_cifar10.yaml, got {parent!r}")
    base = read_yaml(path.parent / parent, (*_seen, path.resolve()))
    return _merge(base, data)


_REPLACED_WHEN_RENAMED = {"surrogate"}


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; a ``surrogate`` of another name replaces the base one (its parameters differ)."""
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        replaces = key in _REPLACED_WHEN_RENAMED and isinstance(value, Mapping) and (
            value.get("name", old.get("name") if isinstance(old, dict) else None)
            != (old.get("name") if isinstance(old, dict) else None)
        )
        if isinstance(value, Mapping) and isinstance(old, dict) and not replaces:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a recipe (or the defaults when ``path`` is None) and apply dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    return from_dict(Config, data)
