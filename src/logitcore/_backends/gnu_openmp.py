"""fork() and GNU OpenMP, for the two backends that run on it.

The cython kernels and numba's "omp" threading layer both run on the system's GNU OpenMP
runtime (libgomp; one shared library, hence one thread pool per calling thread). libgomp
keeps its workers between parallel regions, and fork() copies only the calling thread:
a child that opens a parallel region of two or more threads after its parent ran one
waits forever for workers that do not exist. A team of one thread does not touch the
pool, so in such a child both backends run every kernel on the calling thread. (Children
are usually pool workers that should not multiply threads anyway.)

A process that used libgomp threads through another library before forking is not seen
here; the hang then comes from that library's pool state, and setting
``LOGITCORE_NUM_THREADS=1`` in the child avoids it.
"""

from __future__ import annotations

import os

# Set (by the backends) once a kernel ran a parallel region of two or more threads.
threads_were_used = False
# True in a child forked after that: its libgomp pool is unusable.
forked_after_threads = False


def note_threads(n_threads: int) -> None:
    """Called by a backend before it opens a parallel region of ``n_threads`` threads."""
    global threads_were_used
    if n_threads > 1:
        threads_were_used = True


def _note_fork_in_child() -> None:
    global forked_after_threads
    forked_after_threads = forked_after_threads or threads_were_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)
