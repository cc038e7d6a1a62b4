"""logitcore.dask on a dask.distributed LocalCluster (2 worker processes, 1 thread each).

Every function is checked on row-chunked input (bit-identical to the in-memory call) and
on class-chunked input (merged per-row states; within float rounding of the in-memory
call, and against SciPy / PyTorch / NumPy references computed in float64), on logits
holding the edge rows of the README's table: a NaN row, an all -inf row, a row with +inf,
a masked row (some -inf), a row whose maximum is tied across two class chunks.
"""

import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
special = pytest.importorskip("scipy.special")
stats = pytest.importorskip("scipy.stats")

import logitcore as lc  # noqa: E402
import logitcore.dask as ld  # noqa: E402

from conftest import tolerance  # noqa: E402

N_ROWS, N_CLASSES = 9, 40
# (rows per chunk, classes per chunk): the class axis in one chunk, split in 4, and split
# in 14 (more than SPLIT_EVERY chunks: the tree has a combine level).
ROW_CHUNKS = (4, N_CLASSES)
CLASS_CHUNKINGS = [(4, 13), (9, 3)]
IGNORE = -100


@pytest.fixture(scope="module")
def client():
    # LOGITCORE_NUM_THREADS=3 in the workers: a task must still run our kernels on the
    # worker's 1 thread, not on logitcore's process-wide setting.
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
        env={"LOGITCORE_NUM_THREADS": "3"})
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


def _logits(dtype):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(N_ROWS, N_CLASSES)) * 4).astype(dtype)
    x[1, 3] = np.nan              # NaN row
    x[2] = -np.inf                # all -inf
    x[3, 10] = np.inf             # +inf once
    x[4, :30] = -np.inf           # masked classes
    x[6, [5, 25]] = x[6].max() + 1  # the maximum tied across class chunks
    return x


def _labels():
    labels = np.random.default_rng(8).integers(0, N_CLASSES, N_ROWS)
    labels[5] = IGNORE
    labels[4] = 2                 # a masked (-inf) label: loss +inf
    labels[6] = 25                # the second of the tied maxima
    return labels


NORMAL_ROWS = [0, 5, 6, 7, 8]     # rows without -inf, +inf or NaN


def assert_same_bits(got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected, equal_nan=expected.dtype.kind == "f")


