"""Cost of alternating the numba and cython backends in one loop.

Evidence for the threading choices in src/logitcore/_backends/numba_kernels.py and
src/logitcore/_config.py. After each parallel region GNU OpenMP's idle workers spin for a
few milliseconds. When numba ran on its TBB layer, those spinning cython (libgomp)
workers took the second core from TBB's: numba softmax + cython CE+grad on 65536x1000
took 36.9 ms a pair against 30.0 all-numba (2026-11-23). numba now runs on GNU OpenMP
too, one libgomp and one pool, and the mixed pair takes 30.5 ms against 30.3.
Run from the repository root: ``python tools/pool_interference.py`` (add
``NUMBA_THREADING_LAYER=tbb`` to see the TBB case). Prints the median time of each pattern.
"""

import time

import numpy as np

import logitcore as lc


def median_ms(step, repeats=15):
    step()  # warm-up: compilation, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((65536, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 65536)
    probs, grad = np.empty_like(logits), np.empty_like(logits)
    one_row = rng.standard_normal((1, 1000)).astype(np.float32)

    def softmax(backend):
        lc.softmax(logits, out=probs, backend=backend)

    def loss_and_grad(backend):
        lc.cross_entropy(logits, labels, return_grad=True, grad_out=grad, backend=backend)

    def small_softmax(backend):
        lc.softmax(one_row, backend=backend)

    patterns = {
        "numba softmax alone": lambda: softmax("numba"),
        "cython softmax alone": lambda: softmax("cython"),
        "numba cross_entropy+grad alone": lambda: loss_and_grad("numba"),
        "cython cross_entropy+grad alone": lambda: loss_and_grad("cython"),
        "numba softmax + numba cross_entropy+grad": lambda: (softmax("numba"),
                                                             loss_and_grad("numba")),
        "cython softmax + cython cross_entropy+grad": lambda: (softmax("cython"),
                                                               loss_and_grad("cython")),
        "numba softmax + cython cross_entropy+grad": lambda: (softmax("numba"),
                                                              loss_and_grad("cython")),
        "numba softmax + 1x1000 cython softmax": lambda: (softmax("numba"),
                                                          small_softmax("cython")),
    }
    print("65536x1000 float32, threads:", lc.get_num_threads())
    loss_and_grad("numba")
    from logitcore._backends import numba_kernels
    print("numba threading layer:", numba_kernels.threading_layer_name())
    for name, step in patterns.items():
        print(f"{name:<45} {median_ms(step):8.2f} ms")


if __name__ == "__main__":
    main()
