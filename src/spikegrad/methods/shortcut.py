"""Shortcut back-propagation with the evolutionary balance coefficient (NeurIPS 2024).

While training, shortcut branches carry the loss from the output straight to earlier
blocks of the network. Each branch reads the output of one module (a unit of
``model.features``, by qualified name), pools it over space and maps it to the classes
with one linear layer, per time step:

    b_l(x)_t = W_l · mean_space(s_l,t) + c_l        s_l,t: output of block l at step t

and the training loss is one cross-entropy on the combined logits

    o_t = b_n(x)_t + λ(i) · Σ_{l<n} b_l(x)_t        (b_n: the network's own head)

averaged over time like the main head (``CE(mean_t o_t, y)``; with ``train.loss: tet`` the
per-step TET loss of ``o``). ``λ(i)`` is the balance coefficient at iteration ``i`` of
``I``: constant (plain shortcut back-propagation with ``λ0 = 1``), linear
``λ0·(1 - i/I)`` (the evolutionary method, ``λ0 = 0.25``), cosine or step decay. The
``separate`` variant (classic deep supervision) sums one loss per head instead:
``L(b_n) + λ(i)·Σ_l L(b_l)``.

The branches live outside the model: their parameters are held here and trained through an
extra optimizer parameter group, and their forward hooks exist only inside
:meth:`ShortcutBackprop.compute_loss` and the trainer's evaluation. Checkpoints' model
weights, ``spikegrad eval`` and export therefore see exactly the plain SNN, at the same cost.

Each epoch's evaluation also scores the branches in the same pass (:class:`ShortcutEvaluation`):
``test_acc`` stays the network's own head, ``combined_test_acc`` is the output the training
loss fits at that point (``argmax mean_t(main + λ(i)·Σ b_l)``; with separate losses the
class of smallest summed loss, ``argmax log softmax(ȳ_main) + λ(i)·Σ log softmax(ȳ_l)``), and
``branch_test_acc`` each branch alone (attach point -> accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.alignment import probe_batch
from spikegrad.component import Component, Objective, StepOutput, TrainingContext
from spikegrad.config import SHORTCUT_LOSSES, ShortcutConfig
from spikegrad.errors import UserError, check_time_major, did_you_mean
from spikegrad.evaluation import ExtraHeads
from spikegrad.layers import TimeDistributed, mean_over_time
from spikegrad.modes import eval_mode
from spikegrad.neurons import ClippedReLU, SpikingNeuron
from spikegrad.schedules import BALANCE_SCHEDULES, balance

__all__ = [
    "LOSSES", "SCHEDULES", "ShortcutBackprop", "ShortcutBranch", "ShortcutBranches",
    "ShortcutEvaluation", "attach_candidates", "balance_coefficient", "capture_outputs", "combine_logits",
    "default_attach_points",
]

_DEFAULT = ShortcutConfig()  # the defaults here are the config's
SCHEDULES = tuple(BALANCE_SCHEDULES)
LOSSES = SHORTCUT_LOSSES


def balance_coefficient(
    schedule: str, iteration: int, total: int, lambda0: float = _DEFAULT.lambda0,
    step_fraction: float = _DEFAULT.step_fraction, gamma: float = _DEFAULT.gamma,
) -> float:
    """λ(i), the weight of the shortcut branches at iteration ``i`` (0-based) of ``total``.

    With progress ``p = clamp(i / I, 0, 1)`` (:mod:`spikegrad.schedules`):

    - ``constant``: ``λ0``
    - ``linear``: ``λ0·(1 - p)`` (the evolutionary method)
    - ``cosine``: ``λ0·(1 + cos(π·p)) / 2``
    - ``step``: ``λ0·γ^⌊p / f⌋``, a drop by ``γ`` every fraction ``f`` of training.
    """
    return balance(schedule, iteration, total, lambda0, step_fraction, gamma)


def combine_logits(main: Tensor, branches: Sequence[Tensor], lam: float) -> Tensor:
    """``o = main + λ·Σ branches`` (any matching shapes, e.g. ``[T, B, classes]``)."""
    if not branches:
        return main
    return main + lam * torch.stack(list(branches)).sum(0)


class ShortcutBranch(nn.Module):
    """Global average pooling over space, then one linear layer, at every time step.

    ``[T, B, C, *space] -> [T, B, C] -> [T, B, classes]``; a ``[T, B, F]`` input (a fully
    connected unit) goes straight to the linear layer. No neuron: the branch is analog.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, "shortcut branch input", min_dims=3)
        if x.dim() > 3:
            x = x.flatten(3).mean(3)  # (T, B, C)
        return self.linear(x)  # (T, B, classes)


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named submodules during forward passes inside the block."""
    modules = dict(model.named_modules())
    captured: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            captured[name] = output

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _fork_rng():
    """Restore every generator (CPU and all CUDA devices) on exit."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=cuda)


