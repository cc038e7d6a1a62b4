"""Kernel numerics that earlier versions got wrong, on every backend and every code path.

Each test checks values against an independent reference (mpmath at high precision,
PyTorch, SciPy), never against logitcore's own numpy backend:

* tiny terms of a sum of exps with a unique maximum: logsumexp([0, -40]) is
  4.248354255291589e-18, not 0 (SciPy gh-18295); the same for log_softmax and the
  cross-entropy's internal logsumexp;
* rows whose label is ignore_index: loss and gradient as torch gives them, whatever the
  row's logits hold;
* float32 inputs near the ends of the range, whose loss is finite although an
  intermediate of the naive formula is not.

The kernels are called directly where the code path (whole rows, the class split of few
long rows, the narrow path of short rows) depends on the thread count.
"""

import math

import mpmath
import numpy as np
import pytest
import scipy.special

import logitcore as lc
from logitcore._backends import load

from conftest import NUMBA_PYTHON_MODE

mpmath.mp.dps = 60

# Shapes that take every path of the compiled backends: narrow rows (< 64 classes), whole
# rows, rows long enough to be cut into pieces (cython: > 4096; numba: > 2048 classes in
# blocks), and few rows of 70000+ classes, whose class axis is split across threads.
NARROW, WHOLE, LONG, SPLIT = (5000, 10), (7, 1000), (3, 9000), (2, 70001)
PATH_SHAPES = [NARROW, WHOLE, LONG, SPLIT]
if NUMBA_PYTHON_MODE:  # kernels run as Python: the smallest shapes on the same paths
    NARROW, WHOLE, LONG, SPLIT = (300, 10), (3, 100), (2, 2100), (2, 4200)
    PATH_SHAPES = [NARROW, WHOLE, LONG, SPLIT]
THREADS = (1, 2, 3)


def exact_logsumexp(row):
    """log(sum exp(x)) of a row of floats, to 60 digits, rounded to float64."""
    return float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row)))


def exact_logsumexp_of_repeats(top, value, count):
    """logsumexp of a row holding `top` once and `value` count times (closed form)."""
    top, value = mpmath.mpf(float(top)), mpmath.mpf(float(value))
    return float(top + mpmath.log1p(count * mpmath.exp(value - top)))


