"""The Python API layer against SciPy and PyTorch where it decides the result: class axes
moved anywhere, odd ``out`` / ``grad_out`` arrays, outputs that alias inputs, byte
order, argument ranges, and SciPy's own logsumexp / softmax / log_softmax semantics.

Every test runs on every backend; references are SciPy and torch autograd.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.special as sc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logitcore as lc
from logitcore import _config

torch = pytest.importorskip("torch")
F = torch.nn.functional

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
CLOSE = dict(rtol=1e-12, atol=1e-13)  # float64 against SciPy / torch


# --- references ---------------------------------------------------------------------

def _torch_over_axes(function, t, axes):
    """torch softmax / log_softmax over several axes: move them last, flatten, apply."""
    last = tuple(range(t.ndim - len(axes), t.ndim))
    moved = torch.movedim(t, axes, last)
    flat = moved.reshape(*moved.shape[:t.ndim - len(axes)], -1)
    return torch.movedim(function(flat, dim=-1).reshape(moved.shape), last, axes)


def _torch_backward(function, x, dy, axes):
    """(y, dL/dx) of y = function(x) over ``axes`` for L = sum(y * dy), by autograd."""
    xt = torch.tensor(x, requires_grad=True)
    y = _torch_over_axes(function, xt, axes)
    (grad,) = torch.autograd.grad(y, xt, torch.tensor(dy))
    return y.detach().numpy(), grad.numpy()


def _torch_ce(logits, target, axis, **kwargs):
    """torch cross-entropy loss and gradient with the class axis at ``axis``."""
    xt = torch.tensor(logits, requires_grad=True)
    moved = torch.movedim(xt, axis, 1) if logits.ndim > 1 else xt
    target_t = torch.tensor(target)
    if target.dtype.kind == "f" and logits.ndim > 1:
        target_t = torch.movedim(target_t, axis, 1)
    if "weight" in kwargs and kwargs["weight"] is not None:
        kwargs["weight"] = torch.tensor(kwargs["weight"])
    loss = F.cross_entropy(moved, target_t, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), xt)
    return loss.detach().numpy(), grad.numpy()


def _torch_bce(logits, target, weight=None, pos_weight=None, reduction="mean"):
    xt = torch.tensor(logits, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(
        xt, torch.tensor(target), reduction=reduction,
        weight=None if weight is None else torch.tensor(weight),
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight))
    (grad,) = torch.autograd.grad(loss.sum(), xt)
    return loss.detach().numpy(), grad.numpy()


# --- 1. class axes anywhere, results never transposed ----------------------------

SQUARE_SHAPES = [(3, 3), (4, 4), (2, 2, 2), (3, 3, 3), (2, 3, 2)]
OUT_LAYOUTS = [None, "C", "F", "strided"]


def _out_like(shape, dtype, layout):
    """An output array of ``shape`` in the given memory layout (None: no out=)."""
    if layout is None:
        return None
    if layout == "C":
        return np.full(shape, np.nan, dtype)
    if layout == "F":
        return np.asfortranarray(np.full(shape, np.nan, dtype))
    wide = np.full(tuple(2 * n for n in shape), np.nan, dtype)  # every other element
    return wide[tuple(slice(None, None, 2) for _ in shape)]


@st.composite
def _class_axes(draw):
    """(shape, axis as a user would write it, the same axes sorted and non-negative)."""
    shape = draw(st.sampled_from(SQUARE_SHAPES))
    ndim = len(shape)
    kind = draw(st.sampled_from(["int", "tuple", "none"]))
    if kind == "none":
        return shape, None, tuple(range(ndim))
    if kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
        return shape, axis, (axis % ndim,)
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    # as the user may write it: any order, some negative
    axis = tuple(a - ndim if draw(st.booleans()) else a for a in chosen)
    return shape, axis, tuple(sorted(chosen))


def _data(seed, shape, scale=3.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


@SETTINGS
@given(case=_class_axes(), layout=st.sampled_from(OUT_LAYOUTS), seed=st.integers(0, 2**16))
def test_softmax_and_log_softmax_with_any_class_axes_equal_scipy(backend, case, layout, seed):
    shape, axis, _ = case
    x = _data(seed, shape)
    for ours, theirs in ((lc.softmax, sc.softmax), (lc.log_softmax, sc.log_softmax)):
        out = _out_like(shape, x.dtype, layout)
        result = ours(x, axis=axis, out=out, backend=backend)
        if out is not None:
            assert result is out
        np.testing.assert_allclose(result, theirs(x, axis=axis), **CLOSE)


@SETTINGS
@given(case=_class_axes(), layout=st.sampled_from(OUT_LAYOUTS), keepdims=st.booleans(),
       seed=st.integers(0, 2**16))
def test_logsumexp_with_any_class_axes_equals_scipy(backend, case, layout, keepdims, seed):
    shape, axis, axes = case
    x = _data(seed, shape)
    b = _data(seed + 1, shape)
    expected_shape = np.sum(x, axis=axis, keepdims=keepdims).shape
    for kwargs in ({}, {"b": b, "return_sign": True}):
        out = _out_like(expected_shape, x.dtype, layout) if expected_shape else None
        result = lc.logsumexp(x, axis=axis, keepdims=keepdims, out=out, backend=backend,
                              **kwargs)
        reference = sc.logsumexp(x, axis=axis, keepdims=keepdims, **kwargs)
        if kwargs:
            np.testing.assert_array_equal(result[1], reference[1])
            result, reference = result[0], reference[0]
        np.testing.assert_allclose(result, reference, **CLOSE)
        if out is not None:
            assert result is out


@SETTINGS
@given(case=_class_axes(), layout=st.sampled_from(OUT_LAYOUTS), seed=st.integers(0, 2**16))
def test_backward_passes_with_any_class_axes_equal_torch_autograd(backend, case, layout,
                                                                   seed):
    shape, _, axes = case
    x, dy = _data(seed, shape), _data(seed + 1, shape)
    for ours, function in ((lc.softmax_backward, torch.softmax),
                           (lc.log_softmax_backward, torch.log_softmax)):
        y, expected = _torch_backward(function, x, dy, axes)
        out = _out_like(shape, x.dtype, layout)
        result = ours(dy, y, axis=axes, out=out, backend=backend)
        np.testing.assert_allclose(result, expected, **CLOSE)
        if len(axes) == 1:  # the int spelling of the same axis
            np.testing.assert_allclose(ours(dy, y, axis=axes[0] - len(shape),
                                            backend=backend), expected, **CLOSE)


@SETTINGS
@given(shape=st.sampled_from(SQUARE_SHAPES), data=st.data(),
       layout=st.sampled_from(OUT_LAYOUTS), probabilities=st.booleans(),
       seed=st.integers(0, 2**16))
def test_cross_entropy_gradient_with_any_class_axis_equals_torch(backend, shape, data,
                                                                  layout, probabilities,
                                                                  seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    logits = _data(seed, shape)
    n_classes = shape[axis]
    rng = np.random.default_rng(seed)
    if probabilities:
        target = sc.softmax(rng.standard_normal(shape), axis=axis)
    else:
        loss_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
        target = rng.integers(0, n_classes, loss_shape)
    weight = rng.uniform(0.5, 2.0, n_classes)
    kwargs = dict(weight=weight, label_smoothing=0.1, reduction="mean")
    expected_loss, expected_grad = _torch_ce(logits, target, axis, **kwargs)
    grad_out = _out_like(shape, logits.dtype, layout)
    loss, grad = lc.cross_entropy(logits, target, axis=axis, return_grad=True,
                                  grad_out=grad_out, backend=backend, **kwargs)
    np.testing.assert_allclose(loss, expected_loss, **CLOSE)
    np.testing.assert_allclose(grad, expected_grad, **CLOSE)
    if grad_out is not None:
        assert grad is grad_out


def test_issue_example_square_softmax_axis0(backend):
    x = np.arange(9.0).reshape(3, 3)
    np.testing.assert_allclose(lc.softmax(x, axis=0, backend=backend)[:, 0],
                               sc.softmax(x, axis=0)[:, 0], **CLOSE)


# --- 2. odd out / grad_out arrays: written correctly or refused, never a crash -----

_ODD_OUT_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, scipy.special as sc, torch
    import logitcore as lc

    backend = sys.argv[1]
    memmap_path = sys.argv[2]
    rng = np.random.default_rng(0)
    shape = (64, 1024)  # large enough for "auto" to route to the parallel paths
    x = rng.standard_normal(shape) * 4
    t = rng.uniform(0, 1, shape)
    labels = rng.integers(0, shape[1], shape[0])

    def odd(kind, shape):
        if kind == "matrix":
            return np.matrix(np.zeros(shape))
        if kind == "memmap":
            return np.memmap(memmap_path, dtype=np.float64, mode="w+", shape=shape)
        if kind == "fortran":
            return np.zeros(shape, order="F")
        if kind == "strided":
            return np.zeros((shape[0], 2 * shape[1]))[:, ::2]
        if kind == "big-endian":
            return np.zeros(shape, ">f8")
        if kind == "read-only":
            array = np.zeros(shape)
            array.flags.writeable = False
            return array

    def torch_grad(loss_of):
        xt = torch.tensor(x, requires_grad=True)
        loss = loss_of(xt)
        return torch.autograd.grad(loss, xt)[0].numpy()

    y = sc.softmax(x, axis=-1)
    dy = rng.standard_normal(shape)
    cases = {
        "sigmoid": (lambda out: lc.sigmoid(x, out=out, backend=backend), sc.expit(x), shape),
        "log_sigmoid": (lambda out: lc.log_sigmoid(x, out=out, backend=backend),
                        -np.logaddexp(0, -x), shape),
        "softmax": (lambda out: lc.softmax(x, out=out, backend=backend),
                    sc.softmax(x, axis=-1), shape),
        "log_softmax": (lambda out: lc.log_softmax(x, out=out, backend=backend),
                        sc.log_softmax(x, axis=-1), shape),
        "logsumexp": (lambda out: lc.logsumexp(x, keepdims=True, out=out, backend=backend),
                      sc.logsumexp(x, axis=-1, keepdims=True), (shape[0], 1)),
        "softmax_backward": (
            lambda out: lc.softmax_backward(dy, y, out=out, backend=backend),
            torch_grad(lambda xt: (torch.softmax(xt, -1) * torch.tensor(dy)).sum()), shape),
        "cross_entropy": (
            lambda out: lc.cross_entropy(x, labels, return_grad=True, grad_out=out,
                                         backend=backend)[1],
            torch_grad(lambda xt: torch.nn.functional.cross_entropy(
                xt, torch.tensor(labels))), shape),
        "bce": (
            lambda out: lc.binary_cross_entropy_with_logits(
                x, t, return_grad=True, grad_out=out, backend=backend)[1],
            torch_grad(lambda xt: torch.nn.functional.binary_cross_entropy_with_logits(
                xt, torch.tensor(t))), shape),
    }
    report = {}
    for op, (call, expected, out_shape) in cases.items():
        for kind in ("matrix", "memmap", "fortran", "strided", "big-endian", "read-only"):
            out = odd(kind, out_shape)
            try:
                result = call(out)
            except (TypeError, ValueError) as error:
                report[f"{op}/{kind}"] = [type(error).__name__, str(error)]
                continue
            written = float(np.max(np.abs(np.asarray(out) - expected)))
            report[f"{op}/{kind}"] = ["ok", written, result is out]
    print(json.dumps(report))
""")


