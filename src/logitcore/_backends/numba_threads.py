"""Numba's threading layer, its thread pool, fork() and launching a parallel kernel.

No jitted code lives here: numba's on-disk cache only watches the file of the function
it compiled, so the kernels stay in numba_kernels.py (see docs/architecture.md).

This module asks numba for a thread-safe threading layer before any launch, GNU OpenMP
first, then TBB (see PREFERRED_LAYERS), because the default workqueue layer aborts when
two Python threads launch parallel kernels at once. If neither can be loaded, launches
are serialised with a lock.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numba
from numba.np.ufunc import parallel as numba_parallel

from logitcore._backends import gnu_openmp


THREADSAFE_LAYERS = ("tbb", "omp")

# The layers tried, in order, unless the user chose one (NUMBA_THREADING_LAYER, which is
# respected). GNU OpenMP first: its workers spin for a while after a launch, so the next
# launch finds them awake, where TBB's numba layer builds a new task arena per launch and
# its workers join late, which small and single-row calls feel. It is also the runtime of
# the cython backend, so mixing the two backends does not alternate two pools.
# GNU OpenMP does not survive fork() (see gnu_openmp.py): numba's layer kills a child
# that launches after its parent started the layer, so _after_fork_in_child registers
# the child with it and the child runs on one thread. Where libgomp is missing: TBB
# ("threadsafe") where the dynamic loader finds libtbb (not in <venv>/lib, where pip's tbb
# wheel puts it, so that wheel is no dependency), else numba's default,
# which is then its workqueue layer: fork-safe, but it aborts on concurrent launches, so
# launch serialises them with _launch_lock (tests: test_numba_threading_layer_fallback).
PREFERRED_LAYERS = ("omp", "threadsafe", "default")
_layer_chosen_by_user = numba.config.THREADING_LAYER != "default"
if not _layer_chosen_by_user:
    numba.config.THREADING_LAYER = PREFERRED_LAYERS[0]

_launch_lock = threading.Lock()
_concurrent_launches_safe = False  # set once the pool runs on a layer in THREADSAFE_LAYERS


def threading_layer_name():
    """Numba's active threading layer ("omp", "tbb", "workqueue"), None before first launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


# The layer's own setter of the (thread-local) thread count, once the pool runs: a plain
# C call, where numba.set_num_threads re-validates in Python at a cost comparable to a
# small kernel's run time. The public function stays the fallback.
_set_thread_count = numba.set_num_threads


def _start_thread_pool():
    """Launch numba's threads (once) on the first layer that loads."""
    global _concurrent_launches_safe, _set_thread_count
    if threading_layer_name() is None:
        layers = ((numba.config.THREADING_LAYER, "default") if _layer_chosen_by_user
                  else PREFERRED_LAYERS)
        for layer in layers:
            numba.config.THREADING_LAYER = layer
            try:
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
                break
            except ValueError:  # "No threading layer could be loaded"
                if layer == layers[-1]:
                    raise
    if threading_layer_name() == "omp":
        gnu_openmp.note_threads(numba.config.NUMBA_NUM_THREADS)
    _set_thread_count = getattr(numba_parallel, "_set_num_threads", None) or numba.set_num_threads
    _concurrent_launches_safe = threading_layer_name() in THREADSAFE_LAYERS


def _after_fork_in_child():
    """Let this child launch on numba's OpenMP layer (with one thread, see _usable_threads).

    The layer records the pid of the process that started it and kills any child of that
    process that launches a kernel. Its start function only records the calling pid again
    (and sets OpenMP's default thread count), so calling it here makes this process the
    recorded one; numba itself calls it the same way when it loads the layer.
    """
    if threading_layer_name() == "omp":
        from numba.np.ufunc import omppool

        ctypes.CFUNCTYPE(None, ctypes.c_int)(omppool.launch_threads)(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def usable_threads(n_threads):
    if gnu_openmp.forked_after_threads:
        return 1
    return max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))


def launch(threads, kernel, *args):
    """Run a parallel kernel on ``threads`` threads (numba's thread count is thread-local)."""
    if _concurrent_launches_safe:
        _set_thread_count(threads)
        return kernel(*args)
    # Before the pool is started, or on a layer that aborts on concurrent launches.
    with _launch_lock:
        _start_thread_pool()
        _set_thread_count(threads)
        return kernel(*args)
