"""Hostile and unlucky inputs, each built for real in a temporary folder, with the outcome checked.

Every case is an entry of :data:`CASES` with an ``id``, a ``category``, a one-line ``what``
and the outcome a correct build gives (``expect``): ``"clear"`` (a one-line
:class:`~spikegrad.errors.UserError`, or exit status 2 and one ``spikegrad: error:`` line on
stderr, naming the input and the fix) or ``"correct"`` (success with the right result).
:func:`run_case` runs one case and classifies what happened as one of :data:`OUTCOMES`, so
a generator can turn the cases into the table of docs/reliability.md (tried / clear /
traceback / silent / lost / hung / crashed); the test asserts the expected outcome, and
that it came within the case's ``seconds`` (2 s for inputs that once hung).

A case is a function of the folder it may write into, registered with :func:`case`; it
returns the line the user sees (or a short description of the correct result) and raises
:class:`Silent` when a hostile input is accepted. Cases that need other machinery (locks,
full disks via ``RLIMIT_FSIZE``, concurrent trainers, a fresh interpreter to detect a
crash) raise :class:`Lost`, :class:`Hung` or :class:`Crashed` themselves.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import spikegrad
from spikegrad import cli, layers, models, neurons, surrogates
from spikegrad.checkpoint import load_checkpoint, save_checkpoint
from spikegrad.config import Config, ModelConfig, load_config
from spikegrad.data import DatasetInfo, build_augmentation, build_datasets
from spikegrad.data.safe_pickle import load_restricted
from spikegrad.devices import DeviceModel
from spikegrad.diagnostics import read_gradients, read_jsonl
from spikegrad.errors import UserError
from spikegrad.resume import rng_state
from spikegrad.trainer import Trainer, evaluate_model
from tests.fixtures import write_cifar

DIGITS = Path(spikegrad.__file__).parent / "configs" / "digits.yaml"

# --------------------------------------------------------------------------- the table of cases

#: what can happen to an input: the first two are right, the others are defects
OUTCOMES = ("clear", "correct", "traceback", "silent", "lost", "hung", "crashed")
CATEGORIES = ("pickled data", "recipes and YAML", "config values", "model options", "checkpoints",
              "tensors", "datasets", "report", "export", "calibrate", "run folders", "concurrent use",
              "full disks", "torn and left-over files", "LTL teacher")


class Silent(AssertionError):
    """A hostile input was accepted (no error, and a wrong or meaningless result)."""


class Lost(AssertionError):
    """Run data was lost or overwritten."""


class Hung(AssertionError):
    """The case did not finish within its time."""


class Crashed(AssertionError):
    """The interpreter died (a signal)."""


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    what: str
    run: Callable[[Path], str]
    expect: str = "clear"
    seconds: float = 30.0
    slow: bool = False  # trains or starts processes: over ~5 s


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of OUTCOMES
    message: str  # the line the user sees, or what went wrong
    seconds: float  # until the answer: the refusal (or the whole case when it times none)


_ANSWER: dict[str, float] = {}  # seconds the last refused()/cli_refused() call took


@contextlib.contextmanager
def timed() -> Iterator[None]:
    tic = time.perf_counter()
    try:
        yield
    finally:
        _ANSWER["seconds"] = time.perf_counter() - tic


CASES: list[Case] = []


def case(id: str, category: str, what: str, expect: str = "clear", seconds: float = 30.0,
         slow: bool = False):
    """Register the decorated function as a case."""
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        CASES.append(Case(id, category, what, fn, expect, seconds, slow))
        return fn

    return register


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hung` in the main thread after ``seconds`` (Python-level loops only)."""
    def expire(signum, frame):
        raise Hung(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(c: Case, folder: Path) -> Outcome:
    """Run one case and classify what happened (see :data:`OUTCOMES`)."""
    folder.mkdir(parents=True, exist_ok=True)
    _ANSWER.clear()
    tic = time.perf_counter()
    try:
        with deadline(max(c.seconds, 1.0) * 3):  # well past the asserted bound: only a real hang
            message = c.run(folder)
        kind = c.expect
    except (Silent, Lost, Hung, Crashed) as exc:
        kind, message = type(exc).__name__.lower(), str(exc)
    except AssertionError as exc:  # refused, but not with a clear line
        kind, message = "traceback", f"unclear: {exc}"
    except Exception:
        kind, message = "traceback", traceback.format_exc(limit=-3)
    return Outcome(kind, message, _ANSWER.get("seconds", time.perf_counter() - tic))


def refused(action: Callable[[], object], *needles: str) -> str:
    """The one-line :class:`UserError` of ``action``, which must mention every needle (regex)."""
    try:
        with timed():
            action()
    except UserError as exc:
        message = str(exc)
    else:
        raise Silent("accepted without an error")
    assert "\n" not in message, f"not one line: {message!r}"
    for needle in needles:
        assert re.search(needle, message, re.IGNORECASE), f"{needle!r} not in {message!r}"
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    return message


def cli_refused(argv: list[str], *needles: str) -> str:
    """``spikegrad ARGV`` must exit with status 2 and one ``spikegrad: error:`` line."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), timed():
        status = cli.main([str(a) for a in argv])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if status == 0:
        raise Silent(f"exit 0: {out.getvalue()[-200:]!r}")
    assert status == 2, f"exit {status}: {err.getvalue()[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("spikegrad: error: "), lines
    for needle in needles:
        assert re.search(needle, lines[0], re.IGNORECASE), f"{needle!r} not in {lines[0]!r}"
    assert "weights_only" not in lines[0]
    return lines[0]


# --------------------------------------------------------------------------- builders


def tiny_recipe(folder: Path, extra: str = "") -> Path:
    path = folder / "tiny.yaml"
    path.write_text(f"extends: {DIGITS}\nmodel: {{width: 0.25, T: 2}}\n"
                    "train: {epochs: 1, threads: 1, progress: false, device: cpu}\n" + extra)
    return path


def tiny_checkpoint(folder: Path, name: str = "ck.pt", **extra: object) -> Path:
    """A spikegrad checkpoint of the tiny digits model (untrained), with ``extra`` keys."""
    config = load_config(tiny_recipe(folder))
    model_args = {"name": "digits_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "T": 2,
                                                   "width": 0.25, "input_size": 8}}
    model = models.create(model_args["name"], **model_args["kwargs"])
    path = folder / name
    save_checkpoint(path, model, model_args, config=config.to_dict(), **extra)
    return path


def doubling(levels: int, leaf: object) -> list:
    """A list holding the previous level twice, ``levels`` deep: 2^levels leaves, O(levels) memory."""
    node: list = [leaf]
    for _ in range(levels):
        node = [node, node]
    return node


def fanned(levels: int, fan: int, leaf: object) -> list:
    """``fan`` references to the previous level, ``levels`` deep: fan^levels leaves."""
    node: list = [leaf]
    for _ in range(levels):
        node = [node] * fan
    return node


def cifar_root(folder: Path, labels: object) -> Path:
    """A CIFAR-10 folder whose first training batch has the given ``labels`` object."""
    root = folder / "cifar"
    write_cifar(root, per_batch=2, n_test=2)
    batch = {"batch_label": "training batch 1 of 5", "data": np.zeros((2, 3072), np.uint8),
             "labels": labels, "filenames": ["a.png", "b.png"]}
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    return root


class ObjectArray:
    """Pickles as ``numpy.ndarray((1,), "O", b"A" * 8)``: an object array on raw bytes (a pointer)."""

    def __reduce__(self):
        return (np.ndarray, ((1,), "O", b"A" * 8))


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('x')",))


def spiking_net() -> nn.Module:
    return nn.Sequential(layers.DirectEncoder(2), layers.TimeDistributed(nn.Linear(2, 8)),
                         neurons.LIF(), layers.TimeDistributed(nn.Linear(8, 2)))


class Items(Dataset):
    def __init__(self, items: list, length: object = None) -> None:
        self.items, self.length = items, length

    def __len__(self):
        return len(self.items) if self.length is None else self.length

    def __getitem__(self, index):
        return self.items[index]


GOOD = [(torch.randn(2), i % 2) for i in range(8)]


def fit(train: Dataset, test: Dataset) -> dict:
    config = Config().with_overrides({"train.epochs": 1, "train.progress": False, "data.batch_size": 4,
                                      "diagnostics.gradient_interval": 0, "analysis.monitors": False})
    return Trainer(spiking_net(), train, test, config, verbose=False).fit()


def zip_with_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint whose pickled structure is replaced by ``data_pkl``."""
    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for item in source.infolist():
            content = source.read(item.filename)
            out.writestr(item, data_pkl if item.filename.endswith("data.pkl") else content)
    return path


def metrics_folder(folder: Path, lines: list[bytes]) -> Path:
    run = folder / "run"
    run.mkdir()
    good = b'{"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}'
    (run / "metrics.jsonl").write_bytes(b"\n".join([good, *lines]) + b"\n")
    return run


# --------------------------------------------------------------------------- pickled data


@case("pickle-object-array-constructor", "pickled data",
      "CIFAR batch whose labels are numpy.ndarray((1,), 'O', raw bytes): an object array on a pointer")
def _(tmp: Path) -> str:
    path = tmp / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": ObjectArray()},
                                  protocol=2))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "data_batch_1", "not a safe",
                   "numpy.ndarray")


