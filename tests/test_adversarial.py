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
import math
import pickle
import re
import signal
import sys
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
from spikegrad.errors import UserError
from spikegrad.resume import rng_state
from spikegrad.trainer import Trainer, evaluate_model
from tests.fixtures import write_cifar

DIGITS = Path(spikegrad.__file__).parent / "configs" / "digits.yaml"

# --------------------------------------------------------------------------- the table of cases

#: what can happen to an input: the first two are right, the others are defects
OUTCOMES = ("clear", "correct", "traceback", "silent", "lost", "hung", "crashed")
CATEGORIES = ("pickled data", "recipes and YAML", "config values", "model options", "checkpoints",
              "tensors", "datasets", "report", "export", "calibrate")


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


def case(id: str, category: str, what: str, expect: str = "clear", seconds: float = 30.0):
    """Register the decorated function as a case."""
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        CASES.append(Case(id, category, what, fn, expect, seconds))
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


# --------------------------------------------------------------------------- the tests


def test_cases_form_a_table():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for c in CASES:
        assert c.category in CATEGORIES, c
        assert c.expect in ("clear", "correct") and c.what and "\n" not in c.what, c


@pytest.mark.parametrize("hostile", CASES, ids=[c.id for c in CASES])
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
