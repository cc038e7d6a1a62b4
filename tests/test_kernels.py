"""Kernel-level tests of the compiled backends against the NumPy reference.

Every compiled backend implements the kernel contract of ``logitcore._backends``; here each
kernel is called directly (no API layer) on the shapes that select each code path (row
path, class split for one long row, narrow rows, empty axes), with every option, and on
each row of the edge table (docs/architecture.md). The oracle is ``numpy_ref`` writing into float64
outputs. Accuracy bounds (docs/accuracy.md):

* float32 log-domain values and losses: |err| <= 2e-6 (1 + |ref|)
* float32 probabilities: |err| <= 1e-7 + 2e-6 ref
* float64: 1e-14 relative (with the same 1 + |ref| floor for log-domain values)
"""

import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from conftest import NUMBA_PYTHON_MODE
from logitcore._backends import availability, load

reference = load("numpy")

COMPILED_BACKENDS = ["numba", "cython"]
DTYPES = [np.float32, np.float64]
THREADS = [1, 2]
# (0, 5) no rows; (3, 1) one class; (7, 1000) row path; (2, 131072) long rows;
# (1, 131072) fewer rows than threads: the class axis is split; (4099, 10) narrow rows.
SHAPES = [(0, 5), (3, 1), (7, 1000), (2, 131072), (1, 131072), (4099, 10)]
SOME_SHAPES = [(0, 5), (3, 1), (7, 1000), (1, 131072), (4099, 10)]  # less (2, 131072)
# Edge rows: narrow, one block, several blocks (numba splits a lone row over 2048
# classes), and long enough for the cython split (a piece per thread of >= 32768).
EDGE_CLASSES = [10, 1000, 9000, 70000]
THREAD_INVARIANCE_SHAPES = [(1, 131072), (3, 9000), (7, 1000), (4099, 10)]
SIGMOID_SIZES = [0, 1, 1000, 200001]  # 200001: the flat kernels split into tasks
if NUMBA_PYTHON_MODE:
    # Kernels run as Python (conftest.py): the smallest shapes taking the numba paths.
    # 2100 classes > BLOCK (2048): two blocks per row, and the class split when a row
    # has fewer than 2 per thread; 250 x 10: narrow rows, two blocks of rows per task.
    SHAPES = [(0, 5), (3, 1), (7, 100), (2, 2100), (1, 2100), (250, 10)]
    SOME_SHAPES = [(0, 5), (3, 1), (7, 100), (1, 2100), (250, 10)]
    EDGE_CLASSES = [10, 100, 2100]
    THREAD_INVARIANCE_SHAPES = [(1, 2100), (3, 2100), (7, 100), (250, 10)]
    # The task split of sigmoid needs 131072+ elements: about a minute as Python.
    SIGMOID_SIZES = [0, 1, 1000]
SKIP_IN_PYTHON_MODE = pytest.mark.skipif(
    NUMBA_PYTHON_MODE,
    reason="NUMBA_DISABLE_JIT=1: the kernels run as Python, with no native threads to "
           "race, and these callers' shapes would take minutes",
)


@pytest.fixture(params=COMPILED_BACKENDS)
def backend(request):
    available, reason = availability(request.param)
    if not available:
        pytest.skip(f"backend {request.param!r} is not available: {reason}")
    return load(request.param)


def require(backend, kernel):
    if kernel not in backend.SUPPORTED_KERNELS:
        pytest.skip(f"{backend.__name__} does not implement {kernel}")


# --------------------------------------------------------------------------------------
# comparison helpers
# --------------------------------------------------------------------------------------

LOG_TOL = {np.float32: (2e-6, 2e-6), np.float64: (1e-14, 1e-14)}  # (rtol, atol)
PROB_TOL = {np.float32: (2e-6, 1e-7), np.float64: (1e-14, 1e-300)}


