import pytest
import torch

from spikegrad import models, neurons, surrogates
from spikegrad.errors import UserError

SMALL = {"width": 0.125, "T": 2}


def small_input(name: str) -> torch.Tensor:
    size = 8 if name == "digits_cnn" else 16
    channels = 1 if name == "digits_cnn" else 3
    if name == "cnn1d":  # signals [B, C, L]
        return torch.rand(3, channels, size)
    return torch.rand(3, channels, size, size)


def build(name: str, **kwargs) -> torch.nn.Module:
    channels = 1 if name == "digits_cnn" else 3
    size = small_input(name).shape[-1]
    return models.create(name, num_classes=5, in_channels=channels, input_size=size, **SMALL, **kwargs)


@pytest.mark.parametrize("name", models.list())
def test_every_model_runs_forward_and_backward(name):
    model = build(name, surrogate={"name": "sigmoid", "alpha": 4.0})
    out = model(small_input(name))
    assert out.shape == (2, 3, 5)  # (T, B, classes)
    out.mean(0).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first = next(model.parameters()).grad
    assert first.abs().sum() > 0  # the gradient reaches the first layer


@pytest.mark.parametrize("name", models.list())
def test_every_model_has_an_ann_twin_with_the_same_parameters(name):
    snn, ann = build(name), build(name, kind="ann")
    assert ann.T == 1
    assert [k for k in snn.state_dict()] == [k for k in ann.state_dict()]
    assert not any(isinstance(m, neurons.SpikingNeuron) for m in ann.modules())
    assert ann(small_input(name)).shape == (1, 3, 5)
    assert len(snn.units()) == len(ann.units())


def test_models_accept_time_major_input_and_reject_bad_layouts():
    model = build("digits_cnn")
    frames = torch.rand(2, 3, 1, 8, 8)  # (T, B, C, H, W)
    assert model(frames).shape == (2, 3, 5)
    with pytest.raises(UserError, match=r"\[T, B, \.\.\.\]"):
        model(torch.rand(8, 8))


def test_neuron_and_surrogate_choices_reach_every_unit():
    model = build("resnet18", neuron={"type": "if", "threshold": 0.5},
                  surrogate={"name": "dspike", "temperature": 2.0})
    found = [m for m in model.modules() if isinstance(m, neurons.SpikingNeuron)]
    assert len(found) == 1 + 2 * 8  # stem + two per basic block
    assert all(isinstance(m, neurons.IF) and m.threshold == 0.5 for m in found)
    assert all(isinstance(m.surrogate, surrogates.Dspike) for m in found)
    assert len({id(m.surrogate) for m in found}) == len(found)


def test_resnet_depths_and_stage_ends():
    def convs(name):
        return sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                   for m in build(name).modules())

    assert convs("resnet18") == 17 and convs("resnet34") == 33
    assert convs("resnet19") == 17 and convs("resnet20") == 19
    assert build("resnet18").stage_ends() == [
        "features.layer1_1", "features.layer2_1", "features.layer3_1", "features.layer4_1"]


def test_vgg_depths():
    def convs(name):
        return sum(isinstance(m, torch.nn.Conv2d) for m in build(name).modules())

    assert (convs("vgg11"), convs("vgg13"), convs("vgg16")) == (8, 10, 13)


@pytest.mark.parametrize("name,strided", [("vgg11_ltl", [2, 4, 6, 8]), ("vgg16_ltl", [4, 7, 10, 13])])
def test_ltl_vggs_keep_a_2x2_map_and_two_hidden_fc_layers(name, strided):
    """The published CIFAR VGG-11 of local tandem learning (and its VGG-16 analogue)."""
    snn = models.create(name, T=2, batch_norm=False)  # the student: no batch norm
    ann = models.create(name, kind="ann")  # its teacher twin: batch norm
    convs = [m for m in snn.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [i + 1 for i, c in enumerate(convs) if c.stride == (2, 2)] == strided
    assert not any(isinstance(m, torch.nn.AvgPool2d) for m in snn.modules())
    linears = [(m.in_features, m.out_features) for m in snn.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(2048, 512), (512, 512), (512, 10)]
    x = torch.rand(2, 3, 32, 32)
    h_s, h_t = snn.encode(x), ann.encode(x)
    shapes = []
    for (s_name, s_unit), (t_name, t_unit) in zip(snn.units(), ann.units(), strict=True):
        h_s, h_t = s_unit(h_s), t_unit(h_t)
        assert s_name == t_name and h_s.shape[2:] == h_t.shape[2:]  # the twins pair unit by unit
        shapes.append(tuple(h_s.shape[2:]))
    assert shapes[len(convs) - 1] == (512, 2, 2) and shapes[len(convs):] == [(512,), (512,)]
    assert snn(x).shape == (2, 2, 10) and ann(x).shape == (1, 2, 10)

    def weights(model):
        synapses = (torch.nn.Conv2d, torch.nn.Linear)
        return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, synapses)]

    assert weights(snn) == weights(ann)  # the same synapses; only the batch norm differs
    # the plain VGG-11 still halves five times (1×1 at 32×32) and has no hidden layer
    plain = models.create("vgg11", kind="ann")
    assert [m.in_features for m in plain.modules() if isinstance(m, torch.nn.Linear)] == [512]


