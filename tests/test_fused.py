"""The fused neuron kernels against the reference loop (spikegrad.dynamics.neuron_multistep).

Spikes and final states must be bit-identical; gradients equal up to rounding: within 1e-6
relative to the largest gradient in float32, 1e-10 in float64. A learnable leak's gradient
is a sum over T·N terms that the reference accumulates in the input's precision and the
kernel in float64; in float32 it must be at least as close to the float64 value as the
reference's own, plus 1e-6 relative.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from spikegrad import fused, neurons, surrogates
from spikegrad.dynamics import NeuronParams, NeuronState, neuron_multistep
from spikegrad.errors import UserError
from spikegrad.fused import check, cpu, formulas

pytestmark = pytest.mark.skipif(cpu.library() is None, reason="the fused CPU neuron could not be built")

TOL = {torch.float32: 1e-6, torch.float64: 1e-10}


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL[dtype], f"max relative gradient error {err:.3g}"


def run(x, params, surrogate, state=None, backend="cpu"):
    if backend == "reference":
        spikes, final, _ = neuron_multistep(x, params, surrogate, state)
        return spikes, final.v
    spikes, final, _ = fused.multistep(x, params, surrogate, state, backend=backend)
    return spikes, final.v


def compare(x, params, surrogate, state=None, backend="cpu", leak=None):
    """Forward both ways; backward with random upstream gradients into spikes and final state."""
    wrt = [t for t in (x, None if state is None else state.v, leak) if t is not None and t.requires_grad]
    outs = {}
    for name in ("reference", backend):
        spikes, v = run(x, params, surrogate, state, name)
        gen = torch.Generator().manual_seed(5)
        up_s = torch.randn(spikes.shape, generator=gen, dtype=spikes.dtype)
        up_v = torch.randn(v.shape, generator=gen, dtype=v.dtype)
        grads = torch.autograd.grad((spikes, v), wrt, (up_s, up_v)) if wrt else ()
        outs[name] = (spikes, v, grads)
    (s_ref, v_ref, g_ref), (s_new, v_new, g_new) = outs["reference"], outs[backend]
    assert torch.equal(s_ref, s_new)
    assert torch.equal(v_ref, v_new)
    return g_ref, g_new


def currents(shape, dtype=torch.float32, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 + 0.5).to(dtype)
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("name", surrogates.available())
def test_fused_equals_reference(name, reset, detach, learnable, dtype):
    surrogate = surrogates.create(name)
    x = currents((6, 3, 5, 7), dtype, seed=len(name))
    leak = torch.tensor(0.7, dtype=dtype, requires_grad=True) if learnable else 0.7
    params = NeuronParams(leak=leak, threshold=0.9, reset=reset, v_reset=-0.2 if reset == "hard" else 0.0,
                          detach_reset=detach, input_scale=0.8)
    g_ref, g_new = compare(x, params, surrogate, leak=leak if learnable else None)
    assert_grad_close(g_new[0], g_ref[0], dtype)
    assert g_ref[0].abs().max() > 0
    if learnable:
        if dtype == torch.float64:
            assert_grad_close(g_new[1], g_ref[1], dtype)
        else:  # the float64 value of the same sum decides who is closer
            x64 = x.detach().double().requires_grad_(True)
            leak64 = leak.detach().double().requires_grad_(True)
            p64 = NeuronParams(leak64, 0.9, reset, params.v_reset, detach, 0.8)
            g64 = compare(x64, p64, surrogate, leak=leak64)[0][1]
            ref_err = (g_ref[1].double() - g64).abs()
            assert (g_new[1].double() - g64).abs() <= ref_err + 1e-6 * g64.abs()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (5, 1), (3, 17), (700, 37), (4, 2, 3, 1025)])
def test_odd_shapes(shape):
    x = currents(shape, seed=sum(shape))
    g_ref, g_new = compare(x, NeuronParams(leak=0.9, threshold=0.5), surrogates.Dspike())
    assert_grad_close(g_new[0], g_ref[0], torch.float32)


def test_non_contiguous_input_and_gradient_to_its_base():
    base = currents((5, 8, 6))
    x = base.transpose(1, 2)[:, ::2]  # (5, 3, 8), strided
    assert not x.is_contiguous()
    g_ref, g_new = compare(x, NeuronParams(leak=0.5), surrogates.Sigmoid())
    assert_grad_close(g_new[0], g_ref[0], torch.float32)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_initial_state_and_final_state_gradients(reset):
    x = currents((6, 4, 9), torch.float64)
    v0 = (torch.rand(4, 9, dtype=torch.float64) * 0.8).requires_grad_(True)
    params = NeuronParams(leak=0.8, reset=reset, v_reset=0.1 if reset == "hard" else 0.0)
    g_ref, g_new = compare(x, params, surrogates.ATan(), NeuronState(v0))
    for a, b in zip(g_new, g_ref, strict=True):
        assert_grad_close(a, b, torch.float64)


def test_dspike_temperature_changed_at_run_time():
    x = currents((8, 4, 16), torch.float64)
    surrogate = surrogates.Dspike(temperature=3.0)
    params = NeuronParams(leak=0.5)
    grads = []
    for temperature in (3.0, 0.7, 9.0):
        surrogate.temperature = temperature
        g_ref, g_new = compare(x, params, surrogate)
        assert_grad_close(g_new[0], g_ref[0], torch.float64)
        grads.append(g_new[0])
    assert not torch.allclose(grads[0], grads[1])
    # As in the reference, the temperature at backward time counts.
    spikes, _, _ = fused.multistep(x, params, surrogate, backend="cpu")
    surrogate.temperature = 0.7
    (late,) = torch.autograd.grad(spikes, x, torch.ones_like(spikes))
    spikes_ref, _, _ = neuron_multistep(x, params, surrogates.Dspike(temperature=0.7))
    (expected,) = torch.autograd.grad(spikes_ref, x, torch.ones_like(spikes_ref))
    assert_grad_close(late, expected, torch.float64)


class Gaussian(surrogates.Surrogate):
    """A surrogate with no kernel formula: the kernels must take the given-g path."""

    def derivative(self, x):
        return torch.exp(-2.0 * x * x)


class SteeperSigmoid(surrogates.Sigmoid):
    def derivative(self, x):
        return 2.0 * super().derivative(x)


@pytest.mark.parametrize("surrogate", [Gaussian(), SteeperSigmoid()])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_surrogates_without_kernel_formula(surrogate, reset):
    assert formulas.kernel_formula(surrogate)[0] == formulas.GIVEN
    x = currents((5, 3, 11))
    g_ref, g_new = compare(x, NeuronParams(leak=0.6, reset=reset), surrogate)
    assert_grad_close(g_new[0], g_ref[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", surrogates.available())
def test_kernel_formula_matches_derivative(name, dtype):
    for surrogate in (surrogates.create(name), surrogates.create(name).with_sharpness(7.5)):
        kind, constants = formulas.kernel_formula(surrogate)
        assert kind != formulas.GIVEN, f"surrogate {name!r} has no kernel formula (slow path)"
        edges = [0.5, -0.5, 1 / 7.5, -1 / 7.5, 1 / 15, -1 / 15, 0.0, -0.0, 1e-30, 3.0, -40.0, 100.0]
        x = torch.cat([torch.linspace(-3, 3, 2001, dtype=dtype), torch.tensor(edges, dtype=dtype)])
        expected = surrogate.derivative(x)
        actual = cpu.surrogate_eval(kind, constants, x)
        assert ((actual - expected).abs() <= TOL[dtype] * expected.abs().max()).all(), surrogate
        if name in ("rectangle", "triangle", "dspike"):  # compact support, boundaries included
            assert torch.equal(actual == 0, expected == 0), surrogate


def test_saves_only_the_input():
    x = currents((8, 4, 32))
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        neurons.LIF(backend="cpu")(x)
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel() * 4
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        neurons.LIF(backend="reference")(x)
    assert sum(t.numel() * t.element_size() for t in saved) == 3 * x.numel() * 4  # h-θ, h, 1-s per step


def test_same_results_for_any_thread_count():
    x = currents((6, 4, 3000))
    leak = torch.tensor(0.6, requires_grad=True)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            spikes, _, _ = fused.multistep(x, NeuronParams(leak=leak), surrogates.Dspike(), backend="cpu")
            results.append((spikes, *torch.autograd.grad(spikes.sum(), (x, leak))))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_neuron_module_backends_and_streaming():
    x = currents((10, 3, 4), requires_grad=False)
    net = torch.nn.Sequential(neurons.LIF(leak=0.5), neurons.LIF(leak=0.9, threshold=0.3))
    assert fused.resolve_backend("auto", x, NeuronParams()) == "cpu"
    whole = net(x)
    neurons.set_backend(net, "reference")
    assert torch.equal(net(x), whole)
    neurons.set_backend(net, "cpu")
    with neurons.streaming(net):
        chunks = torch.cat([net(x[:3]), net(x[3:])])
    assert torch.equal(chunks, whole)
    assert "backend='cpu'" in repr(net[0])


def test_backend_errors_and_fallbacks(monkeypatch):
    x = currents((3, 2, 5))
    with pytest.raises(UserError, match="did you mean 'cpu'"):
        neurons.LIF(backend="cpus")
    with pytest.raises(UserError, match="CUDA"):
        fused.resolve_backend("triton", x, NeuronParams())
    half = x.detach().bfloat16()
    assert fused.resolve_backend("auto", half, NeuronParams()) == "cpu"  # mixed precision runs the kernel
    assert fused.resolve_backend("auto", half, NeuronParams(), NeuronState(half[0].float())) == "reference"
    with pytest.warns(RuntimeWarning, match="cannot run a state whose dtype"):
        assert fused.resolve_backend("cpu", half.half(), NeuronParams(), NeuronState(half[0])) == "reference"
    with pytest.warns(RuntimeWarning, match="cannot run torch.int32 tensors"):
        assert fused.resolve_backend("cpu", x.detach().int(), NeuronParams()) == "reference"
    monkeypatch.setenv("SPIKEGRAD_NEURON_BACKEND", "reference")
    assert fused.resolve_backend("auto", x, NeuronParams()) == "reference"
    assert fused.resolve_backend("cpu", x, NeuronParams()) == "cpu"


def test_build_failure_warns_once_and_uses_the_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "_compiler", lambda: None)
    cpu.library.cache_clear()
    try:
        x = currents((4, 2, 3))
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert fused.resolve_backend("auto", x, NeuronParams()) == "reference"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            spikes = neurons.LIF()(x)
        assert torch.equal(spikes, neurons.LIF(backend="reference")(x))
    finally:
        monkeypatch.undo()
        cpu.library.cache_clear()
    assert cpu.library() is not None


def test_bits_round_trip_and_refusal():
    for n in (1, 7, 8, 9, 100_003):
        s = (torch.rand(n) > 0.6).float()
        bits = cpu.pack_bits(s)
        assert bits is not None and bits.numel() == (n + 7) // 8
        assert torch.equal(cpu.unpack_bits(bits, s.shape, s.dtype), s)
    for bad in (0.5, -0.0, float("nan"), 2.0):
        s = torch.zeros(50_000)
        s[-3] = bad
        assert cpu.pack_bits(s) is None
    assert torch.equal(cpu.unpack_bits(cpu.pack_bits(torch.ones(3, dtype=torch.float64)), (3,),
                                       torch.float64), torch.ones(3, dtype=torch.float64))
    for dtype in (torch.float16, torch.bfloat16):
        s = (torch.rand(1001) > 0.5).to(dtype)
        assert torch.equal(cpu.unpack_bits(cpu.pack_bits(s), s.shape, dtype), s)
        s[7] = -0.0
        assert cpu.pack_bits(s) is None


HALF = [torch.float16, torch.bfloat16]


def test_cpu_kernel_half_precision_grid():
    """float16/bfloat16 through the CPU kernel on the whole grid of spikegrad.fused.check: spikes equal
    to the float32 reference on the same values (no flips at all), final states equal to its rounded
    once, gradients within one rounding of its own."""
    stats: dict = {}
    cases, failures = check.run_checks("cpu", "cpu", dtypes=tuple(HALF), stats=stats)
    assert cases == 106 and not failures, failures[:5]
    assert stats["flips"] == 0


def test_half_precision_check_fails_a_loop_that_rounds_every_step():
    """The half-precision rules can fail: the reference loop run in float16/bfloat16 itself (every
    operation rounded, the old mixed-precision path) breaks them in most cases: its final states and
    gradients carry more than one rounding, and its spikes flip (rounding errors carried from step to
    step also move spikes farther from the threshold than one rounding)."""
    for dtype in HALF:
        stats: dict = {}
        cases, failures = check.run_checks("reference", "cpu", dtypes=(dtype,), stats=stats)
        assert len({f.split(":")[0] for f in failures}) > cases // 2, dtype
        assert any("final states differ" in f for f in failures)
        assert stats["flips"] > 0 or any("farther from the threshold" in f for f in failures)


def test_spike_flips_inside_and_outside_the_rounding_band():
    x = torch.tensor([[0.5, 1.0], [0.25, 2.0]])  # [T = 2, N = 2]
    params = NeuronParams(leak=0.5, threshold=1.0, reset="soft")
    s_ref, _, h_ref = neuron_multistep(x, params, surrogates.Sigmoid(), return_membrane=True)
    # h = [[0.5, 1.0], [0.5, 2.0]]: neuron 1 sits exactly on the threshold at t = 0
    assert h_ref.tolist() == [[0.5, 1.0], [0.5, 2.0]] and s_ref.tolist() == [[0, 1], [0, 1]]
    flipped = s_ref.clone()
    flipped[0, 1] = 0.0  # |h - θ| = 0: inside any band
    assert check.spike_flips(flipped.half(), s_ref, h_ref, params, x, None, torch.float16) == (1, 0)
    flipped[1, 0] = 1.0  # |h - θ| = 0.5: outside
    assert check.spike_flips(flipped.half(), s_ref, h_ref, params, x, None, torch.float16) == (2, 1)
    # the band is u·(|λ·u_{t-1}| + |scale·x_t|): at t = 1, neuron 0, with x_1 = 0.75 - δ it is about
    # u·(0.5·0.5 + 0.75) = u, and h_1 = 1 - δ
    u = 2.0**-11
    for delta, outside in ((0.9 * u, 0), (1.1 * u, 1)):
        near = x.clone()
        near[1, 0] = 0.75 - delta
        s_n, _, h_n = neuron_multistep(near, params, surrogates.Sigmoid(), return_membrane=True)
        moved = s_n.clone()
        moved[1, 0] = 1.0 - moved[1, 0]
        assert check.spike_flips(moved.half(), s_n, h_n, params, near, None, torch.float16) == (1, outside)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_kernel_by_hand(dtype):
    """Independently of the check module: spikes and potentials of the float32 reference on the same
    values, the state rounded once to the input's dtype, gradients its gradients rounded once."""
    x = currents((7, 3, 33), dtype, seed=11)
    v0 = (torch.rand(3, 33) * 0.5).to(dtype).requires_grad_(True)
    params = NeuronParams(leak=0.8, threshold=0.9, reset="hard", v_reset=-0.1, input_scale=1.1)
    sg = surrogates.Dspike(temperature=2.0)
    spikes, state, h = fused.multistep(x, params, sg, NeuronState(v0), backend="cpu", return_membrane=True)
    x32, v32 = x.detach().float().requires_grad_(True), v0.detach().float().requires_grad_(True)
    s_ref, st_ref, h_ref = neuron_multistep(x32, params, sg, NeuronState(v32), return_membrane=True)
    assert spikes.dtype == state.v.dtype == dtype and h.dtype == torch.float32
    assert torch.equal(spikes.float(), s_ref) and torch.equal(h, h_ref.detach())
    assert torch.equal(state.v, st_ref.v.detach().to(dtype))
    up = torch.randn(spikes.shape).to(dtype)
    gx, gv = torch.autograd.grad((spikes, state.v), (x, v0), (up, torch.ones_like(state.v)))
    gx_ref, gv_ref = torch.autograd.grad((s_ref, st_ref.v), (x32, v32),
                                         (up.float(), torch.ones_like(st_ref.v)))
    assert gx.dtype == gv.dtype == dtype
    # equal to the float32 gradients rounded to the dtype, but where float32 rounding lands the value on
    # the other side of a rounding midpoint: then one unit in the last place
    u = check.UNIT_ROUNDOFF[dtype]
    for a, b in ((gx, gx_ref), (gv, gv_ref)):
        assert (a == b.to(dtype)).float().mean() > 0.99
        assert ((a.float() - b).abs() <= 2 * u * b.abs() + 1e-6 * b.abs().max()).all()


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_streaming_rounds_the_carried_state(dtype):
    """Chunks carry their state in the input's dtype: the run equals the float32 reference with its
    state rounded to that dtype between the chunks, exactly."""
    x = currents((9, 2, 40), dtype, seed=4, requires_grad=False)
    params, sg = NeuronParams(leak=0.9, threshold=0.7, reset="soft"), surrogates.Sigmoid()
    first, state, _ = fused.multistep(x[:4], params, sg, backend="cpu")
    second, final, _ = fused.multistep(x[4:], params, sg, state, backend="cpu")
    r1, rs, _ = neuron_multistep(x[:4].float(), params, sg)
    r2, rf, _ = neuron_multistep(x[4:].float(), params, sg, NeuronState(rs.v.to(dtype).float()))
    assert torch.equal(first.float(), r1) and torch.equal(second.float(), r2)
    assert torch.equal(state.v, rs.v.to(dtype)) and torch.equal(final.v, rf.v.to(dtype))
    net = neurons.LIF(leak=0.9, threshold=0.7, reset="soft", surrogate=sg, backend="cpu")
    with neurons.streaming(net):
        chunked = torch.cat([net(x[:4]), net(x[4:])])
    assert torch.equal(chunked, torch.cat([first, second]))


