"""Neuron forward+backward, spikegrad against SpikingJelly, snnTorch and Norse, and the floor.

    python -m bench.neuron                    # T = 8, [8, 32, 128, 16, 16], 2 threads
    python -m bench.neuron --T 4 8 32 --rounds 5 --reps 3

Every contender runs the same dynamics (λ = 0.5, threshold 1, hard reset to 0, input
scale 1; Norse's LIFBox ties its input scale to the leak, so it gets scale 0.5 and its
spikegrad twin the same) with a sigmoid surrogate of slope 4 (Norse: SuperSpike, slope 4)
in its own process, and first checks its spikes against spikegrad's on the benchmark input.
Peers are looped in their fastest form (multi-step modules where they have one, else
``unbind`` over time). One step is ``spikes = neuron(x)`` and ``torch.autograd.grad(spikes,
x, upstream)``.

The floor is the bytes any implementation must move, 16 per element in float32 (read the
input and write the spikes; read the spike gradient and write the input gradient), over the
copy bandwidth measured in the same run (``dst.copy_(src)`` on a tensor of the input's size,
counting bytes read plus written). It leaves out the first-touch page faults of the new
output tensors, which ``fresh-write`` (allocate and fill one tensor) shows for context.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench import _harness
from spikegrad import neurons, surrogates

CONTENDERS = ["spikegrad", "spikegrad-dspike", "spikegrad-given-g", "spikegrad-reference", "sj-lif",
              "sj-simple-lif", "snntorch-leaky", "norse-lifbox", "copy", "fresh-write"]
PEERS = ["sj-lif", "sj-simple-lif", "snntorch-leaky", "norse-lifbox"]
BYTES_PER_ELEMENT = 16  # float32: x read, spikes written, grad read, grad written


class GivenDspike(surrogates.Dspike):
    """Dspike through the kernels' given-g path (g from ``derivative`` as a tensor)."""


def spikegrad_twin(name: str) -> neurons.LIF:
    """The spikegrad neuron with the dynamics of contender ``name``."""
    if name == "norse-lifbox":
        return neurons.LIF.from_norse(tau_mem_inv=0.5, dt=1.0, v_th=1.0, surrogate=surrogates.Sigmoid(4.0))
    return neurons.LIF(leak=0.5, threshold=1.0, reset="hard", surrogate=surrogates.Sigmoid(4.0))


class Unbind(torch.nn.Module):
    """Loop a single-step peer cell over ``x.unbind(0)``, its fastest multi-step form."""

    def __init__(self, cell, kind: str) -> None:
        super().__init__()
        self.cell, self.kind = cell, kind

    def forward(self, x):
        out = []
        if self.kind == "snntorch":
            mem = self.cell.init_leaky()
            for x_t in x.unbind(0):
                spk, mem = self.cell(x_t, mem)
                out.append(spk)
        else:
            state = None
            for x_t in x.unbind(0):
                z, state = self.cell(x_t, state)
                out.append(z)
        return torch.stack(out)


def build(name: str):
    """``(module taking [T, B, ...])``; stateful peers are reset on every call."""
    if name == "spikegrad":
        return spikegrad_twin(name)
    if name == "spikegrad-dspike":
        return neurons.LIF(leak=0.5, surrogate=surrogates.Dspike(3.0))
    if name == "spikegrad-given-g":
        return neurons.LIF(leak=0.5, surrogate=GivenDspike(3.0))
    if name == "spikegrad-reference":
        return neurons.LIF(leak=0.5, surrogate=surrogates.Sigmoid(4.0), backend="reference")
    if name in ("sj-lif", "sj-simple-lif"):
        from spikingjelly.activation_based import functional, neuron, surrogate

        kind = neuron.LIFNode if name == "sj-lif" else neuron.SimpleLIFNode
        node = kind(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                    surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m")

        def run(x, node=node):
            functional.reset_net(node)
            return node(x)

        return run
    if name == "snntorch-leaky":
        import snntorch

        cell = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero", reset_delay=False,
                              spike_grad=snntorch.surrogate.sigmoid(slope=4))
        return Unbind(cell, "snntorch")
    if name == "norse-lifbox":
        import norse.torch as norse

        p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), v_th=torch.tensor(1.0),
                                   v_leak=torch.tensor(0.0), v_reset=torch.tensor(0.0), method="super",
                                   alpha=torch.tensor(4.0))
        return Unbind(norse.LIFBoxCell(p=p, dt=1.0), "norse")
    raise SystemExit(f"unknown contender {name!r}; choose from {CONTENDERS}")


def make_input(args) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    shape = (args.T, args.batch, args.channels, args.size, args.size)
    return torch.randn(shape, generator=gen) * 0.8 + 0.6


