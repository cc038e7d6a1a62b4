"""The public API on every backend against the float64 reference backend.

Covers layouts (C, Fortran, negative strides, read-only, non-last axes), outputs passed
in and in place, the dtype policy, threads 1 and 2, and the edge table (docs/architecture.md).
"""

import numpy as np
import pytest

import logitcore as lc
from conftest import tolerance

REF = dict(backend="numpy")


def layouts(x):
    """The same values in the layouts users hand us."""
    read_only = x.copy()
    read_only.flags.writeable = False
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]  # negative stride, same values
    return {
        "C": x,
        "F": np.asfortranarray(x),
        "negative_stride": reversed_rows,
        "read_only": read_only,
        "strided": np.repeat(x, 2, axis=-1)[..., ::2],
    }


def _logits(rng, shape, dtype):
    return (rng.normal(scale=4.0, size=shape)).astype(dtype)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def n_threads(request):
    with lc.config(n_threads=request.param):
        yield request.param


SHAPES = [(0, 5), (3, 1), (7, 33), (2, 1000), (1, 4097), (65, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_row_ops_match_reference(rng, backend, dtype, n_threads, shape, op):
    x = _logits(rng, shape, dtype)
    func = getattr(lc, op)
    expected = func(x, **REF)
    got = func(x, backend=backend)
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("layout", ["C", "F", "negative_stride", "read_only", "strided"])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax", "sigmoid", "log_sigmoid"])
def test_layouts_give_the_same_values(rng, backend, dtype, layout, op):
    x = _logits(rng, (9, 17), dtype)
    before = x.copy()
    arg = layouts(x)[layout]
    func = getattr(lc, op)
    np.testing.assert_allclose(func(arg, backend=backend), func(x, **REF), **tolerance(dtype))
    np.testing.assert_array_equal(x, before)  # inputs are never modified


@pytest.mark.parametrize("axis", [0, 1, -2, (0, 2), (1, 2), None])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_axes(rng, backend, axis, op):
    x = _logits(rng, (3, 4, 5), np.float64)
    func = getattr(lc, op)
    np.testing.assert_allclose(func(x, axis=axis, backend=backend), func(x, axis=axis, **REF),
                               **tolerance(np.float64))


def test_logsumexp_keepdims_and_out(rng, backend, dtype):
    x = _logits(rng, (4, 6), dtype)
    expected = lc.logsumexp(x, axis=0, keepdims=True, **REF)
    out = np.empty((1, 6), dtype)
    got = lc.logsumexp(x, axis=0, keepdims=True, out=out, backend=backend)
    assert got is out
    np.testing.assert_allclose(out, expected, **tolerance(dtype))


def test_logsumexp_with_b(rng, backend, dtype):
    x = _logits(rng, (5, 8), dtype)
    b = rng.normal(size=(5, 8)).astype(dtype)
    try:
        got, sign = lc.logsumexp(x, b=b, return_sign=True, backend=backend)
    except NotImplementedError as exc:  # a compiled backend may lack it; "auto" must not
        assert backend in str(exc) and "b=" in str(exc)
        got, sign = lc.logsumexp(x, b=b, return_sign=True, backend="auto")
    expected, expected_sign = lc.logsumexp(x, b=b, return_sign=True, **REF)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(sign, expected_sign)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_out_and_in_place(rng, backend, dtype, op, axis):
    x = _logits(rng, (6, 11), dtype)
    func = getattr(lc, op)
    expected = func(x, axis=axis, **REF)
    out = np.empty_like(x)
    assert func(x, axis=axis, out=out, backend=backend) is out
    np.testing.assert_allclose(out, expected, **tolerance(dtype))
    in_place = x.copy()
    assert func(in_place, axis=axis, out=in_place, backend=backend) is in_place
    np.testing.assert_allclose(in_place, expected, **tolerance(dtype))
    fortran_out = np.empty_like(x, order="F")
    func(x, axis=axis, out=fortran_out, backend=backend)
    np.testing.assert_allclose(fortran_out, expected, **tolerance(dtype))


@pytest.mark.parametrize("op", ["sigmoid", "log_sigmoid"])
def test_elementwise(rng, backend, dtype, op):
    x = np.concatenate([_logits(rng, 300, dtype) * 10, np.array([-1e4, -90, 0, 90, 1e4], dtype)])
    func = getattr(lc, op)
    np.testing.assert_allclose(func(x, backend=backend), func(x, **REF), **tolerance(dtype))
    out = np.empty_like(x)
    assert func(x, out=out, backend=backend) is out
    assert np.ndim(func(dtype(0.5), backend=backend)) == 0


@pytest.mark.parametrize("in_dtype,out_dtype", [
    (np.float16, np.float32), (np.int32, np.float64), (np.int64, np.float64),
    (np.uint8, np.float64), (np.bool_, np.float64),
])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax", "sigmoid"])
def test_dtype_policy(backend, in_dtype, out_dtype, op):
    x = np.array([[0, 1, 1], [1, 0, 1]]).astype(in_dtype)
    got = getattr(lc, op)(x, backend=backend)
    assert got.dtype == out_dtype
    np.testing.assert_allclose(got, getattr(lc, op)(x.astype(np.float64), **REF), rtol=1e-6)


EDGE = {
    # row: (logsumexp, softmax, log_softmax) expected by the edge table
    "nan": ([0.0, np.nan, 1.0], np.nan, [np.nan] * 3, [np.nan] * 3),
    "plus_inf": ([0.0, np.inf, 1.0], np.inf, [np.nan] * 3, [np.nan] * 3),
    "all_minus_inf": ([-np.inf] * 3, -np.inf, [np.nan] * 3, [np.nan] * 3),
    "some_minus_inf": ([-np.inf, 0.0, np.log(3.0)], np.log(4.0), [0.0, 0.25, 0.75],
                       [-np.inf, np.log(0.25), np.log(0.75)]),
}


@pytest.mark.parametrize("row", EDGE)
@pytest.mark.parametrize("width", [3, 1003], ids=["short", "long"])
def test_edge_semantics_table(backend, dtype, row, width):
    values, lse, probs, log_probs = EDGE[row]
    # Pad long rows with -inf so the expected values stay the same; the interesting
    # entries sit at the end, past any SIMD-width block.
    pad = np.full(width - 3, -np.inf)
    x = np.concatenate([pad, values]).astype(dtype)[None, :]
    expected_probs = np.concatenate([np.zeros(width - 3) if not np.isnan(probs[0]) else
                                     np.full(width - 3, np.nan), probs])
    expected_log = np.concatenate([np.full(width - 3, -np.inf) if not np.isnan(log_probs[0])
                                   else np.full(width - 3, np.nan), log_probs])
    np.testing.assert_allclose(lc.logsumexp(x, backend=backend), [lse], rtol=1e-6)
    got_probs = lc.softmax(x, backend=backend)
    np.testing.assert_allclose(got_probs, [expected_probs], rtol=1e-6, atol=0)
    if row == "some_minus_inf":
        assert np.all(got_probs[0, :-2] == 0.0)  # masked entries are exactly 0
    np.testing.assert_allclose(lc.log_softmax(x, backend=backend), [expected_log], rtol=1e-6)


def test_empty_class_axis(backend, dtype):
    x = np.empty((3, 0), dtype)
    np.testing.assert_array_equal(lc.logsumexp(x, backend=backend), np.full(3, -np.inf))
    assert lc.softmax(x, backend=backend).shape == (3, 0)
    assert lc.log_softmax(x, backend=backend).shape == (3, 0)


# --- losses -----------------------------------------------------------------------

CE_CASES = [
    dict(),
    dict(weight=True),
    dict(ignore=True),
    dict(label_smoothing=0.1),
    dict(weight=True, ignore=True, label_smoothing=0.25),
]


def _ce_args(rng, shape, dtype, case):
    n, c = shape
    logits = _logits(rng, shape, dtype)
    labels = rng.integers(0, c, size=n)
    if case.get("ignore") and n:
        labels[:: 3] = -100
    weight = rng.uniform(0.5, 2.0, size=c).astype(dtype) if case.get("weight") else None
    return logits, labels, dict(weight=weight, label_smoothing=case.get("label_smoothing", 0.0))


def _loss_tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(5, 1), (17, 40), (3, 3000), (129, 10)])
@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: "-".join(c) or "plain")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_labels(rng, backend, dtype, n_threads, shape, case, reduction):
    logits, labels, options = _ce_args(rng, shape, dtype, case)
    before = logits.copy()
    loss, grad = lc.cross_entropy(logits, labels, reduction=reduction, return_grad=True,
                                  backend=backend, **options)
    ref_loss, ref_grad = lc.cross_entropy(logits, labels, reduction=reduction,
                                          return_grad=True, **REF, **options)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, **_loss_tolerance(dtype))
    np.testing.assert_allclose(grad, ref_grad, **_loss_tolerance(dtype))
    np.testing.assert_array_equal(logits, before)
    loss_only = lc.cross_entropy(logits, labels, reduction=reduction, backend=backend, **options)
    np.testing.assert_allclose(loss_only, ref_loss, **_loss_tolerance(dtype))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_probabilities(rng, backend, dtype, reduction, smoothing):
    logits = _logits(rng, (13, 7), dtype)
    target = lc.softmax(_logits(rng, (13, 7), dtype), **REF)
    weight = rng.uniform(0.5, 2.0, size=7)
    args = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, return_grad=True)
    loss, grad = lc.cross_entropy(logits, target, backend=backend, **args)
    ref_loss, ref_grad = lc.cross_entropy(logits, target, **REF, **args)
    np.testing.assert_allclose(loss, ref_loss, **_loss_tolerance(dtype))
    np.testing.assert_allclose(grad, ref_grad, **_loss_tolerance(dtype))