def test_odd_out_arrays_are_written_or_refused_never_crash(backend, tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", _ODD_OUT_CHILD, backend, str(tmp_path / "out.dat")],
        capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"child died ({child.returncode}): {child.stderr[-2000:]}"
    report = json.loads(child.stdout.strip().splitlines()[-1])
    for case, outcome in report.items():
        op, kind = case.split("/")
        argument = "grad_out" if op in ("cross_entropy", "bce") else "out"
        if kind == "big-endian":
            assert outcome[0] == "TypeError" and argument in outcome[1], (case, outcome)
            assert "byte order" in outcome[1], (case, outcome)
        elif kind == "read-only":
            assert outcome[0] == "ValueError" and argument in outcome[1], (case, outcome)
        else:
            assert outcome[0] == "ok", (case, outcome)
            assert outcome[1] < 1e-12, (case, outcome)
            assert outcome[2], f"{case}: the caller's out object is not what came back"


# --- 3. gradients written over another operand -------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (3, 300), (1, 70000)])
def test_cross_entropy_grad_out_over_an_operand_equals_torch(backend, shape):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape) * 3
    probabilities = sc.softmax(rng.standard_normal(shape), axis=-1)
    labels = rng.integers(0, shape[1], shape[0])
    weight = rng.uniform(0.5, 2.0, shape[1])
    with lc.config(n_threads=2):  # the (1, 70000) row is split across threads
        for target in (labels, probabilities):
            expected_loss, expected_grad = _torch_ce(logits, target, -1, weight=weight,
                                                     label_smoothing=0.1)
            for aliased in ("logits", "target") if target.dtype.kind == "f" else ("logits",):
                x, tgt = logits.copy(), target.copy()
                grad_out = x if aliased == "logits" else tgt
                loss, grad = lc.cross_entropy(x, tgt, weight=weight, label_smoothing=0.1,
                                              return_grad=True, grad_out=grad_out,
                                              backend=backend)
                assert grad is grad_out
                np.testing.assert_allclose(loss, expected_loss, **CLOSE)
                np.testing.assert_allclose(grad, expected_grad, **CLOSE, err_msg=aliased)