def assert_matches(got, want, rtol, atol, what="", log_growth=False):
    """NaN and infinities in the same places; finite values within atol + rtol |want|.

    With ``log_growth`` (float64 probabilities) the bound grows with |log want|: a
    probability exp(v) computed from v with a rounding error of a few ulps of |v| (the
    reference's own exp((x - max) - log(sum)) included) is only that accurate, which
    matters for p ~ 1e-100 at a 1e-14 target.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN places")
    infinite = np.isinf(want)
    np.testing.assert_array_equal(np.isinf(got), infinite, err_msg=f"{what}: inf places")
    np.testing.assert_array_equal(got[infinite], want[infinite], err_msg=f"{what}: inf signs")
    finite = np.isfinite(want)
    error = np.abs(got[finite] - want[finite])
    bound = atol + rtol * np.abs(want[finite])
    if log_growth:
        with np.errstate(divide="ignore"):
            bound *= 1.0 + np.abs(np.log(np.abs(want[finite]))) / 10.0
    if error.size and not np.all(error <= bound):
        worst = np.argmax(error / bound)
        raise AssertionError(
            f"{what}: {np.count_nonzero(error > bound)} values off; worst got "
            f"{got[finite][worst]!r} want {want[finite][worst]!r} (error {error[worst]:.3g}, "
            f"bound {bound[worst]:.3g})"
        )


def assert_log_values(got, want, dtype, what=""):
    rtol, atol = LOG_TOL[dtype]
    assert_matches(got, want, rtol, atol, what)


def assert_probabilities(got, want, dtype, what=""):
    rtol, atol = PROB_TOL[dtype]
    assert_matches(got, want, rtol, atol, what, log_growth=dtype == np.float64)


def assert_gradient(got, want, dtype, what="", scale=0.0):
    """Gradients are differences (p * sum(q) - q) that cancel: an entry's error is bounded
    relative to the gradient's scale (its largest entry, or ``scale``: grad_scale times
    the largest weight) as well as to itself."""
    rtol, _ = LOG_TOL[dtype]
    finite = np.isfinite(want)
    largest = float(np.max(np.abs(want[finite]))) if finite.any() else 0.0
    assert_matches(got, want, rtol, rtol * max(largest, scale) + 1e-300, what)


def logits(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


# --------------------------------------------------------------------------------------
# logsumexp, softmax, log_softmax
# --------------------------------------------------------------------------------------


# Each test computes the reference once and checks every thread count (and in-place
# variant) against it: fewer test items keeps the file fast.


@pytest.mark.parametrize("offset", [0.0, 500.0], ids=["centred", "large_logits"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_logsumexp(backend, shape, dtype, offset):
    x = logits(shape, dtype) + dtype(offset)
    want = np.empty(shape[0])
    reference.logsumexp(x, want)
    for threads in THREADS:
        out = np.full(shape[0], 7.0, dtype)
        backend.logsumexp(x, out, threads)
        assert_log_values(out, want, dtype, f"threads={threads}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax(backend, shape, dtype):
    x = logits(shape, dtype)
    want = np.empty(shape)
    reference.softmax(x, want)
    for threads in THREADS:
        for in_place in (False, True):
            x_copy = x.copy()
            out = x_copy if in_place else np.full(shape, 7.0, dtype)
            backend.softmax(x_copy, out, threads)
            what = f"threads={threads} in_place={in_place}"
            assert_probabilities(out, want, dtype, what)
            if out.size:
                total_tol = 1e-5 if dtype == np.float32 else 1e-13
                assert_matches(out.sum(axis=1), np.ones(shape[0]), 0.0, total_tol, what)


@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "large_logits"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_softmax(backend, shape, dtype, offset):
    # With large logits, x - max must be taken before subtracting log(sum).
    x = logits(shape, dtype) + dtype(offset)
    want = np.empty(shape)
    reference.log_softmax(x, want)
    for threads in THREADS:
        for in_place in (False, True):
            x_copy = x.copy()
            out = x_copy if in_place else np.full(shape, 7.0, dtype)
            backend.log_softmax(x_copy, out, threads)
            assert_log_values(out, want, dtype, f"threads={threads} in_place={in_place}")


@SKIP_IN_PYTHON_MODE
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_longer_than_the_piece_limit(backend, dtype):
    """A row of more than 256 x 4096 classes: cython's pieces grow beyond 4096 elements
    (its per-row stack array holds 256 pieces); the row's max sits in the last piece."""
    n_classes = 256 * 4096 + 4099
    x = logits((2, n_classes), dtype)
    x[1, -1] = 40.0
    for kernel, check in (("softmax", assert_probabilities), ("log_softmax", assert_log_values)):
        want = np.empty(x.shape)
        getattr(reference, kernel)(x, want)
        for threads in THREADS:
            out = np.full(x.shape, 7.0, dtype)
            getattr(backend, kernel)(x, out, threads)
            check(out, want, dtype, f"{kernel} threads={threads}")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", EDGE_CLASSES)
