"""Small calls: the cython backend's whole-call entries (checks, allocation and kernel in
compiled code) that logitcore's public functions take for a plain small array, and the
inputs they hand back to the full path. Values against SciPy."""

import numpy as np
import pytest

import logitcore as lc
from logitcore import _config

special = pytest.importorskip("scipy.special")
ck = pytest.importorskip("logitcore._backends._cython_kernels")

OPS = {
    "logsumexp": (ck.small_logsumexp if hasattr(ck, "small_logsumexp") else None,
                  lambda x: special.logsumexp(x, axis=-1)),
    "softmax": (ck.small_softmax if hasattr(ck, "small_softmax") else None,
                lambda x: special.softmax(x, axis=-1)),
    "log_softmax": (ck.small_log_softmax if hasattr(ck, "small_log_softmax") else None,
                    lambda x: special.log_softmax(x, axis=-1)),
}
RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


class Subclass(np.ndarray):
    pass


def rows(shape, dtype, seed=0):
    x = np.random.default_rng(seed).normal(scale=4.0, size=shape).astype(dtype)
    x.flat[0] = -np.inf  # an excluded class, on the same path
    return x


@pytest.fixture
def fresh_plans():
    lc.set_backend("auto")
    _config.small_call_plans.clear()
    yield
    _config.small_call_plans.clear()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1000), (7, 3), (40, 64), (1, 32767)])
def test_whole_call_entry_matches_scipy(op, dtype, shape):
    entry, reference = OPS[op]
    x = rows(shape, dtype)
    before = x.copy()
    result = entry(x, 2)
    assert type(result) is np.ndarray and result.dtype == dtype
    assert result.shape == (shape[0],) if op == "logsumexp" else result.shape == shape
    assert not np.shares_memory(result, x)
    np.testing.assert_array_equal(x, before)  # the input is only read
    want = reference(x.astype(np.float64))
    np.testing.assert_allclose(result, want, rtol=RTOL[np.dtype(dtype)], atol=1e-30)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["fortran", "byteswapped", "one_d", "three_d", "no_rows",
                                  "no_classes", "large", "float16", "int", "subclass",
                                  "list"])
def test_whole_call_entry_declines_other_input(op, case):
    """None for anything but the plain case; the public function then takes the full path
    and still gives SciPy's values."""
    entry, reference = OPS[op]
    x = rows((6, 5), np.float64)
    x = {
        "fortran": np.asfortranarray(x),
        "byteswapped": x.astype(">f8"),
        "one_d": x[0].copy(),
        "three_d": x.reshape(2, 3, 5),
        "no_rows": np.empty((0, 5)),
        "no_classes": np.empty((4, 0)),
        "large": rows((2, _config.SMALL_CALL_ELEMENTS // 2), np.float32),
        "float16": x.astype(np.float16),
        "int": np.arange(30).reshape(6, 5),
        "subclass": x.view(Subclass),
        "list": x.tolist(),
    }[case]
    assert entry(x, 2) is None
    if case != "no_classes":
        as_float = np.asarray(x, dtype=np.float64)
        result = getattr(lc, op)(x)
        np.testing.assert_allclose(result, reference(as_float), rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("op", OPS)
def test_public_small_call_runs_the_whole_call_entry(op, fresh_plans, monkeypatch):
    """A plain small call with the default settings goes through the compiled entry, a
    named backend, a config() context or a non-plain x does not."""
    calls = []
    entry = getattr(ck, "small_" + op)

    def counting_entry(x, n_threads):
        calls.append(x.shape)
        return entry(x, n_threads)

    monkeypatch.setattr(ck, "small_" + op, counting_entry)
    function, reference = getattr(lc, op), OPS[op][1]
    x = rows((3, 1000), np.float32)
    for _ in range(2):  # the first call makes the plan, the second reads it
        np.testing.assert_allclose(function(x), reference(x.astype(np.float64)), rtol=2e-6)
        assert lc.last_dispatch()["backend"] == "cython"
    assert calls == [(3, 1000)]
    function(x, backend="cython")
    with lc.config(n_threads=1):
        function(x)
    function(np.asfortranarray(x))  # declined by the entry: counted, then the full path
    assert calls == [(3, 1000), (3, 1000)]
    np.testing.assert_allclose(function(np.asfortranarray(x)),
                               reference(x.astype(np.float64)), rtol=2e-6)


def test_whole_call_entry_leaves_validation_to_the_full_path(fresh_plans):
    x = rows((2, 10), np.float32)
    lc.softmax(x)
    with pytest.raises(np.exceptions.AxisError):
        lc.softmax(x, axis=2)
    with pytest.raises(TypeError, match="axis"):
        lc.logsumexp(x, axis=1.5)