def assert_close(got, expected, dtype, *, scale=1.0):
    """Same NaN and infinity positions, finite values within the dtype's tolerance."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    assert np.array_equal(got[~finite & ~np.isnan(expected)],
                          expected[~finite & ~np.isnan(expected)])
    tol = tolerance(dtype)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale)


# --- import and arguments ------------------------------------------------------------

def test_import_without_dask_names_the_extra():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['dask.array'] = None\n"
            "try:\n    import logitcore.dask\nexcept ImportError as e:\n    print(e)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert 'pip install "logitcore[dask]"' in result.stdout


def test_unsupported_arguments_raise_clear_errors():
    d = da.zeros((4, 6), chunks=(2, 3))
    with pytest.raises(NotImplementedError, match="return_grad"):
        ld.cross_entropy(d, np.zeros(4, int), return_grad=True)
    with pytest.raises(NotImplementedError, match="return_sign"):
        ld.logsumexp(d, return_sign=True)
    with pytest.raises(NotImplementedError, match="probability targets"):
        ld.cross_entropy(d, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="threshold must be in"):
        ld.score(d, kind="multilabel", threshold=1.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        ld.score(d, np.zeros(3, int))
    with pytest.raises(ValueError, match="top_k must be in"):
        ld.score(d, top_k=7)


def test_label_out_of_range_raises_index_error_when_computed(client):
    d = da.zeros((4, 6), chunks=(2, 3))
    loss = ld.cross_entropy(d, np.array([0, 1, 6, 2]))  # lazy: nothing checked yet
    with pytest.raises(IndexError, match=r"target\[2\] = 6 is not a class index"):
        loss.compute()


# --- threads -------------------------------------------------------------------------

def _dispatch_threads(block):
    """What the last logitcore call on this worker thread ran with, and logitcore's
    process-wide setting, as one (1, 2) block."""
    return np.array([[lc.last_dispatch()["n_threads"], lc.get_num_threads()]])


def test_tasks_run_our_kernels_on_the_workers_thread_count(client):
    x = da.from_array(_logits(np.float32), chunks=ROW_CHUNKS)
    # each probe task runs right after the softmax task whose block it reads, on the
    # worker's only thread
    probe = da.map_blocks(_dispatch_threads, ld.softmax(x), chunks=(1, 2), dtype=int)
    seen = probe.compute()
    assert seen[:, 1].tolist() == [3] * len(seen)   # logitcore's own setting there
    assert seen[:, 0].tolist() == [1] * len(seen)   # what our kernels got: the worker's
    assert client.run(lambda: lc.get_num_threads()) == {
        address: 3 for address in client.scheduler_info()["workers"]}
    assert ld.task_threads() == lc.get_num_threads()  # outside a worker


# --- logsumexp, softmax, log_softmax ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_softmax_family_row_chunks_bit_identical(client, op, dtype):
    x = _logits(dtype)
    got = getattr(ld, op)(da.from_array(x, chunks=ROW_CHUNKS)).compute()
    assert_same_bits(got, getattr(lc, op)(x))


_SCIPY = {"logsumexp": special.logsumexp, "softmax": special.softmax,
          "log_softmax": special.log_softmax}


@pytest.mark.parametrize("chunks", CLASS_CHUNKINGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_softmax_family_class_chunks(client, op, dtype, chunks):
    """Class chunks: within float rounding of the in-memory result (float32: the
    in-memory softmax kernels are within 16 ulps of the exact value, the merged result
    within 1), and of SciPy in float64 on the normal rows; the edge rows as in memory."""
    x = _logits(dtype)
    got = getattr(ld, op)(da.from_array(x, chunks=chunks)).compute()
    assert got.dtype == dtype
    assert_close(got, getattr(lc, op)(x), dtype, scale=4)
    reference = _SCIPY[op](x[NORMAL_ROWS].astype(np.float64), axis=-1)
    assert_close(got[NORMAL_ROWS], reference, dtype)
    if op == "logsumexp":
        assert got[1] != got[1] and got[2] == -np.inf and got[3] == np.inf
    else:
        assert np.isnan(got[[1, 2, 3]]).all()
        masked = got[4, :30]
        assert (masked == (0.0 if op == "softmax" else -np.inf)).all()


def test_softmax_family_3d_class_axis_in_the_middle(client):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 20, 5)).astype(np.float32) * 3
    d = da.from_array(x, chunks=(2, 6, 3))
    for op in ("logsumexp", "softmax", "log_softmax"):
        got = getattr(ld, op)(d, axis=1).compute()
        assert_close(got, _SCIPY[op](x.astype(np.float64), axis=1), np.float32)
        same = getattr(ld, op)(da.from_array(x, chunks=(2, 20, 3)), axis=1).compute()
        assert_same_bits(same, getattr(lc, op)(x, axis=1))


def test_logsumexp_keepdims(client):
    x = _logits(np.float64)
    for chunks in (ROW_CHUNKS, CLASS_CHUNKINGS[0]):
        got = ld.logsumexp(da.from_array(x, chunks=chunks), keepdims=True).compute()
        assert got.shape == (N_ROWS, 1)
        assert_close(got, lc.logsumexp(x, keepdims=True), np.float64)


# --- losses ----------------------------------------------------------------------------

def _torch_cross_entropy(x, labels, weight, label_smoothing, reduction):
    torch = pytest.importorskip("torch")
    return torch.nn.functional.cross_entropy(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(labels),
        weight=None if weight is None else torch.from_numpy(weight.astype(np.float64)),
        ignore_index=IGNORE, label_smoothing=label_smoothing, reduction=reduction).numpy()


CE_CASES = [(np.float32, False, 0.0), (np.float64, True, 0.0), (np.float32, True, 0.2),
            (np.float64, False, 0.1)]


@pytest.mark.parametrize("dtype,weighted,label_smoothing", CE_CASES)
def test_cross_entropy(client, dtype, weighted, label_smoothing):
    x, labels = _logits(dtype), _labels()
    weight = (np.random.default_rng(9).uniform(0.5, 2.0, N_CLASSES)
              if weighted else None)
    arguments = dict(weight=weight, ignore_index=IGNORE, label_smoothing=label_smoothing)
    in_memory = lc.cross_entropy(x, labels, reduction="none", **arguments)
    rows = ld.cross_entropy(da.from_array(x, chunks=ROW_CHUNKS), labels, reduction="none",
                            **arguments).compute()
    assert_same_bits(rows, in_memory)
    finite_rows = [0, 6, 7, 8]  # no NaN / inf logits and a label that is kept
    for chunks in CLASS_CHUNKINGS:
        d = da.from_array(x, chunks=chunks)
        # the rows torch can average (the others hold NaN / inf)
        keep = [0, 5, 6, 7, 8]
        got, mean, total = dask.compute(
            ld.cross_entropy(d, labels, reduction="none", **arguments),
            ld.cross_entropy(d[keep], labels[keep], **arguments),
            ld.cross_entropy(d[keep], labels[keep], reduction="sum", **arguments))
        assert_close(got, in_memory, dtype, scale=4)
        assert got[5] == 0.0  # ignore_index
        reference = _torch_cross_entropy(x, labels, weight, label_smoothing, "none")
        assert_close(got[finite_rows], reference[finite_rows], dtype)
        assert got[4] == np.inf  # the label's logit is -inf
        assert_close(mean, _torch_cross_entropy(x[keep], labels[keep], weight,
                                                label_smoothing, "mean"), dtype)
        assert_close(total, _torch_cross_entropy(x[keep], labels[keep], weight,
                                                 label_smoothing, "sum"), dtype)


def test_cross_entropy_3d(client):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 20, 5)).astype(np.float32)
    labels = rng.integers(0, 20, (3, 5))
    labels[0, 0] = IGNORE
    torch = pytest.importorskip("torch")
    reference = torch.nn.functional.cross_entropy(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(labels),
        ignore_index=IGNORE).item()
    for chunks in ((2, 20, 3), (2, 6, 3)):
        got = ld.cross_entropy(da.from_array(x, chunks=chunks), labels, axis=1,
                               ignore_index=IGNORE).compute()
        assert_close(got, reference, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_with_logits(client, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(9, 12)) * 3).astype(dtype)
    target = rng.uniform(size=(9, 12)).astype(dtype)
    pos_weight = np.linspace(0.5, 2.0, 12)
    for chunks in ((4, 12), (4, 5)):
        d = da.from_array(x, chunks=chunks)
        rows = ld.binary_cross_entropy_with_logits(d, target, pos_weight=pos_weight,
                                                   reduction="none").compute()
        assert_same_bits(rows, lc.binary_cross_entropy_with_logits(
            x, target, pos_weight=pos_weight, reduction="none"))
        mean = ld.binary_cross_entropy_with_logits(d, target,
                                                   pos_weight=pos_weight).compute()
        reference = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(x.astype(np.float64)),
            torch.from_numpy(target.astype(np.float64)),
            pos_weight=torch.from_numpy(pos_weight)).item()
        assert mean.dtype == dtype
        assert_close(mean, reference, dtype)


# --- score -----------------------------------------------------------------------------

def _reference_scores(x, labels, top_k):
    """The multiclass fields from SciPy softmax / log_softmax and NumPy order statistics
    in float64, on rows without NaN or +inf (the edge rows are checked against the
    in-memory table)."""
    x64 = x.astype(np.float64)
    rows = np.arange(len(x64))
    probs = special.softmax(x64, axis=1)
    log_probs = special.log_softmax(x64, axis=1)
    order = np.argsort(-x64, axis=1, kind="stable")  # ties: the lower index first
    kept = labels != IGNORE
    label = np.where(kept, labels, 0)
    onehot = np.eye(x64.shape[1])[label]
    return {
        "pred": order[:, 0], "max_logit": x64[rows, order[:, 0]],
        "confidence": probs[rows, order[:, 0]],
        "margin": probs[rows, order[:, 0]] - probs[rows, order[:, 1]],
        "logit_margin": x64[rows, order[:, 0]] - x64[rows, order[:, 1]],
        "entropy": stats.entropy(probs, axis=1),
        "logsumexp": special.logsumexp(x64, axis=1),
        "top_k_indices": order[:, :top_k],
        "top_k_probs": np.take_along_axis(probs, order[:, :top_k], axis=1),
        "label_logprob": np.where(kept, log_probs[rows, label], 0.0),
        "loss": np.where(kept, -log_probs[rows, label], 0.0),
        "correct": kept & (order[:, 0] == label),
        "label_rank": np.where(kept, 1 + np.sum(x64 > x64[rows, label][:, None], 1), 0),
        "brier": np.where(kept, np.sum((probs - onehot) ** 2, axis=1), 0.0),
        "kept": kept,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_row_chunks_bit_identical(client, dtype):
    x, labels = _logits(dtype), _labels()
    expected = lc.score(x, labels, top_k=4)
    scores = ld.score(da.from_array(x, chunks=ROW_CHUNKS), labels, top_k=4)
    assert scores.fields == expected.fields
    got = scores.compute()
    for name in expected.fields:
        assert_same_bits(got[name], expected[name])
        assert_same_bits(scores[name].compute(), expected[name])  # one field alone
    assert got.summary() == expected.summary()


@pytest.mark.parametrize("chunks", CLASS_CHUNKINGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_class_chunks(client, dtype, chunks):
    x, labels = _logits(dtype), _labels()
    expected = lc.score(x, labels, top_k=4)
    scores = ld.score(da.from_array(x, chunks=chunks), labels, top_k=4)
    assert scores.fields == expected.fields
    got = scores.compute()
    reference = _reference_scores(x[NORMAL_ROWS], labels[NORMAL_ROWS], 4)
    for name in expected.fields:
        assert got[name].dtype == expected[name].dtype, name
        if expected[name].dtype.kind == "f":
            # merged in float64: within 1 ulp of the in-memory float32 fields
            assert_close(got[name], expected[name], dtype, scale=4)
            assert_close(got[name][NORMAL_ROWS], reference[name], dtype)
        else:  # order fields and flags: exact, edge rows included
            assert_same_bits(got[name], expected[name])
            assert_same_bits(got[name][NORMAL_ROWS], reference[name].astype(
                expected[name].dtype))
    assert got.pred[6] == 5 and got.label_rank[6] == 1  # tie across chunks: lower index
    summary, expected_summary = scores.summary().compute(), expected.summary()
    assert summary.counts == expected_summary.counts
    # means of per-row fields that agree to a few ulp of the dtype (see above)
    rtol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-6
    for name, value in expected_summary.figures().items():
        np.testing.assert_allclose(summary[name], value, rtol=rtol)


def test_summary_reduces_block_summaries_not_rows():
    """The summary's graph: one Summary per row block, merged in a tree of at most
    SPLIT_EVERY per task; no task of it gathers a per-row field."""
    x = da.zeros((40, 6), chunks=(2, 6))  # 20 row blocks
    scores = ld.score(x, np.zeros(40, int))
    graph = dict(scores.summary().__dask_graph__())
    names = [str(key[0] if isinstance(key, tuple) else key) for key in graph]
    assert sum(name.startswith("_summary_of") for name in names) == 20
    assert sum(name.startswith("combine") for name in names) == 3 + 1  # 20 -> 3 -> 1
    assert not any(name.startswith("_field_of") for name in names)


def test_score_class_chunks_subset_of_fields_and_no_labels(client):
    x = _logits(np.float32)
    d = da.from_array(x, chunks=CLASS_CHUNKINGS[0])
    for fields in (["entropy"], ["pred", "margin"], ["logsumexp", "confidence"]):
        got = ld.score(d, fields=fields).compute()
        expected = lc.score(x, fields=fields)
        assert got.fields == expected.fields
        for name in fields:
            assert_close(got[name], expected[name], np.float32, scale=4)


def test_score_3d(client):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 20, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 20, (3, 5))
    labels[1, 2] = IGNORE
    expected = lc.score(x, labels, axis=1, top_k=3)
    rows = ld.score(da.from_array(x, chunks=(2, 20, 3)), labels, axis=1, top_k=3).compute()
    classes = ld.score(da.from_array(x, chunks=(2, 6, 3)), labels, axis=1,
                       top_k=3).compute()
    assert rows.row_shape == classes.row_shape == (3, 5)
    moved = np.moveaxis(x, 1, -1).reshape(-1, 20)
    reference = _reference_scores(moved, labels.reshape(-1), 3)
    for name in expected.fields:
        assert_same_bits(rows[name], expected[name])
        assert classes[name].shape == expected[name].shape
        flat = classes[name].reshape((15,) + classes[name].shape[2:])
        if expected[name].dtype.kind == "f":
            assert_close(flat, reference[name], np.float32)
        else:
            assert_same_bits(flat, reference[name].astype(expected[name].dtype))


@pytest.mark.parametrize("chunks", [(4, 1, 16), (4, 3, 5)], ids=["rows", "classes"])
def test_score_multilabel(client, chunks):
    """Multilabel fields are sums (counts, BCE) or an "all" over classes: class chunks
    merge them exactly; the predicted matrix is per class. Class axis 1 of 3-D logits,
    a threshold per class."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(11, 3, 16)).astype(np.float32) * 2
    x[2, 1, 4] = np.nan
    targets = rng.integers(0, 2, (11, 3, 16))
    threshold = np.array([0.2, 0.5, 0.7])
    fields = ["pred", "loss", "n_predicted", "exact_match", "true_positives",
              "false_positives", "false_negatives"]
    scores = ld.score(da.from_array(x, chunks=chunks), targets, axis=1, kind="multilabel",
                      threshold=threshold, fields=fields)
    got = scores.compute()
    expected = lc.score(x, targets, axis=1, kind="multilabel", threshold=threshold,
                        fields=fields)
    for name in fields:
        assert_same_bits(got[name], expected[name])
    # independent: SciPy's expit and PyTorch's BCE in float64
    torch = pytest.importorskip("torch")
    x64 = x.astype(np.float64)
    pred = special.expit(x64) >= threshold.astype(np.float32)[None, :, None]
    truth = targets.astype(bool)
    assert_same_bits(got.pred, pred)
    assert_same_bits(got.n_predicted, pred.sum(axis=1))
    assert_same_bits(got.true_positives, (pred & truth).sum(axis=1))
    assert_same_bits(got.exact_match, (pred == truth).all(axis=1))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(x64), torch.from_numpy(targets.astype(np.float64)),
        reduction="none").numpy().mean(axis=1)
    assert_close(got.loss, bce, np.float32)
    summary, expected_summary = scores.summary().compute(), expected.summary()
    assert summary.counts == expected_summary.counts
    for name, value in expected_summary.figures().items():
        np.testing.assert_allclose(summary[name], value, rtol=1e-12)


