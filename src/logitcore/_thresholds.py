"""Decision thresholds from logits: exact per-class threshold tuning, and precision-recall
and ROC curves per class, exact or binned.

Conventions (scikit-learn's): a threshold ``t`` predicts positive for a score ``>= t``;
the thresholds a curve or a tuning considers are the distinct scores of the samples
(zero-weight samples left out), plus ``+inf`` (predict nothing) where the curve has that
point. Scores are the logits themselves; ``sigmoid`` is monotone, so thresholds on
probabilities are the same decisions (``Thresholds.probability``).

How ``tune_thresholds`` is exact in two reads of the logits
------------------------------------------------------------
Pass 1 builds, per class, a histogram of the logits of the positive and of the negative
samples (``ThresholdHistogram``: counts and summed weights per bin; bins are a monotone
function of the value, see ``bins_of``). Histograms of chunks of rows add up to the
histogram of all the rows (``merge``). From its cumulative counts, every bin boundary is
a threshold whose (TP, FP) is known exactly, and inside a bin TP and FP lie between the
bin's boundary values, which bounds the metric of any threshold in the bin. Only the
bins whose bound reaches the best boundary value can hold the optimum (usually a few).
Pass 2 gathers the samples of those bins (``gather``) and ``resolve`` sorts them and
scans their thresholds exactly, counts above the bin coming from the histogram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _backends, _config
from . import _validate as v

KINDS = ("binary", "multilabel")
METRICS = ("f1", "fbeta", "balanced_accuracy", "youden_j", "recall", "precision")
# The histogram layout: |x| in [2^-EXP_RANGE, 2^EXP_RANGE) in binades of
# 2^MANTISSA_BITS bins (relative bin width 1/256), one bin per sign below and above:
# 16388 bins per class. Finer bins leave fewer samples to sort in pass 2.
EXP_RANGE = 16
MANTISSA_BITS = 8
# Relative slack when comparing a bin's bound with the best boundary value: the bounds are
# evaluated in floating point, which may round them an ulp below the value they bound.
# Keeping a bin too many costs a few sorted values, never correctness.
BOUND_SLACK = 1e-12
# The compiled histogram counts in int32 per row chunk (half the cache of int64).
INT32_ROWS = 2**31 - 1


# --- bins ---------------------------------------------------------------------------------

def bin_layout(mantissa_bits: int = MANTISSA_BITS) -> tuple[int, int, int]:
    """(shift, first_level, levels) of the layout; a histogram has 2 * levels bins."""
    shift = 23 - mantissa_bits
    first_level = (127 - EXP_RANGE) << mantissa_bits
    levels = 2 + ((2 * EXP_RANGE) << mantissa_bits)
    return shift, first_level, levels


def bins_of(values: np.ndarray, mantissa_bits: int = MANTISSA_BITS) -> np.ndarray:
    """The bin of each value (NaN excluded by the caller): non-decreasing in the value,
    the same function as numba_kernels.threshold_bin."""
    shift, first_level, levels = bin_layout(mantissa_bits)
    bits = np.asarray(values).astype(np.float32).view(np.int32).astype(np.int64)
    magnitude = bits & 0x7FFFFFFF
    level = np.clip((magnitude >> shift) - first_level + 1, 0, levels - 1)
    negative = (bits < 0) & (magnitude != 0)  # -0.0 shares +0.0's bin
    return np.where(negative, levels - 1 - level, levels + level)


def bin_edges(mantissa_bits: int = MANTISSA_BITS) -> np.ndarray:
    """The smallest float32 value of each bin (bins of the over / underflow levels start
    at -inf, -2^-EXP_RANGE, 0 and 2^EXP_RANGE): bin b holds [edges[b], edges[b + 1])."""
    shift, first_level, levels = bin_layout(mantissa_bits)
    level = np.arange(levels, dtype=np.int64)
    start_bits = ((level - 1 + first_level) << shift).astype(np.int32)
    start = start_bits.view(np.float32).astype(np.float64)  # magnitude where level starts
    start[0] = 0.0
    positive = start
    # A negative level's values are (-end of the level, -start]: the bin's smallest value
    # is minus the next level's start.
    negative = -np.append(start[1:], np.inf)[::-1]
    return np.concatenate([negative, positive])


# --- validation ---------------------------------------------------------------------------

def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


def _as_rows(logits, labels, kind: str):
    """logits as C-contiguous (n, C) float32 / float64, labels as (n, C) uint8 0 / 1."""
    logits = v.as_float_array(logits, "logits")
    if kind == "binary":
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.ndim != 1:
            raise ValueError(f"logits for kind='binary' must have shape (n,) or (n, 1), got "
                             f"shape {logits.shape} (kind='multilabel' takes (n, classes))")
        logits = logits[:, None]
    elif logits.ndim != 2:
        raise ValueError(f"logits for kind='multilabel' must have shape (n, classes), got "
                         f"shape {logits.shape}")
    labels = np.asarray(labels)
    expected = logits.shape if kind == "multilabel" else (logits.shape[0],)
    if labels.shape != expected and not (kind == "binary"
                                         and labels.shape == (logits.shape[0], 1)):
        raise ValueError(f"labels must have shape {expected} (0 / 1 per logit), got shape "
                         f"{labels.shape}")
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be bool or integer 0 / 1, got dtype {labels.dtype}")
    if labels.dtype.kind != "b" and labels.size and (labels.min() < 0 or labels.max() > 1):
        raise ValueError("labels must be 0 or 1 (bool or integer)")
    labels = labels.reshape(logits.shape)
    return (np.ascontiguousarray(logits),
            np.ascontiguousarray(labels.astype(np.uint8, copy=False)))


def _check_sample_weight(sample_weight, n: int) -> np.ndarray:
    """float64 (n,) weights, finite and >= 0, or an empty array for none."""
    if sample_weight is None:
        return np.empty(0, np.float64)
    weight = np.asarray(sample_weight)
    if weight.dtype.kind not in "iuf" or weight.dtype.kind == "b":
        raise TypeError(f"sample_weight must be numbers, got dtype {weight.dtype}")
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    if weight.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one per row), got shape "
                         f"{weight.shape}")
    if not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError("sample_weight must be finite and >= 0")
    return weight


def _check_backend(backend) -> str:
    """'numba' or 'numpy': the backends with a histogram pass."""
    name = _config.get_backend() if backend is None else _config._valid_backend_name(backend)
    if name == _config.AUTO:
        try:
            _backends.load("numba")
            return "numba"
        except Exception:  # numba not installed or not loadable: the NumPy passes
            return "numpy"
    if name not in ("numba", "numpy"):
        raise NotImplementedError(f"backend {name!r} does not implement the threshold "
                                  f"passes; use backend='numba', 'numpy' or 'auto'")
    _backends.load(name)
    return name


def _check_nan(nan_counts: np.ndarray) -> None:
    if np.any(nan_counts):
        c = int(np.nonzero(nan_counts)[0][0])
        raise ValueError(f"logits contain NaN ({int(nan_counts[c])} in class {c}); "
                         f"thresholds and curves need ordered scores")


# --- the work split of the compiled passes ------------------------------------------------

def _split(n_rows: int, n_classes: int, threads: int):
    """Row chunk and class group bounds: class groups when there are at least as many
    classes as threads (each task reads its own columns of every row: one read of the
    logits in all), else row chunks with a histogram each, added up afterwards."""
    groups = max(1, min(n_classes, threads))
    chunks = 1 if n_classes >= threads else max(1, min(threads, n_rows // 4096 or 1))
    chunks = max(chunks, -(-n_rows // INT32_ROWS))  # a chunk's counts fit in int32
    row_bounds = np.linspace(0, n_rows, chunks + 1).astype(np.int64)
    # groups start on a class block (a cache line of the row) where there are enough
    block = 16 if n_classes >= 16 * groups else 1
    class_bounds = np.linspace(0, n_classes // block, groups + 1).astype(np.int64) * block
    class_bounds[-1] = n_classes
    return row_bounds, class_bounds


def _threads() -> int:
    from ._backends import numba_threads
    return numba_threads.usable_threads(_config.get_num_threads())


# --- pass 1: the mergeable histogram ------------------------------------------------------

class ThresholdHistogram:
    """Per-class histograms of logits, positives and negatives apart: the mergeable
    state of threshold tuning and of the binned curves.

    ``counts[c, label, bin]`` (int64) and, when sample weights were given,
    ``weights[c, label, bin]`` (float64 sums; else None: every weight is 1). Bins are
    those of ``bins_of`` with ``mantissa_bits``. ``a.merge(b)`` is the histogram of the
    rows of both: chunk by chunk equals all at once, exactly for counts.
    """

    def __init__(self, counts: np.ndarray, weights: np.ndarray | None,
                 mantissa_bits: int = MANTISSA_BITS):
        self.counts = counts
        self.weights = weights
        self.mantissa_bits = mantissa_bits

    @classmethod
    def of(cls, logits, labels, *, kind="multilabel", sample_weight=None, backend=None,
           mantissa_bits: int = MANTISSA_BITS) -> ThresholdHistogram:
        """The histogram of these rows (one read of the logits; see ``histogram``)."""
        return histogram(logits, labels, kind=kind, sample_weight=sample_weight,
                         backend=backend, mantissa_bits=mantissa_bits)

    @property
    def n_classes(self) -> int:
        return self.counts.shape[0]

    def __eq__(self, other) -> bool:
        return (isinstance(other, ThresholdHistogram)
                and self.mantissa_bits == other.mantissa_bits
                and np.array_equal(self.counts, other.counts)
                and (self.weights is None) == (other.weights is None)
                and (self.weights is None or np.array_equal(self.weights, other.weights)))

    def merge(self, other: ThresholdHistogram) -> ThresholdHistogram:
        if not isinstance(other, ThresholdHistogram):
            raise TypeError(f"can only merge a ThresholdHistogram, got "
                            f"{type(other).__name__}")
        if (other.counts.shape != self.counts.shape
                or other.mantissa_bits != self.mantissa_bits
                or (other.weights is None) != (self.weights is None)):
            raise ValueError("histograms merge only when made with the same classes, bins "
                             "and both with or both without sample_weight")
        weights = None if self.weights is None else self.weights + other.weights
        return ThresholdHistogram(self.counts + other.counts, weights, self.mantissa_bits)

    def mass(self) -> np.ndarray:
        """(C, 2, bins) float64: the summed weight (or count) per class, label and bin."""
        return self.counts.astype(np.float64) if self.weights is None else self.weights

    def cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """(negatives, positives) at or above each bin, (C, bins + 1): column b is the
        weight of scores in bins >= b (column ``bins`` is 0)."""
        mass = self.mass()
        above = np.zeros(mass.shape[:2] + (mass.shape[2] + 1,))
        above[:, :, :-1] = np.cumsum(mass[:, :, ::-1], axis=2)[:, :, ::-1]
        return above[:, 0], above[:, 1]

    # --- binned curves (the mergeable variant) ---

    def binned_counts(self, c: int):
        """(fps, tps, thresholds) of class c as scikit-learn's
        confusion_matrix_at_thresholds gives them, each bin one tied score: one point
        per bin with weight, at its lower edge (thresholds decreasing)."""
        fp_above, tp_above = (a[c] for a in self.cumulative())
        nonempty = np.nonzero(self.mass()[c].sum(axis=0) > 0)[0][::-1]
        return (fp_above[nonempty], tp_above[nonempty],
                bin_edges(self.mantissa_bits)[nonempty])

    def roc_auc(self) -> tuple[np.ndarray, np.ndarray]:
        """(auc, error_bound) per class from the bins, every bin taken as one tied score:
        the exact AUC lies within ``error_bound`` = sum over bins of
        pos_b * neg_b / (2 P N) (the pairs a bin leaves unordered count 1/2 instead of
        0 or 1). NaN for a class without positives or negatives."""
        mass = self.mass()
        negatives, positives = mass[:, 0], mass[:, 1]
        total_neg, total_pos = negatives.sum(axis=1), positives.sum(axis=1)
        # AUC = P(a positive's score > a negative's): (positive in bin b, negative in a
        # lower bin) pairs count 1, pairs within one bin 1/2.
        below = total_neg[:, None] - np.cumsum(negatives[:, ::-1], axis=1)[:, ::-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            pairs = total_pos * total_neg
            auc = np.sum(positives * (below + negatives / 2), axis=1) / pairs
            bound = np.sum(positives * negatives, axis=1) / (2 * pairs)
        return auc, bound

    def average_precision(self) -> tuple[np.ndarray, np.ndarray]:
        """(ap, error_bound) per class from the bins, each bin one tied score
        (sum over bins of (R_b - R_{b-1}) P_b at the bin's lower edge). The exact AP lies
        in [sum_b pos_b/P * lo_b, sum_b pos_b/P * hi_b] with lo_b = TP(above b) /
        (TP(above b) + FP(b and above)) and hi_b = TP(b and above) / (TP(b and above) +
        FP(above b)); the bound is the larger distance from the binned value to those.
        NaN for a class without positives."""
        fp_above, tp_above = self.cumulative()
        positives = self.mass()[:, 1]
        total_pos = tp_above[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = positives / total_pos[:, None]
            at_edge = np.where(positives > 0, tp_above[:, :-1] / (tp_above[:, :-1]
                                                                 + fp_above[:, :-1]), 0.0)
            low = tp_above[:, 1:] / (tp_above[:, 1:] + fp_above[:, :-1])
            high = tp_above[:, :-1] / (tp_above[:, :-1] + fp_above[:, 1:])
            low = np.where(positives > 0, np.nan_to_num(low), 0.0)
            high = np.where(positives > 0, high, 0.0)
            ap = np.sum(share * at_edge, axis=1)
            bound = np.maximum(ap - np.sum(share * low, axis=1),
                               np.sum(share * high, axis=1) - ap)
        ap[total_pos <= 0] = np.nan
        bound[total_pos <= 0] = np.nan
        return ap, bound


def histogram(logits, labels, *, kind="multilabel", sample_weight=None, backend=None,
              mantissa_bits: int = MANTISSA_BITS) -> ThresholdHistogram:
    """Pass 1: the ``ThresholdHistogram`` of these rows (one read of logits and labels).
    Histograms of row chunks merge into the histogram of all the rows."""
    kind = _check_kind(kind)
    x, y = _as_rows(logits, labels, kind)
    w = _check_sample_weight(sample_weight, x.shape[0])
    return _histogram(x, y, w, _check_backend(backend), mantissa_bits)[0]


def _histogram(x, y, w, backend: str, mantissa_bits: int):
    """(the ThresholdHistogram, counts per row chunk of the numba split (chunks, C, bins)
    with both labels together, or None from the NumPy pass)."""
    n, n_classes = x.shape
    shift, first_level, levels = bin_layout(mantissa_bits)
    n_bins = 2 * levels
    if backend == "numba":
        from ._backends import numba_kernels, numba_threads
        threads = _threads()
        row_bounds, class_bounds = _split(n, n_classes, threads)
        chunks = row_bounds.size - 1
        counts = np.zeros((chunks, n_classes, 2, n_bins), np.int32)
        weights = np.zeros((chunks, n_classes, 2, n_bins) if w.size else (0, 0, 0, 0))
        nan_counts = np.zeros((chunks, n_classes), np.int64)
        numba_threads.launch(threads, numba_kernels.threshold_histogram, x, y, w,
                             row_bounds, class_bounds, shift, first_level, levels, counts,
                             weights, nan_counts)
        _check_nan(nan_counts.sum(axis=0))
        return (ThresholdHistogram(counts.sum(axis=0, dtype=np.int64),
                                   weights.sum(axis=0) if w.size else None, mantissa_bits),
                counts.sum(axis=2, dtype=np.int64))
    # NumPy: a bincount over (class, label, bin) codes, in row chunks to bound memory.
    counts = np.zeros(n_classes * 2 * n_bins, np.int64)
    weights = np.zeros(n_classes * 2 * n_bins) if w.size else None
    nan_counts = np.zeros(n_classes, np.int64)
    step = max(1, (1 << 22) // max(n_classes, 1))
    class_offset = (np.arange(n_classes, dtype=np.int64) * 2 * n_bins)[None, :]
    for start in range(0, n, step):
        block = x[start:start + step]
        nan = np.isnan(block)
        nan_counts += nan.sum(axis=0)
        code = (class_offset + y[start:start + step].astype(np.int64) * n_bins
                + bins_of(np.where(nan, 0, block), mantissa_bits))[~nan]
        counts += np.bincount(code, minlength=counts.size)
        if weights is not None:
            row_w = np.broadcast_to(w[start:start + step, None], block.shape)[~nan]
            weights += np.bincount(code, weights=row_w, minlength=weights.size)
    _check_nan(nan_counts)
    shape = (n_classes, 2, n_bins)
    return ThresholdHistogram(counts.reshape(shape),
                              None if weights is None else weights.reshape(shape),
                              mantissa_bits), None


# --- pass 2: the candidates of the kept bins -----------------------------------------------

@dataclass
class Candidates:
    """The samples of the kept bins (and of the bins between them), per class:
    ``values[starts[c]:starts[c + 1]]`` (the logits as float64), ``labels`` (uint8) and
    ``weights`` (float64, empty without sample_weight). ``merge`` concatenates the
    candidates of two row chunks."""
    values: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    starts: np.ndarray

    def of_class(self, c: int):
        part = slice(self.starts[c], self.starts[c + 1])
        weights = self.weights[part] if self.weights.size else None
        return self.values[part], self.labels[part], weights

    def merge(self, other: Candidates) -> Candidates:
        if (self.starts.size != other.starts.size
                or bool(self.weights.size) != bool(other.weights.size)):
            raise ValueError("candidates merge only when gathered for the same classes, "
                             "both with or both without sample_weight")
        n_classes = self.starts.size - 1
        parts = [(self.of_class(c), other.of_class(c)) for c in range(n_classes)]
        sizes = [a[0].size + b[0].size for a, b in parts]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        def joined(i):
            pieces = [piece for a, b in parts for piece in (a[i], b[i]) if piece is not None]
            return np.concatenate(pieces) if pieces else np.empty(0)
        weights = joined(2) if self.weights.size or other.weights.size else np.empty(0)
        return Candidates(joined(0), joined(1).astype(np.uint8), weights, starts)


def gather(logits, labels, keep: np.ndarray, *, kind="multilabel", sample_weight=None,
           backend=None, mantissa_bits: int = MANTISSA_BITS) -> Candidates:
    """Pass 2: the samples of the kept bins (``keep[c, bin]``, from ``bins_to_resolve``)
    and of the bins between them."""
    kind = _check_kind(kind)
    x, y = _as_rows(logits, labels, kind)
    w = _check_sample_weight(sample_weight, x.shape[0])
    return _gather(x, y, w, keep, _check_backend(backend), mantissa_bits)


def _bin_ranges(keep: np.ndarray):
    """Per class, the lowest and the highest kept bin (low > high: none). Pass 2 gathers
    every bin between them: a superset of complete bins, which resolves the same."""
    any_kept = keep.any(axis=1)
    lowest = np.where(any_kept, np.argmax(keep, axis=1), 1).astype(np.int64)
    highest = np.where(any_kept, keep.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1),
                       0).astype(np.int64)
    return lowest, highest


# The order-preserving integer key of a float32: its bits for +0.0 and above, the
# magnitude bits flipped below (-0.0 is -1, just under +0.0's 0): keys and values sort
# alike, so each bin, a monotone function of the value, is a range of keys.
KEY_OF_MINUS_INF = -(0x7F800000) - 1
KEY_OF_PLUS_INF = 0x7F800000


def _float32_of_keys(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.int64)
    bits = np.where(keys >= 0, keys, keys ^ 0x7FFFFFFF).astype(np.int64) & 0xFFFFFFFF
    return bits.astype(np.uint32).view(np.float32)


def _value_range(lowest: np.ndarray, highest: np.ndarray, mantissa_bits: int):
    """Per class, the float32 values (lo, hi) such that ``bins_of(v)`` is in
    [lowest, highest] exactly when lo <= float32(v) <= hi (v not NaN); lo > hi where no
    bin is chosen. By bisection on the keys, bins_of being non-decreasing in them."""
    def first_key(at_least):  # the smallest key whose bin is >= at_least
        low = np.full(at_least.shape, KEY_OF_MINUS_INF, np.int64)
        high = np.full(at_least.shape, KEY_OF_PLUS_INF + 1, np.int64)
        while np.any(low < high):
            middle = (low + high) // 2
            above = bins_of(_float32_of_keys(np.minimum(middle, KEY_OF_PLUS_INF)),
                            mantissa_bits) >= at_least
            high = np.where(above, middle, high)
            low = np.where(above, low, np.maximum(middle + 1, low))
            low = np.minimum(low, high)
        return low

    lo_key = first_key(lowest)
    hi_key = first_key(highest + 1) - 1
    chosen = (lowest <= highest) & (lo_key <= KEY_OF_PLUS_INF) & (lo_key <= hi_key)
    lo = np.where(chosen, _float32_of_keys(np.minimum(lo_key, KEY_OF_PLUS_INF)), np.inf)
    hi = np.where(chosen, _float32_of_keys(np.clip(hi_key, KEY_OF_MINUS_INF,
                                                   KEY_OF_PLUS_INF)), -np.inf)
    return lo.astype(np.float32), hi.astype(np.float32)


def _gather(x, y, w, keep, backend: str, mantissa_bits: int,
            chunk_counts: np.ndarray | None = None) -> Candidates:
    """``chunk_counts``: the (row chunks, C, bins) counts of pass 1 on the same rows and
    threads, which size each chunk's part of the output (counted again when absent)."""
    lowest, highest = _bin_ranges(keep)
    if backend != "numba":
        return _gather_numpy(x, y, w, lowest, highest, mantissa_bits)
    from ._backends import numba_kernels, numba_threads
    n, n_classes = x.shape
    threads = _threads()
    row_bounds, class_bounds = _split(n, n_classes, threads)
    if chunk_counts is None or chunk_counts.shape[0] != row_bounds.size - 1:
        chunk_counts = _histogram(x, y, np.empty(0), backend, mantissa_bits)[1]
    bins = np.arange(keep.shape[1])
    in_range = (bins >= lowest[:, None]) & (bins <= highest[:, None])
    sizes = np.sum(chunk_counts * in_range[None], axis=2)  # (chunks, C)
    class_starts = np.concatenate([[0], np.cumsum(sizes.sum(axis=0))]).astype(np.int64)
    starts = class_starts[None, :-1] + np.cumsum(sizes, axis=0) - sizes
    total = int(class_starts[-1])
    values = np.empty(total)
    labels = np.empty(total, np.uint8)
    weights = np.empty(total if w.size else 0)
    lo, hi = _value_range(lowest, highest, mantissa_bits)
    numba_threads.launch(threads, numba_kernels.threshold_gather, x, y, w, row_bounds,
                         class_bounds, lo, hi, np.ascontiguousarray(starts), values,
                         labels, weights)
    return Candidates(values, labels, weights, class_starts)


def _gather_numpy(x, y, w, lowest, highest, mantissa_bits):
    values, labels, weights, sizes = [], [], [], []
    for c in range(x.shape[1]):
        column = x[:, c]
        finite = ~np.isnan(column)
        chosen = np.zeros(column.shape, bool)
        bins = bins_of(column[finite], mantissa_bits)
        chosen[finite] = (bins >= lowest[c]) & (bins <= highest[c])
        values.append(column[chosen].astype(np.float64))
        labels.append(y[chosen, c])
        if w.size:
            weights.append(w[chosen])
        sizes.append(int(chosen.sum()))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Candidates(np.concatenate(values) if values else np.empty(0),
                      np.concatenate(labels) if labels else np.empty(0, np.uint8),
                      np.concatenate(weights) if weights else np.empty(0), starts)


# --- the objective ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Objective:
    metric: str
    beta: float = 1.0
    min_precision: float | None = None
    min_recall: float | None = None

    @property
    def uses_roc(self) -> bool:
        """Balanced accuracy and Youden's J are read off the ROC curve."""
        return self.metric in ("balanced_accuracy", "youden_j")

    def degenerate(self, positives, negatives):
        """Classes whose metric is not defined by any threshold (see tune_thresholds)."""
        if self.uses_roc:
            return (positives <= 0) | (negatives <= 0)
        return positives <= 0

    def values(self, tp, fp, positives, negatives):
        """The metric at (tp, fp) in float64 (arrays broadcast)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.metric in ("f1", "fbeta"):
                b2 = self.beta * self.beta
                return np.where(tp > 0, (1 + b2) * tp / ((1 + b2) * tp + b2 * (positives - tp)
                                                           + fp), 0.0)
            if self.metric == "youden_j":
                return tp / positives - fp / negatives
            if self.metric == "balanced_accuracy":
                return (tp / positives + (negatives - fp) / negatives) / 2
            if self.metric == "recall":
                return tp / positives
            return _precision(tp, fp)

    def order_keys(self, tp, fp, positives, negatives, n):
        """Keys for np.lexsort (last key primary) over candidates sorted by descending
        threshold (index i): the best candidate sorts last. Infeasible ones sort first."""
        index = np.arange(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / positives
            precision = _precision(tp, fp)
            if self.metric in ("f1", "fbeta"):  # ties: the lowest threshold
                return (index, self.values(tp, fp, positives, negatives))
            if self.uses_roc:  # ties: the highest threshold (roc_curve is descending)
                # J * P * N: exact for integer counts, so equal J compare equal
                return (-index, tp * negatives - fp * positives)
            if self.metric == "recall":
                feasible = precision >= self.min_precision
                return (index, precision, recall, feasible)
            feasible = recall >= self.min_recall
            return (index, recall, precision, feasible)


def _precision(tp, fp):
    """tp / (tp + fp); 1 where nothing is predicted (the curve's point at +inf)."""
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 1.0)


def _check_objective(metric, beta, min_precision, min_recall) -> _Objective:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}, got "
                         f"{metric!r}")
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if metric == "f1" and beta != 1.0:
        raise ValueError("beta is for metric='fbeta' (metric='f1' is beta = 1)")
    for name, value, owner in (("min_precision", min_precision, "recall"),
                               ("min_recall", min_recall, "precision")):
        if (value is None) != (metric != owner):
            raise ValueError(f"metric={owner!r} (the highest {owner} at "
                             f"{name[4:]} >= {name}) needs {name}; other metrics take no "
                             f"{name}" if metric == owner else
                             f"{name} is only for metric={owner!r}, got metric={metric!r}")
        if value is not None and not (0 <= float(value) <= 1):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return _Objective(metric, beta,
                      None if min_precision is None else float(min_precision),
                      None if min_recall is None else float(min_recall))


