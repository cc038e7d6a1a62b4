"""tune_thresholds and the per-class curves against scikit-learn's exact answers."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import logitcore
from logitcore import _thresholds

metrics = pytest.importorskip("sklearn.metrics")

BACKENDS = ("numpy", "numba")
DTYPES = (np.float32, np.float64)
TIE = 1e-12  # relative: values this close are one value computed two ways


# --- the reference: scanning scikit-learn's curves ------------------------------------------

def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _near_max(values, mask=None):
    """Indices whose value ties the maximum (over mask) up to rounding."""
    values = np.where(np.isnan(values), -np.inf, values)
    if mask is not None:
        values = np.where(mask, values, -np.inf)
    best = values.max()
    return np.nonzero(values >= best - TIE * abs(best))[0]


def reference(scores, y, metric, *, beta=1.0, p=None, r=None, w=None):
    """(threshold, value) by scanning scikit-learn's curve for one class."""
    scores = np.asarray(scores, np.float64)
    if metric in ("f1", "fbeta"):
        if not np.any(y[w != 0] if w is not None else y):
            return math.inf, 0.0  # documented: no positives -> predict nothing
        precision, recall, thresholds = _quiet(metrics.precision_recall_curve, y, scores,
                                               sample_weight=w)
        precision, recall = precision[:-1], recall[:-1]
        b2 = beta * beta
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(precision + recall > 0,
                         (1 + b2) * precision * recall / (b2 * precision + recall), 0.0)
        i = _near_max(f)[0]  # increasing thresholds: ties to the lowest
        return thresholds[i], f[i]
    if metric in ("balanced_accuracy", "youden_j"):
        fpr, tpr, thresholds = _quiet(metrics.roc_curve, y, scores, sample_weight=w,
                                      drop_intermediate=False)
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            return math.inf, math.nan
        j = tpr - fpr
        i = _near_max(j)[0]  # decreasing thresholds: ties to the highest
        value = j[i] if metric == "youden_j" else (tpr[i] + 1 - fpr[i]) / 2
        return thresholds[i], value
    precision, recall, thresholds = _quiet(metrics.precision_recall_curve, y, scores,
                                           sample_weight=w)
    if not np.any(y[w != 0] if w is not None else y):
        return math.inf, math.nan
    thresholds = np.append(thresholds, np.inf)
    first, second = (recall, precision) if metric == "recall" else (precision, recall)
    feasible = precision >= p if metric == "recall" else recall >= r
    best = _near_max(first, feasible)
    best = best[_near_max(second[best])]
    return thresholds[best[0]], first[best[0]]


def check_against_reference(result, logits, labels, metric, w=None, exact=True, **options):
    logits = np.asarray(logits)
    if logits.ndim == 1:
        logits, labels = logits[:, None], np.asarray(labels)[:, None]
    thresholds = np.atleast_1d(result.logit)
    values = np.atleast_1d(result.value)
    for c in range(logits.shape[1]):
        expected_t, expected_v = reference(logits[:, c], labels[:, c], metric, w=w,
                                           **options)
        if exact:
            assert thresholds[c] == expected_t, (c, thresholds[c], expected_t)
        np.testing.assert_allclose(values[c], expected_v, rtol=1e-9, atol=0,
                                   err_msg=f"class {c}")


# --- inputs -------------------------------------------------------------------------------------

def random_problem(rng, n, n_classes, positive_rate=0.3, round_to=None, dtype=np.float64):
    labels = (rng.random((n, n_classes)) < positive_rate).astype(np.uint8)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * labels
    if round_to is not None:
        logits = np.round(logits / round_to) * round_to
    return logits.astype(dtype), labels


METRIC_CASES = [
    ("f1", {}),
    ("fbeta", {"beta": 2.0}),
    ("fbeta", {"beta": 0.5}),
    ("balanced_accuracy", {}),
    ("youden_j", {}),
    ("recall", {"min_precision": 0.8}),
    ("precision", {"min_recall": 0.6}),
]


