"""Temperature scaling and calibration figures: ``fit_temperature``, ``calibration_error``,
``reliability`` and ``reliability_diagram`` (docs/calibration.md).

``fit_temperature`` finds the exact minimiser over T > 0 of the mean (weighted) negative
log-likelihood of ``softmax(logits / T)`` (Guo et al. 2017, "On Calibration of Modern
Neural Networks"). With b = 1 / T the NLL is convex in b:

    NLL(b) = mean_i (lse(b x_i) - b x_i[y_i]),
    NLL'(b) = mean_i (E_p[x_i] - x_i[y_i]),   NLL''(b) = mean_i Var_p[x_i] >= 0,

p = softmax(b x_i). One kernel pass (``temperature_nll`` of the op table) returns the
three sums and the weight total for a given b, so each Newton step costs one read of the
logits. Newton runs on u = log b (b stays positive), safeguarded by a bracket
[u_lo, u_hi] of the root of NLL'(e^u), which is increasing in u: a step that leaves the
bracket is replaced by bisection, and while one side is still open steps are capped at a
factor of 16 in b.

The calibration figures follow Guo et al.: the top-label confidence (max probability) of
each row, its correctness (argmax == label), bins ``(lo, hi]`` of [0, 1] (a confidence of
exactly 0 goes to the first bin), and ECE = sum_k n_k / N |acc_k - conf_k|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _ops
from . import _validate as v

# Newton on u = log(1/T) stops when its next step is below this; the step is still taken
# (without another pass), and Newton's error after a step s is O(s^2): ~1e-12 here.
_LOG_STEP_TOLERANCE = 1e-6
# ... or, where the pass also gave the NLL's third derivative, when its next Halley step
# is below this: Halley's error after a step s is K s^3 (K from the NLL's derivatives),
# at most ~1e-9 K here; measured on the bench's data: 3.6e-12 relative at 1048576x10
# (s = 2.4e-4), 1.2e-11 at 65536x1000 (s = 5.2e-4), one pass fewer than a tolerance of
# 1e-4 took to reach ~0 there.
_HALLEY_STEP_TOLERANCE = 1e-3
# Halley's step replaces Newton's once Newton's moves u by at most this (near the root,
# where the cubic model holds).
_HALLEY_RANGE = 1.0
# ... or when the bracket of the root is narrower than this (after bisections).
_BRACKET_TOLERANCE = 1e-12
# While the root is bracketed on one side only, a step moves b by at most this factor.
_MAX_LOG_STEP = math.log(16.0)
# Below this b (T above 2^40) with the NLL still falling as T grows, the fit stops: the
# logits carry no information that a finite temperature can sharpen.
_SMALLEST_INVERSE_TEMPERATURE = 2.0 ** -40
_MAX_PASSES = 100
# A b large enough that exp(b (x - max)) underflows to 0 for every x below its row's max:
# the NLL there is its limit as T -> 0.
_HUGE_INVERSE_TEMPERATURE = 1e300

STATUSES = ("optimal", "separable", "uninformative", "flat")
KINDS = ("multiclass", "binary", "multilabel")
METHODS = ("temperature", "platt")


@dataclass(frozen=True)
class TemperatureFit:
    """The result of ``fit_temperature``.

    ``temperature``: T (divide the logits by it); ``bias``: Platt scaling's offset
    (``method="platt"``: calibrated logit = x / T + bias; 0.0 otherwise).
    ``nll_before``: the mean NLL at T = 1 (bias 0); ``nll_after``: at the result.
    ``passes``: reads of the logits; ``converged``: a finite optimum was found to the
    tolerance. ``status``: ``"optimal"``; ``"separable"`` (every kept row's label has its
    row's largest logit: the NLL keeps falling as T -> 0, ``temperature`` is 0.0 and
    ``nll_after`` the NLL's limit there); ``"uninformative"`` (the NLL keeps falling as
    T grows: the labels are no better than uniform guesses, ``temperature`` is inf);
    ``"flat"`` (the NLL does not change with T: one class, constant rows, or every
    probability already exactly 0 or 1; ``temperature`` is 1.0).
    """

    temperature: float
    nll_before: float
    nll_after: float
    passes: int
    converged: bool
    status: str = "optimal"
    kind: str = "multiclass"
    bias: float = 0.0

    def __repr__(self) -> str:
        bias = f", bias={self.bias:.6g}" if self.bias else ""
        return (f"TemperatureFit(temperature={self.temperature:.6g}{bias}, "
                f"nll {self.nll_before:.6g} -> {self.nll_after:.6g}, passes={self.passes}, "
                f"converged={self.converged}, status={self.status!r})")


# --- fitting --------------------------------------------------------------------------

def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def _checked_weights(sample_weight, shape, dtype, name="sample_weight"):
    """Per-row weights as a flat C-contiguous array of ``dtype``: finite, >= 0."""
    if sample_weight is None:
        return np.empty(0, dtype)
    weights = v.float_array_like(sample_weight, name, dtype)
    if weights.shape != shape:
        raise ValueError(f"{name} must have the shape of labels {shape}, got "
                         f"{weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return np.ascontiguousarray(weights).reshape(-1)


def fit_temperature(logits, labels, *, axis=-1, kind="multiclass", ignore_index=-100,
                    sample_weight=None, method="temperature", backend=None) -> TemperatureFit:
    """The temperature T > 0 minimising the mean NLL of ``softmax(logits / T)``.

    Guo et al.'s temperature scaling: fit T on a validation split by NLL, then divide
    the test logits by it. Exact (to ~1e-10 relative) and typically in <= 8 passes over
    the logits, each pass one kernel call that also returns the NLL's first and second
    derivatives (Newton on log(1/T), safeguarded by a bracket).

    ``labels``: integer classes with the logits' shape minus ``axis``; rows whose label is
    ``ignore_index`` or whose ``sample_weight`` is 0 are left out; the mean is weighted by
    ``sample_weight`` (finite, >= 0). ``kind="binary"`` (one logit per row, labels 0 / 1)
    and ``kind="multilabel"`` (0 / 1 label matrix of the logits' shape) fit the
    temperature of independent sigmoids; for ``kind="binary"``, ``method="platt"`` fits
    Platt scaling instead, a slope (given as ``temperature`` = 1 / slope) and a ``bias``.

    Outcomes besides a finite optimum (``status``, see ``TemperatureFit``): separable
    data -> T = 0.0; labels no better than uniform -> T = inf; an NLL that does not depend
    on T (one class...) -> T = 1.0. All rows left out -> ValueError; a kept row holding
    NaN or +inf, only -inf, or a -inf at its label (infinite loss at every T) ->
    ValueError naming the row.

    >>> import numpy as np, logitcore
    >>> rng = np.random.default_rng(0)
    >>> logits = 2.0 * rng.normal(size=(20000, 10))
    >>> p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    >>> labels = (rng.random((20000, 1)) > p.cumsum(axis=1)).sum(axis=1)  # drawn from p
    >>> fit = logitcore.fit_temperature(3.0 * logits, labels)  # over-confident 3x
    >>> round(fit.temperature, 1), fit.status, fit.passes <= 8
    (3.0, 'optimal', True)
    """
    kind = _check_choice(kind, "kind", KINDS)
    method = _check_choice(method, "method", METHODS)
    if method == "platt" and kind != "binary":
        raise ValueError("method='platt' needs kind='binary'")
    ignore_index = v.check_ignore_index(ignore_index)
    logits = v.as_float_array(logits, "logits")
    if kind != "multiclass":
        return _fit_sigmoid(logits, labels, axis, kind, ignore_index, sample_weight, method)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis)")
    class_axis = v.single_axis(axis, logits.ndim)
    row_shape = logits.shape[:class_axis] + logits.shape[class_axis + 1:]
    n_classes = logits.shape[class_axis]
    labels = np.asarray(labels)
    if labels.shape != row_shape:
        raise ValueError(f"labels must have the shape of logits without axis {axis}, "
                         f"{row_shape}, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    x2d = _ops._as_rows(logits, (class_axis,))
    flat_labels, _ = _ops._labels_in_range(labels, "labels", "fit_temperature", ignore_index,
                                           _ops._ones(n_classes, logits.dtype), backend)
    weights = _checked_weights(sample_weight, row_shape, logits.dtype)

    def pass_sums(b):
        sums = _ops._run("temperature_nll", "fit_temperature", backend, x2d, flat_labels,
                         weights, ignore_index, b)
        if not all(math.isfinite(s) for s in sums):
            _raise_bad_row(x2d, flat_labels, weights, ignore_index, row_shape)
        return sums

    return fit_temperature_by_sums(pass_sums)


def fit_temperature_by_sums(pass_sums, kind="multiclass") -> TemperatureFit:
    """``fit_temperature``'s fit, given ``pass_sums(b) -> (weight, NLL, NLL'(b), NLL''(b),
    lim_{b -> inf} NLL'(b)[, NLL'''(b)])``: weighted sums over every kept row at inverse temperature
    b, each a sum of per-row terms, so that the sums of chunks of rows add up to those of
    all the rows. This is how data read chunk by chunk are fitted (``logitcore score
    --fit-temperature`` streams its validation file): ``pass_sums`` reads every chunk
    once per call. The sums must be finite (a caller names the bad row)."""
    def evaluate(b):
        sums = pass_sums(b)
        total = sums[0]
        if total == 0.0:
            raise ValueError("fit_temperature: no rows to fit: every label is ignore_index "
                             "or has weight 0")
        return tuple(s / total for s in sums[1:])

    fit = _newton_on_log_inverse_temperature(evaluate)
    if kind == "multiclass":
        return fit
    return TemperatureFit(fit.temperature, fit.nll_before, fit.nll_after, fit.passes,
                          fit.converged, fit.status, kind)


def _raise_bad_row(x2d, flat_labels, weights, ignore_index, row_shape):
    """The ValueError for a kept row whose NLL is not finite (only on that path)."""
    kept = flat_labels != ignore_index
    if weights.size:
        kept &= weights != 0
    with np.errstate(invalid="ignore"):
        row_max = np.max(x2d, axis=1)
    label_logit = x2d[np.arange(x2d.shape[0]), np.where(kept, flat_labels, 0)]
    bad = kept & (~np.isfinite(row_max) | np.isnan(x2d).any(axis=1)
                  | (label_logit == -np.inf))
    where = ([int(i) for i in np.unravel_index(int(np.argmax(bad)), row_shape)]
             if bad.any() else "?")
    raise ValueError(
        f"logits: row {where} (kept) holds NaN or +inf, or only -inf, or -inf at its "
        f"label: its NLL is not finite at any temperature; give it label ignore_index "
        f"or weight 0 to leave it out")


def _halley_log_step(b, slope, curvature, third):
    """Halley's step for the root of NLL'(b), as a step of u = log b: b moves by
    -(s / c) / (1 - s t / (2 c^2)) with s, c, t the NLL's first three derivatives; None
    where that is not within a factor of 2 of Newton's -s / c, or would halve b."""
    if third is None or not curvature > 0.0 or not math.isfinite(third):
        return None
    correction = 1.0 - 0.5 * slope * third / (curvature * curvature)
    if not 0.5 <= correction <= 2.0:
        return None
    relative = -slope / (curvature * correction) / b
    return math.log1p(relative) if relative > -0.5 else None


