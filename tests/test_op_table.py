"""The op table is the contract: every backend is checked against it by code."""

import types

import numpy as np
import pytest

import logitcore
from logitcore import bench
from logitcore._backends import BACKEND_NAMES, availability, load, op_table


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_backend_fits_the_table(backend):
    available, reason = availability(backend)
    if not available:
        pytest.skip(reason)
    module = load(backend)
    assert op_table.check_backend(module) == []


def test_reference_backend_implements_every_kernel():
    assert load("numpy").SUPPORTED_KERNELS == op_table.ALL_KERNELS


def test_check_backend_reports_each_kind_of_misfit():
    def softmax(x, out, n_threads=1, row_scale=None):
        pass

    def logsumexp(x, n_threads=1):  # an argument short
        pass

    module = types.SimpleNamespace(
        SUPPORTED_KERNELS=frozenset({"softmax", "logsumexp", "log_softmax", "not_a_kernel"}),
        softmax=softmax, logsumexp=logsumexp)
    problems = op_table.check_backend(module)
    assert len(problems) == 3
    assert any(p.startswith("logsumexp: arguments") for p in problems)
    assert any(p.startswith("log_softmax: claimed but missing") for p in problems)
    assert any(p.startswith("not_a_kernel: not a kernel") for p in problems)


def test_check_backend_reports_a_missing_option():
    def softmax(x, out, n_threads=1):  # no row_scale (temperature=)
        pass

    module = types.SimpleNamespace(SUPPORTED_KERNELS=frozenset({"softmax"}), softmax=softmax)
    (problem,) = op_table.check_backend(module)
    assert problem.startswith("softmax: arguments") and "row_scale" in problem


def test_public_functions_named_in_the_table_exist():
    for kernel in op_table.KERNELS.values():
        for name in kernel.public:
            assert callable(getattr(logitcore, name)), (kernel.name, name)


def test_argument_roles_are_documented():
    roles = {role for kernel in op_table.KERNELS.values() for _, role in kernel.arguments}
    for role in roles:
        assert f"``{role}``" in op_table.__doc__, role


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bench_traffic_counts_the_arrays_a_call_touches(dtype):
    """Bytes moved, against the sizes of the arrays a real call reads and writes."""
    x = np.zeros((1000, 10), dtype)
    labels = np.zeros(1000, np.int64)
    row_values = np.zeros(1000, dtype)
    assert bench.traffic_bytes("softmax", x.shape, dtype) == (x.nbytes, x.nbytes)
    assert bench.traffic_bytes("logsumexp", x.shape, dtype) == (x.nbytes, row_values.nbytes)
    assert bench.traffic_bytes("cross_entropy", x.shape, dtype) == (
        x.nbytes + labels.nbytes, 0)
    assert bench.traffic_bytes("cross_entropy_none", x.shape, dtype) == (
        x.nbytes + labels.nbytes, row_values.nbytes)
    assert bench.traffic_bytes("cross_entropy_grad", x.shape, dtype) == (
        x.nbytes + labels.nbytes, x.nbytes)
    assert bench.traffic_bytes("bce_with_logits", x.shape, dtype) == (2 * x.nbytes, 0)


def test_bench_traffic_of_half_input_reads_16_bits_and_writes_float32():
    """float16 logits are read in 2 bytes; results (dtype policy) are float32."""
    x = np.zeros((1000, 10), np.float16)
    result = np.zeros((1000, 10), np.float32)
    row_values = np.zeros(1000, np.float32)
    assert bench.traffic_bytes("softmax", x.shape, np.float16) == (x.nbytes, result.nbytes)
    assert bench.traffic_bytes("logsumexp", x.shape, np.float16) == (x.nbytes,
                                                                     row_values.nbytes)


def test_floor_of_a_read_write_op_is_one_copy():
    bandwidth = {"read": 10e9, "copy": 8e9}
    # 1 GB in and 1 GB out is exactly what a STREAM copy of 1 GB moves: 2 GB at 8 GB/s.
    assert bench.floor_seconds(1e9, 1e9, bandwidth) == pytest.approx(0.25)
    assert bench.floor_seconds(1e9, 0, bandwidth) == pytest.approx(0.1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, shape, top_k", [("multiclass", (300, 7), 5),
                                                ("multiclass", (40, 3), 3),
                                                ("binary", (500, 1), 0),
                                                ("multilabel", (60, 4), 0)])
def test_score_traffic_counts_each_field_at_its_width(kind, shape, top_k, dtype):
    """The floor of a score call: the logits and labels it reads and the bytes of the
    per-row fields a real call returns (int64 pred and rank, bool flags, k columns of
    top-k), not a count of floats."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    if kind == "multilabel":
        labels = rng.integers(0, 2, shape)
    else:
        labels = rng.integers(0, 2 if kind == "binary" else shape[1], shape[0])
    scores = logitcore.score(x, labels, kind=kind, top_k=top_k, backend="numpy")
    # "kept" is labels != ignore_index, made from the labels in Python, not by the kernel
    written = sum(scores[name].nbytes for name in scores.fields if name != "kept")
    read = x.nbytes + (labels.size if kind == "multilabel" else labels.astype(np.int64).nbytes)
    kernel = op_table.KERNELS[f"score_{kind}"]
    assert kernel.traffic(*shape, np.dtype(dtype).itemsize, top_k=top_k) == (read, written)
    if kind == "multiclass" and top_k == 5:
        assert bench.traffic_bytes("score", shape, dtype) == (read, written)
