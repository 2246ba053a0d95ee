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
    params = NeuronParams(leak=0.8, reset=reset, v_reset=0.1)
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
    assert fused.resolve_backend("auto", half, NeuronParams()) == "reference"
    with pytest.warns(RuntimeWarning, match="cannot run"):
        assert fused.resolve_backend("cpu", half.half(), NeuronParams()) == "reference"
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


def test_triton_kernels_under_the_interpreter():
    """The GPU kernels, run by Triton's CPU interpreter (``TRITON_INTERPRET=1``) on the full grid."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "spikegrad.fused.check", "--backend", "triton", "--device",
                           "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "106/106 cases equal" in done.stdout


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_membrane_potentials_from_the_kernel(reset):
    x = currents((7, 3, 10))
    params = NeuronParams(leak=0.6, reset=reset, v_reset=0.2)
    _, _, h_ref = neuron_multistep(x, params, surrogates.Sigmoid(), return_membrane=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            spikes, _, h = fused.multistep(x, params, surrogates.Sigmoid(), backend="cpu",
                                           return_membrane=True)
        assert torch.equal(h, h_ref.detach())
        assert not h.requires_grad
    seen = []
    neuron = neurons.LIF(leak=0.6, reset=reset, v_reset=0.2, surrogate=surrogates.Sigmoid())
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
    assert "cpu on cpu: 106/106 cases equal" in done.stdout
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


def _compile_for_hopper(kernel, dtype: str, constexprs: dict, ints: dict | None = None):
    """Compile a Triton kernel ahead of time for an H100/H200 (sm_90) without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constant = {p.name for p in kernel.params if p.is_constexpr}
    signature = {}
    for name in kernel.arg_names:
        if name in constant:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp64" if name == "leak_ptr" else f"*{dtype}"
        else:
            signature[name] = (ints or {}).get(name, "i32")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"enable_fp_fusion": False, "num_warps": 4})


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper():
    """The GPU compiler (not the interpreter) accepts every surrogate formula and flag: each kernel
    variant the neurons launch compiles to an sm_90 binary here, with Triton's own ptxas."""
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
                                        ("fp64", True, True, True)):
        kernel = _compile_for_hopper(triton_lif._forward_kernel, dtype,
                                     {"HAS_V0": has_v0, "HARD": hard, "SAVE_H": save_h, "BLOCK": block})
        assert kernel.asm["cubin"]
    kinds = [formulas.GIVEN, *formulas.KINDS.values()]
    for i, kind in enumerate(kinds):
        flags = {"KIND": kind, "HAS_V0": i % 2 == 0, "HAS_GV": i % 3 == 0, "HARD": i % 2 == 1,
                 "DETACH": i % 4 == 0, "WANT_V0": i % 2 == 0, "WANT_LEAK": True, "BLOCK": block}
        kernel = _compile_for_hopper(triton_lif._backward_kernel, "fp32", flags)
        assert kernel.asm["cubin"], kind
    # float64, and (T - 1)·N beyond 2^31 passed as a 64-bit integer
    flags = {"KIND": formulas.KINDS["dspike"], "HAS_V0": True, "HAS_GV": True, "HARD": True, "DETACH": False,
             "WANT_V0": True, "WANT_LEAK": True, "BLOCK": block}
    assert _compile_for_hopper(triton_lif._backward_kernel, "fp64", flags, {"last": "i64"}).asm["cubin"]
