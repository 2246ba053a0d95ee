"""Check a fused backend against the reference loop on this machine.

``python -m spikegrad.fused.check --backend triton --device cuda`` runs every surrogate ×
reset mode × detach_reset × learnable leak × dtype (float32, float64, float16, bfloat16),
plus odd shapes, a strided input and a surrogate without a kernel formula, and prints one
line per failure. Exit status 1 if anything failed. The test suite runs it for Triton under
``TRITON_INTERPRET=1``.

float32 and float64: spikes and final states must be bit-identical to the reference loop's;
gradients (input, initial state, leak) within ``1e-6`` of the largest reference gradient in
float32 (``1e-10`` in float64). The learnable leak's gradient in float32 sums T·N terms in
different orders and is held to ``1e-5``.

float16 and bfloat16 (mixed precision): the yardstick is the reference loop run in float32
on the same half-precision values (inputs and initial state widened exactly; the learnable
leak is a float32 parameter, as under autocast). The kernels compute in float32, so

- spikes must equal the yardstick's, except where the yardstick's potential is within the
  half-precision rounding of itself of the threshold (``|h - θ| <= u·(|λ·u_{t-1}| +
  |scale·x_t|)``, ``u`` the unit roundoff: 2^-11 for float16, 2^-8 for bfloat16). Such flips
  are counted; a flip outside that band is a failure, and after any flip the gradients are
  not compared (the two runs then follow different trajectories). One call of a kernel
  should flip none (they compute in float32); flips arise where a state carried between
  calls has been rounded to half precision;
- final states must equal the yardstick's rounded to the input's dtype (bit for bit);
- every gradient element must be within ``u·|g| + 1e-6·max|g|`` of the yardstick's ``g``
  (plus half the spacing of the subnormals): the rounding of the result to half precision, and the
  float32 tolerance above; the learnable leak's gradient within ``1e-5`` (a float32 leak, as
  under autocast; a half-precision leak adds one rounding of its own).

``--jobs N`` splits the cases over ``N`` processes (``--shard K/N`` runs every N-th case from
the K-th): on a GPU most of the time goes into compiling one kernel variant per case, which
the processes then do side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import subprocess
import sys

import torch

from spikegrad import fused, surrogates
from spikegrad.dynamics import NeuronParams, NeuronState, neuron_multistep

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-10}
HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)
#: unit roundoff (half the spacing of numbers in [1, 2)) of the half-precision dtypes
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


class _Gaussian(surrogates.Surrogate):
    """No kernel formula: exercises the given-g path."""

    def derivative(self, x):
        return torch.exp(-2.0 * x * x)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def compare(backend: str, x: torch.Tensor, params: NeuronParams, surrogate, v0: torch.Tensor | None,
            label: str) -> list[str]:
    """Failures (empty if none) of ``backend`` against the reference on one case (any dtype)."""
    if x.dtype in HALF_DTYPES:
        return compare_half(backend, x, params, surrogate, v0, label)[0]
    return compare_full(backend, x, params, surrogate, v0, label)


def compare_full(backend: str, x: torch.Tensor, params: NeuronParams, surrogate, v0: torch.Tensor | None,
                 label: str) -> list[str]:
    """Failures of ``backend`` on float32/float64 ``x``: bit-identical spikes and states, close gradients."""
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


def spike_flips(s_new: torch.Tensor, s_ref: torch.Tensor, h_ref: torch.Tensor, params: NeuronParams,
                x: torch.Tensor, v0: torch.Tensor | None, dtype: torch.dtype) -> tuple[int, int]:
    """``(flips, flips outside the rounding band)`` of half-precision spikes ``s_new`` against the
    float32 yardstick (spikes ``s_ref``, potentials ``h_ref``, on the widened inputs ``x``, ``v0``):
    a flip is inside the band where ``|h - θ| <= u·(|λ·u_{t-1}| + |scale·x_t|)``."""
    flipped = s_new.float() != s_ref
    if not flipped.any():
        return 0, 0
    leak = float(params.leak.detach()) if isinstance(params.leak, torch.Tensor) else float(params.leak)
    # u_{t-1}, the yardstick's potentials after reset, rebuilt from h and s
    if params.reset == "hard":
        after = h_ref * (1 - s_ref) + params.v_reset * s_ref
    else:
        after = h_ref - params.threshold * s_ref
    start = torch.full_like(x[0], params.initial_potential) if v0 is None else v0
    previous = torch.cat([start.unsqueeze(0), after[:-1]])
    band = UNIT_ROUNDOFF[dtype] * ((leak * previous).abs() + (params.input_scale * x).abs())
    outside = flipped & ((h_ref - params.threshold).abs() > band)
    return int(flipped.sum()), int(outside.sum())


def _leak_gradient_float64(x, v0, params: NeuronParams, surrogate, s_ref, up_s, up_v) -> float | None:
    """dL/dleak of the reference loop in float64 on the same values (None if its spikes differ from the
    float32 reference's ``s_ref``, which makes the two sums incomparable)."""
    leak64 = params.leak.detach().double().requires_grad_(True)
    x64 = x.detach().double()
    state = None if v0 is None else NeuronState(v0.detach().double())
    spikes, final, _ = neuron_multistep(x64, dataclasses.replace(params, leak=leak64), surrogate, state)
    if not torch.equal(spikes.float(), s_ref):
        return None
    (grad,) = torch.autograd.grad((spikes, final.v), leak64, (up_s.double(), up_v.double()))
    return float(grad)


def compare_half(backend: str, x: torch.Tensor, params: NeuronParams, surrogate, v0: torch.Tensor | None,
                 label: str) -> tuple[list[str], int]:
    """``(failures, spike flips)`` of ``backend`` on float16/bfloat16 ``x`` against the reference loop
    in float32 on the same values (the rules in the module docstring)."""
    dtype = x.dtype
    u = UNIT_ROUNDOFF[dtype]
    leak = params.leak if isinstance(params.leak, torch.Tensor) else None
    wrt = [t for t in (x, v0, leak) if t is not None]
    x32 = x.detach().float().requires_grad_(x.requires_grad)
    v32 = None if v0 is None else v0.detach().float().requires_grad_(v0.requires_grad)
    leak32 = None if leak is None else leak.detach().float().requires_grad_(True)
    params32 = params if leak is None else dataclasses.replace(params, leak=leak32)
    state32 = None if v32 is None else NeuronState(v32)
    s_ref, st_ref, h_ref = neuron_multistep(x32, params32, surrogate, state32, return_membrane=True)
    state = None if v0 is None else NeuronState(v0)
    s_new, st_new, _ = fused.multistep(x, params, surrogate, state, backend=backend)
    if s_new.dtype != dtype or st_new.v.dtype != dtype:
        return [f"{label}: outputs are {s_new.dtype}/{st_new.v.dtype}, not the input's {dtype}"], 0
    if not torch.equal(s_new, s_new.clamp(0, 1).round()):
        return [f"{label}: spikes are not all 0 or 1"], 0
    flips, outside = spike_flips(s_new, s_ref.detach(), h_ref.detach(), params32, x32.detach(),
                                 None if v32 is None else v32.detach(), dtype)
    if outside:
        return [f"{label}: spikes differ in {flips} places, {outside} of them farther from the threshold "
                f"than the {str(dtype)[6:]} rounding of the potential"], flips
    if flips:
        return [], flips
    if not torch.equal(st_new.v, st_ref.v.detach().to(dtype)):
        return [f"{label}: final states differ from the float32 reference's rounded to {str(dtype)[6:]}"], 0
    gen = torch.Generator(device=x.device).manual_seed(3)
    up_s = torch.randn(s_ref.shape, generator=gen, device=x.device).to(dtype)
    up_v = torch.randn(st_ref.v.shape, generator=gen, device=x.device).to(dtype)
    ref_wrt = [t for t in (x32, v32, leak32) if t is not None]
    g_ref = torch.autograd.grad((s_ref, st_ref.v), ref_wrt, (up_s.float(), up_v.float()))
    g_new = torch.autograd.grad((s_new, st_new.v), wrt, (up_s, up_v))
    failures = []
    tiny = torch.finfo(dtype).smallest_normal * u  # half the spacing of the subnormals
    for name, a, b in zip(("x", "v0", "leak"), g_new, g_ref, strict=False):
        if name == "leak":  # float32 under autocast; a half-precision leak adds its own rounding
            tol = 1e-5 + UNIT_ROUNDOFF.get(a.dtype, 0.0)
            err = _relative_error(a.float(), b)
            if err <= tol:
                continue
            # The yardstick sums T·N terms in float32, the kernel in float64: the float64 value of the
            # same sum decides who is closer (as in the float32 tests).
            g64 = _leak_gradient_float64(x, v0, params, surrogate, s_ref.detach(), up_s, up_v)
            if g64 is None or not abs(float(a) - g64) <= abs(float(b) - g64) + tol * abs(g64):
                failures.append(f"{label}: gradient of leak off by {err:.3g} (relative; tolerance {tol:g}), "
                                "and not closer to its float64 value than the float32 reference's")
            continue
        if a.dtype != dtype:
            failures.append(f"{label}: gradient of {name} is {a.dtype}, not {dtype}")
            continue
        allowed = u * b.abs() + 1e-6 * b.abs().max() + tiny
        excess = ((a.float() - b).abs() - allowed).max()
        if not excess <= 0:
            worst = float(((a.float() - b).abs() / b.abs().max().clamp_min(1e-30)).max())
            failures.append(f"{label}: gradient of {name} off by up to {worst:.3g} of the largest, beyond "
                            f"the {str(dtype)[6:]} rounding (u = {u:g}) + 1e-6")
    return failures, 0


def run_checks(backend: str, device: str, dtypes=DTYPES, shard: tuple[int, int] = (0, 1),
               stats: dict | None = None) -> tuple[int, list[str]]:
    """``(number of cases, failures)`` over the whole grid of settings.

    ``shard = (k, n)`` checks only the cases ``k, k + n, k + 2n, ...`` (every case draws its
    inputs as in the whole grid, so the shards together check exactly the whole grid).
    ``stats["flips"]`` (if given) adds up the half-precision spike flips inside the rounding band.
    """
    cases, failures = 0, []
    stats = {} if stats is None else stats
    stats.setdefault("flips", 0)
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

    def compare(backend, x, params, surrogate, v0, label) -> list[str]:
        if x.dtype not in HALF_DTYPES:
            return compare_full(backend, x, params, surrogate, v0, label)
        found, flips = compare_half(backend, x, params, surrogate, v0, label)
        stats["flips"] += flips
        return found

    grid = itertools.product(dtypes, surrogates.available(), ("hard", "soft"), (False, True), (False, True))
    for dtype, name, reset, detach, learnable in grid:
        leak_dtype = torch.float32 if dtype in HALF_DTYPES else dtype  # a float32 parameter under autocast
        leak = torch.tensor(0.7, dtype=leak_dtype, device=device, requires_grad=True) if learnable else 0.7
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


def _run_jobs(args: argparse.Namespace, stats: dict) -> tuple[int, list[str], list[str]]:
    """Run ``args.jobs`` shards in child processes: ``(cases, failures, errors of children)``; their
    spike flips add up in ``stats["flips"]``."""
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
            stats["flips"] += int(counted[-1].split()[3])
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
    stats = {"flips": 0}
    if args.jobs > 1:
        cases, failures, errors = _run_jobs(args, stats)
    else:
        cases, failures = run_checks(args.backend, args.device, shard=args.shard, stats=stats)
    for line in failures:
        print("FAIL", line, flush=True)
    if args.quiet:
        print(f"CASES {cases} FLIPS {stats['flips']}")
        return 1 if failures else 0
    for line in errors:
        print("ERROR", line)
    print(f"{args.backend} on {args.device}: {cases - len({f.split(':')[0] for f in failures})}/{cases} "
          "cases equal to the reference (float16/bfloat16: to the float32 reference on the same values, "
          f"within the rounding rules; {stats['flips']} spike flips inside the rounding band)")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