def test_cross_entropy_grad_out_is_the_class_weight(backend):
    # a 1-D logits row has the shape of its class weights: grad_out may be the weights
    rng = np.random.default_rng(2)
    logits, weight = rng.standard_normal(7), rng.uniform(0.5, 2.0, 7)
    for target in (np.int64(3), sc.softmax(rng.standard_normal(7))):
        expected_loss, expected_grad = _torch_ce(logits, np.asarray(target), -1,
                                                 weight=weight)
        grad_out = weight.copy()
        loss, grad = lc.cross_entropy(logits, target, weight=grad_out, return_grad=True,
                                      grad_out=grad_out, backend=backend)
        np.testing.assert_allclose(loss, expected_loss, **CLOSE)
        np.testing.assert_allclose(grad, expected_grad, **CLOSE)


@pytest.mark.parametrize("shape", [(6, 5), (3, 300), (1, 70000)])
@pytest.mark.parametrize("aliased", ["logits", "target", "weight", "pos_weight"])
def test_bce_grad_out_over_an_operand_equals_torch(backend, shape, aliased):
    rng = np.random.default_rng(3)
    operands = {"logits": rng.standard_normal(shape) * 3,
                "target": rng.uniform(0, 1, shape),
                "weight": rng.uniform(0.5, 2.0, shape),
                "pos_weight": rng.uniform(0.5, 2.0, shape)}
    expected_loss, expected_grad = _torch_bce(**operands)
    copies = {name: array.copy() for name, array in operands.items()}
    with lc.config(n_threads=2):
        loss, grad = lc.binary_cross_entropy_with_logits(
            **copies, return_grad=True, grad_out=copies[aliased], backend=backend)
    assert grad is copies[aliased]
    np.testing.assert_allclose(loss, expected_loss, **CLOSE)
    np.testing.assert_allclose(grad, expected_grad, **CLOSE)


