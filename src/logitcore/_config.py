"""Backend and thread selection.

Precedence, highest first: the ``backend=`` argument of a call > the innermost
``config(...)`` context of the calling thread > ``set_backend(...)`` (whose initial value
comes from ``LOGITCORE_BACKEND``) > ``"auto"``. Threads follow the same order with
``config(n_threads=...)``, ``set_num_threads`` and ``LOGITCORE_NUM_THREADS``.
"""

from __future__ import annotations

import contextlib
import os
import threading

from . import _backends
from ._backends import kernel_constants

AUTO = "auto"

# The order "auto" tries the backends in, fastest first; the reference backend is the
# last resort and always available. The evidence is measured, not written here: the
# README's "Measured speed" table and docs/bench-reference.json (`logitcore bench
# --backends numba cython --json ...`), and `python tools/pool_interference.py`:
# - numba is the faster of the two compiled backends on most large calls, and where
#   cython wins the margin is small, so numba goes first by default;
# - the fused cross-entropy + gradient is level between them once the gradient buffer is
#   given (grad_out), and both run on one GNU OpenMP pool, so alternating them costs
#   nothing: no per-op exception for large calls;
# - small calls are fixed costs, where cython's entry is the cheaper (numba's parallel
#   launch alone costs more than a small row's work). Below SMALL_CALL_ELEMENTS cython
#   runs the call on the calling thread (its pool untouched, so nothing spins), and goes
#   first.
DEFAULT_AUTO_ORDER = ("numba", "cython", "numpy")
# Kernels whose fastest backend is not the default order's first. score_multiclass:
# `logitcore bench --ops score --shape 65536x1000 --shape 256x131072 --shape 4194304x10
# --dtype float32 --backends numba cython` (2 threads, all fields, top_k=5): cython
# 108 / 44 / 381 ms, numba 171 / 40 / 690 ms (numba's narrow and whole-row finish are
# scalar per row; cython forms the fields for batches of rows).
AUTO_ORDER_BY_KERNEL: dict[str, tuple[str, ...]] = {
    "score_multiclass": ("cython", "numba", "numpy"),
    # temperature_nll (fit_temperature's pass): cython takes narrow rows as row tiles
    # vectorised across the rows, numba row by row; wall time per pass, 2 threads,
    # float32, 1048576x10: 32 vs 138 ms (medians of 9, interleaved, on a loaded machine;
    # before the tiles were vectorised across rows: 57 vs 85 ms CPU time); 104 vs 116 ms
    # CPU time at 65536x1000.
    "temperature_nll": ("cython", "numba", "numpy"),
}
# Below this many elements cython never wakes its pool (kernel_constants.py).
SMALL_CALL_ELEMENTS = kernel_constants.SMALL_CALL_ELEMENTS
SMALL_CALL_ORDER = ("cython", "numba", "numpy")


def _valid_backend_name(name, argument_name="backend"):
    if not isinstance(name, str):
        raise TypeError(f"{argument_name} must be a string, got {type(name).__name__}")
    if name != AUTO and name not in _backends.valid_names():
        raise ValueError(
            f"unknown {argument_name} {name!r}; valid backends are "
            f"{', '.join(repr(n) for n in (*_backends.valid_names(), AUTO))}"
        )
    return name


# The most threads a call may ask for: above the hardware thread count of any machine
# this runs on, far below the C int the kernels take (a larger count overflowed there and
# made every cython call fail after set_num_threads had accepted it).
MAX_THREADS = 2**15


