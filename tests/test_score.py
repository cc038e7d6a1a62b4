"""logitcore.score: every field against an independent peer (torch, scipy.special,
sklearn.metrics where installed), edge rows by their documented values, validation, the
fields= selection, hypothesis properties and the summary's merge."""

import math
import sys
import types

import numpy as np
import pytest
import scipy.special
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import logitcore
from logitcore import _backends, _config
from logitcore import _score as score_module
from logitcore._backends import availability, load, op_table

torch = pytest.importorskip("torch")
F = torch.nn.functional

try:
    import sklearn.metrics as skm
except ImportError:  # the sklearn comparisons skip
    skm = None
needs_sklearn = pytest.mark.skipif(skm is None, reason="scikit-learn is not installed")

inf, nan = np.inf, np.nan


def _score_backends():
    """Every available backend that implements the scoring kernels."""
    names = []
    for name in _backends.BACKEND_NAMES:
        if availability(name)[0] and op_table.SCORE_KERNELS <= load(name).SUPPORTED_KERNELS:
            names.append(name)
    return names


BACKENDS = _score_backends()
TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-6, atol=2e-6)}


def _close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               **TOLERANCE[dtype])


def _torch_fields(x, labels, k):
    """The multiclass fields from torch and scipy, rows last axis, all in float64."""
    t = torch.from_numpy(x.astype(np.float64))
    y = torch.from_numpy(labels)
    probs = torch.softmax(t, -1)
    top_logits, _ = torch.topk(t, 2, dim=-1)
    top_probs, _ = torch.topk(probs, 2, dim=-1)
    sorted_probs, sorted_index = torch.sort(probs, dim=-1, descending=True, stable=True)
    label_logit = t.gather(-1, y.unsqueeze(-1))
    onehot = F.one_hot(y, x.shape[-1]).double()
    p = scipy.special.softmax(x.astype(np.float64), axis=-1)
    return {
        "pred": torch.argmax(t, -1).numpy(),
        "max_logit": t.max(-1).values.numpy(),
        "confidence": probs.max(-1).values.numpy(),
        "margin": (top_probs[..., 0] - top_probs[..., 1]).numpy(),
        "logit_margin": (top_logits[..., 0] - top_logits[..., 1]).numpy(),
        "entropy": scipy.special.entr(p).sum(-1),
        "logsumexp": scipy.special.logsumexp(x.astype(np.float64), axis=-1),
        "top_k_indices": sorted_index[..., :k].numpy(),
        "top_k_probs": sorted_probs[..., :k].numpy(),
        "label_logprob": -F.cross_entropy(t.reshape(-1, x.shape[-1]), y.reshape(-1),
                                          reduction="none").reshape(y.shape).numpy(),
        "correct": (torch.argmax(t, -1) == y).numpy(),
        "label_rank": (1 + (t > label_logit).sum(-1)).numpy(),
        "brier": ((p - onehot.numpy()) ** 2).sum(-1),
    }


def _check_multiclass(s, want, dtype):
    for name in ("pred", "top_k_indices", "correct", "label_rank"):
        np.testing.assert_array_equal(s[name], want[name], err_msg=name)
    for name in ("max_logit", "confidence", "margin", "logit_margin", "entropy",
                 "logsumexp", "top_k_probs", "label_logprob", "brier"):
        assert s[name].dtype == dtype, name
        _close(s[name], want[name], dtype)
    _close(s.loss, -want["label_logprob"], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(50, 7), (3, 1000), (4, 6, 11)])
def test_multiclass_fields_match_torch_and_scipy(backend, dtype, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    s = logitcore.score(x, labels, top_k=5, backend=backend)
    assert s.pred.shape == shape[:-1] and s.top_k_indices.shape == shape[:-1] + (5,)
    _check_multiclass(s, _torch_fields(x, labels, 5), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_axis_elsewhere_keeps_the_other_axes(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 9, 5))  # class axis 1
    labels = rng.integers(0, 9, (3, 5))
    s = logitcore.score(x, labels, axis=1, top_k=3, backend=backend)
    _check_multiclass(s, _torch_fields(np.moveaxis(x, 1, -1), labels, 3), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_index(backend):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (200, 6)).astype(np.float64)  # many ties, also at the max
    labels = rng.integers(0, 6, 200)
    s = logitcore.score(x, labels, top_k=6, backend=backend)
    want = _torch_fields(x, labels, 6)  # torch.sort(stable=True): equal values keep order
    _check_multiclass(s, want, np.float64)
    assert np.any(s.logit_margin == 0) and np.any((s.label_rank == 1) & ~s.correct)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("top_k", [0, 1, 2])
def test_ties_with_a_short_top_k(backend, dtype, top_k):
    """Narrow rows with at most two ordered entries (pred, correct, margin and top_k <= 2)
    find the argmax and the second logit without sorting (cython): ties at the max and at
    the second, rows of -inf and rows with some -inf, against torch."""
    rng = np.random.default_rng(8)
    x = rng.integers(0, 3, (300, 6)).astype(dtype)
    x[:10] = -np.inf
    x[10:40, ::2] = -np.inf
    labels = rng.integers(0, 6, 300)
    want = _torch_fields(x, labels, top_k)
    s = logitcore.score(x, labels, top_k=top_k, backend=backend)
    for name in ("pred", "correct", "label_rank") + (("top_k_indices",) if top_k else ()):
        np.testing.assert_array_equal(s[name], want[name], err_msg=name)
    for name in ("max_logit", "confidence", "margin", "logit_margin", "entropy",
                 "logsumexp", "label_logprob", "brier") + (("top_k_probs",) if top_k else ()):
        _close(s[name], want[name], dtype)
    assert np.any(s.logit_margin[40:] == 0) and np.all(np.isnan(s.logit_margin[:10]))
    only = logitcore.score(x, labels, fields=("pred", "correct"), backend=backend)
    np.testing.assert_array_equal(only.pred, want["pred"])
    np.testing.assert_array_equal(only.correct, want["correct"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows_are_masked_as_cross_entropy(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 5))
    labels = rng.integers(0, 5, 40)
    labels[::4] = -7
    s = logitcore.score(x, labels, ignore_index=-7, backend=backend)
    torch_loss = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(labels),
                                 ignore_index=-7, reduction="none").numpy()
    _close(s.loss, torch_loss, np.float64)
    ignored = labels == -7
    np.testing.assert_array_equal(s.kept, ~ignored)
    assert not s.correct[ignored].any() and (s.label_rank[ignored] == 0).all()
    assert (s.brier[ignored] == 0).all() and (s.label_logprob[ignored] == 0).all()
    mean = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(labels), ignore_index=-7)
    summary = s.summary()
    assert summary["n"] == 30
    assert summary["mean_nll"] == pytest.approx(float(mean), rel=1e-12)
    assert summary["perplexity"] == pytest.approx(math.exp(float(mean)), rel=1e-12)


