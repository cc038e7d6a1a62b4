"""Reference backend: plain NumPy, computed in float64, written for clarity not speed.

This is the oracle every other backend is tested against, so each function is the
textbook formula with the stable shift by the row maximum and nothing clever.
``n_threads`` is accepted for the common signature and ignored.
"""

import numpy as np

from logitcore._backends import op_table

# Every kernel of the op table, the scoring kernels included.
SUPPORTED_KERNELS = op_table.ALL_KERNELS

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


def _scaled64(x, row_scale):
    """x in float64, each row times its row_scale (op_table: (n,), (1,) or None / (0,))."""
    x64 = x.astype(np.float64)
    if row_scale is None or row_scale.size == 0:
        return x64
    with np.errstate(**_ERRSTATE):
        return x64 * np.asarray(row_scale, np.float64).reshape(-1, 1)


def _grad_factor(grad_scale, row_scale):
    """grad_scale, times each row's row_scale: the chain rule back to the unscaled x."""
    if row_scale is None or row_scale.size == 0:
        return grad_scale
    return grad_scale * np.asarray(row_scale, np.float64).reshape(-1, 1)


def logsumexp(x, out, n_threads=1, row_scale=None):
    out[...] = _logsumexp64(_scaled64(x, row_scale))


def entropy(x, out, n_threads=1):
    # H = log S - sum_c (x_c - m) e_c / S with e = exp(x - m), S = sum e and m the row max.
    # A masked class (x = -inf, e = 0) adds 0, not (-inf) * 0 = NaN. Rows whose max is not
    # finite (NaN, +inf, all -inf; also C == 0) have no softmax: NaN.
    x64 = x.astype(np.float64)
    if x64.shape[1] == 0:
        out[...] = np.nan
        return
    with np.errstate(**_ERRSTATE):
        row_max = np.max(x64, axis=1, keepdims=True)
        shift = np.where(np.isfinite(row_max), row_max, 0.0)
        exps = np.exp(x64 - shift)
        total = np.sum(exps, axis=1)
        weighted = np.sum(np.where(exps > 0, (x64 - shift) * exps, 0.0), axis=1)
        result = np.log(total) - weighted / total
        out[...] = np.where(np.isfinite(row_max[:, 0]), result, np.nan)


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


def softmax(x, out, n_threads=1, row_scale=None):
    if x.shape[1] == 0:
        return
    with np.errstate(**_ERRSTATE):
        out[...] = np.exp(_log_softmax64(_scaled64(x, row_scale)))


def log_softmax(x, out, n_threads=1, row_scale=None):
    if x.shape[1] == 0:
        return
    out[...] = _log_softmax64(_scaled64(x, row_scale))


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
    n_threads=1, row_scale=None,
):
    n_rows, n_classes = x.shape
    x64 = _scaled64(x, row_scale)
    grad_scale = _grad_factor(grad_scale, row_scale)
    w64 = weight.astype(np.float64)
    keep = labels != ignore_index
    safe_labels = np.where(keep, labels, 0)
    # q is the target distribution times the class weights, one row per sample.
    q = np.zeros((n_rows, n_classes))
    q[np.arange(n_rows), safe_labels] = (1.0 - label_smoothing) * w64[safe_labels]
    q += (label_smoothing / n_classes) * w64[None, :]
    q[~keep] = 0.0
    # Ignored rows have q = 0: their gradient is 0, or NaN where the row's softmax is NaN
    # (it holds NaN or +inf, or only -inf), as torch gives it.
    _target_cross_entropy(x64, q, loss_out, grad_out, grad_scale, zero_q_terms=True)


def _target_cross_entropy(x64, q, loss_out, grad_out, grad_scale, zero_q_terms):
    """loss = -sum q log_softmax(x) per row, and (when grad_out is not empty) gradient
    grad_scale (softmax(x) sum(q) - q), for the target weights q of cross_entropy_labels
    and cross_entropy_probs. zero_q_terms: a term whose q is 0 is 0 even where the
    log-probability is -inf (a masked class); else such a term is 0 * -inf = NaN (the
    probability targets' contract)."""
    log_probs = _log_softmax64(x64)
    with np.errstate(**_ERRSTATE):
        terms = np.where(q != 0.0, q * log_probs, 0.0) if zero_q_terms else q * log_probs
        loss_out[...] = -np.sum(terms, axis=1)
        if grad_out.size:
            grad = np.exp(log_probs) * q.sum(axis=1, keepdims=True) - q
            grad_out[...] = grad_scale * grad


