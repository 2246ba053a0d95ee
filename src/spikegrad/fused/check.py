"""Check a fused backend against the reference loop on this machine.

``python -m spikegrad.fused.check --backend triton --device cuda`` runs every surrogate ×
reset mode × detach_reset × learnable leak × dtype, plus odd shapes, a strided input and a
surrogate without a kernel formula, and prints one line per failure. Spikes and final
states must be bit-identical; gradients (input, initial state, leak) within ``1e-6`` of the
largest reference gradient in float32 (``1e-10`` in float64). The learnable leak's gradient
in float32 sums T·N terms in different orders and is held to ``1e-5``. Exit status 1 if
anything failed. The test suite runs it for Triton under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

from spikegrad import fused, surrogates
from spikegrad.dynamics import NeuronParams, NeuronState, neuron_multistep

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-10}


class _Gaussian(surrogates.Surrogate):
    """No kernel formula: exercises the given-g path."""

    def derivative(self, x):
        return torch.exp(-2.0 * x * x)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def compare(backend: str, x: torch.Tensor, params: NeuronParams, surrogate, v0: torch.Tensor | None,
            label: str) -> list[str]:
    """Failures (empty if none) of ``backend`` against the reference on one case."""
    leak = params.leak if isinstance(params.leak, torch.Tensor) else None
    wrt = [t for t in (x, v0, leak) if t is not None]
    state = None if v0 is None else NeuronState(v0)
    s_ref, st_ref, _ = neuron_multistep(x, params, surrogate, state)
    s_new, st_new, _ = fused.multistep(x, params, surrogate, state, backend=backend)
    if not torch.equal(s_ref, s_new):
        return [f"{label}: spikes differ in {int((s_ref != s_new).sum())} places"]
    if not torch.equal(st_ref.v, st_new.v):
        return [f"{label}: final states differ"]
    gen = torch.Generator(device=x.device).manual_seed(3)
    up_s = torch.randn(s_ref.shape, generator=gen, device=x.device, dtype=x.dtype)
    up_v = torch.randn(st_ref.v.shape, generator=gen, device=x.device, dtype=x.dtype)
    g_ref = torch.autograd.grad((s_ref, st_ref.v), wrt, (up_s, up_v))
    g_new = torch.autograd.grad((s_new, st_new.v), wrt, (up_s, up_v))
    failures = []
    for name, a, b in zip(("x", "v0", "leak"), g_new, g_ref, strict=False):
        tol = 1e-5 if name == "leak" and x.dtype == torch.float32 else TOLERANCE[x.dtype]
        err = _relative_error(a, b)
        if not err <= tol:
            failures.append(f"{label}: gradient of {name} off by {err:.3g} (relative; tolerance {tol:g})")
    return failures


def run_checks(backend: str, device: str, dtypes=(torch.float32, torch.float64)) -> tuple[int, list[str]]:
    """``(number of cases, failures)`` over the whole grid of settings."""
    cases, failures = 0, []
    gen = torch.Generator().manual_seed(0)

    def currents(shape, dtype):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 + 0.5
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    grid = itertools.product(dtypes, surrogates.available(), ("hard", "soft"), (False, True), (False, True))
    for dtype, name, reset, detach, learnable in grid:
        leak = torch.tensor(0.7, dtype=dtype, device=device, requires_grad=True) if learnable else 0.7
        params = NeuronParams(leak, 0.9, reset, -0.2 if reset == "hard" else 0.0, detach, 0.8)
        v0 = torch.rand(3, 7, generator=gen, dtype=torch.float64) * 0.5
        v0 = v0.to(device, dtype).requires_grad_(True)
        label = f"{backend} {str(dtype)[6:]} {name} reset={reset} detach={detach} learnable={learnable}"
        failures += compare(backend, currents((6, 3, 7), dtype), params, surrogates.create(name), v0, label)
        cases += 1
    extras = [
        ("odd shape [1, 1]", (1, 1), surrogates.Dspike()),
        ("odd shape [33, 1029]", (33, 1029), surrogates.Dspike(temperature=0.5)),
        ("4-D [4, 2, 3, 517]", (4, 2, 3, 517), surrogates.Sigmoid()),
        ("given-g surrogate", (5, 4, 9), _Gaussian()),
    ]
    for dtype in dtypes:
        for label, shape, surrogate in extras:
            failures += compare(backend, currents(shape, dtype), NeuronParams(0.8, 0.6), surrogate, None,
                                f"{backend} {str(dtype)[6:]} {label}")
            cases += 1
        base = currents((6, 8, 10), dtype)
        failures += compare(backend, base.transpose(1, 2)[:, ::3], NeuronParams(0.5), surrogates.ATan(), None,
                            f"{backend} {str(dtype)[6:]} strided input")
        cases += 1
    return cases, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="triton",
                        choices=[b for b in fused.BACKENDS if b != "reference"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    chosen = fused.resolve_backend(args.backend, torch.zeros(2, 2, device=args.device), NeuronParams())
    if args.backend != "auto" and chosen != args.backend:
        print(f"backend {args.backend!r} is not usable here (would run {chosen!r})")
        return 1
    cases, failures = run_checks(args.backend, args.device)
    for line in failures:
        print("FAIL", line)
    print(f"{args.backend} on {args.device}: {cases - len({f.split(':')[0] for f in failures})}/{cases} "
          "cases equal to the reference")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