def test_half_precision_conversions_match_torch():
    """The CPU kernel's own float16/bfloat16 conversions (bit arithmetic) against torch's: every 16-bit
    pattern widened, and float32 values of every exponent, the rounding midpoints, subnormals,
    overflow, infinities and NaN narrowed (round to nearest even)."""
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    for dtype in HALF:
        values = patterns.view(dtype)
        ours = cpu.convert(values, torch.float32)
        assert torch.equal(ours.isnan(), values.float().isnan())
        assert torch.equal(ours[~ours.isnan()], values.float()[~ours.isnan()])
        gen = torch.Generator().manual_seed(0)
        bits = torch.randint(-(2**31), 2**31, (200_000,), generator=gen, dtype=torch.int64).to(torch.int32)
        representable = values.float()[~values.isnan()]
        spacing = torch.finfo(dtype).eps * representable.abs()
        midpoints = torch.cat([representable + spacing / 2, representable - spacing / 2])  # ties and near
        specials = torch.tensor([0.0, -0.0, 65504.0, 65519.996, 65520.0, 65536.0, 3.4e38, float("inf"),
                                 -float("inf"), float("nan"), 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14,
                                 1e-40, -1e-40, 1.0 + 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-9])
        floats = torch.cat([bits.view(torch.float32), midpoints, specials])
        narrowed = cpu.convert(floats, dtype)
        expected = floats.to(dtype)
        assert torch.equal(narrowed.isnan(), expected.isnan())
        keep = ~expected.isnan()
        assert torch.equal(narrowed[keep].view(torch.int16), expected[keep].view(torch.int16)), dtype