def cross_entropy_probs(
    x, target, weight, label_smoothing, loss_out, grad_out, grad_scale, n_threads=1,
    row_scale=None,
):
    n_classes = x.shape[1]
    x64 = _scaled64(x, row_scale)
    grad_scale = _grad_factor(grad_scale, row_scale)
    t64 = target.astype(np.float64)
    if label_smoothing > 0.0:
        t64 = t64 * (1.0 - label_smoothing) + label_smoothing / n_classes
    q = t64 * weight.astype(np.float64)[None, :]
    _target_cross_entropy(x64, q, loss_out, grad_out, grad_scale, zero_q_terms=False)


def bce_with_logits(
    x, target, weight, pos_weight, loss_out, grad_out, grad_scale, n_threads=1,
    row_scale=None,
):
    x64 = _scaled64(x, row_scale)
    grad_scale = _grad_factor(grad_scale, row_scale)
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


# --- scoring ------------------------------------------------------------------------
# The reference of the score kernels (op_table: score_multiclass, score_binary,
# score_multilabel). Each output of size 0 was not asked for and is not computed. Every
# field comes from the float64 log-probabilities, textbook form; the edge rows follow the
# table in logitcore/_score.py.

def _asked(*outputs):
    return any(output.size for output in outputs)


def score_multiclass(
    x, labels, ignore_index, top_k, pred_out, max_logit_out, confidence_out, margin_out,
    logit_margin_out, entropy_out, logsumexp_out, top_k_indices_out, top_k_probs_out,
    label_logprob_out, loss_out, correct_out, label_rank_out, brier_out, n_threads=1,
):
    x64 = x.astype(np.float64)
    n_rows, n_classes = x64.shape
    rows = np.arange(n_rows)
    # NaN is not ordered: a row holding one has no prediction, no ranking and no top k.
    nan_rows = np.isnan(x64).any(axis=1)
    log_probs = _log_softmax64(x64)
    with np.errstate(**_ERRSTATE):
        probs = np.exp(log_probs)
    pred = np.argmax(x64, axis=1)  # the first maximum: ties go to the lower index
    if pred_out.size:
        pred_out[...] = np.where(nan_rows, -1, pred)
    if max_logit_out.size:
        max_logit_out[...] = np.where(nan_rows, np.nan, x64[rows, pred])
    if confidence_out.size:
        confidence_out[...] = probs[rows, pred]
    if logsumexp_out.size:
        logsumexp_out[...] = _logsumexp64(x64)
    if entropy_out.size:
        with np.errstate(**_ERRSTATE):
            # p log p -> 0 as p -> 0: a class of probability 0 (masked) adds nothing.
            terms = np.where(probs == 0.0, 0.0, probs * log_probs)
        # 0.0 - sum, not -sum: a certain row has entropy 0.0, not -0.0
        entropy_out[...] = 0.0 - np.sum(terms, axis=1)
    if _asked(margin_out, logit_margin_out, top_k_indices_out, top_k_probs_out):
        # Classes by descending logit, ties in class order (a stable sort of -x).
        order = np.argsort(-x64, axis=1, kind="stable")
        if _asked(margin_out, logit_margin_out):
            if n_classes > 1:
                second = order[:, 1]
                second_logit, second_prob = x64[rows, second], probs[rows, second]
            else:  # no second class: logit -inf, probability 0
                second_logit, second_prob = np.full(n_rows, -np.inf), np.zeros(n_rows)
            with np.errstate(**_ERRSTATE):
                if margin_out.size:
                    margin_out[...] = probs[rows, pred] - second_prob
                if logit_margin_out.size:
                    logit_margin_out[...] = np.where(nan_rows, np.nan,
                                                     x64[rows, pred] - second_logit)
        top = order[:, :top_k]
        if top_k_indices_out.size:
            top_k_indices_out[...] = np.where(nan_rows[:, None], -1, top)
        if top_k_probs_out.size:
            top_k_probs_out[...] = np.take_along_axis(probs, top, axis=1)
    if not labels.size:
        return
    kept = labels != ignore_index
    label = np.where(kept, labels, 0)
    label_logprob = np.where(kept, log_probs[rows, label], 0.0)
    if label_logprob_out.size:
        label_logprob_out[...] = label_logprob
    if loss_out.size:
        loss_out[...] = 0.0 - label_logprob  # a certain label has loss 0.0, not -0.0
    if correct_out.size:
        correct_out[...] = kept & ~nan_rows & (pred == label)
    if label_rank_out.size:
        larger = np.sum(x64 > x64[rows, label][:, None], axis=1)
        label_rank_out[...] = np.where(kept & ~nan_rows, 1 + larger, 0)
    if brier_out.size:
        onehot = np.zeros_like(probs)
        onehot[rows, label] = 1.0
        brier_out[...] = np.where(kept, np.sum((probs - onehot) ** 2, axis=1), 0.0)


