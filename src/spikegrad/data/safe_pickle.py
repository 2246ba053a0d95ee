"""Reading pickled datasets (CIFAR batches, the MNIST bundle) without letting a file run code.

The CIFAR "python version" files and the classic ``mnist.pkl.gz`` are pickles (written by
Python 2) of dicts, tuples, lists of ints and strings, and numpy arrays. A pickle is a
program: it may name any importable callable, build arrays of Python objects (whose raw
bytes numpy then reads as pointers), or reference one object 2^40 times from a few
kilobytes. So :func:`load_restricted` does not hand the file to :mod:`pickle`; it runs the
opcodes itself (a small interpreter over :func:`pickletools.genops`) and allows only:

- scalars (``None``, bools, ints, floats, strings, bytes) and the containers ``list``,
  ``tuple`` and ``dict`` (keys: scalars only), made by opcodes, never by name;
- numpy arrays of plain numeric dtypes (``bool``, signed and unsigned integers, floats):
  ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` followed
  by the array's state, ``numpy._core.numeric._frombuffer`` (protocol 5), and
  ``numpy.dtype`` with the state a plain numeric dtype has (byte order only). Object arrays,
  structured or subarray dtypes, and dtype flags are refused, however they are spelled;
- ``_codecs.encode(text, "latin1")`` (how Python 3 writes ``bytes`` into protocol 2).

Every other global, opcode or argument is refused with a :class:`UserError`. Sizes are
bounded: the decompressed file (``max_bytes``), the nesting depth (``MAX_DEPTH``), and the
size of the data once every shared reference is expanded, which may not exceed a small
multiple of the number of opcodes, so a reference bomb (a list that holds another list
twice, forty levels deep) is refused in time proportional to the file, not to 2^40. Python
2 strings are decoded as latin-1 (the raw bytes of numpy arrays survive that unchanged).
"""

from __future__ import annotations

import gzip
import io
import math
import pickletools
import re
import reprlib
from pathlib import Path
from typing import Any

import numpy as np

from spikegrad.errors import UserError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "RefusedContent", "load_restricted", "loads_restricted"]

MAX_BYTES = 1 << 30  # decompressed pickle size (the largest dataset pickle is ~220 MB)
MAX_DEPTH = 32  # nesting of containers (the datasets use 3)
EXPANSION = 2  # the data, shared references expanded, may hold EXPANSION·opcodes + SLACK objects
SLACK = 10_000


class RefusedContent(Exception):
    """The pickle holds or does something outside the allowed set."""


# plain numeric dtypes only: b1, i1..i8, u1..u8, f2..f8 (never objects, records or subarrays)
_NUMERIC_CODE = re.compile(r"^[<>|=]?(b1|\?|[iu][1248]|f[248]|[bBhHiIlLqQefdg])$")
_SAFE_KINDS = set("biuf")
_SCALARS = (type(None), bool, int, float, str, bytes)


def _numeric_dtype(code: Any, byteorder: str = "=") -> np.dtype:
    """A fresh (copied) plain numeric dtype from a type code such as ``'f4'`` or ``b'u1'``."""
    if isinstance(code, bytes):
        code = code.decode("latin1")
    if not isinstance(code, str) or not _NUMERIC_CODE.match(code):
        raise RefusedContent(f"numpy dtype {_show(code)} is not allowed (plain numeric dtypes only)")
    dtype = np.dtype(code, False, True)  # copy=True: never a shared built-in descriptor
    if dtype.kind not in _SAFE_KINDS or dtype.hasobject or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise RefusedContent(f"numpy dtype {dtype!r} is not allowed")
    if byteorder not in "<>|=":
        raise RefusedContent(f"numpy byte order {_show(byteorder)} is not allowed")
    return dtype.newbyteorder(byteorder) if byteorder in "<>" and dtype.itemsize > 1 else dtype


