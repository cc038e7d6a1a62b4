"""Backend selection, thread settings, and what is reported about them."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import logitcore as lc
from logitcore import _backends, _config
from logitcore._backends import numpy_ref


class CountingBackend:
    """Delegates to the reference and counts kernel calls, like scipy.fft's mock backend."""

    SUPPORTED_KERNELS = frozenset({"softmax", "logsumexp"})

    def __init__(self):
        self.calls = []

    def softmax(self, x, out, n_threads):
        self.calls.append(("softmax", n_threads))
        numpy_ref.softmax(x, out, n_threads)

    def logsumexp(self, x, out, n_threads):
        self.calls.append(("logsumexp", n_threads))
        numpy_ref.logsumexp(x, out, n_threads)


@pytest.fixture
def counting(monkeypatch):
    # these tests are about the order mechanics on tiny arrays: no small-call rule
    monkeypatch.setattr(_config, "SMALL_CALL_ELEMENTS", 0)
    backend = CountingBackend()
    _backends.register_backend("counting", backend)
    yield backend
    _backends.unregister_backend("counting")
    lc.set_backend("auto")


def test_argument_beats_context_beats_global(counting):
    x = np.zeros((2, 3))
    lc.set_backend("counting")
    lc.softmax(x)
    assert counting.calls == [("softmax", lc.get_num_threads())]
    with lc.config(backend="numpy"):
        lc.softmax(x)
        assert lc.last_dispatch()["backend"] == "numpy"
        lc.softmax(x, backend="counting")
    assert len(counting.calls) == 2
    lc.softmax(x)
    assert len(counting.calls) == 3


def test_named_backend_missing_kernel_raises_not_implemented(counting):
    with pytest.raises(NotImplementedError, match="backend 'counting' does not implement sigmoid"):
        lc.sigmoid(np.zeros(3), backend="counting")


def test_auto_skips_backends_without_the_kernel(counting, monkeypatch):
    monkeypatch.setattr(_config, "DEFAULT_AUTO_ORDER", ("counting", "numpy"))
    lc.softmax(np.zeros((2, 2)))
    lc.sigmoid(np.zeros(2))
    assert counting.calls == [("softmax", lc.get_num_threads())]
    assert lc.last_dispatch()["backend"] == "numpy"


def test_auto_uses_per_kernel_order(counting, monkeypatch):
    monkeypatch.setattr(_config, "AUTO_ORDER_BY_KERNEL", {"logsumexp": ("counting", "numpy")})
    monkeypatch.setattr(_config, "DEFAULT_AUTO_ORDER", ("numpy",))
    lc.logsumexp(np.zeros((2, 2)))
    lc.softmax(np.zeros((2, 2)))
    assert [c[0] for c in counting.calls] == ["logsumexp"]


@pytest.mark.skipif(not (_backends.is_available("numba") and _backends.is_available("cython")),
                    reason="needs both compiled backends")
def test_auto_follows_the_measured_evidence():
    """_config's evidence: cython for small calls, numba for large ones."""
    small = np.zeros((1, 1000), np.float32)
    large = np.zeros((128, 1000), np.float32)
    labels = np.zeros(128, np.int64)
    lc.softmax(small)
    assert lc.last_dispatch()["backend"] == "cython"
    lc.cross_entropy(small, labels[:1], return_grad=True)
    assert lc.last_dispatch()["backend"] == "cython"
    lc.softmax(large)
    assert lc.last_dispatch()["backend"] == "numba"
    lc.cross_entropy(large, labels, return_grad=True)
    assert lc.last_dispatch()["backend"] == "numba"
    lc.score(np.zeros((64, 1000), np.float32))  # score: cython at every size
    assert lc.last_dispatch()["backend"] == "cython"


def test_auto_small_calls_fall_back_when_cython_is_missing(monkeypatch):
    monkeypatch.setattr(_config, "SMALL_CALL_ORDER", ("missing-backend", "numpy"))
    monkeypatch.setattr(_backends, "is_available", lambda name: name == "numpy")
    monkeypatch.setattr(_config, "_auto_choices", {})
    _config.small_call_plans.clear()  # made under the real availability
    try:
        lc.softmax(np.zeros((1, 10)))
        assert lc.last_dispatch()["backend"] == "numpy"
    finally:
        _config.small_call_plans.clear()  # made under the patched availability


def test_small_call_plans_follow_every_setting():
    """The small-call path gives what the full path gives, and a change of the
    process-wide backend or thread count, a config() context or a registered backend
    takes effect at once."""
    special = pytest.importorskip("scipy.special")
    x = np.random.default_rng(0).normal(size=(3, 7))
    want = special.softmax(x, axis=-1)
    np.testing.assert_allclose(lc.softmax(x), want, rtol=1e-13)
    lc.set_backend("numpy")
    try:
        np.testing.assert_allclose(lc.softmax(x), want, rtol=1e-13)
        assert lc.last_dispatch()["backend"] == "numpy"
        lc.set_num_threads(1)
        lc.logsumexp(x)
        assert lc.last_dispatch()["n_threads"] == 1
        with lc.config(n_threads=2):
            lc.logsumexp(x)
            assert lc.last_dispatch()["n_threads"] == 2
        lc.logsumexp(x)
        assert lc.last_dispatch()["n_threads"] == 1
    finally:
        lc.set_backend("auto")
        lc.set_num_threads(_config.usable_cpu_count())
    counting = CountingBackend()
    _backends.register_backend("counting", counting)
    try:
        lc.set_backend("counting")
        np.testing.assert_allclose(lc.softmax(x), want, rtol=1e-13)
        assert counting.calls == [("softmax", lc.get_num_threads())]
    finally:
        lc.set_backend("auto")
        _backends.unregister_backend("counting")
    lc.softmax(x)
    assert lc.last_dispatch()["backend"] != "counting"


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'torch'; valid backends are 'numpy', "
                                         "'numba', 'cython'.*'auto'"):
        lc.softmax(np.zeros(3), backend="torch")
    with pytest.raises(ValueError, match="valid backends"):
        lc.set_backend("fast")
    with pytest.raises(ValueError, match="valid backends"):
        with lc.config(backend="fast"):
            pass


