"""Adaptive Dspike temperature: Algorithm 1 of Li et al. (NeurIPS 2021) as a trainer component.

At the start of a search epoch, on each of ``probe_batches`` fixed mini-batches (each with
its own seeded subset of probed weights) and with batch norm in ``bn_mode``:

1. the finite difference gradient ``ĝ`` of the probed layer's weights (:mod:`spikegrad.fdg`);
2. for every candidate ``b_c = max(b_min, b + j·Δb)`` the Dspike surrogate gradient ``g(b_c)``
   of the same weights by BPTT (:mod:`spikegrad.alignment`), and ``cos(ĝ, g(b_c))``;
3. ``rule`` chooses ``b`` from these cosines (:mod:`spikegrad.temperature_search`):
   ``paper``, the candidate of highest mean cosine (ties go to the candidate closest to the
   current ``b``), or ``significant``, which keeps ``b`` unless a candidate beats it by more
   than the standard error of the paired difference over the batches;
4. the epoch trains with ``b``.

The paper's search is ``rule=paper``, ``bn_mode=eval``, ``probe_batches=1``,
``num_weights=64``.

One global temperature probed at the first weight layer, as in the paper; with
``per_layer`` every unit of ``model.features`` has its own temperature, chosen by the FDG of
the unit's first weight layer while the other units keep theirs (units in order).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from spikegrad.alignment import probe_batch
from spikegrad.component import Component, TrainingContext
from spikegrad.config import Config, DspikeConfig
from spikegrad.errors import UserError
from spikegrad.fdg import resolve_layer, sample_weight_indices, weight_layers
from spikegrad.neurons import SpikingNeuron
from spikegrad.surrogates import Dspike
from spikegrad.temperature_search import Decision, decide, similarity_matrix

__all__ = ["AdaptiveTemperature", "TemperatureGroup", "candidate_temperatures", "choose_temperature",
           "first_search_epoch"]

GLOBAL = "model"  # group name of the single temperature


def candidate_temperatures(b: float, delta: float, offsets: Sequence[float], b_min: float) -> list[float]:
    """``max(b_min, b + j·delta)`` for every offset ``j``, sorted, without duplicates."""
    return sorted({max(b_min, b + j * delta) for j in offsets})


def choose_temperature(candidates: Sequence[float], similarities: Sequence[float], current: float) -> float:
    """The candidate of highest similarity; among equal ones, the one closest to ``current``."""
    best = max(similarities)
    tied = [c for c, s in zip(candidates, similarities, strict=True) if s == best]
    return min(tied, key=lambda c: abs(c - current))


def first_search_epoch(every: int, first_epoch: int) -> int:
    """The epoch (counted from 0) whose start has the first search: the first multiple of
    ``every`` that is at least ``first_epoch``."""
    return -(-first_epoch // every) * every


@dataclass
class TemperatureGroup:
    """Neurons sharing one temperature and the weight layer whose FDG chooses it."""

    name: str
    layer_name: str
    layer: nn.Module
    neurons: list[SpikingNeuron]

    def set(self, b: float) -> None:
        for neuron in self.neurons:
            neuron.surrogate.temperature = b


def _dspike_neurons(module: nn.Module) -> list[SpikingNeuron]:
    return [m for m in module.modules() if isinstance(m, SpikingNeuron) and isinstance(m.surrogate, Dspike)]


def _by_candidate(candidates: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    return {f"{b:.6g}": v for b, v in zip(candidates, values, strict=True)}


class AdaptiveTemperature(Component):
    """Search the Dspike temperature at the start of every ``config.every``-th epoch.

    Metrics per epoch: ``dspike_temperature`` (per-layer: the mean, and
    ``dspike_temperatures`` unit -> b); on search epochs ``dspike_similarity`` (candidate
    as a string -> cosine similarity, the mean over the probe batches; per-layer: the first
    unit's, and ``dspike_similarities`` unit -> dict), with several probe batches
    ``dspike_similarity_se`` (candidate -> standard error of its paired difference from the
    current b; the first unit's), and ``dspike_search_seconds``.
    """

    name = "dspike"

    def __init__(self, config: DspikeConfig | None = None, *, seed: int = 0) -> None:
        self.config = config if config is not None else DspikeConfig()
        offsets = self.config.candidates
        if not offsets or not all(isinstance(j, (int, float)) and not isinstance(j, bool) for j in offsets):
            raise UserError(f"dspike.candidates must be a non-empty list of numbers (offsets in units "
                            f"of dspike.delta, e.g. [-1, 0, 1]), got {offsets!r}")
        if self.config.per_layer and self.config.layer is not None:
            raise UserError("dspike.layer chooses the probed layer of the single temperature; "
                            "with dspike.per_layer each unit probes its own, so leave dspike.layer unset")
        if self.config.rule == "significant" and self.config.probe_batches < 2:
            raise UserError(f"dspike.rule=significant needs dspike.probe_batches >= 2 (its standard error "
                            f"is over the batches), got {self.config.probe_batches}; raise it or set "
                            "dspike.rule=paper")
        self.seed = seed
        self.groups: list[TemperatureGroup] = []
        self.temperatures: dict[str, float] = {}
        self.decisions: dict[str, Decision] = {}  # of the last search, per group

    @classmethod
    def check_config(cls, config: Config) -> None:
        """A run too short to search (no epoch ``e < train.epochs`` with ``e % dspike.every == 0``
        and ``e >= dspike.first_epoch``) would be labelled ``dspike-adaptive`` without ever
        searching: refused."""
        epochs, section = config.train.epochs, config.dspike
        first = first_search_epoch(section.every, section.first_epoch)
        if first >= epochs:
            raise UserError(f"dspike.adaptive never searches in train.epochs={epochs} with dspike.every="
                            f"{section.every} and dspike.first_epoch={section.first_epoch} (the first "
                            f"search is at the start of epoch {first + 1}); raise train.epochs or lower "
                            "dspike.every or dspike.first_epoch, or set dspike.adaptive=false")

    @classmethod
    def from_config(cls, section: DspikeConfig, *, seed: int = 0) -> AdaptiveTemperature:
        """From the ``dspike`` section; ``seed`` (``train.seed``) draws the probe batches and weights."""
        return cls(section, seed=seed)

    def section_settings(self) -> dict[str, Any]:
        return {f.name: getattr(self.config, f.name) for f in fields(self.config) if f.name != "adaptive"}

    # ------------------------------------------------------------------ set-up

    def build_groups(self, model: nn.Module) -> list[TemperatureGroup]:
        """One group for the whole model, or one per unit of ``model.features`` (per_layer)."""
        if not _dspike_neurons(model):
            raise UserError("dspike.adaptive needs spiking neurons with the Dspike surrogate; set "
                            "model.surrogate.name=dspike (or dspike.adaptive=false)")
        if not self.config.per_layer:
            layer_name, layer = resolve_layer(model, self.config.layer)
            return [TemperatureGroup(GLOBAL, layer_name, layer, _dspike_neurons(model))]
        if not hasattr(model, "units"):
            raise UserError("dspike.per_layer needs a model with units() (a spikegrad network)")
        groups = []
        for unit_name, unit in model.units():
            layers, neurons = weight_layers(unit), _dspike_neurons(unit)
            if layers and neurons:
                layer_name, layer = layers[0]
                groups.append(TemperatureGroup(unit_name, f"{unit_name}.{layer_name}", layer, neurons))
        if not groups:
            raise UserError("dspike.per_layer found no unit of model.features with both a weight layer "
                            "and Dspike neurons; use one global temperature (dspike.per_layer=false)")
        return groups

    def attach(self, ctx: TrainingContext) -> None:
        self.groups = self.build_groups(ctx.model)
        b0 = self.config.b0 if self.config.b0 is not None else self.groups[0].neurons[0].surrogate.temperature
        if b0 < self.config.b_min:
            raise UserError(f"the initial Dspike temperature {b0:g} is below dspike.b_min "
                            f"{self.config.b_min:g}; raise dspike.b0 (or the surrogate's "
                            "temperature) or lower dspike.b_min")
        for group in self.groups:
            self.temperatures.setdefault(group.name, b0)
        self._apply()
        ctx.search_objective()  # a loss the search cannot differentiate is refused before training

    def _apply(self) -> None:
        for group in self.groups:
            if group.name in self.temperatures:
                group.set(self.temperatures[group.name])

    # ------------------------------------------------------------------ the search

    def search_group(
        self, ctx: TrainingContext, group: TemperatureGroup, batches: list[tuple[Tensor, Tensor]],
        generator: torch.Generator,
    ) -> Decision:
        """Choose and set the group's temperature on the probe batches; returns the decision."""
        cfg = self.config
        weight = group.layer.weight
        index_sets = [sample_weight_indices(weight.numel(), cfg.num_weights, generator).to(weight.device)
                      for _ in batches]
        rms = float(weight.detach().pow(2).mean().sqrt())
        if rms == 0.0:
            raise UserError(f"the weights of {group.layer_name} are all zero; the FDG step "
                            "dspike.epsilon is relative to their RMS")
        forward, loss_fn = ctx.search_objective()  # the loss the next training step optimises
        current = self.temperatures[group.name]
        candidates = candidate_temperatures(current, cfg.delta, cfg.candidates, cfg.b_min)
        if cfg.rule == "significant" and current not in candidates:
            candidates = sorted([*candidates, current])  # the rule compares every candidate with b
        assignments = [{n: n.surrogate.with_sharpness(b) for n in group.neurons} for b in candidates]
        try:
            similarities = similarity_matrix(ctx.model, group.layer, batches, index_sets,
                                             cfg.epsilon * rms, assignments, loss_fn, cfg.bn_mode, forward,
                                             cfg.max_stacked)
        except UserError as exc:
            raise UserError(f"{group.layer_name}: {exc}") from exc
        decision = decide(cfg.rule, candidates, similarities, current)
        chosen = ctx.dist.broadcast(decision.chosen)  # one decision for every process
        self.temperatures[group.name] = chosen
        group.set(chosen)
        return decision

    def probe_seed(self, epoch: int, n: int = 0) -> int:
        """The seed of probe batch ``n`` of ``epoch``'s search; batch 0's also draws the probed
        weights of every batch (one index set per batch, in batch order)."""
        return self.seed * 1_000_003 + epoch + 7_919_111 * n

    def probe_batches(self, ctx: TrainingContext, epoch: int) -> list[tuple[Tensor, Tensor]]:
        """The ``probe_batches`` fixed mini-batches of ``epoch``'s search, on ``ctx.device``."""
        return [probe_batch(ctx.model, ctx.train_set, self.config.batch_size, self.probe_seed(epoch, n),
                            ctx.device, ctx.collate_fn) for n in range(self.config.probe_batches)]

    def search(self, ctx: TrainingContext, epoch: int) -> dict[str, dict[str, float]]:
        """One search over every group on the epoch's probe batches; group -> candidate -> mean
        similarity (the full decisions are kept in ``self.decisions``)."""
        batches = self.probe_batches(ctx, epoch)
        generator = torch.Generator().manual_seed(self.probe_seed(epoch))  # the probed weights
        self.decisions = {g.name: self.search_group(ctx, g, batches, generator) for g in self.groups}
        return {name: _by_candidate(d.candidates, d.mean) for name, d in self.decisions.items()}

    def on_epoch_start(self, ctx: TrainingContext, epoch: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if epoch >= self.config.first_epoch and epoch % self.config.every == 0:
            tic = time.perf_counter()
            self.decisions = {}
            similarities = self.search(ctx, epoch)
            row["dspike_search_seconds"] = time.perf_counter() - tic
            row["dspike_similarity"] = similarities[self.groups[0].name]
            first = self.decisions.get(self.groups[0].name)
            if first is not None and self.config.probe_batches > 1:
                row["dspike_similarity_se"] = _by_candidate(first.candidates, first.se)
            if self.config.per_layer:
                row["dspike_similarities"] = similarities
        values = [self.temperatures[g.name] for g in self.groups]
        row["dspike_temperature"] = sum(values) / len(values)
        if self.config.per_layer:
            row["dspike_temperatures"] = {g.name: self.temperatures[g.name] for g in self.groups}
        return row

    # ------------------------------------------------------------------ bookkeeping

    def method_name(self, base: str) -> str:
        return self.section_method_name(self.config, base)

    @classmethod
    def section_method_name(cls, section: DspikeConfig, base: str) -> str:
        return base.replace("dspike", "dspike-adaptive", 1) if "dspike-adaptive" not in base else base

    def state_dict(self) -> dict[str, Any]:
        return {"temperatures": dict(self.temperatures)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.temperatures.update({str(k): float(v) for k, v in state["temperatures"].items()})
        self._apply()
