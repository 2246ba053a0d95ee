"""GPU check in one run: Triton neuron correctness on CUDA, then the GPU timings.

    PYTHONPATH=src:. python3 -m bench.gpu_check            # about 3-6 minutes on one GPU

1. Correctness: ``spikegrad.fused.check`` for ``triton`` on CUDA (every surrogate, reset
   mode, detach_reset, learnable leak, float32/float64, odd shapes, strided input, a
   surrogate without a kernel formula), plus bit-identical spikes against the reference on
   the benchmark shapes. Stops with status 1 if anything differs.
2. Neuron forward+backward on ``[T, 32, 128, 16, 16]`` float32, T = 4, 8, 32 (CUDA events,
   median of 30 after 5 warm-ups): spikegrad's Triton kernel, spikegrad's reference loop,
   and SpikingJelly's ``LIFNode`` with each CUDA implementation it offers
   (``SJ_LIF_CUDA_IMPLEMENTATION`` = ``cuda``, ``triton``, ``torch``; each in its own process,
   at most ``--sj-timeout`` seconds, reported as unavailable if SpikingJelly is missing or
   the implementation fails), same dynamics, spikes checked equal.
3. Spiking ResNet-18 CIFAR training step (B = 64, T = 4, float32) against the same
   network as an ANN at batch T·B = 256; fused and reference neurons.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

SHAPE = (32, 128, 16, 16)


def cuda_time(fn, warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def neuron_input(T: int) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn((T, *SHAPE), generator=gen, device="cuda") * 0.8 + 0.6


def correctness() -> bool:
    from spikegrad import neurons, surrogates
    from spikegrad.fused import check

    start = time.time()
    cases, failures = check.run_checks("triton", "cuda")
    for line in failures:
        print("FAIL", line)
    print(f"triton vs reference on CUDA: {cases} cases, {len(failures)} failures "
          f"({time.time() - start:.0f} s)")
    ok = not failures
    for T in (4, 8, 32):
        x = neuron_input(T)
        for sg in (surrogates.Sigmoid(4.0), surrogates.Dspike(3.0)):
            ref = neurons.LIF(leak=0.5, surrogate=sg, backend="reference")
            new = neurons.LIF(leak=0.5, surrogate=sg, backend="triton")
            xr, xn = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            s_ref, s_new = ref(xr), new(xn)
            up = torch.randn_like(s_ref)
            (g_ref,) = torch.autograd.grad(s_ref, xr, up)
            (g_new,) = torch.autograd.grad(s_new, xn, up)
            same = torch.equal(s_ref, s_new)
            err = float((g_new - g_ref).abs().max() / g_ref.abs().max())
            print(f"T={T} {type(sg).__name__}: spikes {'identical' if same else 'DIFFER'}, "
                  f"max gradient error {err:.2g} (relative to the largest)")
            ok &= same and err <= 1e-6
    return ok


def time_spikegrad(T: int) -> dict[str, float]:
    from spikegrad import neurons, surrogates

    x = neuron_input(T).requires_grad_(True)
    up = torch.randn_like(x)
    out = {}
    for name, backend, sg in (("spikegrad triton (sigmoid)", "triton", surrogates.Sigmoid(4.0)),
                              ("spikegrad triton (dspike)", "triton", surrogates.Dspike(3.0)),
                              ("spikegrad reference loop", "reference", surrogates.Sigmoid(4.0))):
        n = neurons.LIF(leak=0.5, surrogate=sg, backend=backend)
        out[name] = cuda_time(lambda n=n: torch.autograd.grad(n(x), x, up))
    copy_dst = torch.empty_like(x)
    copy_ms = cuda_time(lambda: copy_dst.copy_(x))
    out["(copy of the input, for the floor)"] = copy_ms
    return out


def sj_worker(Ts: list[int]) -> None:
    """Time SpikingJelly's LIFNode in this process (its CUDA implementation is chosen by env)."""
    from spikingjelly.activation_based import functional, neuron, surrogate

    from spikegrad import neurons, surrogates

    node = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")
    for T in Ts:
        x = neuron_input(T).requires_grad_(True)
        up = torch.randn_like(x)

        def run(x=x):
            functional.reset_net(node)
            return node(x)

        with torch.no_grad():
            same = torch.equal(run(), neurons.LIF(leak=0.5, surrogate=surrogates.Sigmoid(4.0))(x))
        ms = cuda_time(lambda run=run, x=x, up=up: torch.autograd.grad(run(), x, up))
        print(json.dumps({"T": T, "ms": ms, "spikes_identical": same}), flush=True)


