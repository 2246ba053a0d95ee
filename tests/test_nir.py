"""NIR export and import: parameter mapping, round trips, and the same spikes in Norse and snnTorch."""

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spikegrad import models, neurons
from spikegrad.checkpoint import load_model
from spikegrad.cli import main
from spikegrad.data import build_datasets
from spikegrad.errors import UserError
from spikegrad.neurons import SpikingNeuron
from spikegrad.run import train
from tests.conftest import require_peer
from tests.test_trainer import tiny_config

T = 4
NEAR_TIE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A spiking CNN trained 2 epochs on the digits (LIF λ = 0.25, θ = 0.5), and test images."""
    folder = tmp_path_factory.mktemp("nir_run")
    config = tiny_config(**{"train.epochs": 2, "model.T": T, "analysis.monitors": False})
    summary = train(config, folder, verbose=False)
    assert summary["final_test_acc"] > 0.5  # it learned something: the spikes carry information
    model, _ = load_model(folder / "last.pt")
    _, test_set, _ = build_datasets("digits")
    images = torch.stack([test_set[i][0] for i in range(6)])
    return folder / "last.pt", model.eval(), images


def run_spikegrad(model: nn.Module, x: torch.Tensor):
    """Output and, per neuron layer (by NIR node name), spikes and pre-reset potentials."""
    record = {}
    for name, module in model.named_modules():
        if isinstance(module, SpikingNeuron):
            key = name.replace(".", "_").removeprefix("nodes_")
            module.membrane_hook = lambda h, key=key: record.setdefault(key, {}).update(h=h)
            module.register_forward_hook(
                lambda m, i, o, key=key: record.setdefault(key, {}).update(s=o))
    with torch.no_grad():
        out = model(x)
    for module in model.modules():
        if isinstance(module, SpikingNeuron):
            module.membrane_hook = None
            module._forward_hooks.clear()
    return out, record


def assert_same_spikes(reference: dict, other: dict[str, torch.Tensor], threshold: float) -> int:
    """Spikes equal wherever the reference potential is not within NEAR_TIE of the threshold."""
    assert set(other) == set(reference), (sorted(other), sorted(reference))
    near_ties = 0
    for name, ref in reference.items():
        spikes = other[name].reshape(ref["s"].shape)
        tie = (ref["h"] - threshold).abs() < NEAR_TIE
        differ = spikes != ref["s"]
        assert not (differ & ~tie).any(), f"layer {name}: {int((differ & ~tie).sum())} spikes differ"
        near_ties += int(tie.sum())
    return near_ties


def test_lif_mapping_follows_the_nir_equations_by_forward_euler():
    """Simulate NIR's LIF ODE by Euler steps (numpy, from its definition) against our LIF."""
    nir = require_peer("nir")
    from spikegrad.nir import export_nir

    torch.manual_seed(0)
    lif = neurons.LIF(leak=0.3, threshold=0.8, input_scale=0.7, v_reset=0.0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 5, bias=False), lif)
    nn.init.eye_(net[1].weight)
    graph = export_nir(net, (5,), dt=0.01, fold_gain=False)
    node = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    assert np.allclose(node.tau, 0.01 / 0.7) and np.allclose(node.r, 0.7 / 0.7)
    assert np.allclose(node.v_leak, 0) and np.allclose(node.v_threshold, 0.8)
    current = torch.rand(30, 2, 5) * 1.5
    ours = lif(current).numpy()
    v = np.zeros((2, 5))
    dt, tau, r = 0.01, node.tau, node.r
    for t in range(30):
        v = v + dt / tau * (node.v_leak - v + r * current[t].numpy())
        spikes = v >= node.v_threshold
        assert np.array_equal(spikes, ours[t] == 1), t
        v = np.where(spikes, node.v_reset, v)
    assert ours.sum() > 10


def test_if_mapping_and_gain_folding():
    nir = require_peer("nir")
    from spikegrad.nir import export_nir

    neuron = neurons.IF(threshold=2.0, input_scale=0.5)
    net = nn.Sequential(nn.Linear(3, 4), neuron)
    raw = export_nir(net, (3,), dt=0.1, fold_gain=False)
    folded = export_nir(net, (3,), dt=0.1)
    (if_raw,) = [n for n in raw.nodes.values() if isinstance(n, nir.IF)]
    (if_folded,) = [n for n in folded.nodes.values() if isinstance(n, nir.IF)]
    assert np.allclose(if_raw.r, 0.5 / 0.1) and np.allclose(if_folded.r, 1.0)  # r = s/dt
    (affine_raw,) = [n for n in raw.nodes.values() if isinstance(n, nir.Affine)]
    (affine_folded,) = [n for n in folded.nodes.values() if isinstance(n, nir.Affine)]
    assert np.allclose(affine_folded.weight, affine_raw.weight * 5.0)
    assert np.allclose(affine_folded.bias, affine_raw.bias * 5.0)
    assert folded.metadata["dt"] == 0.1 and folded.metadata["gain_folded"]