@case("pickle-object-array", "pickled data", "an object array pickled by numpy (dtype 'O')")
def _(tmp: Path) -> str:
    path = tmp / "batch"
    path.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "not a safe", "dtype")


@case("pickle-object-array-protocol5", "pickled data", "an object array in a protocol-5 pickle")
def _(tmp: Path) -> str:
    path = tmp / "batch"
    path.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=5))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "not a safe")


@case("pickle-structured-object-field", "pickled data",
      "a structured array with an object field")
def _(tmp: Path) -> str:
    path = tmp / "batch"
    path.write_bytes(pickle.dumps(np.zeros(2, dtype=[("a", "O"), ("b", "i4")]), protocol=2))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "not a safe", "dtype")


@case("pickle-dtype-flags", "pickled data",
      "a uint64 dtype whose pickled state sets numpy's 'holds objects' flags")
def _(tmp: Path) -> str:
    data = pickle.dumps(np.zeros(1, dtype="u8"), protocol=2)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert flags in data
    path = tmp / "batch"
    path.write_bytes(data.replace(flags, flags[:-3] + b"K\x3ft"))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "not a safe", "dtype state")


@case("pickle-reference-bomb", "pickled data",
      "CIFAR batch of 6.6 KB whose labels hold 2^40 shared references (40 doubling levels)", seconds=2)
def _(tmp: Path) -> str:
    root = cifar_root(tmp, doubling(40, 0))
    assert (root / "cifar-10-batches-py" / "data_batch_1").stat().st_size < 7000
    return refused(lambda: build_datasets("cifar10", root=str(root)), "data_batch_1", "not a safe")


@case("pickle-wide-reference-bomb", "pickled data",
      "CIFAR batch whose labels hold 1000^4 shared references, four levels deep", seconds=2)
def _(tmp: Path) -> str:
    root = cifar_root(tmp, fanned(4, 1000, 0))
    return refused(lambda: build_datasets("cifar10", root=str(root)), "reference bomb")


@case("pickle-cycle", "pickled data", "a list that contains itself", seconds=2)
def _(tmp: Path) -> str:
    loop: list = []
    loop.append(loop)
    path = tmp / "batch"
    path.write_bytes(pickle.dumps({"labels": loop}, protocol=2))
    return refused(lambda: load_restricted(path, "CIFAR batch"), "not a safe")


@case("pickle-runs-code", "pickled data", "CIFAR batch that would run code when unpickled")
def _(tmp: Path) -> str:
    marker, path = tmp / "pwned", tmp / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": RunsCode(marker)}, protocol=2))
    message = refused(lambda: load_restricted(path, "CIFAR batch"), r"global '(__builtin__|builtins)\.exec'")
    assert not marker.exists()
    return message


@case("pickle-truncated", "pickled data", "a CIFAR batch cut in half")
def _(tmp: Path) -> str:
    path = tmp / "data_batch_1"
    data = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [1, 2, 3, 4]}, protocol=2)
    path.write_bytes(data[: len(data) // 2])
    return refused(lambda: load_restricted(path, "CIFAR batch"), "truncated or damaged")


@case("pickle-gzip-oversized", "pickled data", "a gzip pickle that inflates beyond the size bound",
      seconds=2)
def _(tmp: Path) -> str:
    path = tmp / "bundle.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(bytes(3 << 20), protocol=2)))
    return refused(lambda: load_restricted(path, "MNIST bundle", max_bytes=1 << 20), "more than")


@case("pickle-mnist-bundle", "pickled data",
      "the classic mnist.pkl.gz layout (three (float32 images, int64 labels) pairs), gzip, Python 2 "
      "strings", expect="correct")
def _(tmp: Path) -> str:
    rng = np.random.default_rng(0)
    splits = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (5, 3, 2))
    data = pickle.dumps(splits, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(data))
    loaded = load_restricted(path, "MNIST bundle")
    for (x, y), (lx, ly) in zip(splits, loaded, strict=True):
        assert lx.dtype == np.float32 and np.array_equal(lx, x) and np.array_equal(ly, y)
        assert lx.flags.writeable
    return "loaded: 3 splits of float32 [N, 784] images and int64 labels, equal to what was written"


# --------------------------------------------------------------------------- recipes and YAML


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
) + "model: {options: {x: *i}}\n"


@case("yaml-alias-bomb", "recipes and YAML",
      "a 485-byte recipe whose aliases expand to 9^9 values (billion laughs)", seconds=2)
def _(tmp: Path) -> str:
    path = tmp / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    return cli_refused(["train", path, "--out", tmp / "run"], "bomb.yaml", "alias")


@case("yaml-config-to-dict-shared", "recipes and YAML",
      "a Config built in Python whose model.options shares one list 2^40 times: to_dict", seconds=2)
def _(tmp: Path) -> str:
    config = Config(model=ModelConfig(options={"x": doubling(40, 1)}))
    return refused(config.to_dict, "model.options", "values")


@case("yaml-duplicate-key", "recipes and YAML", "a recipe that sets train.epochs twice")
def _(tmp: Path) -> str:
    path = tmp / "twice.yaml"
    path.write_text("train:\n  epochs: 3\n  epochs: 40\n")
    return cli_refused(["train", path, "--out", tmp / "run"], "train.epochs", "twice", "lines 2 and 3")


@case("yaml-latin1-recipe", "recipes and YAML", "a recipe saved as Latin-1 (é in a comment)")
def _(tmp: Path) -> str:
    path = tmp / "latin1.yaml"
    path.write_bytes("# réglages\ntrain: {epochs: 2}\n".encode("latin-1"))
    return cli_refused(["train", path, "--out", tmp / "run"], "latin1.yaml", "not UTF-8", "line 1",
                       "save it as UTF-8")


