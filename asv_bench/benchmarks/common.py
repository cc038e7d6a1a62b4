"""What the benchmark modules share: sizes, which implementations run which op, and the
zero-argument callables that get timed.

The callables come from ``logitcore.bench`` (the same ones ``logitcore bench`` times), so
this suite and the CLI measure the same calls on the same synthetic data. A case that
cannot run (a backend that is not built, a peer that is not installed, a kernel a
backend lacks) raises ``NotImplementedError`` in ``setup``: asv shows it as skipped.

Sizes
-----
* default: small shapes (one of each reference shape family, ~2M logits), so a history
  run over several commits stays short;
* ``LOGITCORE_ASV_FULL=1``: the reference shapes (logitcore.bench.REFERENCE_SHAPES) as well. They are extra
  parameter values, so run them under their own machine name (docs/benchmarks.md): a
  default-size run of the same commit on the same machine would replace them, and the
  dashboard shows the parameters of the last discovery, so publish right after;
* ``LOGITCORE_ASV_TINY=1``: tiny shapes only (CI smoke runs and the pytest check of the
  suite, whose results are thrown away).

Full-size values are left out of default runs rather than listed and skipped because
asv starts a process per parameter set, skipped or not: minutes more per commit.
"""

from __future__ import annotations

import os
import sys

import numpy as np

DTYPES = ["float32", "float64"]

# One of each reference shape family (classifier batch, LLM vocabulary, narrow, one
# token) at ~2M logits, so one call is 1-30 ms and a history run stays short.
SMALL_SHAPES = ["2048x1000", "16x131072", "262144x10", "1x131072"]
TINY_SHAPES = ["64x100", "2x4096", "1024x10", "1x4096"]
# The reference shapes. Written out (not imported from logitcore.bench) because
# the parameter grid must exist before any commit's logitcore is importable;
# test_asv_suite.py checks that they agree with logitcore.bench.REFERENCE_SHAPES.
FULL_SHAPES = ["65536x1000", "256x131072", "4194304x10", "1x131072"]

FULL = os.environ.get("LOGITCORE_ASV_FULL", "") not in ("", "0")
TINY = os.environ.get("LOGITCORE_ASV_TINY", "") not in ("", "0")

# CLASSIFIER_SHAPES: the headline classifier batch of the speed-ratio benchmarks.
if TINY:
    SHAPES, CLASSIFIER_SHAPES = TINY_SHAPES, TINY_SHAPES[:1]
elif FULL:
    SHAPES = SMALL_SHAPES + [s for s in FULL_SHAPES if s not in SMALL_SHAPES]
    CLASSIFIER_SHAPES = [SMALL_SHAPES[0], FULL_SHAPES[0]]
else:
    SHAPES, CLASSIFIER_SHAPES = SMALL_SHAPES, SMALL_SHAPES[:1]

LOGITCORE_BACKENDS = ["numpy", "numba", "cython"]
COMPILED_BACKENDS = ["numba", "cython"]

# Peers that have each op (the names ``logitcore.bench.peer_runners`` gives them).
# softmax_backward is not in logitcore.bench; its runners are below.
PEERS_BY_OP = {
    "logsumexp": ["torch", "scipy", "jax"],
    "softmax": ["torch", "scipy", "jax"],
    "log_softmax": ["torch", "scipy", "jax"],
    "sigmoid": ["torch", "scipy", "jax"],
    "cross_entropy": ["torch", "jax"],
    "cross_entropy_none": ["torch", "sklearn"],
    "cross_entropy_grad": ["torch", "jax", "sklearn"],
    "bce_with_logits": ["torch"],
    "softmax_backward": ["torch"],
    "score": ["torch", "scipy"],
    # torch: Guo et al.'s LBFGS recipe; sklearn: _TemperatureScaling; scipy: minimize_scalar
    "fit_temperature": ["torch", "scipy", "sklearn"],
    "calibration_error": ["torchmetrics"],
    "calibration_error_scores": ["torchmetrics"],
}

# Modules each peer needs; imported once in asv's fork server (see ``preload``).
_PEER_MODULES = {
    "torch": ["torch", "torch.nn.functional"],
    "scipy": ["scipy.special"],
    "jax": ["jax", "jax.numpy"],
    "sklearn": ["sklearn._loss.loss", "sklearn.calibration"],
    "torchmetrics": ["torchmetrics.functional.classification"],
}