def test_export_cli_writes_a_file_the_nir_package_reads(trained, tmp_path):
    nir = require_peer("nir")
    checkpoint, _, _ = trained
    out = tmp_path / "model.nir"
    assert main(["export", str(checkpoint), "--format", "nir", "--out", str(out)]) == 0
    graph = nir.read(str(out))
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("Conv2d") == 3 and kinds.count("LIF") == 3
    assert kinds.count("AvgPool2d") == 2 and "Flatten" in kinds and "Affine" in kinds
    assert "BatchNorm2d" not in kinds  # folded into the convolutions
    assert float(graph.metadata["dt"]) == 1e-4 and int(graph.metadata["time_steps"]) == T
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    assert np.allclose(lif.tau, 1e-4 / (1 - 0.25)) and np.allclose(lif.r, 1.0)
    assert np.allclose(lif.v_threshold, 0.5) and np.allclose(lif.v_reset, 0.0)


@pytest.mark.parametrize("options", [{}, {"pooling": "sum"}, {"fold_gain": False, "dt": 1.0}])
def test_spikegrad_reimport_reproduces_the_trained_model(trained, tmp_path, options):
    require_peer("nir")
    from spikegrad.nir import import_nir, write_nir

    _, model, images = trained
    path = write_nir(model, tmp_path / "m.nir", (1, 8, 8), **options)
    imported = import_nir(path)
    assert imported.T == T
    out, spikes = run_spikegrad(model, images)
    out2, spikes2 = run_spikegrad(imported, images)
    assert_same_spikes(spikes, {k: v["s"] for k, v in spikes2.items()}, 0.5)
    assert torch.allclose(out, out2, atol=1e-4)
    assert sum(int(v["s"].sum()) for v in spikes.values()) > 1000


def test_snntorch_import_gives_the_same_spikes(trained, tmp_path):
    """Export, read back with nir, import with snnTorch, run the same images: same spikes."""
    nir = require_peer("nir")
    snntorch = require_peer("snntorch")
    from snntorch.import_nir import import_from_nir

    from spikegrad.nir import write_nir

    _, model, images = trained
    graph = nir.read(str(write_nir(model, tmp_path / "m.nir", (1, 8, 8))))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its threshold rescaling
        net = import_from_nir(graph)
    leaky = {name: m for name, m in net.named_modules() if isinstance(m, snntorch.Leaky)}
    # NIR's Flatten(start_dim=0) excludes the batch axis; the importer's torch Flatten does
    # not, so the imported graph runs one sample at a time.
    spikes = {name: [] for name in leaky}
    outputs = []
    for image in images:
        for neuron in leaky.values():
            neuron.reset_mem()
        steps = {name: [] for name in leaky}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n, steps=steps: steps[n].append(o))
                 for n, m in leaky.items()]
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            out = [net(image[None]) for _ in range(T)]
        for hook in hooks:
            hook.remove()
        outputs.append(torch.stack([o[0] if isinstance(o, tuple) else o for o in out]))
        for name in leaky:
            spikes[name].append(torch.stack(steps[name]))  # (T, 1, ...)
    peer = {name: torch.cat(s, 1) for name, s in spikes.items()}  # (T, B, ...)
    reference_out, reference = run_spikegrad(model, images)
    near_ties = assert_same_spikes(reference, peer, 0.5)
    assert near_ties == 0  # so the spikes are identical, not just equal away from ties
    peer_out = torch.stack(outputs, 1).reshape(reference_out.shape)
    assert torch.allclose(peer_out, reference_out, atol=1e-4)


