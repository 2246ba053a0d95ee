"""Which dtype the Triton neuron keeps its potentials in for float16/bfloat16 inputs: the error each
choice puts into the input gradient.

    TRITON_INTERPRET=1 PYTHONPATH=src:. python3 -m bench.half_potentials --device cpu   # Triton's interpreter
    PYTHONPATH=src:. python3 -m bench.half_potentials                                  # on a GPU

The Triton kernel's backward pass reads the potentials ``h`` that the forward pass stored and
rebuilds the spikes and the surrogate from them. For half-precision inputs the forward pass
computes ``h`` in float32; this script runs that forward pass once, then the same backward
kernel on ``h`` kept three ways:

- ``float32``: as computed (what the kernel keeps);
- ``rounded``: rounded to the input's dtype (half the memory and traffic of that tensor);
- ``spike-preserving``: rounded, then moved one unit in the last place towards ``h`` wherever the
  rounding crossed the threshold, so that backward rebuilds the forward pass's spikes.

Each is compared with the reference loop run in float32 on the same half-precision currents; the
``one rounding`` column is the error of that reference's gradient rounded once to the input's
dtype, the least any half-precision result can have. Errors are the largest absolute difference
over the largest gradient. LIF with hard reset (λ = 0.7, threshold 0.9, reset to -0.2, input
scale 0.8), currents N(0.5, 1.2²), random upstream gradients into the spikes and final state.
"""

from __future__ import annotations

import argparse

import torch

from spikegrad import surrogates
from spikegrad.dynamics import NeuronParams, neuron_multistep
from spikegrad.fused import constants, triton_lif


def spike_preserving(h: torch.Tensor, dtype: torch.dtype, threshold: float) -> torch.Tensor:
    """``h`` (float32) rounded to ``dtype``, moved one step towards ``h`` where the rounding crossed
    ``threshold`` (the spike rebuilt from it then equals the forward pass's)."""
    rounded = h.to(dtype)
    up = torch.nextafter(rounded, torch.tensor(float("inf"), dtype=dtype, device=h.device))
    down = torch.nextafter(rounded, torch.tensor(-float("inf"), dtype=dtype, device=h.device))
    fires, fires_rounded = h - threshold >= 0, rounded.float() - threshold >= 0
    out = torch.where(fires & ~fires_rounded, up, torch.where(~fires & fires_rounded, down, rounded))
    assert torch.equal(out.float() - threshold >= 0, fires)
    return out


def errors(dtype: torch.dtype, surrogate, shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    T = shape[0]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 + 0.5).to(dtype).view(T, -1).to(device)
    params = NeuronParams(0.7, 0.9, "hard", -0.2, False, 0.8)
    ops = triton_lif.TritonOps()
    spikes, v_final, (h,), _ = ops.forward(x, None, constants(params), True)
    up_s = torch.randn(spikes.shape, generator=gen).to(dtype).to(device)
    up_v = torch.randn(v_final.shape, generator=gen).to(dtype).to(device)
    x32 = x.float().requires_grad_(True)
    s_ref, state, _ = neuron_multistep(x32, params, surrogate)
    (g_ref,) = torch.autograd.grad((s_ref, state.v), x32, (up_s.float(), up_v.float()))
    scale = g_ref.abs().max()
    out = {"one rounding": float((g_ref.to(dtype).float() - g_ref).abs().max() / scale)}
    kept = {"float32": h, "rounded": h.to(dtype), "spike-preserving": spike_preserving(h, dtype, 0.9)}
    for name, saved in kept.items():
        grad, _, _ = ops.backward((saved,), None, up_s, up_v, constants(params), params, surrogate, False,
                                  False)
        out[name] = float((grad.float() - g_ref).abs().max() / scale)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="8,64,512", help="[T, ...] of the currents")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if not triton_lif.usable(torch.empty(1, device=device)):
        print("the Triton kernels cannot run here (on the CPU set TRITON_INTERPRET=1)")
        return 2
    shape = tuple(int(v) for v in args.shape.split(","))
    print(f"input gradient error / largest gradient, currents [{', '.join(map(str, shape))}], on {device}\n")
    print("| dtype | surrogate | one rounding | h float32 | h rounded | h spike-preserving |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float16, torch.bfloat16):
        for name in surrogates.available():
            e = errors(dtype, surrogates.create(name), shape, device)
            print(f"| {str(dtype)[6:]} | {name} | {e['one rounding']:.2e} | {e['float32']:.2e} | "
                  f"{e['rounded']:.2e} | {e['spike-preserving']:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