def _newton_on_log_inverse_temperature(evaluate) -> TemperatureFit:
    """Minimise the convex NLL(b), b = 1 / T > 0, given ``evaluate(b) -> (nll, nll'(b),
    nll''(b), lim_{b -> inf} nll'(b)[, nll'''(b)])``: Newton steps on u = log b, Halley's
    near the root when the third derivative comes too, kept inside a bracket."""
    u = 0.0  # log b: start at T = 1
    nll, slope, curvature, limit_slope, *third = evaluate(1.0)
    nll_before, passes = nll, 1
    if slope == 0.0 and curvature == 0.0:
        return TemperatureFit(1.0, nll, nll, passes, True, "flat")
    if limit_slope <= 0.0:  # every kept label at its row's max: NLL' < 0 for every b
        limit = evaluate(_HUGE_INVERSE_TEMPERATURE)[0]
        return TemperatureFit(0.0, nll_before, limit, passes + 1, False, "separable")
    u_low, u_high = -math.inf, math.inf  # NLL' < 0 below the root, > 0 above
    while passes < _MAX_PASSES:
        if slope == 0.0:
            return TemperatureFit(math.exp(-u), nll_before, nll, passes, True)
        if slope < 0.0:
            u_low = u
        else:
            u_high = u
        # Newton on T when T grows (slope > 0), on b when b grows: both move u by
        # log1p(|slope| / (b curvature)), a step that stays positive in T and b and
        # overshoots less than Newton on u itself (|slope| / (b curvature)) where the
        # curvature grows toward the root (the usual over-confident network).
        b = math.exp(u)
        step = (-math.copysign(math.log1p(abs(slope) / (b * curvature)), slope)
                if curvature > 0.0 else -math.copysign(math.inf, slope))
        step = max(-_MAX_LOG_STEP, min(_MAX_LOG_STEP, step))
        tolerance = _LOG_STEP_TOLERANCE * max(1.0, abs(u))
        halley = (_halley_log_step(b, slope, curvature, third[0] if third else None)
                  if abs(step) <= _HALLEY_RANGE else None)
        if halley is not None:
            step = halley
            tolerance = _HALLEY_STEP_TOLERANCE * max(1.0, abs(u))
        if abs(step) <= tolerance:  # the next step: converged (quadratically or cubically)
            # the NLL at the result, from this pass's derivatives (Taylor's series in b: its
            # error is O(step^4), where the NLL of this pass is off by O(step^2))
            db = math.exp(u + step) - b
            nll_after = nll + db * (slope + db * (0.5 * curvature
                                                  + db * (third[0] / 6.0 if third else 0.0)))
            return TemperatureFit(math.exp(-(u + step)), nll_before, nll_after, passes, True)
        u_next = u + step
        if not u_low < u_next < u_high:  # Newton left the bracket: bisect it
            if math.isinf(u_low) or math.isinf(u_high):
                u_next = u + (_MAX_LOG_STEP if math.isinf(u_high) else -_MAX_LOG_STEP)
            else:
                u_next = 0.5 * (u_low + u_high)
        if u_high - u_low <= _BRACKET_TOLERANCE * max(1.0, abs(u)):
            return TemperatureFit(math.exp(-u_next), nll_before, nll, passes, True)
        if slope > 0.0 and math.exp(u_next) < _SMALLEST_INVERSE_TEMPERATURE:
            return TemperatureFit(math.inf, nll_before, nll, passes, False, "uninformative")
        u = u_next
        nll, slope, curvature, _, *third = evaluate(math.exp(u))
        passes += 1
    return TemperatureFit(math.exp(-u), nll_before, nll, passes, False)


