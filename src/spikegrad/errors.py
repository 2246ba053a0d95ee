"""User-facing errors: a sentence that names the problem and the fix.

:class:`UserError` marks a mistake in what the user gave (a config key, a tensor layout, a
dataset path). The CLI prints its message and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class UserError(ValueError):
    """A problem with the user's input; the message says what is wrong and how to fix it."""

    def __init__(self, *args: object) -> None:
        # raised in a DataLoader worker, torch re-raises it in the main process with the
        # worker's traceback as the message: keep the message alone (its last line)
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "DataLoader worker" in args[0].split("\n", 1)[0]:
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class TrainingDiverged(UserError):
    """A non-finite loss or gradient stopped training (``train.nonfinite=stop``)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(value: Any) -> str:
    """A value as a ``--set`` override writes it (YAML: null, true, false)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def changed_fields(section: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """``name -> default`` of every field of the config section (a dataclass) ``section`` among
    ``names`` (None: all) that is set to other than its default."""
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                for f in dataclasses.fields(section)}
    return {name: defaults[name] for name in (defaults if names is None else names)
            if getattr(section, name) != defaults[name]}


def refuse_unread(section: Any, prefix: str, names: Iterable[str], why: str) -> None:
    """Raise a :class:`UserError` if any of ``names`` (fields of the config section ``section``,
    keys ``<prefix>.<name>``) is set to other than its default: ``why`` says which setting
    leaves it unread (a setting that cannot apply is an error, never ignored)."""
    changed = changed_fields(section, names)
    if not changed:
        return
    given = ", ".join(f"{prefix}.{n}={_shown(getattr(section, n))}" for n in changed)
    reset = ", ".join(f"{prefix}.{n}={_shown(default)}" for n, default in changed.items())
    raise UserError(f"{given} {'does' if len(changed) == 1 else 'do'} not apply {why}; remove "
                    f"{'it' if len(changed) == 1 else 'them'} or reset to the default ({reset})")


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The error for a name missing from a registry: lists valid names, suggests the nearest."""
    choices = sorted(choices)
    return UserError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; available: {', '.join(choices)}"
    )


def check_time_major(x, name: str = "input", min_dims: int = 2, T: int | None = None) -> None:
    """Raise a :class:`UserError` unless ``x`` looks like a time-major ``[T, B, ...]`` tensor."""
    if x.dim() < min_dims:
        raise UserError(
            f"{name} must be time-major [T, B, ...] with at least {min_dims} dimensions, "
            f"got shape {tuple(x.shape)}; add the time axis first, e.g. x.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise UserError(f"{name} has no time steps (shape {tuple(x.shape)}, T = 0); time-major "
                        "tensors are [T, B, ...] with T >= 1")
    if x.is_complex():
        raise UserError(f"{name} is complex ({str(x.dtype).replace('torch.', '')}); spiking layers "
                        "take real tensors, e.g. x.real or x.abs()")
    if T is not None and x.shape[0] != T:
        raise UserError(
            f"{name} has T={x.shape[0]} time steps (shape {tuple(x.shape)}) but {T} were expected; "
            "time-major tensors are [T, B, ...]"
        )


def check_labels(labels, num_classes: int, name: str = "labels") -> None:
    """Raise a :class:`UserError` unless ``labels`` are ``[B]`` integer classes in ``[0, num_classes)``."""
    if labels.is_floating_point() or labels.is_complex() or str(labels.dtype) == "torch.bool":
        raise UserError(
            f"{name} must be integer class indices, got dtype {str(labels.dtype).replace('torch.', '')}"
            " (one-hot or soft labels?); give class indices, e.g. labels.argmax(1).long()"
        )
    if labels.dim() != 1:
        raise UserError(f"{name} must be one class index per sample, shape [B], got shape "
                        f"{tuple(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(
            f"{name} must lie in [0, {num_classes}) for a model with {num_classes} classes, found "
            f"{low if low < 0 else high}; check the dataset's labels and its num_classes"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextmanager
def explain_model_input(inputs, where: str = "the first training batch") -> Iterator[None]:
    """Turn torch's shape errors on a batch the model cannot take into a :class:`UserError`.

    Used around the first forward pass only, where such an error means the data and the
    model do not fit (channels, image size, a missing or misplaced time axis).
    """
    try:
        yield
    except RuntimeError as exc:
        message = first_line(exc)
        if "out of memory" in message:
            raise
        raise UserError(
            f"the model cannot take {where} (inputs of shape {tuple(inputs.shape)}): {message}. "
            "Check that the dataset's samples fit the model: channels (model in_channels), "
            "image size (model input_size) and, for event data, the time-major [T, B, ...] layout"
        ) from exc
