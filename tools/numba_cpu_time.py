"""Single-thread CPU time of numba kernels, called directly, in one or more source trees.

Each tree runs in its own process (its src/ first on sys.path); the processes alternate
for ``--rounds`` rounds and each case keeps its best ``time.thread_time`` (CPU time of the
calling thread, so other processes on a shared machine count little). Prints a table of
ns per element, and the ratio of each tree to the first.

    python tools/numba_cpu_time.py --trees /path/to/old /path/to/new \
        --cases logsumexp:65536x1000:float32 cross_entropy:4194304x10:float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_CASES = [
    f"{op}:{shape}:{dtype}"
    for shape, dtypes in (("65536x1000", ("float32", "float64")), ("4194304x10", ("float32",)))
    for dtype in dtypes
    for op in ("logsumexp", "softmax", "log_softmax", "cross_entropy", "cross_entropy_grad")
] + ["logsumexp:65536x1000:float16"]


def _operands(np, kernels, op, n_rows, n_classes, dtype):
    rng = np.random.default_rng(0)
    compute = np.float32 if np.dtype(dtype).itemsize == 2 else dtype
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    if op in ("logsumexp",):
        out = np.empty(n_rows, compute)
        return kernels.logsumexp, (x, out)
    if op in ("softmax", "log_softmax"):
        return getattr(kernels, op), (x, np.empty((n_rows, n_classes), compute))
    labels = rng.integers(0, n_classes, n_rows).astype(np.int64)
    weight = np.ones(n_classes, compute)
    grad = (np.empty((n_rows, n_classes), compute) if op == "cross_entropy_grad"
            else np.empty((0, 0), compute))
    return kernels.cross_entropy_labels, (x, labels, weight, -100, 0.0,
                                          np.empty(n_rows, compute), grad, 1.0 / n_rows)


def _worker(cases, repeats):
    import numpy as np

    from logitcore._backends import numba_kernels as kernels

    times = {}
    for case in cases:
        op, shape, dtype = case.split(":")
        n_rows, n_classes = (int(v) for v in shape.split("x"))
        if dtype == "float16" and not hasattr(kernels, "half_bits"):
            continue  # a tree without half input
        function, args = _operands(np, kernels, op, n_rows, n_classes, np.dtype(dtype).type)
        function(*args, n_threads=1)  # compile
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            function(*args, n_threads=1)
            best = min(best, time.thread_time() - start)
        times[case] = best * 1e9 / (n_rows * n_classes)
    print(json.dumps(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", default=[os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        _worker(options.cases, options.repeats)
        return
    best = {tree: {} for tree in options.trees}
    for _ in range(options.rounds):
        for tree in options.trees:
            env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"),
                       NUMBA_NUM_THREADS="1")
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", "--repeats",
                 str(options.repeats), "--cases", *options.cases],
                env=env, capture_output=True, text=True, cwd=tree)
            if result.returncode:
                sys.exit(f"{tree}: worker failed\n{result.stderr[-3000:]}")
            for case, value in json.loads(result.stdout.splitlines()[-1]).items():
                best[tree][case] = min(best[tree].get(case, float("inf")), value)
    first = options.trees[0]
    header = f"{'case (ns/element, 1 thread CPU time)':42s}" + "".join(
        f"{os.path.basename(tree.rstrip('/')):>14s}" for tree in options.trees)
    print(header + ("  ratio to first" if len(options.trees) > 1 else ""))
    for case in options.cases:
        values = [best[tree].get(case) for tree in options.trees]
        cells = "".join(f"{v:14.3f}" if v is not None else f"{'-':>14s}" for v in values)
        ratios = ""
        if len(values) > 1 and values[0]:
            ratios = "  " + " ".join(f"{v / values[0]:.2f}x" if v else "-" for v in values[1:])
        print(f"{case:42s}{cells}{ratios}")


if __name__ == "__main__":
    main()