@pytest.mark.parametrize("aliased", ["target", "weight", "pos_weight"])
def test_grad_out_partly_over_an_operand_is_refused(backend, aliased):
    shape = (4, 5)
    rng = np.random.default_rng(4)
    memory = rng.uniform(0.5, 1.0, 2 * 20)
    operands = {"logits": rng.standard_normal(shape), "target": rng.uniform(0, 1, shape),
                "weight": rng.uniform(0.5, 2.0, shape),
                "pos_weight": rng.uniform(0.5, 2.0, shape)}
    operands[aliased] = memory[:20].reshape(shape)
    grad_out = memory[3:23].reshape(shape)
    with pytest.raises(ValueError, match=f"grad_out overlaps {aliased} partially"):
        lc.binary_cross_entropy_with_logits(**operands, return_grad=True,
                                            grad_out=grad_out, backend=backend)
    if aliased == "target":
        operands["target"] = sc.softmax(operands["target"], axis=-1)
        memory[:20] = operands["target"].reshape(-1)
        operands["target"] = memory[:20].reshape(shape)
        with pytest.raises(ValueError, match="grad_out overlaps target partially"):
            lc.cross_entropy(operands["logits"], operands["target"], return_grad=True,
                             grad_out=grad_out, backend=backend)


@pytest.mark.parametrize("shape", [(6, 5), (1, 70000)])
def test_backward_out_over_dy_or_y_equals_torch(backend, shape):
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal(shape) * 3, rng.standard_normal(shape)
    for ours, function in ((lc.softmax_backward, torch.softmax),
                           (lc.log_softmax_backward, torch.log_softmax)):
        y, expected = _torch_backward(function, x, dy, (1,))
        for aliased in ("dy", "y"):
            operands = {"dy": dy.copy(), "y": y.copy()}
            with lc.config(n_threads=2):
                result = ours(**operands, out=operands[aliased], backend=backend)
            assert result is operands[aliased]
            np.testing.assert_allclose(result, expected, **CLOSE, err_msg=aliased)


# --- 6. byte order and half precision: the dtype policy ---------------------------

@pytest.mark.parametrize("dtype,result", [(">f4", np.float32), (">f8", np.float64),
                                          (">f2", np.float32), ("<f2", np.float32),
                                          (">i4", np.float64)])
