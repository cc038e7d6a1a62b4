"""fit_temperature, calibration_error, reliability and reliability_diagram against
independent references: SciPy's one-dimensional minimisation of the NLL (computed with
scipy.special.logsumexp / log_expit), a NumPy implementation of Guo et al.'s binned ECE
written here, and torchmetrics' multiclass_calibration_error."""

import math
import sys

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_expit, logsumexp
from scipy.special import softmax as scipy_softmax

import logitcore as lc
from logitcore._backends import availability

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    not availability(name)[0], reason=f"{name} backend unavailable"))
    for name in ("numpy", "numba", "cython")]
DTYPES = [np.float32, np.float64]
IGNORE = -100


# --- independent references ------------------------------------------------------------

def reference_temperature(x, labels, weights=None, bounds=(-6.0, 6.0)):
    """argmin over T of the weighted mean NLL of softmax(x / T), by SciPy's bounded Brent
    minimisation over log T (float64 NLL from scipy.special.logsumexp)."""
    kept = labels != IGNORE
    x = x[kept].astype(np.float64)
    y = labels[kept]
    w = np.ones(len(y)) if weights is None else weights[kept].astype(np.float64)
    label_logit = x[np.arange(len(y)), y]

    def nll(log_t):
        b = math.exp(-log_t)
        return np.sum(w * (logsumexp(b * x, axis=1) - b * label_logit)) / np.sum(w)

    result = minimize_scalar(nll, bounds=bounds, method="bounded",
                             options={"xatol": 1e-11, "maxiter": 1000})
    assert bounds[0] + 1e-3 < result.x < bounds[1] - 1e-3, "reference optimum at a bound"
    return math.exp(result.x), result.fun


