"""Does the Dspike temperature search decide on signal? A study at fixed trained models.

For each trained model, on the first weight layer (the layer the search probes), with a
pool of ``--pool`` weights probed on every one of ``--batches`` probe batches of
``--batch-size`` training samples, in each batch-norm mode (``eval``: running statistics,
as the paper's search; ``train``: the batch's own statistics, as in training; see
``spikegrad.fdg``):

(a) the FDG ``ĝ_n`` of batch ``n`` at ε = ``--epsilon`` × the weight RMS, and the cosine
    ``s[n, b] = cos(ĝ_n, g_n(b))`` with the Dspike gradient over the temperature grid
    ``--temperatures``: per ``b`` the mean, std and standard error over batches; the spread of
    the best ``b`` per batch and of one Algorithm-1 step from ``--b`` (candidates
    ``b - Δb, b, b + Δb``);
(b) the FDG's own convergence in ε, on the first ``--epsilon-batches`` batches and
    ``--epsilon-weights`` weights of the pool: ``cos(ĝ_ε, ĝ_ε/2)`` and
    ``|ĝ_ε - ĝ_ε/2| / |ĝ_ε|``, the batch-to-batch cosine of ``ĝ_ε``, and where the grid's best
    ``b`` lies at each ε;
(c) eval against train mode on the same batches: ``cos(ĝ_eval, ĝ_train)``, the cosine of the
    surrogate gradients of the two modes at ``--b``, and the FDG norms (how sensitive the
    loss is);
(d) how the noise shrinks: the batch-to-batch FDG cosine when ``m`` batches are averaged on
    each side, and the spread of one search step's decision for ``m`` batches and ``K``
    weights under the paper's rule (argmax of the mean cosine) and the significant rule
    (move only when a candidate's paired mean difference from ``b`` exceeds its standard
    error), both from ``spikegrad.temperature_search.decide``;
(e) the real search (``spikegrad.AdaptiveTemperature``) from ``--b``,
    ``--searches`` times with other seeds (so other probe batches and weights), with the
    paper's settings (``rule=paper``, ``bn_mode=eval``, ``probe_batches=1``, ``num_weights=64``)
    and with the ``dspike`` defaults (every neuron's surrogate set to Dspike for it).

The searches of (a) and (d) are resampled from the measured batches and weights (``--draws``
random draws, seeded): a search with ``K`` weights uses a random ``K``-subset of the pool on
each of its batches, as the trainer draws a fresh subset per batch.

Models: ``--models`` trains the built-in ones it names into ``OUT/models/NAME`` (kept, not
retrained, when the folder holds a finished run, ``last.pt`` and ``summary.json``; an unfinished
one is trained again from scratch; ``--set`` adds overrides to their recipes, e.g.
``--set data.name=animal_mnist``), ``--checkpoint NAME=PATH`` takes any trained spiking model.
The measurements are cached in ``OUT/NAME/measurements.pt`` (reused when the settings
match). Output: ``OUT/study.json``, ``OUT/study.md`` (the tables) and ``OUT/study.png``.

    OMP_NUM_THREADS=1 python -m experiments.dspike_search_study --out runs/dspike_search_study
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spikegrad import AdaptiveTemperature, Trainer, datasets_from_config, from_checkpoint, surrogates, train
from spikegrad.alignment import cosine_similarity, probe_batch, surrogate_gradients
from spikegrad.config import Config, DspikeConfig, load_config
from spikegrad.data import collate_for
from spikegrad.durable import atomic_write
from spikegrad.errors import UserError
from spikegrad.fdg import BN_MODES, finite_difference_gradient, resolve_layer, sample_weight_indices
from spikegrad.losses import training_loss
from spikegrad.neurons import SpikingNeuron
from spikegrad.recipes import recipe_path
from spikegrad.temperature_search import decide

#: built-in models: recipe and overrides (trained with ``spikegrad.train``)
MODELS: dict[str, tuple[str, list[str]]] = {
    # the Dspike ablation's fixed-b model: digits_cnn, T = 4, Dspike b = 3, 15 epochs
    "digits_cnn": ("digits", ["data.name=cluttered_digits", "train.epochs=15", "dspike.adaptive=false"]),
    # the depth experiment's plain 16-layer CNN (sigmoid surrogate, T = 2, 12 epochs)
    "plain16": ("cluttered_digits_plain_cnn_t2", []),
}

#: the real searches of (e): the paper's settings and the dspike defaults
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"rule": "paper", "bn_mode": "eval", "probe_batches": 1, "num_weights": 64},
    "default": {},
}


@dataclass
class Settings:
    batches: int = 20
    batch_size: int = 64
    pool: int = 64
    epsilon: float = 1.0
    epsilons: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0, 4.0])
    epsilon_batches: int = 3
    epsilon_weights: int = 32
    temperatures: list[float] = field(default_factory=lambda: [0.5 * j for j in range(1, 11)])
    b: float = 3.0
    delta: float = 0.5
    modes: list[str] = field(default_factory=lambda: list(BN_MODES))
    seed: int = 0
    max_stacked: int = 128

    def key(self) -> dict[str, Any]:
        """What the cached measurements depend on."""
        return asdict(self)


# ----------------------------------------------------------------------------- models


def trained_checkpoint(name: str, out: Path, extra: Sequence[str], threads: int) -> Path:
    """``OUT/models/NAME/last.pt``, trained with the built-in recipe unless it exists."""
    if name not in MODELS:
        raise UserError(f"unknown built-in model {name!r}; choose from {sorted(MODELS)} or pass "
                        "--checkpoint NAME=PATH")
    folder = out / "models" / name
    if (folder / "last.pt").exists() and (folder / "summary.json").exists():
        return folder / "last.pt"
    recipe, overrides = MODELS[name]
    config = load_config(recipe_path(recipe), [*overrides, f"train.threads={threads}",
                                               "train.progress=false", f"name=search-study-{name}", *extra])
    print(f"training {name} into {folder} ...", flush=True)
    train(config, folder, verbose=True, overwrite=True)  # a model stopped half-way starts over
    return folder / "last.pt"


@dataclass
class Subject:
    name: str
    checkpoint: str
    model: torch.nn.Module
    config: Config
    layer_name: str
    layer: torch.nn.Module
    neurons: list[SpikingNeuron]
    base: surrogates.Surrogate  # the Dspike surrogate whose temperature is varied
    dataset: Any


def load_subject(name: str, checkpoint: Path, device: torch.device) -> Subject:
    run = from_checkpoint(checkpoint)
    model, config = run.model, run.config
    if getattr(model, "kind", "snn") == "ann":
        raise UserError(f"{str(checkpoint)!r} holds an ANN; the study needs a spiking model")
    train_set, _, _ = datasets_from_config(config.data)
    model = model.to(device)
    layer_name, layer = resolve_layer(model)
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    own = [n.surrogate for n in neurons if isinstance(n.surrogate, surrogates.Dspike)]
    base = own[0] if own else surrogates.Dspike()
    return Subject(name, str(checkpoint), model, config, layer_name, layer, neurons, base, train_set)


# ----------------------------------------------------------------------------- measurement


def measure(subject: Subject, s: Settings, device: torch.device) -> dict[str, Any]:
    """FDGs and surrogate gradients on every probe batch (see the module docstring)."""
    model, layer = subject.model, subject.layer
    loss_fn = training_loss(subject.config.train)
    weight = layer.weight.detach()
    rms = float(weight.pow(2).mean().sqrt())
    pool = sample_weight_indices(weight.numel(), s.pool, torch.Generator().manual_seed(s.seed)).to(device)
    batches = [probe_batch(model, subject.dataset, s.batch_size, 1000 * s.seed + n, device,
                           collate_for(subject.dataset)) for n in range(s.batches)]
    assignments = [{n: subject.base.with_sharpness(b) for n in subject.neurons} for b in s.temperatures]
    if s.b not in s.temperatures:
        raise UserError(f"--b {s.b} must be one of --temperatures {s.temperatures}")
    sub = torch.randperm(len(pool), generator=torch.Generator().manual_seed(s.seed + 1))[:s.epsilon_weights]
    sub = sub.sort().values
    out: dict[str, Any] = {"pool": pool.cpu(), "epsilon_subset": sub, "rms": rms, "seconds": {}}
    for mode in s.modes:
        tic = time.perf_counter()
        fdg, grads = [], []
        for inputs, targets in batches:
            fdg.append(finite_difference_gradient(model, layer, inputs, targets, s.epsilon * rms, pool,
                                                  loss_fn, s.max_stacked, mode).cpu())
            grads.append(torch.stack(surrogate_gradients(model, layer, inputs, targets, assignments, pool,
                                                         loss_fn, mode)).cpu())
        eps_fdg = []  # [E, len(epsilons), Ke]
        for inputs, targets in batches[:s.epsilon_batches]:
            row = []
            for eps in s.epsilons:
                if eps == s.epsilon:
                    row.append(fdg[len(eps_fdg)][sub])
                else:
                    row.append(finite_difference_gradient(model, layer, inputs, targets, eps * rms, pool[sub],
                                                          loss_fn, s.max_stacked, mode).cpu())
            eps_fdg.append(torch.stack(row))
        out[mode] = {"fdg": torch.stack(fdg).double(), "grads": torch.stack(grads).double(),
                     "eps_fdg": torch.stack(eps_fdg).double() if eps_fdg else None}
        out["seconds"][mode] = time.perf_counter() - tic
        print(f"  {subject.name}, {mode} mode: {out['seconds'][mode]:.0f} s", flush=True)
    return out


def real_searches(subject: Subject, s: Settings, searches: int) -> dict[str, Any]:
    """(e): ``searches`` runs of the trainer's search from ``s.b`` per preset; chosen b and seconds."""
    model = subject.model
    originals = [n.surrogate for n in subject.neurons]
    out: dict[str, Any] = {}
    try:
        for n in subject.neurons:
            n.surrogate = subject.base.with_sharpness(s.b)  # the search needs Dspike neurons
        for preset, overrides in PRESETS.items():
            dspike = DspikeConfig(**{"adaptive": True, "b0": s.b, "delta": s.delta, **overrides})
            search = AdaptiveTemperature(dspike)
            trainer = Trainer(model, subject.dataset, subject.dataset, subject.config, components=[search],
                              verbose=False)
            chosen, seconds = [], []
            for seed in range(searches):
                search.seed = s.seed * 1_000 + seed
                search.temperatures["model"] = s.b
                search.groups[0].set(s.b)
                tic = time.process_time()
                search.search(trainer.context, epoch=1)
                seconds.append(time.process_time() - tic)
                chosen.append(search.temperatures["model"])
            out[preset] = {"settings": {k: getattr(dspike, k) for k in
                                        ("rule", "bn_mode", "probe_batches", "num_weights", "batch_size",
                                         "epsilon")},
                           "chosen": counts(chosen), "p_stay": chosen.count(s.b) / searches,
                           "cpu_seconds": statistics.fmean(seconds)}
            print(f"  {subject.name}, {searches} searches with the {preset} settings: "
                  f"{out[preset]['chosen']}", flush=True)
    finally:
        for n, own in zip(subject.neurons, originals, strict=True):
            n.surrogate = own
    return out