def test_context_is_thread_local_and_restores_on_error():
    seen = {}

    def other_thread():
        seen["backend"] = lc.get_backend()
        seen["threads"] = lc.get_num_threads()

    global_threads = lc.get_num_threads()
    with pytest.raises(RuntimeError):
        with lc.config(backend="numpy", n_threads=1):
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
            assert lc.get_backend() == "numpy" and lc.get_num_threads() == 1
            raise RuntimeError("boom")
    assert seen == {"backend": "auto", "threads": global_threads}
    assert lc.get_backend() == "auto" and lc.get_num_threads() == global_threads


def test_nested_contexts():
    with lc.config(n_threads=1):
        with lc.config(backend="numpy"):
            assert (lc.get_backend(), lc.get_num_threads()) == ("numpy", 1)
        assert lc.get_backend() == "auto" and lc.get_num_threads() == 1


def test_threads_reach_the_kernel(counting):
    with lc.config(n_threads=1):
        lc.softmax(np.zeros((2, 2)), backend="counting")
    lc.set_num_threads(2)
    try:
        lc.softmax(np.zeros((2, 2)), backend="counting")
    finally:
        lc.set_num_threads(_config.usable_cpu_count())
    assert counting.calls == [("softmax", 1), ("softmax", 2)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts(bad):
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="n_threads"):
        lc.set_num_threads(bad)


def test_default_threads_honour_affinity():
    assert lc.get_num_threads() == len(os.sched_getaffinity(0))


def _run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_environment_variables():
    result = _run_python(
        "import logitcore as lc; print(lc.get_backend(), lc.get_num_threads())",
        LOGITCORE_BACKEND="numpy", LOGITCORE_NUM_THREADS="1")
    assert result.stdout.split() == ["numpy", "1"], result.stderr
    # set_backend overrides the environment; the argument overrides both
    result = _run_python(
        "import numpy as np, logitcore as lc; lc.set_backend('auto');"
        "lc.softmax(np.zeros(2), backend='numpy'); print(lc.get_backend(), lc.last_dispatch()['backend'])",
        LOGITCORE_BACKEND="numpy")
    assert result.stdout.split() == ["auto", "numpy"], result.stderr
    result = _run_python("import logitcore as lc; lc.get_backend()", LOGITCORE_BACKEND="gpu")
    assert "LOGITCORE_BACKEND" in result.stderr and "valid backends" in result.stderr
    result = _run_python("import logitcore as lc; lc.get_num_threads()",
                         LOGITCORE_NUM_THREADS="many")
    assert "LOGITCORE_NUM_THREADS must be a positive integer" in result.stderr


def test_import_loads_no_heavy_or_optional_module():
    """`import logitcore` stays cheap by importing NumPy and our Python layers only; how
    long it takes is measured by asv (startup.timeraw_import_logitcore), not tested."""
    heavy = ["numba", "llvmlite", "scipy", "torch", "dask", "pyarrow", "pandas",
             "matplotlib", "logitcore._backends._cython_kernels"]
    code = (f"import sys; import logitcore; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    assert _run_python(code).stdout.strip() == "[]"


def test_backend_info_and_show_config(capsys):
    rows = {row["name"]: row for row in lc.backend_info()}
    assert rows["numpy"]["available"] and "softmax" in rows["numpy"]["kernels"]
    for name in ("numba", "cython"):
        assert rows[name]["available"] or rows[name]["reason"]
    lc.show_config()
    printed = capsys.readouterr().out
    assert "backends:" in printed and "numpy" in printed and "n_threads" in printed


def test_unavailable_backend_reports_reason(monkeypatch):
    monkeypatch.setitem(_backends._MODULE_PATHS, "cython", "logitcore._backends._missing_module")
    monkeypatch.delitem(_backends._loaded, "cython", raising=False)
    monkeypatch.setattr(_backends, "_unavailable_reason", {})
    monkeypatch.setattr(_config, "_auto_choices", {})
    available, reason = _backends.availability("cython")
    assert not available and "compiled extension is missing" in reason
    with pytest.raises(RuntimeError, match="backend 'cython' is not available: the compiled"):
        lc.softmax(np.zeros(2), backend="cython")
    monkeypatch.setattr(_config, "DEFAULT_AUTO_ORDER", ("cython", "numpy"))
    monkeypatch.setattr(_config, "SMALL_CALL_ORDER", ("cython", "numpy"))
    lc.softmax(np.zeros(2))
    assert lc.last_dispatch()["backend"] == "numpy"
