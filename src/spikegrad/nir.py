"""Export to and import from NIR, the Neuromorphic Intermediate Representation (nir 1.0).

NIR describes a network as a graph of continuous-time nodes; a simulator integrates it with
a time step ``dt``. spikegrad's neurons are discrete (:mod:`spikegrad.dynamics`)::

    h_t = λ·u_{t-1} + s·I_t,   spike when h_t >= θ,   u_t = v_reset after a spike (hard reset)

NIR's LIF is ``τ·dv/dt = (v_leak - v) + r·I`` and its IF ``dv/dt = r·I``. One forward-Euler
step of length ``dt`` gives ``v ← (1 - dt/τ)·v + (dt·r/τ)·I`` (LIF) and ``v ← v + dt·r·I``
(IF), so the export writes, with ``v_leak = 0``, ``v_threshold = θ``, ``v_reset = v_reset``:

    LIF (λ < 1):  τ = dt / (1 - λ),   r = s / (1 - λ)
    IF  (λ = 1):  r = s / dt

and the import inverts it: ``λ = 1 - dt/τ``, ``s = r·dt/τ`` (LIF), ``s = r·dt`` (IF).
``dt`` is written into the graph's metadata (default ``1e-4`` s, the step snnTorch's
importer assumes) with the number of time steps and the encoding.

With ``fold_gain=True`` (default) each neuron's ``r`` is moved into the weights that feed
it (convolution and linear weights and biases, through pooling and flatten), so every
neuron has ``r = 1``: the graph computes the same function, and importers that ignore ``r``
(Norse) still run it exactly. Where the input of a neuron comes straight from another
neuron (an identity shortcut) a ``Scale`` node carries the factor instead.

Batch norm (in eval mode) is folded into the convolution or linear layer before it:
``W' = W·γ/√(σ² + ε)``, ``b' = (b - μ)·γ/√(σ² + ε) + β``. Average pooling is written as
``AvgPool2d`` (``pooling="avg"``) or as ``SumPool2d`` with the ``1/k`` folded into the
neighbouring weights (``pooling="sum"``, for importers without average pooling, such as
Norse's).

Limits (documented in ``docs/analysis.md``): soft reset, max pooling and the ANN twin's
clipped ReLU have no NIR equivalent and are refused with the module named; NIR fires at
``v > θ`` where spikegrad fires at ``v >= θ`` (they differ only on exact ties).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from spikegrad import __version__
from spikegrad.encoders import DeltaEncoder, LatencyEncoder
from spikegrad.errors import UserError, first_line
from spikegrad.layers import DirectEncoder, PoissonEncoder, TimeDistributed
from spikegrad.models.common import SpikingNetwork
from spikegrad.models.resnet import BasicBlock
from spikegrad.modes import eval_mode
from spikegrad.neurons import IF, LIF, ClippedReLU, SpikingNeuron

__all__ = ["DEFAULT_DT", "NIRNetwork", "export_nir", "import_nir", "neuron_gain", "register_exporter",
           "write_nir"]

#: default integration step written into exported graphs, seconds (snnTorch's importer assumes it)
DEFAULT_DT = 1e-4


def _nir():
    try:
        import nir
    except ImportError as exc:
        raise UserError("NIR export and import need the nir package; install it with "
                        "pip install 'spikegrad[nir]'") from exc
    return nir


# --------------------------------------------------------------------------- export


@dataclass
class _Graph:
    """NIR nodes and edges under construction, with each node's output shape (no batch)."""

    nodes: dict[str, Any] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)  # neuron -> r before folding

    def add(self, name: str, node: Any, sources: list[str], shape: tuple[int, ...]) -> list[str]:
        base, index = name, 1
        while name in self.nodes:
            index += 1
            name = f"{base}_{index}"
        self.nodes[name] = node
        self.edges.extend((source, name) for source in sources)
        self.shapes[name] = tuple(int(d) for d in shape)
        return [name]

    def consumers(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def producers(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]


@dataclass
class _Exporter:
    graph: _Graph
    dt: float

    def shape_of(self, sources: list[str]) -> tuple[int, ...]:
        shapes = {self.graph.shapes[s] for s in sources}
        if len(shapes) != 1:
            raise UserError(f"inputs of different shapes are summed: {sorted(shapes)}")
        return shapes.pop()

    def emit(self, module: nn.Module, sources: list[str], path: str) -> list[str]:
        for cls in type(module).__mro__:
            handler = _EXPORTERS.get(cls)
            if handler is not None:
                return handler(self, module, sources, path)
        raise UserError(
            f"module {path or 'model'!r} ({type(module).__name__}) has no NIR equivalent; NIR "
            f"export supports {', '.join(sorted(c.__name__ for c in _EXPORTERS))}"
        )


Handler = Callable[[_Exporter, nn.Module, list[str], str], list[str]]
_EXPORTERS: dict[type, Handler] = {}


def register_exporter(cls: type) -> Callable[[Handler], Handler]:
    """Register ``fn(exporter, module, sources, path) -> sources`` for a module type."""

    def decorate(fn: Handler) -> Handler:
        _EXPORTERS[cls] = fn
        return fn

    return decorate


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _node_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", path.replace(".module", "")) or "node"


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape)).shape[1:])