def _valid_thread_count(n, argument_name="n_threads"):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{argument_name} must be a positive int, got {n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{argument_name} must be in [1, {MAX_THREADS}], got {n}")
    return n


def usable_cpu_count() -> int:
    """CPUs this process may run on (honours affinity masks and cgroup pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _initial_backend() -> str:
    value = os.environ.get("LOGITCORE_BACKEND", "").strip()
    if not value:
        return AUTO
    return _valid_backend_name(value, "LOGITCORE_BACKEND")


def _initial_threads() -> int:
    value = os.environ.get("LOGITCORE_NUM_THREADS", "").strip()
    if not value:
        return usable_cpu_count()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(
            f"LOGITCORE_NUM_THREADS must be a positive integer, got {value!r}"
        ) from None
    return _valid_thread_count(n, "LOGITCORE_NUM_THREADS")


class _GlobalState:
    backend: str | None = None  # None until first read, so env errors surface on use
    n_threads: int | None = None


_global = _GlobalState()
_local = threading.local()  # .backend_stack / .thread_stack: context overrides


def _global_backend() -> str:
    if _global.backend is None:
        _global.backend = _initial_backend()
    return _global.backend


def _global_threads() -> int:
    if _global.n_threads is None:
        _global.n_threads = _initial_threads()
    return _global.n_threads


def set_backend(name: str) -> None:
    """Set the process-wide default backend: ``"auto"``, ``"numpy"``, ``"numba"``, ``"cython"``.

    >>> import logitcore
    >>> logitcore.set_backend("numpy")
    >>> logitcore.get_backend()
    'numpy'
    >>> logitcore.set_backend("auto")
    """
    _global.backend = _valid_backend_name(name)
    _forget_small_call_plans()


def get_backend() -> str:
    """The backend name in force for this thread (it may be ``"auto"``)."""
    stack = _local.__dict__.get("backend_stack")
    if stack:
        return stack[-1]
    return _global_backend()


def set_num_threads(n: int) -> None:
    """Set the process-wide number of threads the kernels may use.

    >>> import logitcore
    >>> logitcore.set_num_threads(1)
    >>> logitcore.get_num_threads()
    1
    >>> logitcore.set_num_threads(logitcore._config.usable_cpu_count())
    """
    _global.n_threads = _valid_thread_count(n)
    _forget_small_call_plans()


def get_num_threads() -> int:
    """Threads in force for this thread: context > set_num_threads > env > usable CPUs."""
    stack = _local.__dict__.get("thread_stack")
    if stack:
        return stack[-1]
    return _global_threads()


@contextlib.contextmanager
def config(*, backend: str | None = None, n_threads: int | None = None):
    """Thread-local override of the backend and/or thread count.

    >>> import numpy as np, logitcore
    >>> with logitcore.config(backend="numpy", n_threads=1):
    ...     logitcore.get_backend(), logitcore.get_num_threads()
    ('numpy', 1)
    """
    if backend is not None:
        _valid_backend_name(backend)
    if n_threads is not None:
        _valid_thread_count(n_threads)
    backend_stack = _local.__dict__.setdefault("backend_stack", [])
    thread_stack = _local.__dict__.setdefault("thread_stack", [])
    backend_depth, thread_depth = len(backend_stack), len(thread_stack)
    if backend is not None:
        backend_stack.append(backend)
    if n_threads is not None:
        thread_stack.append(n_threads)
    try:
        yield
    finally:
        del backend_stack[backend_depth:]
        del thread_stack[thread_depth:]
        if not backend_stack and not thread_stack:
            # An empty namespace tells logitcore._ops in one test that no context is active.
            _local.__dict__.clear()


def resolve(kernel: str, backend: str | None, n_elements: int | None = None):
    """Return ``(name, module)`` of the backend that runs ``kernel`` for this call.

    For ``"auto"``, calls on fewer than SMALL_CALL_ELEMENTS elements follow their own order.
    """
    name = get_backend() if backend is None else backend
    if name != AUTO:
        module = _backends.load(name)  # raises for unknown or unavailable names
        if kernel not in module.SUPPORTED_KERNELS:
            raise NotImplementedError(
                f"backend {name!r} does not implement {_describe(kernel)}; "
                f"use backend='auto' or another backend"
            )
        return name, module
    if n_elements is not None and n_elements < SMALL_CALL_ELEMENTS:
        order = SMALL_CALL_ORDER
    else:
        order = AUTO_ORDER_BY_KERNEL.get(kernel, DEFAULT_AUTO_ORDER)
    key = (kernel, order)
    choice = _auto_choices.get(key)
    if choice is None:
        choice = _auto_choices[key] = _first_supporting(kernel, order)
    return choice


# Availability never changes once checked, so "auto" decides once per kernel and order
# (until the registry changes: _forget_cached_choices).
_auto_choices: dict = {}

# What small calls that name no backend run: kernel -> (kernel function, n_threads, what
# last_dispatch reports, the backend's whole-call entry or None), from resolve() and
# get_num_threads(). It holds for the process-wide settings only, so it is emptied when
# they (or the registry) change and is not read inside config(). A backend may offer a
# whole-call entry ``small_<kernel>(x, n_threads)`` that checks and allocates itself and
# returns None for input it does not take (the cython backend does, for the row kernels
# of logitcore._ops._small_row_call).
small_call_plans: dict = {}


def small_call_plan(kernel: str, n_elements: int):
    """The plan ``logitcore._ops`` keeps for ``kernel`` in ``small_call_plans``."""
    name, module = resolve(kernel, None, n_elements)
    n_threads = get_num_threads()
    plan = (getattr(module, kernel), n_threads, (kernel, kernel, name, n_threads),
            getattr(module, "small_" + kernel, None))
    small_call_plans[kernel] = plan
    return plan


def _forget_small_call_plans() -> None:
    small_call_plans.clear()


def _forget_cached_choices() -> None:
    """A backend was registered or unregistered: every cached choice may be stale."""
    _auto_choices.clear()
    _forget_small_call_plans()


_backends.on_registry_change(_forget_cached_choices)


def _first_supporting(kernel: str, order: tuple[str, ...]):
    for candidate in order:
        if _backends.is_available(candidate):
            module = _backends.load(candidate)
            if _backends.supports(module, kernel):
                return candidate, module
    raise NotImplementedError(f"no available backend implements {_describe(kernel)}")


def _describe(kernel: str) -> str:
    options = {
        "logsumexp_scaled": "logsumexp with b= (scale factors)",
        "cross_entropy_labels": "cross_entropy with integer labels",
        "cross_entropy_probs": "cross_entropy with probability targets",
        "bce_with_logits": "binary_cross_entropy_with_logits",
    }
    return options.get(kernel, kernel)
