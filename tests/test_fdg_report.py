"""`spikegrad fdg`: error bars over probe batches, sweeps extended past an optimum at their end."""

import json

import pytest
import torch

from spikegrad import surrogates
from spikegrad.alignment import alignment_sweep, probe_batch, surrogate_gradients
from spikegrad.alignment_report import (
    Probe,
    analyse_checkpoint,
    edge,
    format_report,
    mean_and_spread,
    sweep_probes,
)
from spikegrad.cli import main
from spikegrad.data import build_datasets
from spikegrad.fdg import finite_difference_gradient, resolve_layer, sample_weight_indices
from spikegrad.losses import mean_logit_cross_entropy
from spikegrad.run import train
from tests.test_fdg import batch, calibrated, spiking_cnn
from tests.test_trainer import tiny_config


def test_mean_and_sample_standard_deviation_by_hand():
    assert mean_and_spread([0.5]) == (0.5, 0.0)
    mean, std = mean_and_spread([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(((0.09 + 0.01 + 0.16) / 2) ** 0.5)  # n - 1 = 2


def test_edge_says_where_the_best_lies():
    assert edge([1, 2, 4], [0.3, 0.2, 0.1]) == -1
    assert edge([1, 2, 4], [0.1, 0.2, 0.3]) == 1
    assert edge([1, 2, 4], [0.1, 0.3, 0.2]) == 0
    assert edge([4, 1, 2], [0.1, 0.3, 0.2]) == -1  # by value, not by position
    assert edge([3.0], [0.9]) == 0
    assert edge([1, 2, 4], [0.4243, 0.4241, 0.41]) == 0  # a plateau (0.0002 < FLAT), not rising
    assert edge([1, 2, 4], [0.4243, 0.4241, 0.41], flat=1e-4) == -1


def _sigmoid_truth(model, layer, x, y, alpha):
    neurons = [m for m in model.modules() if hasattr(m, "surrogate")]
    (g,) = surrogate_gradients(model, layer, x, y, [dict.fromkeys(neurons, surrogates.Sigmoid(alpha))])
    return g


def test_a_best_at_the_end_extends_the_sweep_until_it_lies_inside():
    x, y = batch()
    model = calibrated(spiking_cnn(), x)
    layer = resolve_layer(model)[1]
    indices = torch.arange(layer.weight.numel())
    # stand-in "true" gradient: sigmoid at alpha = 16, outside the sweep 2, 4, 8 (default 4, range 2)
    probe = Probe(x, y, _sigmoid_truth(model, layer, x, y, 16.0))
    sweep = sweep_probes(model, layer, [probe], indices, ["sigmoid"], points=3, factor=2.0, extend=4)
    values = [p.sharpness for p in sweep.points]
    assert values == pytest.approx([2.0, 4.0, 8.0, 16.0, 32.0])  # 16 is best, 32 shows it is a peak
    assert sweep.points[3].similarity == pytest.approx(1.0)
    assert sweep.extended == ["sigmoid"] and sweep.at_edge == []
    short = sweep_probes(model, layer, [probe], indices, ["sigmoid"], points=3, factor=2.0, extend=1)
    assert [p.sharpness for p in short.points] == pytest.approx([2.0, 4.0, 8.0, 16.0])
    assert short.at_edge == ["sigmoid"]  # still at the end: flagged
    assert "best still at an end of the sweep" in format_report(_report(short))
    off = sweep_probes(model, layer, [probe], indices, ["sigmoid"], points=3, factor=2.0, extend=0)
    assert len(off.points) == 3 and off.at_edge == ["sigmoid"] and off.extended == []
    # an extension point is what alignment_sweep gives at that value
    (row,) = [p for p in alignment_sweep(model, layer, x, y, probe.fdg, indices, ["sigmoid"], 1, 1.0)
              if p.sharpness == 4.0]
    assert sweep.points[1].similarity == pytest.approx(row.similarity)


def test_points_are_means_over_probes_with_their_spread():
    x1, y1 = batch(seed=0)
    x2, y2 = batch(seed=1)
    model = calibrated(spiking_cnn(), torch.cat([x1, x2]))
    layer = resolve_layer(model)[1]
    indices = torch.arange(0, layer.weight.numel(), 2)
    probes = [Probe(x1, y1, _sigmoid_truth(model, layer, x1, y1, 4.0)[indices]),
              Probe(x2, y2, _sigmoid_truth(model, layer, x2, y2, 2.0)[indices])]
    sweep = sweep_probes(model, layer, probes, indices, ["sigmoid", "atan"], points=3, factor=2.0,
                         extend=0)
    for i, point in enumerate(sweep.points):
        each = [next(r.similarity for r in alignment_sweep(model, layer, p.inputs, p.targets, p.fdg,
                                                              indices, [point.surrogate], 3, 2.0)
                     if r.sharpness == point.sharpness) for p in probes]
        assert sweep.similarities[i] == pytest.approx(each)
        assert (point.similarity, sweep.spread[i]) == pytest.approx(mean_and_spread(each))
    assert max(sweep.spread) > 0


def _report(sweep):
    from spikegrad.alignment_report import AlignmentReport

    return AlignmentReport("c.pt", "layer", 10, 10, 10, 1.0, 0.1, 8, "train", 0, 1.0, sweep.points,
                           batches=1, spread=sweep.spread, similarities=sweep.similarities,
                           extended=sweep.extended, at_edge=sweep.at_edge)


@pytest.fixture(scope="module")
def adaptive_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fdg") / "run"
    train(tiny_config(**{"train.epochs": 2, "dspike.adaptive": True, "dspike.num_weights": 8,
                         "dspike.batch_size": 16}), folder, verbose=False)
    return folder / "last.pt"


def test_checkpoint_analysis_repeats_the_fdg_on_each_probe_batch(adaptive_checkpoint):
    report = analyse_checkpoint(adaptive_checkpoint, num_weights=12, batch_size=16, points=3,
                                names=["dspike"], batches=2, extend=0, seed=5)
    assert report.batches == 2 and len(report.points) == 3
    assert report.bn_mode == "train"  # dspike.bn_mode's default: batch norm as in training
    # by hand: probe batches of seeds 5 and 6, the weights of seed 5, batch norm in train mode
    from spikegrad.checkpoint import load_model
    from spikegrad.config import Config, from_dict

    model, payload = load_model(adaptive_checkpoint)
    config = from_dict(Config, payload["config"])
    train_set = build_datasets(config.data.name)[0]
    layer = resolve_layer(model)[1]
    indices = sample_weight_indices(layer.weight.numel(), 12, torch.Generator().manual_seed(5))
    eps = float(layer.weight.detach().pow(2).mean().sqrt())
    for k, seed in enumerate((5, 6)):
        x, y = probe_batch(model, train_set, 16, seed)
        fdg = finite_difference_gradient(model, layer, x, y, eps, indices, mean_logit_cross_entropy,
                                         bn_mode="train")
        rows = alignment_sweep(model, layer, x, y, fdg, indices, ["dspike"], 3, 8.0, bn_mode="train")
        assert [r.similarity for r in rows] == pytest.approx([s[k] for s in report.similarities])
    assert report.run_temperatures == {"model": payload["components"]["dspike"]["temperatures"]["model"]}
    assert "mean ± std over 2 probe batches" in format_report(report)


def test_fdg_cli_plots_error_bars_and_the_runs_temperature(adaptive_checkpoint, tmp_path, capsys,
                                                           monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or original(fig, *a, **k))
    out = tmp_path / "fdg"
    assert main(["fdg", str(adaptive_checkpoint), "--num-weights", "8", "--batch-size", "16",
                 "--points", "3", "--range", "2", "--surrogates", "dspike,sigmoid", "--batches", "2",
                 "--extend", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["batches"] == 2 and len(report["spread"]) == len(report["points"])
    assert all(len(s) == 2 for s in report["similarities"])
    assert "± std" in printed
    (fig,) = saved
    dspike_ax = next(ax for ax in fig.axes if ax.get_title() == "dspike")
    labels = dspike_ax.get_legend_handles_labels()[1]
    assert any(label.startswith("run ended at") for label in labels)
    (bars,) = dspike_ax.containers  # the error bars: ± std of each point
    segments = bars.lines[2][0].get_segments()
    dspike_spread = [s for p, s in zip(report["points"], report["spread"], strict=True)
                     if p["surrogate"] == "dspike"]
    assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([2 * s for s in dspike_spread])
    assert max(dspike_spread) > 0
    from spikegrad.alignment_report import read_report

    again = read_report(out.with_suffix(".json"))
    assert again.to_dict() == report and again.points[0].surrogate == "dspike"
    assert main(["fdg", str(adaptive_checkpoint), "--batches", "0"]) == 2
    assert "--batches must be >= 1" in capsys.readouterr().err