def setup_worker(name: str, args):
    torch.set_num_threads(args.threads)
    x = make_input(args)
    if name == "copy":
        dst = torch.empty_like(x)

        def copy():
            dst.copy_(x)

        copy()
        return copy, {"elements": x.numel()}
    if name == "fresh-write":  # context: allocating and filling one new tensor (page faults)
        return (lambda: torch.empty_like(x).fill_(1.0) is None), {"elements": x.numel()}
    module = build(name)
    info = {"elements": x.numel()}
    with torch.no_grad():
        spikes = module(x)
        twin = spikegrad_twin(name)
        expected = twin(x)
        differ = spikes != expected
        rate = float(spikes.mean())
        if not differ.any():
            info["check"] = f"spikes identical to spikegrad's (firing rate {rate:.3f})"
        else:  # say how close to the threshold the disagreements sit
            _, h = twin.membrane(x)
            gap = float((h[differ] - twin.threshold).abs().max())
            why = ("h = threshold exactly there: the peer fires only above the threshold, spikegrad at "
                   "or above" if gap == 0 else "the charge's rounding order differs")
            info["check"] = (f"{int(differ.sum())} of {x.numel()} spikes differ from spikegrad's, all with "
                             f"|h - threshold| <= {gap:.1e} ({why})")
    x.requires_grad_(True)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def step():
        (grad,) = torch.autograd.grad(module(x), x, upstream)
        del grad

    step()  # warm-up (builds the CPU kernel library once)
    return step, info


def report(results: dict[str, dict], args) -> str:
    n = next(iter(results.values()))["info"]["elements"]
    copy_ms = _harness.median_ms(results["copy"]["times"]) if "copy" in results else None
    floor_ms = None
    if copy_ms:
        bandwidth = 8 * n / (copy_ms / 1e3)  # bytes read + written per second
        floor_ms = BYTES_PER_ELEMENT * n / bandwidth * 1e3
    ours = _harness.median_ms(results["spikegrad"]["times"]) if "spikegrad" in results else None
    rows = []
    for name, r in results.items():
        if name in ("copy", "fresh-write"):
            continue
        ms = _harness.median_ms(r["times"])
        rows.append([name, f"{ms:.1f}", f"{ms / ours:.2f}" if ours else "",
                     f"{ms / floor_ms:.1f}" if floor_ms else "", r["info"].get("check", "")])
    shape = [args.T, args.batch, args.channels, args.size, args.size]
    lines = [f"\n## T = {args.T}: forward+backward on {shape} float32",
             _harness.table(rows, ["contender", "median ms", "× spikegrad", "× floor", "check"])]
    if copy_ms:
        lines.append(f"\ncopy bandwidth {8 * n / copy_ms / 1e6:.1f} GB/s (read+write); floor "
                     f"{BYTES_PER_ELEMENT} B/element = {floor_ms:.1f} ms")
    if "fresh-write" in results:
        fresh = _harness.median_ms(results["fresh-write"]["times"])
        lines.append(f"allocating and filling one new tensor of this size: {fresh:.1f} ms (first-touch page "
                     "faults; every contender allocates at least two: spikes and the input gradient)")
    peers = {k: _harness.median_ms(results[k]["times"]) for k in PEERS if k in results}
    if ours and peers:
        best = min(peers, key=peers.get)
        lines.append(f"spikegrad {ours:.1f} ms: {peers[best] / ours:.2f}× faster than the fastest peer "
                     f"({best}, {peers[best]:.1f} ms; goal ≥ 4×)" +
                     (f"; {ours / floor_ms:.2f}× the floor (goal ≤ 3×)" if floor_ms else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="neuron forward+backward side by side")
    parser.add_argument("--T", type=int, nargs="+", default=[8])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=CONTENDERS, help="contenders to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.T = args.T[0]
        _harness.serve(lambda: setup_worker(args.worker, args))
        return
    torch.set_num_threads(args.threads)
    command = "python -m bench.neuron " + " ".join(argv if argv is not None else sys.argv[1:])
    print(_harness.header("bench.neuron", command.strip()))
    for T in args.T:
        worker_args = ["--T", str(T), "--batch", str(args.batch), "--channels", str(args.channels),
                       "--size", str(args.size), "--threads", str(args.threads)]
        print(f"\nT = {T}: starting {len(args.only)} workers", flush=True)
        results = _harness.interleave("bench.neuron", args.only, worker_args, args.rounds, args.reps,
                                      log=lambda s: print(s, flush=True))
        args.T = T
        print(report(results, args), flush=True)
        args.T = [T]
    print(f"\n# finished; {_harness.machine()}")


if __name__ == "__main__":
    main()