# --- which bins can hold the optimum, and the exact scan -------------------------------------

def bins_to_resolve(hist: ThresholdHistogram, objective: _Objective) -> np.ndarray:
    """(C, bins) bool: the bins whose thresholds may reach the best value (pass 2 reads
    their samples). A bin's thresholds have TP in [TP above it, TP of it and above] and
    FP likewise; each metric is monotone in TP and FP (or its constraint is), which
    bounds it over the bin; the best bin boundary is a reachable value."""
    fp_above, tp_above = hist.cumulative()
    positives, negatives = tp_above[:, :1], fp_above[:, :1]
    nonempty = hist.mass().sum(axis=1) > 0
    tp_high, fp_high = tp_above[:, :-1], fp_above[:, :-1]
    tp_low, fp_low = tp_above[:, 1:], fp_above[:, 1:]
    lowered = 1 - BOUND_SLACK
    with np.errstate(invalid="ignore", divide="ignore"):
        if objective.metric in ("recall", "precision"):
            # One quantity is bounded below, the other maximised: (value at the bin's
            # upper boundary, highest value inside the bin) of each. The +inf threshold
            # (recall 0, precision 1) counts where it meets the bound.
            recall = (tp_high / positives, tp_high / positives)
            precision = (_precision(tp_high, fp_high),
                         np.where(tp_high > 0, tp_high / (tp_high + fp_low), 0.0))
            if objective.metric == "recall":
                bounded, bound, target = precision, objective.min_precision, recall
                at_inf = 0.0
            else:
                bounded, bound, target = recall, objective.min_recall, precision
                at_inf = 1.0 if bound <= 0 else -np.inf
            feasible = nonempty & (bounded[0] >= bound)
            best = np.maximum(np.max(np.where(feasible, target[0], -np.inf), axis=1,
                                     keepdims=True), at_inf)
            keep = (bounded[1] >= bound * lowered) & (target[1] >= best * lowered)
        else:
            at_boundary = objective.values(tp_high, fp_high, positives, negatives)
            best = np.max(np.where(nonempty, at_boundary, -np.inf), axis=1, keepdims=True)
            if objective.uses_roc:  # the +inf threshold: J = 0
                best = np.maximum(best, objective.values(0.0, 0.0, positives, negatives))
            bound = objective.values(tp_high, fp_low, positives, negatives)
            keep = bound >= best - BOUND_SLACK * np.abs(best)
    keep &= nonempty
    keep[objective.degenerate(positives[:, 0], negatives[:, 0])] = False
    return keep