def _reference_options(options):
    return {"beta": options.get("beta", 1.0), "p": options.get("min_precision"),
            "r": options.get("min_recall")}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric,options", METRIC_CASES)
@pytest.mark.parametrize("problem", ["random", "imbalanced", "tied"])
def test_matches_sklearn(problem, metric, options, dtype, backend):
    rng = np.random.default_rng(17)
    if problem == "random":
        logits, labels = random_problem(rng, 3000, 4, dtype=dtype)
    elif problem == "imbalanced":  # 0.1 % positives
        logits, labels = random_problem(rng, 20000, 3, positive_rate=0.001, dtype=dtype)
    else:  # few distinct values: ties everywhere, and across many bins
        logits, labels = random_problem(rng, 3000, 4, round_to=0.25, dtype=dtype)
        logits[:, 1] *= 3e5  # beyond 2^16: the overflow bins
        logits[:, 2] *= 1e-6  # below 2^-16: the underflow bins
    result = logitcore.tune_thresholds(logits, labels, kind="multilabel", metric=metric,
                                       backend=backend, **options)
    check_against_reference(result, logits, labels, metric, **_reference_options(options))
    assert result.logit.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric,options", METRIC_CASES)
def test_binary_sample_weight(metric, options, backend):
    rng = np.random.default_rng(3)
    logits, labels = random_problem(rng, 2000, 1, round_to=0.1)
    logits, labels = logits[:, 0], labels[:, 0]
    # integer weights (zeros included): every sum is exact, so is the threshold
    weights = rng.integers(0, 4, size=2000).astype(np.float64)
    result = logitcore.tune_thresholds(logits, labels, metric=metric, sample_weight=weights,
                                       backend=backend, **options)
    check_against_reference(result, logits, labels, metric, w=weights,
                            **_reference_options(options))
    assert np.ndim(result.logit) == 0
    # real-valued weights: the value to rounding (sums in another order)
    weights = rng.random(2000) * 3
    result = logitcore.tune_thresholds(logits, labels, metric=metric, sample_weight=weights,
                                       backend=backend, **options)
    check_against_reference(result, logits, labels, metric, w=weights, exact=False,
                            **_reference_options(options))


@pytest.mark.parametrize("backend", BACKENDS)
def test_counts_are_the_decision_at_the_threshold(backend):
    rng = np.random.default_rng(5)
    logits, labels = random_problem(rng, 1000, 6)
    result = logitcore.tune_thresholds(logits, labels, kind="multilabel", backend=backend)
    predicted = logits >= result.logit
    truth = labels.astype(bool)
    np.testing.assert_array_equal(result.tp, np.sum(predicted & truth, axis=0))
    np.testing.assert_array_equal(result.fp, np.sum(predicted & ~truth, axis=0))
    np.testing.assert_array_equal(result.fn, np.sum(~predicted & truth, axis=0))
    np.testing.assert_array_equal(result.tn, np.sum(~predicted & ~truth, axis=0))
    f1 = [metrics.f1_score(truth[:, c], predicted[:, c]) for c in range(6)]
    np.testing.assert_allclose(result.value, f1, rtol=1e-12)


def test_score_applies_the_probability_thresholds():
    """Issue 17 item 3: score(..., threshold=<vector>) makes the tuned decisions."""
    rng = np.random.default_rng(11)
    logits, labels = random_problem(rng, 4000, 5)
    result = logitcore.tune_thresholds(logits, labels, kind="multilabel")
    scores = logitcore.score(logits, labels, kind="multilabel",
                             threshold=result.probability, fields=["pred"])
    np.testing.assert_array_equal(scores.pred, logits >= result.logit)
    assert np.all(result.probability <= 1 / (1 + np.exp(-result.logit)))


