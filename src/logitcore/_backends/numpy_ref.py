"""Reference backend: plain NumPy, computed in float64, written for clarity not speed.

This is the oracle every other backend is tested against, so each function is the
textbook formula with the stable shift by the row maximum and nothing clever.
``n_threads`` is accepted for the common signature and ignored.
"""

import numpy as np

from logitcore._backends import ALL_KERNELS

SUPPORTED_KERNELS = ALL_KERNELS

_ERRSTATE = dict(over="ignore", under="ignore", invalid="ignore", divide="ignore")


def _row_max(x64):
    """Row maximum used for the stable shift; 0 where it is not finite.

    A row whose maximum is +inf or -inf is shifted by 0 so that the sums below produce
    the edge values (docs/architecture.md) (+inf for a +inf row, -inf for an all -inf row).
    """
    if x64.shape[1] == 0:
        return np.zeros((x64.shape[0], 1))
    row_max = np.max(x64, axis=1, keepdims=True)
    return np.where(np.isfinite(row_max), row_max, 0.0)


def _log_sum_exp_shifted(x64, shift):
    """log(sum exp(x - shift)) per row (column vector), as log1p(others + n_at_max - 1):
    others sums the terms with x != shift, n_at_max counts the x == shift. With a unique
    maximum the tiny terms survive (logsumexp([0, -40]) = 4.25e-18; the plain sum
    1 + 4.25e-18 rounds to 1, SciPy gh-18295). Rows whose shift is 0 because their max is
    not finite give inf (others = inf), -inf (others = 0, n_at_max = 0) or NaN."""
    at_max = x64 == shift
    others = np.sum(np.where(at_max, 0.0, np.exp(x64 - shift)), axis=1, keepdims=True)
    n_at_max = np.sum(at_max, axis=1, keepdims=True)
    return np.log1p(others + (n_at_max - 1.0))


def _logsumexp64(x64):
    with np.errstate(**_ERRSTATE):
        shift = _row_max(x64)
        return (_log_sum_exp_shifted(x64, shift) + shift)[:, 0]


def _log_softmax64(x64):
    # The shift is the true row maximum (not the clamped one): a row holding +inf
    # gives inf - inf = NaN everywhere, an all -inf row gives NaN, as torch and scipy do.
    with np.errstate(**_ERRSTATE):
        row_max = np.max(x64, axis=1, keepdims=True)
        log_sum = np.where(np.isfinite(row_max), _log_sum_exp_shifted(x64, row_max), np.nan)
        return (x64 - row_max) - log_sum


def logsumexp(x, out, n_threads=1):
    out[...] = _logsumexp64(x.astype(np.float64))


def logsumexp_scaled(x, b, out, sign_out, n_threads=1):
    # Terms with b == 0 are left out entirely, as in scipy: they neither set the shift
    # (x = [1000, 0], b = [0, 1] gives 0, not -inf) nor add 0 * inf = NaN.
    x64 = x.astype(np.float64)
    b64 = b.astype(np.float64)
    kept = b64 != 0
    with np.errstate(**_ERRSTATE):
        shift = _row_max(np.where(kept, x64, -np.inf))
        total = np.sum(np.where(kept, b64 * np.exp(x64 - shift), 0.0), axis=1)
        out[...] = np.log(np.abs(total)) + shift[:, 0]
        sign_out[...] = np.sign(total)


def softmax(x, out, n_threads=1):
    if x.shape[1] == 0:
        return
    with np.errstate(**_ERRSTATE):
        out[...] = np.exp(_log_softmax64(x.astype(np.float64)))


def log_softmax(x, out, n_threads=1):
    if x.shape[1] == 0:
        return
    out[...] = _log_softmax64(x.astype(np.float64))


def sigmoid(x, out, n_threads=1):
    x64 = x.astype(np.float64)
    with np.errstate(**_ERRSTATE):
        # exp(-|x|) never overflows; pick the form that keeps precision on each side.
        e = np.exp(-np.abs(x64))
        out[...] = np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus64(x64):
    """log(1 + exp(x)) without overflow."""
    with np.errstate(**_ERRSTATE):
        return np.maximum(x64, 0.0) + np.log1p(np.exp(-np.abs(x64)))


