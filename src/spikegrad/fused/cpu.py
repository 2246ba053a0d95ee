"""The CPU fused neuron: ``lif_cpu.cpp`` compiled on first use and called through ctypes.

The library is plain C++ (no torch headers), so it builds in seconds with the system
compiler (``$CXX``, else ``c++``/``g++``) and needs no Python headers or ninja. It is
cached under ``$SPIKEGRAD_CACHE_DIR`` (default ``~/.cache/spikegrad``), keyed by the
source, flags, compiler and CPU, and rebuilt only when one of them changes. Flags:
``-O3 -march=native -fopenmp -ffp-contract=off`` (no FMA contraction, so that the charge
``leak·u + scale·x`` rounds exactly as the reference's two products and sum; no
``-ffast-math``) and ``-fno-trapping-math`` (floating-point exceptions are not observed, so
the compiler may evaluate both sides of a select, which lets the float16 conversions'
loops vectorise; no result changes). If ``-march=native`` or OpenMP is
refused, it retries without them. If no build works, :func:`library` warns once and returns
``None``; callers then use the reference loop.

OpenMP threads follow ``torch.get_num_threads()``; the library links ``libgomp.so.1``,
which resolves to the copy torch has already loaded, so both share one thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["block_size", "library", "pack_bits", "unpack_bits"]

ABI_VERSION = 3
SOURCE = Path(__file__).with_name("lif_cpu.cpp")
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno",
              "-fno-trapping-math")
OPTIONAL_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ())
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

_int64, _double_p, _void_p = ctypes.c_int64, ctypes.POINTER(ctypes.c_double), ctypes.c_void_p


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$SPIKEGRAD_CACHE_DIR`` or ``~/.cache/spikegrad``)."""
    if os.environ.get("SPIKEGRAD_CACHE_DIR"):
        return Path(os.environ["SPIKEGRAD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikegrad"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile into ``target`` atomically; the compiler's complaint (or the OS error) if it fails."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [compiler, *BASE_FLAGS, *flags, str(SOURCE), "-o", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return (done.stderr or done.stdout).strip()[-2000:]
            os.replace(out, target)  # atomic: concurrent builders each install a whole file
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.sg_abi_version() != ABI_VERSION:
        raise OSError(f"{path} has ABI {lib.sg_abi_version()}, expected {ABI_VERSION}")
    lib.sg_lif_forward.argtypes = [ctypes.c_int, _void_p, _void_p, _void_p, _void_p, _void_p, _int64,
                                   _int64, _double_p, ctypes.c_int, _int64, ctypes.c_int]
    lib.sg_lif_backward.argtypes = [ctypes.c_int, _void_p, _void_p, _void_p, _void_p, _void_p, _void_p,
                                    _void_p, _double_p, _int64, _int64, _double_p, _double_p, ctypes.c_int,
                                    ctypes.c_int, ctypes.c_int, _int64, ctypes.c_int]
    lib.sg_surrogate_eval.argtypes = [ctypes.c_int, ctypes.c_int, _double_p, _void_p, _void_p, _int64]
    lib.sg_convert.argtypes = [ctypes.c_int, ctypes.c_int, _void_p, _void_p, _int64]
    lib.sg_pack_bits.argtypes = [ctypes.c_int, _void_p, _void_p, _int64, ctypes.c_int]
    lib.sg_pack_bits.restype = _int64
    lib.sg_unpack_bits.argtypes = [ctypes.c_int, _void_p, _void_p, _int64, ctypes.c_int]
    lib.sg_advise_huge_pages.argtypes = [_void_p, _int64]
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; ``None`` (after one warning) if
    it cannot be built or loaded."""
    compiler = _compiler()
    if compiler is None:
        return _unavailable("no C++ compiler found (set $CXX or install g++)")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _unavailable(f"{compiler} --version failed: {exc}")
    errors = []
    for flags in OPTIONAL_FLAGS:
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), compiler, version, *BASE_FLAGS, *flags, platform.machine(),
                       _cpu_signature()]).encode()
        ).hexdigest()[:16]
        target = cache_dir() / f"lif_cpu-{key}.so"
        if not target.exists():
            error = _build(compiler, flags, target)
            if error is not None:
                errors.append(f"{' '.join(flags) or 'plain'}: {error}")
                continue
        try:
            return _load(target)
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
    return _unavailable("; ".join(errors))


def _unavailable(reason: str) -> None:
    warnings.warn(
        f"spikegrad: the fused CPU neuron could not be built ({reason}); neurons use the reference "
        "loop instead (same results, slower). Set backend='reference' to silence this.",
        RuntimeWarning, stacklevel=3,
    )
    return None


def block_size(T: int) -> int:
    """Neurons per block (a multiple of the vector width). Measured on an AMD EPYC (Zen 4):
    128 is fastest for T <= 16 (the T rows of a block then read as interleaved streams that
    the prefetchers follow), 1024 for longer sequences; the block's recomputed potentials
    (T x block) stay in L1/L2 either way."""
    return 128 if T <= 16 else 1024


HUGE_PAGE_MIN_BYTES = 4 << 20


def empty_like(x: Tensor, shape: tuple[int, ...] | torch.Size | None = None, dtype: torch.dtype | None = None
               ) -> Tensor:
    """A new output buffer; large ones are advised onto transparent huge pages before their
    first touch, which lowers the cost of the page faults of a fresh allocation (Linux)."""
    out = torch.empty(x.shape if shape is None else shape, dtype=dtype or x.dtype, device=x.device)
    nbytes = out.numel() * out.element_size()
    if nbytes >= HUGE_PAGE_MIN_BYTES:
        library().sg_advise_huge_pages(out.data_ptr(), nbytes)
    return out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel's arithmetic: float64 for float64 tensors, float32 for the others (float16 and
    bfloat16 are widened on load and rounded to nearest even where stored)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _doubles(values) -> ctypes.Array:
    return (ctypes.c_double * len(values))(*values)


def forward(x: Tensor, v0: Tensor | None, neuron: tuple[float, ...], hard: bool,
            want_h: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Spikes ``[T, N]`` and final potential ``[N]`` (both of ``x``'s dtype), and optionally ``h``
    ``[T, N]`` (of :func:`compute_dtype`), for a contiguous ``x`` ``[T, N]``;
    ``neuron = (leak, input_scale, threshold, v_reset, v_init)``."""
    lib = library()
    T, N = x.shape
    spikes, v_final = empty_like(x), x.new_empty(N)
    h = empty_like(x, dtype=compute_dtype(x.dtype)) if want_h else None
    lib.sg_lif_forward(DTYPE_CODES[x.dtype], _ptr(x), _ptr(v0), _ptr(spikes), _ptr(v_final), _ptr(h), T, N,
                       _doubles(neuron), int(hard), block_size(T), torch.get_num_threads())
    return spikes, v_final, h


def backward(x: Tensor, v0: Tensor | None, grad_s: Tensor, grad_v_final: Tensor | None,
             g_given: Tensor | None, neuron: tuple[float, ...], kind: int, surrogate: tuple[float, ...],
             hard: bool, detach: bool, want_v0: bool, want_leak: bool
             ) -> tuple[Tensor, Tensor | None, float | None]:
    """``(dL/dx [T, N], dL/dv0 [N] or None, dL/dleak or None)``; all inputs contiguous, of ``x``'s
    dtype except ``g_given`` (of :func:`compute_dtype`)."""
    if g_given is not None and g_given.dtype != compute_dtype(x.dtype):
        raise TypeError(f"g_given must be {compute_dtype(x.dtype)}, got {g_given.dtype}")
    lib = library()
    T, N = x.shape
    block = block_size(T)
    grad_x = empty_like(x)
    grad_v0 = x.new_empty(N) if want_v0 else None
    partials = torch.zeros((N + block - 1) // block, dtype=torch.float64) if want_leak else None
    status = lib.sg_lif_backward(
        DTYPE_CODES[x.dtype], _ptr(x), _ptr(v0), _ptr(grad_s), _ptr(grad_v_final), _ptr(g_given),
        _ptr(grad_x), _ptr(grad_v0),
        None if partials is None else ctypes.cast(partials.data_ptr(), _double_p),
        T, N, _doubles(neuron), _doubles(surrogate), kind, int(hard), int(detach), block,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"fused CPU neuron: unknown surrogate kind {kind} or dtype {x.dtype}")
    return grad_x, grad_v0, (float(partials.sum()) if partials is not None else None)


def surrogate_eval(kind: int, surrogate: tuple[float, ...], x: Tensor) -> Tensor:
    """The kernel's surrogate formula ``kind`` at the points ``x`` (for tests)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    if library().sg_surrogate_eval(DTYPE_CODES[x.dtype], kind, _doubles(surrogate), _ptr(x), _ptr(out),
                                   x.numel()) != 0:
        raise ValueError(f"unknown surrogate kind {kind}")
    return out


def convert(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The kernel's own conversion of ``x`` (for tests): float16/bfloat16 to float32, or float32 to
    ``dtype`` (float16 or bfloat16)."""
    half = x.dtype if x.dtype != torch.float32 else dtype
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32 if x.dtype != torch.float32 else dtype)
    if library().sg_convert(DTYPE_CODES[half], int(x.dtype == torch.float32), _ptr(x), _ptr(out),
                            x.numel()) != 0:
        raise ValueError(f"no conversion between {x.dtype} and {dtype}")
    return out


def pack_bits(x: Tensor) -> Tensor | None:
    """One bit per element (``uint8 [ceil(n/8)]``) if ``x`` holds only +0.0 and 1.0, else None."""
    x = x.contiguous()
    bits = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8)
    ok = library().sg_pack_bits(DTYPE_CODES[x.dtype], _ptr(x), _ptr(bits), x.numel(),
                                torch.get_num_threads())
    return bits if ok == 1 else None


def unpack_bits(bits: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """The tensor :func:`pack_bits` packed, as 0.0/1.0 of ``dtype``."""
    out = empty_like(bits, shape, dtype)
    library().sg_unpack_bits(DTYPE_CODES[dtype], _ptr(bits), _ptr(out), out.numel(), torch.get_num_threads())
    return out