def time_spikingjelly(Ts: list[int], implementations: list[str], timeout: int
                      ) -> dict[int, dict[str, float | str]]:
    """``{T: {label: ms or a reason}}`` for each CUDA implementation of SpikingJelly's LIF."""
    out: dict[int, dict[str, float | str]] = {T: {} for T in Ts}
    for impl in implementations:
        label = f"spikingjelly LIFNode ({impl})"
        env = {**os.environ, "SJ_LIF_CUDA_IMPLEMENTATION": impl}
        try:
            done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--sj-worker",
                                   ",".join(map(str, Ts))], capture_output=True, text=True, env=env,
                                  timeout=timeout)
            stdout, failed = done.stdout, done.returncode != 0
            reason = (done.stderr.strip().splitlines() or ["?"])[-1][:120]
        except subprocess.TimeoutExpired as exc:
            stdout, failed, reason = exc.stdout or "", True, f"timed out after {timeout} s"
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        for line in stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                name = label + ("" if r["spikes_identical"] else " SPIKES DIFFER")
                out[r["T"]][name] = r["ms"]
        for T in Ts:
            if failed and not any(k.startswith(label) for k in out[T]):
                out[T][label] = f"unavailable: {reason}"
    return out


def resnet_step() -> None:
    from spikegrad import losses, models

    B, T = 64, 4
    gen = torch.Generator(device="cuda").manual_seed(1)
    images = torch.rand(B, 3, 32, 32, generator=gen, device="cuda")
    labels = torch.randint(0, 10, (B,), generator=gen, device="cuda")
    rows = {}
    for label, kind, backend in (("SNN T=4 B=64, fused (triton) neurons", "snn", "auto"),
                                 ("SNN T=4 B=64, reference neurons", "snn", "reference"),
                                 ("ANN at batch T·B = 256", "ann", "auto")):
        torch.manual_seed(0)
        neuron = {"type": "lif", "leak": 0.5, "backend": backend}
        model = models.create("resnet18", num_classes=10, in_channels=3, T=T, kind=kind,
                              neuron=neuron, surrogate="sigmoid").cuda()
        x, y = (images, labels) if kind == "snn" else (images.repeat(T, 1, 1, 1), labels.repeat(T))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, x=x, y=y, opt=opt):
            opt.zero_grad(set_to_none=True)
            losses.mean_logit_cross_entropy(model(x), y).backward()
            opt.step()

        torch.cuda.reset_peak_memory_stats()
        rows[label] = (cuda_time(step, warmup=3, reps=15), torch.cuda.max_memory_allocated() / 2**20)
    ann = rows["ANN at batch T·B = 256"][0]
    print("\n## Spiking ResNet-18 CIFAR training step (float32)\n")
    print("| network | median ms | × ANN at T·B | peak MB |\n|---|---|---|---|")
    for label, (ms, mb) in rows.items():
        print(f"| {label} | {ms:.1f} | {ms / ann:.2f} | {mb:.0f} |")
    print("\nGoal: the fused SNN within 1.2× of the ANN at T·B.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sj-worker", help=argparse.SUPPRESS)
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--sj", nargs="*", default=["cuda", "triton", "torch"],
                        help="SpikingJelly CUDA implementations to time (none: skip SpikingJelly)")
    parser.add_argument("--sj-timeout", type=int, default=120, help="seconds per implementation")
    args = parser.parse_args()
    if args.sj_worker:
        sj_worker([int(T) for T in args.sj_worker.split(",")])
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    import triton

    torch.backends.cudnn.benchmark = True
    print(f"# bench.gpu_check on {torch.cuda.get_device_name()}; torch {torch.__version__}, "
          f"triton {triton.__version__}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    if not args.skip_correctness and not correctness():
        print("\nCORRECTNESS FAILED: timings skipped")
        return 1
    Ts = [4, 8, 32]
    ours_by_T = {T: time_spikegrad(T) for T in Ts}
    sj_by_T = time_spikingjelly(Ts, args.sj, args.sj_timeout)
    for T in Ts:
        rows = {**ours_by_T[T], **sj_by_T[T]}
        elements = T * SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
        copy_ms = rows["(copy of the input, for the floor)"]
        floor_ms = 16 * elements / (8 * elements / copy_ms)  # 16 B/element over copy bandwidth
        ours = rows["spikegrad triton (sigmoid)"]
        print(f"\n## Neuron forward+backward, [{T}, 32, 128, 16, 16] float32 "
              f"(floor {floor_ms:.3f} ms = 16 B/element at the copy bandwidth "
              f"{8 * elements / copy_ms / 1e6:.0f} GB/s)\n")
        print("| contender | median ms | × spikegrad triton |\n|---|---|---|")
        for name, value in rows.items():
            if isinstance(value, float):
                print(f"| {name} | {value:.3f} | {value / ours:.2f} |")
            else:
                print(f"| {name} | {value} | |")
        sj = [v for k, v in rows.items() if k.startswith("spikingjelly") and isinstance(v, float)]
        if sj:
            print(f"\nfastest SpikingJelly / spikegrad triton: {min(sj) / ours:.2f} (goal > 1)")
        sys.stdout.flush()
    resnet_step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