def _scan(values, labels, weights, base_tp, base_fp, mantissa_bits):
    """Exact (thresholds, tp, fp), thresholds descending, over the distinct values of
    the candidates of kept bins; base_tp / base_fp[bin] are the weights above that bin."""
    if weights is not None:
        nonzero = weights != 0  # scikit-learn leaves zero-weight samples out
        values, labels, weights = values[nonzero], labels[nonzero], weights[nonzero]
    if not values.size:
        return np.empty(0), np.empty(0), np.empty(0)
    order = np.argsort(values, kind="stable")[::-1]
    values = values[order]
    positive = labels[order].astype(np.float64)
    weight = 1.0 if weights is None else weights[order]
    cum_tp = np.cumsum(positive * weight)
    cum_fp = np.cumsum((1 - positive) * weight)
    bins = bins_of(values, mantissa_bits)
    run_start = np.concatenate([[0], np.nonzero(np.diff(bins))[0] + 1])
    start_of = run_start[np.searchsorted(run_start, np.arange(values.size), "right") - 1]
    # the last of each run of equal values (not np.diff: inf - inf is NaN, != 0)
    ends = np.concatenate([np.nonzero(values[1:] != values[:-1])[0], [values.size - 1]])
    first = start_of[ends]
    tp_before = np.where(first > 0, cum_tp[first - 1], 0.0)
    fp_before = np.where(first > 0, cum_fp[first - 1], 0.0)
    b = bins[ends]
    tp = base_tp[b + 1] + (cum_tp[ends] - tp_before)
    fp = base_fp[b + 1] + (cum_fp[ends] - fp_before)
    return values[ends], tp, fp


