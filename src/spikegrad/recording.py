"""Spike rasters and membrane traces: what chosen neuron layers do on a few samples.

:class:`Recorder` watches named :class:`~spikegrad.neurons.SpikingNeuron` layers during a
forward pass and keeps, for the first ``samples`` samples it sees, every neuron's spikes
``s[t, b, i]`` (0/1) and pre-reset membrane potential ``h[t, b, i]`` (the potential compared
with the threshold: ``s = [h >= θ]``, see :mod:`spikegrad.dynamics`), flattened to
``[T, B, N]`` with ``N`` neurons per sample. :func:`record` runs a model on the first
samples of a dataset under a recorder; :func:`save_recording` / :func:`load_recording` store
a :class:`Recording` as ``recording.npz`` (plain arrays plus a JSON header, loaded without
pickle); :func:`plot_raster` and :func:`plot_membrane` draw it (``spikegrad eval CHECKPOINT
--raster LAYER[,LAYER]`` writes all three, by default into the checkpoint's run folder,
where ``spikegrad report`` shows them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from spikegrad.errors import UserError, unknown_name_error
from spikegrad.neurons import SpikingNeuron

__all__ = ["RECORDING_FILE", "LayerRecording", "Recorder", "Recording", "load_recording",
           "membrane_figure", "plot_membrane", "plot_raster", "raster_figure", "record",
           "record_and_plot", "save_recording", "trace_neurons"]

RECORDING_FILE = "recording.npz"


@dataclass
class LayerRecording:
    """One layer: ``spikes`` and ``membrane`` ``[T, B, N]`` (uint8 and float32, on the CPU)."""

    name: str
    threshold: float
    shape: tuple[int, ...]  # one sample's neuron shape, e.g. (C, H, W); N = prod(shape)
    spikes: Tensor
    membrane: Tensor


@dataclass
class Recording:
    """Layers in model order, plus the samples' dataset indices, labels and predictions."""

    layers: list[LayerRecording]
    indices: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    source: str = ""


def neuron_layers(model: nn.Module) -> dict[str, SpikingNeuron]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, SpikingNeuron]:
    """The named neuron layers (``["all"]``: every one), in model order; a bad name is an error."""
    layers = neuron_layers(model)
    if not layers:
        raise UserError("the model has no spiking neuron layers to record (an ANN twin?)")
    if list(names) == ["all"]:
        return layers
    for name in names:
        if name not in layers:
            raise unknown_name_error("neuron layer", name, list(layers))
    return {name: m for name, m in layers.items() if name in names}


