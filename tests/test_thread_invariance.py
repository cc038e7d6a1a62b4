"""Every kernel of the op table gives the same bits on 1, 2 and 3 threads, on both compiled
backends, on the shapes that take each schedule (whole rows, the class split of few long
rows, narrow rows, flat arrays). Operands are made from the table's argument roles, so a
kernel added to the table is covered here without a new test."""

import numpy as np
import pytest

from conftest import NUMBA_PYTHON_MODE
from logitcore._backends import availability, load, op_table

COMPILED_BACKENDS = ["numba", "cython"]
# Half precision: inputs (roles rows and flat) in 16 bits, everything else float32.
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
try:
    import ml_dtypes

    DTYPES.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:  # optional: bfloat16 is tested where it is installed
    pass
# (1, 131072): fewer rows than threads, the class axis is split; (3, 9000): rows of
# several blocks; (7, 1000): whole rows; (4099, 10): narrow rows.
SHAPES = [(1, 131072), (3, 9000), (7, 1000), (4099, 10)]
if NUMBA_PYTHON_MODE:  # kernels run as Python: the smallest shapes taking the same paths
    SHAPES = [(1, 4200), (3, 2100), (7, 100), (250, 10)]
SCALARS = {"ignore_index": -100, "label_smoothing": 0.1, "top_k": 5, "threshold": 0.3,
           "inverse_temperature": 0.7}
# Outputs by role: (shape from n items, C classes and k, dtype; None: the float dtype).
SCORE_OUTPUTS = {
    "field_out": (lambda n, c, k: (n,), None),
    "index_field_out": (lambda n, c, k: (n,), np.int64),
    "flag_field_out": (lambda n, c, k: (n,), np.uint8),
    "top_k_out": (lambda n, c, k: (n, k), None),
    "top_k_index_out": (lambda n, c, k: (n, k), np.int64),
    "flags_out": (lambda n, c, k: (n, c), np.uint8),
}


def operands(kernel, shape, dtype, seed=0):
    """Arguments for ``kernel`` by the role of each (see op_table), ``n_threads`` aside.
    ``dtype`` is the inputs'; every other float operand has the call's compute dtype."""
    rng = np.random.default_rng(seed)
    input_dtype, dtype = dtype, (np.float32 if np.dtype(dtype).itemsize == 2 else dtype)
    n_rows, n_classes = shape
    # Score outputs and labels have one item per row, or per element of a flat input
    # (binary scoring, whose labels are 0 or 1).
    flat_input = kernel.arguments[0][1] == "flat"
    n_items = n_rows * n_classes if flat_input else n_rows
    n_label_classes = 2 if flat_input else n_classes
    args = []
    for name, role in kernel.arguments:
        if role == "rows":
            values = (rng.standard_normal(shape) * 4).astype(dtype)
            if name == "target":
                values = rng.uniform(0.0, 1.0, shape).astype(dtype)
            else:
                values[:, ::97] = -np.inf  # masked classes
                values[:, 1] = values[:, 0]  # a tie at the max in some rows
            args.append(values.astype(input_dtype))
        elif role in ("labels", "labels_or_empty"):
            labels = rng.integers(0, n_label_classes, n_items).astype(np.int64)
            labels[::3] = SCALARS["ignore_index"]
            args.append(labels)
        elif role == "classes" and name == "threshold":  # probabilities in (0, 1)
            args.append(rng.uniform(0.05, 0.95, n_classes).astype(dtype))
        elif role == "classes":
            args.append(rng.uniform(0.0, 3.0, n_classes).astype(dtype))
        elif role == "broadcast":
            args.append(rng.uniform(0.0, 3.0, (1, n_classes)).astype(dtype))
        elif role == "scalar":
            args.append(SCALARS.get(name, 1.0 / n_rows))
        elif role == "row_out":
            args.append(np.full(n_rows, 7.0, dtype))
        elif role in ("rows_out", "grad_out"):
            args.append(np.full(shape, 7.0, dtype))
        elif role == "flat":
            args.append((rng.standard_normal(n_rows * n_classes) * 20).astype(input_dtype))
        elif role == "flat_out":
            args.append(np.full(n_rows * n_classes, 7.0, dtype))
        elif role == "row_weights":  # some rows weigh 0 (left out)
            weights = rng.uniform(0.0, 2.0, n_rows).astype(dtype)
            weights[::5] = 0.0
            args.append(weights)
        elif role == "flags_or_empty":
            args.append(rng.integers(0, 2, shape).astype(np.uint8))
        elif role in SCORE_OUTPUTS:
            out_shape, out_dtype = SCORE_OUTPUTS[role]
            args.append(np.full(out_shape(n_items, n_classes, SCALARS["top_k"]), 7,
                                out_dtype or dtype))
        else:
            raise AssertionError(f"no operand maker for role {role!r}")
    return args


def outputs(kernel, args, returned):
    written = [a for a, (_, role) in zip(args, kernel.arguments)
               if role in ("row_out", "rows_out", "grad_out", "flat_out")
               or role in SCORE_OUTPUTS]
    return written + ([np.asarray(returned, dtype=np.float64)] if returned is not None else [])


def option_operands(kernel, shape, scaled, seed=1):
    """The kernel's keyword options (op_table ``options``) by role: none when not
    ``scaled``, else a row_scale of one factor per row."""
    if not scaled:
        return {}
    rng = np.random.default_rng(seed)
    options = {}
    for name, role in kernel.options:
        if role == "row_scale":
            options[name] = rng.uniform(0.25, 4.0, shape[0])
        else:
            raise AssertionError(f"no operand maker for option role {role!r}")
    return options


@pytest.mark.parametrize("scaled", [False, True], ids=["", "row_scale"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kernel_name", sorted(op_table.KERNELS))
@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_same_bits_on_any_thread_count(backend_name, kernel_name, dtype, shape, scaled):
    available, reason = availability(backend_name)
    if not available:
        pytest.skip(reason)
    backend = load(backend_name)
    if kernel_name not in backend.SUPPORTED_KERNELS:
        pytest.skip(f"{backend_name} does not implement {kernel_name}")
    if dtype.itemsize == 2 and kernel_name not in op_table.HALF_INPUT_KERNELS:
        pytest.skip(f"{kernel_name} takes no half-precision input (op_table.HALF_INPUT_KERNELS)")
    kernel = op_table.KERNELS[kernel_name]
    if scaled and not kernel.options:
        pytest.skip(f"{kernel_name} takes no options")
    if (scaled and backend_name == "numba" and kernel_name == "cross_entropy_labels"
            and shape[0] < 2 * 2 and shape[1] > 2048):
        # Known: with a per-row 1/T the gradient of a class-split row differs from the
        # rows schedule's (1 thread) in the last bits; loss bits agree. Under investigation.
        pytest.xfail("numba cross_entropy_labels + row_scale: class split vs rows gradient bits")
    results = []
    for threads in (1, 2, 3):
        args = operands(kernel, shape, dtype)
        returned = getattr(backend, kernel_name)(*args, threads,
                                                 **option_operands(kernel, shape, scaled))
        results.append(outputs(kernel, args, returned))
    for threads, result in zip((2, 3), results[1:]):
        for got, want in zip(result, results[0]):
            np.testing.assert_array_equal(
                got, want, err_msg=f"{threads} threads differ from 1 thread")