@case("yaml-extends-number", "recipes and YAML", "a recipe with extends: 5")
def _(tmp: Path) -> str:
    path = tmp / "five.yaml"
    path.write_text("extends: 5\n")
    return cli_refused(["train", path, "--out", tmp / "run"], "extends must name a recipe file")


@case("yaml-deep-nesting", "recipes and YAML", "a recipe nesting 5000 lists", seconds=2)
def _(tmp: Path) -> str:
    path = tmp / "deep.yaml"
    path.write_text("model: {options: {x: " + "[" * 5000 + "]" * 5000 + "}}\n")
    return cli_refused(["train", path, "--out", tmp / "run"], "deep")


@case("yaml-non-utf8-run-config", "recipes and YAML",
      "train --resume of a run folder whose config.yaml is not UTF-8")
def _(tmp: Path) -> str:
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"name: caf\xe9\n")
    return cli_refused(["train", "--out", run, "--resume"], "config.yaml", "not UTF-8")


@case("yaml-set-alias-bomb", "recipes and YAML", "a --set value that is an alias bomb", seconds=2)
def _(tmp: Path) -> str:
    body = ALIAS_BOMB.replace("model: {options: {x: *i}}\n", "z: *i")
    value = "{" + body.replace("\n", ", ") + "}"
    return cli_refused(["train", tiny_recipe(tmp), "--set", f"model.options={value}", "--out", tmp / "r"],
                       "alias")


# --------------------------------------------------------------------------- config values

CONFIG_VALUES = [
    ("threshold-inf", "model.neuron.threshold=.inf", "never spikes", r"model\.neuron\.threshold.*finite"),
    ("label-smoothing-nan", "train.label_smoothing=.nan", "ignored", r"label_smoothing.*finite"),
    ("pj-per-ac-inf", "analysis.pj_per_ac=.inf", "infinite energy", r"pj_per_ac.*finite"),
    ("v-reset-nan", "model.neuron.v_reset=.nan", "NaN potential", r"v_reset.*finite"),
    ("momentum-nan", "optim.momentum=.nan", "reported as divergence", r"momentum.*finite"),
    ("weight-decay-nan", "optim.weight_decay=.nan", "reported as divergence", r"weight_decay.*finite"),
    ("lambda0-nan", "shortcut.lambda0=.nan", "reported as divergence", r"lambda0.*finite"),
    ("width-inf", "model.width=.inf", "traceback", r"model\.width.*finite"),
    ("seed-2-64", "train.seed=18446744073709551616", "torch's OverflowError", r"train\.seed"),
    ("seed-2-40", "train.seed=1099511627776", "beyond NumPy's 32-bit seeds", r"train\.seed.*<="),
    ("threads-100000", "train.threads=100000", "segfault in torch", r"train\.threads.*per CPU"),
    ("workers-100000", "data.num_workers=100000", "100000 processes", r"data\.num_workers.*per CPU"),
    ("timeout-huge", "distributed.timeout_minutes=1e300", "OverflowError under torchrun",
     r"timeout_minutes.*<="),
    ("betas-out-of-range", "optim.betas=[2, 3]", "traceback in Adam", r"optim\.betas\[0\].*< 1"),
    ("betas-one-value", "optim.betas=[0.9]", "traceback in Adam", r"optim\.betas.*2 values"),
    ("attach-int", "shortcut.attach=[5]", "traceback", r"shortcut\.attach\[0\].*string"),
    ("histogram-bins-huge", "diagnostics.histogram_bins=1000000000", "out of memory",
     r"histogram_bins.*<= 10000"),
    ("candidates-nan", "dspike.candidates=[-1, .nan]", "NaN temperature", r"candidates\[1\].*finite"),
    ("temperature-string", "model.surrogate={name: dspike, temperature: abc}", "traceback",
     r"temperature.*abc"),
    ("options-batch-norm-maybe", "model.options={batch_norm: maybe}", "taken as true",
     r"batch_norm.*bool.*maybe"),
    ("options-width-negative", "model.options={width: -1}", "one channel", r"width.*\(0, 64\].*-1"),
    ("crop-negative", "data.augment=[crop:-4]", "traceback while training", r"crop:-4.*\[0, 8\]"),
    ("crop-huge", "data.augment=[crop:1000000]", "out of memory", r"crop:1000000"),
]
for _id, _set, _before, _needle in CONFIG_VALUES:
    def _config_case(tmp: Path, _set: str = _set, _needle: str = _needle) -> str:
        message = cli_refused(["train", tiny_recipe(tmp), "--set", _set, "--out", tmp / "run"], _needle)
        if (tmp / "run" / "last.pt").exists():
            raise Silent("a run was trained")
        return message

    case(f"config-{_id}", "config values", f"--set {_set} (before: {_before})")(_config_case)


# --------------------------------------------------------------------------- model options (API)


@case("model-create-wrong-type", "model options", "models.create('digits_cnn', batch_norm='maybe')")
def _(tmp: Path) -> str:
    return refused(lambda: models.create("digits_cnn", batch_norm="maybe"), "batch_norm", "bool")


@case("model-create-nan-width", "model options", "models.create('digits_cnn', width=nan)")
def _(tmp: Path) -> str:
    return refused(lambda: models.create("digits_cnn", width=math.nan), "width", "finite")


@case("model-create-huge-width", "model options", "models.create('digits_cnn', width=1e9)")
def _(tmp: Path) -> str:
    return refused(lambda: models.create("digits_cnn", width=1e9), "width", r"\(0, 64\]")


@case("model-create-float-T", "model options", "models.create('resnet18', T=2.5)")
def _(tmp: Path) -> str:
    return refused(lambda: models.create("resnet18", T=2.5), "'T'", "int")


@case("model-create-string-channels", "model options", "models.create('plain_cnn', channels=[8, 'a'])")
def _(tmp: Path) -> str:
    return refused(lambda: models.create("plain_cnn", channels=[8, "a"]), "channels", "list of int")


@case("model-create-typed-ok", "model options",
      "models.create with every argument of the right type and range builds", expect="correct")
def _(tmp: Path) -> str:
    model = models.create("resnet18", num_classes=10, T=2, width=0.125, batch_norm=False,
                          neuron={"type": "lif", "leak": 0.5}, surrogate={"name": "atan"})
    assert model(torch.zeros(1, 3, 8, 8)).shape == (2, 1, 10)
    return "built; output [T, B, classes] = (2, 1, 10)"


# --------------------------------------------------------------------------- checkpoints


@case("checkpoint-reference-bomb", "checkpoints",
      "a checkpoint under 100 KB whose history holds 2^30 shared references: eval", seconds=2)
def _(tmp: Path) -> str:
    path = tiny_checkpoint(tmp, history=doubling(30, {"epoch": 1}), epoch=1)
    assert path.stat().st_size < 100_000
    return cli_refused(["eval", path], "ck.pt", "shared references")


@case("checkpoint-unsafe-global", "checkpoints",
      "a checkpoint that would run code: refused as unsafe, without torch's weights_only=False hint")
def _(tmp: Path) -> str:
    marker, path = tmp / "pwned", tmp / "evil.pt"
    torch.save({"format": "spikegrad-checkpoint", "x": RunsCode(marker)}, path)
    message = cli_refused(["eval", path], "refused as unsafe", r"\(exec\)")
    assert not marker.exists()
    return message


@case("checkpoint-unsafe-global-os", "checkpoints",
      "a checkpoint whose pickle names os.system directly")
