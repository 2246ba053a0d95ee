import pytest
import torch

from spikegrad import neurons, surrogates
from spikegrad.dynamics import NeuronParams, NeuronState, neuron_multistep
from spikegrad.errors import UserError

from .conftest import require_peer


def trace(neuron: neurons.SpikingNeuron, inputs: list[float]) -> tuple[list[float], list[float]]:
    x = torch.tensor(inputs, dtype=torch.float64).view(-1, 1)  # (T, B=1)
    spikes, h = neuron.membrane(x)
    return spikes.view(-1).tolist(), h.view(-1).tolist()


# Hand-computed: h_t = leak·u_(t-1) + I_t, spike if h_t >= threshold, then reset.
def test_lif_hard_reset_trace():
    s, h = trace(neurons.LIF(leak=0.5, threshold=1.0, reset="hard"), [0.6, 0.6, 0.6, 1.2, 0.1])
    assert s == [0, 0, 1, 1, 0]
    assert h == pytest.approx([0.6, 0.9, 1.05, 1.2, 0.1])


def test_lif_hard_reset_to_nonzero_v_reset_trace():
    s, h = trace(neurons.LIF(leak=0.5, threshold=1.0, reset="hard", v_reset=-0.5),
                 [0.6, 0.6, 0.6, 1.2, 0.1])
    # starts at v_reset: h0 = 0.5·(-0.5) + 0.6
    assert s == [0, 0, 0, 1, 0]
    assert h == pytest.approx([0.35, 0.775, 0.9875, 1.69375, -0.15])


def test_lif_input_scale_trace():
    """``h_t = leak·u_{t-1} + input_scale·I_t`` (SpikingJelly's ``1/τ``), by hand: τ = 2."""
    s, h = trace(neurons.LIF(leak=0.5, threshold=1.0, reset="hard", input_scale=0.5),
                 [1.2, 1.2, 1.2, 2.4, 0.2])
    # 0.6; 0.3 + 0.6 = 0.9; 0.45 + 0.6 = 1.05 fires; 0 + 1.2 fires; 0 + 0.1
    assert s == [0, 0, 1, 1, 0]
    assert h == pytest.approx([0.6, 0.9, 1.05, 1.2, 0.1])


def test_lif_soft_reset_trace():
    s, h = trace(neurons.LIF(leak=0.5, threshold=1.0, reset="soft"), [0.6, 0.6, 0.6, 1.2, 0.1])
    assert s == [0, 0, 1, 1, 0]
    assert h == pytest.approx([0.6, 0.9, 1.05, 1.225, 0.2125])


def test_if_hard_reset_trace():
    s, h = trace(neurons.IF(threshold=1.0, reset="hard"), [0.4, 0.4, 0.4, 0.4, 1.5])
    assert s == [0, 0, 1, 0, 1]
    assert h == pytest.approx([0.4, 0.8, 1.2, 0.4, 1.9])


def test_if_soft_reset_trace():
    s, h = trace(neurons.IF(threshold=1.0, reset="soft"), [0.4, 0.4, 0.4, 0.4, 1.5])
    assert s == [0, 0, 1, 0, 1]
    assert h == pytest.approx([0.4, 0.8, 1.2, 0.6, 2.1])


def test_fires_at_exactly_the_threshold():
    s, _ = trace(neurons.IF(threshold=0.5), [0.25, 0.25])
    assert s == [0, 1]


def test_detach_reset_changes_gradients_not_spikes():
    x = (torch.rand(6, 4, 3) * 1.5).requires_grad_(True)
    outs, grads = [], []
    for detach in (False, True):
        n = neurons.LIF(leak=0.5, detach_reset=detach, surrogate=surrogates.Sigmoid())
        y = n(x)
        outs.append(y)
        grads.append(torch.autograd.grad(y.sum(), x)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])


def test_detached_reset_gradient_by_hand():
    """Two steps, hard reset with detach: ds1/dx0 = g(h1-θ)·λ·(1-s0) only."""
    x = torch.tensor([[1.5], [0.3]], dtype=torch.float64, requires_grad=True)
    sg = surrogates.Sigmoid(alpha=2.0)
    n = neurons.LIF(leak=0.5, threshold=1.0, detach_reset=True, surrogate=sg)
    s = n(x)
    (g,) = torch.autograd.grad(s[1].sum(), x)
    h1 = torch.tensor(0.3, dtype=torch.float64)  # u0 = 0 after the spike at t=0
    expected_dx0 = sg.derivative(h1 - 1.0) * 0.5 * (1 - 1.0)  # through u0 = h0·(1 - s0): zero
    assert g[0].item() == pytest.approx(expected_dx0.item())
    assert g[1].item() == pytest.approx(sg.derivative(h1 - 1.0).item())


