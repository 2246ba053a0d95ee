"""Smoke test of experiments/dspike_search_study.py with tiny settings."""

import json

import pytest

from experiments import dspike_search_study as study
from spikegrad.errors import UserError

TINY = ["--batches", "3", "--batch-size", "8", "--pool", "6", "--epsilons", "0.5", "1",
        "--epsilon-batches", "2", "--epsilon-weights", "4", "--temperatures", "2.5", "3", "3.5",
        "--draws", "5", "--ks", "4", "6", "--ms", "1", "2", "--searches", "1"]


@pytest.mark.slow
def test_the_study_trains_measures_and_reports(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--out", str(out), "--models", "digits_cnn", "--set", "data.name=digits",
            "--set", "train.epochs=1", "--set", "model.width=0.25", "--set", "model.T=2", *TINY]
    result = study.main(args)
    assert (out / "models" / "digits_cnn" / "last.pt").exists()
    stored = json.loads((out / "study.json").read_text())
    assert stored["models"].keys() == {"digits_cnn"}
    model = stored["models"]["digits_cnn"]
    assert model["data"] == "digits" and model["probed"] == 6 and model["layer"] == "features.0.0.module.0"
    for mode in ("eval", "train"):
        res = model["results"][mode]
        assert set(res["cosine_per_temperature"]) == {"2.5", "3", "3.5"}
        assert all(-1 <= v["mean"] <= 1 and v["n"] == 3 for v in res["cosine_per_temperature"].values())
        assert sum(res["best_b_per_batch"].values()) == 3
        assert [r["epsilon"] for r in res["epsilon"]] == [0.5, 1.0]
        assert "cos_with_half" in res["epsilon"][1] and "cos_with_half" not in res["epsilon"][0]
        searches = {(r["rule"], r["m"], r["k"]) for r in res["searches"]}
        assert searches == {("paper", 1, 4), ("paper", 1, 6), ("paper", 2, 4), ("paper", 2, 6),
                            ("significant", 2, 4), ("significant", 2, 6)}
        assert all(sum(r["chosen"].values()) == 5 for r in res["searches"])
        assert set(res["batch_to_batch_cosine"]) == {"1"}  # two disjoint halves of m batches need 2m <= 3
    assert set(model["results"]["modes"]) == {"fdg_eval_vs_train", "surrogate_eval_vs_train",
                                              "fdg_norm_ratio_eval_over_train"}
    text = (out / "study.md").read_text()
    assert "(a) cosine with the FDG per temperature" in text and "| train | significant | 2 | 6 |" in text
    assert (out / "study.png").stat().st_size > 10_000
    assert result["settings"]["pool"] == 6
    searches = model["searches"]  # (e): the trainer's own search, once per preset
    assert searches["paper"]["settings"]["rule"] == "paper"
    assert searches["paper"]["settings"]["probe_batches"] == 1
    assert searches["default"]["settings"]["rule"] == "significant"
    assert all(sum(row["chosen"].values()) == 1 for row in searches.values())
    assert "(e) the trainer's search" in text
    # a second run reuses the measurements and the trained model
    capsys.readouterr()
    again = study.main(["--checkpoint", f"digits_cnn={out / 'models' / 'digits_cnn' / 'last.pt'}",
                        "--out", str(out), *TINY])
    assert "reusing" in capsys.readouterr().out
    assert again["models"]["digits_cnn"]["results"] == result["models"]["digits_cnn"]["results"]


def test_the_study_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(UserError, match="unknown built-in model 'vgg'"):
        study.main(["--out", str(tmp_path), "--models", "vgg"])
    with pytest.raises(UserError, match="NAME=PATH"):
        study.main(["--out", str(tmp_path), "--checkpoint", "no-name"])
    with pytest.raises(UserError, match=r"--epsilon 1.0 must be one of --epsilons"):
        study.main(["--out", str(tmp_path), "--epsilons", "0.5", "2"])