def _unit_names(model: nn.Module) -> list[str]:
    units = getattr(model, "units", None)
    return [name for name, _ in units()] if callable(units) else []


def attach_candidates(model: nn.Module) -> list[str]:
    """Names of the modules a branch can read: the model's units (``units()``), else every
    activation (spiking neuron, clipped or plain ReLU) outside a :class:`TimeDistributed`,
    whose output is time-major ``[T, B, C, ...]``."""
    units = _unit_names(model)
    if units:
        return units
    folded = {id(m) for td in model.modules() if isinstance(td, TimeDistributed) for m in td.modules()}
    return [name for name, m in model.named_modules()
            if isinstance(m, (SpikingNeuron, ClippedReLU, nn.ReLU)) and id(m) not in folded]


def _choices(model: nn.Module) -> str:
    names = attach_candidates(model)
    return ", ".join(repr(n) for n in names[:40]) if names else "none found"


def default_attach_points(model: nn.Module, every: int | None = None) -> list[str]:
    """Where branches go when the config names none.

    A model with ``stage_ends()`` (the ResNets) and ``every=None``: the end of every stage but
    the last. Otherwise (other models with ``units()``, or ``every`` given): every
    ``every``-th unit except the last (which feeds the main head); ``every=None`` picks
    ``max(1, n // 4)`` for ``n`` units, about four blocks.
    """
    stage_ends = getattr(model, "stage_ends", None)
    if callable(stage_ends) and every is None:
        return list(stage_ends())[:-1]
    units = _unit_names(model)
    if not units:
        raise UserError(f"{type(model).__name__} has no units() to place shortcut branches by "
                        f"default; name the modules to branch from in shortcut.attach (its "
                        f"time-major activations: {_choices(model)})")
    k = every if every is not None else max(1, len(units) // 4)
    points = [units[i] for i in range(k - 1, len(units) - 1, k)]
    if not points:
        raise UserError(f"shortcut.every={k} leaves no attach point in a model of {len(units)} "
                        "units; lower shortcut.every or name the modules in shortcut.attach")
    return points


def check_attach_points(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The names, checked against the model's submodules (a typo names the nearest unit)."""
    if not names:
        raise UserError("shortcut branches need at least one attach point")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            choices = attach_candidates(model) or [n for n in modules if n]
            raise UserError(f"shortcut attach point {name!r} is not a module of "
                            f"{type(model).__name__}{did_you_mean(name, choices)}; "
                            f"it can branch from: {', '.join(choices[:40])}")
    if len(set(names)) != len(names):
        raise UserError(f"shortcut attach points repeat a name: {list(names)}")
    return list(names)


class ShortcutBranches(nn.Module):
    """The branches of one model, one per attach point, sized by a probe forward pass.

    Held outside the model, so ``model.state_dict()`` stays the plain SNN.
    """

    def __init__(self, names: Sequence[str], in_features: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.names = list(names)
        self.heads = nn.ModuleList(ShortcutBranch(f, num_classes) for f in in_features)

    @classmethod
    def for_model(cls, model: nn.Module, names: Sequence[str], example: Tensor) -> ShortcutBranches:
        """Probe ``model`` on ``example`` (eval mode, no gradient, RNG untouched) for sizes."""
        names = check_attach_points(model, names)
        with eval_mode(model), torch.no_grad(), _fork_rng(), capture_outputs(model, names) as captured:
            outputs = model(example)  # (T, B, classes)
        check_time_major(outputs, "model output", min_dims=3)
        features = []
        for name in names:
            out = captured.get(name)
            if not isinstance(out, Tensor) or out.dim() < 3 or out.shape[:2] != outputs.shape[:2]:
                shape = None if not isinstance(out, Tensor) else tuple(out.shape)
                raise UserError(
                    f"shortcut attach point {name!r} must output a time-major tensor [T, B, C, ...] "
                    f"with the model output's T and B {tuple(outputs.shape[:2])}, got {shape}; "
                    f"attach to a whole unit or activation ({_choices(model)}), not a layer inside "
                    "TimeDistributed"
                )
            features.append(out.shape[2])
        return cls(names, features, outputs.shape[-1])

    def forward(self, captured: dict[str, Tensor]) -> list[Tensor]:
        """Branch logits ``[T, B, classes]`` for the captured block outputs, in order."""
        return [head(captured[name]) for name, head in zip(self.names, self.heads, strict=True)]


class ShortcutEvaluation(ExtraHeads):
    """The branches' predictions, scored in the evaluation pass of the plain network.

    ``combined``: ``mean_t(main + λ·Σ b_l)`` (``loss="combined"``) or
    ``log softmax(mean_t main) + λ·Σ log softmax(mean_t b_l)`` (``"separate"``: the class whose
    summed cross-entropies are smallest); each branch ``b_l`` by its attach point. Logits are
    averaged over ``t >= readout_start`` like the main head's.
    """

    def __init__(self, branches: ShortcutBranches, lam: float, loss: str) -> None:
        self.branches, self.lam, self.loss = branches, lam, loss
        self._captured: dict[str, Tensor] = {}

    def names(self) -> list[str]:
        return ["combined", *self.branches.names]

    @contextmanager
    def capture(self, model: nn.Module) -> Iterator[None]:
        with capture_outputs(model, self.branches.names) as captured:
            self._captured = captured
            yield

    def logits(self, outputs: Tensor, readout_start: int) -> dict[str, Tensor]:
        branches = self.branches(self._captured)  # each (T, B, classes)
        means = [mean_over_time(b[readout_start:]) for b in branches]
        if self.loss == "combined":
            combined = mean_over_time(combine_logits(outputs, branches, self.lam)[readout_start:])
        else:
            log_p = torch.log_softmax(mean_over_time(outputs[readout_start:]).float(), 1)
            combined = log_p + self.lam * sum(torch.log_softmax(m.float(), 1) for m in means)
        return {"combined": combined, **dict(zip(self.branches.names, means, strict=True))}

    def metrics(self, accuracy: dict[str, float]) -> dict[str, Any]:
        return {"combined_test_acc": accuracy["combined"],
                "branch_test_acc": {name: accuracy[name] for name in self.branches.names}}


class ShortcutBackprop(Component):
    """Owns the training loss: the network's head plus the shortcut branches (see module doc).

    Args:
        attach: qualified module names to branch from; None: :func:`default_attach_points`.
        every: a branch after every ``every``-th unit (on a ResNet too, instead of its stage
            ends).
        schedule, lambda0, step_fraction, gamma: the balance coefficient
            (:func:`balance_coefficient`).
        loss: ``combined`` (one loss on the combined logits, the paper's method) or
            ``separate`` (one loss per head, deep supervision).
        seed: seeds the branch initialisation without moving the global random stream, so a
            run sees the same batches and augmentation as its vanilla twin.
    """

    name = "shortcut"
    owns_loss = True

    def __init__(
        self,
        attach: Sequence[str] | None = None,
        *,
        every: int | None = _DEFAULT.every,
        schedule: str = _DEFAULT.schedule,
        lambda0: float = _DEFAULT.lambda0,
        step_fraction: float = _DEFAULT.step_fraction,
        gamma: float = _DEFAULT.gamma,
        loss: str = _DEFAULT.loss,
        seed: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise UserError(f"shortcut loss must be one of {list(LOSSES)}, got {loss!r}")
        balance_coefficient(schedule, 0, 1, lambda0, step_fraction, gamma)  # validate
        if schedule != "step" and (step_fraction, gamma) != (_DEFAULT.step_fraction, _DEFAULT.gamma):
            raise UserError(f"shortcut.step_fraction and shortcut.gamma shape the step schedule; they do "
                            f"not apply to shortcut.schedule {schedule}: set shortcut.schedule=step or "
                            f"reset them to {_DEFAULT.step_fraction} and {_DEFAULT.gamma}")
        if attach and every != _DEFAULT.every:
            raise UserError("shortcut.every places the default branches; it does not apply when "
                            "shortcut.attach names them: remove one of the two")
        self.attach_names = list(attach) if attach else None
        self.every = every
        self.schedule = schedule
        self.lambda0 = lambda0
        self.step_fraction = step_fraction
        self.gamma = gamma
        self.loss = loss
        self.seed = seed
        self.branches: ShortcutBranches | None = None
        self._lambda_sum = 0.0
        self._steps = 0

    @classmethod
    def from_config(cls, section: ShortcutConfig, *, seed: int = 0) -> ShortcutBackprop:
        """From the ``shortcut`` section; ``seed`` (``train.seed``) initialises the branches."""
        return cls(section.attach or None, every=section.every, schedule=section.schedule,
                   lambda0=section.lambda0, step_fraction=section.step_fraction,
                   gamma=section.gamma, loss=section.loss, seed=seed)

    def section_settings(self) -> dict[str, Any]:
        return {"attach": list(self.attach_names or []), "every": self.every, "schedule": self.schedule,
                "lambda0": self.lambda0, "step_fraction": self.step_fraction, "gamma": self.gamma,
                "loss": self.loss}

    # -------------------------------------------------------------- set-up

    def build(self, model: nn.Module, example: Tensor) -> ShortcutBranches:
        """Create the branches for ``model`` (sized on ``example``) without a trainer."""
        names = self.attach_names or default_attach_points(model, self.every)
        with _fork_rng():
            torch.manual_seed(self.seed)
            branches = ShortcutBranches.for_model(model, names, example)
        self.branches = branches.to(example.device)
        return self.branches

    def attach(self, ctx: TrainingContext) -> None:
        # two samples, drawn without the global generator
        example, _ = probe_batch(ctx.model, ctx.train_set, 2, self.seed, ctx.device, ctx.collate_fn)
        branches = self.build(ctx.model, example)
        ctx.add_param_group(branches.parameters())

    # -------------------------------------------------------------- training

    def coefficient(self, iteration: int, total: int) -> float:
        return balance_coefficient(self.schedule, iteration, total, self.lambda0,
                                   self.step_fraction, self.gamma)

    def outputs(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The main logits and every branch's logits, all ``[T, B, classes]``."""
        if self.branches is None:
            raise RuntimeError("ShortcutBackprop.build (or attach) must run before training")
        with capture_outputs(model, self.branches.names) as captured:
            main = model(inputs)  # (T, B, classes)
        check_time_major(main, "model output", min_dims=3)
        return main, self.branches(captured)

    def heads(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, ...]:
        """``(main, b_1, ..., b_n)``, each ``[T, B, classes]``: what the training loss reads."""
        main, branches = self.outputs(model, inputs)
        return (main, *branches)

    def heads_loss(self, loss_fn: Callable[[Tensor, Tensor], Tensor], heads: Sequence[Tensor],
                   targets: Tensor, lam: float) -> Tensor:
        """The training loss of ``heads = (main, b_1, ...)`` at balance ``lam``, with ``loss_fn``
        the run's loss of one output: ``loss_fn(main + λ·Σ b_l)`` (combined) or
        ``loss_fn(main) + λ·Σ loss_fn(b_l)`` (separate)."""
        main, *branches = heads
        if self.loss == "combined":
            return loss_fn(combine_logits(main, branches, lam), targets)
        return loss_fn(main, targets) + lam * sum(loss_fn(b, targets) for b in branches)

    def search_objective(self, ctx: TrainingContext) -> Objective:
        """``(heads, loss)``: the loss the next training step optimises, at its ``λ(i)``, as a
        function of the heads (for the Dspike temperature search)."""
        lam = self.coefficient(ctx.iteration, ctx.total_iterations)

        def loss(heads: Sequence[Tensor], targets: Tensor) -> Tensor:
            return self.heads_loss(ctx.default_loss, heads, targets, lam)

        return self.heads, loss

    def compute_loss(self, ctx: TrainingContext, inputs: Tensor, targets: Tensor) -> StepOutput:
        lam = self.coefficient(ctx.iteration, ctx.total_iterations)
        heads = self.heads(ctx.model, inputs)
        main = heads[0]
        ctx.check_labels(targets, main.shape[-1], "training labels")
        loss = self.heads_loss(ctx.default_loss, heads, targets, lam)
        self._lambda_sum += lam
        self._steps += 1
        # Training accuracy is that of the network's own head: what is deployed.
        return StepOutput(loss, mean_over_time(main).detach())

    def eval_heads(self, ctx: TrainingContext) -> ShortcutEvaluation | None:
        """The branches and the combined output at the current ``λ(i)`` (the next step's), for
        the epoch's evaluation (``combined_test_acc``, ``branch_test_acc``)."""
        if self.branches is None:
            return None
        return ShortcutEvaluation(self.branches, self.coefficient(ctx.iteration, ctx.total_iterations),
                                  self.loss)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """``final_combined_test_acc`` and ``final_branch_test_acc`` of the last evaluation."""
        last = history[-1] if history else {}
        return {"final_combined_test_acc": last.get("combined_test_acc"),
                "final_branch_test_acc": last.get("branch_test_acc")}

    def epoch_metrics(self, ctx: TrainingContext) -> dict[str, Any]:
        """``shortcut_lambda``: the mean λ over the epoch's training steps."""
        lam = self._lambda_sum / self._steps if self._steps else self.coefficient(
            ctx.iteration, ctx.total_iterations)
        self._lambda_sum, self._steps = 0.0, 0
        return {"shortcut_lambda": lam}

    def method_name(self, base: str) -> str:
        return _method_name(base, self.schedule, self.loss)

    @classmethod
    def section_method_name(cls, section: ShortcutConfig, base: str) -> str:
        return _method_name(base, section.schedule, section.loss)

    # -------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        if self.branches is None:
            return {}
        return {"attach": list(self.branches.names), "branches": self.branches.state_dict(),
                "lambda_sum": self._lambda_sum, "steps": self._steps}  # the epoch so far

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.branches is None or list(state["attach"]) != self.branches.names:
            have = None if self.branches is None else self.branches.names
            raise UserError(f"the checkpoint's shortcut branches attach at {state['attach']}, "
                            f"this run's at {have}; use the same shortcut.attach")
        self.branches.load_state_dict(state["branches"])
        self._lambda_sum, self._steps = state.get("lambda_sum", 0.0), state.get("steps", 0)


def _method_name(base: str, schedule: str, loss: str) -> str:
    """``base+shortcut`` (constant λ) or ``base+evolutionary``, ``-separate`` for separate losses."""
    suffix = "shortcut" if schedule == "constant" else "evolutionary"
    return f"{base}+{suffix}" + ("-separate" if loss == "separate" else "")