# --- degenerate classes ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_classes(backend, dtype):
    logits = np.array([[0.5, 0.5, 1.0, 0.3, -1.0],
                       [-1.0, 0.5, 2.0, 0.3, 1.0],
                       [2.0, 0.5, -3.0, 0.3, 0.0]], dtype)
    labels = np.array([[0, 1, 1, 1, 0],
                       [0, 1, 1, 0, 1],
                       [0, 0, 1, 1, 0]], np.uint8)
    # class 0: no positives; 2: no negatives; 1 and 3: all logits tied
    tune = lambda metric, **o: logitcore.tune_thresholds(  # noqa: E731
        logits, labels, kind="multilabel", metric=metric, backend=backend, **o)
    f1 = tune("f1")
    assert f1.logit[0] == np.inf and f1.value[0] == 0.0 and f1.tp[0] == f1.fp[0] == 0
    assert f1.logit[2] == -3.0 and f1.value[2] == 1.0  # predict every sample
    for c in (1, 2, 3, 4):
        check_against_reference(
            type("R", (), {"logit": f1.logit[c:c + 1], "value": f1.value[c:c + 1]}),
            logits[:, c], labels[:, c], "f1")
    j = tune("youden_j")
    assert j.logit[0] == j.logit[2] == np.inf
    assert np.isnan(j.value[0]) and np.isnan(j.value[2])
    assert j.logit[1] == np.inf and j.value[1] == 0.0  # tied: J = 0 everywhere, +inf wins
    check_against_reference(type("R", (), {"logit": j.logit[4:], "value": j.value[4:]}),
                            logits[:, 4], labels[:, 4], "youden_j")
    recall = tune("recall", min_precision=0.9)
    assert recall.logit[0] == np.inf and np.isnan(recall.value[0])
    assert recall.logit[3] == np.inf and recall.value[3] == 0.0  # precision 2/3 < 0.9
    precision = tune("precision", min_recall=0.5)
    assert precision.logit[0] == np.inf and np.isnan(precision.value[0])
    assert precision.logit[3] == dtype(0.3) and precision.value[3] == pytest.approx(2 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_sample_and_no_samples(backend):
    result = logitcore.tune_thresholds(np.array([0.7]), np.array([1]), backend=backend)
    assert (float(result.logit), float(result.value)) == (0.7, 1.0)
    result = logitcore.tune_thresholds(np.array([0.7]), np.array([0]), backend=backend)
    assert (float(result.logit), float(result.value)) == (math.inf, 0.0)
    assert float(result.probability) == 1.0
    result = logitcore.tune_thresholds(np.zeros((0, 3)), np.zeros((0, 3), int),
                                       kind="multilabel", backend=backend)
    assert np.all(result.logit == np.inf) and np.all(result.value == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_logits_order_as_numbers(backend):
    # scikit-learn rejects infinite scores; here they are thresholds like any other
    logits = np.array([-np.inf, -1.0, 0.0, 2.0, np.inf])
    labels = np.array([1, 0, 1, 0, 1])
    result = logitcore.tune_thresholds(logits, labels, backend=backend)
    assert float(result.logit) == -np.inf and float(result.value) == pytest.approx(0.75)
    result = logitcore.tune_thresholds(logits, labels, metric="recall",
                                       min_precision=1.0, backend=backend)
    assert float(result.logit) == np.inf and float(result.value) == pytest.approx(1 / 3)


def special_values(dtype):
    """Values at the bins' corners: +-0, subnormals, the smallest normal, the under- and
    overflow edges 2^-16 and 2^16 with their neighbours, the largest float32, +-inf; in
    float64 also values that round to a float32 bin edge from below."""
    f32 = np.float32
    edges = [f32(2.0**-16), f32(2.0**16), f32(1.0)]
    positive = [f32(1e-45), f32(1e-40), np.finfo(f32).tiny, np.finfo(f32).max]
    for edge in edges:
        positive += [np.nextafter(edge, f32(0)), edge, np.nextafter(edge, f32(np.inf))]
    values = np.array(positive, np.float64)
    if dtype == np.float64:
        values = np.concatenate([values, np.nextafter(values, 0.0)])
    values = np.concatenate([values, -values, [0.0, -0.0, np.inf, -np.inf]])
    return np.unique(values.astype(dtype)) if dtype == np.float32 else values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric,options", [("f1", {}), ("youden_j", {}),
                                            ("recall", {"min_precision": 0.6})])