@pytest.mark.parametrize("dtype", HALF)
def test_cpu_autocast_runs_the_kernel(dtype):
    """Under CPU autocast a linear layer hands the neuron half-precision currents: ``auto`` runs the
    kernel on them, and a training step's gradients equal those of the float32 reference run on the
    same currents (to one rounding of the neuron's input gradient)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 40)
    images = torch.rand(4, 8, 12)
    chosen, outputs = [], {}
    for backend in ("auto", "reference"):
        neuron = neurons.LIF(leak=0.6, threshold=0.4, surrogate=surrogates.Dspike(2.0), backend=backend)
        neuron.register_forward_pre_hook(
            lambda m, inp: chosen.append(fused.resolve_backend(m.backend, inp[0], m.params)))
        layer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            current = layer(images)
            assert current.dtype == dtype
            if backend == "reference":  # the yardstick: the float32 loop on the same currents
                current = current.float()
            spikes = neuron(current)
            loss = (spikes.float() * torch.linspace(-1, 1, 40)).sum()
        loss.backward()
        outputs[backend] = (spikes.float(), layer.weight.grad.clone())
    assert chosen == ["cpu", "reference"]
    assert torch.equal(outputs["auto"][0], outputs["reference"][0])
    got, expected = outputs["auto"][1], outputs["reference"][1]
    # the weight gradient sums the neuron's input gradient (rounded once to dtype) over the batch
    assert (got - expected).abs().max() <= 4 * check.UNIT_ROUNDOFF[dtype] * expected.abs().max()
    assert expected.abs().max() > 0


def test_triton_kernels_under_the_interpreter():
    """The GPU kernels, run by Triton's CPU interpreter (``TRITON_INTERPRET=1``) on the full grid."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "spikegrad.fused.check", "--backend", "triton", "--device",
                           "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "212/212 cases equal" in done.stdout and "0 spike flips" in done.stdout


