"""The reference backend against independent implementations: SciPy and PyTorch.

Everything else is tested against the reference, so the reference itself must agree with
the libraries whose semantics the API promises.
"""

import itertools

import numpy as np
import pytest
import scipy.special as sp

import logitcore as lc

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch tests skip cleanly
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
REF = dict(backend="numpy")


def _random(rng, shape, scale=3.0):
    return rng.normal(scale=scale, size=shape)


# --- scipy ------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [
    ((5, 7), -1), ((5, 7), 0), ((2, 3, 4), (0, 2)), ((2, 3, 4), None), ((6,), 0),
    ((3, 0), -1), ((0, 4), -1),
])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_matches_scipy(rng, shape, axis, keepdims):
    x = _random(rng, shape)
    expected = sp.logsumexp(x, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(lc.logsumexp(x, axis=axis, keepdims=keepdims, **REF),
                               expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("return_sign", [False, True])
def test_logsumexp_with_b_matches_scipy(rng, return_sign):
    x = _random(rng, (6, 9))
    b = rng.normal(size=(6, 9))
    expected = sp.logsumexp(x, axis=1, b=b, return_sign=return_sign)
    got = lc.logsumexp(x, axis=1, b=b, return_sign=return_sign, **REF)
    if return_sign:
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-13)
        np.testing.assert_array_equal(got[1], expected[1])
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-13)
    # b broadcast along rows
    b_row = rng.uniform(0.1, 2.0, size=9)
    np.testing.assert_allclose(lc.logsumexp(x, b=b_row, **REF),
                               sp.logsumexp(x, axis=-1, b=b_row), rtol=1e-13)


@pytest.mark.parametrize("x,b", [
    ([1000.0, 0.0], [0.0, 1.0]),          # a b == 0 term must not set the shift
    ([np.inf, 0.0], [0.0, 1.0]),          # nor add 0 * inf = NaN
    ([np.nan, 1.0], [0.0, 2.0]),
    ([-np.inf, 3.0, 5.0], [1.0, 0.0, -1.0]),
    ([1.0, 2.0], [0.0, 0.0]),             # nothing left: log 0 = -inf, sign 0
    ([np.inf, 0.0], [1.0, -1.0]),
])
def test_logsumexp_b_zero_terms_match_scipy(x, b):
    x, b = np.array(x), np.array(b)
    expected = sp.logsumexp(x, b=b, return_sign=True)
    got = lc.logsumexp(x, b=b, return_sign=True, **REF)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-14)


@pytest.mark.parametrize("op,scipy_op", [(lc.softmax, sp.softmax), (lc.log_softmax, sp.log_softmax)])
@pytest.mark.parametrize("axis", [-1, 0, (0, 1)])
def test_softmax_family_matches_scipy(rng, op, scipy_op, axis):
    x = _random(rng, (4, 5, 6), scale=10.0)
    # scipy's log_softmax is x - max - log(sum), whose log of a sum near 1 is off by ~1e-16
    # absolute: relative error 1e-10 at log-probabilities near -1e-6, where ours (log1p of
    # the other terms) is exact (see tests/test_trust_numerics.py against mpmath).
    atol = 1e-15 if op is lc.log_softmax else 1e-300
    np.testing.assert_allclose(op(x, axis=axis, **REF), scipy_op(x, axis=axis),
                               rtol=1e-13, atol=atol)


