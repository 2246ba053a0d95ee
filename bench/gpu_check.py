"""GPU timings and memory against SpikingJelly and the copy floor, in one run.

    PYTHONPATH=src:. python3 -m bench.gpu_check --out results/    # about 1-2 minutes on one GPU
    TRITON_INTERPRET=1 PYTHONPATH=src:. python3 -m bench.gpu_check --device cpu --tiny   # CPU dry run

1. Correctness on the benchmark shapes: spikegrad's Triton kernel against its reference loop
   (bit-identical spikes, gradients within 1e-6 of the largest), and on the same currents in
   float16 and bfloat16 against the reference loop in float32 on those values (the rules of
   :mod:`spikegrad.fused.check`: spikes equal, gradients within one rounding). ``--grid`` also
   runs the whole grid of :mod:`spikegrad.fused.check` (``bench/gpu_session.sh`` runs it as a
   step of its own).
2. Neuron forward+backward on ``[T, 32, 128, 16, 16]`` float32, T = 4, 8, 32 (CUDA events,
   median of ``--reps`` after ``--warmup``; peak memory above what was allocated before the
   step): spikegrad's Triton kernel (sigmoid and Dspike surrogates, its forward alone, and the
   mixed-precision path on the same currents in float16), its
   reference loop, and SpikingJelly's ``LIFNode`` with each CUDA implementation it offers
   (``SJ_LIF_CUDA_IMPLEMENTATION`` = ``cuda``, ``triton``, ``torch``), each in its own process
   (at most ``--sj-timeout`` seconds each and ``--sj-budget`` in all; "unavailable: reason" if
   it fails), with the same dynamics (λ = 0.5, threshold 1, hard reset to 0, sigmoid surrogate
   of slope 4): its spikes are checked equal to spikegrad's and its input gradient against
   spikegrad's reference. Each row is printed as soon as it is measured.
3. The copy floor, measured in the same run: a device-to-device copy that reads and writes
   16 bytes per neuron element (the input read and the spikes written forward; the spike
   gradient read and the input gradient written backward), i.e. ``dst.copy_(src)`` of
   ``2·T·N`` float32. spikegrad's Triton kernels move 24 B/element (they also write and
   read back the potentials ``h``).
4. Spiking ResNet-18 CIFAR training step (B = 64, T = 4, 32×32, SGD) against the same network
   as an ANN at batch T·B = 256; spikegrad's fused and reference neurons; AMP off (float32)
   and on (float16 autocast + gradient scaling on CUDA, bfloat16 on the CPU); median ms and
   peak memory of each. The same network with SpikingJelly's ``LIFNode`` in place of
   spikegrad's neurons is timed and measured in each SpikingJelly process.
5. The goals as ratios: neuron fwd+bwd at T = 8 at least 1.5× faster than SpikingJelly's
   fastest implementation and within 2× of the copy floor; the ResNet-18 step at most 1.2× the
   ANN at T·B; peak memory at most 0.6× SpikingJelly's (its lowest).

Under AMP the convolutions hand the neurons float16 currents (bfloat16 on the CPU), and
``backend: auto`` runs the fused kernel on them (float32 arithmetic inside, half-precision
spikes and gradients). The "neuron path" column says which time loop the network's spiking
neurons ran and on which dtype, counted over all of them (e.g. ``triton (float16) ×17``).

Tables go to stdout and, with ``--out DIR``, to ``DIR/gpu_check.md``; every number to
``DIR/gpu_check.json``. Exit status 1 if a correctness check failed (the timings still run),
2 if the device is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

GOALS = {"sj_speedup": 1.5, "floor_ratio": 2.0, "ann_ratio": 1.2, "memory_ratio": 0.6}
TINY = ["--shape", "2,4,4,4", "--Ts", "4,8", "--reps", "2", "--warmup", "1", "--resnet-batch", "2",
        "--resnet-T", "2", "--resnet-image", "8", "--resnet-width", "0.125", "--resnet-reps", "1"]


# ----------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, the wall clock elsewhere."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            tic = time.perf_counter()
            fn()
            times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times)


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of one ``fn()`` above what was allocated before it, MiB (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> dict:
    ms = time_ms(fn, device, warmup, reps)
    return {"ms": ms, "peak_mb": peak_mb(fn, device)}


def neuron_input(T: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The benchmark currents, the same in every process (a seeded generator on the device)."""
    gen = torch.Generator(device=device).manual_seed(0)
    return torch.randn((T, *shape), generator=gen, device=device) * 0.8 + 0.6