class _Dtype:
    """A dtype under construction: numpy pickles ``dtype(code, align, copy)``, then its state."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.built = False


def _dtype_call(*args: Any) -> _Dtype:
    """``numpy.dtype(code, align, copy)`` as numpy pickles it; only plain numeric codes."""
    if not 1 <= len(args) <= 3 or not all(type(a) in (bool, int) for a in args[1:]):
        raise RefusedContent(f"numpy.dtype{_show(args)} is not allowed")
    if len(args) > 1 and args[1]:
        raise RefusedContent("aligned (record) numpy dtypes are not allowed")
    return _Dtype(_numeric_dtype(args[0]))


def _dtype_state(target: _Dtype, state: Any) -> None:
    """BUILD of a dtype: only ``(3|4, byteorder, None, None, None, -1, -1, 0[, None])``, once."""
    plain = (type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4)
             and type(state[1]) is str and state[2:8] == (None, None, None, -1, -1, 0)
             and (len(state) == 8 or state[8] is None))
    if not plain or target.built:
        raise RefusedContent(f"numpy dtype state {_show(state)} is not allowed (fields, subarrays, "
                             "flags, metadata, or a second state)")
    target.dtype, target.built = _numeric_dtype(target.dtype.str[1:], state[1]), True


def _array_dtype(value: Any) -> np.dtype:
    if type(value) is not _Dtype:
        raise RefusedContent(f"array dtype {_show(value)} is not allowed")
    return value.dtype


def _show(value: Any) -> str:
    """A short repr of untrusted data (bounded in depth and length)."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 40, 40, 40


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):  # a Python 2 string, decoded as latin-1
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise RefusedContent(f"array data must be bytes, got {type(data).__name__}")


def _shape(shape: Any) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > 32 or not all(type(d) is int and d >= 0
                                                             for d in shape):
        raise RefusedContent(f"array shape {_show(shape)} is not allowed")
    return shape


def _sized(shape: tuple[int, ...], dtype: np.dtype, data: bytes) -> None:
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise RefusedContent(f"an array of shape {shape} and dtype {dtype} needs "
                             f"{math.prod(shape) * dtype.itemsize} bytes, the file gives {len(data)}")


def _array_state(array: np.ndarray, state: Any) -> None:
    """BUILD of an array made by ``_reconstruct``: ``(1, shape, dtype, fortran, raw bytes)``."""
    if type(state) is tuple and len(state) == 4:
        state = (1, *state)
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
        raise RefusedContent(f"numpy array state {_show(state)} is not allowed")
    _, shape, dtype, fortran, data = state
    shape, dtype, data = _shape(shape), _array_dtype(dtype), _as_bytes(data)
    if type(fortran) not in (bool, int):
        raise RefusedContent(f"array order flag {_show(fortran)} is not allowed")
    _sized(shape, dtype, data)
    array.__setstate__((1, shape, dtype, bool(fortran), data))


def _reconstruct(subtype: Any, shape: Any, code: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty array that BUILD then fills."""
    if subtype is not _NDARRAY:
        raise RefusedContent(f"array subtype {_show(subtype)} is not allowed")
    if math.prod(_shape(shape)) != 0:
        raise RefusedContent(f"array placeholder of shape {shape} is not allowed")
    return np.ndarray.__new__(np.ndarray, (0,), _numeric_dtype(code))


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 form ``_frombuffer(buffer, dtype, shape, order)`` (a copy)."""
    shape, dtype, data = _shape(shape), _array_dtype(dtype), _as_bytes(data)
    if order not in ("C", "F"):
        raise RefusedContent(f"array order {_show(order)} is not allowed")
    _sized(shape, dtype, data)
    return np.frombuffer(data, dtype).reshape(shape, order=order).copy(order="K")


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(text, 'latin1')``."""
    if encoding not in ("latin1", "latin-1") or type(text) is not str:
        raise RefusedContent(f"_codecs.encode with {_show(encoding)} is not allowed")
    return text.encode("latin1")


class _NdarrayName:
    """``numpy.ndarray`` as a pickle names it: only the first argument of ``_reconstruct``."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()

_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol-2 pickles written by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x pickles (the originals)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x pickles
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype_call,
}
_CALLABLE = (_latin1_bytes, _reconstruct, _frombuffer, _dtype_call)

_LITERALS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class _Mark:
    pass


_MARK = _Mark()