def resolve(hist: ThresholdHistogram, candidates: Candidates, objective: _Objective,
            dtype=np.float64) -> dict:
    """Per class: the best threshold among the candidates (exact scan) and +inf, with
    the counts and the metric there. Returns arrays by name (see Thresholds)."""
    fp_above, tp_above = hist.cumulative()
    n_classes = hist.n_classes
    positives, negatives = tp_above[:, 0], fp_above[:, 0]
    threshold = np.full(n_classes, np.inf)
    tp = np.zeros(n_classes)
    fp = np.zeros(n_classes)
    with_inf = objective.metric not in ("f1", "fbeta")
    for c in np.nonzero(~objective.degenerate(positives, negatives))[0]:
        values, labels, weights = candidates.of_class(c)
        t, tps, fps = _scan(values, labels, weights, tp_above[c], fp_above[c],
                            hist.mantissa_bits)
        if with_inf:
            t = np.concatenate([[np.inf], t])  # predict nothing: TP = FP = 0
            tps, fps = (np.concatenate([[0.0], a]) for a in (tps, fps))
        if not t.size:
            continue
        keys = objective.order_keys(tps, fps, positives[c], negatives[c], t.size)
        best = np.lexsort(keys)[-1]
        threshold[c], tp[c], fp[c] = t[best], tps[best], fps[best]
    return _fields(objective, threshold, tp, fp, positives, negatives, dtype)