def test_special_values_match_sklearn(metric, options, dtype, backend):
    """Optima on +-0 (one tie), subnormals, the bin layout's edges and +-inf: the bins
    of pass 1 and the value ranges of pass 2 (order-preserving integer keys) agree."""
    rng = np.random.default_rng(23)
    pool = np.sort(special_values(dtype))
    n_rows, n_classes = 3000, 12
    rank = rng.integers(0, pool.size, (n_rows, n_classes))
    logits = pool[rank]
    # positives likelier higher up, each class with its own cut: optima all over the pool
    cut = np.linspace(0.1, 0.9, n_classes) * pool.size
    labels = (rng.random((n_rows, n_classes)) < np.where(rank >= cut, 0.7, 0.1)).astype(
        np.uint8)
    result = logitcore.tune_thresholds(logits, labels, kind="multilabel", metric=metric,
                                       backend=backend, **options)
    # scikit-learn rejects infinite scores: the same order with +-1e308 in their place
    finite = np.clip(logits.astype(np.float64), -1e308, 1e308)
    for c in range(n_classes):
        t, value = reference(finite[:, c], labels[:, c], metric, **_reference_options(
            options))
        t = {1e308: np.inf, -1e308: -np.inf}.get(t, t)
        assert result.logit[c] == t, (c, result.logit[c], t)
        np.testing.assert_allclose(result.value[c], value, rtol=1e-9, atol=0)


def test_curves_with_repeated_infinities():
    """Equal infinite scores are one threshold (inf - inf is NaN, not a step)."""
    logits = np.array([-np.inf, -np.inf, -1.0, 0.0, np.inf, np.inf, np.inf])
    labels = np.array([1, 0, 0, 1, 1, 0, 1])
    finite = np.clip(logits, -1e308, 1e308)
    precision, recall, thresholds = logitcore.precision_recall_curve(logits, labels)
    expected = metrics.precision_recall_curve(labels, finite)
    np.testing.assert_array_equal(precision, expected[0])
    np.testing.assert_array_equal(recall, expected[1])
    np.testing.assert_array_equal(thresholds, np.where(np.abs(expected[2]) == 1e308,
                                                       np.sign(expected[2]) * np.inf,
                                                       expected[2]))
    assert logitcore.roc_auc(logits, labels) == metrics.roc_auc_score(labels, finite)


def test_value_ranges_are_the_bins():
    """Pass 2 keeps lo <= float32(v) <= hi: exactly the values of the bins in range."""
    values = np.concatenate([special_values(np.float64),
                             np.random.default_rng(5).normal(size=1000) * 10.0 ** np.arange(
                                 -25, 25, 0.05)])
    bins = _thresholds.bins_of(values)
    chosen = np.unique(np.concatenate([bins - 1, bins, bins + 1]))
    lowest = np.repeat(chosen, chosen.size)
    highest = np.tile(chosen, chosen.size)
    lo, hi = _thresholds._value_range(lowest, highest, _thresholds.MANTISSA_BITS)
    as_float32 = values.astype(np.float32)
    kept = (as_float32 >= lo[:, None]) & (as_float32 <= hi[:, None])
    in_range = (bins >= lowest[:, None]) & (bins <= highest[:, None])
    np.testing.assert_array_equal(kept, in_range)
    assert not np.any((np.float32(np.nan) >= lo) & (np.float32(np.nan) <= hi))