def log_sigmoid(x, out, n_threads=1):
    out[...] = -_softplus64(-x.astype(np.float64))


def label_stats(labels, weight, ignore_index, n_threads=1):
    kept = labels != ignore_index
    invalid = kept & ((labels < 0) | (labels >= weight.shape[0]))
    if invalid.any():
        return int(np.flatnonzero(invalid)[0]), float("nan")
    return -1, float(np.sum(weight[labels[kept]], dtype=np.float64))


def cross_entropy_labels(
    x, labels, weight, ignore_index, label_smoothing, loss_out, grad_out, grad_scale,
    n_threads=1,
):
    n_rows, n_classes = x.shape
    x64 = x.astype(np.float64)
    w64 = weight.astype(np.float64)
    keep = labels != ignore_index
    safe_labels = np.where(keep, labels, 0)
    # q is the target distribution times the class weights, one row per sample.
    q = np.zeros((n_rows, n_classes))
    q[np.arange(n_rows), safe_labels] = (1.0 - label_smoothing) * w64[safe_labels]
    q += (label_smoothing / n_classes) * w64[None, :]
    q[~keep] = 0.0
    log_probs = _log_softmax64(x64)
    with np.errstate(**_ERRSTATE):
        # Where q == 0 the term is 0 even if log_probs is -inf (a masked class).
        terms = np.where(q != 0.0, q * log_probs, 0.0)
        loss_out[...] = -np.sum(terms, axis=1)
        if grad_out.size:
            # Ignored rows have q = 0: their gradient is 0, or NaN where the row's softmax
            # is NaN (it holds NaN or +inf, or only -inf), as torch gives it.
            grad = np.exp(log_probs) * q.sum(axis=1, keepdims=True) - q
            grad_out[...] = grad_scale * grad


def cross_entropy_probs(
    x, target, weight, label_smoothing, loss_out, grad_out, grad_scale, n_threads=1
):
    n_classes = x.shape[1]
    x64 = x.astype(np.float64)
    t64 = target.astype(np.float64)
    if label_smoothing > 0.0:
        t64 = t64 * (1.0 - label_smoothing) + label_smoothing / n_classes
    q = t64 * weight.astype(np.float64)[None, :]
    log_probs = _log_softmax64(x64)
    with np.errstate(**_ERRSTATE):
        loss_out[...] = -np.sum(q * log_probs, axis=1)
        if grad_out.size:
            grad = np.exp(log_probs) * q.sum(axis=1, keepdims=True) - q
            grad_out[...] = grad_scale * grad


def bce_with_logits(
    x, target, weight, pos_weight, loss_out, grad_out, grad_scale, n_threads=1
):
    x64 = x.astype(np.float64)
    t64 = target.astype(np.float64)
    w64 = weight.astype(np.float64)
    pw64 = pos_weight.astype(np.float64)
    log_weight = 1.0 + (pw64 - 1.0) * t64
    with np.errstate(**_ERRSTATE):
        loss = w64 * ((1.0 - t64) * x64 + log_weight * _softplus64(-x64))
        if loss_out.shape[1] == 1 and x.shape[1] != 1:
            loss_out[...] = loss.sum(axis=1, keepdims=True)
        else:
            loss_out[...] = loss
        if grad_out.size:
            probs = np.empty_like(x64)
            sigmoid(x64, probs)
            grad_out[...] = grad_scale * w64 * (probs * log_weight - pw64 * t64)


def softmax_backward(dy, y, out, n_threads=1):
    dy64 = dy.astype(np.float64)
    y64 = y.astype(np.float64)
    out[...] = y64 * (dy64 - np.sum(dy64 * y64, axis=1, keepdims=True))


def log_softmax_backward(dy, y, out, n_threads=1):
    dy64 = dy.astype(np.float64)
    y64 = y.astype(np.float64)
    with np.errstate(**_ERRSTATE):
        out[...] = dy64 - np.exp(y64) * np.sum(dy64, axis=1, keepdims=True)
