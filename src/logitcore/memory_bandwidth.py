"""Memory bandwidth measured the way STREAM does: compiled, vectorised, multithreaded loops,
best of several runs. It is the denominator of every "× floor" figure of `logitcore bench`.

Why not NumPy: ``ndarray.sum`` over float64 is a pairwise summation (not a pure stream)
and running it in a Python thread pool made per call adds start-up costs, so it reports
well under what the memory bus delivers and flatters every ratio to the floor.

The loops:

* read: each thread sums its contiguous share of the buffer viewed as 64-bit integers
  (integer addition is associative, so LLVM vectorises the loop without any fast-math
  flag, and the sum keeps the loads from being optimised away);
* copy: each thread copies its share to a second buffer (reads plus writes; the write
  allocation that the hardware does on top is not counted, as in STREAM).

Buffers are far larger than any last-level cache (512 MiB by default). The kernels are
compiled once per process (not cached: a few hundred ms, paid only by the benchmark).
"""

from __future__ import annotations

import time

import numpy as np

DEFAULT_BYTES = 1 << 29
REPEATS = 10

_kernels = None


def _compile():
    """The numba loops, built on first use so that importing this module stays cheap."""
    global _kernels
    if _kernels is not None:
        return _kernels
    # Loading the numba backend first sets numba's threading layer the way every logitcore
    # kernel runs (GNU OpenMP first), so the bandwidth is measured on the same pool.
    from ._backends import load

    load("numba")
    from numba import njit, prange

    from ._backends import numba_threads

    @njit(parallel=True)
    def read_words(words, n_parts):
        partial = np.zeros(n_parts, np.uint64)
        per_part = (words.size + n_parts - 1) // n_parts
        for part in prange(n_parts):
            start = part * per_part
            stop = min(start + per_part, words.size)
            total = np.uint64(0)
            for i in range(start, stop):
                total += words[i]
            partial[part] = total
        return partial.sum()

    @njit(parallel=True)
    def copy_words(source, target, n_parts):
        per_part = (source.size + n_parts - 1) // n_parts
        for part in prange(n_parts):
            start = part * per_part
            stop = min(start + per_part, source.size)
            for i in range(start, stop):
                target[i] = source[i]

    _kernels = (numba_threads, read_words, copy_words)
    return _kernels


def _best_seconds(func, repeats: int) -> float:
    func()  # warm-up: compilation, first-touch page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def measure(n_threads: int, n_bytes: int = DEFAULT_BYTES, repeats: int = REPEATS) -> dict:
    """Read and copy bandwidth in bytes/s on ``n_threads`` threads, best of ``repeats``.

    ``copy`` counts the bytes read plus the bytes written, as STREAM's Copy does.

    >>> import logitcore.memory_bandwidth as mb
    >>> result = mb.measure(1, n_bytes=1 << 20, repeats=2)
    >>> sorted(result), result["read"] > 0
    (['copy', 'read'], True)
    """
    numba_threads, read_words, copy_words = _compile()
    source = np.ones(n_bytes // 8, np.uint64)
    target = np.zeros_like(source)
    # Several parts per thread would only add scheduling; one contiguous part each.
    n_parts = max(1, int(n_threads))

    def read():
        numba_threads.launch(n_parts, read_words, source, n_parts)

    def copy():
        numba_threads.launch(n_parts, copy_words, source, target, n_parts)

    read_s = _best_seconds(read, repeats)
    copy_s = _best_seconds(copy, repeats)
    return {"read": source.nbytes / read_s, "copy": 2 * source.nbytes / copy_s}