def _(tmp: Path) -> str:
    path = zip_with_pickle(tmp / "evil.pt", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.")
    return refused(lambda: load_checkpoint(path), "refused as unsafe", "os.system")


@case("checkpoint-unsafe-opcode", "checkpoints",
      "a checkpoint with a pickle opcode torch's safe loader refuses (persistent id)")
def _(tmp: Path) -> str:
    path = zip_with_pickle(tmp / "evil.pt", b"\x80\x02P1\n.")
    return refused(lambda: load_checkpoint(path), "refused as unsafe")


@case("checkpoint-bad-rebuild-call", "checkpoints",
      "a checkpoint that calls torch's tensor rebuild function with wrong arguments")
def _(tmp: Path) -> str:
    path = zip_with_pickle(tmp / "bad.pt", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01tR.")
    return refused(lambda: load_checkpoint(path), "cannot be read")


@case("checkpoint-zip-bomb", "checkpoints",
      "a checkpoint zip with a compressed record that inflates to 64 MB", seconds=2)
def _(tmp: Path) -> str:
    path = tmp / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
        archive.writestr("archive/data/0", bytes(64 << 20))
    assert path.stat().st_size < 1 << 20
    return refused(lambda: load_checkpoint(path), "zip bomb")


def _rng_out_of_range() -> list:
    state = rng_state()
    state["python"]["state"][624] = 700  # a Mersenne Twister position past its 624 words
    return [state]


PAYLOAD_CASES = [
    ("epoch-negative", "epoch: -5", {"epoch": -5, "history": []}, r"'epoch'.*>= 0.*-5"),
    ("epoch-huge", "epoch: 10**6", {"epoch": 10**6, "history": []},
     r"'epoch'.*at most the stored train\.epochs"),
    ("epoch-string", "epoch: '3'", {"epoch": "3"}, r"'epoch'.*whole number"),
    ("history-not-list", "history: 'x'", {"history": "x"}, r"'history'"),
    ("history-rows-mismatch", "epoch 1 with an empty history", {"epoch": 1, "history": []},
     r"'epoch'.*rows in its history"),
    ("rng-wrong", "rng: [{python: 1}]", {"rng": [{"python": 1}]}, r"'rng'"),
    ("rng-out-of-range", "Python's random state at position 700 of 624", {"rng": _rng_out_of_range()},
     r"'rng'"),
    ("generator-wrong-size", "a data-order generator state of 10 bytes",
     {"order": {"generator": torch.zeros(10, dtype=torch.uint8), "epoch_start": None}}, r"'order'"),
    ("progress-negative", "an epoch in progress at batch -1", {"progress": {"row": {}, "batches": -1}},
     r"'progress'"),
    ("optimizer-wrong", "optimizer param_groups: 'x'", {"optimizer": {"state": {}, "param_groups": "x"}},
     r"'optimizer'"),
    ("model-not-tensors", "model weights that are strings", {"model": {"w": "x"}}, r"'model'.*tensors"),
]
for _id, _what, _extra, _needle in PAYLOAD_CASES:
    def _payload_case(tmp: Path, _extra: dict = _extra, _needle: str = _needle) -> str:
        path = tiny_checkpoint(tmp)
        payload = torch.load(path, weights_only=True)
        payload.update(_extra)
        torch.save(payload, path)
        return refused(lambda: load_checkpoint(path), "ck.pt", "damaged or was not written by spikegrad",
                       _needle)

    case(f"checkpoint-{_id}", "checkpoints", f"a crafted checkpoint with {_what}")(_payload_case)


@case("checkpoint-missing-model", "checkpoints", "a checkpoint without its 'model' weights")
def _(tmp: Path) -> str:
    path = tiny_checkpoint(tmp)
    payload = torch.load(path, weights_only=True)
    del payload["model"]
    torch.save(payload, path)
    return cli_refused(["eval", path], "no 'model'")


@case("checkpoint-no-model-args", "checkpoints", "eval of a checkpoint saved without model_args")
def _(tmp: Path) -> str:
    path = tiny_checkpoint(tmp)
    payload = torch.load(path, weights_only=True)
    payload["model_args"] = None
    torch.save(payload, path)
    return cli_refused(["eval", path], "model_args", "load_weights")


# --------------------------------------------------------------------------- tensors


@case("neuron-zero-steps", "tensors", "a LIF neuron called on [T=0, B, N]")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF()(torch.zeros(0, 2, 3)), "T = 0")


@case("neuron-complex-input", "tensors", "a LIF neuron called on a complex tensor")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF()(torch.zeros(2, 2, dtype=torch.complex64)), "complex")


@case("neuron-tensor-leak", "tensors", "a LIF neuron given a tensor of two leaks")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF(leak=torch.tensor([0.5, 0.6])), "leak must be a number",
                   "learnable_leak")


@case("neuron-nan-v-reset", "tensors", "a LIF neuron with v_reset = NaN")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF(v_reset=math.nan), "v_reset", "finite")


@case("neuron-nan-input-scale", "tensors", "a LIF neuron with input_scale = NaN")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF(input_scale=math.nan), "input_scale", "finite")


@case("neuron-inf-threshold", "tensors", "a LIF neuron with threshold = inf (it would never spike)")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF(threshold=math.inf), "threshold", "finite")


@case("neuron-detach-reset-string", "tensors", "a LIF neuron with detach_reset='no'")
def _(tmp: Path) -> str:
    return refused(lambda: neurons.LIF(detach_reset="no"), "detach_reset", "true or false")


@case("surrogate-temperature-string", "tensors", "surrogates.create('dspike', temperature='abc')")
def _(tmp: Path) -> str:
    return refused(lambda: surrogates.create("dspike", temperature="abc"), "temperature", "abc")


# --------------------------------------------------------------------------- datasets


DATASET_CASES = [
    ("ragged-first-last", "samples of 2 and 3 values (first and last differ)",
     lambda: Items([(torch.randn(2 + i % 2), 0) for i in range(8)]), r"differ in shape"),
    ("ragged-middle", "one sample of 3 values in the middle of 2-value samples",
     lambda: Items([(torch.randn(3 if i == 3 else 2), 0) for i in range(8)]), r"differ in shape"),
    ("three-tuples", "samples (input, label, name)", lambda: Items([(torch.randn(2), 0, "x")] * 8),
     r"\(input, label\) pairs.*3 values"),
    ("bare-tensors", "samples that are bare tensors", lambda: Items([torch.randn(2)] * 8),
     r"\(input, label\) pairs"),
    ("string-labels", "labels 'cat' and 'dog'",
     lambda: Items([(torch.randn(2), "cat" if i % 2 else "dog") for i in range(8)]),
     r"labels.*class indices"),
    ("len-too-long", "__len__ says 12 but 8 samples exist", lambda: Items(GOOD, 12),
     r"12 samples.*sample 11 cannot be read"),
    ("len-float", "__len__ returns 2.5", lambda: Items(GOOD, 2.5), r"no valid length"),
    ("complex-inputs", "complex inputs",
     lambda: Items([(torch.randn(2, dtype=torch.complex64), 0)] * 8), r"complex"),
]
for _id, _what, _make, _needle in DATASET_CASES:
    for _split in ("training", "test"):
        def _dataset_case(tmp: Path, _make=_make, _needle=_needle, _split=_split) -> str:
            bad, good = _make(), Items(GOOD)
            return refused(lambda: fit(bad, good) if _split == "training" else fit(good, bad), _needle)

        case(f"data-{_id}-{_split}", "datasets", f"{_split} set with {_what} (Trainer API)")(_dataset_case)