@register_exporter(nn.Sequential)
def _sequential(ex: _Exporter, seq: nn.Module, sources: list[str], path: str) -> list[str]:
    for name, child in seq.named_children():
        sources = ex.emit(child, sources, _join(path, name))
    return sources


@register_exporter(TimeDistributed)
def _time_distributed(ex: _Exporter, td: nn.Module, sources: list[str], path: str) -> list[str]:
    return ex.emit(td.module, sources, _join(path, "module"))


@register_exporter(nn.Identity)
@register_exporter(nn.Dropout)
@register_exporter(DirectEncoder)
def _identity(ex: _Exporter, module: nn.Module, sources: list[str], path: str) -> list[str]:
    return sources


@register_exporter(nn.Conv2d)
def _conv2d(ex: _Exporter, conv: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    if conv.padding_mode != "zeros":
        raise UserError(f"convolution {path!r} pads with {conv.padding_mode!r}; NIR pads with zeros")
    shape = ex.shape_of(sources)
    bias = _numpy(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=_numpy(conv.weight),
                      stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation),
                      groups=conv.groups, bias=bias)
    return ex.graph.add(_node_name(path), node, sources, _output_shape(conv, shape))


@register_exporter(nn.Linear)
def _linear(ex: _Exporter, linear: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    shape = ex.shape_of(sources)
    if len(shape) != 1:
        raise UserError(f"linear layer {path!r} gets input of shape {shape}; NIR's Affine takes "
                        "vectors (flatten first)")
    bias = (_numpy(linear.bias) if linear.bias is not None
            else np.zeros(linear.out_features, np.float32))
    node = nir.Affine(weight=_numpy(linear.weight), bias=bias)
    return ex.graph.add(_node_name(path), node, sources, (linear.out_features,))


@register_exporter(nn.BatchNorm1d)
@register_exporter(nn.BatchNorm2d)
def _batch_norm(ex: _Exporter, bn: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    target = ex.graph.nodes.get(sources[0]) if len(sources) == 1 else None
    if not isinstance(target, (nir.Conv2d, nir.Affine)) or ex.graph.consumers(sources[0]):
        raise UserError(f"batch norm {path!r} does not directly follow a convolution or linear "
                        "layer, so it cannot be folded into its weights (NIR has no batch norm)")
    if bn.running_mean is None:
        raise UserError(f"batch norm {path!r} keeps no running statistics; it cannot be folded")
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    scale, shift = scale.detach().double().cpu().numpy(), shift.detach().double().cpu().numpy()
    extra = (slice(None),) + (None,) * (target.weight.ndim - 1)  # broadcast over the out axis
    target.weight = (target.weight * scale[extra]).astype(np.float32)
    target.bias = (target.bias * scale + shift).astype(np.float32)
    return sources


@register_exporter(nn.AvgPool2d)
def _avg_pool(ex: _Exporter, pool: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    pair = nn.modules.utils._pair
    kernel, stride, padding = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), \
        pair(pool.padding)
    if pool.ceil_mode or pool.divisor_override is not None or (
            any(padding) and not pool.count_include_pad):
        raise UserError(f"average pool {path!r} uses ceil_mode, divisor_override or excludes the "
                        "padding from the count; NIR's AvgPool2d does none of these")
    shape = ex.shape_of(sources)
    node = nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                         padding=np.array(padding))
    return ex.graph.add(_node_name(path), node, sources, _output_shape(pool, shape))


@register_exporter(nn.AdaptiveAvgPool2d)
def _adaptive_pool(ex: _Exporter, pool: nn.Module, sources: list[str], path: str) -> list[str]:
    shape = ex.shape_of(sources)
    out = nn.modules.utils._pair(pool.output_size)
    out = tuple(o if o is not None else s for o, s in zip(out, shape[1:], strict=True))
    if any(s % o for s, o in zip(shape[1:], out, strict=True)):
        raise UserError(f"adaptive pool {path!r} maps {shape[1:]} to {out}, not a whole kernel; "
                        "NIR has only fixed-kernel pooling")
    kernel = tuple(s // o for s, o in zip(shape[1:], out, strict=True))
    return _avg_pool(ex, nn.AvgPool2d(kernel, kernel), sources, path)


@register_exporter(nn.Flatten)
def _flatten(ex: _Exporter, flat: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    shape = ex.shape_of(sources)
    if flat.start_dim == 0:
        raise UserError(f"flatten {path!r} merges the batch axis; NIR shapes have no batch axis")
    # NIR counts dimensions without the batch axis
    start = flat.start_dim - 1 if flat.start_dim > 0 else flat.start_dim
    end = flat.end_dim - 1 if flat.end_dim > 0 else flat.end_dim
    node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=start, end_dim=end)
    return ex.graph.add(_node_name(path), node, sources, _output_shape(flat, shape))


@register_exporter(SpikingNeuron)
def _neuron(ex: _Exporter, neuron: nn.Module, sources: list[str], path: str) -> list[str]:
    nir = _nir()
    if neuron.reset != "hard":
        raise UserError(f"neuron {path!r} resets by subtraction; NIR's LIF and IF reset to "
                        "v_reset (hard reset), so soft-reset networks cannot be exported")
    shape = ex.shape_of(sources)
    leak = float(neuron.leak)
    r = neuron_gain(neuron, ex.dt)
    full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731
    if leak >= 1.0:
        node = nir.IF(r=full(r), v_threshold=full(neuron.threshold), v_reset=full(neuron.v_reset))
    else:
        node = nir.LIF(tau=full(ex.dt / (1.0 - leak)), r=full(r), v_leak=full(0.0),
                       v_threshold=full(neuron.threshold), v_reset=full(neuron.v_reset))
    names = ex.graph.add(_node_name(path), node, sources, shape)
    ex.graph.gains[names[0]] = r
    return names


def neuron_gain(neuron: SpikingNeuron, dt: float) -> float:
    """NIR's ``r`` for a spikegrad neuron at step ``dt``: ``s/(1 - λ)`` (LIF), ``s/dt`` (IF)."""
    leak = float(neuron.leak)
    return neuron.input_scale / dt if leak >= 1.0 else neuron.input_scale / (1.0 - leak)


def _refuse(reason: str) -> Handler:
    def handler(ex: _Exporter, module: nn.Module, sources: list[str], path: str) -> list[str]:
        raise UserError(f"module {path!r} ({type(module).__name__}) cannot be exported to NIR: "
                        f"{reason}")

    return handler


register_exporter(nn.MaxPool2d)(_refuse("NIR 1.0 has no max pooling"))
register_exporter(ClippedReLU)(_refuse("it is an ANN activation; export the spiking model"))
register_exporter(PoissonEncoder)(_refuse(
    "Poisson sampling is not part of NIR; build the model with encoder='direct' and feed "
    "spikes to the graph"))
register_exporter(LatencyEncoder)(_refuse(
    "latency coding is not part of NIR; build the model with encoder='direct' and feed the "
    "coded spikes to the graph"))
register_exporter(DeltaEncoder)(_refuse(
    "delta coding is not part of NIR; build the model with encoder='direct' and feed the "
    "coded spikes to the graph"))


@register_exporter(SpikingNetwork)
def _network(ex: _Exporter, net: nn.Module, sources: list[str], path: str) -> list[str]:
    sources = ex.emit(net.encoder, sources, _join(path, "encoder"))
    sources = ex.emit(net.features, sources, _join(path, "features"))
    sources = ex.emit(net.classifier, sources, _join(path, "classifier"))
    if getattr(net, "output_neuron", None) is not None:  # readout "spikes"
        sources = ex.emit(net.output_neuron, sources, _join(path, "output_neuron"))
    return sources


@register_exporter(BasicBlock)
def _basic_block(ex: _Exporter, block: nn.Module, sources: list[str], path: str) -> list[str]:
    out = ex.emit(block.conv1, sources, _join(path, "conv1"))
    out = ex.emit(block.act1, out, _join(path, "act1"))
    out = ex.emit(block.conv2, out, _join(path, "conv2"))
    shortcut = ex.emit(block.downsample, sources, _join(path, "downsample"))
    return ex.emit(block.act2, out + shortcut, _join(path, "act2"))  # NIR sums the inputs


# ---- folding scale factors into weights


def _scale_node(graph: _Graph, name: str, factor: float, bias: bool = True) -> None:
    node = graph.nodes[name]
    node.weight = (node.weight * factor).astype(np.float32)
    if bias:
        node.bias = (node.bias * factor).astype(np.float32)


def _foldable(graph: _Graph, source: str, target: str) -> bool:
    """Can the edge ``source -> target`` be scaled without a Scale node?"""
    nir = _nir()
    node = graph.nodes[source]
    if graph.consumers(source) != [target]:
        return False
    if isinstance(node, (nir.Conv2d, nir.Affine)):
        return True
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d, nir.Flatten)):
        return all(_foldable(graph, p, source) for p in graph.producers(source))
    return False


