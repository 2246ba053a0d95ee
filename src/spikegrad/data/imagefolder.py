"""Tiny ImageNet 200 (official layout) and ImageNet (class folders), decoded from JPEG files.

Tiny ImageNet: ``data.root`` holds ``tiny-imagenet-200/`` (or its archive
``tiny-imagenet-200.zip``, MD5-checked and extracted safely) with

- ``wnids.txt``: the 200 class ids, one per line; a class's label is its line number;
- ``train/<wnid>/images/*.JPEG``: 500 training images per class, 64×64;
- ``val/val_annotations.txt``: ``<file>\\t<wnid>\\t<box>`` per line, images in ``val/images/``.

The labelled validation set (10,000 images) is the test split, as usual (the official test
images carry no labels). Samples are ``[3, 64, 64]``.

ImageNet: ``data.root`` holds ``train/<class>/*`` and ``val/<class>/*`` image files (the
validation images sorted into class folders); classes are the sorted folder names of
``train``. Training samples are random-resized crops of ``image_size``; test samples the
centre ``image_size`` crop after resizing the shorter side to ``resize``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from spikegrad.data._registry import DatasetInfo, register_dataset
from spikegrad.data.files import RemoteFile, fetch_and_extract, require_root
from spikegrad.data.images import (
    ImageFileDataset,
    decode_image,
    random_resized_crop,
    resize_center_crop,
)
from spikegrad.data.images import resize as resize_image
from spikegrad.errors import UserError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}

TINY_REMOTE = RemoteFile("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                         "90528d7ca1a48142e341f4ef8d21d0de")
TINY_FOLDER = "tiny-imagenet-200"
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _fixed_size(image, side: int):
    """Resize to ``side × side`` unless it already is (Tiny ImageNet images are 64×64)."""
    return image if tuple(image.shape[1:]) == (side, side) else resize_image(image, (side, side))


def _check_first_image(files: list[Path]) -> None:
    """Decode one image at build time so a wrong layout fails now, not mid-epoch."""
    if files:
        decode_image(files[0])


def tiny_imagenet_files(folder: Path) -> tuple[list[str], list, list]:
    """Class ids and ``(files, labels)`` of the train and val splits of the official layout."""
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise UserError(f"{str(wnids_file)!r} is missing: expected the Tiny ImageNet class list "
                        "(one wnid per line)")
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    if not wnids:
        raise UserError(f"{str(wnids_file)!r} lists no classes")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise UserError(f"{str(images)!r} is missing: expected train/<wnid>/images/*.JPEG for "
                            f"every class in wnids.txt")
        found = _images_in(images)
        if not found:
            raise UserError(f"{str(images)!r} holds no images (expected *.JPEG)")
        train_files += found
        train_labels += [index[wnid]] * len(found)
    notes = folder / "val" / "val_annotations.txt"
    if not notes.is_file():
        raise UserError(f"{str(notes)!r} is missing: expected '<file>\\t<wnid>\\t...' lines for the "
                        "validation images in val/images/")
    val_files, val_labels = [], []
    for number, line in enumerate(notes.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{str(notes)!r} line {number}: expected '<file>\\t<wnid>\\t...' with a "
                            f"wnid from wnids.txt, got {line!r}")
        path = folder / "val" / "images" / fields[0]
        if not path.is_file():
            raise UserError(f"{str(path)!r} is missing (listed in {str(notes)!r} line {number})")
        val_files.append(path)
        val_labels.append(index[fields[1]])
    return wnids, (train_files, train_labels), (val_files, val_labels)


@register_dataset("tiny_imagenet")
def tiny_imagenet(root: str | None = None, download: bool = False, normalize: bool = True,
                  image_size: int = 64):
    """Tiny ImageNet 200: 100,000 train / 10,000 validation images, 3×64×64, 200 classes."""
    base = require_root(root, "tiny_imagenet")
    folder = base if (base / "wnids.txt").is_file() else base / TINY_FOLDER
    if not (folder / "wnids.txt").is_file():
        fetch_and_extract(TINY_REMOTE, base, download,
                          f"the folder {TINY_FOLDER}/ (wnids.txt, train/<wnid>/images/, "
                          "val/val_annotations.txt, val/images/)")
        folder = base / TINY_FOLDER
    wnids, train, val = tiny_imagenet_files(folder)
    _check_first_image(train[0])
    mean, std = (TINY_MEAN, TINY_STD) if normalize else (None, None)
    to_size = partial(_fixed_size, side=image_size)
    train_set = ImageFileDataset(*train, to_size, mean, std)
    test_set = ImageFileDataset(*val, to_size, mean, std)
    info = DatasetInfo(num_classes=len(wnids), sample_shape=(3, image_size, image_size),
                       description=f"Tiny ImageNet ({len(train_set)} train / {len(test_set)} val)",
                       mean=mean, std=std)
    return train_set, test_set, info


def class_folder_files(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list, list]:
    """Classes (sorted folder names unless given) and image files with labels under ``folder``."""
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is missing: expected one sub-folder of images per class")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{str(folder)!r} has class folders that train/ lacks: {unknown[:5]}")
    if not classes:
        raise UserError(f"{str(folder)!r} has no class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        images = _images_in(folder / name)
        files += images
        labels += [label] * len(images)
    if not files:
        raise UserError(f"{str(folder)!r} holds no images (expected <class>/*.JPEG)")
    return classes, files, labels


@register_dataset("imagenet")
def imagenet(root: str | None = None, normalize: bool = True, image_size: int = 224,
             resize: int = 256):
    """ImageNet from class folders ``train/<class>/`` and ``val/<class>/`` under ``data.root``."""
    if not 0 < image_size <= resize:
        raise UserError(f"imagenet needs 0 < image_size <= resize, got {image_size} and {resize}")
    base = require_root(root, "imagenet")
    classes, train_files, train_labels = class_folder_files(base / "train")
    _, val_files, val_labels = class_folder_files(base / "val", classes)
    _check_first_image(train_files)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize else (None, None)
    train_set = ImageFileDataset(train_files, train_labels,
                                 partial(random_resized_crop, size=image_size), mean, std)
    test_set = ImageFileDataset(val_files, val_labels,
                                partial(resize_center_crop, resize_to=resize, crop=image_size),
                                mean, std)
    info = DatasetInfo(num_classes=len(classes), sample_shape=(3, image_size, image_size),
                       description=f"ImageNet class folders ({len(train_set)} train / "
                                   f"{len(test_set)} val, {len(classes)} classes)",
                       mean=mean, std=std)
    return train_set, test_set, info