@pytest.mark.slow
def test_why_the_triton_kernel_keeps_float32_potentials():
    """bench/half_potentials (under the interpreter, small): with float32 potentials the half-precision
    input gradient is off by exactly one rounding of the result; with potentials rounded to the input's
    dtype, by far more (the numbers quoted in triton_lif's docstring come from its full-size run)."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(root, "src"), root, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "bench.half_potentials", "--device", "cpu", "--shape", "6,4096"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| float16")
            or line.startswith("| bfloat16")]
    assert len(rows) == 2 * len(surrogates.available())
    worst: dict[str, float] = {}
    for dtype, _, one, kept32, rounded, _ in rows:
        assert float(kept32) == float(one)
        assert float(rounded) > 2 * float(one)
        worst[dtype] = max(worst.get(dtype, 0.0), float(rounded))
    assert min(worst.values()) > 0.1, worst  # 10% of the largest gradient, in each dtype


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_membrane_potentials_from_the_kernel(reset):
    x = currents((7, 3, 10))
    params = NeuronParams(leak=0.6, reset=reset, v_reset=0.2 if reset == "hard" else 0.0)
    _, _, h_ref = neuron_multistep(x, params, surrogates.Sigmoid(), return_membrane=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            spikes, _, h = fused.multistep(x, params, surrogates.Sigmoid(), backend="cpu",
                                           return_membrane=True)
        assert torch.equal(h, h_ref.detach())
        assert not h.requires_grad
    seen = []
    neuron = neurons.LIF(leak=0.6, reset=reset, v_reset=params.v_reset, surrogate=surrogates.Sigmoid())
    neuron.membrane_hook = seen.append
    assert torch.equal(neuron(x), spikes)
    assert torch.equal(seen[0], h_ref.detach())


def test_unwritable_cache_warns_and_uses_the_reference(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPIKEGRAD_CACHE_DIR", str(blocker / "cache"))
    cpu.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert cpu.library() is None
    finally:
        monkeypatch.undo()
        cpu.library.cache_clear()
    assert cpu.library() is not None


def test_check_shards_together_cover_the_whole_grid():
    cases, failures = check.run_checks("cpu", "cpu", dtypes=(torch.float64,))
    assert not failures and cases == 53
    shards = [check.run_checks("cpu", "cpu", dtypes=(torch.float64,), shard=(k, 3)) for k in range(3)]
    assert [n for n, _ in shards] == [18, 18, 17] and not any(f for _, f in shards)
    with pytest.raises(ValueError, match="shard 3/3"):
        check.run_checks("cpu", "cpu", shard=(3, 3))


@pytest.mark.slow
def test_check_command_splits_over_processes():
    command = [sys.executable, "-m", "spikegrad.fused.check", "--backend", "cpu", "--device", "cpu"]
    done = subprocess.run([*command, "--jobs", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cpu on cpu: 212/212 cases equal" in done.stdout
    bad = subprocess.run([*command, "--shard", "2/2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "need 0 <= K < N" in bad.stderr


def test_triton_constants_are_made_once_and_take_a_tensor_leak():
    """The kernels' constants tensor is cached (a new one per call would be a blocking host-to-device
    copy on a GPU); a learnable leak enters it as a tensor, never through a host float."""
    pytest.importorskip("triton")
    from spikegrad.fused import triton_lif

    values = (0.5, 0.8, 0.9, -0.2, -0.2)
    first = triton_lif.device_constants(values, torch.float32, torch.device("cpu"))
    assert triton_lif.device_constants(values, torch.float32, torch.device("cpu")) is first
    assert first.tolist() == pytest.approx(values)
    leak = torch.sigmoid(torch.tensor(0.3, requires_grad=True))
    mixed = triton_lif.device_constants((leak, *values[1:]), torch.float64, torch.device("cpu"))
    assert mixed.dtype == torch.float64 and not mixed.requires_grad
    assert mixed[0].item() == leak.item() and mixed[1:].tolist() == pytest.approx(values[1:])
    # on the CPU a learnable leak is read as a float; on CUDA it stays a tensor (tests/test_cuda.py)
    assert isinstance(fused.constants(NeuronParams(leak=leak))[0], float)


def _compile_for_hopper(kernel, dtype: str, constexprs: dict, ints: dict | None = None,
                        pointers: dict | None = None):
    """Compile a Triton kernel ahead of time for an H100/H200 (sm_90) without a GPU. Pointers are
    ``*dtype`` unless ``pointers`` names another element type (``leak_ptr``: ``*fp64``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constant = {p.name for p in kernel.params if p.is_constexpr}
    pointers = {"leak_ptr": "fp64", **(pointers or {})}
    signature = {}
    for name in kernel.arg_names:
        if name in constant:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{pointers.get(name, dtype)}"
        else:
            signature[name] = (ints or {}).get(name, "i32")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"enable_fp_fusion": False, "num_warps": 4})