def _scale_edge(graph: _Graph, source: str, target: str, factor: float) -> None:
    """Multiply the signal on ``source -> target`` by ``factor``, in weights where possible."""
    nir = _nir()
    if _foldable(graph, source, target):
        node = graph.nodes[source]
        if isinstance(node, (nir.Conv2d, nir.Affine)):
            _scale_node(graph, source, factor)
        else:  # pooling and flatten are linear without bias: scale what feeds them
            for producer in graph.producers(source):
                _scale_edge(graph, producer, source, factor)
        return
    shape = graph.shapes[source]
    name = graph.add(f"{target}_scale", nir.Scale(scale=np.full(shape, factor, np.float64)),
                     [source], shape)[0]
    graph.edges.remove((source, target))
    graph.edges.append((name, target))


def _downstream_weights(graph: _Graph, name: str) -> list[str] | None:
    """Convolutions/linear layers whose only input is ``name``'s output (through flatten)."""
    nir = _nir()
    targets: list[str] = []
    for consumer in graph.consumers(name):
        node = graph.nodes[consumer]
        if graph.producers(consumer) != [name]:
            return None
        if isinstance(node, (nir.Conv2d, nir.Affine)):
            targets.append(consumer)
        elif isinstance(node, nir.Flatten):
            more = _downstream_weights(graph, consumer)
            if more is None:
                return None
            targets.extend(more)
        else:
            return None
    return targets or None


