"""Python mode (NUMBA_DISABLE_JIT=1): pure-Python twins of numba_kernels' intrinsics.

With JIT disabled numba leaves every @njit function as plain Python (prange is range),
but intrinsics and @overload stubs have no Python body. numba_kernels imports these twins
in their place, with the same semantics on NumPy scalars, so that the whole backend runs
(slowly) as Python: CI runs a small kernel-test subset this way to check the kernels'
logic and coverage. Under JIT this module is not imported.

Python-mode caveats: no fast-math, so results differ from the compiled ones by a few
ulps (no FMA contraction, sums in order). And NumPy 2 keeps float32 + Python float in
float32 where numba types 0.0 as float64 and widens: a float64 sum of float32 terms
must start at np.float64(0.0), not 0.0 (see sum_exp_of and log_float64).
"""

from __future__ import annotations

import functools

import numpy as np


def _kernels():
    # The compiled-code module, for the scalar functions the twins dispatch to (imported
    # at call time: it imports this module while it loads).
    from logitcore._backends import numba_kernels

    return numba_kernels


def bits_to_float(bits):
    """Reinterpret an int32 as float32 or an int64 (a Python int: numba's int64) as
    float64. The callers' bit arithmetic on NumPy int32/int64 scalars wraps (shifts
    silently) as in machine code, so it needs no masking here."""
    if isinstance(bits, np.int32):
        return bits.view(np.float32)
    if isinstance(bits, (np.int64, int)):
        return np.int64(bits).view(np.float64)
    raise TypeError(f"bits_to_float: int32 or int64 expected, got {type(bits).__name__}")

def float_to_bits(value):
    """Reinterpret a float32 as int32 or a float64 (or a Python float) as int64."""
    if isinstance(value, np.float32):
        return value.view(np.int32)
    if isinstance(value, float):  # np.float64 is a subclass of float
        return np.float64(value).view(np.int64)
    raise TypeError(f"float_to_bits: float32 or float64 expected, got "
                    f"{type(value).__name__}")

def max_ignoring_nan(a, b):
    """llvm.maxnum: the larger of a and b, the other one if either is NaN."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a >= b else b

def prefetch(array, index):
    """A cache hint: nothing to do in Python."""

def cast_like(value, like):
    """``value`` converted to the float type of ``like`` (a scalar or an array)."""
    return np.result_type(like).type(value)

def ieee_quiet(kernel):
    """error_model="numpy" in Python: IEEE results (inf - inf = NaN, x / 0 = inf)
    without NumPy's scalar RuntimeWarnings, which the edge table would raise by the
    thousand. Applied to the kernels, the entry points of every helper call."""

    @functools.wraps(kernel)
    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return kernel(*args, **kwargs)

    return run


def row_operation_step(step, default=None):
    """The schedules' step dispatch (see numba_kernels._row_operation_step) in Python."""

    def call_step(op, *args):
        return _kernels().ROW_OPERATIONS[op].get(step, default)(*args)

    return call_step


# --- half-precision input (numba_kernels, "Half-precision input") ---

def _is_half_bits(array):
    return isinstance(array, np.ndarray) and array.dtype in (np.uint16, np.int16)


def widen(bits):
    """The float32 value of one float16 (uint16) or bfloat16 (int16) bit pattern."""
    if isinstance(bits, np.uint16):
        return _kernels().float16_bits_to_float32(bits)
    if isinstance(bits, np.int16):
        return _kernels().bfloat16_bits_to_float32(bits)
    raise TypeError(f"widen: uint16 or int16 expected, got {type(bits).__name__}")


class _Window:
    """Holds the buffer a window aliases (NumPy keeps this object as the array's base)."""

    def __init__(self, buffer, interface):
        self.buffer = buffer
        self.__array_interface__ = interface


def window(buffer, n_rows, n_classes, row, column):
    """The (n_rows, n_classes) float32 array whose element [row, column] is buffer[0]."""
    offset = (row * n_classes + column) * buffer.itemsize
    interface = {"data": (buffer.ctypes.data - offset, False), "shape": (n_rows, n_classes),
                 "typestr": buffer.dtype.str, "version": 3}
    return np.asarray(_Window(buffer, interface))


def reads_half(x, args):
    return _is_half_bits(x) or any(_is_half_bits(a) for a in args)


def compute_dtype(x):
    return np.float32 if _is_half_bits(x) else x.dtype.type


def load_rows(x, buffer, first, stop):
    if not _is_half_bits(x):
        return x
    n_classes = x.shape[1]
    for r in range(stop - first):
        _kernels().widen_span(x[first + r], buffer[r * n_classes:(r + 1) * n_classes])
    return window(buffer, x.shape[0], n_classes, first, 0)


def load_block(x, buffer, i, start, stop):
    if not _is_half_bits(x):
        return x
    _kernels().widen_span(x[i, start:stop], buffer[:stop - start])
    return window(buffer, x.shape[0], x.shape[1], i, start)


def load_span(x, buffer, start, stop):
    if not _is_half_bits(x):
        return x
    _kernels().widen_span(x[start:stop], buffer[:stop - start])
    return window(buffer, 1, x.shape[0], 0, start)[0]


def value_at(x, i, j):
    return widen(x[i, j]) if _is_half_bits(x) else x[i, j]


# --- temperature= (numba_kernels, "temperature=") ---

def row_factor(row_scale, i):
    if row_scale is None:
        return 1.0
    return row_scale[i if row_scale.shape[0] > 1 else 0]


def as_float(value):
    return widen(value) if isinstance(value, (np.uint16, np.int16)) else value


def scaled_buffer(x, n_elements, row_scale):
    if row_scale is None:
        return _kernels().half_buffer(x, n_elements)
    return np.empty(n_elements, dtype=compute_dtype(x))


def load_scaled_rows(x, buffer, first, stop, row_scale):
    if row_scale is None:
        return load_rows(x, buffer, first, stop)
    n_classes = x.shape[1]
    for r in range(stop - first):
        _kernels().scale_span(x[first + r], buffer[r * n_classes:(r + 1) * n_classes],
                              row_factor(row_scale, first + r))
    return window(buffer, x.shape[0], n_classes, first, 0)


def load_scaled_block(x, buffer, i, start, stop, row_scale):
    if row_scale is None:
        return load_block(x, buffer, i, start, stop)
    _kernels().scale_span(x[i, start:stop], buffer[:stop - start], row_factor(row_scale, i))
    return window(buffer, x.shape[0], x.shape[1], i, start)


def scaled_value_at(x, i, j, row_scale):
    value = value_at(x, i, j)
    if row_scale is None:
        return value
    return value * type(value)(row_factor(row_scale, i))


def n_half_operands(args):
    return sum(_is_half_bits(a) for a in args)


def load_row_operands(args, buffers, i):
    loaded = []
    n_loaded = 0
    for a in args:
        if _is_half_bits(a):
            loaded.append(load_rows(a, buffers[n_loaded], i, i + 1))
            n_loaded += 1
        else:
            loaded.append(a)
    return tuple(loaded)