@pytest.mark.parametrize("tau", [2.0, 3.0])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_spikes_and_gradients_equal_spikingjelly(tau, detach_reset):
    sj_neuron = require_peer("spikingjelly.activation_based.neuron")
    sj_surrogate = require_peer("spikingjelly.activation_based.surrogate")
    torch.manual_seed(int(tau) + 10 * detach_reset)
    x = (torch.randn(8, 16, 32) * 1.5 + 0.8).requires_grad_(True)
    ref = sj_neuron.LIFNode(tau=tau, decay_input=True, v_reset=0.0, v_threshold=1.0,
                            detach_reset=detach_reset, step_mode="m",
                            surrogate_function=sj_surrogate.Sigmoid(alpha=4.0))
    ours = neurons.LIF.from_spikingjelly(tau, decay_input=True, v_reset=0.0,
                                         detach_reset=detach_reset, surrogate=surrogates.Sigmoid(4.0))
    s_ref, s_ours = ref(x), ours(x)
    assert torch.equal(s_ref, s_ours)
    assert s_ours.mean() > 0.05  # the comparison exercises spikes and resets
    upstream = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(s_ref, x, upstream)
    (g_ours,) = torch.autograd.grad(s_ours, x, upstream)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_spikes_equal_snntorch_leaky_subtract_and_zero():
    snn = require_peer("snntorch")
    torch.manual_seed(1)
    x = torch.rand(10, 8, 20) * 0.9  # below 2·threshold: one subtraction always suffices
    for mechanism in ("subtract", "zero"):
        ref = snn.Leaky(beta=0.8, threshold=1.0, reset_mechanism=mechanism, reset_delay=False)
        mem = ref.init_leaky()
        spikes = []
        for x_t in x.unbind(0):
            spk, mem = ref(x_t, mem)
            spikes.append(spk)
        ours = neurons.LIF.from_snntorch(beta=0.8, threshold=1.0, reset_mechanism=mechanism)
        out = ours(x)
        assert out.sum() > 10
        assert torch.equal(torch.stack(spikes), out), mechanism


def test_spikes_equal_norse_lif_box():
    norse = require_peer("norse.torch")
    torch.manual_seed(2)
    x = torch.rand(12, 4, 10) * 40
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(1.0),
                               v_leak=torch.tensor(0.0), v_reset=torch.tensor(0.0))
    cell = norse.LIFBoxCell(p=p, dt=1e-3)
    state, spikes = None, []
    for x_t in x.unbind(0):
        z, state = cell(x_t, state)
        spikes.append(z)
    ours = neurons.LIF.from_norse(tau_mem_inv=100.0, dt=1e-3, v_th=1.0)
    out = ours(x)
    assert out.sum() > 10
    assert torch.equal(torch.stack(spikes), out)


def test_mapping_constructors_give_the_documented_parameters():
    n = neurons.LIF.from_spikingjelly(tau=4.0, decay_input=True, v_reset=None)
    assert (n.leak, n.input_scale, n.reset) == (0.75, 0.25, "soft")
    assert neurons.LIF.from_spikingjelly(tau=4.0, decay_input=False).input_scale == 1.0
    assert neurons.LIF.from_snntorch(beta=0.9).leak == 0.9
    with pytest.raises(UserError, match="v_reset"):
        neurons.LIF.from_spikingjelly(tau=2.0, v_reset=-0.1)


def test_learnable_leak_receives_gradient_and_starts_at_given_value():
    n = neurons.create("plif", leak=0.25, surrogate=surrogates.ATan())
    assert float(n.leak) == pytest.approx(0.25)
    y = n(torch.rand(5, 3, 7) * 2)
    y.sum().backward()
    assert n.leak_logit.grad is not None and n.leak_logit.grad.abs() > 0


def test_multistep_keeps_no_state_between_calls():
    n = neurons.LIF()
    x = torch.rand(4, 3, 5) * 2
    first = n(x)
    n(torch.rand(4, 7, 2))  # another batch size: no stale state to trip on
    assert torch.equal(first, n(x))


def test_step_api_equals_multistep():
    n = neurons.LIF(leak=0.7, reset="soft")
    x = torch.rand(6, 2, 9) * 1.5
    state, outs = None, []
    for x_t in x.unbind(0):
        s, state = n.step(x_t, state)
        outs.append(s)
    assert torch.equal(torch.stack(outs), n(x))


def test_streaming_chunks_equal_one_call():
    net = torch.nn.Sequential(neurons.LIF(leak=0.5), neurons.LIF(leak=0.9, threshold=0.3))
    x = torch.rand(10, 3, 4) * 2
    whole = net(x)
    with neurons.streaming(net) as reset:
        chunks = torch.cat([net(x[:3]), net(x[3:4]), net(x[4:])])
        reset()
        again = net(x[:3])
    assert torch.equal(whole, chunks)
    assert torch.equal(again, whole[:3])
    assert all(m._carry is None for m in net)  # state dropped after the block