@case("data-nan-test-set", "datasets", "a test set of NaNs (it reported an accuracy)")
def _(tmp: Path) -> str:
    return refused(lambda: fit(Items(GOOD), Items([(torch.full((2,), math.nan), 0)] * 8)), "NaN")


@case("data-nan-training-set", "datasets",
      "a training set of NaNs (it was reported as a divergence: 'lower optim.lr')")
def _(tmp: Path) -> str:
    nan = Items([(torch.full((2,), math.nan), 0)] * 8)
    return refused(lambda: fit(nan, Items(GOOD)), "NaN or inf inputs")


@case("data-nan-logits", "datasets", "evaluation of a model whose weights are NaN")
def _(tmp: Path) -> str:
    model = spiking_net()
    with torch.no_grad():
        model[3].module.bias.fill_(math.nan)
    loader = torch.utils.data.DataLoader(Items(GOOD), batch_size=4)
    return refused(lambda: evaluate_model(model, loader, torch.device("cpu")), "logits", "NaN")


@case("data-numpy-samples", "datasets", "samples of numpy arrays and numpy integer labels train",
      expect="correct")
def _(tmp: Path) -> str:
    items = Items([(np.float32([1, -1]) * (1 if i % 2 else -1), np.int64(i % 2)) for i in range(8)])
    summary = fit(items, items)
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    return f"trained; test accuracy {summary['final_test_acc']:.2f}"


# --------------------------------------------------------------------------- report


REPORT_CASES = [
    ("not-an-object", b"[1, 2]", r"line 2 is JSON but not an object"),
    ("string-value", b'{"epoch": 2, "test_acc": "abc"}', r"line 2: 'test_acc' is 'abc', not a number"),
    ("mapping-as-number", b'{"epoch": 2, "lr": {"a": 1}}', r"line 2: 'lr'"),
    ("list-as-mapping", b'{"epoch": 2, "firing_rates": [1, 2]}', r"line 2: 'firing_rates'"),
    ("torn-line", b'{"epoch": 2, "test_acc": 0.5', r"line 2 is not JSON"),
    ("not-utf8", b'{"epoch": 2, "name": "caf\xe9"}', r"line 2 is not UTF-8"),
]
for _id, _line, _needle in REPORT_CASES:
    def _report_case(tmp: Path, _line: bytes = _line, _needle: str = _needle) -> str:
        return cli_refused(["report", metrics_folder(tmp, [_line])], "metrics.jsonl", _needle)

    case(f"report-{_id}", "report", f"report of a metrics.jsonl with the line {_line!r}")(_report_case)


# --------------------------------------------------------------------------- export and calibrate


@case("export-input-shape-channels", "export", "export --input-shape 3,32,32 of a 1-channel model")
def _(tmp: Path) -> str:
    pytest.importorskip("nir")
    return cli_refused(["export", tiny_checkpoint(tmp), "--out", tmp / "x.nir", "--input-shape",
                        "3,32,32"], r"cannot take an input sample of shape \(3, 32, 32\)")


@case("export-input-shape-4d", "export", "export --input-shape 1,8,8,8")
def _(tmp: Path) -> str:
    pytest.importorskip("nir")
    return cli_refused(["export", tiny_checkpoint(tmp), "--out", tmp / "x.nir", "--input-shape",
                        "1,8,8,8"], "input sample")


@case("export-input-shape-huge", "export", "export --input-shape 1,1000000,1000000", seconds=2)
def _(tmp: Path) -> str:
    pytest.importorskip("nir")
    return cli_refused(["export", tiny_checkpoint(tmp), "--out", tmp / "x.nir", "--input-shape",
                        "1,1000000,1000000"], "more than")


@case("calibrate-stuck-at-zero-nan", "calibrate",
      "calibrate --stuck-at-zero nan (it ran as ideal devices)")
def _(tmp: Path) -> str:
    return cli_refused(["calibrate", tiny_checkpoint(tmp), "--method", "none", "--stuck-at-zero",
                        "nan"], "stuck-at-zero", "finite")


@case("calibrate-bits-1000", "calibrate", "DeviceModel(bits=1000), as calibrate --bits 1000 makes it")
def _(tmp: Path) -> str:
    return refused(lambda: DeviceModel(bits=1000), "--bits", "2 to 32")


@case("calibrate-sigma-inf", "calibrate", "DeviceModel(sigma=inf)")
def _(tmp: Path) -> str:
    return refused(lambda: DeviceModel(sigma=math.inf), "sigma", "finite")


@case("calibrate-seed-negative", "calibrate", "DeviceModel(seed=-1)")
def _(tmp: Path) -> str:
    return refused(lambda: DeviceModel(seed=-1), "seed")


@case("augment-crop-api", "config values",
      "build_augmentation(['crop:40']) for 32x32 images (padding beyond the image)")
def _(tmp: Path) -> str:
    return refused(lambda: build_augmentation(["crop:40"], DatasetInfo(10, (3, 32, 32))), "crop:40",
                   r"\[0, 32\]")


# --------------------------------------------------------------------------- run folders: shared tools

SRC = Path(spikegrad.__file__).resolve().parents[1]
RESUMABLE = ("model: {width: 0.25, T: 2}\n"
             "train: {epochs: 1, threads: 1, progress: false, device: cpu, checkpoint_every: 10}\n"
             "diagnostics: {gradient_interval: 1}\n")
_SHARED: dict[str, Path] = {}


def resumable_recipe(folder: Path) -> Path:
    """One epoch of 45 iterations, a checkpoint every 10 and a gradient record every step."""
    path = folder / "resumable.yaml"
    path.write_text(f"extends: {DIGITS}\n{RESUMABLE}")
    return path


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def spikegrad_process(*args: object, limit: int | None = None, timeout: float = 120
                      ) -> subprocess.CompletedProcess:
    """``python -m spikegrad ARGS`` in a fresh process, with ``RLIMIT_FSIZE`` = ``limit`` bytes."""
    def limited() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, "-m", "spikegrad", *map(str, args)], capture_output=True,
                          text=True, env=child_env(), timeout=timeout,
                          preexec_fn=limited if limit is not None else None)


def python_process(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(),
                          timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A finished process must have exited with status 2 and one ``spikegrad: error:`` line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode == 0:
        raise Silent(f"exit 0: {proc.stdout[-200:]!r}")
    if proc.returncode < 0:
        raise Crashed(f"killed by signal {-proc.returncode}: {proc.stderr[-500:]}")
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-800:]}"
    assert len(lines) == 1 and lines[0].startswith("spikegrad: error: "), lines
    for needle in needles:
        assert re.search(needle, lines[0], re.IGNORECASE), f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def shared_folder() -> Path:
    """A folder for what several cases share, removed when the process ends."""
    if "root" not in _SHARED:
        import atexit

        _SHARED["root"] = Path(tempfile.mkdtemp(prefix="spikegrad-adversarial-"))
        atexit.register(shutil.rmtree, _SHARED["root"], True)
    return _SHARED["root"]