def _fold_gains(graph: _Graph) -> None:
    """Move every neuron's ``r`` into the weights that feed it; ``r`` becomes 1."""
    for name, gain in graph.gains.items():
        if gain != 1.0:
            for producer in graph.producers(name):
                _scale_edge(graph, producer, name, gain)
        graph.nodes[name].r = np.ones_like(graph.nodes[name].r)


def _sum_pools(graph: _Graph) -> None:
    """Turn each AvgPool2d into a SumPool2d, with the ``1/k`` moved into neighbouring weights."""
    nir = _nir()
    for name, node in list(graph.nodes.items()):
        if not isinstance(node, nir.AvgPool2d):
            continue
        factor = 1.0 / float(np.prod(node.kernel_size))
        graph.nodes[name] = nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride,
                                          padding=node.padding)
        producers = graph.producers(name)
        downstream = _downstream_weights(graph, name)
        if downstream and not all(_foldable(graph, p, name) for p in producers):
            for target in downstream:  # W·(x/k) = (W/k)·x; the bias stays
                _scale_node(graph, target, factor, bias=False)
        else:
            for producer in producers:
                _scale_edge(graph, producer, name, factor)


MAX_SAMPLE_VALUES = 1 << 26  # values in one input sample (e.g. 3 x 4096 x 4096 is within)


