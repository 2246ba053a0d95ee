"""Checking a value against a type annotation, for the registries that build from names.

A model's or a dataset's keyword arguments come from YAML, where ``6.0`` and ``"6"`` are as
easy to write as ``6``; the registries compare each value with the builder's annotation before
building, so that a wrong type is named in the error instead of failing deep inside.
"""

from __future__ import annotations

import collections.abc
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["conforms", "type_hints", "type_text"]


def type_text(tp: Any) -> str:
    """An annotation in words: ``int or null``, ``a list of (int or str)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (collections.abc.Sequence, list, tuple):
        inner = type_text(args[0]) if args else "values"
        return f"a list of ({inner})" if " or " in inner else f"a list of {inner}"
    if origin in (collections.abc.Mapping, dict):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def conforms(value: Any, tp: Any, paths: bool = False) -> bool:
    """Whether ``value`` has the annotated type ``tp`` (unknown annotations pass); ``paths``:
    a ``str`` annotation also takes an ``os.PathLike`` (a folder given as a ``Path``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a, paths) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str) or (paths and isinstance(value, os.PathLike))
    if origin in (collections.abc.Sequence, list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is not tuple or args[-1] is Ellipsis) else Any
        return all(conforms(v, item, paths) for v in value)
    if origin in (collections.abc.Mapping, dict) or tp in (dict, Mapping):
        return isinstance(value, Mapping)
    return not isinstance(tp, type) or isinstance(value, tp)


def type_hints(target: Any) -> dict[str, Any]:
    """``typing.get_type_hints(target)``, or ``{}`` where an annotation cannot be resolved
    (then only the names are checked)."""
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}
