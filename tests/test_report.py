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
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tr')
    assert main(["report", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


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
    assert main(["eval", str(real_runs / "snn" / "last.pt"), "--analysis"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((real_runs / "snn" / "analysis.json").read_text())
    assert printed["analysis"]["totals"] == pytest.approx(stored["totals"])
    assert printed["analysis"]["neurons"].keys() == stored["neurons"].keys()