def test_row_kernels_wide_range(backend, n_classes, dtype, threads):
    # Logits spread over +-80 (f32) / +-600 (f64): exp of very negative shifted values,
    # block maxima far apart so the per-block sums are rescaled by tiny factors.
    spread = 80.0 if dtype == np.float32 else 600.0
    rng = np.random.default_rng(5)
    x = rng.uniform(-spread, spread, (3, n_classes)).astype(dtype)
    x[1, : n_classes // 2] -= dtype(spread)  # first blocks far below the row max
    lse, lse_want = np.empty(3, dtype), np.empty(3)
    backend.logsumexp(x, lse, threads)
    reference.logsumexp(x, lse_want)
    assert_log_values(lse, lse_want, dtype, "logsumexp")
    probs, probs_want = np.empty_like(x), np.empty(x.shape)
    backend.softmax(x, probs, threads)
    reference.softmax(x, probs_want)
    assert_probabilities(probs, probs_want, dtype, "softmax")
    log_probs, log_probs_want = np.empty_like(x), np.empty(x.shape)
    backend.log_softmax(x, log_probs, threads)
    reference.log_softmax(x, log_probs_want)
    assert_log_values(log_probs, log_probs_want, dtype, "log_softmax")


# --------------------------------------------------------------------------------------
# the edge table (docs/architecture.md)
# --------------------------------------------------------------------------------------


def edge_rows(n_classes, dtype):
    """name -> one row of the edge table (and a few harder variants)."""
    base = logits((1, n_classes), dtype, seed=3)[0]
    rows = {"finite": base.copy()}
    row = base.copy()
    row[n_classes // 2] = np.nan
    rows["nan"] = row
    row = base.copy()
    row[n_classes - 1] = np.inf
    rows["plus_inf"] = row
    rows["all_minus_inf"] = np.full(n_classes, -np.inf, dtype)
    row = base.copy()
    row[::3] = -np.inf  # masking: some classes -inf
    rows["some_minus_inf"] = row
    row = base.copy()
    row[: n_classes // 2] = -np.inf  # whole leading blocks masked on long rows
    rows["leading_minus_inf"] = row
    row = np.full(n_classes, -np.inf, dtype)
    row[n_classes - 1] = np.inf
    rows["minus_and_plus_inf"] = row
    row = base.copy()
    row[0] = np.inf
    row[n_classes - 1] = np.nan
    rows["plus_inf_and_nan"] = row
    row = np.full(n_classes, -np.inf, dtype)
    row[n_classes // 3] = np.nan
    rows["minus_inf_and_nan"] = row
    return rows


def check_row_kernels(backend, x, dtype, threads, what):
    n_rows = x.shape[0]
    lse, lse_want = np.empty(n_rows, dtype), np.empty(n_rows)
    backend.logsumexp(x, lse, threads)
    reference.logsumexp(x, lse_want)
    assert_log_values(lse, lse_want, dtype, f"logsumexp {what}")
    probs, probs_want = np.empty_like(x), np.empty(x.shape)
    backend.softmax(x, probs, threads)
    reference.softmax(x, probs_want)
    assert_probabilities(probs, probs_want, dtype, f"softmax {what}")
    log_probs, log_probs_want = np.empty_like(x), np.empty(x.shape)
    backend.log_softmax(x, log_probs, threads)
    reference.log_softmax(x, log_probs_want)
    assert_log_values(log_probs, log_probs_want, dtype, f"log_softmax {what}")
    # Masked classes: exactly 0 probability and exactly -inf log-probability.
    masked = np.isneginf(x) & np.isfinite(probs_want)
    assert np.all(probs[masked] == 0.0), f"softmax {what}: masked class not exactly 0"
    assert np.all(np.isneginf(log_probs[masked])), f"log_softmax {what}: masked class not -inf"


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", EDGE_CLASSES)
def test_edge_table(backend, n_classes, dtype, threads):
    rows = edge_rows(n_classes, dtype)
    # All rows in one batch (row or narrow path) ...
    check_row_kernels(backend, np.stack(list(rows.values())), dtype, threads, "batch")
    # ... and each row alone (one long row is split across threads).
    for name, row in rows.items():
        check_row_kernels(backend, row[None, :].copy(), dtype, threads, name)


def test_edge_table_values(backend):
    """The table itself, spelled out."""
    rows = edge_rows(1000, np.float64)
    x = np.stack([rows[k] for k in ("nan", "plus_inf", "all_minus_inf", "some_minus_inf")])
    lse = np.empty(4)
    backend.logsumexp(x, lse, 2)
    assert np.isnan(lse[0]) and lse[1] == np.inf and lse[2] == -np.inf and np.isfinite(lse[3])
    probs = np.empty_like(x)
    backend.softmax(x, probs, 2)
    assert np.all(np.isnan(probs[:3]))
    assert np.all(probs[3][np.isneginf(x[3])] == 0.0)
    assert np.all(probs[3][np.isfinite(x[3])] > 0.0)
    log_probs = np.empty_like(x)
    backend.log_softmax(x, log_probs, 2)
    assert np.all(np.isnan(log_probs[:3]))
    assert np.all(np.isneginf(log_probs[3][np.isneginf(x[3])]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_class_axis(backend, dtype):
    x = np.empty((4, 0), dtype)
    lse = np.zeros(4, dtype)
    backend.logsumexp(x, lse, 2)
    assert np.all(lse == -np.inf)
    out = np.empty((4, 0), dtype)
    backend.softmax(x, out, 2)
    backend.log_softmax(x, out, 2)
    if "bce_with_logits" in backend.SUPPORTED_KERNELS:
        no_weight = np.ones((1, 0), dtype)
        row_sums = np.full((4, 1), 7.0, dtype)  # each row's sum over no classes: 0
        backend.bce_with_logits(x, x, no_weight, no_weight, row_sums, out, 1.0, 2)
        assert np.all(row_sums == 0.0)
    for kernel in ("softmax_backward", "log_softmax_backward"):
        if kernel in backend.SUPPORTED_KERNELS:
            getattr(backend, kernel)(x, x, out, 2)


# --------------------------------------------------------------------------------------
# sigmoid, log_sigmoid
# --------------------------------------------------------------------------------------

SPECIAL_VALUES = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 30.0, -30.0, 87.0, -87.0, 88.5,
                  -88.5, 100.0, -100.0, 700.0, -700.0, 745.0, -745.0, 1e30, -1e30,
                  np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIGMOID_SIZES)
def test_sigmoid_and_log_sigmoid(backend, size, dtype):
    with np.errstate(over="ignore"):
        special = np.array(SPECIAL_VALUES, dtype=dtype)
    x = np.concatenate([logits((size,), dtype, scale=10.0), special])
    for kernel, check in (("sigmoid", assert_probabilities), ("log_sigmoid", assert_log_values)):
        require(backend, kernel)
        want = np.empty(x.shape)
        getattr(reference, kernel)(x, want)
        for threads in THREADS:
            out = np.full_like(x, 7.0)
            getattr(backend, kernel)(x, out, threads)
            check(out, want, dtype, f"{kernel} threads={threads}")


# --------------------------------------------------------------------------------------
# cross-entropy with labels
# --------------------------------------------------------------------------------------

LABEL_OPTIONS = {
    "plain": dict(weights=False, ignore=None, smoothing=0.0),
    "weights": dict(weights=True, ignore=None, smoothing=0.0),
    "ignore_index": dict(weights=False, ignore=-100, smoothing=0.0),
    "ignore_a_class": dict(weights=False, ignore=0, smoothing=0.0),
    "smoothing": dict(weights=False, ignore=None, smoothing=0.1),
    "everything": dict(weights=True, ignore=-100, smoothing=0.2),
}
GRAD_MODES = ["no_grad", "grad", "grad_is_x"]


def label_problem(shape, dtype, option, seed=1):
    n_rows, n_classes = shape
    rng = np.random.default_rng(seed)
    x = logits(shape, dtype, seed)
    labels = rng.integers(0, max(n_classes, 1), n_rows).astype(np.int64)
    settings = LABEL_OPTIONS[option]
    weight = np.ones(n_classes, dtype)
    if settings["weights"]:
        weight = rng.uniform(0.0, 3.0, n_classes).astype(dtype)
        weight[:: 7] = 0.0  # zero weights (skipped terms)
    ignore_index = -100 if settings["ignore"] is None else settings["ignore"]
    if settings["ignore"] == -100 and n_rows:
        labels[:: 3] = -100
    return x, labels, weight, ignore_index, settings["smoothing"]


def run_labels(kernels, x, labels, weight, ignore_index, smoothing, grad_mode, threads,
               out_dtype):
    n_rows = x.shape[0]
    loss = np.full(n_rows, 7.0, out_dtype)
    if grad_mode == "no_grad":
        grad = np.empty((0, 0), out_dtype)
    elif grad_mode == "grad_is_x":
        grad = x
    else:
        grad = np.full(x.shape, 7.0, out_dtype)
    grad_scale = 1.0 / max(n_rows, 1)
    kernels.cross_entropy_labels(x, labels, weight, ignore_index, smoothing, loss, grad,
                                 grad_scale, threads)
    return loss, (None if grad_mode == "no_grad" else grad)


@pytest.mark.parametrize("option", list(LABEL_OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_labels(backend, shape, dtype, option):
    x, labels, weight, ignore_index, smoothing = label_problem(shape, dtype, option)
    want_loss, want_grad = run_labels(reference, x, labels, weight, ignore_index, smoothing,
                                      "grad", 1, np.float64)
    scale = float(weight.max(initial=1.0)) / max(shape[0], 1)  # grad_scale * max weight
    for threads in THREADS:
        for grad_mode in GRAD_MODES:
            what = f"threads={threads} {grad_mode}"
            loss, grad = run_labels(backend, x.copy(), labels, weight, ignore_index, smoothing,
                                    grad_mode, threads, dtype)
            assert_log_values(loss, want_loss, dtype, f"loss {what}")
            if grad is not None:
                assert_gradient(grad, want_grad, dtype, f"grad {what}", scale)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", EDGE_CLASSES)
def test_cross_entropy_labels_edge_rows(backend, n_classes, dtype, threads):
    rows = edge_rows(n_classes, dtype)
    x = np.stack(list(rows.values()))
    rng = np.random.default_rng(2)
    labels = rng.integers(0, n_classes, x.shape[0]).astype(np.int64)
    masked = list(rows).index("some_minus_inf")
    labels[masked] = 0  # a masked label: loss +inf
    weight = rng.uniform(0.5, 2.0, n_classes).astype(dtype)
    weight[1] = 0.0
    # All rows at once; the masked row alone (with 9000 classes: the class split).
    batches = [(x, labels), (x[masked : masked + 1], labels[masked : masked + 1])]
    for smoothing in (0.0, 0.1):
        for batch, batch_labels in batches:
            want_loss, want_grad = run_labels(reference, batch.copy(), batch_labels, weight,
                                              -100, smoothing, "grad", 1, np.float64)
            loss, grad = run_labels(backend, batch.copy(), batch_labels, weight, -100,
                                    smoothing, "grad", threads, dtype)
            assert_log_values(loss, want_loss, dtype, f"loss smoothing={smoothing}")
            assert_gradient(grad, want_grad, dtype, f"grad smoothing={smoothing}")


# Label counts around the scan's chunk of 16384 labels: empty, one, one chunk, several
# chunks with a short last one.
LABEL_COUNTS = [0, 1, 16384, 3 * 16384 + 5]
if NUMBA_PYTHON_MODE:
    LABEL_COUNTS = [0, 1, 16384 + 5]


def expected_label_stats(labels, weight, ignore_index):
    """Independent of every backend: a Python loop, with an exactly rounded sum."""
    kept = []
    for i, label in enumerate(labels.tolist()):
        if label == ignore_index:
            continue
        if not 0 <= label < weight.shape[0]:
            return i, None
        kept.append(float(weight[label]))
    return -1, math.fsum(kept)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_labels", LABEL_COUNTS)
def test_label_stats(backend, n_labels, dtype):
    rng = np.random.default_rng(n_labels)
    n_classes = 37
    weight = rng.uniform(0.1, 3.0, n_classes).astype(dtype)
    labels = rng.integers(0, n_classes, n_labels).astype(np.int64)
    labels[rng.random(n_labels) < 0.1] = -100
    cases = {"valid": labels}
    for name, position, value in [("too_large", 0.9, n_classes), ("negative", 0.5, -1),
                                  ("first", 0.0, 10**12), ("last", 1.0, -(2**62))]:
        if n_labels:
            bad = labels.copy()
            # an early bad label in a later chunk too: the first one must be reported
            bad[int(position * (n_labels - 1))] = value
            bad[-1] = n_classes + 5
            cases[name] = bad
    cases["ignore_index_is_a_class"] = labels.clip(0)  # label 3 ignored, not counted
    for name, case in cases.items():
        ignore_index = 3 if name == "ignore_index_is_a_class" else -100
        want_first, want_weight = expected_label_stats(case, weight, ignore_index)
        got = [backend.label_stats(case, weight, ignore_index, threads) for threads in (1, 2, 3)]
        for threads, (first, kept_weight) in zip((1, 2, 3), got):
            assert first == want_first, f"{name} threads={threads}"
            if want_first < 0:
                assert kept_weight == pytest.approx(want_weight, rel=1e-13, abs=0.0), name
        # the sum is taken over fixed chunks: the same bits on any thread count
        assert got[0][1] == got[1][1] == got[2][1] or want_first >= 0, name


# --------------------------------------------------------------------------------------
# cross-entropy with probability targets
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["plain", "weights", "smoothing"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_probs(backend, shape, dtype, option):
    require(backend, "cross_entropy_probs")
    n_rows, n_classes = shape
    rng = np.random.default_rng(4)
    x = logits(shape, dtype, seed=4)
    target = rng.uniform(0.0, 1.0, shape)
    target[target < 0.2] = 0.0
    target = (target / np.maximum(target.sum(axis=1, keepdims=True), 1e-300)).astype(dtype)
    weight = np.ones(n_classes, dtype)
    if option == "weights":
        weight = rng.uniform(0.0, 3.0, n_classes).astype(dtype)
    smoothing = 0.15 if option == "smoothing" else 0.0
    grad_scale = 0.5

    want_loss = np.empty(n_rows)
    want_grad = np.empty(shape)
    reference.cross_entropy_probs(x, target, weight, smoothing, want_loss, want_grad,
                                  grad_scale)
    for threads in THREADS:
        for grad_mode in GRAD_MODES:
            what = f"threads={threads} {grad_mode}"
            x_copy = x.copy()
            loss = np.full(n_rows, 7.0, dtype)
            if grad_mode == "no_grad":
                grad = np.empty((0, 0), dtype)
            else:
                grad = x_copy if grad_mode == "grad_is_x" else np.full(shape, 7.0, dtype)
            backend.cross_entropy_probs(x_copy, target, weight, smoothing, loss, grad,
                                        grad_scale, threads)
            assert_log_values(loss, want_loss, dtype, f"loss {what}")
            if grad_mode != "no_grad":
                assert_gradient(grad, want_grad, dtype, f"grad {what}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", EDGE_CLASSES)
def test_cross_entropy_probs_edge_rows(backend, n_classes, dtype):
    require(backend, "cross_entropy_probs")
    x = np.stack(list(edge_rows(n_classes, dtype).values()))
    target = np.random.default_rng(6).uniform(0, 1, x.shape).astype(dtype)
    target[:, 1] = 0.0
    weight = np.ones(n_classes, dtype)
    want_loss, want_grad = np.empty(x.shape[0]), np.empty(x.shape)
    reference.cross_entropy_probs(x, target, weight, 0.0, want_loss, want_grad, 1.0)
    loss, grad = np.empty(x.shape[0], dtype), np.empty_like(x)
    backend.cross_entropy_probs(x, target, weight, 0.0, loss, grad, 1.0, 2)
    assert_log_values(loss, want_loss, dtype, "loss")
    assert_gradient(grad, want_grad, dtype, "grad")


# --------------------------------------------------------------------------------------
# binary cross-entropy with logits
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_shape", ["elementwise", "row_sums"])
@pytest.mark.parametrize("weights", ["none", "one_row", "per_row"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SOME_SHAPES)
def test_bce_with_logits(backend, shape, dtype, weights, loss_shape):
    require(backend, "bce_with_logits")
    n_rows, n_classes = shape
    rng = np.random.default_rng(7)
    x = logits(shape, dtype, seed=7, scale=5.0)
    if x.size:
        x.flat[::97] = 40.0
        x.flat[1::97] = -40.0
    target = rng.uniform(0, 1, shape).astype(dtype)
    target[target < 0.1] = 0.0
    target[target > 0.9] = 1.0
    if weights == "none":
        weight = np.ones((1, n_classes), dtype)
        pos_weight = np.ones((1, n_classes), dtype)
    elif weights == "one_row":
        weight = rng.uniform(0.0, 2.0, (1, n_classes)).astype(dtype)
        pos_weight = rng.uniform(0.5, 3.0, (1, n_classes)).astype(dtype)
    else:
        weight = rng.uniform(0.0, 2.0, shape).astype(dtype)
        pos_weight = rng.uniform(0.5, 3.0, shape).astype(dtype)
    loss_cols = n_classes if loss_shape == "elementwise" else 1
    grad_scale = 0.25

    want_loss = np.empty((n_rows, loss_cols))
    want_grad = np.empty(shape)
    reference.bce_with_logits(x, target, weight, pos_weight, want_loss, want_grad, grad_scale)
    for threads in THREADS:
        for grad_mode in GRAD_MODES:
            what = f"threads={threads} {grad_mode}"
            x_copy = x.copy()
            loss = np.full((n_rows, loss_cols), 7.0, dtype)
            if grad_mode == "no_grad":
                grad = np.empty((0, 0), dtype)
            else:
                grad = x_copy if grad_mode == "grad_is_x" else np.full(shape, 7.0, dtype)
            backend.bce_with_logits(x_copy, target, weight, pos_weight, loss, grad, grad_scale,
                                    threads)
            assert_log_values(loss, want_loss, dtype, f"loss {what}")
            if grad_mode != "no_grad":
                assert_gradient(grad, want_grad, dtype, f"grad {what}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_special_values(backend, dtype):
    require(backend, "bce_with_logits")
    with np.errstate(over="ignore"):
        x = np.array([SPECIAL_VALUES], dtype=dtype)
    for t in (0.0, 0.3, 1.0):
        target = np.full(x.shape, t, dtype)
        ones = np.ones_like(x)
        want_loss, want_grad = np.empty(x.shape), np.empty(x.shape)
        reference.bce_with_logits(x, target, ones, ones * 2, want_loss, want_grad, 1.0)
        loss, grad = np.empty_like(x), np.empty_like(x)
        backend.bce_with_logits(x, target, ones, ones * 2, loss, grad, 1.0, 2)
        assert_log_values(loss, want_loss, dtype, f"loss t={t}")
        assert_gradient(grad, want_grad, dtype, f"grad t={t}")


# --------------------------------------------------------------------------------------
# backward passes, logsumexp with scale factors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward(backend, shape, dtype):
    x = logits(shape, dtype, seed=8)
    for kernel, forward in (("softmax_backward", reference.softmax),
                            ("log_softmax_backward", reference.log_softmax)):
        require(backend, kernel)
        y64 = np.empty(shape)
        forward(x, y64)
        y = y64.astype(dtype)
        dy = logits(shape, dtype, seed=9, scale=1.0)
        want = np.empty(shape)
        getattr(reference, kernel)(dy, y, want)
        for threads in THREADS:
            for in_place in (False, True):
                dy_copy = dy.copy()
                out = dy_copy if in_place else np.full(shape, 7.0, dtype)
                getattr(backend, kernel)(dy_copy, y, out, threads)
                assert_gradient(out, want, dtype, f"{kernel} threads={threads} in_place={in_place}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SOME_SHAPES)
def test_logsumexp_scaled(backend, shape, dtype):
    require(backend, "logsumexp_scaled")
    rng = np.random.default_rng(10)
    x = logits(shape, dtype, seed=10)
    # Same-sign rows keep the total well conditioned; row 0 negative, row 1 all zero.
    b = rng.uniform(0.1, 2.0, shape).astype(dtype)
    if shape[0] >= 2:
        b[0] = -b[0]
        b[1] = 0.0
    if shape[0] >= 3 and shape[1] >= 2:
        # b == 0 entries are left out: a huge, +inf or NaN logit there changes nothing
        b[2, ::2] = 0.0
        x[2, 0] = 1e30 if dtype == np.float32 else 1e300
        x[2, -2 if shape[1] % 2 == 0 else -1] = np.inf
    want, want_sign = np.empty(shape[0]), np.empty(shape[0])
    reference.logsumexp_scaled(x, b, want, want_sign)
    for threads in THREADS:
        out, sign = np.full(shape[0], 7.0, dtype), np.full(shape[0], 7.0, dtype)
        backend.logsumexp_scaled(x, b, out, sign, threads)
        assert_log_values(out, want, dtype, f"logsumexp_scaled threads={threads}")
        np.testing.assert_array_equal(sign, want_sign)


# --------------------------------------------------------------------------------------
# threads: determinism, oversubscription, concurrent callers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", THREAD_INVARIANCE_SHAPES)
def test_row_reductions_do_not_depend_on_threads(backend, shape, dtype):
    """Reductions are deterministic for any thread count (docs/architecture.md)."""
    x, labels, weight, ignore_index, smoothing = label_problem(shape, dtype, "everything")
    results = []
    for threads in (1, 2, 3):
        lse = np.empty(shape[0], dtype)
        backend.logsumexp(x, lse, threads)
        loss, _ = run_labels(backend, x, labels, weight, ignore_index, smoothing, "no_grad",
                             threads, dtype)
        results.append((lse, loss))
    for lse, loss in results[1:]:
        np.testing.assert_array_equal(lse, results[0][0])
        np.testing.assert_array_equal(loss, results[0][1])


def test_more_threads_than_cores(backend):
    x = logits((5, 3000), np.float32)
    out, want = np.empty(5, np.float32), np.empty(5)
    backend.logsumexp(x, out, 64)
    reference.logsumexp(x, want)
    assert_log_values(out, want, np.float32)


def test_supported_kernels(backend):
    assert {"logsumexp", "softmax", "log_softmax", "cross_entropy_labels"} <= set(
        backend.SUPPORTED_KERNELS)
    for kernel in backend.SUPPORTED_KERNELS:
        assert callable(getattr(backend, kernel))


@pytest.mark.skipif(not availability("cython")[0], reason="cython backend not built")
def test_cython_kernels_reject_operands_that_break_the_contract():
    """The cython entry points read raw data pointers: an operand of the wrong dtype,
    layout, shape or writability must raise, never be read or written out of bounds."""
    cython = load("cython")
    x = np.zeros((3, 5), np.float32)
    out = np.empty(3, np.float32)
    read_only = np.empty((3, 5), np.float32)
    read_only.flags.writeable = False
    bad_calls = {
        "int dtype": (TypeError, lambda: cython.softmax(x.astype(np.int64), np.empty((3, 5)))),
        "mixed dtypes": (ValueError, lambda: cython.logsumexp(x, np.empty(3, np.float64))),
        "short out": (ValueError, lambda: cython.logsumexp(x, np.empty(2, np.float32))),
        "wrong out shape": (ValueError, lambda: cython.softmax(x, np.empty((5, 3), np.float32))),
        "strided x": (ValueError, lambda: cython.softmax(np.zeros((3, 10), np.float32)[:, ::2],
                                                         np.empty((3, 5), np.float32))),
        "read-only out": (ValueError, lambda: cython.softmax(x, read_only)),
        "short labels": (ValueError, lambda: cython.cross_entropy_labels(
            x, np.zeros(2, np.int64), np.ones(5, np.float32), -100, 0.0, out,
            np.empty((0, 0), np.float32), 1.0)),
        "int32 labels": (ValueError, lambda: cython.cross_entropy_labels(
            x, np.zeros(3, np.int32), np.ones(5, np.float32), -100, 0.0, out,
            np.empty((0, 0), np.float32), 1.0)),
        "short weight": (ValueError, lambda: cython.cross_entropy_labels(
            x, np.zeros(3, np.int64), np.ones(4, np.float32), -100, 0.0, out,
            np.empty((0, 0), np.float32), 1.0)),
        "wrong grad shape": (ValueError, lambda: cython.cross_entropy_labels(
            x, np.zeros(3, np.int64), np.ones(5, np.float32), -100, 0.0, out,
            np.empty((3, 4), np.float32), 1.0)),
        "None": (TypeError, lambda: cython.logsumexp(None, out)),
        "int32 labels to label_stats": (ValueError, lambda: cython.label_stats(
            np.zeros(3, np.int32), np.ones(5, np.float32), -100)),
        "strided labels to label_stats": (ValueError, lambda: cython.label_stats(
            np.zeros(6, np.int64)[::2], np.ones(5, np.float32), -100)),
        "int weight to label_stats": (TypeError, lambda: cython.label_stats(
            np.zeros(3, np.int64), np.ones(5, np.int64), -100)),
    }
    for what, (error, call) in bad_calls.items():
        with pytest.raises(error):
            call()
        assert np.all(x == 0), what


def test_numba_exports_everything_and_a_thread_safe_layer():
    available, reason = availability("numba")
    if not available:
        pytest.skip(reason)
    numba_kernels = load("numba")
    # every kernel of the reference, the scoring ones included
    assert numba_kernels.SUPPORTED_KERNELS == reference.SUPPORTED_KERNELS
    x = logits((4, 100), np.float64)
    numba_kernels.logsumexp(x, np.empty(4), 2)
    # omp or tbb where installed; workqueue only as the locked fallback.
    assert numba_kernels.threading_layer_name() in ("omp", "tbb", "workqueue")


@SKIP_IN_PYTHON_MODE
def test_concurrent_python_threads(backend):
    """8 Python threads launching kernels at once: no abort, every result right."""
    check_concurrent_callers(backend)


@SKIP_IN_PYTHON_MODE
def test_numba_serialised_launches(monkeypatch):
    """The fallback for a threading layer that is not thread-safe: launches take a lock."""
    available, reason = availability("numba")
    if not available:
        pytest.skip(reason)
    numba_kernels = load("numba")
    from logitcore._backends import numba_threads

    monkeypatch.setattr(numba_threads, "THREADSAFE_LAYERS", ())
    monkeypatch.setattr(numba_threads, "_concurrent_launches_safe", False)
    check_concurrent_callers(numba_kernels)
    assert numba_threads._concurrent_launches_safe is False


# A layer whose library is missing (libgomp for "omp", libtbb for "tbb"): numba imports
# the layer's extension module when it picks its layer, and the import fails. A None in
# sys.modules makes that import fail the same way (ImportError), before numba is imported.
LAYER_MODULES = {"omp": "numba.np.ufunc.omppool", "tbb": "numba.np.ufunc.tbbpool"}

# In a fresh process (numba picks its layer once): block the unloadable layers, skip if
# the expected one cannot load here, then 8 Python threads launch kernels at once on 2
# numba threads, and a child forked after that launches too; SciPy is the reference.
LAYER_FALLBACK_CHECK = textwrap.dedent("""
    import importlib, os, sys, threading
    for module in {blocked!r}:
        sys.modules[module] = None
    if {expected_module!r}:
        try:
            importlib.import_module({expected_module!r})
        except ImportError as exc:
            print("unloadable", exc)
            sys.exit(0)
    import numpy as np
    from scipy import special
    from logitcore._backends import numba_kernels

    rng = np.random.default_rng(0)
    problems = [rng.normal(size=shape) * 4 for shape in ((64, 1000), (1, 20000), (500, 10))]

    def check(x):
        lse = np.empty(x.shape[0])
        numba_kernels.logsumexp(x, lse, 2)
        probs = np.empty(x.shape)
        numba_kernels.softmax(x, probs, 2)
        return (np.allclose(lse, special.logsumexp(x, axis=1), rtol=1e-13, atol=0)
                and np.allclose(probs, special.softmax(x, axis=1), rtol=1e-12, atol=1e-300))

    assert check(problems[0]), "wrong values"
    wrong = []
    def caller(i):
        for _ in range(15):
            if not check(problems[i % len(problems)]):
                wrong.append(i)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"wrong values from concurrent callers {{sorted(set(wrong))}}"
    pid = os.fork()
    if pid == 0:
        os._exit(0 if check(problems[1]) else 3)
    assert os.waitpid(pid, 0)[1] == 0, "the forked child failed"
    print("layer", numba_kernels.threading_layer_name())
    """)


@SKIP_IN_PYTHON_MODE
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("unloadable, expected", [
    ((), "omp"),                     # the first choice: GNU OpenMP
    (("omp",), "tbb"),               # no libgomp: TBB, where numba can load it
    (("omp", "tbb"), "workqueue"),   # neither (pip's tbb wheel is not found in a venv):
                                     # numba's workqueue layer, launches behind a lock
])
def test_numba_threading_layer_fallback(unloadable, expected):
    """The layer that runs when libraries are missing, and that it computes right values
    from 8 Python threads at once and in a forked child."""
    available, reason = availability("numba")
    if not available:
        pytest.skip(reason)
    code = LAYER_FALLBACK_CHECK.format(
        blocked=[LAYER_MODULES[layer] for layer in unloadable],
        expected_module=LAYER_MODULES.get(expected, ""))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if result.stdout.startswith("unloadable"):
        pytest.skip(f"numba cannot load its {expected} layer here: {result.stdout.strip()}")
    assert result.stdout.split()[-2:] == ["layer", expected], result.stdout[-3000:]


def check_concurrent_callers(backend):
    n_callers, repeats = 8, 15
    problems = []
    for caller in range(n_callers):
        shape = [(64, 1000), (1, 20000), (500, 10), (9, 5000)][caller % 4]
        dtype = DTYPES[caller % 2]
        x, labels, weight, ignore_index, smoothing = label_problem(shape, dtype, "everything",
                                                                   seed=caller)
        lse_want = np.empty(shape[0])
        reference.logsumexp(x, lse_want)
        probs_want = np.empty(shape)
        reference.softmax(x, probs_want)
        loss_want, grad_want = run_labels(reference, x.copy(), labels, weight, ignore_index,
                                          smoothing, "grad", 1, np.float64)
        problems.append((x, labels, weight, ignore_index, smoothing, lse_want, probs_want,
                         loss_want, grad_want))
    failures = []
    barrier = threading.Barrier(n_callers)

    def call(problem):
        x, labels, weight, ignore_index, smoothing, lse_want, probs_want, loss_want, grad_want = (
            problem)
        dtype = x.dtype.type
        try:
            barrier.wait()
            for _ in range(repeats):
                lse = np.empty(x.shape[0], dtype)
                backend.logsumexp(x, lse, 2)
                assert_log_values(lse, lse_want, dtype, "logsumexp")
                probs = np.empty_like(x)
                backend.softmax(x, probs, 2)
                assert_probabilities(probs, probs_want, dtype, "softmax")
                loss, grad = run_labels(backend, x, labels, weight, ignore_index, smoothing,
                                        "grad", 2, dtype)
                assert_log_values(loss, loss_want, dtype, "loss")
                assert_gradient(grad, grad_want, dtype, "grad")
        except Exception as exc:  # reported below with the caller's shape
            failures.append(f"{x.shape} {x.dtype}: {exc!r}")

    callers = [threading.Thread(target=call, args=(p,)) for p in problems]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    assert not any(caller.is_alive() for caller in callers), "a caller hung"
    assert not failures, failures


# --------------------------------------------------------------------------------------
# scoring kernels (logitcore.score); tests/test_score.py checks them through the API
# --------------------------------------------------------------------------------------
# Here the kernels are called directly on the SHAPES that take each schedule (also as
# Python under NUMBA_DISABLE_JIT=1), against SciPy and NumPy's stable argsort.


def _score_outputs(kernel_name, n_items, n_classes, top_k, dtype):
    """Every output of a score kernel, asked (by role, as logitcore.score allocates)."""
    from logitcore._backends import op_table

    shapes = {"field_out": (n_items,), "index_field_out": (n_items,),
              "flag_field_out": (n_items,), "top_k_out": (n_items, top_k),
              "top_k_index_out": (n_items, top_k), "flags_out": (n_items, n_classes)}
    dtypes = {"index_field_out": np.int64, "flag_field_out": np.uint8,
              "top_k_index_out": np.int64, "flags_out": np.uint8}
    return {name[:-len("_out")]: np.full(shapes[role], 7, dtypes.get(role, dtype))
            for name, role in op_table.KERNELS[kernel_name].arguments if role in shapes}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_score_multiclass(backend, shape, dtype, threads):
    import scipy.special

    require(backend, "score_multiclass")
    n_rows, n_classes = shape
    top_k = min(3, n_classes)
    x = logits(shape, dtype)
    if n_classes > 1:
        x[::2, 1] = x[::2].max(1) if n_rows else 0  # ties at the max: the lower index
    labels = np.random.default_rng(1).integers(0, n_classes, n_rows)
    labels[::4] = -100
    out = _score_outputs("score_multiclass", n_rows, n_classes, top_k, dtype)
    backend.score_multiclass(x, labels, -100, top_k, *out.values(), threads)
    x64 = x.astype(np.float64)
    rows = np.arange(n_rows)
    kept = labels != -100
    label = np.where(kept, labels, 0)
    order = np.argsort(-x64, axis=1, kind="stable")
    probs = scipy.special.softmax(x64, axis=1)
    log_probs = scipy.special.log_softmax(x64, axis=1)
    np.testing.assert_array_equal(out["pred"], order[:, 0])
    np.testing.assert_array_equal(out["top_k_indices"], order[:, :top_k])
    np.testing.assert_array_equal(out["correct"], kept & (order[:, 0] == label))
    larger = (x64 > x64[rows, label][:, None]).sum(1)
    np.testing.assert_array_equal(out["label_rank"], np.where(kept, 1 + larger, 0))
    assert_log_values(out["logsumexp"], scipy.special.logsumexp(x64, axis=1), dtype)
    assert_log_values(out["entropy"], scipy.special.entr(probs).sum(1), dtype)
    assert_log_values(out["loss"], np.where(kept, -log_probs[rows, label], 0), dtype)
    assert_probabilities(out["confidence"], probs.max(1), dtype)
    assert_probabilities(out["top_k_probs"], np.take_along_axis(probs, order[:, :top_k], 1),
                         dtype)
    onehot = np.zeros_like(probs)
    onehot[rows, label] = 1.0
    assert_log_values(out["brier"], np.where(kept, ((probs - onehot) ** 2).sum(1), 0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_score_binary_and_multilabel(backend, dtype):
    import scipy.special

    require(backend, "score_binary")
    x = np.array([-30.0, -2.0, -0.1, 0.0, 0.3, 5.0, 40.0, np.nan, np.inf, -np.inf], dtype)
    labels = np.array([0, 1, 1, 0, 1, -100, 1, 1, 1, 0])
    out = _score_outputs("score_binary", x.size, 1, 0, dtype)
    backend.score_binary(x, labels, -100, 0.4, *out.values(), 1)
    p = scipy.special.expit(x.astype(np.float64))
    kept = labels != -100
    assert_probabilities(out["prob"], p, dtype)
    np.testing.assert_array_equal(out["pred"], p >= 0.4)
    np.testing.assert_array_equal(out["correct"], kept & ~np.isnan(p) & ((p >= 0.4) == labels))
    assert_log_values(out["entropy"], scipy.special.entr(p) + scipy.special.entr(1 - p), dtype)
    bce = np.where(labels == 1, -scipy.special.log_expit(x.astype(np.float64)),
                   -scipy.special.log_expit(-x.astype(np.float64)))
    assert_log_values(out["loss"], np.where(kept, bce, 0), dtype)

    require(backend, "score_multilabel")
    grid = logits((7, 5), dtype)
    targets = np.random.default_rng(2).integers(0, 2, (7, 5)).astype(np.uint8)
    threshold = np.array([0.1, 0.3, 0.5, 0.7, 0.9], dtype)
    out = _score_outputs("score_multilabel", 7, 5, 0, dtype)
    backend.score_multilabel(grid, targets, threshold, *out.values(), 1)
    pred = scipy.special.expit(grid.astype(np.float64)) >= threshold
    truth = targets.astype(bool)
    np.testing.assert_array_equal(out["pred"], pred)
    np.testing.assert_array_equal(out["n_predicted"], pred.sum(1))
    np.testing.assert_array_equal(out["true_positives"], (pred & truth).sum(1))
    np.testing.assert_array_equal(out["false_positives"], (pred & ~truth).sum(1))
    np.testing.assert_array_equal(out["false_negatives"], (~pred & truth).sum(1))
    np.testing.assert_array_equal(out["exact_match"], (pred == truth).all(1))
    g = grid.astype(np.float64)
    bce = np.where(truth, -scipy.special.log_expit(g), -scipy.special.log_expit(-g))
    assert_log_values(out["loss"], bce.mean(1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_narrow_tile_stats_with_a_buffer_of_exactly_the_tile(dtype):
    """narrow_tile_stats keeps its sums beyond the tile in the buffer narrow_scratch gives;
    a caller's buffer of exactly classes x rows still works (the sums go elsewhere).
    Rows with a finite max and rows without one (+inf, all -inf) against SciPy."""
    from scipy import special

    numba_kernels = load("numba")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((37, 10)) * 4).astype(dtype)
    x[3] = np.minimum(x[3], 1.0)
    x[3, 2] = x[3, 7] = 2.0  # two terms at the max
    for tile in (x, np.vstack([x, np.full((1, 10), -np.inf, dtype),
                               np.where(np.arange(10) == 4, np.inf, 0).astype(dtype)])):
        n_rows, n_classes = tile.shape
        row_max = np.empty(n_rows, dtype)
        others = np.empty(n_rows)
        counts = np.empty(n_rows, dtype)
        exact = np.empty(n_rows * n_classes, dtype)
        exps = numba_kernels.narrow_tile_stats(tile, row_max, others, counts, exact)
        finite = np.isfinite(row_max)
        lse = row_max[finite] + np.log1p(others[finite] + (counts[finite] - 1.0))
        want = special.logsumexp(tile[finite].astype(np.float64), axis=1)
        np.testing.assert_allclose(lse, want, rtol=4e-7 if dtype == np.float32 else 1e-15)
        np.testing.assert_array_equal(counts[3], 2)
        shifted = (tile[finite] - row_max[finite][:, None]).astype(np.float64)  # exact
        np.testing.assert_allclose(exps.T[finite], np.exp(shifted),
                                   rtol=4e-7 if dtype == np.float32 else 1e-15)
        if not finite.all():
            assert others[-1] == np.inf and counts[-2] == 0 and others[-2] == 0