def tolerance(dtype):
    """Relative error allowed, and an absolute one of the smallest normal number: a
    backend may flush an exp that lands in the subnormal range to 0."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=1e-6, atol=float(np.finfo(np.float32).tiny))
    return dict(rtol=4e-15, atol=float(np.finfo(np.float64).tiny))


def kernel_logsumexp(backend, x, n_threads):
    out = np.empty(x.shape[0], x.dtype)
    load(backend).logsumexp(x, out, n_threads)
    return out


def kernel_log_softmax(backend, x, n_threads):
    out = np.empty_like(x)
    load(backend).log_softmax(x, out, n_threads)
    return out


def kernel_cross_entropy(backend, x, labels, n_threads, weight=None, ignore_index=-100,
                         label_smoothing=0.0, want_grad=False):
    """Row losses and (if wanted) the gradient of their sum."""
    n_rows, n_classes = x.shape
    weight = np.ones(n_classes, x.dtype) if weight is None else weight.astype(x.dtype)
    loss = np.empty(n_rows, x.dtype)
    grad = np.empty_like(x) if want_grad else np.empty((0, 0), x.dtype)
    load(backend).cross_entropy_labels(x, labels.astype(np.int64), weight, ignore_index,
                                       label_smoothing, loss, grad, 1.0, n_threads)
    return loss, grad


def rows_with_unique_max(shape, dtype, low):
    """Each row: 0 at one position (varying with the row) and `low` everywhere else."""
    x = np.full(shape, low, dtype)
    top = np.arange(shape[0]) * 7 % shape[1]
    x[np.arange(shape[0]), top] = 0
    return x, top


# ------------------------------------------------------------------ tiny terms: logsumexp


@pytest.mark.parametrize("dtype,k_max", [(np.float64, 745), (np.float32, 104)])
def test_logsumexp_of_zero_and_minus_k_keeps_the_tiny_term(backend, dtype, k_max):
    """logsumexp([0, -k]) = log1p(e^-k) ~ e^-k, down to the subnormal range."""
    k = np.arange(1, k_max + 1)
    x = np.zeros((k.size, 2), dtype)
    x[:, 1] = -k
    want = [exact_logsumexp_of_repeats(0.0, -float(v), 1) for v in k]
    for n_threads in (1, 2):
        np.testing.assert_allclose(kernel_logsumexp(backend, x, n_threads), want,
                                   **tolerance(dtype))
    # the public API, and SciPy's own example (gh-18295)
    assert lc.logsumexp(np.array([0.0, -40.0]), backend=backend) == pytest.approx(
        4.248354255291589e-18, rel=1e-15, abs=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", PATH_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_unique_max_with_many_tiny_terms_on_every_path(backend, dtype, shape):
    """A unique maximum and C - 1 terms of e^-40: lse = log1p((C - 1) e^-40), on the narrow,
    whole-row, long-row and class-split paths, identical for any thread count."""
    x, top = rows_with_unique_max(shape, dtype, -40)
    lse_want = exact_logsumexp_of_repeats(0.0, dtype(-40), shape[1] - 1)
    results = []
    for n_threads in THREADS:
        lse = kernel_logsumexp(backend, x, n_threads)
        log_probs = kernel_log_softmax(backend, x, n_threads)
        loss, _ = kernel_cross_entropy(backend, x, top, n_threads)
        np.testing.assert_allclose(lse, lse_want, **tolerance(dtype))
        # log_softmax at the max is -lse; elsewhere -40 - lse, exact in float
        np.testing.assert_allclose(log_probs[np.arange(shape[0]), top], -lse_want,
                                   **tolerance(dtype))
        # cross-entropy of the max's label is lse - x[y] = lse
        np.testing.assert_allclose(loss, lse_want, **tolerance(dtype))
        results.append((lse, log_probs, loss))
    for later in results[1:]:
        for got, first in zip(later, results[0]):
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_at_the_max_and_random_rows_match_mpmath(backend, dtype, rng):
    """Rows with 1, 2 or 3 copies of their maximum, the others spread over [-60, 0]."""
    rows = []
    for n_ties in (1, 2, 3):
        row = -rng.uniform(0.0, 60.0, 40)
        row[:n_ties] = 0.0
        rows.append(rng.permutation(row) + rng.uniform(-5, 5))
    x = np.array(rows, dtype)
    want = [exact_logsumexp(row) for row in x]
    for n_threads in (1, 2):
        np.testing.assert_allclose(kernel_logsumexp(backend, x, n_threads), want,
                                   rtol=1e-6 if dtype == np.float32 else 2e-15)


def test_log_softmax_and_cross_entropy_of_zero_and_minus_forty(backend):
    """log_softmax([0, -40])[0] = -4.25e-18 and the loss of label 0 is +4.25e-18 (mpmath;
    torch gives 0 for both)."""
    tiny = exact_logsumexp([0.0, -40.0])
    assert tiny == pytest.approx(4.248354255291589e-18, rel=1e-15, abs=0)
    x = np.array([[0.0, -40.0]])
    assert lc.log_softmax(x, backend=backend)[0, 0] == pytest.approx(-tiny, rel=1e-15, abs=0)
    loss = lc.cross_entropy(x, np.array([0]), reduction="none", backend=backend)
    assert loss[0] == pytest.approx(tiny, rel=1e-15, abs=0)
    weighted = lc.cross_entropy(x, np.array([0]), weight=np.array([3.0, 1.0]),
                                reduction="sum", backend=backend)
    assert weighted == pytest.approx(3 * tiny, rel=1e-15, abs=0)


@pytest.mark.parametrize("shape", PATH_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_edge_rows_keep_their_values_on_every_path(backend, shape):
    """NaN -> NaN, +inf -> +inf, all -inf -> -inf, masked -inf -> finite (SciPy's
    logsumexp; torch's log_softmax), embedded in inputs of each path's shape."""
    torch = pytest.importorskip("torch")  # a test peer: skips without it
    x, _ = rows_with_unique_max(shape, np.float64, -3.0)
    edges = {0: np.nan, 1: np.inf}
    for row, value in edges.items():
        x[row, shape[1] // 2] = value
    if shape[0] > 2:
        x[2] = -np.inf
    x[-1, : shape[1] // 2] = -np.inf  # masking (the last row keeps its max)
    x[-1, -1] = 0.0
    want = scipy.special.logsumexp(x, axis=1)
    for n_threads in THREADS:
        got = kernel_logsumexp(backend, x, n_threads)
        np.testing.assert_allclose(got, want, rtol=1e-14)
        log_probs = kernel_log_softmax(backend, x, n_threads)
        # torch's: NaN rows for NaN, +inf and all -inf (scipy's +inf row is -inf but at +inf)
        want_log_probs = torch.log_softmax(torch.tensor(x), dim=1).numpy()
        np.testing.assert_allclose(log_probs, want_log_probs, rtol=1e-13, atol=1e-15)
    empty = np.empty((3, 0))
    np.testing.assert_array_equal(kernel_logsumexp(backend, empty, 1), -np.inf)


# ------------------------------------------------------------------ ignored rows


def torch_cross_entropy(x, labels, **kwargs):
    """torch's per-row loss and the gradient of its sum, in float64."""
    torch = pytest.importorskip("torch")  # a test peer: skips without it
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="none",
                                             **kwargs)
    loss.sum().backward()
    return loss.detach().numpy(), logits.grad.numpy()