def test_norse_import_gives_the_same_spikes(trained, tmp_path):
    nir = require_peer("nir")
    norse = require_peer("norse.torch")
    from spikegrad.nir import write_nir

    _, model, images = trained
    # Norse's importer has no AvgPool2d (it would drop the node): write sum pooling.
    graph = nir.read(str(write_nir(model, tmp_path / "m.nir", (1, 8, 8), pooling="sum")))
    assert not any(isinstance(n, nir.AvgPool2d) for n in graph.nodes.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        net = norse.from_nir(graph, dt=float(graph.metadata["dt"]))
    names = [n for n, node in graph.nodes.items() if isinstance(node, nir.LIF)]
    spikes = {name: [] for name in names}
    outputs = []
    for image in images:
        state, steps, outs = None, {name: [] for name in names}, []
        with torch.no_grad():
            for _ in range(T):
                out, state = net(image[None], state)
                outs.append(out)
                for name in names:
                    steps[name].append(state.cache[name])
        outputs.append(torch.stack(outs))
        for name in names:
            spikes[name].append(torch.stack(steps[name]))
    peer = {name: torch.cat(s, 1) for name, s in spikes.items()}
    reference_out, reference = run_spikegrad(model, images)
    assert assert_same_spikes(reference, peer, 0.5) == 0
    assert torch.allclose(torch.stack(outputs, 1).reshape(reference_out.shape), reference_out,
                          atol=1e-4)


def randomized_batch_norm(model: nn.Module) -> nn.Module:
    """Give an untrained model's batch norms statistics that make its neurons fire."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.7 + 0.3)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.8 + 0.8)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.5)
    return model.eval()


def test_residual_network_exports_with_its_shortcuts(tmp_path):
    """ResNet-20 (identity and projection shortcuts): exact in spikegrad and in snnTorch."""
    nir = require_peer("nir")
    snntorch = require_peer("snntorch")
    from snntorch.import_nir import import_from_nir

    from spikegrad.nir import export_nir, import_nir

    torch.manual_seed(0)
    model = randomized_batch_norm(models.create(
        "resnet20", width=0.25, T=3, in_channels=1, num_classes=10,
        neuron={"type": "lif", "leak": 0.5, "threshold": 1.0}))
    images = torch.rand(2, 1, 8, 8)
    reference_out, reference = run_spikegrad(model, images)
    folded = export_nir(model, (1, 8, 8))
    # an identity shortcut carries spikes straight into a neuron: its gain 1/(1-λ) = 2
    # cannot go into weights, so Scale nodes hold it
    scales = [n for n in folded.nodes.values() if isinstance(n, nir.Scale)]
    assert len(scales) == 7 and all(np.allclose(s.scale, 2.0) for s in scales)
    summed = export_nir(model, (1, 8, 8), pooling="sum")  # global pool: 1/k into the classifier
    assert not any(isinstance(n, nir.AvgPool2d) for n in summed.nodes.values())
    assert sum(isinstance(n, nir.Scale) for n in summed.nodes.values()) == 7
    for graph in (folded, summed, export_nir(model, (1, 8, 8), fold_gain=False)):
        out, spikes = run_spikegrad(import_nir(graph), images)
        assert_same_spikes(reference, {k: v["s"] for k, v in spikes.items()}, 1.0)
        assert torch.allclose(out, reference_out, atol=1e-4)
    # snnTorch has no Scale node but honours r: import the unfolded graph
    with contextlib.redirect_stdout(io.StringIO()):
        net = import_from_nir(export_nir(model, (1, 8, 8), fold_gain=False))
    leaky = {name: m for name, m in net.named_modules() if isinstance(m, snntorch.Leaky)}
    steps = {name: [] for name in leaky}
    for image in images:
        for neuron in leaky.values():
            neuron.reset_mem()
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: steps[n].append(o))
                 for n, m in leaky.items()]
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            for _ in range(3):
                net(image[None])
        for hook in hooks:
            hook.remove()
    peer = {n: torch.stack(s).reshape(2, 3, *s[0].shape[1:]).transpose(0, 1)
            for n, s in steps.items()}  # (B·T, ...) -> (T, B, ...)
    assert assert_same_spikes(reference, peer, 1.0) == 0
    assert sum(int(v["s"].sum()) for v in reference.values()) > 100


def test_if_network_runs_in_norse_with_dt_one():
    """Norse's IF ignores r and dt (v += input): exact when dt·r = 1, i.e. dt = 1 and s = 1."""
    nir = require_peer("nir")
    norse = require_peer("norse.torch")
    from spikegrad.nir import export_nir

    torch.manual_seed(0)
    model = randomized_batch_norm(models.create("digits_cnn", width=0.25, T=3,
                                                neuron={"type": "if", "threshold": 1.0}))
    images = torch.rand(2, 1, 8, 8)
    _, reference = run_spikegrad(model, images)
    graph = export_nir(model, (1, 8, 8), dt=1.0, pooling="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        net = norse.from_nir(graph, dt=1.0)
    names = [n for n, node in graph.nodes.items() if isinstance(node, nir.IF)]
    steps = {name: [] for name in names}
    for image in images:
        state = None
        with torch.no_grad():
            for _ in range(3):
                _, state = net(image[None], state)
                for name in names:
                    steps[name].append(state.cache[name])
    peer = {n: torch.stack(s).reshape(2, 3, *s[0].shape[1:]).transpose(0, 1)
            for n, s in steps.items()}
    assert assert_same_spikes(reference, peer, 1.0) == 0
    assert sum(int(v["s"].sum()) for v in reference.values()) > 50


@pytest.mark.parametrize("build, message", [
    (lambda: models.create("digits_cnn", width=0.25, kind="ann"), "ClippedReLU"),
    (lambda: models.create("digits_cnn", width=0.25, neuron={"type": "lif", "reset": "soft"}),
     "resets by subtraction"),
    (lambda: models.create("resnet20", width=0.25, in_channels=1, stem="imagenet"), "MaxPool2d"),
    (lambda: models.create("digits_cnn", width=0.25, encoder="poisson"), "Poisson"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.GELU()), "GELU"),
])
def test_unsupported_modules_are_refused_by_name(build, message):
    require_peer("nir")
    from spikegrad.nir import export_nir

    model = build()
    shape = (1, 8, 8) if hasattr(model, "features") else (2,)
    with pytest.raises(UserError, match=message):
        export_nir(model, shape)


def test_import_refuses_what_it_cannot_run(tmp_path):
    nir = require_peer("nir")
    from spikegrad.nir import import_nir

    ones = np.ones(3)
    cuba = nir.NIRGraph.from_list(nir.CubaLIF(tau_syn=ones, tau_mem=ones, r=ones, v_leak=0 * ones,
                                              v_threshold=ones))
    with pytest.raises(UserError, match="CubaLIF"):
        import_nir(cuba, dt=1e-3)
    lif = nir.LIF(tau=np.array([1.0, 2.0]), r=np.ones(2), v_leak=np.zeros(2),
                  v_threshold=np.ones(2))
    with pytest.raises(UserError, match="per-neuron tau"):
        import_nir(nir.NIRGraph.from_list(lif), dt=1e-3)
    same = nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    with pytest.raises(UserError, match="dt"):
        import_nir(nir.NIRGraph.from_list(same))
    with pytest.raises(UserError, match="does not exist"):
        import_nir(tmp_path / "missing.nir")
    cyclic = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([2])), "a": nir.Affine(np.eye(2), np.zeros(2)),
               "b": nir.Affine(np.eye(2), np.zeros(2)), "output": nir.Output(output_type=np.array([2]))},
        edges=[("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")], type_check=False)
    with pytest.raises(UserError, match="cyclic"):
        import_nir(cyclic)


