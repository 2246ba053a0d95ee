"""Regenerate the table of faults and bad inputs in ``docs/reliability.md`` from real runs.

    python -m tools.reliability_table          # a few minutes on 2 CPU cores

``--cases WORD ...`` runs only the cases whose description contains a word (the table in
``--doc`` then holds only those rows); ``--doc`` writes the table into another copy of the
page. ``--part faults`` or ``--part adversarial`` regenerates one of the page's two tables.

The second table is that of the hostile inputs of ``tests/test_adversarial.py``: every case
of its ``CASES`` is run (:func:`tests.test_adversarial.run_case`, slow ones included) and
classified as one of its ``OUTCOMES``; the table gives the counts per category (tried,
clear, correct, traceback, silent, lost, hung, crashed) and one row per case.

Every case runs for real in a fresh process: the ``spikegrad`` command (or ``torchrun`` with
two processes), or a short Python snippet for the library API. The table shows the exit
status and the message the user sees, verbatim: the last line the process printed to stderr
(for torchrun, the line spikegrad printed), with the temporary folder written ``<tmp>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"
ADVERSARIAL_BEGIN, ADVERSARIAL_END = "<!-- adversarial:begin -->", "<!-- adversarial:end -->"
TINY = """extends: {recipe}
model: {{width: 0.25, T: 2}}
train: {{epochs: 2, threads: 1, progress: false, device: cpu, checkpoint_every: 10}}
"""


@dataclass
class Case:
    group: str
    what: str
    argv: list[str] | None = None  # spikegrad's arguments
    python: str | None = None  # or a Python snippet (the library API)
    torchrun: bool = False  # run the spikegrad command on two processes
    stop: int | None = None  # send this signal once training is under way
    expect: int | None = None  # the exit status a correct build gives
    show: Callable[[subprocess.CompletedProcess, Path], str] | None = None


def last_line(text: str, prefix: str = "") -> str:
    lines = [line for line in text.splitlines() if line.strip() and line.startswith(prefix)]
    return lines[-1].strip() if lines else ""


def on_rank0(proc: subprocess.CompletedProcess, _work: Path) -> str:
    """spikegrad's line among torchrun's output (torchrun adds its own report of the failure)."""
    return last_line(proc.stderr, "spikegrad:")


class Exploit:
    """Unpickling this would call ``print``: a stand-in for code a malicious file could run."""

    def __reduce__(self):
        return (print, ("this should never print",))


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def command(case: Case, work: Path) -> list[str]:
    if case.python is not None:
        return [sys.executable, "-c", case.python.replace("<tmp>", str(work))]
    argv = [a.replace("<tmp>", str(work)) for a in case.argv]
    if case.torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "2", "-m", "spikegrad", *argv]
    return [sys.executable, "-m", "spikegrad", *argv]


def run(case: Case, work: Path) -> subprocess.CompletedProcess:
    cmd = command(case, work)
    if case.stop is None:
        return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600,
                              cwd=work)
    out = work / "stopped"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=work)
    while proc.poll() is None and not (out / "last.pt").exists():
        time.sleep(0.02)
    proc.send_signal(case.stop)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


#: the files of trained runs that some cases use (``prepare`` trains them only when needed)
TRAINED = ("run", "ann", "damaged", "cut.pt", "v9.pt")


def needs_trained_runs(cases: list[Case]) -> bool:
    words = " ".join(" ".join(c.argv or []) + (c.python or "") for c in cases).replace("/", " ").split()
    return any(name in words for name in TRAINED)


def prepare(work: Path, trained_runs: bool = True) -> None:
    """The files the cases use: a tiny recipe, a trained run, damaged and foreign files."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from spikegrad.recipes import recipe_path

    (work / "tiny.yaml").write_text(TINY.format(recipe=recipe_path("digits")))
    (work / "ltl.yaml").write_text(f"extends: {recipe_path('digits_ltl')}\n")
    (work / "bad.yaml").write_text("model: {T: [4\n")
    (work / "file").write_text("")
    (work / "empty").mkdir()
    (work / "zero.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, work / "foreign.pt")
    torch.save({"format": "spikegrad-checkpoint", "payload": Exploit()}, work / "evil.pt")
    if not trained_runs:
        return
    subprocess.run([sys.executable, "-m", "spikegrad", "train", "tiny.yaml", "--out", "run"],
                   check=True, capture_output=True, env=env(), cwd=work)
    subprocess.run([sys.executable, "-m", "spikegrad", "train", "tiny.yaml", "--out", "ann",
                    "--set", "model.kind=ann", "--set", "train.epochs=1"],
                   check=True, capture_output=True, env=env(), cwd=work)
    data = (work / "run" / "last.pt").read_bytes()
    (work / "cut.pt").write_bytes(data[: len(data) // 2])
    shutil.copytree(work / "run", work / "damaged")
    (work / "damaged" / "last.pt").write_bytes(data[: len(data) // 2])
    payload = torch.load(work / "run" / "last.pt", weights_only=True)
    torch.save({**payload, "version": 9}, work / "v9.pt")


LABELS = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from spikegrad import Config, Trainer
net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Unflatten(0, (1, -1)))  # [T=1, B, 3]
x, y = {x}, {y}
cfg = Config().with_overrides({{"train.epochs": 1, "train.device": "cpu"}})
Trainer(net, TensorDataset(x, y), TensorDataset(x, y), cfg, verbose=False).fit()
"""

API = "from spikegrad.cli import main\nimport sys\nfrom spikegrad.errors import UserError\n"


def api(body: str) -> str:
    """A snippet whose UserError is printed the way the command line prints it."""
    return (API + "try:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
            + "except UserError as exc:\n    print(f'UserError: {exc}', file=sys.stderr)\n"
            "    sys.exit(2)\n")


def labels(x: str, y: str) -> str:
    return api(LABELS.format(x=x, y=y))


CASES: list[Case] = [
    # ------------------------------------------------------------------ config
    Case("config", "unknown key", ["train", "tiny.yaml", "--set", "model.nmae=x"], expect=2),
    Case("config", "unknown section", ["train", "tiny.yaml", "--set", "trian.epochs=3"], expect=2),
    Case("config", "wrong type (integer)", ["train", "tiny.yaml", "--set", "train.epochs=three"],
         expect=2),
    Case("config", "wrong type (boolean)", ["train", "tiny.yaml", "--set", "train.amp=1"], expect=2),
    Case("config", "out of range", ["train", "tiny.yaml", "--set", "model.T=0"], expect=2),
    Case("config", "not one of the choices",
         ["train", "tiny.yaml", "--set", "model.neuron.reset=zero"], expect=2),
    Case("config", "override without a value", ["train", "tiny.yaml", "--set", "train.epochs"],
         expect=2),
    Case("config", "recipe file missing", ["train", "nope.yaml"], expect=2),
    Case("config", "recipe not valid YAML", ["train", "bad.yaml"], expect=2),
    Case("config", "no recipe and nothing to resume", ["train"], expect=2),
    Case("config", "unknown model", ["train", "tiny.yaml", "--set", "model.name=resnet17"],
         expect=2),
    Case("config", "unknown surrogate",
         ["train", "tiny.yaml", "--set", "model.surrogate={name: dspik}"], expect=2),
    Case("config", "unknown dataset", ["train", "tiny.yaml", "--set", "data.name=cifar11"],
         expect=2),
    Case("config", "unknown dataset option",
         ["train", "tiny.yaml", "--set", "data.options={size: 3}"], expect=2),
    Case("config", "unknown augmentation",
         ["train", "tiny.yaml", "--set", "data.augment=[rotate:3]"], expect=2),
    Case("config", "device not available", ["train", "tiny.yaml", "--set", "train.device=cuda"],
         expect=2),
    Case("config", "a setting that cannot apply (reset potential of a soft reset)",
         ["train", "tiny.yaml", "--set", "model.neuron.reset=soft", "--set", "model.neuron.v_reset=0.5"],
         expect=2),
    Case("config", "a setting that cannot apply (SGD momentum under Adam)",
         ["train", "tiny.yaml", "--set", "optim.name=adam", "--set", "optim.momentum=0.5"], expect=2),
    Case("config", "a data root for the built-in digits",
         ["train", "tiny.yaml", "--set", "data.root=/data"], expect=2),
    Case("config", "a value out of range in a config built in Python (API)", python=api("""
import dataclasses
import torch
from torch.utils.data import TensorDataset
from spikegrad import Trainer
from spikegrad.config import Config, DspikeConfig
data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
cfg = dataclasses.replace(Config(), dspike=DspikeConfig(adaptive=True, every=0))
Trainer(torch.nn.Linear(2, 2), data, data, cfg, verbose=False)
"""), expect=2),
    Case("config", "a method component given by hand with a setting out of range (API)", python=api("""
import torch
from torch.utils.data import TensorDataset
from spikegrad import ShortcutBackprop, Trainer
data = TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
Trainer(torch.nn.Linear(2, 2), data, data, components=[ShortcutBackprop(lambda0=-1.0)], verbose=False)
"""), expect=2),
    Case("config", "unknown command", ["trian", "tiny.yaml"], expect=2),
    Case("config", "bad command-line option", ["eval", "run/last.pt", "--split", "val"], expect=2),
    Case("other commands", "report of a missing run folder", ["report", "nowhere"], expect=2),
    Case("other commands", "export of a missing checkpoint", ["export", "nope.pt", "--out", "x.nir"],
         expect=2),
    Case("other commands", "export with a malformed input shape",
         ["export", "run/last.pt", "--out", "x.nir", "--input-shape", "3,a"], expect=2),
    Case("other commands", "download of a built-in dataset",
         ["download", "digits", "--root", "d"], expect=2),
    Case("other commands", "demo into an unwritable folder", ["demo", "--quick", "--out", "file/demo"],
         expect=2),
    Case("other commands", "fdg of a missing checkpoint", ["fdg", "nope.pt"], expect=2),
    Case("other commands", "fdg of an unknown layer", ["fdg", "run/last.pt", "--layer", "conv9"],
         expect=2),
    Case("other commands", "plot-gradients of a run without gradients.jsonl",
         ["plot-gradients", "empty", "--out", "g.png"], expect=2),
    # ------------------------------------------------------------------ methods
    Case("methods", "adaptive temperature without a Dspike surrogate",
         ["train", "tiny.yaml", "--set", "dspike.adaptive=true",
          "--set", "model.surrogate={name: atan}"], expect=2),
    Case("methods", "FDG step out of range", ["train", "tiny.yaml", "--set", "dspike.epsilon=0"],
         expect=2),
    Case("methods", "shortcut branch at a module the model lacks",
         ["train", "tiny.yaml", "--set", "shortcut.enabled=true",
          "--set", "shortcut.attach=[features.9]"], expect=2),
    Case("methods", "unknown balance-coefficient schedule",
         ["train", "tiny.yaml", "--set", "shortcut.enabled=true",
          "--set", "shortcut.schedule=exponential"], expect=2),
    # ------------------------------------------------------------------ data
    Case("data", "labels out of range (API)",
         python=labels("torch.randn(8, 4)", "torch.tensor([0, 1, 2, 7, 0, 1, 2, 0])"), expect=2),
    Case("data", "soft (float) labels (API)", python=labels("torch.randn(8, 4)", "torch.rand(8)"),
         expect=2),
    Case("data", "one-hot labels (API)",
         python=labels("torch.randn(8, 4)", "torch.eye(3)[torch.randint(0, 3, (8,))].long()"),
         expect=2),
    Case("data", "samples that do not fit the model (API)",
         python=labels("torch.randn(8, 5)", "torch.zeros(8, dtype=torch.long)"), expect=2),
    Case("data", "RGB images into a 1-channel model (API)", python=api("""
import torch
from torch.utils.data import TensorDataset
from spikegrad import Config, Trainer, models
data = TensorDataset(torch.rand(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))
net = models.create("digits_cnn", in_channels=1, T=2, width=0.25)
Trainer(net, data, data, Config().with_overrides({"train.device": "cpu"}), verbose=False).fit()
"""), expect=2),
    Case("data", "empty training set (API)", python=labels("torch.randn(0, 4)",
                                                           "torch.zeros(0, dtype=torch.long)"),
         expect=2),
    Case("data", "file dataset without data.root",
         ["train", "tiny.yaml", "--set", "data.name=cifar10"], expect=2),
    Case("data", "data.root that does not exist",
         ["train", "tiny.yaml", "--set", "data.name=cifar10", "--set", "data.root=nothing"],
         expect=2),
    Case("data", "data.root with the wrong layout (CIFAR-10)",
         ["train", "tiny.yaml", "--set", "data.name=cifar10", "--set", "data.root=empty"],
         expect=2),
    Case("data", "data.root with the wrong layout (Tiny ImageNet)",
         ["train", "tiny.yaml", "--set", "data.name=tiny_imagenet", "--set", "data.root=empty"],
         expect=2),
    Case("data", "data.root with the wrong layout (N-MNIST events)",
         ["train", "tiny.yaml", "--set", "data.name=nmnist", "--set", "data.root=empty"],
         expect=2),
    Case("data", "a builder of your own whose files are missing", python=api("""
import torch
from spikegrad import load_config, train
from spikegrad.data import register_dataset
@register_dataset("my_files")
def my_files(root="data/mine"):  # a builder that leaves missing files to torch.load
    return torch.load(f"{root}/train.pt"), torch.load(f"{root}/test.pt"), None
train(load_config(None, ["data.name=my_files", "data.root=/nonexistent"]), None)
"""), expect=2),
    Case("data", "event frames with another T than model.T", python=api("""
import torch
from torch.utils.data import TensorDataset
from spikegrad import load_config, train
from spikegrad.data import DatasetInfo, register_dataset
@register_dataset("frames")
def frames(root=None):
    d = TensorDataset(torch.rand(8, 6, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    return d, d, DatasetInfo(10, (1, 8, 8), time_steps=6)
train(load_config(None, ["data.name=frames", "model.T=4"]), None)
"""), expect=2),
    # ------------------------------------------------------------------ tensors
    Case("tensors", "neuron input without a time axis", python=api("""
import torch
from spikegrad import neurons
neurons.LIF()(torch.randn(5))
"""), expect=2),
    Case("tensors", "model input neither [B, C, H, W] nor [T, B, C, H, W]", python=api("""
import torch
from spikegrad import models
models.create("digits_cnn", T=2)(torch.randn(8, 8))
"""), expect=2),
    Case("tensors", "batch size changes while a state is carried", python=api("""
import torch
from spikegrad import neurons
lif = neurons.LIF()
with neurons.streaming(lif):
    lif(torch.randn(4, 3, 10))
    lif(torch.randn(4, 2, 10))
"""), expect=2),
    Case("tensors", "model returns [B, classes] (no time axis) (API)", python=api("""
import torch
from torch import nn
from torch.utils.data import TensorDataset
from spikegrad import Config, Trainer
data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
Trainer(nn.Linear(4, 3), data, data, Config().with_overrides({"train.device": "cpu"}),
        verbose=False).fit()
"""), expect=2),
    Case("tensors", "LTL teacher of another width than the student",
         ["train", "ltl.yaml", "--set", "ltl.teacher_checkpoint=ann/last.pt", "--out", "ltl"],
         expect=2),
    Case("tensors", "LTL teacher that is not an ANN",
         ["train", "ltl.yaml", "--set", "ltl.teacher_checkpoint=run/last.pt", "--out", "ltl"],
         expect=2),
    # ------------------------------------------------------------------ checkpoints
    Case("checkpoints", "checkpoint missing", ["eval", "nope.pt"], expect=2),
    Case("checkpoints", "truncated checkpoint", ["eval", "cut.pt"], expect=2),
    Case("checkpoints", "empty (0-byte) checkpoint", ["eval", "zero.pt"], expect=2),
    Case("checkpoints", "not a spikegrad checkpoint", ["eval", "foreign.pt"], expect=2),
    Case("checkpoints", "a pickle that would run code", ["eval", "evil.pt"], expect=2),
    Case("checkpoints", "unknown format version", ["eval", "v9.pt"], expect=2),
    Case("checkpoints", "eval on a missing device", ["eval", "run/last.pt", "--device", "cuda"],
         expect=2),
    Case("checkpoints", "--resume with nothing to resume",
         ["train", "tiny.yaml", "--out", "empty", "--resume"], expect=2),
    Case("checkpoints", "--resume, newest checkpoint truncated",
         ["train", "tiny.yaml", "--out", "damaged", "--resume"], expect=2),
    Case("checkpoints", "--resume with a config that changes the run",
         ["train", "tiny.yaml", "--out", "run", "--resume", "--set", "optim.lr=0.05"], expect=2),
    Case("checkpoints", "--resume with another number of loader workers",
         ["train", "tiny.yaml", "--out", "run", "--resume", "--set", "data.num_workers=1"],
         expect=2),
    Case("checkpoints", "training again into a folder that holds a run (no --resume)",
         ["train", "tiny.yaml", "--out", "run"], expect=2),
    Case("checkpoints", "--resume into another architecture",
         ["train", "tiny.yaml", "--out", "run", "--resume", "--set", "model.width=0.5",
          "--allow-config-change"], expect=2),
    # ------------------------------------------------------------------ faults
    Case("faults", "run folder not writable", ["train", "tiny.yaml", "--out", "file/run"],
         expect=2),
    Case("faults", "loss becomes NaN/inf", ["train", "tiny.yaml", "--out", "nan",
                                             "--set", "optim.lr=1e12"], expect=2),
    Case("faults", "loss becomes NaN/inf, train.nonfinite=skip",
         ["train", "tiny.yaml", "--out", "skip", "--set", "optim.lr=1e12",
          "--set", "train.nonfinite=skip", "--set", "train.epochs=1"], expect=0,
         show=lambda p, work: "exit 0; metrics.jsonl: " + ", ".join(re.findall(
             r'"nonfinite_(?:steps|samples)": \d+', (work / "skip" / "metrics.jsonl").read_text()))),
    Case("faults", "disk full while writing a checkpoint", python=api("""
import errno, torch
from spikegrad import load_config, train
real, calls = torch.save, []
def full(obj, f, *a, **k):
    calls.append(1)
    if len(calls) > 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(obj, f, *a, **k)
torch.save = full
train(load_config("tiny.yaml", ["train.checkpoint_every=0"]), "full", verbose=False)
"""), expect=2),
    Case("faults", "SIGTERM (e.g. a cluster's preemption)",
         ["train", "tiny.yaml", "--out", "stopped", "--set", "train.epochs=4"],
         stop=signal.SIGTERM, expect=143),
    Case("faults", "SIGINT (Ctrl-C)",
         ["train", "tiny.yaml", "--out", "stopped", "--set", "train.epochs=4"],
         stop=signal.SIGINT, expect=130),
    Case("faults", "SIGKILL (out of memory killer, power)",
         ["train", "tiny.yaml", "--out", "stopped", "--set", "train.epochs=4"],
         stop=signal.SIGKILL, expect=-9,
         show=lambda p, work: "(nothing: the process is gone; `--resume` continues from the last "
                              "periodic checkpoint)" if not p.stderr.strip() else last_line(p.stderr)),
    # ------------------------------------------------------------------ distributed
    Case("torchrun", "global batch not divisible by the processes",
         ["train", "tiny.yaml", "--out", "ddp", "--set", "data.batch_size=33"], torchrun=True,
         expect=1, show=on_rank0),
    Case("torchrun", "SyncBN on the CPU",
         ["train", "tiny.yaml", "--out", "ddp", "--set", "distributed.sync_bn=true"],
         torchrun=True, expect=1, show=on_rank0),
    Case("torchrun", "NCCL on the CPU",
         ["train", "tiny.yaml", "--out", "ddp", "--set", "distributed.backend=nccl"],
         torchrun=True, expect=1, show=on_rank0),
    Case("torchrun", "SIGTERM to torchrun",
         ["train", "tiny.yaml", "--out", "stopped", "--set", "train.epochs=4"], torchrun=True,
         stop=signal.SIGTERM, expect=1, show=on_rank0),
]


def shown(case: Case, proc: subprocess.CompletedProcess, work: Path) -> str:
    text = case.show(proc, work) if case.show else last_line(proc.stderr)
    return text.replace(str(work), "<tmp>").replace("|", "\\|")


def display(case: Case) -> str:
    if case.python is not None:
        return "Python snippet (see the script)"
    prefix = "torchrun --nproc_per_node 2 -m spikegrad" if case.torchrun else "spikegrad"
    stop = f" + {signal.Signals(case.stop).name}" if case.stop else ""
    return f"`{prefix} {' '.join(case.argv)}`{stop}"


def replace_between(doc: str, begin: str, end: str, text: str) -> str:
    start, stop = doc.index(begin) + len(begin), doc.index(end)
    return doc[:start] + "\n" + text + "\n" + doc[stop:]


def faults_table(cases: list[Case]) -> tuple[str, list[str]]:
    """The table of :data:`CASES` (each run in a fresh process) and what went unexpectedly."""
    work = Path(tempfile.mkdtemp(prefix="spikegrad-reliability-"))
    try:
        prepare(work, trained_runs=needs_trained_runs(cases))
        rows, failures = [], []
        for case in cases:
            proc = run(case, work)
            text = shown(case, proc, work)
            if "Traceback" in proc.stderr and not case.torchrun:
                failures.append(f"{case.what}: traceback")
            if case.expect is not None and proc.returncode != case.expect:
                failures.append(f"{case.what}: exit {proc.returncode}, expected {case.expect}")
            rows.append(f"| {case.group} | {case.what} | {display(case)} | {proc.returncode} | "
                        f"{text} |")
            print(f"{proc.returncode:>4}  {case.what}: {text}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(["| kind | input or fault | command | exit | what the user sees |",
                      "|---|---|---|---|---|", *rows]), failures


def cell(text: str, work: Path) -> str:
    """One line of a table cell: the temporary folder written ``<tmp>``, pipes escaped."""
    lines = [line.strip() for line in text.replace(str(work), "<tmp>").splitlines() if line.strip()]
    return (lines[-1] if lines else "").replace("|", "\\|")


def adversarial_table(words: list[str] | None) -> tuple[str, list[str]]:
    """The counts and rows of ``tests/test_adversarial.py``'s cases (run in this process, each in
    a fresh temporary folder) and the cases whose outcome is not the one expected."""
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    os.environ["OMP_NUM_THREADS"] = "1"
    from tests.test_adversarial import CASES as HOSTILE
    from tests.test_adversarial import OUTCOMES, run_case

    hostile = [c for c in HOSTILE if not words or any(w in c.what or w in c.id for w in words)]
    counts: dict[str, dict[str, int]] = {}
    rows, failures = [], []
    work = Path(tempfile.mkdtemp(prefix="spikegrad-adversarial-"))
    try:
        for index, c in enumerate(hostile):
            folder = work / str(index)
            outcome = run_case(c, folder)
            tally = counts.setdefault(c.category, dict.fromkeys(OUTCOMES, 0))
            tally[outcome.kind] += 1
            if outcome.kind != c.expect:
                failures.append(f"{c.id}: {outcome.kind}, expected {c.expect}: {outcome.message}")
            rows.append(f"| {c.category} | `{c.id}` | {cell(c.what, folder)} | {outcome.kind} | "
                        f"{cell(outcome.message, folder)} |")
            print(f"{outcome.kind:<9} {outcome.seconds:6.1f}s  {c.id}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = {kind: sum(t[kind] for t in counts.values()) for kind in OUTCOMES}
    header = ["| category | tried | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 2) + "|"]
    lines = [f"| {name} | {sum(t.values())} | " + " | ".join(str(t[k]) for k in OUTCOMES) + " |"
             for name, t in counts.items()]
    lines.append(f"| **all** | **{sum(total.values())}** | "
                 + " | ".join(f"**{total[k]}**" for k in OUTCOMES) + " |")
    table = "\n".join([*header, *lines, "",
                       "| category | case | input | outcome | what the user sees (or the result) |",
                       "|---|---|---|---|---|", *rows])
    return table, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", metavar="WORD",
                        help="only the cases whose description (or id) contains one of these words")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page whose tables are rewritten")
    parser.add_argument("--part", choices=("all", "faults", "adversarial"), default="all",
                        help="which table to regenerate (default: both)")
    args = parser.parse_args(argv)
    failures = []
    if args.part in ("all", "faults"):
        cases = [c for c in CASES if not args.cases or any(w in c.what for w in args.cases)]
        table, failed = faults_table(cases)
        args.doc.write_text(replace_between(args.doc.read_text(), BEGIN, END, table))
        failures += failed
    if args.part in ("all", "adversarial"):
        table, failed = adversarial_table(args.cases)
        args.doc.write_text(replace_between(args.doc.read_text(), ADVERSARIAL_BEGIN, ADVERSARIAL_END,
                                            table))
        failures += failed
    for failure in failures:
        print("UNEXPECTED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