def uninterrupted() -> Path:
    """The resumable recipe trained without a stop, in a fresh process (once per process)."""
    if "reference" not in _SHARED:
        root = shared_folder()
        proc = spikegrad_process("train", resumable_recipe(root), "--out", root / "reference", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        _SHARED["reference"] = root / "reference"
    return _SHARED["reference"]


def finished_run(tmp: Path, name: str = "run") -> Path:
    """A copy of :func:`uninterrupted`'s folder."""
    folder = tmp / name
    shutil.copytree(uninterrupted(), folder)
    return folder


def assert_same_run(run: Path, reference: Path) -> None:
    """The run ended where the uninterrupted one did: bitwise the same weights and momentum, the
    same metrics (but timings) and gradient records (:class:`Silent` if not)."""
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    if (a["epoch"], a["iteration"], a["progress"]) != (b["epoch"], b["iteration"], None):
        raise Silent(f"ended at epoch {a['epoch']}, iteration {a['iteration']}, not {b['iteration']}")
    differ = [k for k in b["model"] if not torch.equal(a["model"][k], b["model"][k])]
    differ += [f"momentum {k}" for k in b["optimizer"]["state"] if not torch.equal(
        a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])]
    if differ:
        raise Silent(f"not the uninterrupted run's result: {differ[:3]} differ")

    def rows(folder: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")}
                for row in read_jsonl(folder / "metrics.jsonl")]

    if rows(run) != rows(reference):
        raise Silent("metrics.jsonl differs from the uninterrupted run's")
    if read_gradients(run) != read_gradients(reference):
        raise Silent("gradients.jsonl differs from the uninterrupted run's")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def unchanged(folder: Path, before: dict[str, bytes]) -> None:
    after = files_of(folder)
    if after != before:
        changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
        raise Lost(f"the run in {folder.name} was changed: {changed}")


