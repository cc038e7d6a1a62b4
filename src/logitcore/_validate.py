"""Input checks and the error messages users see.

Every public function funnels its arguments through these helpers, so that each kind of
mistake produces the same exception type and names the argument at fault.
"""

from __future__ import annotations

import numpy as np
from numpy.exceptions import AxisError

REDUCTIONS = ("none", "mean", "sum")


# The dtype policy, in one place. A call computes in float32 or float64 (its compute dtype,
# also the dtype of every float output): float64 and wider -> float64; float32 ->
# float32; half precision (float16, and ml_dtypes' bfloat16) -> float32, read by the
# compiled kernels in 16 bits and widened to float32 inside them, never copied to float32
# first: logits are often stored in 16 bits, and reading half the bytes is half the time.
# Outputs are float32, as torch's CPU kernels compute half input in float32: 16-bit
# probabilities or losses would lose what the float32 arithmetic kept (float16 has 11
# significant bits; its largest value is 65504; bfloat16 has 8). Integers and bools ->
# float64. The numpy reference backend widens its input to float64, as for any dtype.


def is_half(dtype: np.dtype) -> bool:
    """float16 or bfloat16 in native byte order: the 16-bit inputs the kernels read as
    they are. bfloat16 (an ml_dtypes type, kind 'V') is recognised by its name, so that
    ml_dtypes, an optional dependency, is never imported."""
    return dtype.itemsize == 2 and dtype.isnative and (
        dtype.kind == "f" or dtype.name == "bfloat16")


def compute_dtype(dtype: np.dtype, name: str) -> np.dtype:
    """The (native byte order) dtype a kernel computes and returns in, per the dtype
    policy above: float32 and half precision (float16, bfloat16) -> float32, in either
    byte order; float64 and wider -> float64; integers and bools -> float64."""
    if dtype.kind == "f":
        # Decided by the size, not by equality with np.float32: '>f4' != np.float32.
        # longdouble: no kernel computes in it; float64 is the widest.
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise TypeError(
        f"{name} must hold real numbers (float, int or bool), got dtype {dtype}"
    )


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(x, name: str) -> np.ndarray:
    """``x`` as an array of its compute dtype (a copy only when the dtype changes)."""
    if type(x) is np.ndarray and x.dtype in _KERNEL_DTYPES:  # the common case
        return x
    array = np.asarray(x)
    dtype = compute_dtype(array.dtype, name)
    return array if array.dtype == dtype else array.astype(dtype)


def as_kernel_input(x, name: str) -> tuple[np.ndarray, np.dtype]:
    """``x`` as the kernels read it, and the call's compute dtype: half precision stays
    as it is (the kernels widen it), other dtypes as in ``as_float_array``."""
    if type(x) is np.ndarray and x.dtype in _KERNEL_DTYPES:  # the common case
        return x, x.dtype
    array = np.asarray(x)
    dtype = compute_dtype(array.dtype, name)
    return kernel_operand(array, dtype), dtype