def _sample_shape(input_shape: Any) -> tuple[int, ...]:
    """One input sample's shape as positive whole numbers, of a size that fits in memory."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or len(shape) > 4 or not all(isinstance(d, (int, np.integer)) and not isinstance(
            d, bool) and d > 0 for d in shape):
        raise UserError(f"input_shape {input_shape!r} must be 1 to 4 positive whole numbers, one input "
                        "sample without batch and time, such as (3, 32, 32)")
    if math.prod(int(d) for d in shape) > MAX_SAMPLE_VALUES:
        raise UserError(f"input_shape {tuple(int(d) for d in shape)} holds more than "
                        f"{MAX_SAMPLE_VALUES} values per sample; give one sample's C,H,W")
    return tuple(int(d) for d in shape)


def export_nir(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    dt: float = DEFAULT_DT,
    fold_gain: bool = True,
    pooling: str = "avg",
) -> Any:
    """The NIR graph (``nir.NIRGraph``) of a spiking ``model``, in eval mode.

    Args:
        model: a registered spiking network (or a composition of supported modules).
        input_shape: one input sample without batch and time, e.g. ``(1, 8, 8)``; taken from
            ``model.input_shape`` if the model has one.
        dt: the integration step the graph's time constants refer to (seconds).
        fold_gain: move each neuron's ``r`` into the weights (``r = 1`` everywhere).
        pooling: ``"avg"`` (AvgPool2d) or ``"sum"`` (SumPool2d, ``1/k`` in the weights).
    """
    nir = _nir()
    if not dt > 0:
        raise UserError(f"dt must be positive, got {dt}")
    if pooling not in ("avg", "sum"):
        raise UserError(f"pooling must be 'avg' or 'sum', got {pooling!r}")
    input_shape = input_shape or getattr(model, "input_shape", None)
    if input_shape is None:
        raise UserError("export_nir needs the shape of one input sample, e.g. input_shape=(1, 8, 8)")
    shape = _sample_shape(input_shape)
    with eval_mode(model):
        try:
            graph = _Graph()
            sources = graph.add("input", nir.Input(input_type={"input": np.array(shape)}), [], shape)
            sources = _Exporter(graph, float(dt)).emit(model, sources, "")
        except UserError:
            raise
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:
            raise UserError(f"the model cannot take an input sample of shape {shape} (input_shape, "
                            f"--input-shape): {first_line(exc)}; give one sample's shape as the model "
                            "was trained, e.g. C,H,W = 1,8,8 for the digits") from exc
    out_shape = graph.shapes[sources[0]]
    graph.add("output", nir.Output(output_type={"output": np.array(out_shape)}), sources, out_shape)
    if fold_gain:
        _fold_gains(graph)
    if pooling == "sum":
        _sum_pools(graph)
    metadata = {
        "dt": float(dt),
        "time_steps": int(getattr(model, "T", 0) or 0),
        "encoding": "direct: the same input at every time step",
        "readout": "logits = mean over time steps of the output",
        "spike_condition": "spikegrad fires at v >= v_threshold (NIR: v > v_threshold)",
        "gain_folded": bool(fold_gain),
        "source": f"spikegrad {__version__}",
    }
    return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata=metadata)


def write_nir(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | None = None,
              **kwargs: Any) -> Path:
    """Export ``model`` (see :func:`export_nir`) and write it to ``path`` (HDF5, ``.nir``)."""
    nir = _nir()
    path = Path(path)
    if not path.parent.is_dir():  # no folders are made: a mistyped path fails here
        raise UserError(f"cannot write the NIR file {str(path)!r}: the folder {str(path.parent)!r} "
                        "does not exist; create it first or choose another path")
    graph = export_nir(model, input_shape, **kwargs)
    try:
        nir.write(str(path), graph)
    except OSError as exc:
        raise UserError(f"cannot write the NIR file {str(path)!r}: {exc}") from exc
    return path


# --------------------------------------------------------------------------- import


class _SumPool2d(nn.Module):
    """Sum over each window (NIR's SumPool2d), zero padding."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, divisor_override=1)


class _Scale(nn.Module):
    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _ints(value: Any, n: int = 2) -> tuple[int, ...] | str:
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    array = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    return tuple(array * n if len(array) == 1 else array)


def _uniform(name: str, field_name: str, value: Any) -> float:
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise UserError(f"NIR node {name!r} has per-neuron {field_name} values ({values.size} "
                        "distinct); spikegrad neurons share one value per layer")
    return float(values[0])


def _import_node(name: str, node: Any, dt: float | None) -> nn.Module | None:
    """The module for one NIR node (None for Input and Output)."""
    nir = _nir()
    if isinstance(node, (nir.Input, nir.Output)):
        return None
    if isinstance(node, (nir.LIF, nir.IF)):
        if dt is None:
            raise UserError("the NIR graph has no 'dt' in its metadata; pass dt= to import_nir")
        threshold = _uniform(name, "v_threshold", node.v_threshold)
        v_reset = _uniform(name, "v_reset", node.v_reset)
        r = _uniform(name, "r", node.r)
        if isinstance(node, nir.IF):
            return IF(threshold=threshold, v_reset=v_reset, input_scale=r * dt)
        if _uniform(name, "v_leak", node.v_leak) != 0.0:
            raise UserError(f"NIR LIF {name!r} has v_leak != 0; spikegrad's potential relaxes to 0")
        rate = dt / _uniform(name, "tau", node.tau)
        if not 0.0 < rate <= 1.0:
            raise UserError(f"NIR LIF {name!r}: dt/tau = {rate:g} is outside (0, 1], so one Euler "
                            "step is unstable; import with a smaller dt")
        return LIF(leak=1.0 - rate, threshold=threshold, v_reset=v_reset, input_scale=r * rate)
    if isinstance(node, nir.Conv2d):
        weight = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
        conv = nn.Conv2d(weight.shape[1] * int(node.groups), weight.shape[0],
                         tuple(weight.shape[2:]), _ints(node.stride), _ints(node.padding),
                         _ints(node.dilation), int(node.groups), bias=True)
        conv.weight.data.copy_(weight)
        conv.bias.data.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
        return TimeDistributed(conv)
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
        has_bias = isinstance(node, nir.Affine)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias)
        linear.weight.data.copy_(weight)
        if has_bias:
            linear.bias.data.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
        return TimeDistributed(linear)
    if isinstance(node, nir.AvgPool2d):
        return TimeDistributed(nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride),
                                            _ints(node.padding)))
    if isinstance(node, nir.SumPool2d):
        return TimeDistributed(_SumPool2d(_ints(node.kernel_size), _ints(node.stride),
                                          _ints(node.padding)))
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)  # NIR counts without the batch axis
        return TimeDistributed(nn.Flatten(start + 1 if start >= 0 else start,
                                          end + 1 if end >= 0 else end))
    if isinstance(node, nir.Scale):
        return TimeDistributed(_Scale(node.scale))
    raise UserError(f"NIR node {name!r} is a {type(node).__name__}, which spikegrad does not "
                    "import; supported: Input, Output, Conv2d, Affine, Linear, AvgPool2d, "
                    "SumPool2d, Flatten, Scale, LIF, IF")


