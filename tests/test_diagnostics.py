import copy
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import models
from spikegrad.cli import main
from spikegrad.config import Config
from spikegrad.diagnostics import (
    GradientDiagnostics,
    gradient_histogram,
    norm_ratio,
    read_gradients,
    weight_layers,
)
from spikegrad.errors import UserError
from spikegrad.gradient_plots import histogram_picks
from spikegrad.losses import mean_logit_cross_entropy
from spikegrad.methods.shortcut import ShortcutBackprop
from spikegrad.trainer import Trainer


def small_net() -> nn.Module:
    return models.create("plain_cnn", depth=4, num_classes=3, in_channels=1, T=2, width=0.125,
                         input_size=8)


def toy_data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_histogram_counts_every_entry_on_symmetric_bins():
    g = torch.randn(1000)
    hist = gradient_histogram(g, bins=11)
    m = float(g.abs().max())
    assert hist["edges"][0] == pytest.approx(-m) and hist["edges"][-1] == pytest.approx(m)
    assert len(hist["edges"]) == 12 and sum(hist["counts"]) == 1000
    expected, _ = np.histogram(g.numpy(), bins=11, range=(-m, m))
    assert hist["counts"] == expected.tolist()
    assert sum(gradient_histogram(torch.zeros(5), 4)["counts"]) == 5  # all-zero gradient


def test_weight_layers_are_the_convolutions_and_linear_layers_in_order():
    names = [n for n, _ in weight_layers(small_net())]
    assert names == [f"features.conv{i}.0.module.0" for i in range(1, 5)] + ["classifier.module.2"]


def test_the_first_record_holds_the_first_steps_gradient(tmp_path):
    """One full-batch step: the recorded norms are those of the loss on the initial weights."""
    torch.manual_seed(0)
    model = small_net()
    initial = copy.deepcopy(model)
    data = toy_data()
    config = Config().with_overrides({"train.epochs": 3, "data.batch_size": 16, "train.progress": False,
                                      "train.device": "cpu"})
    diagnostics = GradientDiagnostics(interval=2, bins=9)
    Trainer(model, data, data, config, components=[diagnostics], out_dir=tmp_path, verbose=False).fit()
    mean_logit_cross_entropy(initial(data.tensors[0]), data.tensors[1]).backward()
    expected = {n: float(w.grad.norm()) for n, w in weight_layers(initial)}
    records = read_gradients(tmp_path)
    assert records == diagnostics.records
    assert [(r["epoch"], r["iteration"]) for r in records] == [(1, 1), (3, 3)]
    assert set(records[0]) == {"epoch", "iteration", "norms", "first_layer_hist"}
    assert list(records[0]["norms"]) == list(expected)
    assert records[0]["norms"] == pytest.approx(expected, rel=1e-5)
    first_grad = next(iter(weight_layers(initial)))[1].grad
    hist = gradient_histogram(first_grad, 9)
    assert records[0]["first_layer_hist"]["edges"] == pytest.approx(hist["edges"], rel=1e-5)
    assert records[0]["first_layer_hist"]["counts"] == hist["counts"]
    assert norm_ratio(records[0]) == pytest.approx(expected["features.conv1.0.module.0"]
                                                   / expected["classifier.module.2"])


def test_shortcut_branches_change_the_recorded_gradients_but_are_not_listed():
    torch.manual_seed(0)
    plain = small_net()
    data = toy_data()
    config = Config().with_overrides({"train.epochs": 1, "data.batch_size": 16, "train.progress": False,
                                      "train.device": "cpu"})
    runs = []
    for loss in (None, "combined", "separate"):
        net = copy.deepcopy(plain)
        extra = [ShortcutBackprop(["features.conv2"], schedule="constant", lambda0=1.0, loss=loss)
                 ] if loss else []
        diagnostics = GradientDiagnostics(interval=1)
        Trainer(net, data, data, config, components=[diagnostics, *extra], verbose=False).fit()
        runs.append(diagnostics.records[0]["norms"])
    assert list(runs[0]) == list(runs[1]) == list(runs[2])  # branches are not model layers
    first, last = "features.conv1.0.module.0", "classifier.module.2"
    assert runs[0][first] != pytest.approx(runs[1][first])
    assert runs[0][first] != pytest.approx(runs[2][first])
    # separate losses: the head and the layers past the branch see only the head's own loss
    for name in (last, "features.conv3.0.module.0", "features.conv4.0.module.0"):
        assert runs[0][name] == pytest.approx(runs[2][name], rel=1e-5)


def test_records_are_taken_before_gradient_clipping(tmp_path):
    def first_record(**overrides) -> dict:
        torch.manual_seed(0)
        config = Config().with_overrides({"train.epochs": 1, "train.progress": False,
                                          "data.batch_size": 16, "train.device": "cpu",
                                          **overrides})
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        Trainer(small_net(), toy_data(), toy_data(), config,
                components=[GradientDiagnostics(interval=1)], out_dir=out, verbose=False).fit()
        return read_gradients(out)[0]

    plain, clipped = first_record(), first_record(**{"train.grad_clip": 1e-6})
    assert plain["norms"] == clipped["norms"] and plain["first_layer_hist"] == clipped["first_layer_hist"]