def test_float16_logits_as_in_memory(client):
    """Half precision is read as float32, as everywhere in logitcore."""
    x = _logits(np.float32).astype(np.float16)
    labels = _labels()
    for op in ("logsumexp", "softmax", "log_softmax"):
        rows = getattr(ld, op)(da.from_array(x, chunks=ROW_CHUNKS)).compute()
        assert_same_bits(rows, getattr(lc, op)(x))
        classes = getattr(ld, op)(da.from_array(x, chunks=CLASS_CHUNKINGS[0])).compute()
        assert_close(classes, getattr(lc, op)(x), np.float32, scale=4)
        assert_close(classes[NORMAL_ROWS],
                     _SCIPY[op](x[NORMAL_ROWS].astype(np.float64), axis=-1), np.float32)
    got = ld.score(da.from_array(x, chunks=CLASS_CHUNKINGS[0]), labels, top_k=2).compute()
    expected = lc.score(x, labels, top_k=2)
    assert got.loss.dtype == np.float32
    assert_same_bits(got.top_k_indices, expected.top_k_indices)
    assert_close(got.loss, expected.loss, np.float32, scale=4)


def test_score_binary_and_multilabel_row_chunks(client):
    rng = np.random.default_rng(10)
    x = rng.normal(size=11).astype(np.float32) * 3
    x[2] = np.nan
    labels = rng.integers(0, 2, 11)
    labels[4] = IGNORE
    got = ld.score(da.from_array(x, chunks=4), labels, kind="binary").compute()
    expected = lc.score(x, labels, kind="binary")
    for name in expected.fields:
        assert_same_bits(got[name], expected[name])
    torch = pytest.importorskip("torch")
    assert_close(got.prob, torch.sigmoid(torch.from_numpy(x.astype(np.float64))).numpy(),
                 np.float32)
    xm = rng.normal(size=(11, 6)).astype(np.float32)
    targets = rng.integers(0, 2, (11, 6))
    fields = ["pred", "loss", "n_predicted", "exact_match", "true_positives"]
    got = ld.score(da.from_array(xm, chunks=(4, 6)), targets, kind="multilabel",
                   fields=fields).compute()
    expected = lc.score(xm, targets, kind="multilabel", fields=fields)
    for name in fields:
        assert_same_bits(got[name], expected[name])
    assert_same_bits(got.pred, special.expit(xm.astype(np.float64)) >= 0.5)
    assert got.summary() == expected.summary()