def test_every_op_follows_the_dtype_policy_in_either_byte_order(backend, dtype, result):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((5, 7)) * 3).astype(dtype)
    x64 = x.astype(np.float64)
    tol = dict(rtol=1e-12, atol=1e-12) if result == np.float64 else dict(rtol=3e-6, atol=3e-6)

    def check(value, expected):
        assert value.dtype == result, value.dtype
        np.testing.assert_allclose(value, expected, **tol)

    check(lc.softmax(x, backend=backend), sc.softmax(x64, axis=-1))
    check(lc.log_softmax(x, axis=0, backend=backend), sc.log_softmax(x64, axis=0))
    check(lc.logsumexp(x, backend=backend), sc.logsumexp(x64, axis=-1))
    check(lc.sigmoid(x, backend=backend), sc.expit(x64))
    check(lc.log_sigmoid(x, backend=backend), -np.logaddexp(0, -x64))
    b = rng.uniform(0.5, 2, x.shape).astype(dtype)
    check(lc.logsumexp(x, b=b, backend=backend), sc.logsumexp(x64, b=b.astype(float), axis=-1))
    y = sc.softmax(x64, axis=-1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    for ours, torch_backward in ((lc.softmax_backward, torch.ops.aten._softmax_backward_data),
                                 (lc.log_softmax_backward,
                                  torch.ops.aten._log_softmax_backward_data)):
        expected = torch_backward(torch.tensor(dy.astype(float)), torch.tensor(y.astype(float)),
                                  1, torch.float64).numpy()
        check(ours(dy, y, backend=backend), expected)

    labels = rng.integers(0, 7, 5)
    weight = rng.integers(1, 4, 7).astype(float)  # exact in every dtype tried
    loss, grad = lc.cross_entropy(x, labels.astype(">i8"), weight=weight.astype(dtype),
                                  return_grad=True, backend=backend)
    expected_loss, expected_grad = _torch_ce(x64, labels, -1,
                                             weight=weight.astype(dtype).astype(float))
    check(np.asarray(loss), expected_loss)
    check(grad, expected_grad)

    target = rng.uniform(0, 1, x.shape)
    loss, grad = lc.binary_cross_entropy_with_logits(
        x, target.astype(dtype), weight=weight.astype(dtype),
        pos_weight=weight[::-1].astype(dtype), return_grad=True, backend=backend)
    expected_loss, expected_grad = _torch_bce(
        x64, target.astype(dtype).astype(float), weight.astype(dtype).astype(float),
        weight[::-1].astype(dtype).astype(float))
    check(np.asarray(loss), expected_loss)
    check(grad, expected_grad)


def test_big_endian_uint64_label_beyond_int64_is_an_index_error(backend):
    logits = np.zeros((2, 3))
    labels = np.array([0, 2**63 + 1], dtype=">u8")  # wraps onto negative numbers in int64
    with pytest.raises(IndexError, match=r"target\[1\]"):
        lc.cross_entropy(logits, labels, ignore_index=-(2**63) + 1, backend=backend)


# --- 7. integer arguments beyond what the kernels take ------------------------------

@pytest.mark.parametrize("ignore_index", [2**70, -(2**70), 2**63, np.uint64(2**64 - 1)])
def test_ignore_index_outside_int64_is_a_value_error_naming_it(backend, ignore_index):
    logits, labels = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"ignore_index must be in the int64 range"):
        lc.cross_entropy(logits, labels, ignore_index=ignore_index, backend=backend)


def test_ignore_index_at_the_int64_limits_works(backend):
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    labels = np.array([2, 0])
    expected, _ = _torch_ce(logits, labels, -1)
    for ignore_index in (2**63 - 1, -(2**63)):
        np.testing.assert_allclose(
            lc.cross_entropy(logits, labels, ignore_index=ignore_index, backend=backend),
            expected, **CLOSE)


@pytest.mark.parametrize("n_threads", [2**31, 2**15 + 1, 2**64])
def test_huge_thread_counts_are_refused_everywhere(n_threads):
    before = lc.get_num_threads()
    with pytest.raises(ValueError, match=r"n_threads must be in \[1, 32768\]"):
        lc.set_num_threads(n_threads)
    assert lc.get_num_threads() == before
    with pytest.raises(ValueError, match=r"n_threads must be in \[1, 32768\]"):
        with lc.config(n_threads=n_threads):
            pass
    child = subprocess.run(
        [sys.executable, "-c", "import logitcore; logitcore.get_num_threads()"],
        env={**os.environ, "LOGITCORE_NUM_THREADS": str(n_threads)},
        capture_output=True, text=True, timeout=120)
    assert child.returncode != 0
    assert "ValueError: LOGITCORE_NUM_THREADS must be in [1, 32768]" in child.stderr


def test_the_largest_thread_count_is_accepted_and_computes(backend):
    x = np.random.default_rng(7).standard_normal((3, 50))
    with lc.config(n_threads=_config.MAX_THREADS):
        np.testing.assert_allclose(lc.softmax(x, backend=backend), sc.softmax(x, axis=-1),
                                   **CLOSE)


# --- SciPy semantics: b's dtype and shape, scalars, signs ----------------------------

_DTYPES = ["int8", "int16", "int32", "int64", "float16", "float32", "float64"]


@pytest.mark.parametrize("dtype_b", _DTYPES)
@pytest.mark.parametrize("dtype_a", _DTYPES)
def test_logsumexp_with_b_has_numpys_promoted_dtype(backend, dtype_a, dtype_b):
    a = np.array([2, 1], dtype_a)
    b = np.array([1, -1], dtype_b)
    promoted = np.result_type(a, b)
    scipy_dtype = promoted if promoted.kind == "f" else np.dtype(np.float64)
    assert sc.logsumexp(a, b=b).dtype == scipy_dtype
    # our policy: half precision is computed and returned in float32
    expected_dtype = np.dtype(np.float32) if scipy_dtype == np.float16 else scipy_dtype
    result = lc.logsumexp(a, b=b, backend=backend)
    assert result.dtype == expected_dtype
    np.testing.assert_allclose(result, math.log(math.exp(2) - math.exp(1)),
                               rtol=1e-6 if expected_dtype == np.float32 else 1e-14)


def test_logsumexp_python_scalar_b_keeps_x_dtype_as_scipy(backend):
    x = np.array([1.0, 2.0], np.float32)
    for b in (2.0, 2):
        result = lc.logsumexp(x, b=b, backend=backend)
        reference = sc.logsumexp(x, b=b)
        assert result.dtype == reference.dtype == np.float32
        np.testing.assert_allclose(result, reference, rtol=1e-6)