def _fields(objective, threshold, tp, fp, positives, negatives, dtype) -> dict:
    """The result arrays from the chosen thresholds and their counts."""
    degenerate = objective.degenerate(positives, negatives)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = objective.values(tp, fp, positives, negatives)
    value = np.where(degenerate, 0.0 if objective.metric in ("f1", "fbeta") else np.nan,
                     value)
    return {"logit": threshold.astype(dtype), "value": value, "tp": tp, "fp": fp,
            "fn": positives - tp, "tn": negatives - fp}


# The numba backend runs the same two steps as compiled loops, classes in parallel.
METRIC_CODES = {"f1": 0, "fbeta": 0, "balanced_accuracy": 1, "youden_j": 2, "recall": 3,
                "precision": 4}


def _objective_arguments(objective: _Objective):
    bound = objective.min_precision if objective.metric == "recall" else (
        objective.min_recall if objective.metric == "precision" else 0.0)
    return METRIC_CODES[objective.metric], objective.beta * objective.beta, bound


def _compiled_bins_to_resolve(hist: ThresholdHistogram, objective: _Objective, threads):
    """bins_to_resolve in numba; also returns the cumulative (tp_above, fp_above)."""
    from ._backends import numba_kernels, numba_threads
    mass = np.ascontiguousarray(hist.mass())
    n_classes, _, n_bins = mass.shape
    tp_above = np.empty((n_classes, n_bins + 1))
    fp_above = np.empty((n_classes, n_bins + 1))
    keep = np.empty((n_classes, n_bins), np.uint8)
    positives, negatives = mass[:, 1].sum(axis=1), mass[:, 0].sum(axis=1)
    skip = objective.degenerate(positives, negatives).astype(np.uint8)
    numba_threads.launch(threads, numba_kernels.threshold_bins_to_resolve, mass, skip,
                         *_objective_arguments(objective), BOUND_SLACK, tp_above,
                         fp_above, keep)
    return keep.view(bool), tp_above, fp_above, skip