# --- the CLI on a cluster ------------------------------------------------------------------

def _cli(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "logitcore.cli", "score", *arguments],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_dask_local_cluster_matches_in_memory_cli(tmp_path):
    """`logitcore score --dask local:2` as a real process: its part files, read back by
    DuckDB in file order, hold the in-memory CLI's rows bit for bit; the summary JSON
    agrees to float64 rounding (a tree of per-block summaries), counts exactly."""
    import json

    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    x, labels = _calibration_data(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    common = ["x.npy", "--labels", "y.npy", "--top-k", "3", "--temperature", "1.5", "-q"]
    memory = _cli(*common, "-o", "mem.parquet", "--summary", "mem.json", cwd=tmp_path)
    assert memory.returncode == 0, memory.stderr
    on_dask = _cli(*common, "-o", "dk.parquet", "--summary", "dk.json", "--dask",
                   "local:2", "--chunk-rows", "128", cwd=tmp_path)
    assert on_dask.returncode == 0, on_dask.stderr
    parts = sorted(p.name for p in (tmp_path / "dk.parquet").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(5)]  # 600 rows / 128
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    expected = duckdb.sql(f"select * from read_parquet('{tmp_path}/mem.parquet')")
    got = duckdb.sql(f"select * exclude (filename, file_row_number) from read_parquet("
                     f"'{tmp_path}/dk.parquet/*.parquet', filename=true, "
                     f"file_row_number=true) order by filename, file_row_number")
    assert got.columns == expected.columns
    expected, got = expected.fetchnumpy(), got.fetchnumpy()
    assert len(got["pred"]) == CAL_ROWS
    for name in expected:
        a, b = np.asarray(expected[name]), np.asarray(got[name])
        if a.dtype == object:  # the top-k lists
            a, b = np.stack(a), np.stack(b)
        assert_same_bits(b, a)
    # and an independent check of one column: SciPy's log-softmax of x / 1.5
    log_p = special.log_softmax(x.astype(np.float64) / 1.5, axis=1)
    kept = labels != IGNORE
    np.testing.assert_allclose(np.asarray(got["loss"])[kept],
                               -log_p[kept, labels[kept]], rtol=1e-5)
    mem_summary = json.loads((tmp_path / "mem.json").read_text())["summary"]
    dk_summary = json.loads((tmp_path / "dk.json").read_text())["summary"]
    assert dk_summary.keys() == mem_summary.keys()
    for name, value in mem_summary.items():
        if isinstance(value, float):
            assert dk_summary[name] == pytest.approx(value, rel=1e-12), name
        else:
            assert dk_summary[name] == value, name


def test_cli_dask_refuses_options_it_cannot_run(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 3), np.float32))
    for extra, message in ((["--plot", "r.png"], "--plot does not work with --dask"),
                           (["--threads", "2"], "--threads does not work with --dask")):
        result = _cli("x.npy", "-o", "out.parquet", "--dask", "local:1", *extra,
                      cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"logitcore score: error: {message}"
                                                      f" (the job runs on the cluster's "
                                                      f"workers; see docs/dask.md); drop "
                                                      f"it or run without --dask"]
    result = _cli("x.npy", "-o", "out.csv", "--dask", "local:1", cwd=tmp_path)
    assert result.returncode == 1 and "--dask writes Parquet only" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# --- the docs page (last: it starts and closes its own cluster) ----------------------