def test_an_fp16_overflow_skips_the_step_and_its_record(tmp_path):
    """With loss scaling an overflow is routine: the scaler skips the step and lowers the
    scale; it is neither a divergence nor a record of infinite gradients."""
    torch.manual_seed(0)
    model = small_net()
    config = Config().with_overrides({"train.epochs": 1, "train.progress": False,
                                      "data.batch_size": 16, "train.device": "cpu",
                                      "train.grad_clip": 1.0})
    trainer = Trainer(model, toy_data(), toy_data(), config,
                      components=[GradientDiagnostics(interval=1)], out_dir=tmp_path, verbose=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    first = next(model.parameters())
    first.register_hook(lambda g: g * float("inf"))  # as an fp16 gradient overflows
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = next(iter(trainer.train_loader))
    trainer.components[0].on_epoch_start(trainer.context, 0)
    assert trainer.train_step(x, y) is not None  # not counted as non-finite, not raised
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in before.items())
    assert trainer.scaler.get_scale() == 2.0 ** 15  # lowered by the backoff factor
    assert read_gradients(tmp_path) == []


def test_resume_keeps_the_records_up_to_the_checkpoint(tmp_path):
    lines = [{"epoch": 1, "iteration": i, "norms": {"a": 1.0}, "first_layer_hist": {}} for i in (1, 5, 9)]
    (tmp_path / "gradients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    diagnostics = GradientDiagnostics(interval=4)
    diagnostics.on_epoch_start(SimpleNamespace(run_dir=tmp_path, iteration=6), 1)
    assert [r["iteration"] for r in read_gradients(tmp_path)] == [1, 5]
    fresh = GradientDiagnostics(interval=4)
    fresh.on_epoch_start(SimpleNamespace(run_dir=tmp_path, iteration=0), 0)
    assert read_gradients(tmp_path) == []


def test_bad_input_is_explained(tmp_path):
    with pytest.raises(UserError, match="gradient_interval"):
        GradientDiagnostics(interval=0)
    with pytest.raises(UserError, match="does not exist"):
        read_gradients(tmp_path)
    (tmp_path / "gradients.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        read_gradients(tmp_path)


def test_histogram_picks_skip_the_initial_record():
    assert histogram_picks(1) == [0]
    assert histogram_picks(2) == [1]
    assert histogram_picks(21) == [2, 10, 20]


def test_plot_gradients_cli_draws_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    runs = []
    for k in range(2):
        run = tmp_path / f"run{k}"
        run.mkdir()
        records = [{"epoch": 1, "iteration": 1 + 5 * i,
                    "norms": {"a": 0.1 * (k + 1) / (i + 1), "b": 1.0, "c": 2.0},
                    "first_layer_hist": gradient_histogram(torch.randn(50) / (i + 1), 7)}
                   for i in range(4)]
        (run / "gradients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append(str(run))
    out = tmp_path / "plots" / "grads.png"
    assert main(["plot-gradients", *runs, "--out", str(out)]) == 2  # no folders are made
    out.parent.mkdir()
    assert main(["plot-gradients", *runs, "--out", str(out), "--label", "a", "--label", "b"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-gradients", *runs, "--out", str(out), "--label", "a"]) == 2  # one label short
    proc = subprocess.run([sys.executable, "-m", "spikegrad", "plot-gradients", str(tmp_path / "none"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def _records(iterations, hist=True):
    return [{"iteration": i, "norms": {"a": 1.0}, **({"first_layer_hist": {"edges": [-1, 1],
                                                                         "counts": [1]}} if hist else {})}
            for i in iterations]


def test_histograms_are_compared_at_iterations_every_run_recorded():
    from spikegrad.gradient_plots import histogram_iterations, nearest_record, shared_limits

    every_5, every_10 = _records(range(0, 101, 5)), _records(range(0, 201, 10))
    # common: 0, 10, ..., 100 (11 records) -> picks 1, 5, 10 of them
    assert histogram_iterations([every_5, every_10]) == ([10, 50, 100], True)
    # nothing in common: the picks of the run with the fewest records, each run's nearest one
    picks, same = histogram_iterations([_records(range(1, 100, 2)), _records(range(0, 100, 10))])
    assert not same and picks == [10, 40, 90]
    assert nearest_record(_records(range(1, 100, 2)), 40)["iteration"] == 39  # earlier on ties
    assert nearest_record(_records([1, 2], hist=False), 1) is None
    # one run of 9 records 3, 10, ..., 59: histogram_picks(9) = records 1, 4, 8
    assert histogram_iterations([_records(range(3, 60, 7))]) == ([10, 31, 59], True)
    assert shared_limits([0.2, 0.05, 0.001]) == [pytest.approx(0.21), pytest.approx(0.21), None]
    assert shared_limits([0.2, 0.0199]) == [pytest.approx(0.21), None]  # just over 10x narrower


def test_plot_gradients_colours_by_iteration_with_one_colour_bar(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from spikegrad.gradient_plots import plot_gradients

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    runs = []
    for k, step in enumerate((5, 10)):
        run = tmp_path / f"run{k}"
        run.mkdir()
        records = [{"epoch": 1, "iteration": i, "norms": {"a": 1.0 + i, "b": 2.0},
                    "first_layer_hist": gradient_histogram(torch.randn(50), 7)}
                   for i in range(0, 41, step)]
        (run / "gradients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append(run)
    plot_gradients(runs, tmp_path / "g.png")
    (fig,) = saved
    colorbar = [ax for ax in fig.axes if ax.get_ylabel() == "iteration (early → late)"]
    assert len(colorbar) == 1 and colorbar[0].get_ylim() == (0, 40)
    norm_axes = [ax for ax in fig.axes if ax.get_xlabel() == "weight layer (input → output)"]
    # iteration 40 has the same colour in both columns
    last = [ax.get_lines()[-1].get_color() for ax in norm_axes]
    assert last[0] == last[1]
    hist_axes = [ax for ax in fig.axes if ax.get_xlabel().startswith("first-layer weight gradient")]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in hist_axes]
    assert legends[0] == legends[1] == ["iteration 10", "iteration 20", "iteration 40"]
