"""Multi-process data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m spikegrad train recipe.yaml`` starts ``N`` processes; each
finds its rank in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
:func:`setup` joins the process group: NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``), gloo on the CPU. With one process nothing here does anything.

What each process does:

- trains on its slice of every global batch (:class:`spikegrad.data.sampler.GlobalBatchSampler`;
  ``data.batch_size`` is the global batch), with gradients averaged over processes
  (:class:`ParallelStep`: ``DistributedDataParallel``, or an explicit all-reduce when a
  component owns the loss);
- weights its contribution by ``n_r·W / n`` (its ``n_r`` of the step's ``n`` samples, ``W``
  processes) so the averaged gradient is that of the mean loss over the whole global batch,
  even when the last batch splits unevenly;
- evaluates a disjoint shard of the test set; sums of losses, hits and spikes are added over
  processes, so the metrics are those of the whole set;
- draws augmentation noise from its own seed (``train.seed + rank``).

Only rank 0 prints, writes ``metrics.jsonl`` and checkpoints. Batch norm normalises over each
process's ``T·B/W`` samples unless ``distributed.sync_bn`` (CUDA only) converts it to
``SyncBatchNorm``; its running statistics are rank 0's (copied to every process before each
evaluation; DDP also broadcasts them every step).
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spikegrad.config import DistributedConfig
from spikegrad.errors import UserError


@dataclass
class DistributedContext:
    """This process's place in the group; with ``world_size == 1`` every method is local."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on any process? (one collective for all of them)"""
        return [v > 0 for v in self.sum([float(bool(f)) for f in flags])]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order (our own data, pickled between ranks)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def agree(self, error: Exception | None) -> None:
        """Raise on every process if any process failed a check (e.g. rank 0's folder test)."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        errors = self.gather(None if error is None else str(error))
        if error is not None:
            raise error
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise UserError(failed)


def setup(device: torch.device, config: DistributedConfig) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    ``device`` is the resolved ``train.device``; on CUDA each process takes
    ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=device)
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                            "devices: start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = config.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError("distributed.backend nccl needs train.device cuda; use gloo on the CPU")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=datetime.timedelta(minutes=config.timeout_minutes)
        )
        _joined_here.append(True)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


_joined_here: list[bool] = []  # non-empty while a process group made by setup() exists


def joined() -> bool:
    """Whether this process is in a process group (one :func:`setup` joined or the caller's)."""
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Leave the process group :func:`setup` joined (one the caller made is left alone).

    Every process first waits for the others, and the DDP objects of finished trainers are
    collected before the group goes: gloo aborted a process now and then at exit otherwise.
    """
    if _joined_here and dist.is_initialized():
        gc.collect()  # a trainer and its DDP wrapper form a reference cycle
        dist.barrier()
        dist.destroy_process_group()
    _joined_here.clear()


def prepare_model(model: nn.Module, ctx: DistributedContext, config: DistributedConfig) -> nn.Module:
    """Convert batch norm to ``SyncBatchNorm`` when asked (parameters are kept, not copied)."""
    if not config.sync_bn or not ctx.enabled:
        return model
    if ctx.device.type != "cuda":
        raise UserError("distributed.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                        "on the CPU each process normalises over its own T·B/world samples")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class _TrainingForward(nn.Module):
    """The training forward (model plus any component's parameters) as one module for DDP."""

    def __init__(self, model: nn.Module, extra: Iterable[nn.Parameter],
                 forward: Callable[[Tensor, Tensor], Any]) -> None:
        super().__init__()
        self.model = model
        self.extra = nn.ParameterList(extra)
        self._forward = forward

    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        out = self._forward(inputs, targets)
        return out.loss, out.logits


class ParallelStep:
    """How a training step is shared between processes; with one process, it does nothing.

    When the trainer computes the loss, ``DistributedDataParallel`` wraps the training forward
    (gradients averaged while the backward pass runs). When a component owns the loss, it may
    run several forward and backward passes of its own (local tandem learning back-propagates
    each unit at once), which DDP cannot follow: the gradients are then averaged explicitly
    after the step's backward passes. Either way every parameter the optimizer trains takes
    part, the model's and those a component added.

    Per step: ``forward(inputs, targets)``, then backward of ``scale_loss(loss, weight)``,
    then ``sync_gradients(weight)``; ``weight`` is this process's ``n_r·W / n``.
    ``make_output(loss, logits)`` rebuilds the forward's output from what DDP passes on.
    """

    def __init__(self, forward: Callable[[Tensor, Tensor], Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer, ctx: DistributedContext,
                 config: DistributedConfig, component_owns_loss: bool,
                 make_output: Callable[[Tensor, Tensor], Any]) -> None:
        self._forward, self.ctx, self._make_output = forward, ctx, make_output
        own = {id(p) for p in model.parameters()}
        self.params = [*model.parameters(), *(p for group in optimizer.param_groups
                                              for p in group["params"] if id(p) not in own)]
        self.ddp: nn.Module | None = None
        self.explicit = ctx.enabled and component_owns_loss
        if ctx.enabled and not component_owns_loss:
            self.ddp = nn.parallel.DistributedDataParallel(
                _TrainingForward(model, self.params[len(own):], forward),
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
            )  # also copies rank 0's parameters and buffers to every process
        elif self.explicit:
            for tensor in [*self.params, *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def forward(self, inputs: Tensor, targets: Tensor) -> Any:
        """``forward(inputs, targets)`` (the trainer's ``compute_loss``), under DDP if it wraps it."""
        if self.ddp is None:
            return self._forward(inputs, targets)
        return self._make_output(*self.ddp(inputs, targets))  # DDP passes (loss, logits) on

    def scale_loss(self, loss: Tensor, weight: float) -> Tensor:
        """The loss to back-propagate: weighted under DDP (which averages the gradients)."""
        return loss * weight if self.ddp is not None and weight != 1.0 else loss

    def sync_gradients(self, weight: float) -> None:
        """Explicit mode: ``g ← (1/W)·Σ_r weight_r·g_r`` over processes, in one all-reduce per
        dtype. Every process must have gradients for the same parameters."""
        if not self.explicit:
            return
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for p in self.params:
            if p.grad is not None:
                groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])  # (Σ numel,)
            flat.mul_(weight / self.ctx.world_size)
            dist.all_reduce(flat)
            for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(chunk.view_as(g))


def sync_buffers(model: nn.Module, ctx: DistributedContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process."""
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
