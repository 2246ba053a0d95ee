"""Side-by-side timing: one worker process per contender, interleaved rounds, medians.

The parent starts every contender's worker once (``python -m bench.X --worker NAME ...``);
each builds its model, runs its correctness check and then waits. The parent then runs
``rounds`` rounds; in each, the contenders take turns in a fresh random order, each timing
``reps`` repetitions while the others sleep on their input pipe. Slow drifts of the machine's
load thus hit every contender alike. Medians are over all repetitions of all rounds.

Protocol (one JSON object per line on the worker's stdout): ``{"ready": {...info}}`` after
set-up, ``{"times": [...], ...extra}`` after each ``run N`` command. For memory measurements
workers run with :data:`MEMORY_ENV` (a fixed glibc mmap threshold), so that freed tensors
return to the system and the resident-set peak of one step measures that step's memory.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

# For memory measurements: every allocation above 64 KiB is its own mapping, returned on free.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


class Worker:
    def __init__(self, module: str, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--worker", name, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read().get("ready", {})

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name!r} exited (status {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, reps: int) -> dict:
        self.proc.stdin.write(f"run {reps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def interleave(module: str, names: list[str], args: list[str], rounds: int, reps: int,
               log: Callable[[str], None] = print, env: dict[str, str] | None = None) -> dict[str, dict]:
    """``{name: {"info": ..., "times": [...], "runs": [extra dicts]}}`` for every contender."""
    workers = {}
    try:
        for name in names:
            log(f"  starting {name} ...")
            workers[name] = Worker(module, name, args, env)
            check = workers[name].info.get("check")
            if check:
                log(f"    check: {check}")
        results = {name: {"info": w.info, "times": [], "runs": []} for name, w in workers.items()}
        for r in range(rounds):
            order = list(workers)
            random.Random(r).shuffle(order)
            for name in order:
                out = workers[name].run(reps)
                results[name]["times"] += out.pop("times")
                results[name]["runs"].append(out)
            log(f"  round {r + 1}/{rounds} done")
        return results
    finally:
        for w in workers.values():
            w.close()


def serve(setup: Callable[[], tuple[Callable[[], dict | None], dict]]) -> None:
    """Worker side: ``setup()`` gives ``(step, info)``; each ``run N`` times ``step`` N times.

    ``step`` may return a dict of extras (e.g. memory); the last one is reported.
    """
    step, info = setup()
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        times, extra = [], {}
        for _ in range(int(command[1])):
            start = time.perf_counter()
            extra = step() or {}
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times, **extra}), flush=True)


def reset_peak_rss() -> None:
    """Start a new resident-set high-water mark (Linux); no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_bytes(field: str = "VmRSS") -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since :func:`reset_peak_rss`) in bytes (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def versions() -> str:
    from importlib import metadata

    parts = [f"python {platform.python_version()}"]
    for name in ("torch", "spikingjelly", "snntorch", "norse", "triton", "gcc"):
        if name == "gcc":
            try:
                out = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout
                parts.append(f"gcc {out.strip()}")
            except OSError:
                pass
            continue
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = " load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()};{load}"


def header(title: str, command: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"# {title}\n# command: {command}\n# date: {now}\n# machine: {machine()}\n# versions: {versions()}"


def table(rows: list[list[str]], head: list[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