def kernel_operand(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An (n, C) or flat operand as the kernels of a ``dtype`` call read it: itself when of
    that dtype, or half precision in a float32 call (widened inside the kernels), else
    converted."""
    if array.dtype == dtype or (dtype == np.float32 and is_half(array.dtype)):
        return array
    return array.astype(dtype)


def float_array_like(x, name: str, dtype: np.dtype) -> np.ndarray:
    """A second float operand (weights) converted to the call's compute dtype."""
    array = np.asarray(x)
    compute_dtype(array.dtype, name)  # rejects complex / object / strings
    return array if array.dtype == dtype else array.astype(dtype)


def second_rows_operand(x, name: str, dtype: np.dtype) -> np.ndarray:
    """A second (n, C) operand read like the logits (targets, dy, b) as the kernels of a
    ``dtype`` call read it: half precision in a float32 call stays as it is."""
    array = np.asarray(x)
    compute_dtype(array.dtype, name)  # rejects complex / object / strings
    return kernel_operand(array, dtype)


def normalize_axes(axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """``axis`` (None, int or tuple of ints) as sorted non-negative axes."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, kept cheap
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    result = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must be an int, a tuple of ints or None, got {axis!r}")
        if not -ndim <= a < ndim:
            raise AxisError(
                f"{name}={a} is out of bounds for an array with {ndim} dimension(s)"
            )
        result.append(int(a) % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"{name} contains a repeated axis: {axis!r}")
    return tuple(sorted(result))


def single_axis(axis, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    return normalize_axes(int(axis), ndim, name)[0]


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}"
        )
    return reduction


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the shape of {name_a}: {name_a} has shape {a.shape}, "
            f"{name_b} has shape {b.shape}"
        )


def check_finite(array: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(
            f"{name} must be finite; {name}{list(where) if where else ''} = "
            f"{array[tuple(bad)]!r}"
        )


def check_label_smoothing(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")
    return value


INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def check_ignore_index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {value!r}")
    value = int(value)
    # Labels are compared as int64 in the kernels; a wider value would overflow there.
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(
            f"ignore_index must be in the int64 range [{INT64_MIN}, {INT64_MAX}], got {value}"
        )
    return value


def check_cross_entropy_arguments(shape: tuple, axis, reduction, label_smoothing,
                                  ignore_index) -> tuple[int, int, str, float, int]:
    """The checks ``cross_entropy`` makes on its scalar arguments, in memory and on dask
    arrays alike: (class axis, classes, reduction, label_smoothing, ignore_index)."""
    if len(shape) == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis), got a "
                         "0-d array")
    class_axis = single_axis(axis, len(shape))
    n_classes = shape[class_axis]
    reduction = check_reduction(reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    if n_classes == 0:
        raise ValueError(f"logits has 0 classes along axis {axis}: shape {tuple(shape)}")
    return class_axis, n_classes, reduction, label_smoothing, ignore_index


def int64_labels(labels: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Integer class labels as a flat C-contiguous int64 array, and the flat position of
    the first uint64 label too large for int64 (-1 if none; the cast would wrap it to a
    negative number, possibly ignore_index). The range of the others is checked by the
    ``label_stats`` kernel, in one pass."""
    # kind and size, not ``== np.uint64``: a big-endian '>u8' must be checked too
    wide_unsigned = labels.dtype.kind == "u" and labels.dtype.itemsize == 8
    if wide_unsigned and labels.size and labels.max() > INT64_MAX:
        return None, int(np.argmax(labels.reshape(-1) > INT64_MAX))
    return np.ascontiguousarray(labels, dtype=np.int64).reshape(-1), -1


def check_class_weight(weight, n_classes: int, dtype: np.dtype) -> np.ndarray:
    weight = float_array_like(weight, "weight", dtype)
    if weight.shape != (n_classes,):
        raise ValueError(
            f"weight must have shape ({n_classes},) (one per class), got shape {weight.shape}"
        )
    check_finite(weight, "weight")
    return np.ascontiguousarray(weight)


def check_out(out, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    """Check a caller's output array and return the plain ndarray view kernels write
    through. A subclass (np.matrix, np.memmap...) is viewed as its base class: np.matrix
    stays 2-D under reshape(-1), which a kernel expecting a flat array cannot take."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {out.shape}")
    if out.dtype != dtype:
        byte_order = (" (non-native byte order)"
                      if out.dtype.newbyteorder("=") == dtype else "")
        raise TypeError(f"{name} must have dtype {dtype}, got dtype {out.dtype}{byte_order}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out if type(out) is np.ndarray else out.view(np.ndarray)


def check_no_partial_overlap(out: np.ndarray, inputs: dict, name: str = "out") -> None:
    """``out`` may be exactly an input (same memory, same layout) but may not overlap
    one partially: a kernel reading and writing shifted views would give garbage."""
    for input_name, array in inputs.items():
        if not isinstance(array, np.ndarray) or not np.shares_memory(out, array):
            continue
        same_layout = (
            out.__array_interface__["data"][0] == array.__array_interface__["data"][0]
            and out.shape == array.shape
            and out.strides == array.strides
        )
        if not same_layout:
            raise ValueError(
                f"{name} overlaps {input_name} partially; pass {input_name} itself "
                f"(in place) or a separate array"
            )


def row_scale_of_temperature(temperature, rows_shape: tuple) -> np.ndarray | None:
    """The kernels' ``row_scale`` for ``temperature=`` (op_table): None for None; a
    positive finite scalar T -> the (1,) float64 array [1 / T]; an array of the rows'
    shape (the logits' shape without the class axis) -> 1 / T per row, flattened in row
    order. Every T must be finite and > 0; ValueError naming ``temperature`` otherwise."""
    if temperature is None:
        return None
    try:
        values = np.asarray(temperature, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"temperature must be a positive number or an array of them, got "
            f"{type(temperature).__name__}") from None
    if values.ndim != 0 and values.shape != tuple(rows_shape):
        raise ValueError(
            f"temperature must be a scalar or have the shape of the rows "
            f"{tuple(rows_shape)} (the logits' shape without the class axis), got shape "
            f"{values.shape}")
    if not np.all(np.isfinite(values) & (values > 0.0)):
        bad = values.reshape(-1)[~(np.isfinite(values.reshape(-1))
                                   & (values.reshape(-1) > 0.0))][0]
        raise ValueError(f"temperature must be finite and > 0, got {bad}")
    return np.ascontiguousarray(1.0 / values.reshape(-1))