@pytest.mark.parametrize("bad_row", ["nan", "+inf", "all -inf"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", [NARROW, WHOLE, SPLIT], ids=lambda s: f"{s[0]}x{s[1]}")
def test_ignored_rows_match_torch_whatever_their_logits(backend, shape, label_smoothing,
                                                        bad_row, rng):
    """Rows whose label is ignore_index have loss 0; their gradient is torch's: NaN where
    the row's softmax is NaN (it holds NaN or +inf, or only -inf), else 0."""
    torch = pytest.importorskip("torch")  # a test peer: skips without it
    n_rows, n_classes = shape
    x = rng.normal(size=shape)
    labels = rng.integers(0, n_classes, n_rows)
    if bad_row == "all -inf":
        x[0] = -np.inf
    else:
        x[0, 1] = np.nan if bad_row == "nan" else np.inf
    x[-1, 0] = -np.inf  # a masked class in a finite ignored row
    labels[0] = labels[-1] = -100
    weight = rng.uniform(0.5, 2.0, n_classes)
    want_loss, want_grad = torch_cross_entropy(
        x, labels, weight=torch.tensor(weight), label_smoothing=label_smoothing)
    assert np.isnan(want_grad[0]).all() and (want_grad[-1] == 0).all()
    for n_threads in (1, 2):
        loss, grad = kernel_cross_entropy(backend, x, labels, n_threads, weight=weight,
                                          label_smoothing=label_smoothing, want_grad=True)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-15)
    # through the public API too
    loss, grad = lc.cross_entropy(x, labels, weight=weight, label_smoothing=label_smoothing,
                                  reduction="none", return_grad=True, backend=backend)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-15)


# ------------------------------------------------------------------ float32 extremes

BIG = np.float32(3.0e38)


@pytest.mark.parametrize("shape", [(4, 10), (4, 1000)], ids=["narrow", "rows"])
def test_label_smoothing_on_float32_extremes_stays_finite(backend, shape, rng):
    """Rows of +-3e38: lse - x[c] is ~6e38 for the low classes, beyond float32, but
    eps / C times their weighted sum is finite (torch in float64 says ~1e37)."""
    torch = pytest.importorskip("torch")  # a test peer: skips without it
    x = np.where(rng.random(shape) < 0.5, BIG, -BIG).astype(np.float32)
    x[:, 0] = BIG
    labels = np.zeros(shape[0], np.int64)
    weight = rng.uniform(0.5, 2.0, shape[1])
    want_loss, want_grad = torch_cross_entropy(
        x.astype(np.float64), labels, weight=torch.tensor(weight), label_smoothing=0.05)
    assert np.all(want_loss < np.finfo(np.float32).max)
    for n_threads in (1, 2):
        loss, grad = kernel_cross_entropy(backend, x, labels, n_threads, weight=weight,
                                          label_smoothing=0.05, want_grad=True)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_bce_with_a_full_shape_weight_on_float32_extremes(backend):
    """A tiny element weight times a term beyond float32 (pos_weight * softplus(3e38) =
    6e38): the loss, 4.5e35, is finite (torch in float64)."""
    torch = pytest.importorskip("torch")  # a test peer: skips without it
    x = np.array([[-BIG, BIG, -BIG], [BIG, -BIG, 1.0]], np.float32)
    target = np.array([[0.5, 0.25, 1.0], [0.0, 0.5, 0.5]], np.float32)
    weight = np.array([[1e-3, 1e-3, 1e-4], [1e-3, 1e-3, 2.0]], np.float32)
    pos_weight = np.array([3.0, 3.0, 3.0], np.float32)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(x, dtype=torch.float64), torch.tensor(target, dtype=torch.float64),
        weight=torch.tensor(weight, dtype=torch.float64),
        pos_weight=torch.tensor(pos_weight, dtype=torch.float64), reduction="none").numpy()
    assert np.all(np.abs(want) < np.finfo(np.float32).max)
    got = lc.binary_cross_entropy_with_logits(x, target, weight=weight, pos_weight=pos_weight,
                                              reduction="none", backend=backend)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert math.isfinite(float(lc.binary_cross_entropy_with_logits(
        x, target, weight=weight, pos_weight=pos_weight, reduction="sum", backend=backend)))