def upstream(like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=like.device).manual_seed(1)
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.double().abs().max().clamp_min(1e-30)
    return float((actual.double() - expected.double()).abs().max() / scale)


def reference_lif():
    from spikegrad import neurons, surrogates

    return neurons.LIF(leak=0.5, surrogate=surrogates.Sigmoid(4.0), backend="reference")


def reference_result(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spikes, input gradient)`` of spikegrad's reference loop on ``x`` (the common yardstick)."""
    xr = x.detach().clone().requires_grad_(True)
    spikes = reference_lif()(xr)
    (grad,) = torch.autograd.grad(spikes, xr, upstream(spikes))
    return spikes.detach(), grad


# ----------------------------------------------------------------------------- spikegrad's rows


def triton_here(device: torch.device) -> bool:
    from spikegrad.fused import triton_lif

    return triton_lif.usable(torch.empty(1, device=device))


def correctness(args, device: torch.device) -> tuple[bool, list[str]]:
    """Triton against the reference on the benchmark shapes (and the whole grid with ``--grid``)."""
    from spikegrad import neurons, surrogates
    from spikegrad.dynamics import NeuronParams
    from spikegrad.fused import check

    lines, ok = [], True
    if args.grid:
        tic = time.time()
        cases, failures = check.run_checks("triton", device.type)
        lines += [f"FAIL {line}" for line in failures]
        lines.append(f"triton vs reference, whole grid on {device.type}: {cases} cases, {len(failures)} "
                     f"failures ({time.time() - tic:.0f} s)")
        ok &= not failures
    for T in args.Ts:
        x = neuron_input(T, args.shape, device)
        for sg in (surrogates.Sigmoid(4.0), surrogates.Dspike(3.0)):
            out = {}
            for backend in ("reference", "triton"):
                xb = x.clone().requires_grad_(True)
                spikes = neurons.LIF(leak=0.5, surrogate=sg, backend=backend)(xb)
                (grad,) = torch.autograd.grad(spikes, xb, upstream(spikes))
                out[backend] = (spikes, grad)
            same = torch.equal(out["reference"][0], out["triton"][0])
            err = relative_error(out["triton"][1], out["reference"][1])
            lines.append(f"T={T} {type(sg).__name__}: spikes {'identical' if same else 'DIFFER'}, "
                         f"max gradient error {err:.2g} (relative to the largest)")
            ok &= same and err <= 1e-6
            for dtype in (torch.float16, torch.bfloat16):
                label = f"T={T} {type(sg).__name__} {str(dtype)[6:]}"
                failures, flips = check.compare_half("triton", x.to(dtype).requires_grad_(True),
                                                     NeuronParams(0.5), sg, None, label)
                lines += [f"FAIL {line}" for line in failures]
                if not failures:
                    lines.append(f"{label}: spikes identical to the float32 reference on the same values"
                                 + (f" but for {flips} flips inside the rounding band" if flips else "")
                                 + ("" if flips else ", gradients within one rounding of its own"))
                ok &= not failures
    return ok, lines