def test_cross_entropy_grad_in_place_and_axis(rng, backend, dtype):
    logits = _logits(rng, (4, 6, 3), dtype)  # class axis 1
    labels = rng.integers(0, 6, size=(4, 3))
    ref_loss, ref_grad = lc.cross_entropy(logits, labels, axis=1, return_grad=True, **REF)
    work = logits.copy()
    loss, grad = lc.cross_entropy(work, labels, axis=1, return_grad=True, grad_out=work,
                                  backend=backend)
    assert grad is work
    np.testing.assert_allclose(loss, ref_loss, **_loss_tolerance(dtype))
    np.testing.assert_allclose(work, ref_grad, **_loss_tolerance(dtype))
    # Unbatched input: (C,) logits with a 0-d label.
    np.testing.assert_allclose(
        lc.cross_entropy(logits[0, :, 0], labels[0, 0], backend=backend),
        lc.cross_entropy(logits[0, :, 0][None], labels[0, :1], **REF), **_loss_tolerance(dtype))


def test_cross_entropy_masked_classes(backend, dtype):
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, -np.inf, -np.inf]], dtype)
    labels = np.array([2, 0])
    loss, grad = lc.cross_entropy(logits, labels, reduction="none", return_grad=True,
                                  backend=backend)
    ref_loss, ref_grad = lc.cross_entropy(logits, labels, reduction="none",
                                          return_grad=True, **REF)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-7)
    assert grad[0, 1] == 0.0 and grad[1, 1] == 0.0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weights", ["none", "per_class", "full", "scalar"])