@needs_sklearn
@pytest.mark.parametrize("backend", BACKENDS)
def test_multiclass_summary_matches_sklearn(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 8)) * 2
    labels = rng.integers(0, 8, 300)
    probs = scipy.special.softmax(x, axis=-1)
    figures = logitcore.score(x, labels, top_k=3, backend=backend).summary().figures()
    assert figures["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    assert figures["top_k_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, probs, k=3, labels=np.arange(8)))
    assert figures["mean_nll"] == pytest.approx(skm.log_loss(labels, probs), rel=1e-9)
    onehot = np.eye(8)[labels]
    assert figures["brier"] == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, 1)))
    assert figures["mean_confidence"] == pytest.approx(probs.max(1).mean())
    assert figures["mean_entropy"] == pytest.approx(scipy.stats.entropy(probs, axis=1).mean())
    assert figures["mean_max_logit"] == pytest.approx(x.max(1).mean())
    assert figures["std_max_logit"] == pytest.approx(x.max(1).std())
    lse = scipy.special.logsumexp(x, axis=1)
    assert figures["mean_logsumexp"] == pytest.approx(lse.mean())
    assert figures["std_logsumexp"] == pytest.approx(lse.std())


# The edge table of logitcore/_score.py, row by row (label 0 unless said).
EDGE_ROWS = np.array([
    [nan, 1.0, 2.0],     # NaN row
    [inf, 1.0, 2.0],     # +inf once
    [-inf, -inf, -inf],  # all -inf
    [0.0, -inf, 1.0],    # masked class, label on it (label 1)
])
EDGE_LABELS = np.array([0, 0, 0, 1])
EDGE_EXPECTED = {
    "pred": [-1, 0, 0, 2],
    "max_logit": [nan, inf, -inf, 1.0],
    "confidence": [nan, nan, nan, 1 / (1 + math.exp(-1))],
    "margin": [nan, nan, nan, 1 / (1 + math.exp(-1)) - 1 / (1 + math.exp(1))],
    "logit_margin": [nan, inf, nan, 1.0],
    "entropy": [nan, nan, nan, scipy.special.entr([1 / (1 + math.e), 1 / (1 + 1 / math.e)]).sum()],
    "logsumexp": [nan, inf, -inf, math.log(1 + math.e)],
    "label_logprob": [nan, nan, nan, -inf],
    "loss": [nan, nan, nan, inf],
    "correct": [False, True, True, False],
    "label_rank": [0, 1, 1, 3],
    "brier": [nan, nan, nan, 1.0 + (1 / (1 + math.e)) ** 2 + (1 / (1 + 1 / math.e)) ** 2],
    "top_k_indices": [[-1, -1], [0, 2], [0, 1], [2, 0]],
    "top_k_probs": [[nan, nan], [nan, nan], [nan, nan],
                    [1 / (1 + 1 / math.e), 1 / (1 + math.e)]],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_edge_rows_follow_the_table(backend, dtype):
    s = logitcore.score(EDGE_ROWS.astype(dtype), EDGE_LABELS, top_k=2, backend=backend)
    for name, want in EDGE_EXPECTED.items():
        if s[name].dtype.kind == "f":
            _close(s[name], want, dtype)
        else:
            np.testing.assert_array_equal(s[name], want, err_msg=name)
    figures = s.summary().figures()
    assert (figures["nan_rows"], figures["posinf_rows"], figures["neginf_rows"]) == (1, 1, 1)
    # torch agrees where it defines the values
    t = torch.from_numpy(EDGE_ROWS)
    _close(s.logsumexp, torch.logsumexp(t, -1).numpy(), dtype)
    _close(s.loss, F.cross_entropy(t, torch.from_numpy(EDGE_LABELS), reduction="none"), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_class_and_empty_inputs(backend):
    s = logitcore.score(np.array([[3.0], [-2.0]]), np.array([0, 0]), top_k=1, backend=backend)
    np.testing.assert_array_equal(s.pred, [0, 0])
    np.testing.assert_array_equal(s.confidence, [1.0, 1.0])
    np.testing.assert_array_equal(s.margin, [1.0, 1.0])
    np.testing.assert_array_equal(s.logit_margin, [inf, inf])
    np.testing.assert_array_equal(s.entropy, [0.0, 0.0])
    np.testing.assert_array_equal(s.loss, [0.0, 0.0])
    np.testing.assert_array_equal(s.top_k_probs, [[1.0], [1.0]])
    assert s.summary()["saturated_rows"] == 2
    empty = logitcore.score(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), top_k=2,
                            backend=backend)
    assert empty.pred.shape == (0,) and empty.top_k_probs.shape == (0, 2)
    assert empty.confidence.dtype == np.float32
    figures = empty.summary().figures()
    assert figures["n"] == 0 and math.isnan(figures["accuracy"])
    with pytest.raises(ValueError, match="0 classes"):
        logitcore.score(np.zeros((3, 0)))


# Shapes that take each path of the compiled backends: narrow rows (fewer than
# NARROW_MAX_CLASSES classes, row tiles), whole rows, and rows of several blocks
# (BLOCK_CLASSES classes each); the last ones are long enough (SMALL_CALL_ELEMENTS per
# thread) for a row alone to take the class split, its blocks on several threads.
SCHEDULE_SHAPES = [(8, 12), (8, 300), (8, 5000), (6, 70000)]


def _edge_batch(shape, dtype, seed=14):
    """Random logits and labels with edge rows placed across blocks: row 0 holds a NaN,
    row 1 a +inf in its last class, row 2 is all -inf, row 3 has its first half masked
    (-inf) and its label there, row 4 its max tied between the first and the last class
    (the label on the last), row 5 an ignored label."""
    rng = np.random.default_rng(seed)
    n_rows, n_classes = shape
    x = rng.standard_normal(shape) * 3
    labels = rng.integers(0, n_classes, n_rows)
    x[0, n_classes // 2] = nan
    x[1, -1] = inf
    x[2] = -inf
    x[3, :n_classes // 2] = -inf
    labels[3] = 0
    x[4, 0] = x[4, -1] = 50.0
    labels[4] = n_classes - 1
    labels[5] = -100
    return x.astype(dtype), labels


def _check_edge_batch(s, x, labels, top_k, dtype):
    """The fields of _edge_batch's rows against torch where it defines them (the finite
    rows, the loss and logsumexp of every row) and the edge table elsewhere."""
    n_classes = x.shape[1]
    t = torch.from_numpy(x.astype(np.float64))
    finite = [3, 4] + list(range(6, x.shape[0]))
    want = _torch_fields(x[finite], labels[finite], top_k)
    for name in ("pred", "correct", "label_rank") + (("top_k_indices",) if top_k else ()):
        np.testing.assert_array_equal(s[name][finite], want[name], err_msg=name)
    for name in ("max_logit", "confidence", "margin", "logit_margin", "entropy", "logsumexp",
                 "label_logprob", "brier") + (("top_k_probs",) if top_k else ()):
        assert s[name].dtype == dtype, name
        _close(s[name][finite], want[name], dtype)
    kept_labels = torch.from_numpy(np.where(labels == -100, 0, labels))
    torch_loss = F.cross_entropy(t, kept_labels, reduction="none").numpy()
    torch_loss[5] = 0.0
    _close(s.loss, torch_loss, dtype)  # NaN for rows 0-2, inf for row 3
    _close(s.logsumexp, torch.logsumexp(t, -1).numpy(), dtype)
    # the edge rows by the table of logitcore/_score.py
    np.testing.assert_array_equal(s.pred[:3], [-1, n_classes - 1, 0])
    np.testing.assert_array_equal(s.max_logit[:3], [nan, inf, -inf])
    np.testing.assert_array_equal(s.logit_margin[:3], [nan, inf, nan])
    for name in ("confidence", "margin", "entropy", "brier", "label_logprob"):
        assert np.isnan(s[name][:3]).all(), name
    larger = int((t[1] > t[1, labels[1]]).sum())
    np.testing.assert_array_equal(s.label_rank[:3], [0, 1 + larger, 1])
    np.testing.assert_array_equal(s.correct[:3], [False, labels[1] == n_classes - 1,
                                                  labels[2] == 0])
    assert (s.pred[4], s.label_rank[4], s.correct[4]) == (0, 1, False)
    assert (s.loss[5], s.brier[5], s.label_rank[5], s.correct[5]) == (0, 0, 0, False)
    if top_k:
        order_of_inf_row = torch.sort(t[1], descending=True, stable=True).indices[:top_k]
        np.testing.assert_array_equal(s.top_k_indices[:3], [
            [-1] * top_k, order_of_inf_row.numpy(), np.arange(top_k)])
        assert np.isnan(s.top_k_probs[:3]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SCHEDULE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("top_k", ["0", "1", "5", "C"])
def test_every_schedule_matches_torch_on_edge_rows(backend, dtype, shape, top_k):
    """Each schedule (narrow tiles, whole rows, blocks of long rows) on random and edge
    rows, top_k from 0 to C, against torch; then every row alone on 3 threads (a long row
    takes the class split: its blocks on several threads) gives the same bits."""
    top_k = shape[1] if top_k == "C" else int(top_k)
    x, labels = _edge_batch(shape, dtype)
    with logitcore.config(n_threads=2):
        s = logitcore.score(x, labels, top_k=top_k, backend=backend)
    _check_edge_batch(s, x, labels, top_k, dtype)
    with logitcore.config(n_threads=3):
        for row in range(shape[0]):
            alone = logitcore.score(x[row:row + 1], labels[row:row + 1], top_k=top_k,
                                    backend=backend)
            for name in s.fields:
                np.testing.assert_array_equal(alone[name][0], s[name][row],
                                              err_msg=f"{name} of row {row}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SCHEDULE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_each_field_alone_is_the_field_of_all(backend, shape):
    """A field asked alone (its kernel computes only what that field needs: no sums for
    pred, a top-k heap of 2 for margin, ...) has the bits it has among all fields."""
    x, labels = _edge_batch(shape, np.float64)
    every = logitcore.score(x, labels, top_k=3, backend=backend)
    for name in every.fields:
        if name == "kept":
            continue
        alone = logitcore.score(x, labels, top_k=3, fields=[name], backend=backend)
        assert alone.fields == (name,)
        np.testing.assert_array_equal(alone[name], every[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(30, 7), (6, 3000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_multilabel_and_binary_long_inputs_match_torch(backend, shape):
    rng = np.random.default_rng(15)
    x = rng.standard_normal(shape) * 3
    x[0, 1] = nan
    x[1, 0], x[1, -1] = 200.0, -200.0  # saturated (torch makes inf - inf of +-inf)
    targets = rng.integers(0, 2, shape)
    threshold = rng.uniform(0.1, 0.9, shape[1])
    s = logitcore.score(x, targets, kind="multilabel", threshold=threshold,
                        fields=["pred", "n_predicted", "loss", "exact_match",
                                "true_positives", "false_positives", "false_negatives"],
                        backend=backend)
    t = torch.from_numpy(x)
    pred = (torch.sigmoid(t).numpy() >= threshold)  # False for NaN
    np.testing.assert_array_equal(s.pred, pred)
    np.testing.assert_array_equal(s.n_predicted, pred.sum(1))
    bce = F.binary_cross_entropy_with_logits(t, torch.from_numpy(targets).double(),
                                             reduction="none").mean(1).numpy()
    _close(s.loss, bce, np.float64)
    assert np.isnan(s.loss[0])
    truth = targets.astype(bool)
    np.testing.assert_array_equal(s.true_positives, (pred & truth).sum(1))
    np.testing.assert_array_equal(s.false_positives, (pred & ~truth).sum(1))
    np.testing.assert_array_equal(s.false_negatives, (~pred & truth).sum(1))
    np.testing.assert_array_equal(s.exact_match, (pred == truth).all(1))
    flat = x.reshape(-1)
    flat_labels = targets.reshape(-1)
    b = logitcore.score(flat, flat_labels, kind="binary", threshold=0.3, backend=backend)
    p = torch.sigmoid(torch.from_numpy(flat)).numpy()
    _close(b.prob, p, np.float64)
    bce = F.binary_cross_entropy_with_logits(torch.from_numpy(flat),
                                             torch.from_numpy(flat_labels).double(),
                                             reduction="none").numpy()
    _close(b.loss, bce, np.float64)
    np.testing.assert_array_equal(b.pred, p >= 0.3)
    np.testing.assert_array_equal(b.correct, ((p >= 0.3) == flat_labels) & ~np.isnan(flat))


COMPILED_SCORE_BACKENDS = [name for name in BACKENDS if name != "numpy"]


def test_kernel_operands_that_break_the_contract_name_themselves():
    """The cython entry points check their operands (a wrong buffer would be written out
    of bounds in C); numba's take them from the Python layer's checks, as its other
    kernels do."""
    if "cython" not in COMPILED_SCORE_BACKENDS:
        pytest.skip("the cython backend is not available")
    module = load("cython")
    x = np.zeros((4, 3))
    empty_field, empty_top = np.empty(0), np.empty((0, 0))
    outputs = [np.empty(0, np.int64)] + [empty_field] * 6 + [np.empty((0, 0), np.int64),
               empty_top] + [empty_field] * 2 + [np.empty(0, np.uint8),
               np.empty(0, np.int64), empty_field]
    labels = np.zeros(4, np.int64)
    module.score_multiclass(x, labels, -100, 0, *outputs, 1)  # nothing asked: fine
    wrong = list(outputs)
    wrong[0] = np.empty(4, np.float64)  # pred_out must be int64
    with pytest.raises(ValueError, match="pred_out"):
        module.score_multiclass(x, labels, -100, 0, *wrong, 1)
    wrong = list(outputs)
    wrong[8] = np.empty((4, 2))  # top_k_probs_out with top_k = 1
    with pytest.raises(ValueError, match="top_k_probs_out"):
        module.score_multiclass(x, labels, -100, 1, *wrong, 1)
    with pytest.raises(ValueError, match="top_k"):
        module.score_multiclass(x, labels, -100, 4, *outputs, 1)
    wrong = list(outputs)
    wrong[10] = np.empty(4)  # loss_out without labels
    with pytest.raises(ValueError, match="labels"):
        module.score_multiclass(x, np.empty(0, np.int64), -100, 0, *wrong, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_llm_shaped_input_and_sequence_reductions(backend):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 8, 20)).astype(np.float32)
    labels = rng.integers(0, 20, (3, 8))
    labels[0, 5:] = -100  # padding
    labels[2, :] = x[2].argmax(-1)  # a sequence that is all greedy
    s = logitcore.score(x, labels, backend=backend)
    assert s.loss.shape == (3, 8)
    seq = s.sequences()
    t = torch.from_numpy(x.astype(np.float64))
    y = torch.from_numpy(labels)
    token_loss = F.cross_entropy(t.transpose(1, 2), y, reduction="none")  # (batch, seq)
    _close(seq["logprob"], -token_loss.sum(-1).numpy(), np.float32)
    np.testing.assert_array_equal(seq["n_tokens"], [5, 8, 8])
    mean_loss = torch.stack([F.cross_entropy(t[b], y[b]) for b in range(3)])
    _close(seq["perplexity"], torch.exp(mean_loss).numpy(), np.float32)
    greedy = [(t[b].argmax(-1) == y[b])[y[b] != -100].all().item() for b in range(3)]
    np.testing.assert_array_equal(seq["all_greedy"], greedy)
    assert seq["all_greedy"][2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(64,), (64, 1), (4, 16, 1)])
def test_binary_fields_match_torch(backend, shape):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 3
    row_shape = shape[:-1] if len(shape) > 1 else shape
    labels = rng.integers(0, 2, row_shape)
    s = logitcore.score(x, labels, kind="binary", threshold=0.4, backend=backend)
    t = torch.from_numpy(x.reshape(row_shape))
    p = torch.sigmoid(t).numpy()
    assert s.prob.shape == row_shape
    _close(s.prob, p, np.float64)
    np.testing.assert_array_equal(s.pred, p >= 0.4)
    _close(s.confidence, np.maximum(p, 1 - p), np.float64)
    _close(s.entropy, scipy.special.entr(p) + scipy.special.entr(1 - p), np.float64)
    bce = F.binary_cross_entropy_with_logits(t, torch.from_numpy(labels).double(),
                                             reduction="none")
    _close(s.loss, bce.numpy(), np.float64)
    np.testing.assert_array_equal(s.correct, (p >= 0.4) == labels)
    _close(s.brier, (p - labels) ** 2, np.float64)


@needs_sklearn
@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_summary_matches_sklearn(backend):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(500) * 2
    labels = rng.integers(0, 2, 500)
    p = scipy.special.expit(x)
    figures = logitcore.score(x, labels, kind="binary", backend=backend).summary().figures()
    assert figures["accuracy"] == pytest.approx(skm.accuracy_score(labels, p >= 0.5))
    assert figures["mean_nll"] == pytest.approx(skm.log_loss(labels, p), rel=1e-9)
    assert figures["brier"] == pytest.approx(skm.brier_score_loss(labels, p), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_edge_logits(backend):
    x = np.array([nan, inf, -inf, 0.0])
    s = logitcore.score(x, np.array([0, 1, 1, -100]), kind="binary", backend=backend)
    np.testing.assert_array_equal(s.prob, [nan, 1.0, 0.0, 0.5])
    np.testing.assert_array_equal(s.pred, [False, True, False, True])
    np.testing.assert_array_equal(s.entropy, [nan, 0.0, 0.0, math.log(2)])
    np.testing.assert_array_equal(s.loss, [nan, 0.0, inf, 0.0])
    np.testing.assert_array_equal(s.correct, [False, True, False, False])
    figures = s.summary().figures()
    assert figures["n"] == 3 and figures["nan_rows"] == 1 and figures["saturated_rows"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_multilabel_fields_match_torch_and_sklearn(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((60, 5)) * 2
    labels = rng.integers(0, 2, (60, 5))
    threshold = np.array([0.2, 0.5, 0.5, 0.7, 0.9])
    s = logitcore.score(x, labels, kind="multilabel", threshold=threshold,
                        fields=["pred", "n_predicted", "loss", "exact_match",
                                "true_positives", "false_positives", "false_negatives"],
                        backend=backend)
    p = torch.sigmoid(torch.from_numpy(x)).numpy()
    pred = p >= threshold
    np.testing.assert_array_equal(s.pred, pred)
    np.testing.assert_array_equal(s.n_predicted, pred.sum(1))
    bce = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(labels)
                                             .double(), reduction="none").mean(1)
    _close(s.loss, bce.numpy(), np.float64)
    np.testing.assert_array_equal(s.exact_match, (pred == labels).all(1))
    if skm is not None:
        matrices = skm.multilabel_confusion_matrix(labels, pred, samplewise=True)
        np.testing.assert_array_equal(s.true_positives, matrices[:, 1, 1])
        np.testing.assert_array_equal(s.false_positives, matrices[:, 0, 1])
        np.testing.assert_array_equal(s.false_negatives, matrices[:, 1, 0])
        figures = s.summary().figures()
        assert figures["exact_match"] == pytest.approx(skm.accuracy_score(labels, pred))
        assert figures["precision"] == pytest.approx(
            skm.precision_score(labels, pred, average="micro"))
        assert figures["recall"] == pytest.approx(skm.recall_score(labels, pred,
                                                                   average="micro"))
        assert figures["f1"] == pytest.approx(skm.f1_score(labels, pred, average="micro"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_multilabel_class_axis_first_and_default_fields(backend):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 30))  # classes on axis 0
    s = logitcore.score(x, kind="multilabel", axis=0, threshold=0.6,
                        fields=["pred", "n_predicted"], backend=backend)
    pred = scipy.special.expit(x) >= 0.6
    np.testing.assert_array_equal(s.pred, pred)
    np.testing.assert_array_equal(s.n_predicted, pred.sum(0))
    default = logitcore.score(x, kind="multilabel", axis=0, backend=backend)
    assert default.fields == ("n_predicted",)  # the rows x classes matrix only when asked


# The numba backend's schedules for score_multiclass (numba_kernels.py, "scoring"): whole
# rows (one block, or several blocks walked in order), the class split of few long rows
# (on 2 or more threads: rows < 2 per thread and more than BLOCK_CLASSES = 2048 classes)
# and narrow rows (fewer than 64 classes, row tiles).
NUMBA_SCHEDULES = {"rows": (40, 1000), "rows_of_blocks": (9, 5000),
                   "class_split": (3, 5000), "narrow": (300, 10)}
needs_numba = pytest.mark.skipif(not availability("numba")[0],
                                 reason="the numba backend is not available")


def _top_k_of(name, n_classes):
    return {"0": 0, "1": 1, "5": 5, "C": n_classes}[name]


@needs_numba
@pytest.mark.parametrize("top_k", ["0", "1", "5", "C"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("schedule", list(NUMBA_SCHEDULES))
def test_numba_schedules_match_torch(schedule, dtype, top_k):
    """Every field on each schedule, 1 to 3 threads, with masked classes and ties at the
    max, against torch and scipy."""
    shape = NUMBA_SCHEDULES[schedule]
    n_classes = shape[1]
    k = _top_k_of(top_k, n_classes)
    rng = np.random.default_rng(14)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x[:, ::7] = -inf  # masked classes
    x[::2, n_classes // 2] = x[::2].max(1)  # a tie at the max in half the rows
    labels = rng.integers(0, n_classes, shape[0])
    labels[::3] = x[::3].argmax(1)  # some labels at the max (loss near its floor)
    want = _torch_fields(x, labels, k)
    for threads in (1, 2, 3):
        with logitcore.config(n_threads=threads):
            s = logitcore.score(x, labels, top_k=k, backend="numba")
        names = set(s.fields) - {"kept"}
        for name in ("pred", "correct", "label_rank") + (("top_k_indices",) if k else ()):
            np.testing.assert_array_equal(s[name], want[name], err_msg=name)
        for name in names - {"pred", "correct", "label_rank", "top_k_indices", "loss"}:
            _close(s[name], want[name], dtype)
        _close(s.loss, -want["label_logprob"], dtype)


def _edge_rows_long(n_classes):
    """The edge rows of the table with the special values placed late in the row (in a
    later block of a long row): (logits, labels, expected fields with top_k=3)."""
    late, last, middle = (3 * n_classes) // 5, n_classes - 1, n_classes // 2
    x = np.zeros((5, n_classes))
    x[0, late] = nan
    x[1, late] = inf
    x[2] = -inf
    x[3] = -inf  # masked everywhere but two classes
    x[3, middle], x[3, last] = 0.0, 1.0
    labels = np.array([0, 0, 0, middle, 0])
    p_last, p_middle = 1 / (1 + math.exp(-1)), 1 / (1 + math.e)
    uniform = 1.0 / n_classes
    expected = {
        "pred": [-1, late, 0, last, 0],
        "max_logit": [nan, inf, -inf, 1.0, 0.0],
        "confidence": [nan, nan, nan, p_last, uniform],
        "margin": [nan, nan, nan, p_last - p_middle, 0.0],
        "logit_margin": [nan, inf, nan, 1.0, 0.0],
        "entropy": [nan, nan, nan, scipy.special.entr([p_last, p_middle]).sum(),
                    math.log(n_classes)],
        "logsumexp": [nan, inf, -inf, math.log(1 + math.e), math.log(n_classes)],
        "top_k_indices": [[-1] * 3, [late, 0, 1], [0, 1, 2], [last, middle, 0], [0, 1, 2]],
        "top_k_probs": [[nan] * 3, [nan] * 3, [nan] * 3, [p_last, p_middle, 0.0],
                        [uniform] * 3],
        "label_logprob": [nan, nan, nan, math.log(p_middle), -math.log(n_classes)],
        "correct": [False, False, True, False, True],
        "label_rank": [0, 2, 1, 2, 1],
        "brier": [nan, nan, nan, p_last ** 2 + (1 - p_middle) ** 2,
                  1 - 2 * uniform + n_classes * uniform ** 2],
    }
    return x, labels, expected


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("schedule", list(NUMBA_SCHEDULES))
def test_numba_edge_rows_on_every_schedule(schedule, dtype):
    n_classes = NUMBA_SCHEDULES[schedule][1]
    x, labels, expected = _edge_rows_long(n_classes)
    if schedule == "rows_of_blocks":  # more rows than 2 per thread: no class split
        x, labels = np.repeat(x, 2, axis=0), np.repeat(labels, 2)
        expected = {name: np.repeat(np.asarray(values), 2, axis=0)
                    for name, values in expected.items()}
    for threads in (1, 2, 3):
        with logitcore.config(n_threads=threads):
            s = logitcore.score(x.astype(dtype), labels, top_k=3, backend="numba")
        for name, want in expected.items():
            if s[name].dtype.kind == "f":
                _close(s[name], want, dtype)
            else:
                np.testing.assert_array_equal(s[name], want, err_msg=name)
        _close(s.loss, -np.asarray(expected["label_logprob"]), dtype)
    # torch agrees where it defines the values
    t = torch.from_numpy(x)
    _close(s.logsumexp, torch.logsumexp(t, -1).numpy(), dtype)
    _close(s.loss, F.cross_entropy(t, torch.from_numpy(labels), reduction="none"), dtype)


@needs_numba
@pytest.mark.parametrize("top_k", ["0", "1", "5", "C"])
def test_numba_fields_alone_match_all_fields(top_k):
    """Each field asked alone (the kernel then skips the work of the others) gives what
    it gives among all the fields, to the bit, on each schedule."""
    for shape in NUMBA_SCHEDULES.values():
        k = _top_k_of(top_k, shape[1])
        rng = np.random.default_rng(15)
        x = rng.standard_normal(shape).astype(np.float32)
        labels = rng.integers(0, shape[1], shape[0])
        every = logitcore.score(x, labels, top_k=k, backend="numba")
        for name in every.fields:
            alone = logitcore.score(x, labels, top_k=k, fields=[name], backend="numba")
            np.testing.assert_array_equal(alone[name], every[name], err_msg=name)


class _Recorder(types.SimpleNamespace):
    """A backend that runs the reference and records which outputs were asked for."""


def _recording_backend():
    reference = load("numpy")
    record = {}

    def score_multiclass(x, labels, ignore_index, top_k, pred_out, max_logit_out,
                         confidence_out, margin_out, logit_margin_out, entropy_out,
                         logsumexp_out, top_k_indices_out, top_k_probs_out,
                         label_logprob_out, loss_out, correct_out, label_rank_out,
                         brier_out, n_threads):
        args = dict(locals())
        record.update({name: value.size for name, value in args.items()
                       if name.endswith("_out")})
        reference.score_multiclass(*[args[name] for name in
                                     op_table.KERNELS["score_multiclass"].argument_names])

    module = _Recorder(SUPPORTED_KERNELS=frozenset({"score_multiclass", "label_stats"}),
                       score_multiclass=score_multiclass, label_stats=reference.label_stats)
    return module, record


def test_fields_selects_what_the_kernel_computes():
    module, record = _recording_backend()
    assert op_table.check_backend(module) == []
    _backends.register_backend("recorder", module)
    try:
        x = np.random.default_rng(11).standard_normal((10, 6))
        s = logitcore.score(x, np.arange(10) % 6, fields=["loss", "pred"], backend="recorder")
        assert s.fields == ("pred", "loss")
        asked = {name for name, size in record.items() if size}
        assert asked == {"pred_out", "loss_out"}
        _close(s.loss, F.cross_entropy(torch.from_numpy(x), torch.arange(10) % 6,
                                       reduction="none"), np.float64)
        with pytest.raises(AttributeError, match="no field 'confidence'"):
            s.confidence
        logitcore.score(x, fields="top_k_probs", top_k=2, backend="recorder")
        assert {name for name, size in record.items() if size} == {"top_k_probs_out"}
    finally:
        _backends.unregister_backend("recorder")


def test_auto_runs_a_backend_that_implements_score():
    big = np.zeros((_config.SMALL_CALL_ELEMENTS, 2))
    for x in (np.zeros((2, 3)), big):
        logitcore.score(x, backend="auto")
        name = logitcore.last_dispatch()["backend"]
        assert "score_multiclass" in load(name).SUPPORTED_KERNELS
    for name in ("numba", "cython"):
        if availability(name)[0] and "score_multiclass" not in load(name).SUPPORTED_KERNELS:
            with pytest.raises(NotImplementedError, match=name):
                logitcore.score(np.zeros((2, 3)), backend=name)


@pytest.mark.parametrize("call, error, message", [
    (dict(kind="softmax"), ValueError, "kind must be one of"),
    (dict(top_k=4), ValueError, r"top_k must be in \[0, 3\]"),
    (dict(top_k=-1), ValueError, "top_k must be in"),
    (dict(top_k=True), TypeError, "top_k must be an int"),
    (dict(top_k=1.0), TypeError, "top_k must be an int"),
    (dict(kind="multilabel", top_k=1), ValueError, "top_k is for kind='multiclass'"),
    (dict(threshold=0.0, kind="multilabel"), ValueError, r"threshold must be in \(0, 1\)"),
    (dict(threshold=1.0, kind="multilabel"), ValueError, "threshold must be in"),
    (dict(threshold=nan, kind="multilabel"), ValueError, "threshold must be in"),
    (dict(threshold=[0.5, 0.5], kind="multilabel"), ValueError, r"shape \(3,\)"),
    (dict(fields=["nope"]), ValueError, "'nope' is not a field"),
    (dict(fields=["loss"]), ValueError, "'loss' needs labels"),
    (dict(fields=["top_k_indices"]), ValueError, "needs top_k > 0"),
    (dict(kind="binary"), ValueError, "one logit per row"),
    (dict(axis=2), np.exceptions.AxisError, "axis"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
])
def test_bad_arguments_name_themselves(call, error, message):
    with pytest.raises(error, match=message):
        logitcore.score(np.zeros((4, 3)), **call)


@pytest.mark.parametrize("labels, kind, error, message", [
    (np.zeros(3, np.int64), "multiclass", ValueError, r"labels must have shape \(4,\)"),
    (np.zeros(4), "multiclass", TypeError, "labels for kind='multiclass' must be integer"),
    (np.array([0, 1, 3, 0]), "multiclass", IndexError, r"labels\[2\] = 3 is not a class"),
    (np.array([0, -1, 0, 0]), "multiclass", IndexError, r"labels\[1\] = -1"),
    (np.array([0, 1, 2, 0]), "binary", IndexError, r"labels\[2\] = 2 is not a class index "
                                                   r"in \[0, 2\)"),
    (np.zeros(4, np.int64), "multilabel", ValueError, "must have the shape of logits"),
    (np.full((4, 3), 2), "multilabel", ValueError, r"must be 0 or 1, got labels\[0, 0\] = 2"),
    (np.zeros((4, 3)), "multilabel", TypeError, "must be bool or integer"),
])
def test_bad_labels_name_themselves(labels, kind, error, message):
    x = np.zeros((4, 1) if kind == "binary" else (4, 3))
    with pytest.raises(error, match=message):
        logitcore.score(x, labels, kind=kind)


# --- temperature: every field is that of logits / T -----------------------------------------

def _divided(x, temperature):
    """x / T in x's dtype, by torch (T a scalar or one per row of x's leading shape)."""
    t = torch.as_tensor(np.asarray(temperature, x.dtype))
    return (torch.from_numpy(x) / (t[..., None] if t.ndim else t)).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(50, 7), (7, 1000), (4, 6, 11), (3, 5000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar", "per_row"])
def test_temperature_scores_the_divided_logits(backend, dtype, shape, per_row,
                                               monkeypatch):
    """Every multiclass field, logit_margin and max_logit included, is torch's on
    x / T; the logits are scaled in chunks (made small here, so that every input takes
    several and a row of (3, 5000) takes one chunk to itself)."""
    monkeypatch.setattr(score_module, "SCALE_CHUNK_ELEMENTS", 4096)
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    temperature = rng.uniform(0.3, 4.0, shape[:-1]) if per_row else 2.5
    s = logitcore.score(x, labels, top_k=5, temperature=temperature, backend=backend)
    scaled = _divided(x, temperature)
    _check_multiclass(s, _torch_fields(scaled, labels, 5), dtype)
    # not the raw logits' figures: T = 2.5 changes every probability and logit gap
    assert not np.allclose(s.label_logprob, _torch_fields(x, labels, 5)["label_logprob"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_of_binary_and_multilabel_scores(backend):
    rng = np.random.default_rng(22)
    x = rng.standard_normal(64) * 4
    labels = rng.integers(0, 2, 64)
    temperature = rng.uniform(0.5, 3.0, 64)
    s = logitcore.score(x, labels, kind="binary", temperature=temperature,
                        backend=backend)
    t = torch.from_numpy(x / temperature)
    _close(s.prob, torch.sigmoid(t).numpy(), np.float64)
    _close(s.loss, F.binary_cross_entropy_with_logits(
        t, torch.from_numpy(labels).double(), reduction="none").numpy(), np.float64)
    x = rng.standard_normal((30, 5)) * 4
    targets = rng.integers(0, 2, (30, 5))
    s = logitcore.score(x, targets, kind="multilabel", temperature=3.0,
                        fields=["pred", "loss"], backend=backend)
    t = torch.from_numpy(x / 3.0)
    np.testing.assert_array_equal(s.pred, torch.sigmoid(t).numpy() >= 0.5)
    _close(s.loss, F.binary_cross_entropy_with_logits(
        t, torch.from_numpy(targets).double(), reduction="none").mean(1).numpy(),
        np.float64)


def test_temperature_leaves_the_logits_unchanged():
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    before = x.copy()
    logitcore.score(x, np.array([0, 1, 2]), temperature=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("temperature, error, message", [
    (0.0, ValueError, r"temperature must be finite and > 0"),
    (-1.0, ValueError, r"temperature must be finite and > 0"),
    (inf, ValueError, r"temperature must be finite and > 0"),
    (nan, ValueError, r"temperature must be finite and > 0"),
    (1e-60, ValueError, r"in float32\), got 1e-60"),  # 0 in the float32 call
    ([1.0, 0.0, 1.0, 1.0], ValueError, r"finite and > 0 \(in float32\), got 0.0"),
    ([1.0, 2.0], ValueError, r"temperature must be a scalar or have shape \(4,\)"),
    (True, TypeError, "temperature must be a positive number"),
    ("2", TypeError, "temperature must be a positive number"),
])
def test_bad_temperature_names_itself(temperature, error, message):
    with pytest.raises(error, match=message):
        logitcore.score(np.zeros((4, 3), np.float32), temperature=temperature)


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
finite_logits = arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 12)),
                       elements=st.floats(-50, 50))


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(x=finite_logits, data=st.data())
def test_properties_of_the_fields(backend, x, data):
    n_rows, n_classes = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n_rows,
                                         max_size=n_rows)))
    s = logitcore.score(x, labels, top_k=n_classes, backend=backend)
    slack = 1e-12
    assert np.all(s.confidence >= 1 / n_classes - slack)
    assert np.all((s.margin >= -slack) & (s.margin <= 1 + slack))
    assert np.all((s.entropy >= -slack) & (s.entropy <= math.log(n_classes) + slack))
    assert np.all(np.diff(s.top_k_probs, axis=1) <= slack)
    np.testing.assert_allclose(s.top_k_probs.sum(1), 1.0, rtol=1e-12)
    assert np.all(s.loss >= -slack)
    # rank 1 <=> correct, on the rows without a tie at the maximum
    untied = (x == x.max(1, keepdims=True)).sum(1) == 1
    np.testing.assert_array_equal((s.label_rank == 1)[untied], s.correct[untied])
    np.testing.assert_array_equal(s.top_k_indices[:, 0], s.pred)


def _chunked_batch():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((257, 9)) * 3
    x[5] = nan
    x[17, 3] = inf
    x[40] = -inf
    x[41, 2] = 60.0  # saturates: confidence 1.0
    labels = rng.integers(0, 9, 257)
    labels[::7] = -100
    return x, labels


@pytest.mark.parametrize("edge_rows", [True, False], ids=["edge_rows", "finite"])
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_summaries_of_chunks_merge_into_the_one_shot_summary(kind, edge_rows):
    x, labels = _chunked_batch()
    if not edge_rows:  # finite logits: every mean and spread is a number
        x = np.where(np.isfinite(x), x, 1.5)
    if kind == "binary":
        x, labels = x[:, :1], np.where(labels == -100, -100, labels % 2)
    if kind == "multilabel":
        labels = (np.abs(x) > 1).astype(np.int64)
    top_k = 3 if kind == "multiclass" else 0
    one_shot = logitcore.score(x, labels, kind=kind, top_k=top_k).summary()
    bounds = [0, 0, 1, 50, 51, 200, 257]  # an empty chunk and a one-row chunk too
    chunks = [logitcore.score(x[a:b], labels[a:b], kind=kind, top_k=top_k).summary()
              for a, b in zip(bounds, bounds[1:])]
    merged = logitcore.Summary.combine(chunks)
    assert merged.counts == one_shot.counts
    want, got = one_shot.figures(), merged.figures()
    assert want.keys() == got.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12, nan_ok=True), name
    if not edge_rows:
        assert all(math.isfinite(value) for value in got.values())
        if kind == "multiclass":  # the spreads against numpy's, of the kept rows
            kept = labels != -100
            assert got["std_max_logit"] == pytest.approx(x[kept].max(1).std(), rel=1e-12)
    assert chunks[0].merge(chunks[1]).counts == chunks[1].counts


def test_summary_means_skip_nan_rows_and_count_them():
    """Means skip NaN rows (counted) and the summary matches numpy on the finite rows."""
    x, labels = _chunked_batch()
    figures = logitcore.score(x, labels).summary().figures()
    kept = labels != -100
    assert figures["n"] == kept.sum()
    lse = scipy.special.logsumexp(x, axis=1)[kept]
    assert figures["nan_rows"] == np.isnan(lse).sum() == 1
    assert figures["posinf_rows"] == 1 and figures["neginf_rows"] == 1
    finite = np.isfinite(lse)
    probs = scipy.special.softmax(x[kept][finite], axis=1)
    loss = -np.log(probs[np.arange(finite.sum()), labels[kept][finite]])
    assert figures["mean_nll"] == pytest.approx(loss.mean(), rel=1e-12)
    assert figures["saturated_rows"] == (probs.max(1) == 1.0).sum() >= 1
    correct = x[kept].argmax(1) == labels[kept]
    correct[np.isnan(x[kept]).any(1)] = False
    assert figures["accuracy"] == pytest.approx(correct.mean())


def test_summaries_of_other_calls_do_not_merge():
    x, labels = _chunked_batch()
    a = logitcore.score(x, labels, top_k=2).summary()
    with pytest.raises(ValueError, match="same kind, top_k and fields"):
        a.merge(logitcore.score(x, labels).summary())
    with pytest.raises(TypeError, match="can only merge a Summary"):
        a.merge({})


def test_conversions_and_missing_extras(monkeypatch):
    pandas = pytest.importorskip("pandas")
    pyarrow = pytest.importorskip("pyarrow")
    x = np.random.default_rng(13).standard_normal((2, 3, 4))
    s = logitcore.score(x, np.zeros((2, 3), np.int64), top_k=2)
    frame = s.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 6
    np.testing.assert_array_equal(frame["top_k_indices_1"], s.top_k_indices[..., 1].ravel())
    np.testing.assert_array_equal(frame["loss"], s.loss.ravel())
    table = s.to_arrow()
    assert isinstance(table, pyarrow.Table) and table.column_names == list(frame.columns)
    assert set(s.to_dict()) == set(s.fields)
    monkeypatch.setitem(sys.modules, "pandas", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"logitcore\[pandas\]"):
        s.to_pandas()
    with pytest.raises(ImportError, match=r"logitcore\[arrow\]"):
        s.to_arrow()
