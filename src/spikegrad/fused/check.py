"""Check a fused backend against the reference loop on this machine.

``python -m spikegrad.fused.check --backend triton --device cuda`` runs every surrogate ×
reset mode × detach_reset × learnable leak × dtype, plus odd shapes, a strided input and a
surrogate without a kernel formula, and prints one line per failure. Spikes and final
states must be bit-identical; gradients (input, initial state, leak) within ``1e-6`` of the
largest reference gradient in float32 (``1e-10`` in float64). The learnable leak's gradient
in float32 sums T·N terms in different orders and is held to ``1e-5``. Exit status 1 if
anything failed. The test suite runs it for Triton under ``TRITON_INTERPRET=1``.

``--jobs N`` splits the cases over ``N`` processes (``--shard K/N`` runs every N-th case from
the K-th): on a GPU most of the time goes into compiling one kernel variant per case, which
the processes then do side by side.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
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


def run_checks(backend: str, device: str, dtypes=(torch.float32, torch.float64),
               shard: tuple[int, int] = (0, 1)) -> tuple[int, list[str]]:
    """``(number of cases, failures)`` over the whole grid of settings.

    ``shard = (k, n)`` checks only the cases ``k, k + n, k + 2n, ...`` (every case draws its
    inputs as in the whole grid, so the shards together check exactly the whole grid).
    """
    cases, failures = 0, []
    gen = torch.Generator().manual_seed(0)
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k}/{n}: need 0 <= k < n")
    index = -1

    def mine() -> bool:
        nonlocal index
        index += 1
        return index % n == k

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
        x = currents((6, 3, 7), dtype)
        if mine():
            failures += compare(backend, x, params, surrogates.create(name), v0, label)
            cases += 1
    extras = [
        ("odd shape [1, 1]", (1, 1), surrogates.Dspike()),
        ("odd shape [33, 1029]", (33, 1029), surrogates.Dspike(temperature=0.5)),
        ("4-D [4, 2, 3, 517]", (4, 2, 3, 517), surrogates.Sigmoid()),
        ("given-g surrogate", (5, 4, 9), _Gaussian()),
    ]
    for dtype in dtypes:
        for label, shape, surrogate in extras:
            x = currents(shape, dtype)
            if mine():
                failures += compare(backend, x, NeuronParams(0.8, 0.6), surrogate, None,
                                    f"{backend} {str(dtype)[6:]} {label}")
                cases += 1
        base = currents((6, 8, 10), dtype)
        if mine():
            failures += compare(backend, base.transpose(1, 2)[:, ::3], NeuronParams(0.5), surrogates.ATan(),
                                None, f"{backend} {str(dtype)[6:]} strided input")
            cases += 1
    return cases, failures


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def _run_jobs(args: argparse.Namespace) -> tuple[int, list[str], list[str]]:
    """Run ``args.jobs`` shards in child processes: ``(cases, failures, errors of children)``."""
    base = [sys.executable, "-m", "spikegrad.fused.check", "--backend", args.backend, "--device", args.device]
    children = [subprocess.Popen([*base, "--shard", f"{k}/{args.jobs}", "--quiet"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k in range(args.jobs)]
    cases, failures, errors = 0, [], []
    for k, child in enumerate(children):
        out, err = child.communicate()
        counted = [line for line in out.splitlines() if line.startswith("CASES ")]
        failures += [line[5:] for line in out.splitlines() if line.startswith("FAIL ")]
        if counted:
            cases += int(counted[-1].split()[1])
        if child.returncode not in (0, 1) or not counted:
            errors.append(f"shard {k}/{args.jobs} exited with status {child.returncode}: "
                          f"{(err.strip().splitlines() or ['no output'])[-1]}")
    return cases, failures, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="triton",
                        choices=[b for b in fused.BACKENDS if b != "reference"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=1, help="processes to split the cases over")
    parser.add_argument("--shard", type=_parse_shard, default=(0, 1), help="K/N: check every N-th case "
                        "from the K-th")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # a --jobs child
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    chosen = fused.resolve_backend(args.backend, torch.zeros(2, 2, device=args.device), NeuronParams())
    if args.backend != "auto" and chosen != args.backend:
        print(f"backend {args.backend!r} is not usable here (would run {chosen!r})")
        return 1
    errors: list[str] = []
    if args.jobs > 1:
        cases, failures, errors = _run_jobs(args)
    else:
        cases, failures = run_checks(args.backend, args.device, shard=args.shard)
    for line in failures:
        print("FAIL", line, flush=True)
    if args.quiet:
        print(f"CASES {cases}")
        return 1 if failures else 0
    for line in errors:
        print("ERROR", line)
    print(f"{args.backend} on {args.device}: {cases - len({f.split(':')[0] for f in failures})}/{cases} "
          "cases equal to the reference")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