# --- the mergeable state and its passes ------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_histogram_of_chunks_merges_to_the_histogram_of_all(backend):
    rng = np.random.default_rng(2)
    logits, labels = random_problem(rng, 5000, 3, round_to=0.05)
    weights = rng.random(5000)
    whole = _thresholds.histogram(logits, labels, sample_weight=weights, backend=backend)
    parts = [_thresholds.histogram(logits[s], labels[s], sample_weight=weights[s],
                                   backend=backend)
             for s in (slice(0, 1234), slice(1234, 4000), slice(4000, None))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.weights, whole.weights, rtol=1e-12)
    # the counts are the data's: per class, positives and negatives
    np.testing.assert_array_equal(whole.counts[:, 1].sum(axis=1), labels.sum(axis=0))
    # chunked tuning (the out-of-core and Dask route) equals the one-shot answer
    objective = _thresholds._check_objective("f1", 1.0, None, None)
    keep = _thresholds.bins_to_resolve(merged, objective)
    candidates = [_thresholds.gather(logits[s], labels[s], keep, sample_weight=weights[s],
                                     backend=backend)
                  for s in (slice(0, 2500), slice(2500, None))]
    chunked = _thresholds.resolve(merged, candidates[0].merge(candidates[1]), objective)
    one_shot = logitcore.tune_thresholds(logits, labels, kind="multilabel",
                                         sample_weight=weights, backend=backend)
    np.testing.assert_array_equal(chunked["logit"], one_shot.logit)
    np.testing.assert_allclose(chunked["value"], one_shot.value, rtol=1e-12)


def test_bins_are_monotone_and_match_the_numba_bins():
    rng = np.random.default_rng(4)
    values = np.sort(np.concatenate([
        rng.normal(size=2000), rng.normal(size=500) * 1e6, rng.normal(size=500) * 1e-8,
        [-np.inf, np.inf, 0.0, -0.0, 2.0**-16, -(2.0**-16), 2.0**16, -(2.0**16)]]))
    bins = _thresholds.bins_of(values)
    assert np.all(np.diff(bins) >= 0)
    assert bins[values == 0.0].min() == bins[values == 0.0].max()  # -0.0 and +0.0
    edges = _thresholds.bin_edges()
    assert np.all(edges[bins] <= values.astype(np.float32))
    labels = np.zeros((values.size, 1), np.uint8)
    hist = _thresholds.histogram(values[:, None], labels, backend="numba")
    np.testing.assert_array_equal(hist.counts[0, 0], np.bincount(bins, minlength=len(edges)))


def test_few_bins_are_resolved():
    """The point of the histogram: pass 2 sorts a small share of the samples."""
    rng = np.random.default_rng(8)
    logits, labels = random_problem(rng, 100000, 2)
    hist = _thresholds.histogram(logits, labels)
    for metric, options in METRIC_CASES:
        objective = _thresholds._check_objective(metric, options.get("beta", 1.0),
                                                 options.get("min_precision"),
                                                 options.get("min_recall"))
        keep = _thresholds.bins_to_resolve(hist, objective)
        kept = np.sum(hist.counts.sum(axis=1) * keep, axis=1)
        assert np.all(kept < 0.05 * logits.shape[0]), (metric, kept)


# --- curves ------------------------------------------------------------------------------------

CURVE_PROBLEMS = ["random", "imbalanced", "tied"]


