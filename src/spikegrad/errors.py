"""User-facing errors: a sentence that names the problem and the fix.

:class:`UserError` marks a mistake in what the user gave (a config key, a tensor layout, a
dataset path). The CLI prints its message and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    if T is not None and x.shape[0] != T:
        raise UserError(
            f"{name} has T={x.shape[0]} time steps (shape {tuple(x.shape)}) but {T} were expected; "
            "time-major tensors are [T, B, ...]"
        )