def time_spikegrad(T: int, args, device: torch.device) -> dict[str, dict]:
    from spikegrad import neurons, surrogates

    x = neuron_input(T, args.shape, device).requires_grad_(True)
    up = upstream(x)
    fused = "triton" if triton_here(device) else None
    half = x.detach().half().requires_grad_(True)
    inputs = {torch.float32: (x, up), torch.float16: (half, up.half())}
    f32, f16, sigmoid = torch.float32, torch.float16, surrogates.Sigmoid(4.0)
    rows = []
    if fused:
        rows += [(f"spikegrad {fused} (sigmoid)", fused, sigmoid, True, f32),
                 (f"spikegrad {fused} (dspike)", fused, surrogates.Dspike(3.0), True, f32),
                 (f"spikegrad {fused} forward only (sigmoid)", fused, sigmoid, False, f32),
                 (f"spikegrad {fused} float16 (sigmoid)", fused, sigmoid, True, f16)]
    if device.type == "cpu":
        rows.append(("spikegrad cpu kernel (sigmoid)", "cpu", sigmoid, True, f32))
    rows.append(("spikegrad reference loop (sigmoid)", "reference", sigmoid, True, f32))
    out = {}
    for name, backend, sg, backward, dtype in rows:
        n = neurons.LIF(leak=0.5, surrogate=sg, backend=backend)
        xd, upd = inputs[dtype]
        if backward:
            def step(n=n, xd=xd, upd=upd):
                return torch.autograd.grad(n(xd), xd, upd)
        else:
            def step(n=n, xd=xd):
                with torch.no_grad():
                    return n(xd)
        row = out[name] = measure(step, device, args.warmup, args.reps)
        print(f"  T={T} {name}: {row['ms']:.4f} ms, peak {fmt(row['peak_mb'], 1)} MiB", flush=True)
    # The floor: a copy reading and writing 16 B per element (2 float32 per element).
    src = torch.randn(2 * x.numel(), device=device)
    dst = torch.empty_like(src)
    floor = measure(lambda: dst.copy_(src), device, args.warmup, args.reps)
    out["copy floor (reads+writes 16 B/element)"] = floor
    print(f"  T={T} copy floor: {floor['ms']:.4f} ms", flush=True)
    return out


# ----------------------------------------------------------------------------- the ResNet step


def resnet_model(kind: str, backend: str, args, device: torch.device) -> nn.Module:
    from spikegrad import models

    torch.manual_seed(0)
    neuron = {"type": "lif", "leak": 0.5, "backend": backend}
    return models.create("resnet18", num_classes=10, in_channels=3, T=args.resnet_T, kind=kind, neuron=neuron,
                         surrogate="sigmoid", width=args.resnet_width).to(device)


def resnet_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1)
    B, size = args.resnet_batch, args.resnet_image
    images = torch.rand(B, 3, size, size, generator=gen, device=device)
    labels = torch.randint(0, 10, (B,), generator=gen, device=device)
    return images, labels


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool
                  ) -> Callable[[], None]:
    """One SGD step as the trainer takes it: autocast and a gradient scaler with AMP on CUDA."""
    from spikegrad import losses

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = losses.mean_logit_cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def neuron_path(model: nn.Module, x: torch.Tensor, device: torch.device, amp: bool) -> str:
    """Which time loop the model's spiking neurons run on this input, and on which dtype, counted
    over all of them (e.g. ``triton (float16) ×17``; ``-`` for an ANN)."""
    from spikegrad import fused
    from spikegrad.neurons import SpikingNeuron

    spiking = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    if not spiking:
        return "-"
    seen: dict[str, int] = {}

    def hook(module, inputs):
        path = (f"{fused.resolve_backend(module.backend, inputs[0], module.params)} "
                f"({str(inputs[0].dtype).replace('torch.', '')})")
        seen[path] = seen.get(path, 0) + 1

    handles = [m.register_forward_pre_hook(hook) for m in spiking]
    dtype = amp_dtype(device, amp)
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return ", ".join(f"{path} ×{count}" for path, count in seen.items()) or "?"