@pytest.mark.parametrize("a_shape,b_shape", [((4, 1, 2, 1), (3, 1, 5)), ((3,), (2, 3)),
                                             ((2, 1), (1, 3)), ((), (4,)), ((5,), ())])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, -1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_b_broadcasts_jointly_with_x_as_scipy(backend, a_shape, b_shape, axis,
                                                        keepdims):
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    ndim = max(len(a_shape), len(b_shape), 1)
    if axis == (0, -1) and ndim < 2:
        axis = 0
    for return_sign in (False, True):
        result = lc.logsumexp(a, b=b, axis=axis, keepdims=keepdims, return_sign=return_sign,
                              backend=backend)
        reference = sc.logsumexp(a, b=b, axis=axis, keepdims=keepdims,
                                 return_sign=return_sign)
        if return_sign:
            np.testing.assert_array_equal(result[1], reference[1])
            assert np.shape(result[1]) == np.shape(reference[1])
            result, reference = result[0], reference[0]
        assert np.shape(result) == np.shape(reference)
        np.testing.assert_allclose(result, reference, **CLOSE)


@pytest.mark.parametrize("function", ["softmax", "log_softmax"])
@pytest.mark.parametrize("value", [3.0, np.float32(-2.0), np.float64(np.inf), np.nan, 7,
                                   np.array(0.5), np.array(1.5, np.float32)])
def test_softmax_of_a_scalar_is_a_numpy_scalar_as_scipy(backend, function, value):
    with np.errstate(invalid="ignore"):
        reference = getattr(sc, function)(value)
        for axis in (None, 0, -1):
            result = getattr(lc, function)(value, axis=axis, backend=backend)
            assert type(result) is type(reference), (type(result), type(reference))
            np.testing.assert_array_equal(result, reference)