def test_bce_with_logits(rng, backend, dtype, n_threads, reduction, weights):
    logits = _logits(rng, (37, 9), dtype) * 5
    target = rng.uniform(size=(37, 9)).astype(dtype)
    weight = {"none": None, "per_class": rng.uniform(0.5, 2, 9), "scalar": 0.7,
              "full": rng.uniform(0.5, 2, (37, 9))}[weights]
    pos_weight = None if weights == "none" else rng.uniform(0.5, 3.0, 9)
    args = dict(weight=weight, pos_weight=pos_weight, reduction=reduction, return_grad=True)
    loss, grad = lc.binary_cross_entropy_with_logits(logits, target, backend=backend, **args)
    ref_loss, ref_grad = lc.binary_cross_entropy_with_logits(logits, target, **REF, **args)
    np.testing.assert_allclose(loss, ref_loss, **_loss_tolerance(dtype))
    np.testing.assert_allclose(grad, ref_grad, **_loss_tolerance(dtype))
    work = logits.copy()
    _, grad_in_place = lc.binary_cross_entropy_with_logits(
        work, target, backend=backend, grad_out=work, **args)
    assert grad_in_place is work
    np.testing.assert_allclose(work, ref_grad, **_loss_tolerance(dtype))


def test_bce_0d_and_1d(backend):
    for shape in [(), (5,)]:
        x = np.full(shape, 0.3)
        t = np.full(shape, 1.0)
        np.testing.assert_allclose(
            lc.binary_cross_entropy_with_logits(x, t, reduction="none", backend=backend),
            -np.log(1 / (1 + np.exp(-x))), rtol=1e-12)


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_backward(rng, backend, dtype, op, axis):
    x = _logits(rng, (8, 21), dtype)
    forward = lc.softmax if op == "softmax_backward" else lc.log_softmax
    y = forward(x, axis=axis, **REF)
    dy = rng.normal(size=x.shape).astype(dtype)
    func = getattr(lc, op)
    expected = func(dy, y, axis=axis, **REF)
    np.testing.assert_allclose(func(dy, y, axis=axis, backend=backend), expected,
                               **_loss_tolerance(dtype))
    in_place = dy.copy()
    assert func(in_place, y, axis=axis, out=in_place, backend=backend) is in_place
    np.testing.assert_allclose(in_place, expected, **_loss_tolerance(dtype))