# mixed precision: the input, spikes, state and gradients in half precision; the potentials, the
# constants and a given surrogate derivative in float32
HALF_FORWARD = {"h_ptr": "fp32", "c_ptr": "fp32"}
HALF_BACKWARD = {"h_ptr": "fp32", "c_ptr": "fp32", "g_ptr": "fp32"}


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper():
    """The GPU compiler (not the interpreter) accepts every surrogate formula and flag: each kernel
    variant the neurons launch compiles to an sm_90 binary here, with Triton's own ptxas, in float32,
    float64, float16 and bfloat16."""
    pytest.importorskip("triton")
    from spikegrad.fused import formulas, triton_lif

    if triton_lif.INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted, not compiled")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    block = triton_lif.BLOCK
    for dtype, has_v0, hard, save_h in (("fp32", False, True, True), ("fp32", True, False, False),
                                        ("fp64", True, True, True), ("fp16", True, True, True),
                                        ("bf16", False, False, True), ("bf16", True, True, False)):
        kernel = _compile_for_hopper(triton_lif._forward_kernel, dtype,
                                     {"HAS_V0": has_v0, "HARD": hard, "SAVE_H": save_h, "BLOCK": block},
                                     pointers=HALF_FORWARD if dtype in ("fp16", "bf16") else None)
        assert kernel.asm["cubin"]
    kinds = [formulas.GIVEN, *formulas.KINDS.values()]
    for dtype in ("fp32", "fp16", "bf16"):
        for i, kind in enumerate(kinds):
            flags = {"KIND": kind, "HAS_V0": i % 2 == 0, "HAS_GV": i % 3 == 0, "HARD": i % 2 == 1,
                     "DETACH": i % 4 == 0, "WANT_V0": i % 2 == 0, "WANT_LEAK": True, "BLOCK": block}
            kernel = _compile_for_hopper(triton_lif._backward_kernel, dtype, flags,
                                         pointers=HALF_BACKWARD if dtype != "fp32" else None)
            assert kernel.asm["cubin"], (dtype, kind)
    # the half-precision stores round to nearest even on the GPU: bfloat16 by the kernel's own bit
    # arithmetic, float16 by the conversion instruction
    flags = {"KIND": formulas.KINDS["sigmoid"], "HAS_V0": True, "HAS_GV": True, "HARD": True, "DETACH": False,
             "WANT_V0": True, "WANT_LEAK": False, "BLOCK": block}
    ptx = _compile_for_hopper(triton_lif._backward_kernel, "fp16", flags, pointers=HALF_BACKWARD).asm["ptx"]
    assert "cvt.rn.f16.f32" in ptx
    # float64, and (T - 1)·N beyond 2^31 passed as a 64-bit integer
    flags = {"KIND": formulas.KINDS["dspike"], "HAS_V0": True, "HAS_GV": True, "HARD": True, "DETACH": False,
             "WANT_V0": True, "WANT_LEAK": True, "BLOCK": block}
    assert _compile_for_hopper(triton_lif._backward_kernel, "fp64", flags, {"last": "i64"}).asm["cubin"]
