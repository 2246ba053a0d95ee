"""Temporarily switching modules to evaluation mode, restoring each module's own flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[nn.Module | tuple[nn.Module, ...]]:
    """Every submodule of ``models`` in eval mode for the block; afterwards each one gets its
    own flag back (not ``model.train(was_training)``, which would switch a batch norm that was
    frozen on purpose back to training). Yields the model (or the tuple of them)."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for module, _ in flags:
        module.training = False
    try:
        yield models[0] if len(models) == 1 else models
    finally:
        for module, flag in flags:
            module.training = flag
