import base64
import json
import re

import pytest

from spikegrad.cli import main
from spikegrad.report import find_runs, render_report, write_report
from spikegrad.run import train
from tests.conftest import require_peer
from tests.synthetic_runs import write_run
from tests.test_trainer import tiny_config

ALL_SECTIONS = ["Loss and accuracy", "Learning rate", "Dspike temperature and FDG similarity",
                "Shortcut back-propagation", "Gradients", "Local tandem learning",
                "Firing rates", "Synaptic operations and energy"]


def images(page: str) -> list[tuple[str, bytes]]:
    found = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']*)'>", page)
    return [(alt, base64.b64decode(data)) for alt, data in found]


def sections(page: str) -> list[str]:
    return re.findall(r"<h2>([^<]*)</h2>", page)


def test_report_of_synthetic_runs_has_every_section_and_embeds_its_pngs(tmp_path):
    write_run(tmp_path / "adaptive", "dspike-adaptive", seed=1, shortcut=False, ltl=False)
    write_run(tmp_path / "shortcut", "dspike+evolutionary", seed=2, dspike=False, ltl=False)
    write_run(tmp_path / "ltl", "ltl-offline", seed=3, dspike=False, shortcut=False)
    path = write_report([tmp_path])  # a folder of run folders expands
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert sections(page) == ["Summary", *ALL_SECTIONS]
    pngs = images(page)
    assert len(pngs) == 15
    assert all(data.startswith(b"\x89PNG") for _, data in pngs)
    assert "src='http" not in page and "<script" not in page  # self-contained
    for label in ("adaptive", "shortcut", "ltl", "dspike-adaptive", "ltl-offline"):
        assert label in page
    assert "membrane potential statistics per layer" in [alt for alt, _ in pngs]


def test_the_shortcut_section_shows_own_head_combined_and_branch_accuracy(tmp_path):
    write_run(tmp_path / "shortcut", "dspike+shortcut", dspike=False, ltl=False)
    page = render_report(find_runs([tmp_path / "shortcut"]))
    assert "shortcut lambda and head accuracies per epoch" in [alt for alt, _ in images(page)]
    assert ("Last epoch: shortcut: own head 83.8%, combined 88.8%, branches features.stem.act "
            "50.0%, features.layer1_0.act 55.0%.") in page


def test_sections_appear_only_when_their_data_exists(tmp_path):
    write_run(tmp_path / "plain", "dspike", dspike=False, shortcut=False, ltl=False,
              gradients=False, analysis=False)
    page = render_report(find_runs([tmp_path / "plain"]))
    assert sections(page) == ["Summary", "Loss and accuracy", "Learning rate", "Firing rates",
                              "Synaptic operations and energy"]  # sops per epoch in metrics
    assert "membrane" not in page