def _interpret(data: bytes) -> tuple[Any, int]:
    """Run the pickle's opcodes on the allowed set; returns ``(value, number of opcodes)``."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    count = 0

    def pop_mark() -> list[Any]:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is _MARK:
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise RefusedContent("MARK missing")

    def key(value: Any) -> Any:
        if type(value) not in _SCALARS:  # a tuple key could nest deep enough to crash hash()
            raise RefusedContent(f"dict key of type {type(value).__name__} is not allowed")
        return value

    for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
        count += 1
        name = opcode.name
        if name in _LITERALS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in ("PROTO", "FRAME"):
            continue
        elif name == "STOP":
            if len(stack) != 1:
                raise RefusedContent("the pickle ends with a malformed stack")
            return stack[0], count
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise RefusedContent(f"{name} on a short stack")
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "DICT":
            items = pop_mark()
            stack.append({key(k): v for k, v in zip(items[::2], items[1::2], strict=True)})
        elif name == "APPEND":
            value = stack.pop()
            _expect(stack[-1], list, name).append(value)
        elif name == "APPENDS":
            items = pop_mark()
            _expect(stack[-1], list, name).extend(items)
        elif name == "SETITEM":
            value, k = stack.pop(), stack.pop()
            _expect(stack[-1], dict, name)[key(k)] = value
        elif name == "SETITEMS":
            items = pop_mark()
            target = _expect(stack[-1], dict, name)
            for k, v in zip(items[::2], items[1::2], strict=True):
                target[key(k)] = v
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise RefusedContent(f"memo entry {arg} read before it was written")
            stack.append(memo[arg])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                attr, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(attr, str) \
                    or (module, attr) not in _GLOBALS:
                raise RefusedContent(f"global '{module}.{attr}' is not allowed")
            stack.append(_GLOBALS[(module, attr)])
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not any(func is allowed for allowed in _CALLABLE) or type(args) is not tuple:
                raise RefusedContent(f"calling {_show(func)} is not allowed")
            stack.append(func(*args))
        elif name == "BUILD":
            state, target = stack.pop(), stack[-1]
            if type(target) is _Dtype:
                _dtype_state(target, state)
            elif type(target) is np.ndarray:
                _array_state(target, state)
            else:
                raise RefusedContent(f"setting the state of a {type(target).__name__} is not allowed")
        else:
            raise RefusedContent(f"pickle opcode {name} is not allowed")
    raise RefusedContent("the pickle has no STOP opcode")


def _expect(value: Any, kind: type, opcode: str) -> Any:
    if type(value) is not kind:
        raise RefusedContent(f"{opcode} on a {type(value).__name__}")
    return value


def _check_tree(value: Any, budget: int) -> None:
    """Walk the value as a tree (shared references counted each time) within ``budget`` nodes."""
    todo = [(value, 0)]
    seen = 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > budget:
            raise RefusedContent(f"the data expands to more than {budget} objects through shared "
                                 "references (or a cycle): a reference bomb")
        if depth > MAX_DEPTH:
            raise RefusedContent(f"containers nest deeper than {MAX_DEPTH} levels (or hold themselves)")
        kind = type(node)
        if kind in (list, tuple):
            todo.extend((item, depth + 1) for item in node)
        elif kind is dict:
            todo.extend((item, depth + 1) for item in node.values())
        elif kind is np.ndarray:
            if node.dtype.kind not in _SAFE_KINDS or node.dtype.hasobject:
                raise RefusedContent(f"numpy array of dtype {node.dtype!r} is not allowed")
        elif kind not in _SCALARS:
            raise RefusedContent(f"a value of type {kind.__name__} is not allowed")


def loads_restricted(data: bytes, source: str, expected: str) -> Any:
    """Unpickle ``data`` (read from ``source``, named in errors) allowing only plain data.

    ``expected`` describes the content for the error message.
    """
    try:
        value, count = _interpret(data)
        _check_tree(value, EXPANSION * count + SLACK)
        return value
    except RefusedContent as exc:
        raise UserError(f"{source!r} is not a safe {expected}: {exc}; refusing to load it") from exc
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError,
            UnicodeDecodeError) as exc:
        raise UserError(f"{source!r} is not a valid {expected} (truncated or damaged: "
                        f"{type(exc).__name__}: {exc})") from exc


def load_restricted(path: str | Path, expected: str, max_bytes: int = MAX_BYTES) -> Any:
    """Unpickle the file ``path`` (gzip-compressed or not) allowing only containers and plain
    numeric numpy arrays; see the module docstring. ``expected`` describes the content for the
    error message; files over ``max_bytes`` (after decompression) are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: expected {expected}")
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            handle = gzip.GzipFile(fileobj=raw) if compressed else raw
            data = handle.read(max_bytes + 1)
    except (OSError, EOFError) as exc:
        raise UserError(f"{str(path)!r} cannot be read as {expected}: {exc}") from exc
    if len(data) > max_bytes:
        raise UserError(f"{str(path)!r} holds more than {max_bytes} bytes of pickle; that is not "
                        f"{expected}, refusing to load it")
    return loads_restricted(data, str(path), expected)