def test_export_cli_errors_exit_2(trained, tmp_path, capsys):
    require_peer("nir")
    checkpoint, _, _ = trained
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.nir")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.nir"),
                 "--input-shape", "1,x"]) == 2


@pytest.mark.parametrize("name", [n for n in models.list() if n != "cnn1d"])
def test_every_registered_model_exports_and_reimports(name):
    require_peer("nir")
    from spikegrad.nir import export_nir, import_nir

    torch.manual_seed(0)
    kwargs = {"width": 0.125, "T": 2, "in_channels": 1, "num_classes": 3}
    if "input_size" in models.entry(name).arguments():
        kwargs["input_size"] = 8
    model = randomized_batch_norm(models.create(name, **kwargs))
    images = torch.rand(2, 1, 8, 8)
    reference_out, reference = run_spikegrad(model, images)
    out, spikes = run_spikegrad(import_nir(export_nir(model, (1, 8, 8), pooling="sum")), images)
    assert_same_spikes(reference, {k: v["s"] for k, v in spikes.items()}, 1.0)
    assert torch.allclose(out, reference_out, atol=1e-4)


def test_a_model_without_nir_layers_is_refused_by_name():
    require_peer("nir")
    from spikegrad.nir import export_nir

    model = models.create("cnn1d", width=0.125, T=2, in_channels=1, num_classes=3, input_size=8)
    with pytest.raises(UserError, match=r"\(Conv1d\) has no NIR equivalent"):
        export_nir(model, (1, 8))