def _curve_problem(name, dtype):
    rng = np.random.default_rng(21)
    if name == "random":
        return random_problem(rng, 2000, 3, dtype=dtype)
    if name == "imbalanced":
        return random_problem(rng, 20000, 2, positive_rate=0.001, dtype=dtype)
    return random_problem(rng, 2000, 3, round_to=0.5, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", CURVE_PROBLEMS)
def test_curves_match_sklearn(problem, dtype):
    logits, labels = _curve_problem(problem, dtype)
    weights = np.random.default_rng(1).integers(0, 3, size=logits.shape[0]).astype(float)
    for w in (None, weights):
        pr = logitcore.precision_recall_curve(logits, labels, kind="multilabel",
                                              sample_weight=w)
        pr_dropped = logitcore.precision_recall_curve(logits, labels, kind="multilabel",
                                                      sample_weight=w, drop_intermediate=True)
        roc = logitcore.roc_curve(logits, labels, kind="multilabel", sample_weight=w)
        roc_all = logitcore.roc_curve(logits, labels, kind="multilabel", sample_weight=w,
                                      drop_intermediate=False)
        ap = logitcore.average_precision(logits, labels, kind="multilabel", sample_weight=w)
        auc = logitcore.roc_auc(logits, labels, kind="multilabel", sample_weight=w)
        for c in range(logits.shape[1]):
            y, s = labels[:, c], logits[:, c]
            for ours, theirs in (
                    (pr[c], metrics.precision_recall_curve(y, s, sample_weight=w)),
                    (pr_dropped[c], metrics.precision_recall_curve(
                        y, s, sample_weight=w, drop_intermediate=True)),
                    (roc[c], metrics.roc_curve(y, s, sample_weight=w)),
                    (roc_all[c], metrics.roc_curve(y, s, sample_weight=w,
                                                   drop_intermediate=False))):
                for a, b in zip(ours, theirs):
                    np.testing.assert_allclose(a, b, rtol=1e-12)
            assert ap[c] == pytest.approx(
                metrics.average_precision_score(y, s, sample_weight=w), rel=1e-12)
            assert auc[c] == pytest.approx(
                metrics.roc_auc_score(y, s, sample_weight=w), rel=1e-12)


def test_curves_of_degenerate_inputs():
    s = np.array([0.1, 0.1, 0.4])
    for y in ([0, 0, 0], [1, 1, 1], [0, 1, 0]):
        y = np.array(y)
        for ours, theirs in ((logitcore.precision_recall_curve(s, y),
                              _quiet(metrics.precision_recall_curve, y, s)),
                             (logitcore.roc_curve(s, y), _quiet(metrics.roc_curve, y, s))):
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a, b)
        assert logitcore.average_precision(s, y) == pytest.approx(
            _quiet(metrics.average_precision_score, y, s), nan_ok=True)
        expected_auc = _quiet(metrics.roc_auc_score, y, s) if 0 < y.sum() < 3 else math.nan
        assert logitcore.roc_auc(s, y) == pytest.approx(expected_auc, nan_ok=True)
    # one sample, all tied
    for ours, theirs in ((logitcore.roc_curve([0.3], [1]),
                          _quiet(metrics.roc_curve, [1], [0.3])),
                         (logitcore.precision_recall_curve(np.zeros(4), [0, 1, 0, 1]),
                          metrics.precision_recall_curve([0, 1, 0, 1], np.zeros(4)))):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binned_auc_and_ap_within_their_bounds(backend):
    rng = np.random.default_rng(9)
    logits, labels = random_problem(rng, 20000, 3, positive_rate=0.05)
    hist = _thresholds.histogram(logits, labels, backend=backend)
    auc, auc_bound = hist.roc_auc()
    ap, ap_bound = hist.average_precision()
    for c in range(3):
        exact_auc = metrics.roc_auc_score(labels[:, c], logits[:, c])
        exact_ap = metrics.average_precision_score(labels[:, c], logits[:, c])
        assert abs(auc[c] - exact_auc) <= auc_bound[c] and auc_bound[c] < 0.01
        assert abs(ap[c] - exact_ap) <= ap_bound[c] and ap_bound[c] < 0.05
    all_bins = 2 * _thresholds.bin_layout()[2]  # the default layout's
    assert logitcore.roc_auc(logits, labels, kind="multilabel", bins=all_bins,
                             backend=backend) == pytest.approx(auc, rel=1e-12)
    coarse = _thresholds._binned(logits, labels, "multilabel", None, 200, backend)
    assert coarse.counts.shape[-1] <= 200
    # binned curves: every point is an exact point of the curve at the bin's edge
    fpr, tpr, thresholds = logitcore.roc_curve(logits[:, 0], labels[:, 0], bins=all_bins,
                                               backend=backend, drop_intermediate=False)
    predicted = logits[:, 0, None].astype(np.float32) >= thresholds[None, 1:]
    np.testing.assert_allclose(tpr[1:], (predicted & (labels[:, :1] == 1)).sum(0)
                               / labels[:, 0].sum())


