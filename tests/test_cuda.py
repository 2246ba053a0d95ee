"""The CUDA paths, on a real GPU: ``pytest -m cuda`` (every test here is skipped without one).

The Triton kernels against the reference loop on CUDA (and past 2^31 elements; float16 and
bfloat16 against the float32 reference on the same values), no host synchronisation inside
the fused neuron nor in a training step after the first (``train.nonfinite: stop``), the
neuron under autocast running the kernel on half-precision currents, the trainer's
mixed-precision steps running it too, mixed-precision training with its gradient scaler
checkpointed and resumed exactly, pinned-memory loading, the command line on
``train.device: cuda``, and the multi-process code paths through NCCL under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from spikegrad import Config, Trainer, fused, layers, neurons, surrogates
from spikegrad.checkpoint import load_checkpoint, load_model
from spikegrad.data import build_augmentation, build_datasets
from spikegrad.demo import recipe_path
from spikegrad.dynamics import NeuronParams, NeuronState, neuron_multistep
from spikegrad.fused import check
from spikegrad.trainer import Component, evaluate_model
from tests import cuda_ddp_worker

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}


def currents(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 + 0.5
    return x.to(device=CUDA, dtype=dtype).requires_grad_(True)


# ----------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("name", ["sigmoid", "dspike", "rectangle"])
def test_triton_equals_reference_on_cuda(name, reset, dtype):
    """Bit-identical spikes and final states, gradients (input, initial state, learnable leak)
    within the tolerances of spikegrad.fused.check, on shapes that end inside a block; float16 and
    bfloat16 against the float32 reference on the same values (spikes equal, states and gradients
    within one rounding), with a float32 leak as under autocast."""
    for shape, learnable in (((6, 3, 1029), True), ((8, 64, 4096), False)):
        leak_dtype = torch.float32 if dtype in check.HALF_DTYPES else dtype
        leak = torch.tensor(0.7, dtype=leak_dtype, device=CUDA, requires_grad=True) if learnable else 0.7
        params = NeuronParams(leak, 0.9, reset, -0.2 if reset == "hard" else 0.0, False, 0.8)
        v0 = (torch.rand(shape[1:], dtype=dtype, device=CUDA) * 0.5).requires_grad_(True)
        failures = check.compare("triton", currents(shape, dtype), params, surrogates.create(name), v0,
                                 f"{name} {reset} {dtype} {shape}")
        assert not failures, failures


def test_triton_beyond_two_to_the_31_elements():
    """T·N > 2^31: the kernels step their pointers by N per time step, so no index overflows."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 64 * 2**30:
        pytest.skip(f"needs 64 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    T, N = 2, 2**30 + 1000
    x = torch.empty(T, N, device=CUDA).normal_(0.6, 0.8).requires_grad_(True)
    params, sg = NeuronParams(0.5), surrogates.Sigmoid(4.0)
    spikes, state, _ = fused.multistep(x, params, sg, backend="triton")
    up = torch.empty_like(spikes).uniform_(-1.0, 1.0)
    (grad,) = torch.autograd.grad(spikes, x, up)
    for cols in (slice(0, 4096), slice(N - 4096, N), slice(2**30 - 2048, 2**30 + 512)):
        xs = x.detach()[:, cols].clone().requires_grad_(True)
        s_ref, st_ref, _ = neuron_multistep(xs, params, sg)
        (g_ref,) = torch.autograd.grad(s_ref, xs, up[:, cols])
        assert torch.equal(spikes[:, cols], s_ref)
        assert torch.equal(state.v[cols], st_ref.v)
        torch.testing.assert_close(grad[:, cols], g_ref, rtol=0, atol=1e-6 * float(g_ref.abs().max()))
    del x, spikes, state, up, grad
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("learnable", [False, True])
def test_fused_neuron_never_waits_for_the_gpu(learnable, dtype):
    """Forward and backward enqueue work only: a synchronising call would stall the stream twice per
    layer and step (``set_sync_debug_mode('error')`` raises on any), in float32 and in float16."""
    neuron = neurons.create("plif" if learnable else "lif", leak=0.6, surrogate=surrogates.Dspike(2.0),
                            backend="triton").to(CUDA)
    x = currents((4, 32, 600), dtype)
    for watch in (False, True):  # the first call compiles and caches the constants; the second reuses
        torch.cuda.set_sync_debug_mode("error" if watch else "default")
        try:
            spikes = neuron(x)
            grads = torch.autograd.grad(spikes, [x, *neuron.parameters()], torch.ones_like(spikes))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    reference = neurons.create("plif" if learnable else "lif", leak=0.6, surrogate=surrogates.Dspike(2.0),
                               backend="reference").to(CUDA)
    reference.load_state_dict(neuron.state_dict())
    x32 = x.detach().float().requires_grad_(True)  # the yardstick: float32 on the same values
    s_ref = reference(x32)
    g_ref = torch.autograd.grad(s_ref, [x32, *reference.parameters()], torch.ones_like(s_ref))
    assert spikes.dtype == dtype and torch.equal(spikes.float(), s_ref)
    rtol = 1e-5 if dtype == torch.float32 else 2.0**-11
    for a, b in zip(grads, g_ref, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=rtol, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_neuron_under_autocast(dtype):
    """Half-precision currents (a convolution under autocast) run the fused kernel: spikes and state
    in that dtype, equal to the float32 reference loop on the same values; gradients through the
    scaler equal to that reference's within one rounding. float32 currents inside autocast run the
    kernel in float32. A state of another dtype than the input falls back to the reference."""
    conv = layers.TimeDistributed(nn.Conv2d(3, 8, 3, padding=1)).to(CUDA)
    neuron = neurons.LIF(leak=0.5, surrogate=surrogates.Dspike(3.0)).to(CUDA)
    images = torch.rand(4, 2, 3, 16, 16, device=CUDA, requires_grad=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    with torch.autocast("cuda", dtype=dtype):
        current = conv(images)
        assert current.dtype == dtype
        assert fused.resolve_backend("auto", current, neuron.params) == "triton"
        spikes = neuron(current)
        yard = current.detach().float().requires_grad_(True)
        s_ref, _, _ = neuron_multistep(yard, neuron.params, neuron.surrogate)
        assert spikes.dtype == dtype and torch.equal(spikes.float(), s_ref)
        # weights exact in dtype and 2^14 spikes: the spikes' gradient (weights × scale / 2^14) reaches
        # the kernel unrounded
        assert spikes.numel() == 2**14
        weights = torch.linspace(-1, 1, spikes[0].numel(), device=CUDA).to(dtype).float()
        weights = weights.view(spikes[0].shape)
        loss = (spikes.float() * weights).mean()
    (grad,) = torch.autograd.grad(scaler.scale(loss), current, retain_graph=True)
    (g_ref,) = torch.autograd.grad((s_ref * weights).mean() * scaler.get_scale(), yard)
    assert grad.dtype == dtype and torch.isfinite(grad).all() and g_ref.abs().max() > 0
    u = check.UNIT_ROUNDOFF[dtype]
    assert ((grad.float() - g_ref).abs() <= u * g_ref.abs() + 1e-6 * g_ref.abs().max()).all()
    scaler.scale(loss).backward()
    scaler.unscale_(torch.optim.SGD(conv.parameters(), lr=0.1))
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    assert conv.module.weight.grad.abs().sum() > 0
    with torch.autocast("cuda", dtype=dtype):
        x = currents((4, 2, 300))
        assert fused.resolve_backend("auto", x, neuron.params) == "triton"
        spikes = neuron(x)
        assert spikes.dtype == torch.float32
        assert torch.equal(spikes, neuron_multistep(x, neuron.params, neuron.surrogate)[0])
    fused._warned.clear()
    with pytest.warns(RuntimeWarning, match="cannot run a state whose dtype"):
        state = NeuronState(torch.zeros(current.shape[1:], device=CUDA))
        assert fused.resolve_backend("triton", current, neuron.params, state) == "reference"


def test_amp_training_step_runs_the_fused_kernel(tmp_path, monkeypatch):
    """``train.amp: true``: every spiking neuron gets float16 currents and runs the Triton kernel, forward
    and backward, in the trainer's own steps."""
    from spikegrad.fused import triton_lif

    calls = {"forward": 0, "backward": 0}
    for name in calls:
        original = getattr(triton_lif.TritonOps, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(triton_lif.TritonOps, name, counted)
    trainer = amp_trainer(tmp_path, 3)
    seen = []
    for module in trainer.model.modules():
        if isinstance(module, neurons.SpikingNeuron):
            module.register_forward_pre_hook(lambda m, inp: seen.append(
                (fused.resolve_backend(m.backend, inp[0], m.params), inp[0].dtype)))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert seen and set(seen) == {("triton", torch.float16)}, set(seen)
    assert calls["forward"] >= 3 and calls["backward"] >= 3, calls
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# ----------------------------------------------------------------------------- training on CUDA


class StopAt(Component):
    """Stops training by an exception after a given iteration (None: never)."""

    name = "stop_at"

    def __init__(self, iteration: int | None) -> None:
        self.iteration = iteration

    def on_step_end(self, trainer) -> None:
        if trainer.iteration == self.iteration:
            raise KeyboardInterrupt


def digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(layers.DirectEncoder(2), layers.TimeDistributed(nn.Flatten()),
                         layers.TimeDistributed(nn.Linear(64, 128)), neurons.LIF(leak=0.5, threshold=0.5),
                         layers.TimeDistributed(nn.Linear(128, 10)))


def amp_trainer(out_dir: Path, stop: int | None) -> Trainer:
    config = Config().with_overrides({
        "train.epochs": 2, "train.device": "cuda", "train.amp": True, "train.progress": False,
        "train.checkpoint_every": 5, "data.batch_size": 32, "optim.lr": 0.05,
        "analysis.monitors": False,
    })
    train_set, test_set, info = build_datasets("digits")
    trainer = Trainer(digits_mlp(), train_set, test_set, config, components=[StopAt(stop)], out_dir=out_dir,
                      augment=build_augmentation(["crop:1"], info), verbose=False)
    # a scale that moves within a few steps (growth every 7 steps, halving on overflow)
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**20, growth_interval=7)
    return trainer


def test_amp_training_checkpoints_the_scaler_and_resumes_exactly(tmp_path):
    straight = amp_trainer(tmp_path / "straight", None)
    assert straight.amp_dtype == torch.float16 and straight.scaler.is_enabled()
    straight.fit()
    stopped = amp_trainer(tmp_path / "stopped", 52)  # last.pt at iteration 50: epoch 2, batch 5
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    payload = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert payload["iteration"] == 50 and payload["progress"] is not None
    assert "cuda" in payload["rng"][0]  # the augmentation draws on the GPU
    saved = payload["scaler"]
    assert saved["scale"] != 2.0**20 or saved["_growth_tracker"] != 0, saved  # the state moved
    resumed = amp_trainer(tmp_path / "stopped", None)
    resumed.resume(tmp_path / "stopped" / "last.pt")
    assert resumed.scaler.state_dict() == saved
    resumed.fit()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), key
    assert [r["test_acc"] for r in straight.history] == [r["test_acc"] for r in resumed.history]
    assert straight.history[-1]["test_acc"] > 0.5


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_pinned_and_arrive_intact(tmp_path, workers):
    config = Config().with_overrides({"train.device": "cuda", "data.num_workers": workers,
                                      "data.batch_size": 64, "train.progress": False})
    train_set, test_set, _ = build_datasets("digits")
    trainer = Trainer(digits_mlp(), train_set, test_set, config, verbose=False)
    assert trainer.train_loader.pin_memory and trainer.test_loader.pin_memory
    inputs, targets = next(iter(trainer.train_loader))
    assert inputs.is_pinned() and targets.is_pinned()
    on_gpu, labels = trainer.to_device(inputs, targets)
    assert on_gpu.is_cuda and labels.is_cuda
    assert torch.equal(on_gpu.cpu(), inputs) and torch.equal(labels.cpu(), targets)


def test_command_line_trains_on_cuda_and_the_checkpoint_evaluates_on_the_cpu(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "spikegrad", "train", str(recipe_path("digits")), "--out", str(out),
         "--set", "train.device=cuda", "--set", "train.epochs=1", "--set", "train.progress=false"],
        capture_output=True, text=True, timeout=100, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["test_acc"] > 0.5, row
    model, payload = load_model(out / "last.pt")
    assert payload["config"]["train"]["device"] == "cuda"
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    _, test_set, _ = build_datasets("digits")
    loader = torch.utils.data.DataLoader(test_set, batch_size=256)
    neurons.set_backend(model, "reference")  # no C++ build for the CPU kernel in this test
    on_cpu = evaluate_model(model, loader, torch.device("cpu"))
    # GPU convolutions use TF32 by default and round apart from the CPU's: a spike may flip
    assert abs(on_cpu["test_acc"] - row["test_acc"]) <= 0.03


def test_torchrun_one_process_through_nccl_matches_no_process_group(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
         str(ROOT / "tests" / "cuda_ddp_worker.py"), str(tmp_path / "nccl")],
        capture_output=True, text=True, timeout=100, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    cuda_ddp_worker.main(str(tmp_path / "plain"))
    for run in cuda_ddp_worker.RUNS:
        a = load_checkpoint(tmp_path / "plain" / run / "last.pt")
        b = load_checkpoint(tmp_path / "nccl" / run / "last.pt")
        assert a["iteration"] == b["iteration"] == 12
        for key, value in a["model"].items():
            torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6)
        rows = [(tmp_path / f / run / "metrics.jsonl").read_text().splitlines() for f in ("plain", "nccl")]
        for ra, rb in zip(*rows, strict=True):
            ra, rb = json.loads(ra), json.loads(rb)
            assert ra["train_acc"] == rb["train_acc"] and ra["test_acc"] == rb["test_acc"]


# ----------------------------------------------------------------------------- no synchronisation per step


@pytest.mark.parametrize("shortcut", [False, True])
def test_training_steps_do_not_wait_for_the_gpu(shortcut):
    """After the first step (whose labels are checked on the device), a training batch on CUDA
    with ``train.nonfinite: stop`` (labels checked on the host before the transfer, the step,
    the running sums and the non-finite flag kept on the device) never synchronises with the
    host; reading the flag and the sums afterwards does, once."""
    from spikegrad.config import load_config
    from spikegrad.run import build_parts

    config = load_config(recipe_path("digits")).with_overrides({
        "model.width": 0.25, "model.T": 2, "train.device": "cuda", "train.progress": False,
        "train.epochs": 1, "shortcut.enabled": shortcut})
    parts = build_parts(config)
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, verbose=False)
    assert trainer._guard is not None
    trainer.progress = trainer._start_epoch(0)
    trainer.model.train()
    batches = iter(trainer.train_loader)
    first, later = next(batches), [next(batches) for _ in range(3)]  # pinned by the loader
    trainer._in_epoch = True
    trainer._train_batch(*first)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for inputs, targets in later:
            trainer._train_batch(inputs, targets)
            trainer._after_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        trainer._in_epoch = False
    trainer._check_guard()  # no non-finite step
    progress = trainer.progress.flush()
    assert progress.seen == 4 * config.data.batch_size and 0 <= progress.correct <= progress.seen
    assert progress.loss_sum > 0 and trainer.iteration == 4


def test_running_sums_on_the_device_equal_those_on_the_host():
    from spikegrad.component import StepOutput
    from spikegrad.resume import EpochProgress

    gen = torch.Generator().manual_seed(0)
    device, host = EpochProgress(row={}, loss_sum=0.25, correct=3), EpochProgress(row={}, loss_sum=0.25,
                                                                                  correct=3)
    for _ in range(7):
        loss, logits = torch.rand((), generator=gen) * 3, torch.randn(16, 5, generator=gen)
        targets = torch.randint(0, 5, (16,), generator=gen)
        host.record(StepOutput(loss, logits), targets)
        device.record(StepOutput(loss.to(CUDA), logits.to(CUDA)), targets.to(CUDA))
    assert device.to_dict() == host.to_dict()  # bit for bit: the same float64 sums in order