def impls(op: str) -> list[str]:
    """logitcore backends first, then the peers that have ``op``."""
    return LOGITCORE_BACKENDS + PEERS_BY_OP[op]


def parse_shape(shape: str) -> tuple[int, int]:
    rows, classes = shape.split("x")
    return int(rows), int(classes)


def bench_module():
    """``logitcore.bench`` of the commit under test (early commits have none)."""
    try:
        from logitcore import bench
    except ImportError as exc:
        raise NotImplementedError(f"logitcore.bench is missing at this commit: {exc}")
    return bench


def n_threads() -> int:
    import logitcore

    return logitcore.get_num_threads()


def check_backend(backend: str) -> None:
    from logitcore import _backends

    available, reason = _backends.availability(backend)
    if not available:
        raise NotImplementedError(f"backend {backend!r} unavailable: {reason}")


def make_data(shape: str, dtype: str):
    """(logits, integer labels): the synthetic data of ``logitcore bench``."""
    return bench_module()._make_data(parse_shape(shape), np.dtype(dtype))


def make_runner(op: str, impl: str, dtype: str, shape: str):
    """A zero-argument callable running ``op`` with ``impl`` on fresh data of ``shape``
    and ``dtype``, already called once (JIT compilation and first-touch page faults
    happen here, outside any timed region). Raises NotImplementedError when the case
    cannot run here."""
    if impl not in impls(op):
        raise NotImplementedError(f"{impl} has no {op}")
    bench = bench_module()
    x, labels = make_data(shape, dtype)
    if op in getattr(bench, "CALIBRATION_OPS", ()):  # an informative, over-confident model
        x[np.arange(len(labels)), labels] += bench.CALIBRATION_LABEL_BOOST
    if impl in LOGITCORE_BACKENDS:
        check_backend(impl)
        if op == "softmax_backward":
            runner = _logitcore_softmax_backward(x, impl)
        else:
            runner = bench.logitcore_runners(op, x, labels, impl)
    elif op == "softmax_backward":
        runner = _torch_softmax_backward(x)
    else:
        runner = bench.peer_runners(op, x, labels, n_threads()).get(impl)
        if runner is None:
            raise NotImplementedError(f"peer {impl} is not installed here")
    runner()  # raises NotImplementedError if the backend lacks this kernel
    return runner


def _softmax_backward_inputs(x):
    """(dy, y): y a softmax output, dy an upstream gradient, both of x's dtype."""
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    y = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(x.dtype)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    return dy, y


def _logitcore_softmax_backward(x, backend):
    import logitcore

    dy, y = _softmax_backward_inputs(x)
    out = np.empty_like(x)
    return lambda: logitcore.softmax_backward(dy, y, out=out, backend=backend)


def _torch_softmax_backward(x):
    try:
        import torch
    except ImportError:
        raise NotImplementedError("peer torch is not installed here")
    torch.set_num_threads(n_threads())
    dy, y = (torch.from_numpy(a) for a in _softmax_backward_inputs(x))
    # The kernel autograd runs for softmax, without building a graph around it.
    return lambda: torch._softmax_backward_data(dy, y, -1, y.dtype)


def preload() -> None:
    """Import the peers and logitcore's backends (no JIT compilation, no threads).

    Called at import time only inside asv's fork server, which imports the benchmark
    modules once and forks a child per benchmark and parameter set: the children then
    start with torch, JAX, scikit-learn and Numba already imported instead of paying
    1-2 s each, several hundred times per commit. The price is that every child's peak
    memory includes those modules, so ``peakmem_`` results are comparable between
    implementations and commits but carry a constant offset.
    """
    for modules in _PEER_MODULES.values():
        for name in modules:
            try:
                __import__(name)
            except ImportError:
                pass
    try:
        from logitcore import _backends

        for backend in LOGITCORE_BACKENDS:
            _backends.availability(backend)
    except ImportError:
        pass


def in_asv_fork_server() -> bool:
    """True in the process asv's ``forkserver`` launch method forks benchmarks from."""
    return sys.argv[1:2] == ["run_server"]


if in_asv_fork_server():
    preload()
