"""data.subset and data.validation: seeded stratified cuts of the training set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from spikegrad import run
from spikegrad.build import datasets_from_config
from spikegrad.cli import main
from spikegrad.config import Config, load_config
from spikegrad.data import build_datasets, from_config
from spikegrad.data.splits import allocate, dataset_labels, split_training_set, stratified_cut
from spikegrad.errors import UserError
from spikegrad.trainer import Trainer


def _labelled(counts: list[int]) -> TensorDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    labels = labels[perm]
    return TensorDataset(torch.arange(len(labels)).float().unsqueeze(1), labels)


def test_allocation_by_largest_remainder():
    # quotas 2.5, 1.5, 1.0: floors 2, 1, 1, the one left over to the lower of the tied classes
    assert allocate(np.array([5, 3, 2]), 5).tolist() == [3, 1, 1]
    assert allocate(np.array([5, 3, 2]), 10).tolist() == [5, 3, 2]
    assert allocate(np.array([6, 3, 1]), 3).tolist() == [2, 1, 0]  # 1.8, 0.9, 0.3
    assert allocate(np.array([4, 4]), 0).tolist() == [0, 0]


def test_validation_is_disjoint_stratified_and_seeded():
    counts = [40, 25, 10, 5]
    data = _labelled(counts)
    train, val = split_training_set(data, validation=0.2, seed=0)
    t, v = np.array(train.indices), np.array(val.indices)
    assert len(v) == 16 and len(t) == 64
    assert not set(t) & set(v) and sorted(np.concatenate([t, v]).tolist()) == list(range(80))
    labels = data.tensors[1].numpy()
    assert np.bincount(labels[v], minlength=4).tolist() == [8, 5, 2, 1]  # 20% of each class
    again_t, again_v = split_training_set(data, validation=0.2, seed=0)
    assert again_v.indices == val.indices and again_t.indices == train.indices
    _, other = split_training_set(data, validation=0.2, seed=1)
    assert other.indices != val.indices and len(other.indices) == 16
    assert torch.equal(val[0][0], data[v[0]][0])  # views of the training samples


def test_subset_is_stratified_and_cut_before_validation():
    counts = [50, 30, 20]
    data = _labelled(counts)
    labels = data.tensors[1].numpy()
    small, none = split_training_set(data, subset=10, seed=0)
    assert none is None and len(small) == 10
    assert np.bincount(labels[small.indices]).tolist() == [5, 3, 2]
    train, val = split_training_set(data, subset=10, validation=0.2, seed=0)
    assert len(val) == 2 and len(train) == 8
    assert set(train.indices) | set(val.indices) == set(small.indices)  # the same subset, then split
    everything, _ = split_training_set(data, subset=1000, seed=0)  # at most: all of it
    assert len(everything) == 100
    same, nothing = split_training_set(data)
    assert same is data and nothing is None


def test_bad_values_are_refused():
    data = _labelled([5, 5])
    for value in (1.0, -0.5, True, "0.1"):
        with pytest.raises(UserError, match=r"data\.validation must be a fraction 0 < v < 1 of the "
                           r"training set to hold out for validation \(e\.g\. 0\.1\), or 0 to evaluate on "
                           r"the test set"):
            split_training_set(data, validation=value)
    with pytest.raises(UserError, match=r"data\.validation=0\.01 of 10 training samples holds out 0"):
        split_training_set(data, validation=0.01)
    with pytest.raises(UserError, match=r"data\.subset must be a positive number"):
        split_training_set(data, subset=0)
    # a fraction strictly inside (0, 1), or 0 for none: all held out would leave no training
    for value in ("1.5", "1.0", "1", "-0.1", "-1e-9"):
        with pytest.raises(UserError, match=r"^config key 'data\.validation': must be a fraction 0 < v < 1 "
                           r"of the training set to hold out for validation \(e\.g\. 0\.1\), or 0 to "
                           r"evaluate on the test set; got "):
            load_config(None, [f"data.validation={value}"])
    for value in ("true", "0.1x", ".nan", ".inf"):
        with pytest.raises(UserError, match=r"'data\.validation' must be a (finite )?number"):
            load_config(None, [f"data.validation={value}"])
    assert load_config(None, ["data.validation=0"]).data.validation == 0.0
    assert load_config(None, ["data.validation=0.999"]).data.validation == 0.999
    with pytest.raises(UserError, match=r"'data\.subset' must be > 0"):
        load_config(None, ["data.subset=0"])
    with pytest.raises(UserError, match=r"'data\.subset' must be"):
        load_config(None, ["data.subset=0.5"])
    with pytest.raises(UserError, match=r"one integer label per sample"):
        dataset_labels(TensorDataset(torch.zeros(4, 1), torch.zeros(4)))


class _Labelled(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.zeros(1), torch.tensor(i % 3)


def test_labels_of_every_kind_of_dataset():
    train, _, _ = build_datasets("digits")
    assert dataset_labels(train).tolist() == train.tensors[1].tolist()
    assert dataset_labels(Subset(train, [5, 2])).tolist() == [int(train[5][1]), int(train[2][1])]
    assert dataset_labels(_Labelled()).tolist() == [0, 1, 2, 0, 1, 2]
    taken, rest = stratified_cut(dataset_labels(_Labelled()), 3, seed=0, stream=0)
    assert sorted(np.array([0, 1, 2, 0, 1, 2])[taken].tolist()) == [0, 1, 2] and len(rest) == 3


class _Untouchable(Dataset):
    """A test set that fails if anything reads it."""

    def __len__(self):
        return 364

    def __getitem__(self, i):
        raise AssertionError("the test set was read")


def test_a_validation_run_never_reads_the_test_set(monkeypatch, tmp_path, capsys):
    real = from_config.build_datasets

    def fake(name, **options):
        train, _, info = real(name, **options)
        return train, _Untouchable(), info

    monkeypatch.setattr(from_config, "build_datasets", fake)
    config = Config().with_overrides({
        "data.validation": 0.25, "data.subset": 400, "data.split_seed": 5, "train.epochs": 1,
        "train.threads": 1, "model.width": 0.25, "model.T": 2, "train.progress": False,
        "diagnostics.gradient_interval": 0, "analysis.monitors": False})
    parts = run.build_parts(config)
    assert parts.eval_split == "validation" and len(parts.test_set) == 100 and len(parts.train_set) == 300
    base = parts.train_set.dataset
    assert parts.test_set.dataset is base  # cut from the training set
    assert not set(parts.train_set.indices) & set(parts.test_set.indices)
    other_seed = run.build_parts(config.with_overrides({"train.seed": 7}))
    assert other_seed.test_set.indices == parts.test_set.indices  # the split ignores train.seed
    other_split = run.build_parts(config.with_overrides({"data.split_seed": 6}))
    assert other_split.test_set.indices != parts.test_set.indices
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, out_dir=tmp_path, verbose=False,
                      model_args=parts.model_args)
    summary = trainer.fit()
    assert summary["eval_split"] == "validation" and 0 <= summary["final_test_acc"] <= 1
    assert json.loads((tmp_path / "summary.json").read_text())["eval_split"] == "validation"
    # every other caller gets the same datasets from the build layer: eval measures the same split
    train_set, eval_set, _ = datasets_from_config(config.data)
    assert (train_set.indices, eval_set.indices) == (parts.train_set.indices, parts.test_set.indices)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "last.pt"), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["test_acc"] == summary["final_test_acc"]
    assert main(["eval", str(tmp_path / "last.pt"), "--device", "cpu"]) == 0  # the text says so too
    assert "validation split of 100 samples" in capsys.readouterr().out
    monkeypatch.undo()
    plain = run.build_parts(Config())
    assert plain.eval_split == "test" and len(plain.test_set) == 364
    plain_trainer = Trainer(plain.model, plain.train_set, plain.test_set, Config())
    assert plain_trainer.summary(0.0)["eval_split"] == "test"


def test_the_report_marks_validation_accuracy():
    from pathlib import Path

    from spikegrad.report import Run, _summary_table

    summary = {"final_test_acc": 0.5, "best_test_acc": 0.6, "eval_split": "validation"}
    table = _summary_table([Run(Path("a"), "a", summary=summary),
                            Run(Path("b"), "b", summary={**summary, "eval_split": "test"})])
    assert table.count("50.00% (validation)") == 1 and "50.00%</td>" in table


def test_a_split_seed_without_a_cut_to_seed_is_refused_for_training():
    """Training refuses a seed with no cut to seed; evaluating a stored run with
    ``--set data.validation=0`` (its test set) keeps the run's seed and is not refused."""
    seeded = Config().with_overrides({"data.name": "digits", "data.split_seed": 3, "model.width": 0.25})
    with pytest.raises(UserError, match=r"data\.split_seed=3 does not apply without data\.subset or "
                                        r"data\.validation.*reset to the default \(data\.split_seed=0\)"):
        run.build_parts(seeded)
    for cut in ({"data.subset": 100}, {"data.validation": 0.2}):  # the seed seeds these
        run.build_parts(seeded.with_overrides(cut))
    datasets_from_config(seeded.data)  # what evaluation builds