class NIRNetwork(nn.Module):
    """A NIR graph run by spikegrad, time-major: ``[T, B, ...] -> [T, B, outputs]``.

    A static input ``[B, ...]`` is repeated over ``T`` steps (direct encoding). Nodes run in
    topological order; a node's input is the sum of its producers' outputs.
    """

    def __init__(self, modules: dict[str, nn.Module | None], edges: list[tuple[str, str]],
                 input_name: str, output_name: str, input_shape: tuple[int, ...], T: int | None,
                 dt: float | None) -> None:
        super().__init__()
        self.names = {name: _node_name(name) for name in modules}
        self.nodes = nn.ModuleDict({self.names[n]: m for n, m in modules.items() if m is not None})
        self.producers = {name: [a for a, b in edges if b == name] for name in modules}
        self.order = _topological_order(list(modules), edges)
        self.input_name, self.output_name = input_name, output_name
        self.input_shape = tuple(input_shape)
        self.T = T
        self.dt = dt
        self.kind = "snn"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == len(self.input_shape) + 1:
            if not self.T:
                raise UserError("a static input needs the number of time steps: set T in "
                                "import_nir, or pass a time-major input [T, B, ...]")
            x = DirectEncoder(self.T)(x)  # (T, B, ...)
        elif x.dim() != len(self.input_shape) + 2:
            raise UserError(f"the NIR network expects [B, {', '.join(map(str, self.input_shape))}] "
                            f"or [T, B, ...], got shape {tuple(x.shape)}")
        outputs: dict[str, Tensor] = {}
        for name in self.order:
            if name == self.input_name:
                outputs[name] = x
                continue
            producers = self.producers[name]
            value = outputs[producers[0]]
            for producer in producers[1:]:  # NIR sums the inputs of a node
                value = value + outputs[producer]
            key = self.names[name]
            outputs[name] = self.nodes[key](value) if key in self.nodes else value
        return outputs[self.output_name]


