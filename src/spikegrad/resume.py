"""What exact resumption needs beyond weights: RNG states, the epoch in progress, signals.

A resumed run continues bit for bit where the interrupted one stopped (on the CPU, with the
same number of threads) because a checkpoint also holds

- every random generator: Python's ``random``, NumPy's global one, torch's CPU generator
  and each CUDA device's (augmentation, Poisson encoding, dropout and any component that
  draws from them), stored as tensors and lists so ``torch.load(weights_only=True)`` reads
  them;
- the data order: the shuffling generator's state at the start of the epoch and the number
  of batches already trained (:class:`spikegrad.data.sampler.GlobalBatchSampler` replays the
  permutation and skips them);
- the epoch in progress (:class:`EpochProgress`): running sums of the training metrics and
  the fields components reported at the epoch's start.

:class:`StopOnSignal` turns SIGTERM and SIGINT into a request that the trainer honours after
the current step: it saves ``last.pt`` and raises :class:`TrainingStopped`.
"""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from spikegrad.config import Config
from spikegrad.errors import UserError

if TYPE_CHECKING:
    from spikegrad.component import StepOutput

# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """The state of every global random generator, as tensors and plain values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the epoch in progress


@dataclass
class EpochProgress:
    """Where the current training epoch stands; checkpointed so a resume finishes it exactly.

    ``row`` holds the metrics fields known at the epoch's start (``epoch``, ``lr`` and what
    components returned from ``on_epoch_start``); ``batches`` the global batches trained so
    far; the sums are this process's (a checkpoint stores them summed over processes).
    """

    row: dict[str, Any]
    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    nonfinite: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # the running loss sum and hits of record() are tensors on the step's device (on CUDA:
        # no synchronisation per step) until flush(); float64 added in the same order as the
        # Python floats they replace, so the numbers are the same
        self._loss: Tensor | None = None
        self._correct: Tensor | None = None

    def record(self, out: StepOutput | None, targets: Tensor, counts_steps: bool = True) -> None:
        """One more batch: its loss and hits, or (``out`` None) a skipped non-finite step,
        counted where ``counts_steps`` (under torchrun every process skips the step and only
        rank 0 counts it, so the sum over processes counts each step once)."""
        self.batches += 1
        if out is None:
            self.nonfinite += int(counts_steps)
            return
        n = targets.shape[0]
        loss, hits = out.loss.detach().double(), (out.logits.argmax(1) == targets).sum()
        if self._loss is None:  # torch.full fills on the device: no blocking copy of the start value
            self._loss = torch.full((), self.loss_sum, dtype=torch.float64, device=loss.device)
        if self._correct is None:
            self._correct = torch.full((), self.correct, dtype=torch.int64, device=hits.device)
        self._loss += loss * n
        self._correct += hits
        self.seen += n

    def flush(self) -> EpochProgress:
        """Read the running sums into ``loss_sum`` and ``correct`` (on CUDA one
        synchronisation; the sums go on from there); returns ``self``."""
        if self._loss is not None:
            self.loss_sum = float(self._loss)
        if self._correct is not None:
            self.correct = int(self._correct)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.flush())

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> EpochProgress:
        return cls(**state)


# ----------------------------------------------------------------------------- config checks

#: config keys that may change between a run and its resumption: where and how fast it runs,
#: not what it computes (``train.device`` and ``train.threads`` change the order of float
#: sums, so such a resume is the same experiment but not bitwise the same run). Any other
#: difference (model, data, optimiser, schedule, epochs, seed, method sections) would make
#: the resumed run a different experiment. ``data.num_workers`` is not here: the loader
#: draws its workers' seeds from the shuffling generator (once with persistent workers,
#: every epoch without), so the number of workers changes the data order.
#: ``dspike.max_stacked`` (samples per stacked FDG call) is a memory bound of the same kind.
MAY_DIFFER_ON_RESUME = (
    "name", "paper.", "analysis.", "train.device", "train.progress", "train.threads",
    "train.checkpoint_every", "train.nonfinite", "data.root", "data.eval_batch_size", "dspike.max_stacked",
    "distributed.backend", "distributed.timeout_minutes", "distributed.find_unused_parameters",
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in {"surrogate", "options"}:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(stored: dict[str, Any], current: Config) -> list[str]:
    """``"key: stored -> current"`` for every difference that matters on resume.

    A key the stored config lacks (written by a spikegrad before the key existed) stands for
    its default, which keeps what that spikegrad computed.
    """
    old, new = _flatten(stored), _flatten(current.to_dict())
    default = _flatten(Config().to_dict())
    diffs = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_DIFFER_ON_RESUME):
            continue
        before = old.get(key, default.get(key, "<absent>"))
        if before != new.get(key, "<absent>"):
            diffs.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return diffs


def check_resume_config(stored: dict[str, Any], current: Config, source: str) -> None:
    """Refuse to resume ``source`` under a config that changes what the run computes."""
    diffs = config_differences(stored, current)
    if diffs:
        raise UserError(
            f"cannot resume {source!r}: the config differs from the one it was trained with in "
            f"{'; '.join(diffs)}. Resume with the run's own config (drop those --set, or leave "
            "out the recipe to use the stored one), pass --allow-config-change to continue under "
            "the new values, or start a new run in another --out folder"
        )


def resume_checkpoint_path(out_dir: str | Path) -> Path:
    """The checkpoint ``--resume`` continues from: the run folder's ``last.pt``."""
    path = Path(out_dir) / "last.pt"
    if not path.is_file():
        previous = path.with_name("last.prev.pt")
        hint = (f"; {str(previous)!r} exists (a crash during a save?): resume from it with "
                f"--resume-from {previous}") if previous.is_file() else ""
        if not hint and (path.parent / "teacher" / "last.pt").is_file():
            hint = ("; the LTL teacher stopped before the student started. Run the same command "
                    "without --resume: the teacher continues from teacher/last.pt")
        raise UserError(f"nothing to resume: {str(path)!r} does not exist{hint}. Train without "
                        "--resume to start the run")
    return path


# ----------------------------------------------------------------------------- signals


class TrainingStopped(Exception):
    """Training stopped on SIGTERM/SIGINT after saving ``checkpoint``; ``--resume`` continues."""

    def __init__(self, signum: int, checkpoint: Path, position: str,
                 resume_command: str = "--resume") -> None:
        self.signum, self.checkpoint, self.position = signum, checkpoint, position
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at {position}: saved {str(checkpoint)!r}; continue "
                         f"with {resume_command}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for death by a signal: 128 + its number."""
        return 128 + self.signum


class StopOnSignal:
    """While active, SIGTERM and SIGINT set :attr:`signum` instead of killing the process.

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` at once. Signal
    handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def ignore_interrupts(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a Ctrl-C reaches the whole process group; workers leave it
    to the main process, which stops them after saving. (SIGTERM keeps its default: the
    main process ends its workers with it when it exits.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
