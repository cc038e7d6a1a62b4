"""Threads, processes, memory and very large arrays."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import logitcore as lc

REF = dict(backend="numpy")


def _workload(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=3, size=(257, 301)).astype(np.float32)
    labels = rng.integers(0, 301, size=257)
    target = (x > 0).astype(np.float32)
    return x, labels, target


def _all_ops(x, labels, target, **kw):
    return [
        lc.logsumexp(x, **kw), lc.softmax(x, **kw), lc.log_softmax(x, **kw),
        lc.sigmoid(x, **kw), lc.log_sigmoid(x, **kw),
        *lc.cross_entropy(x, labels, return_grad=True, label_smoothing=0.1, **kw),
        *lc.binary_cross_entropy_with_logits(x, target, return_grad=True, **kw),
        lc.softmax_backward(target, x, **kw),
    ]


def test_eight_threads_at_once_give_correct_results(backend):
    """8 Python threads call every op concurrently for ~2 s; every result is checked."""
    inputs = [_workload(seed) for seed in range(8)]
    expected = [_all_ops(*args, **REF) for args in inputs]
    _all_ops(*inputs[0], backend=backend)  # compile outside the timed window
    failures, calls = [], [0] * 8
    start = threading.Barrier(8)

    def worker(i):
        start.wait()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for got, want in zip(_all_ops(*inputs[i], backend=backend), expected[i]):
                if not np.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
                    failures.append(i)
            calls[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures and min(calls) >= 1


def _run_child(code, timeout=180):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_calls_after_fork_work_in_the_child(backend):
    """The parent runs ``backend`` on two threads, then forks; the child and a grandchild
    call every available backend (the two compiled ones share GNU OpenMP's pool, which a
    forked child cannot use). Each must finish promptly with the right result, never hang
    or be killed."""
    result = _run_child(f"""
        import os, signal, numpy as np, logitcore as lc
        from logitcore import _backends
        x = np.random.default_rng(0).normal(size=(512, 1000)).astype(np.float32)
        row = x[:1] * 3                                    # a single row splits its classes
        expected = lc.logsumexp(x, backend="numpy")
        expected_row = lc.logsumexp(row, backend="numpy")
        names = [n for n in _backends.valid_names() if _backends.availability(n)[0]]
        lc.set_num_threads(2)
        lc.logsumexp(x, backend="{backend}")               # parent starts its threads
        lc.logsumexp(row, backend="{backend}")

        def check_every_backend():
            for name in names:
                ok = (np.allclose(lc.logsumexp(x, backend=name), expected, rtol=1e-5)
                      and np.allclose(lc.logsumexp(row, backend=name), expected_row,
                                      rtol=1e-5))
                if not ok:
                    print("wrong result from", name, flush=True)
                    os._exit(3)

        def fork_and_check(depth):
            pid = os.fork()
            if pid == 0:
                signal.alarm(60)                           # a hang becomes SIGALRM
                try:
                    check_every_backend()
                    if depth < 2:
                        fork_and_check(depth + 1)
                except Exception as exc:
                    print("child error:", type(exc).__name__, exc, flush=True)
                    os._exit(4)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print("depth", depth, "exit", os.waitstatus_to_exitcode(status), flush=True)

        fork_and_check(1)
        check_every_backend()                              # the parent keeps its threads
        """, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "depth 1 exit 0" in result.stdout and "depth 2 exit 0" in result.stdout, (
        result.stdout + result.stderr[-3000:])


def _peak_extra_bytes(backend, call):
    """Peak RSS growth of ``call`` on 1 GiB of float32 logits, in a fresh process."""
    result = _run_child(f"""
        import resource, numpy as np, logitcore as lc
        n_rows, n_classes = 262144, 1024                 # 1 GiB of float32
        x = np.ones((n_rows, n_classes), np.float32)
        labels = np.zeros(n_rows, np.int64)
        small = np.ones((4, n_classes), np.float32)
        def run(x, labels):
            return {call}
        run(small, labels[:4])                           # compile and warm up first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(x, labels)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
        """.replace("{backend}", backend), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("call", [
    'lc.cross_entropy(x, labels, backend="{backend}")',
    'lc.cross_entropy(x, labels, reduction="none", label_smoothing=0.1, backend="{backend}")',
    'lc.logsumexp(x, backend="{backend}")',
    'lc.cross_entropy(x, labels, return_grad=True, grad_out=x, backend="{backend}")',
    'lc.softmax(x, out=x, backend="{backend}")',
], ids=["ce_mean", "ce_none_smoothing", "logsumexp", "ce_grad_in_place", "softmax_in_place"])
def test_no_rows_by_classes_temporary(compiled_backend, call):
    extra = _peak_extra_bytes(compiled_backend, call)
    assert extra < 50 * 2**20, f"peak memory grew by {extra / 2**20:.0f} MiB on 1 GiB of logits"


@pytest.mark.bigmem
@pytest.mark.parametrize("op", ["logsumexp", "cross_entropy"])
def test_more_than_2_to_the_31_elements(compiled_backend, op):
    """float32 logits with 2^31 + 2^20 elements (8.4 GB): 64-bit indexing end to end."""
    n_classes = 4096
    n_rows = (2**31 + 2**20) // n_classes
    x = np.empty((n_rows, n_classes), np.float32)
    rng = np.random.default_rng(0)
    block = rng.normal(size=(1024, n_classes)).astype(np.float32)
    for start in range(0, n_rows, 1024):
        x[start:start + 1024] = block[: min(1024, n_rows - start)]
    labels = np.arange(n_rows) % n_classes
    sample = np.r_[0:3, n_rows // 2, n_rows - 3:n_rows]
    if op == "logsumexp":
        got = lc.logsumexp(x, backend=compiled_backend)[sample]
        want = lc.logsumexp(x[sample], **REF)
    else:
        got = lc.cross_entropy(x, labels, reduction="none", backend=compiled_backend)[sample]
        want = lc.cross_entropy(x[sample], labels[sample], reduction="none", **REF)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