# --- hypothesis ----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-6, 6), st.booleans(), st.integers(0, 3)),
                min_size=1, max_size=40),
       st.sampled_from(METRIC_CASES), st.sampled_from(BACKENDS))
def test_property_tied_small_problems(rows, case, backend):
    metric, options = case
    logits = np.array([r[0] for r in rows], np.float64) / 2
    labels = np.array([r[1] for r in rows], np.uint8)
    weights = np.array([r[2] for r in rows], np.float64)
    if not weights.any():
        weights[0] = 1
    result = logitcore.tune_thresholds(logits, labels, metric=metric, sample_weight=weights,
                                       backend=backend, **options)
    kept = weights != 0
    if metric in ("balanced_accuracy", "youden_j") and labels[kept].min() == \
            labels[kept].max():
        assert float(result.logit) == np.inf and math.isnan(float(result.value))
        return
    check_against_reference(result, logits, labels, metric, w=weights,
                            **_reference_options(options))


# --- bad input -------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    logits, labels = np.zeros((4, 2)), np.zeros((4, 2), int)
    tune = logitcore.tune_thresholds
    with pytest.raises(ValueError, match="kind"):
        tune(logits, labels, kind="multiclass")
    with pytest.raises(ValueError, match="metric"):
        tune(logits, labels, kind="multilabel", metric="accuracy")
    with pytest.raises(ValueError, match="min_precision"):
        tune(logits, labels, kind="multilabel", metric="recall")
    with pytest.raises(ValueError, match="min_recall"):
        tune(logits, labels, kind="multilabel", metric="f1", min_recall=0.5)
    with pytest.raises(ValueError, match="beta"):
        tune(logits, labels, kind="multilabel", metric="f1", beta=2.0)
    with pytest.raises(ValueError, match="labels"):
        tune(logits, labels[:3], kind="multilabel")
    with pytest.raises(ValueError, match="labels"):
        tune(logits, labels + 2, kind="multilabel")
    with pytest.raises(ValueError, match="logits"):
        tune(logits, labels)  # binary takes (n,) or (n, 1)
    with pytest.raises(ValueError, match="sample_weight"):
        tune(logits, labels, kind="multilabel", sample_weight=-np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        tune(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(NotImplementedError, match="cython"):
        tune(logits, labels, kind="multilabel", backend="cython")
    with pytest.raises(ValueError, match="bins"):
        logitcore.roc_auc(logits[:, 0], labels[:, 0], bins=10)


# --- documentation --------------------------------------------------------------------------

def test_docstring_examples():
    import doctest
    result = doctest.testmod(_thresholds, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_docs_example_runs(capsys):
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "thresholds.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/thresholds.md", "exec"), namespace)
    # the example's claims, against scikit-learn
    logits, labels = namespace["logits"], namespace["labels"]
    for c in range(3):
        assert namespace["auc"][c] == pytest.approx(
            metrics.roc_auc_score(labels[:, c], logits[:, c]), abs=namespace["auc_error"][c])
        assert namespace["ap"][c] == pytest.approx(
            metrics.average_precision_score(labels[:, c], logits[:, c]),
            abs=namespace["ap_error"][c])
    check_against_reference(namespace["tuned"], logits, labels, "f1")