# --- sigmoid temperature and Platt scaling (binary, multilabel) -------------------------
# Independent sigmoids: with t in {0, 1} and z = (2 t - 1) x the loss of one logit at
# inverse temperature b is softplus(-b z), its derivatives in b are -z sigmoid(-b z) and
# z^2 sigmoid(b z) sigmoid(-b z) (with q = sigmoid(-b z): -z q and z^2 q (1 - q), the third
# -z^3 q (1 - q) (1 - 2 q)), and its slope as b -> inf is max(-z, 0). These passes
# are float64 NumPy over chunks of elements (no (n, C) temporary beyond a chunk).

_SIGMOID_CHUNK = 1 << 20


def _sigmoid_logits(logits, labels, axis, kind):
    """The logits of a binary or multilabel fit as it takes them (binary: one per row, a
    (n, 1) column flattened), once labels are checked against them: NumPy or dask
    arrays (logitcore.dask's fits check theirs here too)."""
    if kind == "binary":
        if logits.ndim == 2 and logits.shape[v.single_axis(axis, 2)] == 1:
            logits = logits.reshape(-1)
        if logits.ndim != 1:
            raise ValueError(f"kind='binary' takes one logit per row: shape (n,) or (n, 1), "
                             f"got {logits.shape}")
        if labels.shape != logits.shape:
            raise ValueError(f"labels must have shape {logits.shape}, got {labels.shape}")
        if labels.dtype.kind not in "iub":
            raise TypeError(f"labels must be 0 / 1 integers, got dtype {labels.dtype}")
    elif labels.shape != logits.shape:
        raise ValueError(f"labels for kind='multilabel' must have the logits' shape "
                         f"{logits.shape}, got {labels.shape}")
    return logits