def _compiled_resolve(hist, candidates, objective, tp_above, fp_above, skip, threads,
                      dtype) -> dict:
    from ._backends import numba_kernels, numba_threads
    n_classes = hist.n_classes
    threshold, tp, fp = np.empty(n_classes), np.empty(n_classes), np.empty(n_classes)
    shift, first_level, levels = bin_layout(hist.mantissa_bits)
    numba_threads.launch(threads, numba_kernels.threshold_resolve, candidates.values,
                         candidates.labels, candidates.weights, candidates.starts,
                         tp_above, fp_above, skip, shift, first_level, levels,
                         *_objective_arguments(objective), threshold, tp, fp)
    return _fields(objective, threshold, tp, fp, tp_above[:, 0], fp_above[:, 0], dtype)


# --- tune_thresholds ------------------------------------------------------------------------

def _probability_below(logit_threshold: np.ndarray, dtype) -> np.ndarray:
    """sigmoid(threshold) as ``score`` computes probabilities (float64), rounded down to
    ``dtype``: every logit >= the threshold has a probability >= it."""
    from ._backends.numpy_ref import sigmoid
    exact = np.empty(logit_threshold.shape)
    sigmoid(logit_threshold.astype(np.float64), exact)
    rounded = exact.astype(dtype)
    too_high = rounded.astype(np.float64) > exact
    rounded[too_high] = np.nextafter(rounded[too_high], dtype.type(0))
    return rounded


class Thresholds:
    """The result of ``tune_thresholds``, per class (scalars for kind='binary'):

    ``logit``: the threshold on the logits (predict positive for ``logit >= it``), a
    sample's logit or +inf (predict nothing); ``probability``: sigmoid of it in the
    logits' dtype, rounded down (``score(..., threshold=...)`` takes it; see
    tune_thresholds); ``value``: the metric there; ``tp``, ``fp``, ``fn``, ``tn``: the
    counts (summed sample weights) behind it; ``metric`` and ``kind``.
    """

    _FIELDS = ("logit", "probability", "value", "tp", "fp", "fn", "tn")

    def __init__(self, *, kind: str, metric: str, fields: dict):
        self.kind = kind
        self.metric = metric
        for name in self._FIELDS:
            values = fields[name]
            setattr(self, name, values[0] if kind == "binary" else values)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __repr__(self) -> str:
        return (f"Thresholds(kind={self.kind!r}, metric={self.metric!r}, "
                f"classes={np.size(self.logit)})")