def _topological_order(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    pending = {name: sum(1 for _, b in edges if b == name) for name in names}
    ready = [name for name in names if pending[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for a, b in edges:
            if a == name:
                pending[b] -= 1
                if pending[b] == 0:
                    ready.append(b)
    if len(order) != len(names):
        cyclic = sorted(n for n in names if n not in order)
        raise UserError(f"the NIR graph has recurrent (cyclic) edges through {cyclic}; spikegrad "
                        "imports feed-forward graphs only")
    return order


def import_nir(source: str | Path | Any, *, dt: float | None = None, T: int | None = None) -> NIRNetwork:
    """A spikegrad module running the NIR graph in ``source`` (a path or a ``nir.NIRGraph``).

    ``dt`` (seconds) and ``T`` default to the graph's metadata (as written by
    :func:`export_nir`). The neurons become spikegrad :class:`~spikegrad.neurons.LIF` /
    :class:`~spikegrad.neurons.IF` layers with the mapping in the module docstring.
    """
    nir = _nir()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"NIR file {str(path)!r} does not exist")
        try:
            graph = nir.read(str(path))
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{str(path)!r} cannot be read as a NIR graph: {exc}") from exc
    else:
        graph = source
    metadata = dict(getattr(graph, "metadata", None) or {})
    if dt is None and "dt" in metadata:
        dt = float(np.asarray(metadata["dt"]))
    if T is None and metadata.get("time_steps"):
        T = int(np.asarray(metadata["time_steps"])) or None
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"spikegrad imports graphs with one Input and one Output node, got "
                        f"{len(inputs)} and {len(outputs)}")
    modules = {name: _import_node(name, node, dt) for name, node in graph.nodes.items()}
    input_type = graph.nodes[inputs[0]].input_type["input"]
    network = NIRNetwork(modules, [(str(a), str(b)) for a, b in graph.edges], inputs[0], outputs[0],
                         tuple(int(d) for d in np.asarray(input_type)), T, dt)
    return network.eval()