def test_vgg_dropout_precedes_every_fully_connected_layer_and_only_while_training():
    """The published LTL VGG-11 teacher: dropout before each FC layer (2048->512, 512->512,
    512->10); in eval mode it computes what the same weights compute without dropout."""
    torch.manual_seed(0)
    kwargs = {"kind": "ann", "width": 0.125}
    teacher = models.create("vgg11_ltl", dropout=0.2, **kwargs)
    plain = models.create("vgg11_ltl", **kwargs)
    order = [m for m in teacher.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Linear))]
    assert [type(m).__name__ for m in order] == ["Dropout", "Linear"] * 3
    assert all(m.p == 0.2 for m in order[::2])
    with torch.no_grad():  # the same weights and statistics, in the same order
        for a, b in zip([*plain.parameters(), *plain.buffers()],
                        [*teacher.parameters(), *teacher.buffers()], strict=True):
            a.copy_(b)
    x = torch.rand(4, 3, 32, 32)
    teacher.eval(), plain.eval()
    assert torch.equal(teacher(x), plain(x))
    teacher.train()
    inputs = []
    last = order[-2]
    last.register_forward_hook(lambda _m, args, out: inputs.append((args[0], out)))
    teacher(x)
    before, after = inputs[0]  # the head's dropout: 0 or kept and scaled by 1 / (1 - p)
    kept = after != 0
    assert torch.allclose(after[kept], before[kept] / 0.8)
    assert 0 < (~kept & (before != 0)).sum() < (before != 0).sum()
    # a plain VGG has its one FC layer behind a dropout too
    head = [m for m in models.create("vgg11", dropout=0.5, **kwargs).classifier.modules()]
    assert [type(m).__name__ for m in head[2:]] == ["Flatten", "Dropout", "Linear"]
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match=r"dropout .* must lie in \[0, 1\)"):
            models.create("vgg11_ltl", dropout=bad)


def test_cnn1d_and_the_ltl_vggs_take_a_model_spec_and_are_checked_like_every_network():
    net = models.create("cnn1d", width=0.25, T=2)  # its spec's defaults: one channel, length 40
    assert net(torch.rand(4, 1, 40)).shape == (2, 4, 10)
    assert net.classifier.module[-1].in_features == models.common.scaled(128, 0.25) * 10  # 40 / 2 / 2
    assert models.create("cnn1d", input_size=7, width=0.25)(torch.rand(2, 1, 7)).shape == (4, 2, 10)
    with pytest.raises(UserError, match=r"'input_size' must be int, got 'x'"):
        models.create("cnn1d", input_size="x")
    with pytest.raises(UserError, match=r"'width' must lie in \(0, 64\]"):
        models.create("cnn1d", width=-1.0)
    with pytest.raises(UserError, match=r"cnn1d needs signals of length >= 4"):
        models.create("cnn1d", input_size=3)
    with pytest.raises(UserError, match=r"expects a static batch with 3 dimensions"):
        net(torch.rand(2, 4, 1, 8, 8))  # time-major images are not signals
    with pytest.raises(UserError, match=r"'batch_norm' must be bool, got 'maybe'"):
        models.create("vgg11_ltl", batch_norm="maybe")
    with pytest.raises(UserError, match=r"model 'vgg16_ltl' has no argument 'hidden_fc'"):
        models.create("vgg16_ltl", hidden_fc=(8,))  # fixed by the registered layout


def test_registry_errors_name_the_choices():
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        models.create("resnt18")
    with pytest.raises(UserError, match=r"has no argument 'widht'.*did you mean 'width'"):
        models.create("resnet18", widht=2)
    assert models.list("vgg*") == ["vgg11", "vgg11_ltl", "vgg13", "vgg16", "vgg16_ltl"]


@pytest.mark.parametrize("name", models.list())
def test_every_batch_norm_sees_time_folded_into_the_batch(name):
    """tdBN-style statistics: each batch norm normalises a ``[T·B, ...]`` input, never one step."""
    model = build(name).train()
    seen = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    model(small_input(name))
    assert seen and set(seen) == {2 * 3}  # T = 2, B = 3


@pytest.mark.parametrize("name", models.list())
def test_every_model_builds_without_batch_norm(name):
    model = build(name, batch_norm=False)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    weighted = [m for m in model.features.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert weighted and all(m.bias is not None for m in weighted)  # a bias instead of BN
    out = model(small_input(name))
    assert out.shape == (2, 3, 5)
    out.mean(0).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_ann_twin_units_clip_their_relu_to_activation_max():
    """The LTL teacher's activation: ReLU clipped to [0, 2] (``activation_max``)."""
    assert torch.equal(neurons.ClippedReLU(2.0)(torch.tensor([-1.0, 0.5, 1.0, 3.0])),
                       torch.tensor([0.0, 0.5, 1.0, 2.0]))
    torch.manual_seed(0)
    for clip in (2.0, 0.7):
        ann = models.create("digits_cnn", kind="ann", width=0.25, in_channels=1, input_size=8,
                            activation_max=clip).eval()
        with torch.no_grad():  # wide pre-activations, so that every unit saturates somewhere
            for bn in (m for m in ann.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                bn.weight.fill_(5.0)
        h = ann.encode(torch.rand(8, 1, 8, 8))
        for _, unit in ann.units():
            pre = unit[0](h)  # the weight layer and batch norm
            h = unit(h)
            assert torch.equal(h, pre.clamp(0.0, clip))
            assert (h == clip).any() and (h == 0).any()