def score_binary(
    x, labels, ignore_index, threshold, prob_out, pred_out, confidence_out, entropy_out,
    loss_out, correct_out, brier_out, n_threads=1,
):
    x64 = x.astype(np.float64)
    prob = np.empty_like(x64)
    sigmoid(x64, prob)
    pred = prob >= threshold  # False for a NaN logit
    if prob_out.size:
        prob_out[...] = prob
    if pred_out.size:
        pred_out[...] = pred
    if confidence_out.size:
        confidence_out[...] = np.maximum(prob, 1.0 - prob)  # NaN stays NaN
    # log p = -softplus(-x), log(1 - p) = -softplus(x), exact in the tails.
    log_p, log_not_p = -_softplus64(-x64), -_softplus64(x64)
    if entropy_out.size:
        with np.errstate(**_ERRSTATE):
            entropy_out[...] = -(np.where(prob == 0.0, 0.0, prob * log_p)
                                 + np.where(prob == 1.0, 0.0, (1.0 - prob) * log_not_p))
    if not labels.size:
        return
    kept = labels != ignore_index
    positive = labels == 1
    if loss_out.size:
        loss_out[...] = np.where(kept, -np.where(positive, log_p, log_not_p), 0.0)
    if correct_out.size:
        correct_out[...] = kept & ~np.isnan(x64) & (pred == positive)
    if brier_out.size:
        brier_out[...] = np.where(kept, (prob - positive) ** 2, 0.0)


def score_multilabel(
    x, targets, threshold, n_predicted_out, loss_out, exact_match_out, true_positives_out,
    false_positives_out, false_negatives_out, pred_out, n_threads=1,
):
    x64 = x.astype(np.float64)
    prob = np.empty_like(x64)
    sigmoid(x64, prob)
    pred = prob >= threshold.astype(np.float64)[None, :]  # False for a NaN logit
    if pred_out.size:
        pred_out[...] = pred
    if n_predicted_out.size:
        n_predicted_out[...] = pred.sum(axis=1)
    if not targets.size:
        return
    truth = targets.astype(bool)
    if loss_out.size:
        bce = np.where(truth, _softplus64(-x64), _softplus64(x64))
        loss_out[...] = bce.mean(axis=1)
    if exact_match_out.size:
        exact_match_out[...] = np.all(pred == truth, axis=1)
    if true_positives_out.size:
        true_positives_out[...] = np.sum(pred & truth, axis=1)
    if false_positives_out.size:
        false_positives_out[...] = np.sum(pred & ~truth, axis=1)
    if false_negatives_out.size:
        false_negatives_out[...] = np.sum(~pred & truth, axis=1)


# --- temperature fitting -----------------------------------------------------------------


def temperature_nll(x, labels, sample_weight, ignore_index, inverse_temperature,
                    n_threads=1):
    # With b the inverse temperature, M the row max, d = x - M <= 0 and e = exp(b d):
    # p = e / sum e, NLL = log(sum e) - b d[y], dNLL/db = E_p[d] - d[y] and
    # d2NLL/db2 = Var_p[d], d3NLL/db3 = E_p[(d - E_p[d])^3] (shifting x by M changes
    # none of them). Masked classes (d = -inf,
    # e = 0) add 0 to the moments, not -inf * 0 = NaN.
    b = float(inverse_temperature)
    n_rows = x.shape[0]
    weights = (np.ones(n_rows) if sample_weight.size == 0
               else sample_weight.astype(np.float64))
    kept = (labels != ignore_index) & (weights != 0)
    x64 = x[kept].astype(np.float64)
    w = weights[kept]
    y = labels[kept]
    if x64.shape[0] == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    with np.errstate(**_ERRSTATE):
        row_max = np.max(x64, axis=1, keepdims=True)
        d = x64 - row_max
        e = np.exp(b * d)
        total = e.sum(axis=1)
        mean_d = np.sum(np.where(e > 0, e * d, 0.0), axis=1) / total
        var_d = np.sum(np.where(e > 0, e * d * d, 0.0), axis=1) / total - mean_d ** 2
        centred = np.where(e > 0, d - mean_d[:, None], 0.0)
        third = np.sum(e * centred ** 3, axis=1) / total
        label_d = d[np.arange(len(y)), y]
        nll = np.log(total) - b * label_d
        bad = ~np.isfinite(row_max[:, 0])
        stats = [nll, mean_d - label_d, np.maximum(var_d, 0.0), -label_d, third]
        stats = [np.where(bad, np.nan, s) for s in stats]
    return (float(w.sum()),) + tuple(float(np.sum(w * s)) for s in stats)
