"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` file of plain data and tensors, read back with
``torch.load(weights_only=True)`` so a malicious file cannot run code (such a file is
refused as unsafe). It holds the format tag and version, the model's state dict, the
arguments that rebuild the model (``model_args``), the resolved config and whatever
training state the trainer adds.

Reading is bounded and checked before anything uses the payload (:func:`check_payload`):
the zip may not inflate beyond its size, the unpickled data, shared references expanded, may
hold at most about twice as many values as its pickle has bytes (``weights_only`` keeps
shared references, so a 100 KB file can hold a history of 2^30 rows), and every key has
the type and range the trainer writes (``epoch`` within the stored ``train.epochs``, one
history row per finished epoch, ...).
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikegrad.durable import fsync_dir, temporary_beside
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
    fd, tmp = temporary_beside(path)
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
    fsync_dir(path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link where the file system allows)."""
    fd, tmp = temporary_beside(dst)
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


MAX_DEPTH = 64
_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+)|Unsupported operand (\S+)"
                     r"|Unsupported class (\S+)")
_REASON = re.compile(r"WeightsUnpickler error: *(.*\S)")


def _refusal(path: Path, exc: BaseException) -> UserError:
    """The error for a file torch's safe unpickler refused: unsafe, or damaged; never torch's
    advice to load it with ``weights_only=False``."""
    text = str(exc)
    unsafe = _UNSAFE.search(text)
    if unsafe is not None:
        what = next(g for g in unsafe.groups() if g).rstrip(".,")
        kind = "a pickle operation" if unsafe.group(3) else "a Python object"
        return UserError(
            f"checkpoint {str(path)!r} is refused as unsafe: it holds {kind} ({what}) besides "
            "tensors and plain data, and unpickling it could run code. Use only checkpoints "
            "spikegrad wrote")
    reason = next((m.group(1) for m in _REASON.finditer(text) if m.group(1)), None)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = reason or next((line for line in reversed(lines) if "weights_only" not in line
                             and "torch.load" not in line), type(exc).__name__)
    return UserError(f"checkpoint {str(path)!r} cannot be read (corrupt, or not a spikegrad "
                     f"checkpoint): {reason}")


def _pickle_size(path: Path) -> int:
    """Bytes of the pickled structure (``data.pkl`` in torch's zip); a zip bomb is refused."""
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        return size
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
    inflated = sum(e.file_size for e in entries)
    if inflated > 2 * size + (1 << 20):
        raise UserError(f"checkpoint {str(path)!r} claims {inflated} bytes uncompressed in a file of "
                        f"{size} bytes (torch writes checkpoints uncompressed); refusing it as a zip "
                        "bomb")
    return next((e.file_size for e in entries if e.filename.endswith("data.pkl")), size)


def _check_expansion(payload: Any, budget: int, path: Path) -> None:
    """Walk the payload as a tree (shared references counted each time) within ``budget``."""
    todo, seen = [(payload, 0)], 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > budget or depth > MAX_DEPTH:
            raise UserError(
                f"checkpoint {str(path)!r} expands to more than {budget} values or nests deeper than "
                f"{MAX_DEPTH} levels through shared references (or a cycle); spikegrad never writes "
                "that, refusing it")
        if isinstance(node, Mapping):
            todo.extend((item, depth + 1) for pair in node.items() for item in pair)
        elif isinstance(node, (list, tuple)):
            todo.extend((item, depth + 1) for item in node)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; a missing, truncated, foreign, unsafe or inconsistent file gives
    one clear error (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        pickled = _pickle_size(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, TypeError, ValueError, KeyError,
            IndexError, AttributeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, UserError):
            raise
        previous = previous_path(path)
        hint = (f"; the previous checkpoint {str(previous)!r} is kept beside it: use that one "
                f"(e.g. --resume-from {previous})") if previous.is_file() else ""
        raise UserError(
            f"checkpoint {str(path)!r} cannot be read (truncated, corrupt, or not a spikegrad "
            f"checkpoint): {first_line(exc)}{hint}"
        ) from exc
    _check_expansion(payload, 2 * pickled + 10_000, path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a spikegrad checkpoint (no {FORMAT!r} tag)")
    if payload.get("version") != VERSION:
        raise UserError(
            f"checkpoint {str(path)!r} has format version {payload.get('version')!r}; this "
            f"spikegrad reads version {VERSION}"
        )
    check_payload(payload, str(path))
    return payload


# --------------------------------------------------------------------------- the payload's schema


def _int(low: int = 0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _tensor(dtype: torch.dtype | None = None, numel: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, torch.Tensor) and (dtype is None or v.dtype == dtype) and (
        numel is None or v.numel() == numel)


def _mapping(keys: Callable[[Any], bool] = lambda k: isinstance(k, str),
             values: Callable[[Any], bool] = lambda v: True) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Mapping) and all(keys(k) and values(x) for k, x in v.items())


def _fields(required: Mapping[str, Callable[[Any], bool]],
            optional: Mapping[str, Callable[[Any], bool]] | None = None) -> Callable[[Any], bool]:
    optional = optional or {}
    return lambda v: isinstance(v, Mapping) and all(k in v and ok(v[k]) for k, ok in required.items()) \
        and all(k in required or (k in optional and optional[k](x)) for k, x in v.items())


def _either(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: any(check(v) for check in checks)


def _none(v: Any) -> bool:
    return v is None


_GENERATOR = _tensor(torch.uint8, torch.Generator().get_state().numel())  # a CPU generator's state


def _mersenne(state: Any) -> bool:
    """Python's ``random`` state: 624 words below 2^32, then the position (at most 624)."""
    return _tensor(torch.int64, 625)(state) and bool(
        ((state[:624] >= 0) & (state[:624] < 2**32)).all()) and 0 <= int(state[624]) <= 624


_RNG = _fields(
    {"python": _fields({"version": lambda v: v == 3, "state": _mersenne,
                        "gauss": _either(_none, _real)}),
     "numpy": _fields({"name": lambda v: v == "MT19937", "keys": _tensor(torch.int64, 624),
                       "pos": lambda v: _int()(v) and v <= 624, "has_gauss": _int(), "cached": _real}),
     "torch": _GENERATOR},
    {"cuda": lambda v: isinstance(v, (list, tuple)) and all(_tensor(torch.uint8)(t) for t in v)})
_PROGRESS = _fields({"row": _mapping(), "batches": _int(), "loss_sum": _real, "correct": _int(),
                     "seen": _int(), "nonfinite": _int(), "seconds": _real})

#: key -> (check, what it must be); the first four are in every checkpoint, the others in
#: those the trainer writes (each checked when present)
PAYLOAD_SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_mapping(values=_tensor()), "a mapping of parameter names to tensors"),
    "model_args": (_either(_none, _fields({"name": lambda v: isinstance(v, str), "kwargs": _mapping()})),
                   "null or {name: <model>, kwargs: {...}}"),
    "config": (_mapping(), "a mapping (the resolved config)"),
    "epoch": (_int(), "a whole number of finished epochs, >= 0"),
    "iteration": (_int(), "a whole number of optimizer steps, >= 0"),
    "best_test_acc": (lambda v: _real(v) and -1 <= v <= 1, "an accuracy in [0, 1] (or -1: none yet)"),
    "optimizer": (_fields({"state": _mapping(lambda k: True), "param_groups": lambda v: isinstance(
        v, list) and all(isinstance(g, Mapping) for g in v)}), "an optimizer state dict"),
    "scheduler": (_mapping(), "a scheduler state dict"),
    "scaler": (_mapping(), "a grad scaler state dict"),
    "components": (_mapping(values=lambda v: isinstance(v, Mapping)),
                   "a mapping of component names to their state dicts"),
    "method": (lambda v: isinstance(v, str), "a method name"),
    "history": (lambda v: isinstance(v, list) and all(_mapping()(row) for row in v),
                "a list of metrics rows (mappings)"),
    "progress": (_either(_none, _PROGRESS), "null or the epoch in progress"),
    "order": (_fields({"generator": _GENERATOR, "epoch_start": _either(_none, _GENERATOR)}),
              "{generator, epoch_start} random generator states"),
    "rng": (lambda v: isinstance(v, list) and len(v) >= 1 and all(_RNG(s) for s in v),
            "a list of random generator states, one per process"),
    "world_size": (_int(1), "a number of processes, >= 1"),
    "wall_seconds": (lambda v: _real(v) and v >= 0, "seconds, >= 0"),
}


def check_payload(payload: Mapping[str, Any], source: str) -> None:
    """Refuse a payload whose keys lack, or do not have, the types and ranges spikegrad writes."""
    def bad(key: str, what: str) -> UserError:
        value = repr(payload.get(key))
        shown = value if len(value) <= 60 else value[:57] + "..."
        return UserError(f"checkpoint {source!r} is damaged or was not written by spikegrad: "
                         f"{key!r} must be {what}, got {shown}; use a checkpoint spikegrad wrote")

    for key in ("model", "model_args"):
        if key not in payload:
            raise UserError(f"checkpoint {source!r} is damaged or was not written by spikegrad: it "
                            f"has no {key!r}; use a checkpoint spikegrad wrote")
    for key, (check, what) in PAYLOAD_SCHEMA.items():
        if key in payload and not check(payload[key]):
            raise bad(key, what)
    if "epoch" in payload and "config" in payload:
        epochs = (payload["config"].get("train") or {}).get("epochs")
        if isinstance(epochs, int) and payload["epoch"] > epochs:
            raise bad("epoch", f"at most the stored train.epochs ({epochs})")
    if "history" in payload and "epoch" in payload and len(payload["history"]) != payload["epoch"]:
        raise bad("epoch", f"the number of rows in its history ({len(payload['history'])})")
    if "rng" in payload and "world_size" in payload and len(payload["rng"]) != payload["world_size"]:
        raise bad("rng", f"one state per process ({payload['world_size']})")


def build_model(model_args: dict[str, Any] | None, source: str = "checkpoint") -> nn.Module:
    """Rebuild a registered model from ``{"name": ..., "kwargs": {...}}``."""
    from spikegrad import models

    if model_args is None:
        raise UserError(f"{source!r} holds weights but not the arguments that rebuild its model "
                        "(written without model_args); build the model yourself and load them "
                        "with spikegrad.checkpoint.load_weights")
    return models.create(model_args["name"], **model_args["kwargs"])


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint and load its weights; returns ``(model, payload)``."""
    payload = load_checkpoint(path)
    model = build_model(payload["model_args"], str(path))
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
