"""experiments/dspike_search_study.py: a smoke run with tiny settings, and its analysis on hand-made
cosine matrices whose answers are worked out by hand."""

import itertools
import json
import math
import statistics

import pytest
import torch

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


# ------------------------------------------------------------------------- the analysis on hand-made inputs

TEMPS = [2.0, 2.5, 3.0, 3.5, 4.0]  # the search from b = 3 has candidates 2.5, 3, 3.5: columns 1, 2, 3
C = [[0.9, 0.1, 0.2, 0.4, -0.5],  # the cosine s[n, b] of batch n (rows) at temperature b (columns)
     [-0.2, 0.5, 0.3, 0.2, 0.0],
     [0.0, 0.0, 0.4, 0.1, 0.3],
     [0.1, 0.2, 0.1, 0.6, 0.7]]
SIZES = [1.0, 2.0, 3.0, 4.0]  # |FDG| of each batch


def hand_measurements(c=C):
    """Two pool weights. FDG of batch n: (a_n, 0); surrogate gradient at b_j: a positive multiple
    of (c, sqrt(1 - c²)), so cos(FDG, gradient) = c[n][j] exactly."""
    fdg = torch.tensor([[a, 0.0] for a in SIZES], dtype=torch.float64)
    grads = torch.tensor([[[(j + 1) * v, (j + 1) * math.sqrt(1 - v * v)] for j, v in enumerate(row)]
                          for row in c], dtype=torch.float64)
    return fdg, grads


def hand_settings(**kwargs):
    return study.Settings(temperatures=TEMPS, b=3.0, delta=0.5, epsilons=[0.5, 1.0], epsilon=1.0, **kwargs)


def test_mean_std_se_and_counts_match_hand_values():
    stat = study.mean_std_se([1.0, 2.0, 3.0, 4.0])  # sample variance (2.25+0.25+0.25+2.25)/3 = 5/3
    assert stat["mean"] == 2.5 and stat["n"] == 4 and stat["min"] == 1.0 and stat["max"] == 4.0
    assert stat["std"] == pytest.approx(math.sqrt(5 / 3))
    assert stat["se"] == pytest.approx(math.sqrt(5 / 3) / 2)
    one = study.mean_std_se([0.3])
    assert one["std"] == 0.0 and math.isnan(one["se"])
    assert study.counts([3.0, 2.5, 3.0, 3.5, 3.0]) == {"2.5": 1, "3": 3, "3.5": 1}


def test_cosines_on_all_weights_and_on_a_subset_per_batch():
    fdg, grads = hand_measurements()
    assert torch.allclose(study.cosines(fdg, grads), torch.tensor(C, dtype=torch.float64))
    fdg = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    grads = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]],
                          [[0.0, 1.0, 0.0], [0.0, -3.0, 1.0]]], dtype=torch.float64)
    r = 1 / math.sqrt(2)
    assert torch.allclose(study.cosines(fdg, grads), torch.tensor([[r, -r], [1.0, -3 / math.sqrt(10)]],
                                                                  dtype=torch.float64))
    subset = torch.tensor([[0, 1], [1, 2]])  # batch 0: weights 0 and 1; batch 1: weights 1 and 2
    expected = torch.tensor([[1.0, 0.0], [1.0, -3 / math.sqrt(10)]], dtype=torch.float64)
    assert torch.allclose(study.cosines(fdg, grads, subset), expected)


