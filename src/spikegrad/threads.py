"""How many CPU threads torch computes with: ``train.threads``, else the cores that are free.

torch's default is one thread per core whatever else runs; on a busy machine its threads
then wait for each other and a run can take several times longer than with fewer threads.
With ``train.threads`` unset (None), :func:`apply_threads` takes

    threads = max(1, min(torch's default, ⌊cpus − load + 0.5⌋) // processes)

where ``cpus`` counts the CPUs this process may run on (``os.sched_getaffinity``), ``load``
is the one-minute load average (runnable processes, this one not yet among them) and
``processes`` the training processes on this machine (``LOCAL_WORLD_SIZE`` under
``torchrun``). The choice is made once per process and a one-line note says it and how to
set ``train.threads``. It is left alone where the caller chose already: ``OMP_NUM_THREADS``
set, or ``torch.set_num_threads`` called before.

Threads change the order of floating point sums, so a seeded run gives the same numbers
only with the same thread count (see docs/reliability.md); set ``train.threads`` to
reproduce a run exactly on another machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["ThreadChoice", "apply_threads", "auto_threads", "free_cpus"]

#: torch's thread count when this module was imported (before spikegrad set any)
_TORCH_DEFAULT = torch.get_num_threads()
_chosen: ThreadChoice | None = None  # the automatic choice, made once per process


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    #: one line for the user ("" when the thread count was given)
    note: str = ""


def free_cpus() -> tuple[int, float]:
    """The CPUs this process may use and the one-minute load average (0 where unknown)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cpus, load


def auto_threads(cpus: int, load: float, default: int, processes: int = 1) -> int:
    """``max(1, min(default, ⌊cpus − load + 0.5⌋) // processes)``: the free cores, at most
    torch's ``default``, shared by ``processes`` training processes, never none."""
    free = int(cpus - load + 0.5)
    return max(1, min(default, free) // max(1, processes))


def apply_threads(requested: int | None) -> ThreadChoice:
    """Set torch's CPU threads: ``requested`` (``train.threads``), else the automatic choice
    of the module docstring; returns what was set and the note to print (if any)."""
    global _chosen
    if requested:
        torch.set_num_threads(requested)
        return ThreadChoice(requested)
    current = torch.get_num_threads()
    if _chosen is not None and current == _chosen.threads:
        return ThreadChoice(current)  # decided earlier in this process: said once
    if os.environ.get("OMP_NUM_THREADS") or current != _TORCH_DEFAULT:
        return ThreadChoice(current)  # the caller's choice
    cpus, load = free_cpus()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = auto_threads(cpus, load, _TORCH_DEFAULT, processes)
    torch.set_num_threads(threads)
    shared = f", shared by {processes} processes" if processes > 1 else ""
    _chosen = ThreadChoice(threads, (
        f"spikegrad: {threads} CPU thread{'s' * (threads != 1)} ({cpus} CPUs, load average "
        f"{load:.1f}{shared}); set train.threads=N to choose"))
    return _chosen