def no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.glob(".*.tmp")]
    if left:
        raise Lost(f"temporary files left behind: {left}")


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quietly(argv: list[object]) -> tuple[int, str]:
    """``spikegrad ARGV`` in this process: its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue()


#: a fresh process that lowers its file-size limit (``ulimit -f``) once training reaches an
#: iteration, then goes on: the next write past the limit fails with EFBIG
LIMIT_AT = """
import os, resource, sys
from spikegrad import cli
from spikegrad.trainer import Trainer
after = Trainer._after_step
def limited(self):
    after(self)
    if self.iteration == {at}:
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
Trainer._after_step = limited
sys.exit(cli.main({argv!r}))
"""


# --------------------------------------------------------------------------- run folders: guards


@case("guard-resume-from-into-another-run", "run folders",
      "train --resume-from A/last.pt --out B, where B holds a finished run (it was replaced)")
def _(tmp: Path) -> str:
    source, target = finished_run(tmp, "A"), finished_run(tmp, "B")
    before = files_of(target)
    line = cli_refused(["train", "--resume-from", source / "last.pt", "--out", target],
                       "already holds another run", "--overwrite")
    unchanged(target, before)
    return line


for _marker in ("config.yaml", "metrics.jsonl", "summary.json"):
    def _marker_case(tmp: Path, _marker: str = _marker) -> str:
        run = finished_run(tmp)
        for name in [p.name for p in run.iterdir() if p.name != _marker]:
            (run / name).unlink()
        before = files_of(run)
        line = cli_refused(["train", resumable_recipe(tmp), "--out", run], "already holds a run",
                           re.escape(_marker))
        unchanged(run, before)
        return line

    case(f"guard-only-{_marker.split('.')[0]}", "run folders",
         f"train --out a folder holding {_marker} but no last.pt (it was overwritten)")(_marker_case)


@case("guard-overwrite-own-checkpoint", "run folders",
      "train --resume-from A/last.pt --out A --overwrite (would delete what it resumes from)")
def _(tmp: Path) -> str:
    run = finished_run(tmp)
    before = files_of(run)
    line = cli_refused(["train", "--resume-from", run / "last.pt", "--out", run, "--overwrite"],
                       "would delete", "last.pt")
    unchanged(run, before)
    return line


RUN_NAMES = [("dotdot", "../../x", "climbs out"), ("absolute", "{tmp}/abs", "absolute path"),
             ("backslash", "..\\x", "backslash"), ("dot", ".", "names no folder")]
for _id, _name, _needle in RUN_NAMES:
    def _name_case(tmp: Path, _name: str = _name, _needle: str = _needle) -> str:
        work = tmp / "a" / "b"
        work.mkdir(parents=True)
        name = _name.format(tmp=tmp)
        recipe = tiny_recipe(tmp, f"name: '{name}'\n")
        with working_directory(work):
            line = cli_refused(["train", recipe], "run name", _needle)
        written = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name not in ("tiny.yaml", "a", "b")]
        if written:
            raise Lost(f"files written: {written}")
        return line

    case(f"guard-run-name-{_id}", "run folders", f"a recipe with name: {_name.format(tmp='/tmp')!r} "
         "and no --out (it wrote outside runs/)")(_name_case)


@case("guard-run-name-nested", "run folders", "a recipe with name: group/run1 and no --out trains into "
      "runs/group/run1", expect="correct", seconds=60, slow=True)
def _(tmp: Path) -> str:
    recipe = tiny_recipe(tmp, "name: group/run1\n")
    with working_directory(tmp):
        status, output = quietly(["train", recipe])
    assert status == 0, output[-500:]
    assert (tmp / "runs" / "group" / "run1" / "last.pt").is_file()
    return "trained into runs/group/run1"


@case("guard-overwrite-then-crash", "run folders",
      "train --out B --overwrite over a finished run, diverging in epoch 1; then eval B/best.pt "
      "(it reported the old run)", seconds=60)
def _(tmp: Path) -> str:
    run = finished_run(tmp)
    (run / "notes.txt").write_text("mine")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host.2.0").write_bytes(b"old events")
    (run / "teacher").mkdir()
    (run / "teacher" / "summary.json").write_text("{}")
    (run / "teacher" / "mine.txt").write_text("mine")
    line = cli_refused(["train", resumable_recipe(tmp), "--out", run, "--overwrite", "--set",
                        "optim.lr=1e12"], "diverged", "no checkpoint was written yet")
    old = [name for name in ("best.pt", "summary.json", "last.prev.pt", "analysis.json",
                             "tensorboard/events.out.tfevents.1.host.2.0", "teacher/summary.json")
           if (run / name).exists()]
    if old:
        raise Silent(f"the old run's {old} are still there for eval and report")
    if not ((run / "notes.txt").is_file() and (run / "teacher" / "mine.txt").is_file()):
        raise Lost("--overwrite removed a file spikegrad did not write")
    cli_refused(["eval", run / "best.pt"], "does not exist")
    return line


# --------------------------------------------------------------------------- concurrent use


def wait_for_training(folder: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``proc`` holds the lock of ``folder`` (its PID is in ``.lock``) and has written
    its first files."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        lock = folder / ".lock"
        if lock.is_file() and f"PID {proc.pid} " in lock.read_text() and (folder / "metrics.jsonl").is_file():
            return
        time.sleep(0.02)
    raise AssertionError(f"the trainer did not start (exit {proc.poll()})")


@case("lock-two-trainers-at-once", "concurrent use",
      "two spikegrad train processes started together into one --out (both exited 0, metrics mixed)",
      seconds=120, slow=True)
def _(tmp: Path) -> str:
    recipe, run = tiny_recipe(tmp), tmp / "run"
    args = [sys.executable, "-m", "spikegrad", "train", str(recipe), "--out", str(run), "--set",
            "train.epochs=2"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env()) for _ in range(2)]
    done = [subprocess.CompletedProcess(args, p.wait(timeout=300), *p.communicate()) for p in procs]
    statuses = sorted(p.returncode for p in done)
    if statuses == [0, 0]:
        raise Lost("both trainers exited 0 into one folder")
    assert statuses == [0, 2], [(p.returncode, p.stderr[-300:]) for p in done]
    line = error_line(next(p for p in done if p.returncode == 2), "in use by another trainer|already holds")
    if [row["epoch"] for row in read_jsonl(run / "metrics.jsonl")] != [1, 2]:
        raise Lost("metrics.jsonl mixes two runs")
    return line


@case("lock-second-trainer-overwrite", "concurrent use",
      "train --overwrite into a folder another trainer is writing; report of it meanwhile",
      seconds=120, slow=True)
def _(tmp: Path) -> str:
    recipe, run = tiny_recipe(tmp), tmp / "run"
    first = subprocess.Popen([sys.executable, "-m", "spikegrad", "train", str(recipe), "--out", str(run),
                              "--set", "train.epochs=200", "--set", "train.checkpoint_every=5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        wait_for_training(run, first)
        line = cli_refused(["train", recipe, "--out", run, "--overwrite"], "in use by another trainer",
                           f"PID {first.pid} ", re.escape(str(run)))
        if not (run / "config.yaml").is_file():
            raise Lost("the second trainer removed the first one's files")
        from spikegrad import runlock

        assert runlock.holder(run) is not None and f"PID {first.pid} " in runlock.holder(run)
        from spikegrad.report import load_run, render_report

        matplotlib = pytest.importorskip("matplotlib")
        matplotlib.use("Agg")
        assert "still training (PID" in render_report([load_run(run)])
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    if first.returncode != 128 + signal.SIGTERM:
        raise Lost(f"the first trainer ended with {first.returncode}: {first.stderr[-300:]}")
    load_checkpoint(run / "last.pt")
    return line


@case("lock-released-on-sigkill", "concurrent use",
      "a process holding a run folder's lock is killed by SIGKILL; the folder is free again",
      expect="correct", seconds=60, slow=True)
def _(tmp: Path) -> str:
    from spikegrad import runlock

    run = tmp / "run"
    proc = python_process("import os, signal\nfrom spikegrad import runlock\n"
                          f"runlock.acquire({str(run)!r})\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "PID" in (run / ".lock").read_text()  # its holder's line stays, the lock does not
    if runlock.holder(run) is not None:
        raise Lost("the folder stays locked after its holder died")
    runlock.acquire(run)
    runlock.release(run)
    return "the lock went with the process; the folder can be claimed"


# --------------------------------------------------------------------------- full disks


@case("fsize-gradients-append", "full disks",
      "ulimit -f reached while appending gradients.jsonl mid-epoch, then --resume (the torn line "
      "refused the resume)", seconds=120, slow=True)
def _(tmp: Path) -> str:
    reference, run = uninterrupted(), tmp / "run"
    limit = f"os.path.getsize({str(run / 'gradients.jsonl')!r}) + 2500"  # two records and a part
    proc = python_process(LIMIT_AT.format(at=25, limit=limit, argv=["train", str(resumable_recipe(tmp)),
                                                                  "--out", str(run)]))
    line = error_line(proc, "gradients.jsonl", "File too large", r"'last\.pt' keeps epoch 1, batch 20")
    assert not (run / "gradients.jsonl").read_bytes().endswith(b"\n")  # the write was cut off
    resumed = spikegrad_process("train", "--out", run, "--resume")
    if resumed.returncode != 0:
        raise Lost(f"--resume failed: {resumed.stderr[-500:]}")
    assert "torn line" in resumed.stdout
    assert_same_run(run, reference)
    return line


@case("fsize-checkpoint", "full disks",
      "ulimit -f reached while torch.save writes a mid-epoch checkpoint, then --resume (uncaught "
      "RuntimeError)", seconds=120, slow=True)
def _(tmp: Path) -> str:
    reference, run = uninterrupted(), tmp / "run"
    proc = python_process(LIMIT_AT.format(at=25, limit=60_000, argv=["train", str(resumable_recipe(tmp)),
                                                                   "--out", str(run)]))
    line = error_line(proc, "a checkpoint", "File too large", r"'last\.pt' keeps epoch 1, batch 20")
    no_temporaries(run)
    if load_checkpoint(run / "last.pt")["iteration"] != 20:
        raise Lost("last.pt does not hold iteration 20")
    resumed = spikegrad_process("train", "--out", run, "--resume")
    if resumed.returncode != 0:
        raise Lost(f"--resume failed: {resumed.stderr[-500:]}")
    assert_same_run(run, reference)
    return line


@case("fsize-config-on-resume", "full disks",
      "train --resume of a stopped run under ulimit -f of 1000 bytes (config.yaml was cut, the run "
      "lost its recipe)", seconds=90, slow=True)
def _(tmp: Path) -> str:
    from tests.stopped_runs import stopped_run

    # stopped, not finished: --resume of a finished run writes nothing (it says it has finished)
    run = tmp / "run"
    stopped_run(load_config(resumable_recipe(tmp)), run, iteration=15)
    before = files_of(run)
    line = error_line(spikegrad_process("train", "--out", run, "--resume", limit=1000), "config.yaml",
                      "File too large")
    unchanged(run, before)
    no_temporaries(run)
    resumed = spikegrad_process("train", "--out", run, "--resume")
    if resumed.returncode != 0:
        raise Lost(f"--resume failed: {resumed.stderr[-500:]}")
    return line


def _can_mount_tmpfs() -> bool:
    if "tmpfs" not in _SHARED:
        probe = shared_folder() / "probe"
        probe.mkdir(exist_ok=True)
        try:
            proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"',
                                   str(probe)], capture_output=True, timeout=30)
            ok = proc.returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        _SHARED["tmpfs"] = probe if ok else Path()
    return _SHARED["tmpfs"] != Path()


#: the disk fills at the third checkpoint when no file system can be mounted to fill
SIMULATED_FULL = """
import errno, sys, torch
from spikegrad import cli
real, calls = torch.save, []
def full(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) > 2:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    real(obj, handle, *args, **kwargs)
torch.save = full
sys.exit(cli.main({argv!r}))
"""


@case("disk-full-tmpfs", "full disks",
      "train into a 256 KB tmpfs that fills at the third checkpoint, then --resume elsewhere "
      "(ENOSPC simulated where no tmpfs can be mounted)", seconds=120, slow=True)
def _(tmp: Path) -> str:
    reference, recipe, copy = uninterrupted(), resumable_recipe(tmp), tmp / "run"
    if _can_mount_tmpfs():
        mount = tmp / "disk"
        mount.mkdir()
        script = ('mount -t tmpfs -o size=256k tmpfs "$0" || exit 90; "$1" -m spikegrad train "$2" '
                  '--out "$0/run"; status=$?; cp -a "$0/run" "$3"; exit $status')
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount), sys.executable,
                               str(recipe), str(copy)], capture_output=True, text=True, env=child_env(),
                              timeout=120)
        how = "a full 256 KB tmpfs"
    else:
        proc = python_process(SIMULATED_FULL.format(argv=["train", str(recipe), "--out", str(copy)]))
        how = "ENOSPC simulated (no tmpfs could be mounted)"
    line = error_line(proc, "No space left on device", r"'last\.pt' keeps epoch 1, batch 20")
    no_temporaries(copy)
    resumed = spikegrad_process("train", "--out", copy, "--resume")
    if resumed.returncode != 0:
        raise Lost(f"--resume failed: {resumed.stderr[-500:]}")
    assert_same_run(copy, reference)
    return f"{line} [{how}]"


TENSORBOARD_FULL = """
import errno, sys
from spikegrad import cli
from spikegrad.tensorboard_log import TensorBoardLogger
def full(self, row):
    raise OSError(errno.ENOSPC, "No space left on device")