def test_report_cli_errors_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    bad = write_run(tmp_path / "bad", "dspike")
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tr\n{"epoch": 3}\n')  # damaged inside
    assert main(["report", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tr')  # a torn last line: left out
    assert main(["report", str(bad)]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """An SNN run (membrane statistics and TensorBoard on) and its ANN twin, one epoch each."""
    root = tmp_path_factory.mktemp("runs")
    snn = tiny_config(**{"analysis.membrane": True, "analysis.tensorboard": True})
    train(snn, root / "snn", verbose=False)
    train(tiny_config(**{"model.kind": "ann"}), root / "ann", verbose=False)
    return root


def test_training_writes_the_analysis_and_its_metrics(real_runs):
    row = json.loads((real_runs / "snn" / "metrics.jsonl").read_text().splitlines()[-1])
    detail = json.loads((real_runs / "snn" / "analysis.json").read_text())
    assert detail["epoch"] == 1 and detail["samples"] == 364
    assert row["firing_rates"] == {n: s["rate"] for n, s in detail["neurons"].items()}
    assert list(row["firing_rates"]) == ["features.0.1", "features.1.1", "features.2.1"]
    neurons = detail["neurons"].values()
    weighted = sum(s["rate"] * s["neurons"] for s in neurons) / sum(s["neurons"] for s in neurons)
    assert row["firing_rate"] == pytest.approx(weighted)
    for stats in neurons:
        assert len(stats["rate_per_step"]) == 2  # T = 2
        assert stats["rate"] == pytest.approx(sum(stats["rate_per_step"]) / 2)
        assert stats["membrane"]["min"] <= stats["membrane"]["mean"] <= stats["membrane"]["max"]
    synapses = detail["synapses"]
    assert synapses["features.0.0.0"]["input"] == "analog"  # the direct-encoded first layer
    assert all(s["input"] == "spikes" for n, s in synapses.items() if n != "features.0.0.0")
    totals = detail["totals"]
    assert row["sops"] == totals["sops"] and row["energy_uj"] == totals["energy_uj"]
    assert totals["energy_uj"] == pytest.approx(
        (0.9 * totals["sops"] + 4.6 * totals["macs"]) * 1e-6)
    ann = json.loads((real_runs / "ann" / "analysis.json").read_text())
    assert ann["neurons"] == {} and ann["totals"]["sops"] == 0
    assert ann["totals"]["macs"] == ann["totals"]["ann_macs"] == totals["ann_macs"]
    assert ann["totals"]["energy_ratio"] == pytest.approx(1.0)


def test_tensorboard_holds_the_same_scalars(real_runs):
    require_peer("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(real_runs / "snn" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    row = json.loads((real_runs / "snn" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "test_acc", "lr", "firing_rate", "sops"):
        (scalar,) = events.Scalars(key)
        assert scalar.step == 1 and scalar.value == pytest.approx(row[key], rel=1e-6)
    assert "firing_rates/features.1.1" in tags


def test_tensorboard_logs_gradient_records(tmp_path):
    require_peer("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spikegrad.tensorboard_log import TensorBoardLogger, scalar_items

    assert scalar_items({"epoch": 3, "a": 1, "d": {"x": 2.0, "n": float("nan")}, "s": "t"}) == [
        ("a", 1.0), ("d/x", 2.0)]
    run = write_run(tmp_path / "run", "dspike")
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log_gradients(run / "gradients.jsonl")
    logger.log_gradients(run / "gradients.jsonl")  # nothing new: nothing logged twice
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    norms = events.Scalars("grad_norm/features.stem.conv")
    assert [s.step for s in norms] == list(range(18))
    first = json.loads((run / "gradients.jsonl").read_text().splitlines()[0])
    assert norms[0].value == pytest.approx(first["norms"]["features.stem.conv"])
    assert "first_layer_grad" in events.Tags()["histograms"]


def test_report_of_real_runs(real_runs):
    path = write_report([real_runs / "snn", real_runs / "ann"], real_runs / "out" / "r.html")
    page = path.read_text()
    assert sections(page) == ["Summary", "Loss and accuracy", "Learning rate", "Gradients",
                              "Firing rates", "Synaptic operations and energy"]
    assert "1.00×" in page  # the ANN twin's energy ratio in the summary table
    assert len(images(page)) == 10  # gradients: every run writes gradients.jsonl


def test_eval_cli_prints_the_same_analysis_as_training(real_runs, capsys):
    assert main(["eval", str(real_runs / "snn" / "last.pt"), "--analysis", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((real_runs / "snn" / "analysis.json").read_text())
    assert printed["analysis"]["totals"] == pytest.approx(stored["totals"])
    assert printed["analysis"]["neurons"].keys() == stored["neurons"].keys()


# --------------------------------------------------------------------------- plots that compare


@pytest.fixture
def captured(monkeypatch):
    """The report's matplotlib figures, by alt text, instead of their PNGs."""
    from spikegrad import report

    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "")
    return figures


def _rewrite_metrics(folder, **changes):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key, fn in changes.items():
            row[key] = fn(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_equal_series_are_grouped_and_drawn_as_interleaved_dashes(tmp_path, captured):
    from spikegrad.report import _interleaved, coincident_groups

    for name in ("a", "b", "c"):
        write_run(tmp_path / name, "dspike", dspike=False, shortcut=False, ltl=False)
    _rewrite_metrics(tmp_path / "b", lr=lambda row: row["lr"] * (1 + 1e-12))  # equal to 1e-9
    _rewrite_metrics(tmp_path / "c", lr=lambda row: row["lr"] / 30)
    runs = find_runs([tmp_path])
    groups = coincident_groups(runs, "lr")
    assert [[r.label for r in g] for g in groups] == [["a", "b"], ["c"]]
    page = render_report(runs)
    assert "Equal schedules: a = b (drawn as one line" in page
    (lr_fig,) = [f for f in captured if f.axes[0].get_title().startswith("Learning rate")]
    ax = lr_fig.axes[0]
    assert ax.get_yscale() == "log"  # 30x apart
    dashes = [line.get_linestyle() for line in ax.get_lines()]
    assert dashes[2] == "-" and dashes[0] != "-" and dashes[1] != "-"
    # the k-th of n equal lines is "on" exactly on the k-th of every n dashes
    for n in (2, 3):
        d = 5.0
        for x in (0.1 + 0.37 * j for j in range(100)):
            on = [k for k in range(n)
                  if ((_interleaved(k, n, d)[0] + x) % (n * d)) < _interleaved(k, n, d)[1][0]]
            assert on == [int(x // d) % n]


def test_rate_heatmaps_share_one_colour_scale(tmp_path, captured):
    from spikegrad.report import shared_rate_scale

    write_run(tmp_path / "low", "dspike")
    write_run(tmp_path / "high", "dspike")
    detail = json.loads((tmp_path / "high" / "analysis.json").read_text())
    for stats in detail["neurons"].values():
        stats["rate_per_step"] = [3 * r for r in stats["rate_per_step"]]
    (tmp_path / "high" / "analysis.json").write_text(json.dumps(detail))
    runs = find_runs([tmp_path])
    top = shared_rate_scale(runs)
    assert top == pytest.approx(3 * (0.08 + 0.02 * 3 + 0.01 * 3))  # the highest rate anywhere
    render_report(runs)
    (fig,) = [f for f in captured if any(ax.images for ax in f.axes)]
    heatmaps = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2 and all(im.get_clim() == (0, top) for im in heatmaps)
    colorbars = [ax for ax in fig.axes if not ax.images]
    assert len(colorbars) == 1 and "one scale" in colorbars[0].get_ylabel()


def test_ann_operations_are_its_macs_on_the_log_axis_and_the_reference_stays_visible(real_runs, captured):
    from spikegrad.report import _REFERENCE, is_ann, operations_per_epoch

    runs = find_runs([real_runs / "snn", real_runs / "ann"])
    snn, ann = runs
    assert not is_ann(snn) and is_ann(ann)
    ann_macs = ann.analysis["totals"]["macs"]
    assert ann.series("sops")[1] == [0.0]  # what metrics.jsonl says for an ANN
    assert operations_per_epoch(ann) == ([1], [ann_macs], "MACs")
    assert operations_per_epoch(snn) == ([1], snn.series("sops")[1], "SOPs")
    page = render_report(runs)
    assert "operations and energy per epoch" in page
    (per_epoch,) = [f for f in captured if f.axes[0].get_title() == "Operations on the test set"]
    ops_ax, energy_ax = per_epoch.axes[:2]
    assert ops_ax.get_yscale() == "log" and energy_ax.get_yscale() == "log"
    ys = [list(line.get_ydata()) for line in ops_ax.get_lines()]
    assert [ann_macs] in ys and snn.series("sops")[1] in ys and not any(0.0 in y for y in ys)
    band = [line for line in ops_ax.get_lines() if line.get_linewidth() == _REFERENCE["lw"]]
    assert len(band) == 1 and list(band[0].get_ydata()) == [ann_macs] * 2  # one model: one band
    (per_layer,) = [f for f in captured if f.axes[0].get_title() == "Synaptic operations per layer"]
    ax = per_layer.axes[0]
    band = [line for line in ax.get_lines() if line.get_linewidth() == _REFERENCE["lw"]]
    expected = [s["ann_macs"] for s in ann.analysis["synapses"].values()]
    assert len(band) == 1 and list(band[0].get_ydata()) == expected
    # the ANN's own MACs line lies on the band but is drawn above it, thinner
    ann_line = [line for line in ax.get_lines() if list(line.get_ydata()) == expected and line not in band]
    assert ann_line and all(line.get_zorder() > band[0].get_zorder() and
                            line.get_linewidth() < band[0].get_linewidth() for line in ann_line)


def test_report_histograms_are_at_the_same_iterations_in_every_run(tmp_path, captured):
    write_run(tmp_path / "a", "dspike")
    write_run(tmp_path / "b", "dspike", epochs=4)  # fewer records: iterations 0..11
    render_report(find_runs([tmp_path]))
    (fig,) = [f for f in captured if f.axes[0].get_xlabel() == "first-layer weight gradient"]
    labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert labels[0] == labels[1]
    assert labels[0][-1].endswith("iteration 11")
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