def time_resnet(args, device: torch.device) -> dict[str, dict]:
    images, labels = resnet_batch(args, device)
    T = args.resnet_T
    rows = {}
    for amp in (False, True):
        for label, kind, backend in (("SNN, fused neurons (auto)", "snn", "auto"),
                                     ("SNN, reference neurons", "snn", "reference"),
                                     ("ANN at batch T·B", "ann", "auto")):
            model = resnet_model(kind, backend, args, device)
            x, y = (images, labels) if kind == "snn" else (images.repeat(T, 1, 1, 1), labels.repeat(T))
            row = measure(training_step(model, x, y, device, amp), device, args.resnet_warmup,
                          args.resnet_reps)
            row["neuron path"] = neuron_path(model, x, device, amp)
            name = f"{label}, AMP {'on' if amp else 'off'}"
            rows[name] = row
            print(f"  ResNet-18 {name}: {row['ms']:.2f} ms, peak {fmt(row['peak_mb'], 0)} MiB, neuron path "
                  f"{row['neuron path']}", flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- SpikingJelly


class SJNeuron(nn.Module):
    """A SpikingJelly multi-step node standing in for a spikegrad neuron: ``[T, B, ...]`` in and out,
    its state reset on every call."""

    def __init__(self, node: nn.Module) -> None:
        super().__init__()
        self.node = node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.node.reset()
        return self.node(x)


def sj_lif() -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")


def with_sj_neurons(model: nn.Module) -> nn.Module:
    """``model`` with every spikegrad neuron replaced by SpikingJelly's ``LIFNode`` (same dynamics)."""
    from spikegrad.neurons import SpikingNeuron

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SpikingNeuron):
                setattr(module, name, SJNeuron(sj_lif()))
    return model


def sj_worker(args, device: torch.device) -> None:
    """Time SpikingJelly in this process (its CUDA implementation is chosen by the environment);
    one JSON line per result."""
    node = SJNeuron(sj_lif()).to(device)
    for T in args.Ts:
        x = neuron_input(T, args.shape, device).requires_grad_(True)
        up = upstream(x)
        spikes = node(x)
        (grad,) = torch.autograd.grad(spikes, x, up)
        ref_spikes, ref_grad = reference_result(x)
        row = measure(lambda x=x, up=up: torch.autograd.grad(node(x), x, up), device, args.warmup, args.reps)
        row.update({"T": T, "spike_mismatches": int((spikes.detach() != ref_spikes).sum()),
                    "grad_error": relative_error(grad, ref_grad)})
        print(json.dumps({"neuron": row}), flush=True)
        del x, up, spikes, grad, ref_spikes, ref_grad
    images, labels = resnet_batch(args, device)
    ours = resnet_model("snn", "reference", args, device)
    theirs = with_sj_neurons(resnet_model("snn", "reference", args, device))
    theirs.load_state_dict(ours.state_dict())
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        logit_error = relative_error(theirs(images), ours(images))
    del ours
    theirs.train()
    for amp in (False, True):
        try:
            row = measure(training_step(theirs, images, labels, device, amp), device, args.resnet_warmup,
                          args.resnet_reps)
        except Exception as exc:  # e.g. an implementation without half precision
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
        row.update({"amp": amp, "logit_error": logit_error})
        print(json.dumps({"resnet": row}), flush=True)


def sj_label(impl: str) -> str:
    return f"spikingjelly LIFNode ({impl})"