def guo_ece(confidence, correct, n_bins=15, norm="l1", edges=None):
    """Guo et al.'s binned calibration error, written out bin by bin: bin k holds the
    confidences in (e_k, e_{k+1}], the first bin also 0."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if edges is None:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    gaps, shares = [], []
    for k in range(len(edges) - 1):
        in_bin = (confidence > edges[k]) & (confidence <= edges[k + 1])
        if k == 0:
            in_bin |= confidence == 0.0
        if in_bin.any():
            gaps.append(abs(correct[in_bin].mean() - confidence[in_bin].mean()))
            shares.append(in_bin.mean())
    gaps, shares = np.array(gaps), np.array(shares)
    if norm == "l1":
        return float(np.sum(shares * gaps))
    if norm == "l2":
        return float(np.sqrt(np.sum(shares * gaps ** 2)))
    return float(np.max(gaps))


def top_label(x, labels):
    """(confidence, correct) from SciPy's softmax and NumPy's argmax."""
    probs = scipy_softmax(x.astype(np.float64), axis=1)
    return probs.max(axis=1), np.argmax(x, axis=1) == labels


# --- data ---------------------------------------------------------------------------------

def dataset(name, seed=0):
    rng = np.random.default_rng(seed)
    if name == "random":  # over-confident, masked classes
        n, c = 3000, 100
        y = rng.integers(0, c, n)
        x = 3.0 * (rng.standard_normal((n, c)) + 2.5 * np.eye(c)[y])
        x[:, 7::37] = -np.inf
        y[y % 37 == 7] += 1
    elif name == "drawn":  # labels drawn from softmax(z), the logits 2.5 z
        n, c = 20000, 10
        z = 1.6 * rng.standard_normal((n, c))
        y = (rng.random((n, 1)) > scipy_softmax(z, axis=1).cumsum(axis=1)).sum(axis=1)
        y = np.minimum(y, c - 1)
        x = 2.5 * z
    elif name == "narrow":
        n, c = 20000, 10
        y = rng.integers(0, c, n)
        x = 0.5 * (rng.standard_normal((n, c)) + 1.5 * np.eye(c)[y])  # under-confident
    elif name == "skewed":  # imbalanced classes, heavy-tailed logits
        n, c = 4000, 50
        prior = 1.0 / np.arange(1, c + 1)
        y = rng.choice(c, n, p=prior / prior.sum())
        x = 2.0 * rng.standard_t(3, (n, c)) + 2.0 * np.log(prior) + 4.0 * np.eye(c)[y]
    elif name == "near-separable":  # a few rows wrong: a small optimal T
        n, c = 2000, 20
        y = rng.integers(0, c, n)
        x = 8.0 * np.eye(c)[y] + 0.5 * rng.standard_normal((n, c))
        wrong = rng.choice(n, 6, replace=False)
        y[wrong] = (y[wrong] + 1) % c
    elif name == "131072-classes":
        n, c = 3, 131072
        x = 2.0 * rng.standard_normal((n, c))
        y = rng.integers(0, c, n)
        x[0, y[0]] += 9.0
        x[1, y[1]] += 7.0  # row 2's label is wherever it fell
        x[:, 1000::4099] = -np.inf
        y[y % 4099 == 1000] += 1
    else:
        raise AssertionError(name)
    y[::11] = IGNORE
    return x, y


DATASETS = ["random", "drawn", "narrow", "skewed", "near-separable", "131072-classes"]


# --- fit_temperature, multiclass ---------------------------------------------------------

@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_is_the_exact_minimiser(backend, dtype, name):
    x, y = dataset(name)
    x = x.astype(dtype)
    want_t, want_nll = reference_temperature(x, y)
    fit = lc.fit_temperature(x, y, backend=backend)
    assert fit.status == "optimal" and fit.converged
    assert abs(fit.temperature - want_t) <= 1e-6 * want_t
    np.testing.assert_allclose(fit.nll_after, want_nll, rtol=1e-9)
    kept = y != IGNORE
    x64 = x[kept].astype(np.float64)
    nll_at_one = np.mean(logsumexp(x64, axis=1) - x64[np.arange(kept.sum()), y[kept]])
    np.testing.assert_allclose(fit.nll_before, nll_at_one, rtol=1e-9)
    if name != "131072-classes":
        assert fit.passes <= 8


@pytest.mark.parametrize("name", ["drawn", "narrow", "skewed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_in_four_passes(backend, name):
    # Halley's step near the root (the pass gives the NLL's third derivative) reaches the
    # minimiser one pass or more sooner than Newton's: at most 4 reads of the logits here.
    x, y = dataset(name)
    want_t, _ = reference_temperature(x, y)
    fit = lc.fit_temperature(x, y, backend=backend)
    assert abs(fit.temperature - want_t) <= 1e-6 * want_t
    assert fit.passes <= 4


def softmax_moments(x, labels, weights, b):
    """The weighted sums of temperature_nll at inverse temperature b, from SciPy's
    softmax and logsumexp in float64: (sum w, NLL and its derivatives 1 and 2, max - x[y], the third derivative)."""
    kept = (labels != IGNORE) & (weights != 0)
    x, y, w = x[kept].astype(np.float64), labels[kept], weights[kept].astype(np.float64)
    p = scipy_softmax(b * x, axis=1)
    finite_x = np.where(p > 0, x, 0.0)  # masked classes (p = 0) add nothing
    mean = np.sum(p * finite_x, axis=1)
    centred = np.where(p > 0, x - mean[:, None], 0.0)
    label_x = x[np.arange(len(y)), y]
    terms = [logsumexp(b * x, axis=1) - b * label_x, mean - label_x,
             np.sum(p * centred ** 2, axis=1), x.max(axis=1) - label_x,
             np.sum(p * centred ** 3, axis=1)]
    return (w.sum(),) + tuple(float(np.sum(w * t)) for t in terms)


@pytest.mark.parametrize("n_classes", [1, 2, 10, 37, 63, 64, 1000, 2500])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_pass_sums(backend, dtype, n_classes):
    # One pass's six sums (incl. the third derivative) against SciPy, on narrow rows (row
    # tiles; a row count that is not a multiple of a tile), rows of one block and of two
    # (blocks merged under the larger max), with masked classes, ties at the max, ignored
    # rows and rows of weight 0.
    rng = np.random.default_rng(n_classes)
    n = 3001 if n_classes < 100 else 40
    x = (3.0 * rng.standard_normal((n, n_classes))).astype(dtype)
    y = rng.integers(0, n_classes, n)
    if n_classes > 2:
        x[:, 1] = -np.inf
        y[y == 1] = 0
        x[::5, 2] = x[::5].max(axis=1)  # a tie at the max
    y[::9] = IGNORE
    weights = rng.uniform(0.0, 2.0, n).astype(dtype)
    weights[::13] = 0.0
    kernel = lc._backends.load(backend).temperature_nll
    for b in (0.3, 1.0, 2.5):
        got = kernel(x, y.astype(np.int64), weights, IGNORE, b, 2)
        want = softmax_moments(x, y, weights, b)
        assert len(got) == 6
        np.testing.assert_allclose(got[:5], want[:5], rtol=1e-9, atol=1e-9 * want[0])
        # the third central moment comes from raw moments: cancellation on top of rounding
        np.testing.assert_allclose(got[5], want[5], rtol=1e-7, atol=1e-8 * want[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_and_axis(backend):
    x, y = dataset("skewed", seed=3)
    weights = np.random.default_rng(1).uniform(0.0, 3.0, len(y))
    weights[::7] = 0.0
    want_t, _ = reference_temperature(x, y, weights)
    fit = lc.fit_temperature(x, y, sample_weight=weights, backend=backend)
    assert abs(fit.temperature - want_t) <= 1e-6 * want_t
    # class axis 1 of (batch, classes, seq) logits, labels (batch, seq)
    x3 = x[:3990].reshape(105, 38, x.shape[1]).transpose(0, 2, 1)
    y3 = y[:3990].reshape(105, 38)
    want_t, _ = reference_temperature(x[:3990], y[:3990])
    fit = lc.fit_temperature(x3, y3, axis=1, backend=backend)
    assert abs(fit.temperature - want_t) <= 1e-6 * want_t


@pytest.mark.parametrize("backend", BACKENDS)
def test_separable_data(backend):
    # Every label has its row's largest logit: the NLL falls toward its infimum as T -> 0
    # (0 per row with a unique max, log 2 per row whose max is tied).
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    x = rng.standard_normal((300, 5)) + 6.0 * np.eye(5)[y]
    x[np.arange(10), (y[:10] + 1) % 5] = x[np.arange(10), y[:10]]  # ties at the max
    fit = lc.fit_temperature(x, y, backend=backend)
    assert (fit.temperature, fit.status, fit.converged) == (0.0, "separable", False)
    np.testing.assert_allclose(fit.nll_after, 10 * math.log(2.0) / 300, rtol=1e-12)
    assert fit.nll_after < fit.nll_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_uninformative_labels(backend):
    # Labels on the smallest logits: the NLL keeps falling as T grows (T = inf is uniform).
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    x = rng.standard_normal((500, 4)) - 3.0 * np.eye(4)[y]
    fit = lc.fit_temperature(x, y, backend=backend)
    assert (fit.temperature, fit.status, fit.converged) == (math.inf, "uninformative", False)
    np.testing.assert_allclose(fit.nll_after, math.log(4.0), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_nll_single_class(backend):
    fit = lc.fit_temperature(np.random.default_rng(0).standard_normal((40, 1)),
                             np.zeros(40, np.int64), backend=backend)
    assert (fit.temperature, fit.status, fit.nll_after, fit.converged) == (1.0, "flat", 0.0,
                                                                           True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_left_out_and_bad_rows(backend):
    x, y = dataset("narrow")
    x, y = x[:500].copy(), y[:500].copy()
    want = lc.fit_temperature(x, y, backend=backend).temperature
    with pytest.raises(ValueError, match="no rows"):
        lc.fit_temperature(x, np.full(500, IGNORE), backend=backend)
    with pytest.raises(ValueError, match="no rows"):
        lc.fit_temperature(x, y, sample_weight=np.zeros(500), backend=backend)
    for bad in (np.nan, np.inf):
        bad_x = x.copy()
        bad_x[3, 2] = bad
        label = y[3]
        with pytest.raises(ValueError, match=r"logits: row \[3\]"):
            lc.fit_temperature(bad_x, y, backend=backend)
        y_ignoring = y.copy()
        y_ignoring[3] = IGNORE  # the same row left out: a fit of the other rows
        got = lc.fit_temperature(bad_x, y_ignoring, backend=backend).temperature
        assert got == pytest.approx(reference_temperature(x, y_ignoring)[0], rel=1e-6)
        y[3] = label
    masked_label = x.copy()
    masked_label[5, y[5]] = -np.inf  # infinite loss at every T
    with pytest.raises(ValueError, match=r"row \[5\]"):
        lc.fit_temperature(masked_label, y, backend=backend)
    assert want == pytest.approx(reference_temperature(x, y)[0], rel=1e-6)


def test_bad_arguments():
    x, y = dataset("narrow")
    with pytest.raises(ValueError, match="labels"):
        lc.fit_temperature(x, y[:-1])
    with pytest.raises(TypeError, match="labels"):
        lc.fit_temperature(x, y.astype(float))
    with pytest.raises(IndexError, match="labels"):
        lc.fit_temperature(x, np.where(y == 0, 10, y))
    with pytest.raises(ValueError, match="sample_weight"):
        lc.fit_temperature(x, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="sample_weight"):
        lc.fit_temperature(x, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="kind"):
        lc.fit_temperature(x, y, kind="softmax")
    with pytest.raises(ValueError, match="method"):
        lc.fit_temperature(x, y, method="platt")
    assert "temperature=" in repr(lc.fit_temperature(x, y))


# --- fit_temperature, sigmoid kinds ---------------------------------------------------------

def sigmoid_nll(margins, weights=None):
    w = np.ones(margins.size) if weights is None else weights
    return lambda log_t: -np.sum(w * log_expit(margins * math.exp(-log_t))) / np.sum(w)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_binary_and_multilabel_temperature(dtype):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, 3000)
    x = (4.0 * (2 * t - 1) + 3.0 * rng.standard_normal(3000)).astype(dtype)
    t[::9] = IGNORE
    kept = t != IGNORE
    margins = np.where(t[kept] == 1, 1.0, -1.0) * x[kept].astype(np.float64)
    want = math.exp(minimize_scalar(sigmoid_nll(margins), bounds=(-5, 5), method="bounded",
                                    options={"xatol": 1e-11}).x)
    fit = lc.fit_temperature(x, t, kind="binary")
    assert fit.converged and abs(fit.temperature - want) <= 1e-6 * want
    fit = lc.fit_temperature(x[:, None], t, kind="binary", axis=1)
    assert abs(fit.temperature - want) <= 1e-6 * want

    targets = rng.integers(0, 2, (400, 7))
    logits = (2.0 * (2 * targets - 1) + 2.5 * rng.standard_normal((400, 7))).astype(dtype)
    margins = np.where(targets == 1, 1.0, -1.0).ravel() * logits.ravel().astype(np.float64)
    want = math.exp(minimize_scalar(sigmoid_nll(margins), bounds=(-5, 5), method="bounded",
                                    options={"xatol": 1e-11}).x)
    fit = lc.fit_temperature(logits, targets, kind="multilabel")
    assert fit.converged and abs(fit.temperature - want) <= 1e-6 * want


def test_platt_scaling():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, 2000)
    x = 3.0 * (2 * t - 1) + 2.0 * rng.standard_normal(2000) + 1.5
    sign = np.where(t == 1, 1.0, -1.0)

    def nll(params):
        return -np.mean(log_expit(sign * (params[0] * x + params[1])))

    def grad(params):
        q = np.exp(log_expit(-sign * (params[0] * x + params[1])))
        return -np.array([np.mean(sign * x * q), np.mean(sign * q)])

    want = minimize(nll, [1.0, 0.0], jac=grad, method="BFGS", options={"gtol": 1e-13}).x
    fit = lc.fit_temperature(x, t, kind="binary", method="platt")
    assert fit.converged
    np.testing.assert_allclose([1.0 / fit.temperature, fit.bias], want, rtol=1e-6)
    assert fit.nll_after == pytest.approx(nll(want), rel=1e-10)


# --- calibration figures ----------------------------------------------------------------------

def logits_and_labels(seed=0, n=4000, c=10, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return scale * (rng.standard_normal((n, c)) + 1.5 * np.eye(c)[y]), y


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [15, 10, 7])
def test_calibration_error_is_guo_ece(norm, n_bins):
    x, y = logits_and_labels()
    confidence, correct = top_label(x, y)
    want = guo_ece(confidence, correct, n_bins, norm)
    assert lc.calibration_error(x, y, n_bins=n_bins, norm=norm) == pytest.approx(want,
                                                                                  rel=1e-9)
    scores = lc.score(x, y)
    assert lc.calibration_error(scores, n_bins=n_bins, norm=norm) == pytest.approx(
        want, rel=1e-9)


def test_bins_next_to_every_edge():
    # Confidences one float64 step below, on and above every uniform edge, float32 ones
    # next to the edges, and random ones: each in the bin (lo, hi] that the edges say
    # (the uniform edges are binned arithmetically, the ones near an edge by search).
    for n_bins in (1, 7, 10, 15, 30):
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        near = np.concatenate([np.nextafter(edges, -1.0), edges, np.nextafter(edges, 2.0),
                               np.nextafter(edges.astype(np.float32), np.float32(-1.0)),
                               np.nextafter(edges.astype(np.float32), np.float32(2.0))])
        rng = np.random.default_rng(n_bins)
        confidence = np.concatenate([near[(near >= 0.0) & (near <= 1.0)],
                                     rng.uniform(0.0, 1.0, 5000)])
        correct = rng.integers(0, 2, confidence.size).astype(bool)
        counts = lc.CalibrationBins.of(confidence, correct, n_bins=n_bins).counts
        want = [np.count_nonzero(((confidence > lo) & (confidence <= hi))
                                 | ((k == 0) & (confidence == 0.0)))
                for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
        np.testing.assert_array_equal(counts, want)
        assert lc.CalibrationBins.of(confidence, correct, n_bins=n_bins).error() == (
            pytest.approx(guo_ece(confidence, correct, n_bins), rel=1e-12))


def test_bins_at_edges_zero_and_one():
    # Confidences exactly 0, exactly 1 and exactly on every inner edge: (lo, hi] bins.
    edges = np.linspace(0.0, 1.0, 16)
    rng = np.random.default_rng(0)
    confidence = np.concatenate([[0.0, 0.0, 1.0, 1.0, 1.0], edges, edges[1:-1],
                                 rng.uniform(0, 1, 200)])
    correct = rng.integers(0, 2, confidence.size).astype(bool)
    bins = lc.CalibrationBins.of(confidence, correct)
    for norm in ("l1", "l2", "max"):
        assert bins.error(norm) == pytest.approx(guo_ece(confidence, correct, 15, norm),
                                                 rel=1e-12)
    counts = bins.table()["counts"]
    want_counts = [np.count_nonzero(((confidence > lo) & (confidence <= hi))
                                    | ((k == 0) & (confidence == 0.0)))
                   for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    np.testing.assert_array_equal(counts, want_counts)
    # From logits: two equal logits give confidence 0.5, the edge between bins 4 and 5 of
    # 10: it belongs to bin 4 = (0.4, 0.5]; a float32 logit gap of 40 saturates to 1.0.
    table = lc.reliability(np.zeros((6, 2)), np.zeros(6, np.int64), n_bins=10).table()
    assert table["counts"][4] == 6
    saturated = np.array([[40.0, 0.0]] * 5, np.float32)
    table = lc.reliability(saturated, np.array([0, 0, 0, 1, 1])).table()
    assert table["counts"][-1] == 5 and table["confidence"][-1] == 1.0
    assert table["accuracy"][-1] == pytest.approx(0.6)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_against_torchmetrics(norm):
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.functional.classification")
    x, y = logits_and_labels(seed=4, n=3000, c=12, scale=2.0)
    confidence, _ = top_label(x, y)
    edges = np.linspace(0, 1, 16)
    assert np.min(np.abs(confidence[:, None] - edges[None, :])) > 1e-9  # away from edges
    want = classification.multiclass_calibration_error(
        torch.softmax(torch.from_numpy(x), dim=1), torch.from_numpy(y), num_classes=12,
        n_bins=15, norm=norm).item()
    assert lc.calibration_error(x, y, norm=norm) == pytest.approx(want, rel=1e-6)


def test_temperature_argument_and_quantile_bins():
    x, y = logits_and_labels(seed=2)
    y[::13] = IGNORE
    kept = y != IGNORE
    confidence, correct = top_label(x[kept] / 1.7, y[kept])
    got = lc.calibration_error(x, y, temperature=1.7)
    assert got == pytest.approx(guo_ece(confidence, correct), rel=1e-9)
    quantiles = np.quantile(confidence, np.linspace(0, 1, 11))
    quantiles[0], quantiles[-1] = 0.0, 1.0
    got = lc.calibration_error(x, y, temperature=1.7, binning="quantile", n_bins=10)
    assert got == pytest.approx(guo_ece(confidence, correct, edges=quantiles), rel=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        lc.calibration_error(x, y, temperature=-1.0)


def test_classwise_calibration_error():
    x, y = logits_and_labels(seed=5, n=1500, c=6)
    probs = scipy_softmax(x, axis=1)
    want = np.mean([guo_ece(probs[:, c], y == c) for c in range(6)])
    assert lc.calibration_error(x, y, mode="classwise") == pytest.approx(want, rel=1e-9)


def test_bins_merge_and_summary_figures():
    x, y = logits_and_labels(seed=6, n=3000)
    whole = lc.reliability(x, y)
    parts = lc.CalibrationBins.combine(lc.reliability(x[a:a + 700], y[a:a + 700])
                                       for a in range(0, 3000, 700))
    np.testing.assert_array_equal(parts.counts, whole.counts)
    np.testing.assert_allclose(parts.confidence_sums, whole.confidence_sums, rtol=1e-12)
    np.testing.assert_array_equal(parts.correct_sums, whole.correct_sums)
    confidence, correct = top_label(x, y)
    summary = lc.Summary.combine(lc.score(x[a:a + 700], y[a:a + 700]).summary()
                                 for a in range(0, 3000, 700))
    assert summary["ece"] == pytest.approx(guo_ece(confidence, correct), rel=1e-9)
    assert summary["mce"] == pytest.approx(guo_ece(confidence, correct, norm="max"),
                                           rel=1e-9)
    with pytest.raises(ValueError, match="same edges"):
        whole.merge(lc.reliability(x, y, n_bins=10))


def test_calibration_bad_arguments():
    x, y = logits_and_labels(n=50)
    for kwargs, match in [({"norm": "l3"}, "norm"), ({"mode": "per-class"}, "mode"),
                          ({"binning": "log"}, "binning"), ({"n_bins": 0}, "n_bins")]:
        with pytest.raises(ValueError, match=match):
            lc.calibration_error(x, y, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        lc.calibration_error(x)
    with pytest.raises(ValueError, match="labels"):
        lc.calibration_error(lc.score(x, y), y)
    with pytest.raises(ValueError, match="correct"):
        lc.calibration_error(lc.score(x, y, fields=["confidence"]))


def test_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    x, y = logits_and_labels()
    path = tmp_path / "diagram.png"
    figure = lc.reliability_diagram(x, y, path=path, title="test")
    assert path.stat().st_size > 1000
    legend = figure.axes[0].get_legend()
    assert f"{100 * lc.calibration_error(x, y):.2f}%" in legend.get_title().get_text()
    heights = [p.get_height() for p in figure.axes[0].patches[:15]]
    table = lc.reliability(x, y).table()
    np.testing.assert_allclose(heights, np.nan_to_num(table["accuracy"]))


def test_reliability_diagram_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    x, y = logits_and_labels(n=20)
    with pytest.raises(ImportError, match=r'pip install "logitcore\[plot\]"'):
        lc.reliability_diagram(x, y)