TensorBoardLogger.log_epoch = full
sys.exit(cli.main({argv!r}))
"""


@case("disk-full-tensorboard", "full disks",
      "the disk fills while TensorBoard events are written (simulated ENOSPC)", seconds=90, slow=True)
def _(tmp: Path) -> str:
    pytest.importorskip("tensorboard")
    run = tmp / "run"
    proc = python_process(TENSORBOARD_FULL.format(argv=[
        "train", str(tiny_recipe(tmp)), "--out", str(run), "--set", "analysis.tensorboard=true"]))
    line = error_line(proc, "TensorBoard", "No space left on device", r"'last\.pt' keeps the end of epoch 1")
    load_checkpoint(run / "last.pt")
    return line


# --------------------------------------------------------------------------- torn and left-over files


@case("torn-lines-on-resume", "torn and left-over files",
      "--resume of a run stopped mid-epoch whose metrics.jsonl and gradients.jsonl end in a cut line",
      expect="correct", seconds=90, slow=True)
def _(tmp: Path) -> str:
    from tests.stopped_runs import stopped_run

    reference, run = uninterrupted(), tmp / "run"
    stopped_run(load_config(resumable_recipe(tmp)), run, iteration=15)
    with (run / "gradients.jsonl").open("ab") as handle:
        handle.write(b'{"epoch": 1, "iteration": 16, "norms": {"features.0')
    with (run / "metrics.jsonl").open("ab") as handle:
        handle.write(b'{"epoch": 1, "lr": 0.1, "tra')
    status, output = quietly(["train", "--out", run, "--resume"])
    if status != 0:
        raise Lost(f"--resume failed: {output[-500:]}")
    assert "gradients.jsonl' ended in a torn line" in output and "metrics.jsonl' ended in a torn" in output
    assert_same_run(run, reference)
    return "resumed; both torn lines dropped and noted; the same result as an uninterrupted run"


@case("orphan-temporaries", "torn and left-over files",
      "--resume of a stopped run whose folder holds the temporaries of killed checkpoint and side-file "
      "writes", expect="correct", seconds=60, slow=True)
def _(tmp: Path) -> str:
    from tests.stopped_runs import stopped_run

    # stopped, not finished: --resume of a finished run writes nothing (it says it has finished)
    run = tmp / "run"
    stopped_run(load_config(resumable_recipe(tmp)), run, iteration=15)
    orphans = [".last.pt.k2j4h5g6.tmp", ".best.pt.abcd_123.tmp", ".gradients.jsonl.zz99yy88.tmp"]
    for name in orphans:
        (run / name).write_bytes(b"\0" * 50_000)
    mine = [".notes.abcdefgh.tmp", "keep.tmp", ".last.pt.tmp"]  # not a temporary spikegrad makes
    for name in mine:
        (run / name).write_text("mine")
    status, output = quietly(["train", "--out", run, "--resume"])
    assert status == 0, output[-500:]
    left = [name for name in orphans if (run / name).exists()]
    if left:
        raise Lost(f"orphan temporaries stay forever: {left}")
    if not all((run / name).is_file() for name in mine):
        raise Lost("a file spikegrad did not write was removed")
    assert "removed 3 temporary file(s)" in output
    return "removed the 3 orphans, kept the user's files"


@case("report-torn-last-line", "torn and left-over files",
      "report of a run whose metrics.jsonl ends in a cut line (a run in progress or killed)",
      expect="correct", seconds=60)
def _(tmp: Path) -> str:
    pytest.importorskip("matplotlib")
    run = metrics_folder(tmp, [])
    with (run / "metrics.jsonl").open("ab") as handle:
        handle.write(b'{"epoch": 2, "lr": 0.1, "train_lo')
    status, output = quietly(["report", run])
    assert status == 0, output
    from spikegrad.report import load_run

    assert len(load_run(run).metrics) == 1
    return output.strip().splitlines()[-1].replace(str(tmp), "<tmp>")


@case("gradients-torn-last-line", "torn and left-over files",
      "plot-gradients/read_gradients of a gradients.jsonl that ends in a cut line", expect="correct")
def _(tmp: Path) -> str:
    path = tmp / "gradients.jsonl"
    record = {"epoch": 1, "iteration": 1, "norms": {"a": 1.0}, "first_layer_hist": {"edges": [-1, 1],
                                                                                    "counts": [1]}}
    path.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])
    assert read_gradients(path) == [record]
    return "read 1 record; the cut line left out"


# --------------------------------------------------------------------------- LTL teacher


@case("teacher-newer-half-trained", "LTL teacher",
      "teacher/ holds an old finished teacher's summary.json and a newer teacher's checkpoint stopped "
      "mid-epoch (it was used half-trained)", expect="correct", seconds=90, slow=True)
def _(tmp: Path) -> str:
    import spikegrad.run as run_module
    from tests.stopped_runs import stopped_run

    older = load_config(tiny_recipe(tmp), ["model.kind=ann", "diagnostics.gradient_interval=0",
                                           "data.batch_size=128"])
    newer = older.with_overrides({"train.seed": 1})
    folder = tmp / "teacher"
    run_module.train(older, folder, verbose=False)
    old_summary = (folder / "summary.json").read_text()
    # as an older spikegrad left it: it wrote over the folder and kept the old summary.json
    stopped_run(newer, folder, iteration=5, overwrite=None)
    (folder / "summary.json").write_text(old_summary)
    assert (folder / "summary.json").is_file() and load_checkpoint(folder / "last.pt")["progress"]
    teacher = run_module._train_teacher(newer, folder, verbose=False)
    final = load_checkpoint(folder / "last.pt")
    if final["progress"] is not None or final["epoch"] != 1:
        raise Silent("the teacher handed to LTL is half-trained")
    if any(not torch.equal(v, final["model"][k]) for k, v in teacher.state_dict().items()):
        raise Silent("the teacher handed to LTL is not the finished one")
    return "continued from its checkpoint to the end of its epochs"


@case("teacher-damaged-checkpoint", "LTL teacher", "an LTL run whose teacher/last.pt is cut in half")
def _(tmp: Path) -> str:
    recipe = tmp / "ltl.yaml"
    recipe.write_text(f"extends: {DIGITS.with_name('digits_ltl.yaml')}\nmodel: {{width: 0.25, T: 2}}\n"
                      "ltl: {teacher_set: [model.kind=ann, model.width=0.25]}\n")
    (tmp / "run" / "teacher").mkdir(parents=True)
    (tmp / "run" / "teacher" / "last.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    return cli_refused(["train", recipe, "--out", tmp / "run"], "LTL teacher cannot be read",
                       r"teacher/last\.pt", "delete")


# --------------------------------------------------------------------------- the tests


def test_cases_form_a_table():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for c in CASES:
        assert c.category in CATEGORIES, c
        assert c.expect in ("clear", "correct") and c.what and "\n" not in c.what, c


@pytest.mark.parametrize("hostile", [pytest.param(c, marks=[pytest.mark.slow] if c.slow else [])
                                     for c in CASES], ids=[c.id for c in CASES])
def test_hostile_input(hostile: Case, tmp_path: Path):
    outcome = run_case(hostile, tmp_path)
    assert outcome.kind == hostile.expect, f"{outcome.kind}: {outcome.message}"
    assert outcome.seconds < hostile.seconds, f"took {outcome.seconds:.1f} s: {outcome.message}"


if __name__ == "__main__":  # a quick table on the terminal: python -m tests.test_adversarial
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        for index, c in enumerate(CASES):
            result = run_case(c, Path(work) / str(index))
            print(f"{result.kind:<9} {result.seconds:5.1f}s  {c.id}: {result.message.splitlines()[-1]}",
                  file=sys.stdout)