def run_spikingjelly(args, device: torch.device) -> tuple[dict, dict]:
    """``({T: {label: row or reason}}, {label: {amp: row or reason}})`` for each implementation."""
    neuron: dict[int, dict] = {T: {} for T in args.Ts}
    resnet: dict[str, dict] = {}
    impls = args.sj if device.type == "cuda" else (["cpu"] if args.sj else [])
    worker_args = [a for a in args.argv if a != "--sj-worker"]
    deadline = time.time() + args.sj_budget
    for impl in impls:
        label = sj_label(impl)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device.type == "cuda":
            env["SJ_LIF_CUDA_IMPLEMENTATION"] = impl
        tic = time.time()
        limit = int(min(args.sj_timeout, deadline - tic))
        if limit < 10:
            stdout, status = "", None
            stderr = f"skipped: the SpikingJelly budget of {args.sj_budget} s is spent"
        else:
            try:
                done = subprocess.run([sys.executable, "-m", "bench.gpu_check", *worker_args, "--sj-worker"],
                                      capture_output=True, text=True, env=env, timeout=limit)
                stdout, stderr, status = done.stdout, done.stderr, done.returncode
            except subprocess.TimeoutExpired as exc:
                stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
                stderr, status = f"timed out after {limit} s", None
        rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        for r in rows:
            if "neuron" in r:
                neuron[r["neuron"]["T"]][label] = r["neuron"]
            if "resnet" in r:
                resnet.setdefault(label, {})["on" if r["resnet"]["amp"] else "off"] = r["resnet"]
        reason = (stderr.strip().splitlines() or ["no output"])[-1][:200]
        print(f"  {label}: {len(rows)} results in {time.time() - tic:.0f} s"
              + ("" if status == 0 else f"; failed ({reason})"), flush=True)
        if status != 0:
            for T in args.Ts:
                neuron[T].setdefault(label, f"unavailable: {reason}")
            for amp in ("off", "on"):
                resnet.setdefault(label, {}).setdefault(amp, f"unavailable: {reason}")
    return neuron, resnet


# ----------------------------------------------------------------------------- tables


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def status(value: float | None, goal: float, at_least: bool, dry: bool = False) -> str:
    if dry:
        return "dry run (CPU): not a GPU measurement"
    if value is None:
        return "not measured"
    return "met" if (value >= goal if at_least else value <= goal) else "NOT met"


def neuron_table(T: int, rows: dict, args) -> tuple[str, dict]:
    ours_name = next((k for k in rows if k.startswith("spikegrad triton (sigmoid)")), None)
    ours = rows[ours_name]["ms"] if ours_name else None
    floor = rows["copy floor (reads+writes 16 B/element)"]["ms"]
    elements = T * int(torch.tensor(args.shape).prod())
    lines = [f"### Neuron forward+backward, [{T}, {', '.join(map(str, args.shape))}] float32",
             "",
             f"copy floor {floor:.4f} ms = 16 B/element at {16 * elements / floor / 1e6:.0f} GB/s "
             "(read+write); the float16 row runs the same currents in float16 (mixed precision), whose "
             "own floor is half of this (8 B/element)",
             "",
             "| contender | median ms | × spikegrad triton | × floor | peak MiB | check |",
             "|---|---|---|---|---|---|"]
    sj_ms, sj_peaks = [], []
    for name, row in rows.items():
        if isinstance(row, str):
            lines.append(f"| {name} | {row} | | | | |")
            continue
        check = ""
        if "spike_mismatches" in row:
            wrong = row["spike_mismatches"]
            spikes = "identical" if wrong == 0 else f"DIFFER in {wrong}"
            check = f"spikes {spikes}, grad err {row['grad_error']:.1e}"
            sj_ms.append(row["ms"])
            if row.get("peak_mb") is not None:
                sj_peaks.append(row["peak_mb"])
        lines.append(f"| {name} | {row['ms']:.4f} | {fmt(ratio(row['ms'], ours), 2)} | "
                     f"{fmt(ratio(row['ms'], floor), 2)} | {fmt(row.get('peak_mb'), 1)} | {check} |")
    summary = {"spikegrad_ms": ours, "floor_ms": floor, "floor_ratio": ratio(ours, floor),
               "fastest_sj_ms": min(sj_ms) if sj_ms else None,
               "sj_speedup": ratio(min(sj_ms), ours) if sj_ms and ours else None,
               "spikegrad_peak_mb": rows[ours_name]["peak_mb"] if ours_name else None,
               "lowest_sj_peak_mb": min(sj_peaks) if sj_peaks else None}
    summary["memory_ratio"] = ratio(summary["spikegrad_peak_mb"], summary["lowest_sj_peak_mb"])
    return "\n".join(lines), summary