def test_sigmoid_matches_scipy(rng):
    x = np.concatenate([_random(rng, 200, scale=30.0), [-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    np.testing.assert_allclose(lc.sigmoid(x, **REF), sp.expit(x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(lc.log_sigmoid(x, **REF), sp.log_expit(x), rtol=1e-14)


EDGE_ROWS = {
    "nan": [0.0, np.nan, 1.0],
    "plus_inf": [0.0, np.inf, 1.0],
    "all_minus_inf": [-np.inf, -np.inf, -np.inf],
    "some_minus_inf": [-np.inf, 0.0, np.log(3.0)],
}


@pytest.mark.parametrize("row", EDGE_ROWS)
def test_edge_rows_match_scipy(row):
    x = np.array([EDGE_ROWS[row]])
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(lc.logsumexp(x, **REF), sp.logsumexp(x, axis=-1), rtol=1e-15)
        np.testing.assert_allclose(lc.softmax(x, **REF), sp.softmax(x, axis=-1), rtol=1e-15)
        # scipy's log_softmax keeps -inf beside a +inf entry; logitcore follows torch
        # (a NaN row), which is the log of scipy's softmax in every edge case.
        np.testing.assert_allclose(lc.log_softmax(x, **REF), np.log(sp.softmax(x, axis=-1)),
                                   rtol=1e-15)


# --- torch ------------------------------------------------------------------------

def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


CE_OPTIONS = list(itertools.product(
    ["none", "mean", "sum"],          # reduction
    [False, True],                    # class weights
    [-100, 1],                        # ignore_index (1 is a real class here)
    [0.0, 0.2],                       # label smoothing
))


@needs_torch
@pytest.mark.parametrize("reduction,weighted,ignore_index,smoothing", CE_OPTIONS)
def test_cross_entropy_labels_match_torch(rng, reduction, weighted, ignore_index, smoothing):
    n, c = 11, 5
    logits = _random(rng, (n, c))
    labels = rng.integers(0, c, size=n)
    labels[[2, 7]] = ignore_index if ignore_index != 1 else 1
    if ignore_index == -100:
        labels[3] = -100
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    x_t = _t(logits).requires_grad_(True)
    expected = F.cross_entropy(
        x_t, _t(labels), weight=None if weight is None else _t(weight),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    expected.sum().backward()
    loss, grad = lc.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index,
                                  reduction=reduction, label_smoothing=smoothing,
                                  return_grad=True, **REF)
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=1e-11, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probabilities_match_torch(rng, reduction, weighted, smoothing):
    n, c = 9, 6
    logits = _random(rng, (n, c))
    target = sp.softmax(rng.normal(size=(n, c)), axis=1)
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    x_t = _t(logits).requires_grad_(True)
    expected = F.cross_entropy(x_t, _t(target), weight=None if weight is None else _t(weight),
                               reduction=reduction, label_smoothing=smoothing)
    expected.sum().backward()
    loss, grad = lc.cross_entropy(logits, target, weight=weight, reduction=reduction,
                                  label_smoothing=smoothing, return_grad=True, **REF)
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=1e-11, atol=1e-15)


@needs_torch
def test_cross_entropy_class_axis_1_matches_torch(rng):
    logits = _random(rng, (3, 4, 5, 2))  # (N, C, d1, d2), torch's layout
    labels = rng.integers(0, 4, size=(3, 5, 2))
    expected = F.cross_entropy(_t(logits), _t(labels), reduction="none").numpy()
    np.testing.assert_allclose(
        lc.cross_entropy(logits, labels, axis=1, reduction="none", **REF), expected, rtol=1e-12)


@needs_torch
def test_cross_entropy_all_ignored_is_nan_like_torch():
    logits = np.zeros((3, 4))
    labels = np.full(3, -100)
    x_t = _t(logits).requires_grad_(True)
    expected = F.cross_entropy(x_t, _t(labels))
    expected.backward()
    loss, grad = lc.cross_entropy(logits, labels, return_grad=True, **REF)
    assert np.isnan(loss) and torch.isnan(expected)
    np.testing.assert_array_equal(grad, x_t.grad.numpy())


@needs_torch
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_shape", [None, (), (4,), (3, 4)])
@pytest.mark.parametrize("pos_weighted", [False, True])
def test_bce_with_logits_matches_torch(rng, reduction, weight_shape, pos_weighted):
    logits = _random(rng, (3, 4), scale=5.0)
    target = rng.uniform(size=(3, 4))
    weight = None if weight_shape is None else rng.uniform(0.5, 2.0, size=weight_shape)
    pos_weight = rng.uniform(0.5, 3.0, size=4) if pos_weighted else None
    x_t = _t(logits).requires_grad_(True)
    expected = F.binary_cross_entropy_with_logits(
        x_t, _t(target), weight=None if weight is None else _t(np.asarray(weight)),
        pos_weight=None if pos_weight is None else _t(pos_weight), reduction=reduction)
    expected.sum().backward()
    loss, grad = lc.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction,
        return_grad=True, **REF)
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=1e-11, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("forward,backward", [
    ("softmax", lc.softmax_backward), ("log_softmax", lc.log_softmax_backward)])
def test_backward_matches_torch_autograd(rng, forward, backward):
    x = _random(rng, (4, 7))
    dy = rng.normal(size=(4, 7))
    x_t = _t(x).requires_grad_(True)
    y_t = getattr(torch, forward)(x_t, dim=-1)
    y_t.backward(_t(dy))
    got = backward(dy, y_t.detach().numpy(), **REF)
    np.testing.assert_allclose(got, x_t.grad.numpy(), rtol=1e-12, atol=1e-15)


@needs_torch
def test_log_sigmoid_matches_torch(rng):
    x = np.concatenate([_random(rng, 100, scale=40.0), [-1e4, 1e4, 0.0]])
    np.testing.assert_allclose(lc.log_sigmoid(x, **REF), F.logsigmoid(_t(x)).numpy(),
                               rtol=1e-14)
