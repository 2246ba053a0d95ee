import numpy as np
import pytest
import torch

from spikegrad import models
from spikegrad.config import load_config
from spikegrad.data import DatasetInfo, build_augmentation, build_datasets
from spikegrad.data.digits import load_digits_arrays, stratified_split
from spikegrad.demo import recipe_path
from spikegrad.errors import UserError
from spikegrad.trainer import Trainer


def test_digits_split_is_fixed_stratified_and_disjoint():
    _, labels = load_digits_arrays()
    train, test = stratified_split(labels)
    assert len(train) + len(test) == len(labels) == 1797
    assert len(set(train) & set(test)) == 0
    assert (len(train), len(test)) == (1433, 364)
    for c in range(10):
        n = (labels == c).sum()
        assert (labels[test] == c).sum() == -(-n // 5)  # ceil(n/5) of each class
    again = stratified_split(labels)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])


def test_digits_dataset_tensors():
    train, _, info = build_datasets("digits")
    x, _ = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert info.num_classes == 10 and info.sample_shape == (1, 8, 8)
    with pytest.raises(UserError, match=r"has no option 'rot'.*did you mean 'root'"):
        build_datasets("digits", rot="x")
    with pytest.raises(UserError, match="unknown dataset 'digit'"):
        build_datasets("digit")


def test_crop_shifts_each_sample_by_at_most_the_padding():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    out = build_augmentation(["crop:2"])(x)
    assert out.shape == x.shape
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert out.flatten(1).sum(1).eq(1).all()  # the pixel survives (shift <= padding)
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # per-sample offsets


def test_time_major_batches_get_one_draw_per_sample():
    frames = torch.rand(4, 1, 2, 6, 6).repeat(1, 16, 1, 1, 1)  # (T, B, C, H, W), same at all t
    out = build_augmentation(["roll:2", "hflip"])(frames)
    assert out.shape == frames.shape
    # Every sample saw the same frames; a sample whose transform equals sample 0's at t = 0
    # must equal it at every t, and vice versa: one draw per sample, shared over time.
    for b in range(16):
        same = [torch.equal(out[t, b], out[t, 0]) for t in range(4)]
        assert len(set(same)) == 1
    assert not all(torch.equal(out[0, b], out[0, 0]) for b in range(16))


def test_roll_preserves_content_and_flip_mirrors():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    rolled = build_augmentation(["roll:2"])(x)
    for b in range(2):
        assert sorted(rolled[b].flatten().tolist()) == sorted(x[b].flatten().tolist())
    torch.manual_seed(0)
    flipped = build_augmentation(["hflip:1.0"])(x)
    assert torch.equal(flipped, x.flip(-1))


def test_unknown_augmentation_is_named():
    with pytest.raises(UserError, match="unknown augmentation 'cropp'"):
        build_augmentation(["cropp:4"])
    with pytest.raises(UserError, match="'hflip' takes a number"):
        build_augmentation(["hflip:x"])
    for p in ("2", "-0.5"):
        with pytest.raises(UserError, match=r"'hflip:.*': the flip probability must lie in \[0, 1\]"):
            build_augmentation([f"hflip:{p}"])


def test_a_dataset_folder_named_twice_is_refused():
    from spikegrad.build import datasets_from_config

    data = load_config(None, ["data.name=cifar10", "data.root=/a", "data.options={root: /b}"]).data
    with pytest.raises(UserError, match=r"data\.root and data\.options\.root both name"):
        datasets_from_config(data)
    info = DatasetInfo(10, (3, 8, 8))
    with pytest.raises(UserError, match="unknown AutoAugment policy 'imagenet'"):
        build_augmentation(["autoaugment:imagenet"], info)


def test_autoaugment_without_the_dataset_statistics_is_refused_with_the_fix():
    """Without the statistics it would clamp normalised samples to [0, 1]: refused, in the
    Python API's trainer too (``spikegrad train`` passes them)."""
    with pytest.raises(UserError, match=r"'autoaugment' works on pixel values.*build_augmentation"
                                        r"\(config.data.augment, info\)"):
        build_augmentation(["crop:4", "autoaugment"])
    train_set, test_set, info = build_datasets("digits")
    config = load_config(recipe_path("digits")).with_overrides({"data.augment": ["autoaugment"]})
    model = models.create("digits_cnn", width=0.25, T=2, in_channels=1, input_size=8)
    with pytest.raises(UserError, match=r"Trainer\(\.\.\., augment=\.\.\.\)"):
        Trainer(model, train_set, test_set, config, verbose=False)
    augment = build_augmentation(config.data.augment, info)
    assert Trainer(model, train_set, test_set, config, augment=augment, verbose=False).augment is augment
    # the shifts are checked against a sample's side on this path too, as spikegrad train does
    crop = config.with_overrides({"data.augment": ["crop:20"]})
    with pytest.raises(UserError, match=r"augmentation 'crop:20' takes a whole number of pixels in \[0, 8\]"):
        Trainer(model, train_set, test_set, crop, verbose=False)


def test_cluttered_digits_is_deterministic_and_split_by_source_digit():
    train_a, test_a, info = build_datasets("cluttered_digits", copies=1)
    train_b, _, _ = build_datasets("cluttered_digits", copies=1)
    assert torch.equal(train_a.tensors[0], train_b.tensors[0])
    assert info.sample_shape == (1, 16, 16) and info.num_classes == 10
    assert (len(train_a), len(test_a)) == (1433, 364)
    x = train_a.tensors[0]
    assert x.min() >= 0 and x.max() <= 1
    # labels follow the digits split: same class counts as the plain digits
    _, labels = load_digits_arrays()
    train_idx, _ = stratified_split(labels)
    assert torch.equal(train_a.tensors[1], torch.from_numpy(labels[train_idx]))
    with pytest.raises(UserError, match="min_size"):
        build_datasets("cluttered_digits", min_size=20)


def test_dataset_options_of_the_wrong_type_are_named():
    for name, options, match in [
        ("event_digits", {"T": 6.0}, r"'event_digits' option 'T' \(data\.options\.T\) must be int, got 6\.0"),
        ("event_digits", {"noise_rate": "abc"}, r"option 'noise_rate' .* must be float, got 'abc'"),
        ("cluttered_digits", {"copies": 2.5}, r"option 'copies' .* must be int, got 2\.5"),
        ("cifar10", {"download": "yes"}, r"option 'download' .* must be bool, got 'yes'"),
    ]:
        with pytest.raises(UserError, match=match):
            build_datasets(name, **options)


def test_image_augmentations_on_signals_name_data_augment():
    with pytest.raises(UserError, match=r"data\.augment's image augmentations take .* got shape "
                                        r"\(4, 1, 40\).*set data\.augment to \[\]"):
        build_augmentation(["hflip"])(torch.rand(4, 1, 40))
