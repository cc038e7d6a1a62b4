"""Mathematical properties that must hold on every backend, checked by hypothesis."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import logitcore as lc

REF = dict(backend="numpy")
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def logits(draw, dtype=None, max_rows=6, max_classes=40, wide=False):
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    rows = draw(st.integers(1, max_rows))
    classes = draw(st.integers(1, max_classes))
    bound = 1e4 if wide else 30.0
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32)
    return draw(arrays(dtype, (rows, classes), elements=elements))


def _tol(dtype, scale=1.0):
    return dict(rtol=5e-6 * scale, atol=5e-6 * scale) if dtype == np.float32 else \
        dict(rtol=1e-12 * scale, atol=1e-12 * scale)


@SETTINGS
@given(x=logits(wide=True))
def test_softmax_rows_sum_to_one_and_are_in_range(backend, x):
    p = lc.softmax(x, backend=backend)
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, **_tol(x.dtype, 2))


@SETTINGS
@given(x=logits(wide=True))
def test_log_softmax_is_x_minus_logsumexp(backend, x):
    expected = x.astype(np.float64) - lc.logsumexp(x.astype(np.float64), keepdims=True, **REF)
    got = lc.log_softmax(x, backend=backend)
    np.testing.assert_allclose(got, expected, rtol=_tol(x.dtype)["rtol"],
                               atol=_tol(x.dtype)["atol"] * (1 + np.abs(expected).max()))


@SETTINGS
@given(x=logits(), shift=st.floats(-100, 100))
def test_shift_invariance(backend, x, shift):
    shifted = (x.astype(np.float64) + shift).astype(x.dtype)
    # Compare against the shift actually applied after rounding to x's dtype.
    applied = shifted.astype(np.float64) - x.astype(np.float64)
    np.testing.assert_allclose(lc.softmax(shifted, backend=backend),
                               lc.softmax(x.astype(np.float64) + applied, **REF),
                               **_tol(x.dtype, 10))
    np.testing.assert_allclose(lc.logsumexp(shifted, backend=backend) - applied.mean(axis=1),
                               lc.logsumexp(x, **REF), **_tol(x.dtype, 100))


@SETTINGS
@given(x=logits(wide=True))
def test_logsumexp_bounds(backend, x):
    lse = lc.logsumexp(x, backend=backend).astype(np.float64)
    row_max = x.max(axis=1).astype(np.float64)
    slack = 4e-6 * (1 + np.abs(row_max)) if x.dtype == np.float32 else 1e-13 * (1 + np.abs(row_max))
    assert np.all(lse >= row_max - slack)
    assert np.all(lse <= row_max + np.log(x.shape[1]) + slack)


@SETTINGS
@given(x=logits(max_rows=1), data=st.data())
def test_logsumexp_and_sigmoid_are_monotone(backend, x, data):
    j = data.draw(st.integers(0, x.shape[1] - 1))
    bigger = x.copy()
    bigger[0, j] = np.nextafter(x[0, j], np.inf) + abs(x[0, j]) * 0.5 + 1
    assert lc.logsumexp(bigger, backend=backend)[0] >= lc.logsumexp(x, backend=backend)[0]
    s = lc.sigmoid(np.sort(x[0]), backend=backend)
    assert np.all(np.diff(s) >= 0)


@SETTINGS
@given(x=logits(), data=st.data())
def test_one_hot_probabilities_equal_integer_labels(backend, x, data):
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    one_hot = np.eye(c, dtype=x.dtype)[labels]
    smoothing = data.draw(st.sampled_from([0.0, 0.1]))
    by_labels = lc.cross_entropy(x, labels, reduction="none", label_smoothing=smoothing,
                                 backend=backend)
    by_probs = lc.cross_entropy(x, one_hot, reduction="none", label_smoothing=smoothing,
                                backend=backend)
    np.testing.assert_allclose(by_labels, by_probs, **_tol(x.dtype, 10))


def _central_difference(f, x, h):
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=logits(dtype=np.float64, max_rows=4, max_classes=6), data=st.data())
def test_gradients_match_finite_differences(backend, x, data):
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    weight = np.array(data.draw(st.lists(st.floats(0.5, 2.0), min_size=c, max_size=c)))
    options = dict(weight=weight, label_smoothing=0.1, reduction="mean")
    _, grad = lc.cross_entropy(x, labels, return_grad=True, backend=backend, **options)
    numeric = _central_difference(
        lambda z: float(lc.cross_entropy(z, labels, **REF, **options)), x, 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)

    target = (x > 0).astype(np.float64)
    bce_options = dict(pos_weight=np.full(c, 1.5), reduction="sum")
    _, bce_grad = lc.binary_cross_entropy_with_logits(x, target, return_grad=True,
                                                       backend=backend, **bce_options)
    numeric = _central_difference(
        lambda z: float(lc.binary_cross_entropy_with_logits(z, target, **REF, **bce_options)),
        x, 1e-6)
    np.testing.assert_allclose(bce_grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_reduction_is_identical_for_any_thread_count(backend, dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3001, 37)).astype(dtype)
    labels = rng.integers(0, 37, size=3001)
    results = []
    for n_threads in (1, 2, 3):
        with lc.config(n_threads=n_threads):
            results.append(lc.cross_entropy(x, labels, backend=backend))
            results.append(lc.binary_cross_entropy_with_logits(x, (x > 0).astype(dtype),
                                                               backend=backend))
    assert results[0::2] == [results[0]] * 3  # bit-identical, not merely close
    assert results[1::2] == [results[1]] * 3