def test_forward_with_state_continues_a_sequence():
    n = neurons.LIF(leak=0.5)
    x = torch.rand(8, 2, 3) * 2
    a, state = n.forward_with_state(x[:5])
    b, _ = n.forward_with_state(x[5:], state)
    assert torch.equal(torch.cat([a, b]), n(x))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(UserError, match=r"\[T, B, \.\.\.\]"):
        neurons.LIF()(torch.rand(5))
    with pytest.raises(UserError, match="leak must lie in"):
        neurons.LIF(leak=1.5)
    with pytest.raises(UserError, match="reset must be"):
        neurons.LIF(reset="zero")
    with pytest.raises(UserError, match="did you mean 'lif'"):
        neurons.create("lf")
    with pytest.raises(UserError, match="state has shape"):
        neuron_multistep(torch.rand(3, 2, 4), NeuronParams(), surrogates.Dspike(),
                         NeuronState(torch.zeros(5, 4)))


def test_each_neuron_owns_its_surrogate():
    a, b = neurons.LIF(), neurons.LIF()
    assert a.surrogate is not b.surrogate


def _snntorch_run(ref, x):
    mem = ref.init_leaky()
    spikes = []
    for x_t in x.unbind(0):
        spk, mem = ref(x_t, mem)
        spikes.append(spk)
    return torch.stack(spikes)


@pytest.mark.parametrize("mechanism", ["subtract", "zero"])
@pytest.mark.parametrize("from_module", [False, True])
def test_from_snntorch_matches_leaky_spike_for_spike_and_gradient_for_gradient(mechanism, from_module):
    """Default surrogates on both sides (snnTorch's atan(), alpha 2): same spikes, same input gradient."""
    snn = require_peer("snntorch")
    torch.manual_seed(3)
    x = (torch.rand(12, 6, 16) * 0.9).requires_grad_(True)  # below 2·threshold
    weights = torch.randn(12, 6, 16)
    ref = snn.Leaky(beta=0.8, threshold=1.0, reset_mechanism=mechanism, reset_delay=False)
    theirs = _snntorch_run(ref, x)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    ours = (neurons.LIF.from_snntorch(ref) if from_module else
            neurons.LIF.from_snntorch(beta=0.8, threshold=1.0, reset_mechanism=mechanism))
    assert isinstance(ours.surrogate, surrogates.ATan) and ours.surrogate.alpha == 2.0
    out = ours(x)
    (g_ours,) = torch.autograd.grad((out * weights).sum(), x)
    assert 10 < out.sum() < out.numel() - 10
    assert torch.equal(theirs, out)
    assert g_theirs.abs().max() > 0
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, expected", [
    (lambda s: s.atan(alpha=3.5), ("ATan", "alpha", 3.5)),
    (lambda s: s.fast_sigmoid(slope=10), ("FastSigmoid", "slope", 10.0)),
    (lambda s: s.sigmoid(slope=6), ("Sigmoid", "alpha", 6.0)),
])
def test_from_snntorch_module_takes_its_surrogate_with_equal_gradients(make, expected):
    snn = require_peer("snntorch")
    spike_grad = make(require_peer("snntorch.surrogate"))
    ref = snn.Leaky(beta=0.7, threshold=0.6, spike_grad=spike_grad, reset_delay=False)
    ours = neurons.LIF.from_snntorch(ref)
    kind, param, value = expected
    assert type(ours.surrogate).__name__ == kind and getattr(ours.surrogate, param) == value
    assert (ours.threshold, ours.reset) == (pytest.approx(0.6), "soft")
    torch.manual_seed(4)
    x = (torch.rand(8, 3, 10) * 0.5).requires_grad_(True)
    weights = torch.randn(8, 3, 10)
    (g_theirs,) = torch.autograd.grad((_snntorch_run(ref, x) * weights).sum(), x)
    (g_ours,) = torch.autograd.grad((ours(x) * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


def test_from_snntorch_refuses_what_has_no_exact_equivalent():
    snn = require_peer("snntorch")
    with pytest.raises(UserError, match="reset_delay=True"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=0.9))  # snnTorch's default reset_delay
    with pytest.raises(UserError, match="learnable beta"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=0.9, learn_beta=True, reset_delay=False))
    with pytest.raises(UserError, match="per neuron"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=torch.rand(5), reset_delay=False))
    with pytest.raises(UserError, match="reset_mechanism='none'"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=0.9, reset_mechanism="none", reset_delay=False))
    with pytest.raises(UserError, match="reads threshold"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=0.9, reset_delay=False), threshold=2.0)
    with pytest.raises(UserError, match="no mapped spikegrad equivalent"):
        neurons.LIF.from_snntorch(snn.Leaky(beta=0.9, reset_delay=False, spike_grad=lambda x: x))
    with pytest.raises(UserError, match=r"snntorch\.Leaky"):
        neurons.LIF.from_snntorch(torch.nn.Linear(2, 2))
    custom = neurons.LIF.from_snntorch(snn.Leaky(beta=0.9, reset_delay=False, spike_grad=lambda x: x),
                                       surrogate=surrogates.Dspike(2.0))
    assert isinstance(custom.surrogate, surrogates.Dspike)