def _sigmoid_targets(logits, labels, axis, kind, ignore_index):
    """(flat logits, flat signs z/x in {-1, +1}, flat kept mask) of a binary or
    multilabel fit."""
    labels = np.asarray(labels)
    logits = _sigmoid_logits(logits, labels, axis, kind)
    if kind == "binary":
        kept = labels != ignore_index
    else:
        kept = np.ones(labels.shape, bool)
    values = labels[kept]
    if np.any((values != 0) & (values != 1)):
        raise ValueError("labels must be 0 or 1" +
                         (" (or ignore_index)" if kind == "binary" else ""))
    signs = np.where(labels == 1, 1.0, -1.0)
    return logits.reshape(-1), signs.reshape(-1), kept.reshape(-1)


def _softplus(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid_sums(z, w, b):
    """(weight, NLL, NLL'(b), NLL''(b), slope as b -> inf, NLL'''(b)), weighted sums over
    chunks."""
    sums = np.zeros(6)
    for start in range(0, z.size, _SIGMOID_CHUNK):
        zc = z[start:start + _SIGMOID_CHUNK]
        wc = w[start:start + _SIGMOID_CHUNK]
        with np.errstate(over="ignore"):
            q = 1.0 / (1.0 + np.exp(b * zc))  # sigmoid(-b z)
        sums += (wc.sum(), np.sum(wc * _softplus(-b * zc)), -np.sum(wc * zc * q),
                 np.sum(wc * zc * zc * q * (1.0 - q)), np.sum(wc * np.maximum(-zc, 0.0)),
                 -np.sum(wc * zc * zc * zc * q * (1.0 - q) * (1.0 - 2.0 * q)))
    return sums


def _fit_sigmoid(logits, labels, axis, kind, ignore_index, sample_weight, method):
    flat, signs, kept = _sigmoid_targets(logits, labels, axis, kind, ignore_index)
    weights = (np.ones(flat.size) if sample_weight is None
               else _checked_weights(sample_weight, np.shape(labels), np.float64))
    kept &= weights != 0
    x = flat.astype(np.float64)[kept]
    s = signs[kept]
    z = s * x
    w = weights[kept]
    if not w.size or w.sum() == 0.0:
        raise ValueError("fit_temperature: no rows to fit: every label is ignore_index "
                         "or has weight 0")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits: a kept logit is NaN or infinite")
    if method == "platt":
        return _fit_platt(x, s, w)

    return fit_temperature_by_sums(lambda b: _sigmoid_sums(z, w, b), kind)


def _platt_sums(x, s, w, a, c):
    """The seven float64 sums of one Platt evaluation at slope ``a`` and bias ``c`` over
    a batch of kept logits ``x`` with label signs ``s`` (+1 / -1) and weights ``w``:
    (weight, sum w softplus(-m), sum w s x q, sum w s q, sum h x^2, sum h x, sum h) with
    the margin m = s (a x + c), q = sigmoid(-m) and h = w q (1 - q). Each is a sum of
    per-row terms, so the sums of batches of rows add up to those of all the rows."""
    margin = s * (a * x + c)
    with np.errstate(over="ignore"):
        q = 1.0 / (1.0 + np.exp(margin))
    curv = w * q * (1.0 - q)
    return np.array([w.sum(), np.sum(w * _softplus(-margin)), np.sum(w * (s * x) * q),
                     np.sum(w * s * q), np.sum(curv * x * x), np.sum(curv * x),
                     np.sum(curv)], dtype=np.float64)


def _platt_from_sums(sums):
    """(mean NLL, gradient, Hessian) in (a, c) from ``_platt_sums`` of every kept row."""
    total = sums[0]
    if total == 0.0:
        raise ValueError("fit_temperature: no rows to fit: every label is ignore_index "
                         "or has weight 0")
    grad = -np.array([sums[2], sums[3]]) / total
    hess = np.array([[sums[4], sums[5]], [sums[5], sums[6]]]) / total
    return sums[1] / total, grad, hess


def _fit_platt(x, s, w):
    """Platt scaling of in-memory logits (see ``fit_platt_by_sums``)."""
    return fit_platt_by_sums(lambda a, c: _platt_sums(x, s, w, a, c))


def fit_platt_by_sums(platt_sums) -> TemperatureFit:
    """Platt scaling: (a, c) minimising the weighted mean BCE of sigmoid(a x + c) against
    labels of sign s (+1 / -1), by Newton with a backtracking line search (the loss is
    convex in (a, c)); plain maximum likelihood, without Platt's smoothed targets.

    ``platt_sums(a, c)`` gives the seven sums of ``_platt_sums`` over every kept row:
    one read of the logits per call (in memory one NumPy pass, on dask one distributed
    reduction of seven float64 per block), so the in-memory and the dask fit run this
    one iteration."""
    params = np.array([1.0, 0.0])

    def evaluate(a, c):
        return _platt_from_sums(platt_sums(float(a), float(c)))

    nll, grad, hess = evaluate(*params)
    nll_before, passes, converged = nll, 1, False
    while passes < _MAX_PASSES:
        try:
            step = -np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        except np.linalg.LinAlgError:
            step = -grad
        if np.all(np.abs(step) <= _LOG_STEP_TOLERANCE * np.maximum(1.0, np.abs(params))):
            converged = True
            break
        scale = 1.0
        while True:
            trial = params + scale * step
            trial_nll, trial_grad, trial_hess = evaluate(*trial)
            passes += 1
            if trial_nll <= nll + 1e-4 * scale * float(grad @ step) or scale < 1e-10:
                break
            scale *= 0.5
        if scale < 1e-10:
            break
        params, nll, grad, hess = trial, trial_nll, trial_grad, trial_hess
    slope, bias = params
    return TemperatureFit(1.0 / slope if slope else math.inf, nll_before, nll, passes,
                          converged, "optimal" if converged else "separable", "binary",
                          float(bias))


# --- calibration figures ------------------------------------------------------------------
# Bins are (lo, hi] of [0, 1], as in Guo et al.: with edges e_0 = 0 < e_1 < ... < e_M = 1
# (np.linspace(0, 1, M + 1) for uniform bins) a confidence c falls in bin k when
# e_k < c <= e_{k+1}; c = 0 falls in the first bin. (torchmetrics bins [lo, hi) and puts
# c = 1.0 in an extra bin of its own, its issue #3510: the two agree wherever no
# confidence lies on an inner edge or at 1.0.)

BINNINGS = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")
MODES = ("top-label", "classwise")


def merge_in_order(states, what="state"):
    """``states[0].merge(states[1]).merge(states[2])...``: the ``combine`` of the mergeable
    states (CalibrationBins here, Summary in _score.py); ValueError when there are none."""
    states = list(states)
    if not states:
        raise ValueError(f"combine needs at least one {what}")
    total = states[0]
    for state in states[1:]:
        total = total.merge(state)
    return total


@dataclass(frozen=True, eq=False)
class CalibrationBins:
    """Per-bin sums of confidences and correct predictions: a state that merges.

    ``edges`` (M + 1,) float64 with bin k = (edges[k], edges[k + 1]] (0 falls in bin 0);
    ``counts`` (M,) int64 rows per bin; ``confidence_sums`` and ``correct_sums`` (M,)
    float64 (weighted when weights were given; ``counts`` stays a row count, ``weights``
    the weight per bin). States with the same edges merge (``a.merge(b)``,
    ``CalibrationBins.combine``) into the state of all their rows, exactly for
    counts and up to float64 rounding for the sums.
    """

    edges: np.ndarray
    counts: np.ndarray
    weights: np.ndarray
    confidence_sums: np.ndarray
    correct_sums: np.ndarray

    @classmethod
    def of(cls, confidence, correct, *, n_bins=15, edges=None, sample_weight=None):
        """The state of one batch of top-label confidences in [0, 1] and 0 / 1 (or
        bool) correctness. NaN confidences are left out."""
        confidence = np.asarray(confidence).reshape(-1)
        if confidence.dtype not in _BINNED_DTYPES:  # float32 is binned and summed as is
            confidence = confidence.astype(np.float64)
        correct = np.asarray(correct).reshape(-1)
        if correct.shape != confidence.shape:
            raise ValueError(f"correct must have one value per confidence: "
                             f"{correct.shape} vs {confidence.shape}")
        if edges is None:
            edges = uniform_edges(n_bins)
        edges = np.asarray(edges, dtype=np.float64)
        n_bins = edges.size - 1
        weight = (None if sample_weight is None
                  else np.asarray(sample_weight, dtype=np.float64).reshape(-1))
        lowest = confidence.min() if confidence.size else 0.0
        if np.isnan(lowest):  # NaN confidences (min propagates NaN): left out
            keep = ~np.isnan(confidence)
            confidence, correct = confidence[keep], correct[keep]
            weight = None if weight is None else weight[keep]
            lowest = confidence.min() if confidence.size else 0.0
        if confidence.size and (lowest < 0.0 or confidence.max() > 1.0):
            raise ValueError("confidences must lie in [0, 1]")
        index = _bin_index(confidence, edges)
        correct = correct.astype(np.float64)
        counts = np.bincount(index, minlength=n_bins).astype(np.int64)
        if weight is None:  # every weight 1: the same sums without the products
            return cls(edges=edges, counts=counts, weights=counts.astype(np.float64),
                       confidence_sums=np.bincount(index, confidence, minlength=n_bins),
                       correct_sums=np.bincount(index, correct, minlength=n_bins))
        return cls(
            edges=edges,
            counts=counts,
            weights=np.bincount(index, weight, minlength=n_bins),
            confidence_sums=np.bincount(index, weight * confidence, minlength=n_bins),
            correct_sums=np.bincount(index, weight * correct, minlength=n_bins))

    def merge(self, other: CalibrationBins) -> CalibrationBins:
        if not isinstance(other, CalibrationBins):
            raise TypeError(f"can only merge CalibrationBins, got {type(other).__name__}")
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("calibration bins merge only with the same edges (quantile "
                             "bins depend on the data: bin all the confidences at once)")
        return CalibrationBins(self.edges, self.counts + other.counts,
                               self.weights + other.weights,
                               self.confidence_sums + other.confidence_sums,
                               self.correct_sums + other.correct_sums)

    @classmethod
    def combine(cls, states) -> CalibrationBins:
        """The state of all the rows of ``states`` (in order)."""
        return merge_in_order(states, "state")

    def __eq__(self, other):
        return isinstance(other, CalibrationBins) and all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("edges", "counts", "weights", "confidence_sums", "correct_sums"))

    def table(self) -> dict:
        """Per bin: ``edges``, ``counts``, ``confidence`` (mean) and ``accuracy`` (NaN
        for empty bins)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"edges": self.edges.copy(), "counts": self.counts.copy(),
                    "confidence": self.confidence_sums / self.weights,
                    "accuracy": self.correct_sums / self.weights}

    def error(self, norm="l1") -> float:
        """l1: ECE = sum_k w_k / W |acc_k - conf_k|; l2: its root mean square form
        sqrt(sum_k w_k / W (acc_k - conf_k)^2); max: MCE = max over non-empty bins.
        NaN when no rows."""
        _check_choice(norm, "norm", NORMS)
        total = self.weights.sum()
        full = self.weights > 0
        if not full.any() or total == 0.0:
            return math.nan
        gaps = np.abs(self.correct_sums[full] - self.confidence_sums[full]) / self.weights[full]
        share = self.weights[full] / total
        if norm == "l1":
            return float(np.sum(share * gaps))
        if norm == "l2":
            return float(math.sqrt(np.sum(share * gaps * gaps)))
        return float(np.max(gaps))


def _bin_index(confidence, edges):
    """The bin of each confidence in [0, 1]: k with edges[k] < c <= edges[k + 1], 0 for
    c = 0 (searchsorted(edges, c, side="left") - 1, clipped).

    Uniform edges (np.linspace(0, 1, M + 1)) take the arithmetic ceil(c M) - 1, which is
    several times faster than a binary search per confidence; the few confidences within
    rounding of an edge (where c M and the edge may round apart) take the search."""
    n_bins = edges.size - 1
    if edges.size != 1 and np.array_equal(edges, uniform_edges(n_bins)):
        scaled = np.multiply(confidence, n_bins, dtype=np.float64)
        ceiling = np.ceil(scaled)
        index = ceiling.astype(np.intp)
        index -= 1
        above = np.subtract(ceiling, scaled, out=ceiling)  # in [0, 1): near 0 or 1 by an edge
        above -= 0.5
        near_edge = np.flatnonzero(np.abs(above, out=above) > 0.5 - _EDGE_ROUNDING)
        index[near_edge] = np.searchsorted(edges, confidence[near_edge], side="left") - 1
    else:
        index = np.searchsorted(edges, confidence, side="left") - 1
    return np.clip(index, 0, n_bins - 1, out=index)


# c M and the uniform edge k / M are both within a few ulps of their exact values: a
# confidence whose c M lies this close to an integer is binned by searching the edges.
_EDGE_ROUNDING = 1e-9
_BINNED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def uniform_edges(n_bins: int) -> np.ndarray:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def _quantile_edges(confidence, n_bins):
    """Edges holding about equally many confidences: the 0, 1/M, ..., 1 quantiles, the
    outer ones widened to 0 and 1 (repeated inner edges leave empty bins)."""
    uniform_edges(n_bins)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    confidence = confidence[~np.isnan(confidence)]
    if not confidence.size:
        return uniform_edges(n_bins)
    edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def _check_given_scores(scores, labels, temperature):
    """Raise unless a calibration call given ``scores`` (a Scores, or logitcore.dask's
    DaskScores) instead of logits has the fields it needs and no labels or temperature,
    which only go with logits."""
    kind = type(scores).__name__
    if labels is not None:
        raise ValueError(f"labels come with the {kind} (score(logits, labels)); "
                         "pass labels=None")
    if temperature is not None:
        raise ValueError(f"temperature= rescales logits; a {kind} was computed at one "
                         "temperature already: score(logits / T, labels)")
    for name in ("confidence", "correct"):
        if name not in scores:
            raise ValueError(f"calibration needs the {kind} field {name!r}: call "
                             f"score(logits, labels) with it in fields")


def _top_label(logits_or_scores, labels, axis, ignore_index, temperature, backend):
    """(confidence, correct, weight mask) per kept row, from a Scores or from logits."""
    from ._score import Scores, score

    if isinstance(logits_or_scores, Scores):
        scores = logits_or_scores
        _check_given_scores(scores, labels, temperature)
        kept = scores["kept"] if "kept" in scores else scores._kept
        confidence = scores["confidence"].reshape(-1)
        correct = scores["correct"].reshape(-1)
        if kept is not None and not kept.all():
            kept = kept.reshape(-1)
            confidence, correct = confidence[kept], correct[kept]
        return confidence, correct
    if labels is None:
        raise ValueError("labels are needed with logits (or pass a Scores from score())")
    logits = v.as_float_array(logits_or_scores, "logits_or_scores")
    fields = ("confidence", "correct", "kept")
    if temperature is None:
        s = score(logits, labels, axis=axis, ignore_index=ignore_index, fields=fields,
                  backend=backend)
        return _top_label(s, None, axis, ignore_index, None, backend)
    temperature = _check_temperature(temperature)
    # Rows are rescaled chunk by chunk: one chunk of logits / T exists at a time.
    class_axis = v.single_axis(axis, logits.ndim)
    x2d = _ops._as_rows(logits, (class_axis,))
    flat_labels = np.asarray(labels).reshape(-1)
    if flat_labels.shape[0] != x2d.shape[0]:
        raise ValueError(f"labels must have one label per row of logits: {x2d.shape[0]} "
                         f"rows, got labels of shape {np.shape(labels)}")
    rows = max(1, _RESCALE_CHUNK_ELEMENTS // max(x2d.shape[1], 1))
    parts = []
    for start in range(0, x2d.shape[0], rows):
        chunk = x2d[start:start + rows] / x2d.dtype.type(temperature)
        s = score(chunk, flat_labels[start:start + rows], ignore_index=ignore_index,
                  fields=fields, backend=backend)
        parts.append(_top_label(s, None, -1, ignore_index, None, backend))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


_RESCALE_CHUNK_ELEMENTS = 1 << 20


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(
            temperature, (int, float, np.integer, np.floating)):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}")
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return temperature


def _classwise_states(logits, labels, axis, ignore_index, temperature, edges, backend):
    """One CalibrationBins per class: p_c of every kept row against [label == c]."""
    logits = v.as_float_array(logits, "logits_or_scores")
    class_axis = v.single_axis(axis, logits.ndim)
    x2d = _ops._as_rows(logits, (class_axis,))
    flat_labels = np.asarray(labels).reshape(-1)
    n_classes = x2d.shape[1]
    scale = 1.0 if temperature is None else 1.0 / _check_temperature(temperature)
    rows = max(1, _RESCALE_CHUNK_ELEMENTS // max(n_classes, 1))
    states = None
    for start in range(0, x2d.shape[0], rows):
        chunk = x2d[start:start + rows]
        chunk_labels = flat_labels[start:start + rows]
        kept = chunk_labels != ignore_index
        probs = _ops.softmax(chunk[kept] * chunk.dtype.type(scale) if scale != 1.0
                             else chunk[kept], backend=backend)
        onehot = chunk_labels[kept][:, None] == np.arange(n_classes)[None, :]
        part = [CalibrationBins.of(probs[:, c], onehot[:, c], edges=edges)
                for c in range(n_classes)]
        states = part if states is None else [a.merge(b) for a, b in zip(states, part)]
    return states


def reliability(logits_or_scores, labels=None, *, n_bins=15, binning="uniform", axis=-1,
                ignore_index=-100, temperature=None, backend=None) -> CalibrationBins:
    """The reliability table of top-label predictions as a mergeable ``CalibrationBins``
    (``.table()``: per-bin edges, counts, mean confidence, accuracy; ``.error(norm)``).

    Takes logits with integer ``labels`` (rows whose label is ``ignore_index`` left out),
    or the ``Scores`` of ``score(logits, labels)`` with the fields ``confidence`` and
    ``correct`` (nothing reads the logits again). ``temperature`` (a positive scalar)
    scores ``logits / temperature`` instead, one chunk of rows at a time (no copy of the
    whole array). Bins are (lo, hi] (Guo et al.), 0 in the first, 1.0 in the last.

    >>> import numpy as np, logitcore
    >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    >>> t = logitcore.reliability(logits, np.array([0, 0, 0]), n_bins=2).table()
    >>> t["counts"], t["accuracy"].round(4)
    (array([0, 3]), array([   nan, 0.6667]))
    """
    _check_choice(binning, "binning", BINNINGS)
    confidence, correct = _top_label(logits_or_scores, labels, axis, ignore_index,
                                     temperature, backend)
    edges = (uniform_edges(n_bins) if binning == "uniform"
             else _quantile_edges(confidence, n_bins))
    return CalibrationBins.of(confidence, correct, edges=edges)


def calibration_error(logits_or_scores, labels=None, *, n_bins=15, binning="uniform",
                      norm="l1", mode="top-label", axis=-1, ignore_index=-100,
                      temperature=None, backend=None) -> float:
    """Expected calibration error (``norm="l1"``, ECE), its root-mean-square form
    (``"l2"``) or the maximum calibration error (``"max"``, MCE).

    ``mode="top-label"`` (Guo et al.): the max probability of each row against whether
    its argmax is the label, in ``n_bins`` bins (lo, hi] (``binning="uniform"``: equal
    widths, ``"quantile"``: equal counts), ECE = sum_k n_k / N |acc_k - conf_k|.
    ``mode="classwise"`` (Kull et al. 2019): for every class c, p_c of every row against
    [label == c], binned the same way; the mean over classes of each class's error
    (needs logits; reads the full softmax one chunk of rows at a time).
    Inputs as for ``reliability``. NaN when no rows are kept.

    >>> import numpy as np, logitcore
    >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    >>> round(logitcore.calibration_error(logits, np.array([0, 0, 0])), 4)
    0.2992
    """
    _check_choice(mode, "mode", MODES)
    _check_choice(norm, "norm", NORMS)
    if mode == "top-label":
        return reliability(logits_or_scores, labels, n_bins=n_bins, binning=binning,
                           axis=axis, ignore_index=ignore_index, temperature=temperature,
                           backend=backend).error(norm)
    from ._score import Scores

    if isinstance(logits_or_scores, Scores):
        raise ValueError("mode='classwise' needs the logits (every class's probability), "
                         "not a Scores")
    if labels is None:
        raise ValueError("labels are needed with logits")
    _check_choice(binning, "binning", BINNINGS)
    edges = uniform_edges(n_bins)
    if binning == "quantile":
        raise ValueError("mode='classwise' supports binning='uniform' only")
    states = _classwise_states(logits_or_scores, labels, axis, ignore_index, temperature,
                               edges, backend)
    return float(np.mean([state.error(norm) for state in states]))


# --- the reliability diagram ----------------------------------------------------------------

def reliability_diagram(logits_or_scores, labels=None, *, n_bins=15, binning="uniform",
                        axis=-1, ignore_index=-100, temperature=None, backend=None,
                        title=None, path=None, ax=None):
    """Guo et al.'s reliability diagram: accuracy per bin as bars against the diagonal,
    the gap to it shaded, the histogram of confidences below and the ECE in the legend.

    Inputs as for ``reliability``, or a ``CalibrationBins`` itself. Needs matplotlib
    (``pip install "logitcore[plot]"``), imported only here. Returns the matplotlib
    Figure; with ``path`` also writes it (PNG, SVG, PDF... from the suffix). ``ax``: a
    pair of Axes (diagram, histogram) to draw into instead of a new figure.
    """
    try:
        import matplotlib
        if ax is None:
            matplotlib.use(matplotlib.get_backend())  # keep the caller's backend
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('reliability_diagram needs matplotlib, which is not installed: '
                          'pip install "logitcore[plot]"') from None
    bins = logits_or_scores if isinstance(logits_or_scores, CalibrationBins) else reliability(
        logits_or_scores, labels, n_bins=n_bins, binning=binning, axis=axis,
        ignore_index=ignore_index, temperature=temperature, backend=backend)
    table = bins.table()
    edges, counts = table["edges"], table["counts"]
    lefts, widths = edges[:-1], np.diff(edges)
    full = counts > 0
    accuracy = np.where(full, table["accuracy"], 0.0)
    confidence = np.where(full, table["confidence"], 0.0)
    if ax is None:
        figure, (top, bottom) = plt.subplots(
            2, 1, figsize=(4.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        top, bottom = ax
        figure = top.figure
    top.bar(lefts, accuracy, widths, align="edge", color="#4C72B0", edgecolor="black",
            linewidth=0.6, label="accuracy")
    gap_bottom = np.minimum(accuracy, confidence)
    top.bar(lefts[full], np.abs(confidence - accuracy)[full], widths[full],
            bottom=gap_bottom[full], align="edge", color="#DD8452", alpha=0.45,
            edgecolor="#C44E52", hatch="//", linewidth=0.6, label="gap")
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(title=f"ECE = {100 * bins.error('l1'):.2f}%", loc="upper left",
               fontsize="small")
    if title:
        top.set_title(title)
    bottom.bar(lefts, counts / max(counts.sum(), 1), widths, align="edge",
               color="#8C8C8C", edgecolor="black", linewidth=0.6)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=80)
    return figure