def resnet_table(rows: dict, sj: dict, args) -> tuple[str, dict]:
    T, B = args.resnet_T, args.resnet_batch
    size = args.resnet_image
    lines = [f"### Spiking ResNet-18 training step (B = {B}, T = {T}, {size}×{size}, "
             f"width {args.resnet_width:g}; ANN at batch T·B = {T * B})",
             "",
             "| network | median ms | × ANN (same AMP) | peak MiB | × SpikingJelly's lowest peak "
             "| neuron path |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for amp in ("off", "on"):
        ann = rows[f"ANN at batch T·B, AMP {amp}"]["ms"]
        sj_rows = {label: r[amp] for label, r in sj.items()}
        sj_peaks = [r["peak_mb"] for r in sj_rows.values()
                    if isinstance(r, dict) and r.get("peak_mb") is not None]
        lowest = min(sj_peaks) if sj_peaks else None
        for name, row in rows.items():
            if not name.endswith(f"AMP {amp}"):
                continue
            lines.append(f"| {name} | {row['ms']:.2f} | {fmt(ratio(row['ms'], ann), 2)} | "
                         f"{fmt(row['peak_mb'], 0)} | {fmt(ratio(row['peak_mb'], lowest), 2)} | "
                         f"{row['neuron path']} |")
        for label, row in sj_rows.items():
            if isinstance(row, str) or "error" in row:
                lines.append(f"| SNN, {label}, AMP {amp} | {row if isinstance(row, str) else row['error']} "
                             "| | | | |")
                continue
            lines.append(f"| SNN, {label}, AMP {amp} | {row['ms']:.2f} | {fmt(ratio(row['ms'], ann), 2)} | "
                         f"{fmt(row['peak_mb'], 0)} | {fmt(ratio(row['peak_mb'], lowest), 2)} | "
                         f"logits vs spikegrad: rel. err {row['logit_error']:.1e} |")
        fused = rows[f"SNN, fused neurons (auto), AMP {amp}"]
        summary[amp] = {"ann_ratio": ratio(fused["ms"], ann), "memory_ratio": ratio(fused["peak_mb"], lowest),
                        "fused_ms": fused["ms"], "ann_ms": ann, "fused_peak_mb": fused["peak_mb"],
                        "lowest_sj_peak_mb": lowest}
    return "\n".join(lines), summary


def goals_table(neuron_summary: dict, resnet_summary: dict, T_goal: int, dry: bool = False
                ) -> tuple[str, list[dict]]:
    n = neuron_summary.get(T_goal, {})
    goals = [
        (f"neuron fwd+bwd T = {T_goal}: fastest SpikingJelly / spikegrad triton", n.get("sj_speedup"),
         GOALS["sj_speedup"], True),
        (f"neuron fwd+bwd T = {T_goal}: spikegrad triton / copy floor", n.get("floor_ratio"),
         GOALS["floor_ratio"], False),
        (f"neuron fwd+bwd T = {T_goal}: peak memory, spikegrad / SpikingJelly's lowest",
         n.get("memory_ratio"), GOALS["memory_ratio"], False),
    ]
    for amp in ("off", "on"):
        r = resnet_summary.get(amp, {})
        goals += [(f"ResNet-18 step, AMP {amp}: fused SNN / ANN at T·B", r.get("ann_ratio"),
                   GOALS["ann_ratio"], False),
                  (f"ResNet-18 step, AMP {amp}: peak memory, spikegrad / SpikingJelly's lowest",
                   r.get("memory_ratio"), GOALS["memory_ratio"], False)]
    lines = ["### Goals", "", "| goal | measured | target | status |", "|---|---|---|---|"]
    out = []
    for name, value, goal, at_least in goals:
        verdict = status(value, goal, at_least, dry)
        lines.append(f"| {name} | {fmt(value, 2)} | {'≥' if at_least else '≤'} {goal:g} | {verdict} |")
        out.append({"goal": name, "measured": value, "target": goal, "at_least": at_least, "status": verdict})
    return "\n".join(lines), out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run (Triton rows need "
                        "TRITON_INTERPRET=1)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and repetitions (a dry run): "
                        + " ".join(TINY))
    parser.add_argument("--shape", default="32,128,16,16", help="neuron shape after T")
    parser.add_argument("--Ts", default="4,8,32", help="time steps of the neuron timings")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--resnet-T", type=int, default=4)
    parser.add_argument("--resnet-image", type=int, default=32)
    parser.add_argument("--resnet-width", type=float, default=1.0)
    parser.add_argument("--resnet-reps", type=int, default=10)
    parser.add_argument("--resnet-warmup", type=int, default=3)
    parser.add_argument("--sj", nargs="*", default=["cuda", "triton", "torch"],
                        help="SpikingJelly CUDA implementations to time (none: skip SpikingJelly; on the "
                        "CPU one process runs its CPU path)")
    parser.add_argument("--sj-timeout", type=int, default=60, help="seconds per SpikingJelly process")
    parser.add_argument("--sj-budget", type=int, default=150, help="seconds for all SpikingJelly processes")
    parser.add_argument("--grid", action="store_true", help="also run the whole spikegrad.fused.check grid")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--out", help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--sj-worker", action="store_true", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in argv:
        argv = TINY + argv  # explicit flags after --tiny still win
    args = parser.parse_args(argv)
    args.argv = argv
    args.shape = tuple(int(v) for v in args.shape.split(","))
    args.Ts = [int(v) for v in args.Ts.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # in the SpikingJelly processes too: the same convolutions
    if args.sj_worker:
        sj_worker(args, device)
        return 0
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({os.cpu_count()} cores, dry run)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    started = time.time()
    head = (f"## bench.gpu_check on {name}\n\ntorch {torch.__version__}, triton {triton_version}, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; command: python3 -m bench.gpu_check "
            f"{' '.join(args.argv)}")
    print(head, flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("sj_worker", "argv")}
    sections = [head]
    result = {"device": name, "torch": torch.__version__, "triton": triton_version, "args": settings}
    ok = True
    if not triton_here(device):
        print("triton cannot run here: the Triton rows are left out"
              + (" (set TRITON_INTERPRET=1 for the CPU interpreter)" if device.type == "cpu" else ""))
    elif not args.skip_correctness:
        ok, lines = correctness(args, device)
        print("\n".join(lines), flush=True)
        sections.append("### Correctness on the benchmark shapes\n\n"
                        + "\n".join(f"- {line}" for line in lines))
        result["correctness"] = {"ok": ok, "lines": lines}
    ours = {}
    for T in args.Ts:  # each row is printed as it is measured: a cut-short run still logs them
        ours[T] = time_spikegrad(T, args, device)
    resnet_rows = None if args.no_resnet else time_resnet(args, device)
    sj_neuron, sj_resnet = run_spikingjelly(args, device)
    neuron_summary = {}
    result["neuron"] = {}
    for T in args.Ts:
        table, neuron_summary[T] = neuron_table(T, {**ours[T], **sj_neuron[T]}, args)
        print("\n" + table, flush=True)
        sections.append(table)
        result["neuron"][T] = {"rows": {**ours[T], **sj_neuron[T]}, "summary": neuron_summary[T]}
    resnet_summary = {}
    if resnet_rows is not None:
        table, resnet_summary = resnet_table(resnet_rows, sj_resnet, args)
        print("\n" + table, flush=True)
        sections.append(table)
        result["resnet"] = {"rows": resnet_rows, "spikingjelly": sj_resnet, "summary": resnet_summary}
    T_goal = 8 if 8 in args.Ts else args.Ts[0]
    table, goals = goals_table(neuron_summary, resnet_summary, T_goal, dry=device.type != "cuda")
    print("\n" + table, flush=True)
    sections.append(table)
    result["goals"] = goals
    result["seconds"] = time.time() - started
    result["correctness_ok"] = ok
    footer = f"gpu_check took {result['seconds']:.0f} s" + ("" if ok else "; CORRECTNESS FAILED")
    print("\n" + footer)
    sections.append(footer)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text("\n\n".join(sections) + "\n")
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
