"""Synthetic run folders holding every metric the report knows (the methods' names included)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

LAYERS = ["features.stem", "features.layer1_0", "features.layer2_0", "features.layer3_0"]


def write_run(folder: Path, method: str, epochs: int = 6, seed: int = 0, *, dspike: bool = True,
              shortcut: bool = True, ltl: bool = True, gradients: bool = True,
              analysis: bool = True, membrane: bool = True) -> Path:
    """A run folder whose files follow the formats `spikegrad train` and the methods write."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    neurons = [f"{layer}.act" for layer in LAYERS]
    rows = []
    temperature = 3.0
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch, "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs)),
            "train_loss": 2.0 / epoch + 0.05 * rng.random(), "train_acc": 1 - 0.8 / epoch,
            "test_loss": 2.2 / epoch + 0.1, "test_acc": 1 - 0.85 / epoch - 0.02,
            "seconds": 1.0, "firing_rate": 0.15 + 0.01 * epoch,
            "firing_rates": {n: 0.1 + 0.02 * i + 0.005 * epoch for i, n in enumerate(neurons)},
            "sops": 1e5 * (1 + 0.1 * epoch), "energy_uj": 0.1 + 0.01 * epoch,
        }
        if dspike:
            candidates = [temperature - 0.5, temperature, temperature + 0.5]
            sims = {f"{b:g}": float(0.3 + 0.5 * rng.random()) for b in candidates}
            temperature = float(max(sims, key=sims.get))
            row.update(dspike_temperature=temperature, dspike_similarity=sims,
                       dspike_temperatures={n: temperature + 0.1 * i for i, n in enumerate(neurons)})
        if shortcut:
            row["shortcut_lambda"] = 0.25 * (1 - (epoch - 1) / epochs)
            row["combined_test_acc"] = min(1.0, row["test_acc"] + 0.05)
            row["branch_test_acc"] = {f"{layer}.act": 0.5 + 0.05 * i for i, layer in enumerate(LAYERS[:2])}
        if ltl:
            row["ltl_layer_losses"] = {layer: 0.5 / epoch * (i + 1) for i, layer in enumerate(LAYERS)}
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({
        "method": method, "name": folder.name, "best_test_acc": rows[-1]["test_acc"],
        "final_test_acc": rows[-1]["test_acc"], "epochs": epochs, "wall_seconds": 7.0,
        "train_seconds": 6.0, "params": 1000, "firing_rate": rows[-1]["firing_rate"], "T": 4}))
    (folder / "config.yaml").write_text("data: {name: cifar10}\nmodel: {name: resnet18}\n")
    if gradients:
        records = []
        for epoch in range(1, epochs + 1):
            for it in range(3):
                grads = rng.normal(0, 0.01 / epoch, 500)
                counts, edges = np.histogram(grads, bins=30)
                records.append({"epoch": epoch, "iteration": (epoch - 1) * 3 + it,
                                "norms": {f"{layer}.conv": float(10 ** (-i) / epoch)
                                          for i, layer in enumerate(LAYERS)},
                                "first_layer_hist": {"edges": edges.tolist(),
                                                     "counts": counts.tolist()}})
        (folder / "gradients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if analysis:
        neuron_stats = {}
        for i, n in enumerate(neurons):
            stats = {"neurons": 256, "rate": 0.1 + 0.02 * i,
                     "rate_per_step": [0.08 + 0.02 * i + 0.01 * t for t in range(4)],
                     "dead_fraction": 0.05 * i, "saturated_fraction": 0.01 * i}
            if membrane:
                stats["membrane"] = {"mean": 0.1 * i, "std": 0.3, "min": -1.0, "max": 2.0}
            neuron_stats[n] = stats
        synapses = {}
        for i, layer in enumerate(LAYERS):
            analog = i == 0
            ann = 1e5 * (i + 1)
            sops = 0.0 if analog else ann * 0.4
            macs = ann * 4 if analog else 0.0
            synapses[f"{layer}.conv"] = {
                "type": "Conv2d", "input": "analog" if analog else "spikes", "sops": sops,
                "macs": macs, "ann_macs": ann, "energy_uj": (0.9 * sops + 4.6 * macs) * 1e-6,
                "ann_energy_uj": 4.6 * ann * 1e-6}
        energy = sum(v["energy_uj"] for v in synapses.values())
        ann_energy = sum(v["ann_energy_uj"] for v in synapses.values())
        (folder / "analysis.json").write_text(json.dumps({
            "epoch": epochs, "samples": 100, "pj_per_ac": 0.9, "pj_per_mac": 4.6,
            "firing_rate": 0.2, "neurons": neuron_stats, "synapses": synapses,
            "totals": {"sops": sum(v["sops"] for v in synapses.values()),
                       "macs": sum(v["macs"] for v in synapses.values()),
                       "ann_macs": sum(v["ann_macs"] for v in synapses.values()),
                       "energy_uj": energy, "ann_energy_uj": ann_energy,
                       "energy_ratio": energy / ann_energy}}))
    return folder
