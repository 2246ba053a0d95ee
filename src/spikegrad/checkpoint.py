"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` file of plain data and tensors, read back with
``torch.load(weights_only=True)`` so a malicious file cannot run code. It holds the format
tag and version, the model's state dict, the arguments that rebuild the model
(``model_args``), the resolved config and whatever training state the trainer adds.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikegrad.errors import UserError, first_line

FORMAT = "spikegrad-checkpoint"
VERSION = 1


def previous_path(path: str | Path) -> Path:
    """Where :func:`atomic_torch_save` keeps the file it replaced: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def atomic_torch_save(obj: Any, path: str | Path, keep_previous: bool = False) -> None:
    """Write ``obj`` to a temporary file beside ``path``, flush, fsync, then rename over it.

    A crash at any moment leaves either the old file or the new one, never a torn one; a
    failed write (disk full) leaves the old one in place. With ``keep_previous`` the replaced
    file stays as :func:`previous_path` (hard-linked before the rename, so ``path`` exists
    at every instant), a fallback should the newest file be damaged later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            _link_or_copy(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link where the file system allows)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_checkpoint(path: str | Path, model: nn.Module, model_args: dict[str, Any] | None,
                    keep_previous: bool = False, **extra: Any) -> None:
    """Save ``model`` with the arguments that rebuild it, plus any training state."""
    payload = {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
               "model_args": model_args, **extra}
    atomic_torch_save(payload, path, keep_previous)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; a missing, truncated or foreign file gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:
            raise UserError(f"checkpoint {str(path)!r} cannot be read (corrupt, or not a spikegrad "
                            f"checkpoint): {first_line(exc)}") from exc
        raise UserError(
            f"checkpoint {str(path)!r} holds a Python object ({refused.group(1)}) besides tensors "
            "and plain data; spikegrad refuses it, since unpickling it could run code. Use only "
            "checkpoints spikegrad wrote"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        previous = previous_path(path)
        hint = (f"; the previous checkpoint {str(previous)!r} is kept beside it: use that one "
                f"(e.g. --resume-from {previous})") if previous.is_file() else ""
        raise UserError(
            f"checkpoint {str(path)!r} cannot be read (truncated, corrupt, or not a spikegrad "
            f"checkpoint): {first_line(exc)}{hint}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a spikegrad checkpoint (no {FORMAT!r} tag)")
    if payload.get("version") != VERSION:
        raise UserError(
            f"checkpoint {str(path)!r} has format version {payload.get('version')!r}; this "
            f"spikegrad reads version {VERSION}"
        )
    return payload


def build_model(model_args: dict[str, Any]) -> nn.Module:
    """Rebuild a registered model from ``{"name": ..., "kwargs": {...}}``."""
    from spikegrad import models

    return models.create(model_args["name"], **model_args["kwargs"])


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint and load its weights; returns ``(model, payload)``."""
    payload = load_checkpoint(path)
    model = build_model(payload["model_args"])
    load_weights(model, payload["model"], str(path))
    return model, payload


def load_weights(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """``load_state_dict`` with an error that names missing and unexpected keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if mismatched:
            parts.append(f"shape mismatch (file vs model) {mismatched[:5]}")
        raise UserError(f"weights in {source!r} do not fit this model (another architecture?): "
                        + "; ".join(parts))
    model.load_state_dict(state)