def test_search_draws_take_the_candidate_columns_and_count_the_choices():
    fdg, grads = hand_measurements()
    s, g = hand_settings(), torch.Generator().manual_seed(0)
    # all four batches, both weights: the mean cosines at 2.5, 3, 3.5 are 0.2, 0.25, 0.325
    paper = study.search_draws(fdg, grads, TEMPS, s, m=4, k=2, draws=20, rule="paper", generator=g)
    assert paper["chosen"] == {"3.5": 20} and paper["p_stay"] == 0 and paper["p_agree"] == 1
    # significant: paired differences from b = 3 are (-0.1, 0.2, -0.4, 0.1) for 2.5 and
    # (0.2, -0.1, -0.3, 0.5) for 3.5: means -0.05 and 0.075, below their SEs 0.1323 and 0.175
    sig = study.search_draws(fdg, grads, TEMPS, s, m=4, k=2, draws=20, rule="significant", generator=g)
    assert sig["chosen"] == {"3": 20} and sig["p_stay"] == 1 and sig["p_agree"] == 1
    assert sig["se_of_difference"] == pytest.approx(math.sqrt(0.07) / 2)  # SE of 2.5 minus 3
    # 3.5 better than 3 on every batch, by 0.1 or 0.2: the significant rule moves
    better = [[0.0, 0.1, 0.2, 0.3, 0.0], [0.0, 0.1, 0.3, 0.5, 0.0], [0.0, 0.2, 0.1, 0.2, 0.0],
              [0.0, 0.0, 0.4, 0.6, 0.0]]
    moved = study.search_draws(*hand_measurements(better), TEMPS, s, m=4, k=2, draws=10, rule="significant",
                               generator=g)
    assert moved["chosen"] == {"3.5": 10} and moved["p_stay"] == 0
    # one batch a draw: it chooses 3.5 (batches 0, 3), 2.5 (batch 1) or 3 (batch 2)
    one = study.search_draws(fdg, grads, TEMPS, s, m=1, k=2, draws=400, rule="paper", generator=g)
    assert set(one["chosen"]) == {"2.5", "3", "3.5"} and sum(one["chosen"].values()) == 400
    p = {b: n / 400 for b, n in one["chosen"].items()}
    assert p["3.5"] == pytest.approx(0.5, abs=0.08) and p["2.5"] == pytest.approx(0.25, abs=0.07)
    assert one["p_stay"] == p["3"]
    assert one["p_agree"] == pytest.approx(sum(v * v for v in p.values()))
    assert one["se_of_difference"] is None