def tune_thresholds(logits, labels, *, kind="binary", metric="f1", beta=1.0,
                    min_precision=None, min_recall=None, sample_weight=None,
                    backend=None) -> Thresholds:
    """Per-class decision thresholds that maximise a metric, exactly, in two reads of the
    logits.

    ``kind="binary"``: logits of shape (n,) or (n, 1), labels (n,) 0 / 1;
    ``kind="multilabel"``: logits and 0 / 1 labels of shape (n, classes), each class
    tuned on its own. ``sample_weight``: one weight >= 0 per row (zero-weight rows are
    left out, as scikit-learn does). Backends: "numba" and "numpy" (``auto`` takes
    numba); "cython" has no threshold passes yet (NotImplementedError).

    Metrics, and which threshold wins a tie (thresholds are the samples' logits, predict
    positive for ``logit >= threshold``):

    * ``"f1"``, ``"fbeta"`` (with ``beta``): the best threshold of scikit-learn's
      ``precision_recall_curve`` (F = (1 + b^2) P R / (b^2 P + R)); ties go to the lowest
      threshold (``np.argmax`` over that curve's increasing thresholds).
    * ``"balanced_accuracy"`` ((TPR + TNR) / 2) and ``"youden_j"`` (TPR - FPR): the best
      point of ``roc_curve`` (drop_intermediate=False), +inf (predict nothing, J = 0)
      included; ties go to the highest threshold (``np.argmax`` over roc_curve's
      decreasing thresholds).
    * ``"recall"`` with ``min_precision=p``: the highest recall among the points of
      ``precision_recall_curve`` with precision >= p (its last point, threshold +inf with
      precision 1 and recall 0, always qualifies); equal recall goes to the higher
      precision.
    * ``"precision"`` with ``min_recall=r``: the highest precision among the points
      with recall >= r; equal precision goes to the higher recall.

    Degenerate classes: without positives, F is 0 at every threshold and the threshold
    is +inf (predict nothing; scikit-learn's curve has recall undefined there); recall
    and precision targets give +inf and NaN; balanced accuracy and J need positives and
    negatives: +inf and NaN without either (roc_curve's rates are NaN there).
    Logits may be +-inf (scikit-learn rejects them; they order as numbers); NaN raises.

    ``probability`` is rounded down so that ``score(logits, kind="multilabel",
    threshold=result.probability)`` predicts every sample with ``logit >= result.logit``;
    it also predicts a sample below the threshold whose probability rounds to the same
    value (adjacent logits, mostly float32) and cannot express +inf (probability 1.0,
    outside score's (0, 1)). ``logits >= result.logit`` is the exact decision.

    >>> import numpy as np, logitcore
    >>> logits = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    >>> labels = np.array([0, 1, 0, 1, 1])
    >>> t = logitcore.tune_thresholds(logits, labels, metric="f1")
    >>> float(t.logit), round(float(t.value), 4), float(t.tp), float(t.fp)
    (-1.0, 0.8571, 3.0, 1.0)
    """
    kind = _check_kind(kind)
    objective = _check_objective(metric, beta, min_precision, min_recall)
    x, y = _as_rows(logits, labels, kind)
    w = _check_sample_weight(sample_weight, x.shape[0])
    backend = _check_backend(backend)
    hist, chunk_counts = _histogram(x, y, w, backend, MANTISSA_BITS)
    if backend == "numba":
        threads = _threads()
        keep, tp_above, fp_above, skip = _compiled_bins_to_resolve(hist, objective, threads)
        candidates = _gather(x, y, w, keep, backend, MANTISSA_BITS, chunk_counts)
        fields = _compiled_resolve(hist, candidates, objective, tp_above, fp_above, skip,
                                   threads, x.dtype)
    else:
        keep = bins_to_resolve(hist, objective)
        candidates = _gather(x, y, w, keep, backend, MANTISSA_BITS, chunk_counts)
        fields = resolve(hist, candidates, objective, x.dtype)
    fields["probability"] = _probability_below(fields["logit"], x.dtype)
    if not w.size:
        for name in ("tp", "fp", "fn", "tn"):
            fields[name] = fields[name].astype(np.int64)
    return Thresholds(kind=kind, metric=metric, fields=fields)


# --- curves -----------------------------------------------------------------------------------

def _columns(logits, labels, kind, sample_weight):
    """(x, y, w or None) with one column per class, for the exact curves (one sort each)."""
    kind = _check_kind(kind)
    x, y = _as_rows(logits, labels, kind)
    w = _check_sample_weight(sample_weight, x.shape[0])
    if np.isnan(x).any():
        _check_nan(np.isnan(x).sum(axis=0))
    return kind, x, y, (w if w.size else None)


def _curve_counts(values, labels, weights):
    """scikit-learn's confusion_matrix_at_thresholds: (fps, tps, thresholds), thresholds
    the distinct scores descending, zero-weight samples left out."""
    if weights is not None:
        nonzero = weights != 0
        values, labels, weights = values[nonzero], labels[nonzero], weights[nonzero]
    order = np.argsort(values, kind="stable")[::-1]
    values = values[order]
    positive = labels[order].astype(np.float64)
    ends = (np.concatenate([np.nonzero(values[1:] != values[:-1])[0], [values.size - 1]])
            .astype(np.int64) if values.size else np.empty(0, np.int64))
    if weights is None:
        tps = np.cumsum(positive)[ends]
        fps = 1 + ends - tps
    else:
        weights = weights[order]
        tps = np.cumsum(positive * weights)[ends]
        fps = np.cumsum((1 - positive) * weights)[ends]
    return fps, tps, values[ends]


def _per_class(kind, x, y, w, curve):
    results = [curve(*_class_counts(x, y, w, c)) for c in range(x.shape[1])]
    return results[0] if kind == "binary" else results


