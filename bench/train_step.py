"""One training step of a spiking VGG-style CNN: spikegrad, its peers, and the ANN floor.

    python -m bench.train_step                      # B = 32, T = 4, CIFAR-sized input, 2 threads
    python -m bench.train_step --rounds 5 --reps 2

The network (the issue's): conv 3→64 → conv 64→128 + 2×2 average pool → conv 128→256 +
pool → conv 256→256, each conv followed by batch norm (over the merged T·B axis) and the
activation, then global average pooling and a linear layer to 10 classes. The image is
repeated over T (direct encoding); the loss is cross-entropy of the time-averaged logits;
SGD with momentum. Every contender builds the same layers from the same seed; only the
neuron differs (configured as in ``bench.neuron``: λ = 0.5, threshold 1, hard reset,
sigmoid surrogate of slope 4; Norse with input scale 0.5). Each first checks that its
logits equal those of a spikegrad network with its dynamics and the same weights.

Contenders: ``spikegrad`` (fused neurons and ``lean_memory``), ``spikegrad-fused`` (fused
neurons only), ``spikegrad-reference`` (the plain loop), the peers, and the ANN floor: the
same network with ReLU in place of the neurons, once at batch T·B (``ann-tb``) and as T
forward/backward passes at batch B (``ann-t-times-b``); the floor is the faster of the two.

Memory: the resident-set peak during one step minus the resident set before it (workers
run with a fixed glibc mmap threshold, so freed tensors leave the resident set), and the
bytes kept for backward (``saved_tensors_hooks``), which does not depend on the allocator.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from bench import _harness
from bench.neuron import Unbind, spikegrad_twin
from spikegrad import lean, losses, neurons, surrogates
from spikegrad.layers import DirectEncoder
from spikegrad.models import ConvUnit, global_pool_classifier

CONTENDERS = ["spikegrad", "spikegrad-fused", "spikegrad-reference", "sj-lif", "sj-simple-lif",
              "snntorch-leaky", "norse-lifbox", "ann-tb", "ann-t-times-b"]
PEERS = ["sj-lif", "sj-simple-lif", "snntorch-leaky", "norse-lifbox"]
WIDTHS = (64, 128, 256, 256)
POOLS = (False, True, True, False)


class ResetEachCall(nn.Module):
    """A SpikingJelly multi-step node, its state reset before every call."""

    def __init__(self, node) -> None:
        super().__init__()
        self.node = node

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.node)
        return self.node(x)


def activation(name: str) -> nn.Module:
    if name in ("spikegrad", "spikegrad-fused"):
        return spikegrad_twin(name)
    if name == "spikegrad-reference":
        return neurons.LIF(leak=0.5, surrogate=surrogates.Sigmoid(4.0), backend="reference")
    if name.startswith("ann"):
        return nn.ReLU()
    if name in ("sj-lif", "sj-simple-lif"):
        from spikingjelly.activation_based import neuron, surrogate

        kind = neuron.LIFNode if name == "sj-lif" else neuron.SimpleLIFNode
        return ResetEachCall(kind(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                                  surrogate_function=surrogate.Sigmoid(alpha=4.0), step_mode="m"))
    if name == "snntorch-leaky":
        import snntorch

        return Unbind(snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero", reset_delay=False,
                                     spike_grad=snntorch.surrogate.sigmoid(slope=4)), "snntorch")
    if name == "norse-lifbox":
        import norse.torch as norse

        p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), v_th=torch.tensor(1.0),
                                   v_leak=torch.tensor(0.0), v_reset=torch.tensor(0.0), method="super",
                                   alpha=torch.tensor(4.0))
        return Unbind(norse.LIFBoxCell(p=p, dt=1.0), "norse")
    raise SystemExit(f"unknown contender {name!r}; choose from {CONTENDERS}")


def network(name: str, T: int, seed: int = 0, act=None) -> nn.Module:
    """``[B, 3, 32, 32] -> [T, B, 10]`` (T = 1 for the ANN contenders)."""
    torch.manual_seed(seed)
    act = act or (lambda: activation(name))
    units, channels = [], 3
    for width, pool in zip(WIDTHS, POOLS, strict=True):
        units.append(ConvUnit(channels, width, act(), pool=pool))
        channels = width
    model = nn.Sequential(DirectEncoder(1 if name.startswith("ann") else T), *units,
                          global_pool_classifier(channels, 10))
    if name == "spikegrad":
        lean.make_lean(model)
    return model


def check(name: str, model: nn.Module, T: int) -> str:
    """Logits of ``model`` against a spikegrad network with the same weights and dynamics."""
    if name.startswith("ann") or name == "spikegrad":
        return ""
    twin = network("spikegrad-fused", T, act=lambda: spikegrad_twin(name))
    twin.load_state_dict(model.state_dict(), strict=False)  # convs, norms, linear
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), twin(x)
    diff = float((a - b).abs().max())
    return "logits identical to spikegrad's" if diff == 0 else f"logits DIFFER from spikegrad's by {diff:.3g}"


def setup_worker(name: str, args):
    torch.set_num_threads(args.threads)
    model = network(name, args.T)
    info = {"check": check(name, model, args.T)}
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (args.batch,), generator=gen)
    if name == "ann-tb":  # the ANN sees the T·B images at once
        images, labels = images.repeat(args.T, 1, 1, 1), labels.repeat(args.T)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    passes = args.T if name == "ann-t-times-b" else 1

    def forward_backward():
        for _ in range(passes):
            loss = losses.mean_logit_cross_entropy(model(images), labels)
            loss.backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        before = _harness.rss_bytes()
        _harness.reset_peak_rss()
        forward_backward()
        optimizer.step()
        peak = _harness.rss_bytes("VmHWM")
        return {"peak_mb": (peak - before) / 2**20} if peak and before else {}

    saved: list[int] = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images).sum().backward()  # one pass (T·B images for ann-tb)
    info["saved_mb"] = sum(saved) / 2**20
    optimizer.zero_grad(set_to_none=True)
    step()  # warm-up
    return step, info


def report(results: dict[str, dict], args) -> str:
    med = {k: _harness.median_ms(r["times"]) for k, r in results.items()}
    floors = {k: med[k] for k in ("ann-tb", "ann-t-times-b") if k in med}
    floor = min(floors.values()) if floors else None
    ours = med.get("spikegrad")

    def peak(k):
        values = [run["peak_mb"] for run in results[k]["runs"] if "peak_mb" in run]
        return max(values) if values else None

    rows = []
    for k, r in results.items():
        p = peak(k)
        rows.append([k, f"{med[k]:.0f}", f"{med[k] / floor:.3f}" if floor else "",
                     f"{med[k] / ours:.2f}" if ours else "", f"{p:.0f}" if p is not None else "",
                     f"{r['info']['saved_mb']:.0f}", r["info"].get("check", "")])
    lines = [f"\n## Training step, B = {args.batch}, T = {args.T}, 3×32×32 input, float32",
             _harness.table(rows, ["contender", "median ms", "× ANN floor", "× spikegrad", "peak MB",
                                   "saved MB (one pass)", "check"])]
    if ours and floor:
        lines.append(f"\nspikegrad: {ours / floor:.3f}× the ANN floor (goal ≤ 1.05×)")
    peers = {k: med[k] for k in PEERS if k in med}
    if ours and peers:
        best = min(peers, key=peers.get)
        lines.append(f"fastest peer {best}: {peers[best]:.0f} ms, {peers[best] / ours:.2f}× spikegrad's time")
    if "sj-lif" in results and "spikegrad" in results and peak("spikegrad") and peak("sj-lif"):
        saved = results["spikegrad"]["info"]["saved_mb"] / results["sj-lif"]["info"]["saved_mb"]
        ratio = peak("spikegrad") / peak("sj-lif")
        lines.append(f"peak memory spikegrad / sj-lif: {ratio:.2f} (goal ≤ 0.6); "
                     f"kept for backward: {saved:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="spiking CNN training step side by side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=CONTENDERS, help="contenders to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _harness.serve(lambda: setup_worker(args.worker, args))
        return
    torch.set_num_threads(args.threads)
    command = "python -m bench.train_step " + " ".join(argv if argv is not None else sys.argv[1:])
    print(_harness.header("bench.train_step", command.strip()))
    worker_args = ["--batch", str(args.batch), "--T", str(args.T), "--threads", str(args.threads)]
    results = _harness.interleave("bench.train_step", args.only, worker_args, args.rounds, args.reps,
                                  log=lambda s: print(s, flush=True), env=_harness.MEMORY_ENV)
    print(report(results, args))
    print(f"\n# finished; {_harness.machine()}")


if __name__ == "__main__":
    main()