def test_docs_example_runs():
    """docs/dask.md's example runs as a script (its own LocalCluster); its asserts hold."""
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "dask.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loss, *_, accuracy = result.stdout.split()
    assert 6.0 < float(loss) < 8.0 and 0.0 <= float(accuracy) <= 1.0


# --- fit_temperature, calibration, thresholds ---------------------------------------------
# Independent references from the in-memory test modules: SciPy's bounded Brent
# minimisation of the float64 NLL (reference_temperature), Guo et al.'s ECE written out
# bin by bin on SciPy's softmax (guo_ece, top_label), and scikit-learn's exact curves
# (check_against_reference).

from test_calibration import guo_ece, reference_temperature, top_label  # noqa: E402

try:  # scikit-learn is optional: without it only the threshold tests are skipped
    from test_thresholds import check_against_reference, random_problem  # noqa: E402
except pytest.skip.Exception:
    check_against_reference = random_problem = None
needs_sklearn = pytest.mark.skipif(check_against_reference is None,
                                   reason="scikit-learn is not installed")

CAL_ROWS, CAL_CLASSES = 600, 12
CAL_ROW_CHUNKS = (150, CAL_CLASSES)
CAL_CLASS_CHUNKS = (150, 5)


def _calibration_data(dtype):
    """Over-confident logits (3x) with labels drawn from the unscaled softmax, and a few
    ignored rows."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(CAL_ROWS, CAL_CLASSES)) * 1.5
    p = special.softmax(logits, axis=1)
    labels = (rng.random((CAL_ROWS, 1)) > p.cumsum(axis=1)).sum(axis=1)
    labels = np.minimum(labels, CAL_CLASSES - 1)
    labels[[3, 50, 333]] = IGNORE
    return (3.0 * logits).astype(dtype), labels


def test_score_class_chunks_label_fields_without_the_label_logit(client):
    """Class chunks with labels but only fields that need no label logit (what the
    calibration figures ask for): correct and kept as in memory (failed with KeyError
    'label_logit' before)."""
    x, labels = _logits(np.float64), _labels()
    got = ld.score(da.from_array(x, chunks=CLASS_CHUNKINGS[0]), labels,
                   fields=["confidence", "correct", "kept"]).compute()
    expected = lc.score(x, labels, fields=["confidence", "correct", "kept"])
    assert_same_bits(got.correct, expected.correct)
    assert_same_bits(got.kept, expected.kept)
    assert_close(got.confidence, expected.confidence, np.float64)
    assert_close(got.confidence[NORMAL_ROWS],
                 special.softmax(x[NORMAL_ROWS], axis=1).max(axis=1), np.float64)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_fit_temperature_row_chunks(client, dtype, weighted):
    """The same fit as in memory (the pass sums differ only in the order of float64
    additions: the temperatures agree to the fit's tolerance), and SciPy's minimiser."""
    x, labels = _calibration_data(dtype)
    weights = (np.random.default_rng(2).random(CAL_ROWS) * 2).astype(np.float64) \
        if weighted else None
    got = ld.fit_temperature(da.from_array(x, chunks=CAL_ROW_CHUNKS), labels,
                             sample_weight=weights)
    expected = lc.fit_temperature(x, labels, sample_weight=weights)
    assert got.status == expected.status == "optimal" and got.converged
    assert got.passes == expected.passes
    assert got.temperature == pytest.approx(expected.temperature, rel=1e-9)
    assert got.nll_before == pytest.approx(expected.nll_before, rel=1e-12)
    assert got.nll_after == pytest.approx(expected.nll_after, rel=1e-12)
    compute_x = x.astype(np.float32) if dtype == np.float16 else x
    w_ref = None if weights is None else weights.astype(compute_x.dtype)
    want_t, want_nll = reference_temperature(compute_x, labels, w_ref)
    assert got.temperature == pytest.approx(want_t, rel=1e-6)
    assert got.nll_after == pytest.approx(want_nll, rel=1e-9)


def _numpy_nll(x, labels, weights):
    """The weighted mean NLL of softmax(b x) as a function of b, written out in float64
    NumPy (kept rows only): the independent reference for the class-chunked fit."""
    kept = labels != IGNORE
    if weights is not None:
        kept &= weights != 0
    x = x[kept].astype(np.float64)
    y = labels[kept]
    w = np.ones(len(y)) if weights is None else weights[kept].astype(np.float64)

    def nll(b):
        z = b * x
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        return np.sum(w * (lse - z[np.arange(len(y)), y])) / np.sum(w)
    return nll


# 2 class chunks with 4 row chunks, 3 class chunks with 1
CAL_CLASS_CHUNKINGS = [(150, 6), (CAL_ROWS, 5)]


@pytest.mark.parametrize("chunks", CAL_CLASS_CHUNKINGS, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fit_temperature_class_chunks(client, dtype, weighted, chunks):
    """Class chunks are never rechunked: every pass merges per-row states in a tree.
    The same fit as in memory (temperature within 1e-9), ignored rows and weight-0 rows
    left out (one holds a NaN), and the minimiser of a NumPy NLL by SciPy's Brent."""
    from scipy.optimize import minimize_scalar

    x, labels = _calibration_data(dtype)
    weights = None
    if weighted:
        weights = np.random.default_rng(2).random(CAL_ROWS) * 2
        weights[[10, 11]] = 0.0
        x[10, 4] = np.nan                     # left out by its weight 0
    d = da.from_array(x, chunks=chunks)
    assert d.numblocks[1] in (2, 3)
    got = ld.fit_temperature(d, labels, sample_weight=weights)
    expected = lc.fit_temperature(x, labels, sample_weight=weights)
    assert got.status == expected.status == "optimal" and got.converged
    assert got.temperature == pytest.approx(expected.temperature, rel=1e-9)
    assert got.nll_before == pytest.approx(expected.nll_before, rel=1e-12)
    assert got.nll_after == pytest.approx(expected.nll_after, rel=1e-12)
    compute_x = x.astype(np.float32) if dtype == np.float16 else x
    w_ref = None if weights is None else weights.astype(compute_x.dtype)
    nll = _numpy_nll(compute_x, labels, w_ref)
    found = minimize_scalar(lambda log_t: nll(np.exp(-log_t)), bounds=(-5, 5),
                            method="bounded", options={"xatol": 1e-11, "maxiter": 1000})
    assert got.temperature == pytest.approx(np.exp(found.x), rel=1e-6)
    assert got.nll_after == pytest.approx(found.fun, rel=1e-9)
    assert got.nll_before == pytest.approx(nll(1.0), rel=1e-12)


def test_fit_temperature_class_chunks_edge_rows(client):
    """The edge rows on 4 and 14 class chunks (a maximum tied across two chunks, masked
    classes): the in-memory fit once the rows whose NLL is infinite are ignored; those
    rows, kept, raise ValueError naming the first; separable and all-ignored labels as
    in memory."""
    x, labels = _logits(np.float64), _labels()
    fitted = labels.copy()
    fitted[[1, 2, 3, 4]] = IGNORE           # NaN, all -inf, +inf, -inf at the label
    for chunks in CLASS_CHUNKINGS:
        d = da.from_array(x, chunks=chunks)
        got = ld.fit_temperature(d, fitted)
        expected = lc.fit_temperature(x, fitted)
        assert got.status == expected.status
        assert got.temperature == pytest.approx(expected.temperature, rel=1e-9)
        assert got.nll_after == pytest.approx(expected.nll_after, rel=1e-12)
    for row in (1, 2, 3, 4):
        one_bad = fitted.copy()
        one_bad[row] = labels[row]
        with pytest.raises(ValueError, match=rf"row \[{row}\] \(kept\) holds NaN"):
            ld.fit_temperature(d, one_bad)
    x, labels = _calibration_data(np.float64)
    d = da.from_array(x, chunks=CAL_CLASS_CHUNKS)
    separable = ld.fit_temperature(d, np.argmax(x, axis=1))
    assert separable.status == "separable" and separable.temperature == 0.0
    assert separable.nll_after == lc.fit_temperature(x, np.argmax(x, axis=1)).nll_after
    with pytest.raises(ValueError, match="no rows to fit"):
        ld.fit_temperature(d, np.full(CAL_ROWS, IGNORE))


def test_fit_temperature_edge_outcomes(client):
    x, labels = _calibration_data(np.float64)
    d = da.from_array(x, chunks=CAL_ROW_CHUNKS)
    with pytest.raises(ValueError, match="no rows to fit"):
        ld.fit_temperature(d, np.full(CAL_ROWS, IGNORE))
    bad = x.copy()
    bad[400, 2] = np.nan
    with pytest.raises(ValueError, match=r"row \[400\] \(kept\) holds NaN"):
        ld.fit_temperature(da.from_array(bad, chunks=CAL_ROW_CHUNKS), labels)
    separable = ld.fit_temperature(d, np.argmax(x, axis=1))
    assert separable.status == "separable" and separable.temperature == 0.0
    with pytest.raises(ValueError, match="platt.*binary"):
        ld.fit_temperature(d, labels, method="platt")


@pytest.mark.parametrize("weighted", [False, True])
def test_fit_platt(client, weighted):
    """Platt scaling on dask (each evaluation a reduction of seven sums per block): the
    in-memory fit (the same iteration; sums in another order), and scikit-learn's
    unregularised logistic regression on the one feature, with ignored rows and weights
    (a weight-0 row holding NaN is left out)."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    n = 3000
    t = rng.integers(0, 2, n)
    x = (3.0 * (2 * t - 1) + 2.0 * rng.standard_normal(n) + 1.5).astype(np.float32)
    t[[5, 77, 1234]] = IGNORE
    weights = None
    if weighted:
        weights = rng.random(n) * 2
        weights[9] = 0.0
        x[9] = np.nan
    got = ld.fit_temperature(da.from_array(x, chunks=700), t, kind="binary",
                             method="platt", ignore_index=IGNORE, sample_weight=weights)
    expected = lc.fit_temperature(x, t, kind="binary", method="platt",
                                  ignore_index=IGNORE, sample_weight=weights)
    assert got.converged and got.status == "optimal" and got.kind == "binary"
    assert got.temperature == pytest.approx(expected.temperature, rel=1e-9)
    assert got.bias == pytest.approx(expected.bias, rel=1e-9)
    assert got.nll_after == pytest.approx(expected.nll_after, rel=1e-12)
    kept = t != IGNORE
    if weighted:
        kept &= weights != 0
    model = linear_model.LogisticRegression(C=1e12, tol=1e-13, max_iter=10000)
    model.fit(x[kept, None].astype(np.float64), t[kept],
              sample_weight=None if weights is None else weights[kept])
    assert 1.0 / got.temperature == pytest.approx(model.coef_[0, 0], rel=1e-6)
    assert got.bias == pytest.approx(model.intercept_[0], rel=1e-6)
    if weighted:  # the NaN row kept (weight 1): refused
        with pytest.raises(ValueError, match="kept logit is NaN"):
            ld.fit_temperature(da.from_array(x, chunks=700), t, kind="binary",
                               method="platt", ignore_index=IGNORE)
    with pytest.raises(ValueError, match="no rows to fit"):
        ld.fit_temperature(da.from_array(x, chunks=700), np.full(n, IGNORE),
                           kind="binary", method="platt", ignore_index=IGNORE)


def _sigmoid_reference_temperature(margins):
    """argmin over T of mean softplus(-z / T), SciPy's bounded Brent over log T."""
    from scipy.optimize import minimize_scalar

    def nll(log_t):
        return np.mean(np.logaddexp(0.0, -margins * np.exp(-log_t)))
    result = minimize_scalar(nll, bounds=(-5, 5), method="bounded",
                             options={"xatol": 1e-11, "maxiter": 1000})
    return float(np.exp(result.x))


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_fit_sigmoid_temperature_any_chunks(client, kind):
    rng = np.random.default_rng(5)
    shape = (800,) if kind == "binary" else (400, 6)
    labels = (rng.random(shape) < 0.4).astype(np.int64)
    x = ((rng.normal(size=shape) + (2 * labels - 1)) * 4).astype(np.float32)
    chunks = (130,) if kind == "binary" else (130, 4)
    got = ld.fit_temperature(da.from_array(x, chunks=chunks), labels, kind=kind)
    expected = lc.fit_temperature(x, labels, kind=kind)
    assert got.kind == kind and got.status == "optimal"
    assert got.temperature == pytest.approx(expected.temperature, rel=1e-9)
    margins = ((2 * labels - 1) * x.astype(np.float64)).reshape(-1)
    assert got.temperature == pytest.approx(_sigmoid_reference_temperature(margins),
                                            rel=1e-6)


@pytest.mark.parametrize("chunks", [CAL_ROW_CHUNKS, CAL_CLASS_CHUNKS], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_calibration_error_and_reliability(client, dtype, chunks):
    """Row chunks: the in-memory figures up to float64 addition order, and counts exact;
    class chunks: confidences within an ulp of the in-memory ones (none lies within an ulp
    of an edge here), the same counts. Both against Guo et al.'s ECE on SciPy's softmax
    (float64 reference vs the dtype's confidences: the dtype's tolerance)."""
    x, labels = _calibration_data(dtype)
    d = da.from_array(x, chunks=chunks)
    kept = labels != IGNORE
    confidence, correct = top_label(x[kept].astype(np.float32 if dtype == np.float16
                                                   else dtype), labels[kept])
    tol = 1e-5 if dtype != np.float64 else 1e-12
    for norm in ("l1", "l2", "max"):
        got = ld.calibration_error(d, labels, norm=norm).compute()
        assert got == pytest.approx(lc.calibration_error(x, labels, norm=norm), rel=1e-12
                                    if chunks == CAL_ROW_CHUNKS else tol)
        assert got == pytest.approx(guo_ece(confidence, correct, norm=norm), rel=tol)
    bins = ld.reliability(d, labels, n_bins=10).compute()
    expected = lc.reliability(x, labels, n_bins=10)
    assert np.array_equal(bins.counts, expected.counts)
    np.testing.assert_allclose(bins.confidence_sums, expected.confidence_sums, rtol=tol)
    # temperature: logits / T, as in memory
    got = ld.calibration_error(d, labels, temperature=2.5).compute()
    assert got == pytest.approx(lc.calibration_error(x, labels, temperature=2.5), rel=tol)


def test_calibration_from_dask_scores_and_classwise(client):
    x, labels = _calibration_data(np.float32)
    d = da.from_array(x, chunks=CAL_ROW_CHUNKS)
    scores = ld.score(d, labels)
    assert ld.calibration_error(scores).compute() == pytest.approx(
        lc.calibration_error(x, labels), rel=1e-12)
    with pytest.raises(ValueError, match="labels come with the DaskScores"):
        ld.calibration_error(scores, labels)
    got = ld.calibration_error(d, labels, mode="classwise", temperature=2.0).compute()
    assert got == pytest.approx(lc.calibration_error(x, labels, mode="classwise",
                                                     temperature=2.0), rel=1e-12)
    # independent: Kull et al.'s classwise ECE, Guo's bins per class on SciPy's softmax
    kept = labels != IGNORE
    probs = special.softmax(x[kept].astype(np.float64) / 2.0, axis=1)
    want = np.mean([guo_ece(probs[:, c], labels[kept] == c) for c in range(CAL_CLASSES)])
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="classwise.*whole rows"):
        ld.calibration_error(da.from_array(x, chunks=CAL_CLASS_CHUNKS), labels,
                             mode="classwise")
    with pytest.raises(ValueError, match="classwise' supports binning='uniform' only"):
        ld.calibration_error(d, labels, mode="classwise", binning="quantile")


def _tied_calibration_data():
    """Calibration logits (float32) where a third of the rows repeat one row (a run of
    tied confidences across every block), with ignored rows and a NaN row."""
    x, labels = _calibration_data(np.float32)
    x[::3] = x[1]
    labels[::3] = labels[1]
    x[7, 2] = np.nan              # NaN confidence: left out of bins and edges
    return x, labels


@pytest.mark.parametrize("chunks,gather_limit", [
    (CAL_ROW_CHUNKS, 1 << 20), ((100, CAL_CLASSES), 40), (CAL_CLASS_CHUNKS, 1 << 20),
    (CAL_CLASS_CHUNKS, 0)], ids=str)
def test_quantile_bins_exact(client, monkeypatch, chunks, gather_limit):
    """binning='quantile' without gathering the confidences: the edges are np.quantile's
    of the kept confidences bit for bit (written out in the test on the computed
    confidences; on row chunks also the in-memory edges), and the figures are Guo's ECE
    on those edges. gather_limit 40 and 0 force the finer histogram passes (0: down to
    the full 64 bits, where no value is gathered at all)."""
    monkeypatch.setattr(ld, "_QUANTILE_GATHER_LIMIT", gather_limit)
    x, labels = _tied_calibration_data()
    d = da.from_array(x, chunks=chunks)
    computed = ld.score(d, labels).compute()
    kept = (labels != IGNORE) & ~np.isnan(computed.confidence)
    confidence = computed.confidence[kept].astype(np.float64)
    correct = computed.correct[kept]
    for n_bins in (15, 4):
        want_edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
        want_edges[0], want_edges[-1] = 0.0, 1.0
        bins = ld.reliability(d, labels, n_bins=n_bins, binning="quantile").compute()
        assert_same_bits(bins.edges, want_edges)
        assert bins.counts.sum() == kept.sum()
        if chunks[1] == CAL_CLASSES:  # whole rows: the in-memory bins themselves
            expected = lc.reliability(x, labels, n_bins=n_bins, binning="quantile")
            assert_same_bits(bins.edges, expected.edges)
            assert np.array_equal(bins.counts, expected.counts)
        assert bins.error("max") == pytest.approx(
            guo_ece(confidence, correct, norm="max", edges=want_edges), rel=1e-12)
        got = ld.calibration_error(d, labels, n_bins=n_bins,
                                   binning="quantile").compute()
        assert got == pytest.approx(guo_ece(confidence, correct, edges=want_edges),
                                    rel=1e-12)
        if chunks[1] == CAL_CLASSES:
            assert got == pytest.approx(lc.calibration_error(
                x, labels, n_bins=n_bins, binning="quantile"), rel=1e-12)


def test_quantile_bins_of_dask_scores(client):
    """A DaskScores (nothing reads the logits again) gives the in-memory quantile figure;
    all rows ignored: the uniform edges and NaN, as in memory."""
    x, labels = _tied_calibration_data()
    scores = ld.score(da.from_array(x, chunks=CAL_ROW_CHUNKS), labels)
    bins = ld.reliability(scores, binning="quantile").compute()
    expected = lc.reliability(x, labels, binning="quantile")
    assert_same_bits(bins.edges, expected.edges)
    assert np.array_equal(bins.counts, expected.counts)
    assert ld.calibration_error(scores, binning="quantile").compute() == pytest.approx(
        lc.calibration_error(x, labels, binning="quantile"), rel=1e-12)
    none = np.full(CAL_ROWS, IGNORE)
    empty = ld.reliability(da.from_array(x, chunks=CAL_ROW_CHUNKS), none,
                           binning="quantile").compute()
    assert_same_bits(empty.edges, lc.reliability(x, none, binning="quantile").edges)
    assert np.isnan(ld.calibration_error(da.from_array(x, chunks=CAL_ROW_CHUNKS), none,
                                         binning="quantile").compute())


@needs_sklearn
@pytest.mark.parametrize("chunks", [(700, 5), (700, 2)], ids=str)
@pytest.mark.parametrize("metric,options", [("f1", {}),
                                            ("recall", {"min_precision": 0.8})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_tune_thresholds_multilabel(client, metric, options, dtype, chunks):
    """Exactly the in-memory result (every field), and scikit-learn's optimum."""
    logits, labels = random_problem(np.random.default_rng(17), 3000, 5, round_to=0.125)
    # beyond 2^16: the overflow bins (float16 overflows there: large values instead)
    logits[:, 1] *= 3e5 if dtype != np.float16 else 5e3
    logits = logits.astype(dtype)
    got = ld.tune_thresholds(da.from_array(logits, chunks=chunks), labels,
                             kind="multilabel", metric=metric, **options)
    expected = lc.tune_thresholds(logits, labels, kind="multilabel", metric=metric,
                                  **options)
    for name, value in expected.to_dict().items():
        assert_same_bits(getattr(got, name), value)
    check_against_reference(got, logits.astype(np.float32 if dtype == np.float16
                                               else dtype), labels, metric,
                            beta=1.0, p=options.get("min_precision"), r=None)


@needs_sklearn
def test_tune_thresholds_binary_weighted(client):
    logits, labels = random_problem(np.random.default_rng(3), 2000, 1, round_to=0.1)
    logits, labels = logits[:, 0], labels[:, 0]
    weights = np.random.default_rng(4).random(2000)
    weights[::7] = 0.0
    got = ld.tune_thresholds(da.from_array(logits, chunks=300), labels, metric="f1",
                             sample_weight=weights)
    expected = lc.tune_thresholds(logits, labels, metric="f1", sample_weight=weights)
    assert got.logit == expected.logit
    assert got.value == pytest.approx(expected.value, rel=1e-12)
    check_against_reference(got, logits, labels, "f1", w=weights)


# --- a worker dies in the middle of a computation -----------------------------------------

def _slow_block(block):
    import time
    time.sleep(0.15)
    return block


def test_killed_worker_is_recomputed(client):
    """SIGKILL one worker process while the score summary and a fit run; its nanny starts
    a new process, the scheduler reruns the lost tasks, and the results are those of the
    in-memory calls (the documented way to simulate a lost worker: kill its process,
    e.g. dask-examples' resilience notebook)."""
    import os
    import signal
    import time

    x, labels = _calibration_data(np.float32)
    # 24 blocks of 25 rows, each held back 0.15 s: ~2 s of work on two workers
    d = da.from_array(x, chunks=(25, CAL_CLASSES)).map_blocks(_slow_block, dtype=x.dtype)
    scores = ld.score(d, labels)
    future = client.compute([scores.summary(), scores.loss])
    pids = client.run(os.getpid)  # worker address -> its process id
    victim_address = None
    deadline = time.monotonic() + 60
    while victim_address is None and time.monotonic() < deadline:
        # wait until a worker holds finished blocks (so its death loses results) and
        # the computation is not done
        for address, keys in client.has_what().items():
            if len(keys) >= 2:
                victim_address = address
                break
        time.sleep(0.05)
    assert victim_address is not None and not future[0].done()
    victim_pid = pids[victim_address]
    os.kill(victim_pid, signal.SIGKILL)
    summary, loss = client.gather(future)
    expected = lc.score(x, labels)
    assert_same_bits(loss, expected.loss)
    for name, value in expected.summary().figures().items():
        np.testing.assert_allclose(summary.figures()[name], value, rtol=1e-12)
    client.wait_for_workers(2, timeout=60)
    assert victim_pid not in client.run(os.getpid).values()  # a new process replaced it