class Recorder:
    """Keep spikes and pre-reset potentials of ``layers`` for the first ``samples`` samples.

    A context manager: a forward hook takes each call's spikes, the neuron's
    ``membrane_hook`` its potentials (an existing hook, such as an
    :class:`~spikegrad.monitors.ActivityMonitor`'s, is still called). Calls after the first
    ``samples`` samples are ignored. Outputs must be time-major ``[T, B, ...]``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], samples: int = 4) -> None:
        if samples < 1:
            raise UserError(f"the number of recorded samples must be >= 1, got {samples}")
        self.layers = resolve_layers(model, layers)
        self.samples = samples
        self._spikes: dict[str, list[Tensor]] = {n: [] for n in self.layers}
        self._membrane: dict[str, list[Tensor]] = {n: [] for n in self.layers}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._handles: list = []
        self._previous: dict[str, Callable | None] = {}

    def _kept(self, store: dict[str, list[Tensor]], name: str) -> int:
        return sum(t.shape[1] for t in store[name])

    def _take(self, store: dict[str, list[Tensor]], name: str, x: Tensor) -> None:
        room = self.samples - self._kept(store, name)
        if room > 0:
            store[name].append(x[:, :room].detach().flatten(2).cpu())  # (T, b, N)

    def __enter__(self) -> Recorder:
        for name, module in self.layers.items():
            def spikes_hook(_m, _inputs, output, name=name):
                self._shapes.setdefault(name, tuple(output.shape[2:]))
                self._take(self._spikes, name, output.to(torch.uint8))

            def membrane_hook(h, name=name, previous=module.membrane_hook):
                self._take(self._membrane, name, h.float())
                if previous is not None:
                    previous(h)

            self._previous[name] = module.membrane_hook
            module.membrane_hook = membrane_hook
            self._handles.append(module.register_forward_hook(spikes_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, module in self.layers.items():
            module.membrane_hook = self._previous.get(name)

    def layer_recordings(self) -> list[LayerRecording]:
        """What was recorded, one entry per layer that ran."""
        out = []
        for name, module in self.layers.items():
            if not self._spikes[name]:
                continue
            spikes = torch.cat(self._spikes[name], 1)
            membrane = torch.cat(self._membrane[name], 1)
            out.append(LayerRecording(name, float(module.threshold), self._shapes[name], spikes,
                                      membrane))
        return out


def record(
    model: nn.Module, dataset: Dataset, layers: Sequence[str], samples: int = 4,
    device: torch.device | str = "cpu", collate: Callable[[list], Any] = default_collate,
    seed: int = 0,
) -> Recording:
    """Run ``model`` (eval mode) on the first ``samples`` samples of ``dataset`` and record.

    A stochastic encoder (Poisson) draws under ``seed``; the global random state is left
    as it was.
    """
    if len(dataset) == 0:
        raise UserError("cannot record on an empty dataset")
    if samples < 1:
        raise UserError(f"the number of recorded samples must be >= 1, got {samples}")
    count = min(samples, len(dataset))
    inputs, targets = collate([dataset[i] for i in range(count)])
    device = torch.device(device)
    recorder = Recorder(model, layers, count)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                recorder:
            torch.manual_seed(seed)
            outputs = model(inputs.to(device))
    finally:
        model.train(was_training)
    recorded = recorder.layer_recordings()
    predictions = outputs.float().mean(0).argmax(-1).tolist() if outputs.dim() == 3 else []
    return Recording(recorded, list(range(count)), [int(t) for t in targets.tolist()], predictions)


def save_recording(recording: Recording, path: str | Path) -> Path:
    """``path`` (``.npz``): arrays ``spikes_<k>``, ``membrane_<k>`` and a JSON ``header``."""
    path = Path(path)
    header = {"layers": [{"name": r.name, "threshold": r.threshold, "shape": list(r.shape)}
                         for r in recording.layers],
              "indices": recording.indices, "labels": recording.labels,
              "predictions": recording.predictions, "source": recording.source}
    arrays = {"header": np.array(json.dumps(header))}
    for k, layer in enumerate(recording.layers):
        arrays[f"spikes_{k}"] = layer.spikes.numpy().astype(np.uint8)
        arrays[f"membrane_{k}"] = layer.membrane.numpy().astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
    except OSError as exc:
        raise UserError(f"cannot write the recording to {str(path)!r}: {exc}") from exc
    return path


def load_recording(path: str | Path) -> Recording:
    """Read what :func:`save_recording` wrote (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            layers = [LayerRecording(meta["name"], float(meta["threshold"]), tuple(meta["shape"]),
                                     torch.from_numpy(data[f"spikes_{k}"].copy()),
                                     torch.from_numpy(data[f"membrane_{k}"].copy()))
                      for k, meta in enumerate(header["layers"])]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{str(path)!r} is not a spikegrad recording ({exc})") from exc
    return Recording(layers, header.get("indices", []), header.get("labels", []),
                     header.get("predictions", []), header.get("source", ""))


# --------------------------------------------------------------------------- drawing


def _sample_title(recording: Recording, b: int) -> str:
    text = f"sample {recording.indices[b] if b < len(recording.indices) else b}"
    if b < len(recording.labels):
        text += f", label {recording.labels[b]}"
    if b < len(recording.predictions):
        text += f", predicted {recording.predictions[b]}"
    return text


def raster_neurons(n: int, limit: int = 128) -> tuple[list[int], int]:
    """Neurons drawn in a raster of a layer of ``n``: every ``k``-th, at most ``limit``; and ``k``."""
    stride = max(1, -(-n // limit))
    return list(range(0, n, stride)), stride


def trace_neurons(layer: LayerRecording, sample: int, firing: int = 3, silent: int = 2) -> list[int]:
    """Neurons whose traces are drawn for one sample: ``firing`` neurons that spike, those
    whose spike count is closest to half the steps first (they show both a crossing and a
    miss; ties: lower index), then the ``silent`` non-spiking ones whose potential comes
    closest to the threshold."""
    T = layer.spikes.shape[0]
    counts = layer.spikes[:, sample].sum(0)  # (N,)
    peak = layer.membrane[:, sample].max(0).values  # (N,)
    spiking = sorted((i for i in range(counts.numel()) if counts[i] > 0),
                     key=lambda i: (abs(2 * int(counts[i]) - T), i))
    quiet = sorted((i for i in range(counts.numel()) if counts[i] == 0), key=lambda i: (-float(peak[i]), i))
    return spiking[:firing] + quiet[:silent]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def raster_figure(recording: Recording, samples: int = 4):
    """Rows: layers; columns: samples; a black mark for each spike of a neuron at a step."""
    layers = recording.layers
    count = min(samples, layers[0].spikes.shape[1]) if layers else 0
    if not count:
        raise UserError("the recording holds no samples")
    fig = _figure(2.6 * count + 1.0, 2.2 * len(layers) + 0.6)
    for row, layer in enumerate(layers):
        T, _, n = layer.spikes.shape
        chosen, stride = raster_neurons(n)
        for b in range(count):
            ax = fig.add_subplot(len(layers), count, row * count + b + 1)
            t, i = np.nonzero(layer.spikes[:, b, chosen].numpy())
            ax.scatter(t + 1, i, marker="|", s=30, color="black", linewidths=1.2)
            ax.set_xlim(0.5, T + 0.5)
            ax.set_ylim(-0.5, len(chosen) - 0.5)
            ax.set_xticks(range(1, T + 1) if T <= 16 else ax.get_xticks())
            rate = float(layer.spikes[:, b].float().mean())
            if row == 0:
                ax.set_title(_sample_title(recording, b), fontsize=8)
            if b == 0:
                every = f" (every {stride}th)" if stride > 1 else ""
                ax.set_ylabel(f"{layer.name}\nneuron{every}", fontsize=8)
            ax.text(0.99, 0.99, f"rate {rate:.3f}", transform=ax.transAxes, ha="right", va="top",
                    fontsize=7, color="tab:red", bbox={"fc": "white", "ec": "none", "alpha": 0.8})
            if row == len(layers) - 1:
                ax.set_xlabel("time step t", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Spike raster: a mark per spike (rate: spikes per neuron per step)", fontsize=9)
    return fig


def membrane_figure(recording: Recording, sample: int = 0):
    """One panel per layer: ``h_t`` of :func:`trace_neurons` for one sample, the threshold
    dashed, a dot where the neuron spiked (``h_t >= θ``; the potential then resets)."""
    layers = recording.layers
    if not layers:
        raise UserError("the recording holds no layers")
    fig = _figure(min(4.0 * len(layers), 12.0) + 0.5, 3.3 * -(-len(layers) // 3))
    cols = min(3, len(layers))
    for k, layer in enumerate(layers):
        ax = fig.add_subplot(-(-len(layers) // cols), cols, k + 1)
        T = layer.spikes.shape[0]
        ts = np.arange(1, T + 1)
        for i in trace_neurons(layer, sample):
            h = layer.membrane[:, sample, i].numpy()
            s = layer.spikes[:, sample, i].numpy().astype(bool)
            (line,) = ax.plot(ts, h, marker=".", lw=1, label=f"neuron {i} ({int(s.sum())} spikes)")
            ax.plot(ts[s], h[s], "o", color=line.get_color(), markersize=7, mfc="none")
        ax.axhline(layer.threshold, color="black", ls="--", lw=1, label=f"threshold {layer.threshold:g}")
        ax.set(xlabel="time step t", ylabel="pre-reset potential h", title=layer.name)
        ax.set_xticks(ts if T <= 16 else ax.get_xticks())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"Membrane traces, {_sample_title(recording, sample)} (circles: spikes)", fontsize=9)
    return fig


def plot_raster(recording: Recording, path: str | Path, samples: int = 4) -> Path:
    path = Path(path)
    raster_figure(recording, samples).savefig(path)
    return path


def plot_membrane(recording: Recording, path: str | Path, sample: int = 0) -> Path:
    path = Path(path)
    membrane_figure(recording, sample).savefig(path)
    return path


def record_and_plot(
    model: nn.Module, dataset: Dataset, layers: Sequence[str], samples: int, out: str | Path,
    device: torch.device | str = "cpu", collate: Callable[[list], Any] = default_collate,
    source: str = "",
) -> list[Path]:
    """Record, then write ``recording.npz``, ``raster.png`` and ``membrane.png`` into ``out``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UserError("--raster draws with matplotlib, which is not installed; install it with "
                        "pip install matplotlib (a dependency of spikegrad)") from exc
    recording = record(model, dataset, layers, samples, device, collate)
    recording.source = source
    out = Path(out)
    return [save_recording(recording, out / RECORDING_FILE),
            plot_raster(recording, out / "raster.png", samples),
            plot_membrane(recording, out / "membrane.png")]