@pytest.mark.parametrize("row,b", [
    ([-np.inf, -np.inf], None), ([-np.inf, -np.inf], [1.0, 2.0]), ([-np.inf], [-1.0]),
    ([1.0, 1.0], [1.0, -1.0]), ([1.0, 2.0], [0.0, 0.0]),
    ([np.nan, 1.0], None), ([np.nan, 1.0], [1.0, -1.0]), ([np.nan, -np.inf], None),
    ([np.inf, 1.0], None), ([np.inf], [-1.0]), ([np.inf, 1.0], [-1.0, 1.0]),
    ([np.inf, np.inf], [1.0, -1.0]), ([np.inf, -np.inf], None),
    ([1000.0, 0.0], [0.0, 1.0]), ([np.nan, 0.0], [0.0, 1.0]),
    ([3.0, 1.0], [-1.0, 1.0]), ([3.0, 1.0], None),
])
def test_logsumexp_value_and_sign_of_edge_rows_as_scipy(backend, row, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = sc.logsumexp(row, b=b, return_sign=True)
        without_sign = sc.logsumexp(row, b=b)
    result = lc.logsumexp(row, b=b, return_sign=True, backend=backend)
    np.testing.assert_array_equal(result[0], reference[0])
    np.testing.assert_array_equal(result[1], reference[1])
    np.testing.assert_array_equal(lc.logsumexp(row, b=b, backend=backend), without_sign)
    # the same rows as one 2-D batch, axis 1 (the kernels' narrow path)
    batch = np.array([row, row])
    b2 = None if b is None else np.array([b, b])
    value, sign = lc.logsumexp(batch, axis=1, b=b2, return_sign=True, backend=backend)
    np.testing.assert_array_equal(value, [reference[0]] * 2)
    np.testing.assert_array_equal(sign, [reference[1]] * 2)


def test_logsumexp_of_an_empty_row_is_minus_inf_with_sign_zero(backend):
    # SciPy gives sign -1 here (the sign of its -inf result); the sum is 0, so 0.
    value, sign = lc.logsumexp(np.empty((2, 0)), return_sign=True, backend=backend)
    np.testing.assert_array_equal(value, [-np.inf, -np.inf])
    np.testing.assert_array_equal(sign, [0.0, 0.0])
    assert sc.logsumexp([]) == -np.inf


# --- SciPy's own logsumexp / softmax / log_softmax cases (real inputs) --------------
# Our functions default to axis=-1 where SciPy's default to axis=None; the cases pass
# the axis SciPy's defaults imply.

def _scipy_close(result, expected, rtol=1e-13):
    np.testing.assert_allclose(result, expected, rtol=rtol, atol=0)


def test_scipy_logsumexp_values(backend):
    lse = lambda *args, **kwargs: lc.logsumexp(*args, backend=backend, **kwargs)  # noqa: E731
    assert lse(np.array([]), axis=None) == -np.inf
    a = np.arange(200.0)
    _scipy_close(lse(a), np.log(np.sum(np.exp(a))))
    _scipy_close(lse(np.array([1000.0, 1000.0])), 1000.0 + math.log(2.0))
    _scipy_close(lse(np.full(1000, 10000)), 10000.0 + math.log(1000))
    x = np.full(1_000_000, 1e-40)
    X, logX = np.stack([x, x]), np.log(np.stack([x, x]))
    _scipy_close(np.exp(lse(logX, axis=None)), X.sum())
    _scipy_close(np.exp(lse(logX, axis=0)), X.sum(axis=0))
    _scipy_close(np.exp(lse(logX, axis=1)), X.sum(axis=1))
    for value in (np.inf, -np.inf, np.nan):
        np.testing.assert_array_equal(lse(np.array([value])), value)
    assert lse(np.array([-np.inf, -np.inf])) == -np.inf
    a = np.array([[1e10, 1e-10], [-1e10, -np.inf]])
    _scipy_close(lse(a, axis=-1), [1e10, -1e10])
    _scipy_close(lse(a, axis=-1, keepdims=True), [[1e10], [-1e10]])
    _scipy_close(lse(a, axis=(-1, -2)), 1e10)


def test_scipy_logsumexp_b_values(backend):
    lse = lambda *args, **kwargs: lc.logsumexp(*args, backend=backend, **kwargs)  # noqa: E731
    a, b = np.arange(200.0), np.arange(200.0, 0.0, -1.0)
    _scipy_close(lse(a, b=b), np.log(np.sum(b * np.exp(a))))
    _scipy_close(lse(np.array([1000, 1000]), b=np.array([1.2, 1.2])),
                 1000 + math.log(2 * 1.2))
    x, b = np.full(100_000, 1e-40), np.linspace(1, 1000, 100_000)
    X, logX, B = np.stack((x, x)), np.log(np.stack((x, x))), np.stack((b, b))
    _scipy_close(np.exp(lse(logX, b=B, axis=None)), np.sum(B * X))
    _scipy_close(np.exp(lse(logX, b=B, axis=0)), np.sum(B * X, axis=0))
    _scipy_close(np.exp(lse(logX, b=B, axis=1)), np.sum(B * X, axis=1))
    _scipy_close(lse(np.array([1, 10000]), b=np.array([1, 0])), 1.0)


def test_scipy_logsumexp_signs_and_shapes(backend):
    lse = lambda *args, **kwargs: lc.logsumexp(*args, backend=backend, **kwargs)  # noqa: E731
    r, s = lse(np.array([1, 1, 1]), b=np.array([1, -1, -1]), return_sign=True)
    _scipy_close(r, 1.0)
    assert s == -1.0
    r, s = lse(np.array([1, 1]), b=np.array([1, -1]), return_sign=True)
    assert r == -np.inf and s == 0
    a = np.ones((1, 2, 3, 4))
    r, s = lse(a, axis=2, b=np.ones_like(a), return_sign=True)
    assert r.shape == s.shape == (1, 2, 4)
    r, s = lse(a, axis=(1, 3), b=np.ones_like(a), return_sign=True)
    assert r.shape == s.shape == (1, 3)
    assert lse(a, axis=2, b=np.ones_like(a)).shape == (1, 2, 4)
    assert lse(np.zeros((4, 1, 2, 1)), b=np.ones((3, 1, 5)), axis=None).shape == ()
    # gh-22903: a negative weight on the largest term, positive sum
    a = np.array([3.06409428, 0.37251854, 3.87471931])
    b = np.array([1.88190708, 2.84174795, -0.85016884])
    _scipy_close(lse(a, b=b), lse(a, b=b, return_sign=True)[0])
    assert np.isnan(lse(a, b=np.array([1.88190708, 2.84174795, -3.85016884])))
    # gh-23548: infinite values have a sign
    assert lse(np.array([np.inf]), return_sign=True) == (np.inf, 1.0)
    assert lse(np.array([np.inf]), b=np.array([-1.0]), return_sign=True) == (np.inf, -1.0)


def test_scipy_logsumexp_inputs(backend):
    lse = lambda *args, **kwargs: lc.logsumexp(*args, backend=backend, **kwargs)  # noqa: E731
    for arg in (1, [1, 2, 3]):
        _scipy_close(lse(arg), sc.logsumexp(np.atleast_1d(arg)))
    _scipy_close(lse([1000, 1000]), 1000.0 + math.log(2.0))
    for dtype in _DTYPES[2:]:
        result = lse(np.array([1000.0, 1000.0], dtype))
        assert result.dtype == (np.float64 if dtype.startswith("int") else
                                np.float32 if dtype == "float16" else dtype)
        _scipy_close(result, 1000.0 + math.log(2.0), rtol=3e-7)
    a, b = np.array([5.0, 4.0]), np.array([3.0, 2.0])
    lse(a), lse(a, b=b)
    np.testing.assert_array_equal(a, [5.0, 4.0])  # nothing written back
    np.testing.assert_array_equal(b, [3.0, 2.0])
    for x, y in ((-np.inf, -np.inf), (-np.inf, np.inf), (np.inf, -np.inf), (np.inf, np.inf)):
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(lse(np.array([x, y])), np.log(np.exp(x) + np.exp(y)))


def test_scipy_logsumexp_keeps_a_tiny_second_term(backend):
    # gh-18295: log(1 + e^-40) must not round to 0
    _scipy_close(lc.logsumexp(np.array([0.0, -40.0]), backend=backend), np.logaddexp(0, -40))


def test_scipy_softmax_cases(backend):
    sm = lambda *args, **kwargs: lc.softmax(*args, backend=backend, **kwargs)  # noqa: E731
    _scipy_close(sm(np.array([1000.0, 0.0, 0.0, 0.0])), [1.0, 0.0, 0.0, 0.0])
    _scipy_close(sm(np.array([1.0, 1.0])), [0.5, 0.5])
    _scipy_close(sm(np.array([0.0, 1.0])), np.array([1.0, np.e]) / (1 + np.e))
    x = np.arange(4, dtype=np.float64)
    expected = np.array([0.03205860328008499, 0.08714431874203256,
                         0.23688281808991013, 0.6439142598879722])  # mpmath, 200 digits
    _scipy_close(sm(x), expected)
    _scipy_close(sm(x + 100), expected)
    _scipy_close(sm(x.reshape(2, 2), axis=None), expected.reshape(2, 2))
    _scipy_close(sm(np.array([[1000.0, 0.0], [1000.0, 0.0]]), axis=0), np.full((2, 2), 0.5))
    _scipy_close(sm(np.array([[1000.0, 0.0], [1000.0, 0.0]]), axis=1),
                 [[1.0, 0.0], [1.0, 0.0]])
    x = np.array([[-25.0, 0.0, 25.0, 50.0], [1.0, 325.0, 749.0, 750.0]])
    expected = np.array([[2.678636961770877e-33, 1.9287498479371314e-22,
                          1.3887943864771144e-11, 0.999999999986112],
                         [0.0, 1.9444526359919372e-185, 0.2689414213699951,
                          0.7310585786300048]])  # mpmath, 200 digits
    _scipy_close(sm(x, axis=1), expected)
    _scipy_close(sm(x.T, axis=0), expected.T)
    _scipy_close(sm(x.reshape(2, 2, 2), axis=(1, 2)), expected.reshape(2, 2, 2))
    _scipy_close(sm(np.array([1000, 0, 0, 0])), [1.0, 0.0, 0.0, 0.0])
    _scipy_close(sm(1000), 1.0)
    _scipy_close(sm([1000, 0, 0, 0]), [1.0, 0.0, 0.0, 0.0])


def test_scipy_log_softmax_cases(backend):
    lsm = lambda *args, **kwargs: lc.log_softmax(*args, backend=backend, **kwargs)  # noqa: E731
    _scipy_close(lsm(np.array([1000.0, 1.0])), [0.0, -999.0])
    _scipy_close(lsm(np.array([1000, 1])), [0.0, -999.0])
    assert lsm(1.0) == 0.0
    _scipy_close(lsm([1000, 1]), [0.0, -999.0])
    x = np.arange(4, dtype=np.float64)
    expected = np.array([-3.4401896985611953, -2.4401896985611953,
                         -1.4401896985611953, -0.44018969856119533])  # mpmath, 200 digits
    _scipy_close(lsm(x), expected)
    _scipy_close(lsm(x + 100), expected)
    _scipy_close(lsm(x.reshape(2, 2), axis=None), expected.reshape(2, 2))
    x2 = np.array([[1000.0, 1.0], [1000.0, 1.0]])
    _scipy_close(lsm(x2, axis=0), np.log(0.5) * np.ones((2, 2)))
    _scipy_close(lsm(x2, axis=1), [[0.0, -999.0], [0.0, -999.0]])
    x2d, expected2d = np.arange(8.0).reshape(2, 4), np.stack([expected, expected])
    _scipy_close(lsm(x2d, axis=1), expected2d)
    _scipy_close(lsm(x2d.T, axis=0), expected2d.T)
    _scipy_close(lsm(x2d.reshape(2, 2, 2), axis=(1, 2)), expected2d.reshape(2, 2, 2))


def test_numba_flat_kernels_refuse_an_out_that_is_not_flat():
    # What np.matrix(...).reshape(-1) gives: (1, n). Written unchecked, it crashed.
    numba_kernels = pytest.importorskip("logitcore._backends.numba_kernels")
    x = np.zeros(4096)
    for kernel in (numba_kernels.sigmoid, numba_kernels.log_sigmoid):
        with pytest.raises(ValueError, match="kernel operand out"):
            kernel(x, np.zeros((1, 4096)), 1)
