"""Bad input gets a clear exception that names the argument, on every backend."""

import numpy as np
import pytest

import logitcore as lc

X = np.zeros((4, 3))
LABELS = np.array([0, 1, 2, 0])


@pytest.mark.parametrize("bad", [
    np.array([1 + 2j, 3j]), np.array(["a", "b"]), np.array([object(), object()], dtype=object),
])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax", "sigmoid", "log_sigmoid"])
def test_non_real_dtypes_raise_type_error(backend, op, bad):
    with pytest.raises(TypeError, match="x must hold real numbers"):
        getattr(lc, op)(bad, backend=backend)


@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_bad_axis(op):
    with pytest.raises(np.exceptions.AxisError, match="axis=2 is out of bounds"):
        getattr(lc, op)(X, axis=2)
    with pytest.raises(ValueError, match="repeated axis"):
        getattr(lc, op)(X, axis=(1, -1))
    with pytest.raises(TypeError, match="axis must be"):
        getattr(lc, op)(X, axis=1.0)
    with pytest.raises(np.exceptions.AxisError, match="0 dimension"):
        getattr(lc, op)(np.float64(1.0))


def test_zero_d_input_with_axis_none():
    assert lc.logsumexp(np.float64(2.0), axis=None) == 2.0


def test_cross_entropy_label_out_of_range_names_position_and_value(backend):
    labels = np.array([0, 1, 7, 0])
    with pytest.raises(IndexError, match=r"target\[2\] = 7 is not a class index in \[0, 3\)"):
        lc.cross_entropy(X, labels, backend=backend)
    with pytest.raises(IndexError, match=r"target\[1\] = -3"):
        lc.cross_entropy(X, np.array([0, -3, 0, 0]), backend=backend)
    with pytest.raises(IndexError, match=r"target\[0\] = 18446744073709551615"):
        lc.cross_entropy(X, np.array([2**64 - 1, 0, 0, 0], dtype=np.uint64), backend=backend)
    with pytest.raises(IndexError, match=r"target\[3\] = 9223372036854775807"):
        lc.cross_entropy(X, np.array([0, 0, 0, 2**63 - 1]), backend=backend)
    # ignore_index itself is fine even though it is out of range
    lc.cross_entropy(X, np.array([0, -100, 1, 2]), backend=backend)


def test_cross_entropy_label_dtype_and_shape():
    with pytest.raises(TypeError, match="integer dtype"):
        lc.cross_entropy(X, LABELS.astype(np.float64))
    with pytest.raises(ValueError, match=r"target has shape \(3,\).*\(4, 3\)"):
        lc.cross_entropy(X, LABELS[:3])
    with pytest.raises(ValueError, match=r"0-d"):
        lc.cross_entropy(np.float64(1.0), np.int64(0))
    with pytest.raises(ValueError, match="0 classes"):
        lc.cross_entropy(np.zeros((4, 0)), LABELS)
    with pytest.raises(TypeError, match="integer dtype"):
        lc.cross_entropy(X, np.array(["a", "b", "c", "d"]))


@pytest.mark.parametrize("bad_weight,error,message", [
    (np.array([1.0, np.nan, 1.0]), ValueError, r"weight must be finite; weight\[1\] = "),
    (np.array([1.0, np.inf, 1.0]), ValueError, "weight must be finite"),
    (np.ones(4), ValueError, r"weight must have shape \(3,\)"),
    (np.array([1j, 1, 1]), TypeError, "weight must hold real numbers"),
])
def test_cross_entropy_bad_weight(bad_weight, error, message):
    with pytest.raises(error, match=message):
        lc.cross_entropy(X, LABELS, weight=bad_weight)


def test_cross_entropy_bad_options():
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum'"):
        lc.cross_entropy(X, LABELS, reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        lc.cross_entropy(X, LABELS, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        lc.cross_entropy(X, LABELS, ignore_index=1.5)
    with pytest.raises(ValueError, match="grad_out is only used with return_grad=True"):
        lc.cross_entropy(X, LABELS, grad_out=np.empty_like(X))


def test_bce_bad_input():
    with pytest.raises(ValueError, match=r"logits has shape \(4, 3\), target has shape \(4, 2\)"):
        lc.binary_cross_entropy_with_logits(X, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="pos_weight must be finite"):
        lc.binary_cross_entropy_with_logits(X, X, pos_weight=np.array([1.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match=r"weight must broadcast to the shape of logits"):
        lc.binary_cross_entropy_with_logits(X, X, weight=np.ones(5))
    with pytest.raises(ValueError, match="reduction must be one of"):
        lc.binary_cross_entropy_with_logits(X, X, reduction=None)


def test_out_checks():
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\), got shape \(3, 4\)"):
        lc.softmax(X, out=np.empty((3, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64, got dtype float32"):
        lc.softmax(X, out=np.empty((4, 3), np.float32))
    read_only = np.empty((4, 3))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        lc.softmax(X, out=read_only)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        lc.softmax(X, out=[[0.0] * 3] * 4)
    buffer = np.zeros((5, 3))
    with pytest.raises(ValueError, match="out overlaps x partially"):
        lc.softmax(buffer[:4], out=buffer[1:])
    with pytest.raises(ValueError, match="grad_out overlaps logits partially"):
        lc.cross_entropy(buffer[:4], LABELS, return_grad=True, grad_out=buffer[1:])
    with pytest.raises(ValueError, match=r"out must have shape \(4,\)"):
        lc.logsumexp(X, out=np.empty(3))


def test_backward_shape_mismatch():
    with pytest.raises(ValueError, match=r"y has shape \(4, 3\), dy has shape \(4, 2\)"):
        lc.softmax_backward(np.zeros((4, 2)), X)


def test_logsumexp_b_must_broadcast():
    with pytest.raises(ValueError, match=r"b must broadcast to the shape of x"):
        lc.logsumexp(X, b=np.ones(4))