def _class_counts(x, y, w, c):
    return _curve_counts(x[:, c].astype(np.float64), y[:, c], w)


def _pr_from_counts(fps, tps, thresholds, drop_intermediate=False):
    if drop_intermediate and fps.size > 2:
        keep = np.concatenate([[True], (np.diff(tps[:-1]) != 0) | (np.diff(tps[1:]) != 0),
                               [True]])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    predicted = tps + fps
    precision = np.where(predicted != 0, tps / np.where(predicted != 0, predicted, 1), 0.0)
    recall = np.ones_like(tps) if not tps.size or tps[-1] == 0 else tps / tps[-1]
    return (np.concatenate([precision[::-1], [1.0]]), np.concatenate([recall[::-1], [0.0]]),
            thresholds[::-1])


def _roc_from_counts(fps, tps, thresholds, drop_intermediate=True):
    if drop_intermediate and fps.size > 2:
        keep = np.concatenate([[True], (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0),
                               [True]])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.concatenate([[0.0], tps])
    fps = np.concatenate([[0.0], fps])
    thresholds = np.concatenate([[np.inf], thresholds])
    fpr = np.full(fps.shape, np.nan) if fps[-1] <= 0 else fps / fps[-1]
    tpr = np.full(tps.shape, np.nan) if tps[-1] <= 0 else tps / tps[-1]
    return fpr, tpr, thresholds


def _binned(logits, labels, kind, sample_weight, bins, backend):
    """The histogram for ``bins`` (the finest layout with at most that many bins)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise TypeError(f"bins must be an int or None, got {bins!r}")
    mantissa_bits = -1
    while 2 * bin_layout(mantissa_bits + 1)[2] <= bins and mantissa_bits < 16:
        mantissa_bits += 1
    if mantissa_bits < 0:
        raise ValueError(f"bins must be at least {2 * bin_layout(0)[2]}, got {bins}")
    return histogram(logits, labels, kind=kind, sample_weight=sample_weight,
                     backend=backend, mantissa_bits=mantissa_bits)


def precision_recall_curve(logits, labels, *, kind="binary", sample_weight=None,
                           drop_intermediate=False, bins=None, backend=None):
    """Per class, scikit-learn's ``precision_recall_curve`` of the logits: (precision,
    recall, thresholds), thresholds increasing, precision and recall with a last point
    (1, 0); a tuple for kind='binary', a list of them (one per class) for 'multilabel'.

    ``bins=N``: from a ``ThresholdHistogram`` of at most N bins (mergeable, one read of
    the logits, no sort): points at the lower edges of the non-empty bins, each bin taken
    as one tied score; every exact point lies in the box between two adjacent binned
    points (see ``ThresholdHistogram.average_precision`` for the bound on AP).
    """
    return _curves(logits, labels, kind, sample_weight, bins, backend,
                   lambda *counts: _pr_from_counts(*counts, drop_intermediate))


def roc_curve(logits, labels, *, kind="binary", sample_weight=None, drop_intermediate=True,
              bins=None, backend=None):
    """Per class, scikit-learn's ``roc_curve`` of the logits: (fpr, tpr, thresholds),
    thresholds decreasing from +inf; rates NaN for a class without negatives (fpr) or
    positives (tpr). ``bins=N``: from the histogram, as in precision_recall_curve."""
    return _curves(logits, labels, kind, sample_weight, bins, backend,
                   lambda *counts: _roc_from_counts(*counts, drop_intermediate))


def _curves(logits, labels, kind, sample_weight, bins, backend, curve):
    """Per class, ``curve(fps, tps, thresholds)`` of the class's counts: the exact ones,
    or with ``bins`` those of the logits' ThresholdHistogram. One curve for
    kind='binary', a list of them for 'multilabel'."""
    if bins is not None:
        hist = _binned(logits, labels, kind, sample_weight, bins, backend)
        curves = [curve(*hist.binned_counts(c)) for c in range(hist.n_classes)]
        return curves[0] if kind == "binary" else curves
    kind, x, y, w = _columns(logits, labels, kind, sample_weight)
    return _per_class(kind, x, y, w, curve)


def _class_scores(logits, labels, kind, sample_weight, bins, backend, score, binned):
    """Per class, ``score(fps, tps, thresholds)`` of the class's exact counts, or with
    ``bins`` ``binned(hist)[0]`` of the logits' ThresholdHistogram: a float for
    kind='binary', else one per class."""
    if bins is not None:
        hist = _binned(logits, labels, kind, sample_weight, bins, backend)
        return _one_or_all(kind, binned(hist)[0])
    kind, x, y, w = _columns(logits, labels, kind, sample_weight)
    return _one_or_all(kind, [score(*_class_counts(x, y, w, c)) for c in range(x.shape[1])])


def _one_or_all(kind, values):
    values = np.asarray(values, dtype=np.float64)
    return float(values[0]) if kind == "binary" else values


def average_precision(logits, labels, *, kind="binary", sample_weight=None, bins=None,
                      backend=None):
    """Per class, scikit-learn's ``average_precision_score``: sum over the curve's
    thresholds of (R_n - R_(n-1)) P_n. A float for kind='binary', else one per class.
    ``bins=N``: the binned value (error bound: ThresholdHistogram.average_precision)."""
    def ap(*counts):
        precision, recall, _ = _pr_from_counts(*counts)
        return max(0.0, float(-np.sum(np.diff(recall) * precision[:-1])))
    return _class_scores(logits, labels, kind, sample_weight, bins, backend, ap,
                         lambda hist: hist.average_precision())


def roc_auc(logits, labels, *, kind="binary", sample_weight=None, bins=None, backend=None):
    """Per class, scikit-learn's ``roc_auc_score`` (trapezoids under roc_curve); NaN for
    a class without positives or negatives (scikit-learn warns and returns NaN).
    ``bins=N``: the binned value (error bound: ThresholdHistogram.roc_auc)."""
    def auc(*counts):
        fpr, tpr, _ = _roc_from_counts(*counts)
        if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
            return math.nan
        return float(np.trapezoid(tpr, fpr))
    return _class_scores(logits, labels, kind, sample_weight, bins, backend, auc,
                         lambda hist: hist.roc_auc())