# ----------------------------------------------------------------------------- analysis


def mean_std_se(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n) if n > 1 else math.nan, "n": n,
            "min": min(values), "max": max(values)}


def cosines(fdg: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``s[n, b]`` on all pool weights, or on ``weights[n]`` (one index set per batch)."""
    rows = []
    for n in range(fdg.shape[0]):
        idx = slice(None) if weights is None else weights[n]
        rows.append([cosine_similarity(fdg[n, idx], grads[n, j, idx]) for j in range(grads.shape[1])])
    return torch.tensor(rows, dtype=torch.float64)


def counts(values: Sequence[float]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in sorted(values):
        out[f"{v:g}"] = out.get(f"{v:g}", 0) + 1
    return out


def search_draws(fdg: torch.Tensor, grads: torch.Tensor, temps: Sequence[float], s: Settings, m: int, k: int,
                 draws: int, rule: str, generator: torch.Generator) -> dict[str, Any]:
    """Decisions of ``draws`` simulated search steps from ``s.b`` with ``m`` batches and ``k`` weights."""
    candidates = [s.b - s.delta, s.b, s.b + s.delta]
    cols = [temps.index(c) for c in candidates]
    n, pool = fdg.shape[0], fdg.shape[1]
    chosen, moved_se = [], []
    for _ in range(draws):
        picked = torch.randperm(n, generator=generator)[:m]
        rows = []
        for i in picked.tolist():
            w = torch.randperm(pool, generator=generator)[:k]
            rows.append([cosine_similarity(fdg[i, w], grads[i, j, w]) for j in cols])
        decision = decide(rule, candidates, torch.tensor(rows, dtype=torch.float64), s.b)
        chosen.append(decision.chosen)
        moved_se.append(decision.se[0] if m > 1 else math.nan)
    stay = sum(c == s.b for c in chosen) / draws
    probs = [chosen.count(c) / draws for c in candidates]
    return {"m": m, "k": k, "rule": rule, "chosen": counts(chosen), "p_stay": stay,
            "p_agree": sum(p * p for p in probs),  # two independent searches choose the same b
            "se_of_difference": statistics.fmean(moved_se) if m > 1 else None}


def analyse_mode(meas: dict[str, Any], subset: torch.Tensor, s: Settings, draws: int, ks: Sequence[int],
                 ms: Sequence[int]) -> dict:
    fdg, grads = meas["fdg"], meas["grads"]
    temps = list(s.temperatures)
    n, pool = fdg.shape[0], fdg.shape[1]
    g = torch.Generator().manual_seed(s.seed + 7)
    result: dict[str, Any] = {"probed": pool}
    # (a) cosine per temperature on every probed weight of the pool
    full = cosines(fdg, grads)
    result["cosine_per_temperature"] = {f"{b:g}": mean_std_se(full[:, j].tolist())
                                        for j, b in enumerate(temps)}
    result["best_b_per_batch"] = counts([temps[int(i)] for i in full.argmax(1)])
    jb = temps.index(s.b)  # paired: what a batch adds to every temperature's cosine cancels
    result["difference_from_b"] = {f"{b:g}": mean_std_se((full[:, j] - full[:, jb]).tolist())
                                   for j, b in enumerate(temps)}
    result["span_per_batch"] = mean_std_se((full.max(1).values - full.min(1).values).tolist())
    result["best_b_of_mean"] = temps[int(full.mean(0).argmax())]
    result["nonzero_fdg_fraction"] = float((fdg != 0).double().mean())
    result["fdg_norm"] = mean_std_se(fdg.norm(dim=1).tolist())
    # (d) batch-to-batch FDG cosine with m batches averaged on each side (disjoint halves)
    b2b = {}
    for m in [m for m in ms if 2 * m <= n]:
        vals = []
        for _ in range(draws):
            perm = torch.randperm(n, generator=g)
            vals.append(cosine_similarity(fdg[perm[:m]].mean(0), fdg[perm[m:2 * m]].mean(0)))
        b2b[str(m)] = mean_std_se(vals)
    result["batch_to_batch_cosine"] = b2b
    j = temps.index(s.b)  # reference: the minibatch noise of the surrogate gradient itself
    result["surrogate_batch_to_batch_cosine"] = mean_std_se(
        [cosine_similarity(grads[i, j], grads[k, j]) for i, k in itertools.combinations(range(n), 2)])
    result["fdg_batch_to_batch_cosine_all_pairs"] = mean_std_se(
        [cosine_similarity(fdg[i], fdg[k]) for i, k in itertools.combinations(range(n), 2)])
    b2b_k = {}
    for k in ks:
        vals = []
        for _ in range(draws):
            i, j = torch.randperm(n, generator=g)[:2].tolist()
            w = torch.randperm(pool, generator=g)[:k]
            vals.append(cosine_similarity(fdg[i, w], fdg[j, w]))
        b2b_k[str(k)] = mean_std_se(vals)
    result["batch_to_batch_cosine_vs_k"] = b2b_k
    # (d) one search step's decision: rule × batches × weights
    searches = []
    for rule, m, k in itertools.product(("paper", "significant"), ms, ks):
        if m > n or (rule == "significant" and m < 2):
            continue
        searches.append(search_draws(fdg, grads, temps, s, m, min(k, pool), draws, rule, g))
    result["searches"] = searches
    # (b) ε: convergence against ε/2, batch-to-batch agreement, where the best b lies
    eps_fdg = meas["eps_fdg"]
    if eps_fdg is not None:
        grads_sub = grads[: eps_fdg.shape[0]][:, :, subset]
        rows = []
        for e, eps in enumerate(s.epsilons):
            row: dict[str, Any] = {"epsilon": eps,
                                   "nonzero_fraction": float((eps_fdg[:, e] != 0).double().mean()),
                                   "norm": statistics.fmean(eps_fdg[:, e].norm(dim=1).tolist())}
            if e > 0 and math.isclose(s.epsilons[e - 1], eps / 2):
                half = eps_fdg[:, e - 1]
                row["cos_with_half"] = statistics.fmean(
                    [cosine_similarity(eps_fdg[i, e], half[i]) for i in range(eps_fdg.shape[0])])
                row["rel_diff_with_half"] = statistics.fmean(
                    [float((eps_fdg[i, e] - half[i]).norm() / eps_fdg[i, e].norm().clamp_min(1e-300))
                     for i in range(eps_fdg.shape[0])])
                # the same on the FDG averaged over the batches (more samples)
                row["cos_with_half_averaged"] = cosine_similarity(eps_fdg[:, e].mean(0), half.mean(0))
            pairs = list(itertools.combinations(range(eps_fdg.shape[0]), 2))
            if pairs:
                row["batch_to_batch_cosine"] = statistics.fmean(
                    [cosine_similarity(eps_fdg[i, e], eps_fdg[j, e]) for i, j in pairs])
            c = cosines(eps_fdg[:, e], grads_sub)
            row["best_b_of_mean"] = temps[int(c.mean(0).argmax())]
            row["cosine_at_best"] = float(c.mean(0).max())
            row["cosine_at_b"] = float(c.mean(0)[temps.index(s.b)])
            row["best_b_per_batch"] = [temps[int(i)] for i in c.argmax(1)]
            rows.append(row)
        result["epsilon"] = rows
    return result


def analyse(meas: dict[str, Any], s: Settings, draws: int, ks: Sequence[int], ms: Sequence[int]) -> dict:
    out = {mode: analyse_mode(meas[mode], meas["epsilon_subset"], s, draws, ks, ms) for mode in s.modes}
    if {"eval", "train"} <= set(s.modes):  # (c)
        ev, tr = meas["eval"], meas["train"]
        j = list(s.temperatures).index(s.b)
        n = ev["fdg"].shape[0]
        out["modes"] = {
            "fdg_eval_vs_train": mean_std_se(
                [cosine_similarity(ev["fdg"][i], tr["fdg"][i]) for i in range(n)]),
            "surrogate_eval_vs_train": mean_std_se(
                [cosine_similarity(ev["grads"][i, j], tr["grads"][i, j]) for i in range(n)]),
            "fdg_norm_ratio_eval_over_train": mean_std_se(
                (ev["fdg"].norm(dim=1) / tr["fdg"].norm(dim=1).clamp_min(1e-300)).tolist()),
        }
    return out


# ----------------------------------------------------------------------------- report


def fmt(stat: dict[str, float], digits: int = 3, extremes: bool = False) -> str:
    text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} (SE {stat['se']:.{digits}f})"
    return text + (f" [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]" if extremes else "")


def markdown(study: dict[str, Any]) -> str:
    s = study["settings"]
    lines = ["# Dspike temperature search study\n",
             f"Layer: the first weight layer; ε = {s['epsilon']:g} × weight RMS unless stated; "
             f"{s['batches']} probe batches of {s['batch_size']} training samples; a pool of up to "
             f"{s['pool']} weights probed on every batch; searches from b = {s['b']:g} with candidates "
             f"b ± {s['delta']:g}; {study['draws']} resampled draws.\n"]
    for name, model in study["models"].items():
        lines.append(f"## {name}\n\n`{model['checkpoint']}`: {model['layer']} ({model['weights']} weights, "
                     f"{model['probed']} probed), data {model['data']}, test accuracy {model['test_acc']}, "
                     f"measured in {model['seconds']:.0f} s\n")
        res = model["results"]
        modes = [m for m in s["modes"] if m in res]
        lines.append("### (a) cosine with the FDG per temperature\n")
        lines.append("mean ± std over batches (SE) [min, max]\n")
        lines.append("| b | " + " | ".join(f"{m} mode | {m}: minus the cosine at b = {s['b']:g}, paired"
                                            for m in modes) + " |")
        lines.append("|---|" + "---|---|" * len(modes))
        for b in res[modes[0]]["cosine_per_temperature"]:
            cells = []
            for m in modes:
                cells += [fmt(res[m]["cosine_per_temperature"][b], extremes=True),
                          fmt(res[m]["difference_from_b"][b])]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
        for m in modes:
            r = res[m]
            lines.append(f"- {m} mode: best b per batch {r['best_b_per_batch']}; best b of the mean "
                         f"{r['best_b_of_mean']:g}; "
                         f"cosine span over the grid per batch {fmt(r['span_per_batch'])}; nonzero FDG "
                         f"entries {100 * r['nonzero_fdg_fraction']:.0f}%; |FDG| {fmt(r['fdg_norm'], 4)}")
        lines.append("")
        if "epsilon" in res[modes[0]]:
            lines.append("### (b) the FDG against its own convergence in ε\n")
            lines.append("| mode | ε × RMS | nonzero | cos(ĝ_ε, ĝ_ε/2) | same, batches averaged "
                         "| ‖ĝ_ε − ĝ_ε/2‖/‖ĝ_ε‖ | batch-to-batch cos | best b (mean) | cos at best "
                         "| cos at b | best b per batch |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for m in modes:
                for row in res[m]["epsilon"]:
                    half = f"{row['cos_with_half']:.3f}" if "cos_with_half" in row else "–"
                    pooled = f"{row['cos_with_half_averaged']:.3f}" if "cos_with_half" in row else "–"
                    rel = f"{row['rel_diff_with_half']:.3f}" if "rel_diff_with_half" in row else "–"
                    b2b = f"{row['batch_to_batch_cosine']:.3f}" if "batch_to_batch_cosine" in row else "–"
                    per = ", ".join(f"{b:g}" for b in row["best_b_per_batch"])
                    lines.append(f"| {m} | {row['epsilon']:g} | {100 * row['nonzero_fraction']:.0f}% | "
                                 f"{half} | {pooled} | {rel} | {b2b} | {row['best_b_of_mean']:g} | "
                                 f"{row['cosine_at_best']:.3f} | {row['cosine_at_b']:.3f} | {per} |")
            lines.append("")
        if "modes" in res:
            c = res["modes"]
            lines.append("### (c) batch norm: eval against train mode, same batches\n")
            lines.append(f"- cos(FDG eval, FDG train): {fmt(c['fdg_eval_vs_train'])}")
            lines.append(f"- cos(surrogate eval, surrogate train) at b = {s['b']:g}: "
                         f"{fmt(c['surrogate_eval_vs_train'])}")
            lines.append(f"- |FDG eval| / |FDG train|: {fmt(c['fdg_norm_ratio_eval_over_train'], 2)}\n")
        lines.append("### (d) noise against batches averaged (m) and weights (K)\n")
        for m in modes:
            lines.append(f"- {m} mode, batch-to-batch cosine over all pairs of batches: FDG "
                         f"{fmt(res[m]['fdg_batch_to_batch_cosine_all_pairs'], extremes=True)}; the "
                         f"surrogate gradient at b = {s['b']:g} (the minibatch noise BPTT itself sees) "
                         f"{fmt(res[m]['surrogate_batch_to_batch_cosine'], extremes=True)}")
        lines.append("")
        lines.append("| mode | m | batch-to-batch FDG cos (m vs m other batches) |")
        lines.append("|---|---|---|")
        for m in modes:
            for k, v in res[m]["batch_to_batch_cosine"].items():
                lines.append(f"| {m} | {k} | {fmt(v)} |")
        lines.append("")
        lines.append("| mode | K | batch-to-batch FDG cos (one batch each) |")
        lines.append("|---|---|---|")
        for m in modes:
            for k, v in res[m]["batch_to_batch_cosine_vs_k"].items():
                lines.append(f"| {m} | {k} | {fmt(v)} |")
        lines.append("")
        if model.get("searches"):
            lines.append(f"### (e) the trainer's search from b = {s['b']:g}, {study['searches']} seeds per "
                         "setting\n")
            lines.append("| settings | rule | bn_mode | probe batches | K | B | chosen | P(stay) "
                         "| CPU s / search |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for preset, row in model["searches"].items():
                c = row["settings"]
                chosen = ", ".join(f"{b}: {n}" for b, n in row["chosen"].items())
                lines.append(f"| {preset} | {c['rule']} | {c['bn_mode']} | {c['probe_batches']} | "
                             f"{c['num_weights']} | {c['batch_size']} | {chosen} | {row['p_stay']:.2f} | "
                             f"{row['cpu_seconds']:.1f} |")
            lines.append("")
        lines.append(f"One search step from b = {s['b']:g} (candidates {s['b'] - s['delta']:g}, {s['b']:g}, "
                     f"{s['b'] + s['delta']:g}): how often each b is chosen, P(stay), P(two searches agree), "
                     "mean SE of the paired difference")
        lines.append("")
        lines.append("| mode | rule | m | K | chosen | P(stay) | P(agree) | SE of difference |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for m in modes:
            for row in res[m]["searches"]:
                se = f"{row['se_of_difference']:.4f}" if row["se_of_difference"] is not None else "–"
                chosen = ", ".join(f"{b}: {c}" for b, c in row["chosen"].items())
                lines.append(f"| {m} | {row['rule']} | {row['m']} | {row['k']} | {chosen} | "
                             f"{row['p_stay']:.2f} | {row['p_agree']:.2f} | {se} |")
        lines.append("")
    return "\n".join(lines)


def plot(study: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(study["models"])
    fig, axes = plt.subplots(len(names), 3, figsize=(14, 3.6 * len(names)), squeeze=False,
                             constrained_layout=True)
    colours = {"eval": "tab:orange", "train": "tab:blue"}
    for row, name in zip(axes, names, strict=True):
        res = study["models"][name]["results"]
        modes = [m for m in study["settings"]["modes"] if m in res]
        ax = row[0]
        b0 = study["settings"]["b"]
        twin = ax.twinx()
        for m in modes:
            per, diff = res[m]["cosine_per_temperature"], res[m]["difference_from_b"]
            bs = [float(b) for b in per]
            ax.plot(bs, [per[b]["mean"] for b in per], marker="o", color=colours.get(m),
                    label=f"{m}: mean cosine")
            twin.errorbar(bs, [diff[b]["mean"] for b in diff], yerr=[diff[b]["se"] for b in diff],
                          linestyle="--", marker=".", color=colours.get(m), capsize=3,
                          label=f"{m}: minus b = {b0:g}, paired ± SE")
        twin.set_ylabel(f"cos(b) − cos({b0:g}), paired (dashed)")
        twin.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("Dspike temperature b")
        ax.set_ylabel("mean cos(FDG, Dspike gradient)")
        ax.set_title(f"{name}: (a) cosine per b over the batches")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7)
        ax.legend(fontsize=8)
        ax = row[1]
        for m in modes:
            if "epsilon" not in res[m]:
                continue
            eps = [r["epsilon"] for r in res[m]["epsilon"]]
            half = [r.get("cos_with_half", math.nan) for r in res[m]["epsilon"]]
            b2b = [r.get("batch_to_batch_cosine", math.nan) for r in res[m]["epsilon"]]
            ax.plot(eps, half, marker="o", color=colours.get(m), label=f"{m}: cos(ĝ_ε, ĝ_ε/2)")
            ax.plot(eps, b2b, marker="s", linestyle="--", color=colours.get(m), label=f"{m}: batch-to-batch")
        ax.set_xscale("log")
        eps_ticks = study["settings"]["epsilons"]
        ax.set_xticks(eps_ticks, [f"{e:g}" for e in eps_ticks])
        ax.minorticks_off()
        ax.set_xlabel("ε (× weight RMS)")
        ax.set_ylabel("cosine")
        ax.set_title("(b) FDG convergence and noise in ε")
        ax.legend(fontsize=8)
        ax = row[2]
        for m in modes:
            b2b = res[m]["batch_to_batch_cosine"]
            ax.plot([int(k) for k in b2b], [v["mean"] for v in b2b.values()], marker="o",
                    color=colours.get(m), label=f"{m}: FDG batch-to-batch")
            k_all = max(int(r["k"]) for r in res[m]["searches"])
            sig = [r for r in res[m]["searches"] if r["rule"] == "significant" and r["k"] == k_all]
            pap = [r for r in res[m]["searches"] if r["rule"] == "paper" and r["k"] == k_all]
            ax.plot([r["m"] for r in pap], [r["p_agree"] for r in pap], marker="^", linestyle=":",
                    color=colours.get(m), label=f"{m}: P(agree), paper rule, K = {k_all}")
            ax.plot([r["m"] for r in sig], [r["p_agree"] for r in sig], marker="v", linestyle="-.",
                    color=colours.get(m), label=f"{m}: P(agree), significant, K = {k_all}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(study["ms"], [str(m) for m in study["ms"]])
        ax.minorticks_off()
        ax.set_xlabel("probe batches averaged, m")
        ax.set_title("(d) noise against batches")
        ax.legend(fontsize=7)
        for ax in row:
            ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def run_study(subjects: Sequence[tuple[str, Path]], out: Path, s: Settings, draws: int, ks: Sequence[int],
              ms: Sequence[int], device: torch.device, searches: int = 0) -> dict[str, Any]:
    study: dict[str, Any] = {"settings": s.key(), "draws": draws, "ks": list(ks), "ms": list(ms),
                             "searches": searches,
                             "threads": torch.get_num_threads(), "torch": torch.__version__, "models": {}}
    for name, checkpoint in subjects:
        subject = load_subject(name, checkpoint, device)
        cache = out / name / "measurements.pt"
        meas = None
        if cache.exists():
            stored = torch.load(cache, weights_only=True)
            if stored.get("settings") == json.dumps(s.key()) and stored.get("checkpoint") == str(checkpoint):
                meas = stored["measurements"]
                print(f"{name}: reusing {cache}", flush=True)
        if meas is None:
            print(f"{name}: measuring ({subject.layer_name}) ...", flush=True)
            meas = measure(subject, s, device)
            cache.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()  # written whole or not at all: a stop mid-save keeps no torn cache
            torch.save({"settings": json.dumps(s.key()), "checkpoint": str(checkpoint), "measurements": meas},
                       buffer)
            atomic_write(cache, buffer.getvalue())
        real = None
        if searches:
            cache_e = out / name / "searches.json"
            key = json.dumps({"settings": s.key(), "searches": searches, "checkpoint": str(checkpoint),
                              "presets": PRESETS, "defaults": asdict(DspikeConfig())})
            if cache_e.exists() and json.loads(cache_e.read_text()).get("key") == key:
                real = json.loads(cache_e.read_text())["searches"]
            else:
                print(f"{name}: {searches} real searches per preset ...", flush=True)
                real = real_searches(subject, s, searches)
                atomic_write(cache_e, json.dumps({"key": key, "searches": real}, indent=1) + "\n")
        summary = json.loads((Path(checkpoint).parent / "summary.json").read_text()) \
            if (Path(checkpoint).parent / "summary.json").exists() else {}
        test_acc = summary.get("final_test_acc", summary.get("test_acc"))
        study["models"][name] = {
            "checkpoint": str(checkpoint), "layer": subject.layer_name,
            "weights": subject.layer.weight.numel(),
            "probed": len(meas["pool"]), "data": subject.config.data.name,
            "test_acc": f"{100 * test_acc:.1f}%" if isinstance(test_acc, (int, float)) else "n/a",
            "seconds": sum(meas["seconds"].values()), "measure_seconds": meas["seconds"],
            "results": analyse(meas, s, draws, ks, ms), "searches": real,
        }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "study.json", json.dumps(study, indent=1) + "\n")
    atomic_write(out / "study.md", markdown(study) + "\n")
    plot(study, out / "study.png")
    return study


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/dspike_search_study")
    parser.add_argument("--models", nargs="*", default=None,
                        help=f"built-in models to train and study (default: all of {sorted(MODELS)}, "
                             "none with --checkpoint)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a trained spiking model to study (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for training the built-in models, e.g. data.name=animal_mnist")
    d = Settings()
    parser.add_argument("--batches", type=int, default=d.batches)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--pool", type=int, default=d.pool, help="weights probed on every batch")
    parser.add_argument("--epsilon", type=float, default=d.epsilon, help="× the weight RMS")
    parser.add_argument("--epsilons", type=float, nargs="+", default=d.epsilons)
    parser.add_argument("--epsilon-batches", type=int, default=d.epsilon_batches)
    parser.add_argument("--epsilon-weights", type=int, default=d.epsilon_weights)
    parser.add_argument("--temperatures", type=float, nargs="+", default=d.temperatures)
    parser.add_argument("--b", type=float, default=d.b, help="current temperature of the simulated search")
    parser.add_argument("--delta", type=float, default=d.delta)
    parser.add_argument("--modes", nargs="+", default=d.modes, choices=BN_MODES)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--max-stacked", type=int, default=d.max_stacked)
    parser.add_argument("--draws", type=int, default=400, help="resampled searches per setting")
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64], help="K of simulated searches")
    parser.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="batches of simulated searches")
    parser.add_argument("--searches", type=int, default=10,
                        help="real searches per preset and model for (e) (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = Settings(args.batches, args.batch_size, args.pool, args.epsilon, list(args.epsilons),
                        args.epsilon_batches, args.epsilon_weights, list(args.temperatures), args.b,
                        args.delta, list(args.modes), args.seed, args.max_stacked)
    if args.epsilon not in settings.epsilons:
        raise UserError(f"--epsilon {args.epsilon} must be one of --epsilons {settings.epsilons}")
    subjects = []
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--checkpoint takes NAME=PATH, got {item!r}")
        subjects.append((name, Path(path)))
    models = args.models if args.models is not None else ([] if args.checkpoint else list(MODELS))
    subjects += [(name, trained_checkpoint(name, out, args.set, args.threads)) for name in models]
    if not subjects:
        raise UserError("nothing to study: name --models or give --checkpoint NAME=PATH")
    study = run_study(subjects, out, settings, args.draws, args.ks, args.ms, torch.device(args.device),
                      args.searches)
    print(markdown(study))
    print(f"\nwrote {out / 'study.json'}, {out / 'study.md'} and {out / 'study.png'}")
    return study


if __name__ == "__main__":
    main()