def test_analyse_mode_on_a_known_cosine_matrix():
    fdg, grads = hand_measurements()
    # (b): batch 0 at ε = 0.5, 1: (1, 0), (1, 1); batch 1: (0, 2), (0, 1)
    eps_fdg = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 1.0]]], dtype=torch.float64)
    meas = {"fdg": fdg, "grads": grads, "eps_fdg": eps_fdg}
    res = study.analyse_mode(meas, torch.tensor([0, 1]), hand_settings(), draws=50, ks=[2], ms=[1, 4])
    assert res["probed"] == 2
    col_means = [0.2, 0.2, 0.25, 0.325, 0.125]
    for b, mean in zip(TEMPS, col_means, strict=True):
        assert res["cosine_per_temperature"][f"{b:g}"]["mean"] == pytest.approx(mean)
    assert res["cosine_per_temperature"]["3"]["std"] == pytest.approx(statistics.stdev([0.2, 0.3, 0.4, 0.1]))
    assert res["best_b_per_batch"] == {"2": 1, "2.5": 1, "3": 1, "4": 1}
    assert res["best_b_of_mean"] == 3.5
    diff = res["difference_from_b"]  # column minus the column of b = 3, batch by batch
    assert diff["3"]["mean"] == 0 and diff["3"]["std"] == 0
    assert diff["2.5"]["mean"] == pytest.approx(-0.05)
    assert diff["2.5"]["se"] == pytest.approx(math.sqrt(0.07) / 2)
    assert diff["4"]["mean"] == pytest.approx((-0.7 - 0.3 - 0.1 + 0.6) / 4)
    assert res["span_per_batch"]["mean"] == pytest.approx((1.4 + 0.7 + 0.4 + 0.6) / 4)
    assert res["nonzero_fdg_fraction"] == 0.5
    assert res["fdg_norm"]["mean"] == pytest.approx(2.5)
    # every FDG points along (1, 0): batch-to-batch cosine 1 for any m; surrogate at b = 3 (column 2):
    # cos between (c_i, sqrt(1 - c_i²)) and (c_k, ...) = c_i c_k + sqrt((1 - c_i²)(1 - c_k²))
    assert set(res["batch_to_batch_cosine"]) == {"1"} and res["batch_to_batch_cosine"]["1"]["mean"] == 1
    assert res["fdg_batch_to_batch_cosine_all_pairs"]["mean"] == pytest.approx(1)
    at_b = [row[2] for row in C]
    pairs = [x * y + math.sqrt((1 - x * x) * (1 - y * y)) for x, y in itertools.combinations(at_b, 2)]
    assert res["surrogate_batch_to_batch_cosine"]["mean"] == pytest.approx(statistics.fmean(pairs))
    assert res["batch_to_batch_cosine_vs_k"]["2"]["mean"] == pytest.approx(1)
    assert [(r["rule"], r["m"], r["k"]) for r in res["searches"]] == [
        ("paper", 1, 2), ("paper", 4, 2), ("significant", 4, 2)]
    assert res["searches"][1]["chosen"] == {"3.5": 50} and res["searches"][2]["chosen"] == {"3": 50}
    small, large = res["epsilon"]
    assert small["epsilon"] == 0.5 and "cos_with_half" not in small
    assert small["nonzero_fraction"] == 0.5 and small["norm"] == pytest.approx(1.5)
    assert small["batch_to_batch_cosine"] == 0  # (1, 0) against (0, 2)
    # cosines with the gradients: batch 0 (1, 0) -> c[0][j]; batch 1 (0, 2) -> sqrt(1 - c[1][j]²)
    mean_cos = [(C[0][j] + math.sqrt(1 - C[1][j] ** 2)) / 2 for j in range(len(TEMPS))]
    assert small["best_b_of_mean"] == 2.0 and small["cosine_at_best"] == pytest.approx(max(mean_cos))
    assert small["cosine_at_b"] == pytest.approx(mean_cos[2])
    assert small["best_b_per_batch"] == [2.0, 4.0]
    r = 1 / math.sqrt(2)
    assert large["nonzero_fraction"] == 0.75 and large["norm"] == pytest.approx((math.sqrt(2) + 1) / 2)
    assert large["cos_with_half"] == pytest.approx((r + 1) / 2)  # (1, 1)·(1, 0); (0, 1)·(0, 2)
    assert large["rel_diff_with_half"] == pytest.approx((r + 1) / 2)  # |(0, 1)|/√2; |(0, -1)|/1
    assert large["cos_with_half_averaged"] == pytest.approx(1)  # (0.5, 1) both
    assert large["batch_to_batch_cosine"] == pytest.approx(r)


def test_analyse_compares_eval_with_train_mode_batch_by_batch():
    fdg, grads = hand_measurements()
    s = hand_settings(modes=["eval", "train"])
    meas = {"epsilon_subset": torch.tensor([0, 1]),
            "eval": {"fdg": fdg, "grads": grads, "eps_fdg": None},
            "train": {"fdg": -2 * fdg, "grads": grads.flip(0), "eps_fdg": None}}
    modes = study.analyse(meas, s, draws=5, ks=[2], ms=[1])["modes"]
    assert modes["fdg_eval_vs_train"]["mean"] == pytest.approx(-1)
    assert modes["fdg_norm_ratio_eval_over_train"]["mean"] == pytest.approx(0.5)  # eval over train
    at_b = [row[2] for row in C]  # train has the batches' surrogate gradients in reverse order
    pairs = [x * y + math.sqrt((1 - x * x) * (1 - y * y)) for x, y in zip(at_b, at_b[::-1], strict=True)]
    assert modes["surrogate_eval_vs_train"]["mean"] == pytest.approx(statistics.fmean(pairs))
