"""Cython/OpenMP kernels of logitcore. Private: not a public API.

Use logitcore's public functions. This module implements the kernel contract described in
the docstring of ``logitcore._backends``: every function takes C-contiguous float32 or
float64 arrays that the Python layer has already validated and allocated, writes into
its outputs and returns None.

Layering (as in scikit-learn's ``_loss``): the row arithmetic lives in ``fast_math.h``,
in C functions that gcc vectorises and compiles for several instruction sets (picked at
run time, see ``SIMD_PATH``). This file only splits the work across OpenMP threads:
contiguous ranges of rows (``schedule(static)``, one range per thread) or, when there are
fewer rows than threads, pieces of each row's class axis whose partial (max, sum of exps)
pairs are merged afterwards.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, exp, isfinite, isnan, log
from libc.stdint cimport int64_t

import os

import numpy as np

cdef extern from "fast_math.h" nogil:
    int LC_OPENMP_ENABLED
    const char* lc_simd_path()

    void lc_logsumexp_rows_f32(const float* x, Py_ssize_t n_rows, Py_ssize_t n_classes, float* out)
    void lc_logsumexp_rows_f64(const double* x, Py_ssize_t n_rows, Py_ssize_t n_classes, double* out)
    void lc_softmax_rows_f32(const float* x, Py_ssize_t n_rows, Py_ssize_t n_classes, float* out)
    void lc_softmax_rows_f64(const double* x, Py_ssize_t n_rows, Py_ssize_t n_classes, double* out)
    void lc_log_softmax_rows_f32(const float* x, Py_ssize_t n_rows, Py_ssize_t n_classes, float* out)
    void lc_log_softmax_rows_f64(const double* x, Py_ssize_t n_rows, Py_ssize_t n_classes, double* out)
    void lc_logsumexp_scaled_rows_f32(const float* x, const float* b, Py_ssize_t n_rows,
                                      Py_ssize_t n_classes, float* out, float* sign_out)
    void lc_logsumexp_scaled_rows_f64(const double* x, const double* b, Py_ssize_t n_rows,
                                      Py_ssize_t n_classes, double* out, double* sign_out)
    void lc_cross_entropy_labels_rows_f32(
        const float* x, const int64_t* labels, const float* weight, int64_t ignore_index,
        double label_smoothing, Py_ssize_t n_rows, Py_ssize_t n_classes, float* loss_out,
        float* grad_out, double grad_scale)
    void lc_cross_entropy_labels_rows_f64(
        const double* x, const int64_t* labels, const double* weight, int64_t ignore_index,
        double label_smoothing, Py_ssize_t n_rows, Py_ssize_t n_classes, double* loss_out,
        double* grad_out, double grad_scale)
    void lc_cross_entropy_probs_rows_f32(
        const float* x, const float* target, const float* weight, double label_smoothing,
        Py_ssize_t n_rows, Py_ssize_t n_classes, float* loss_out, float* grad_out, double grad_scale)
    void lc_cross_entropy_probs_rows_f64(
        const double* x, const double* target, const double* weight, double label_smoothing,
        Py_ssize_t n_rows, Py_ssize_t n_classes, double* loss_out, double* grad_out,
        double grad_scale)
    void lc_bce_rows_f32(
        const float* x, const float* target, const float* weight, Py_ssize_t weight_row_stride,
        const float* pos_weight, Py_ssize_t pos_weight_row_stride, Py_ssize_t n_rows,
        Py_ssize_t n_classes, float* loss_out, int loss_row_sums, float* grad_out, double grad_scale)
    void lc_bce_rows_f64(
        const double* x, const double* target, const double* weight, Py_ssize_t weight_row_stride,
        const double* pos_weight, Py_ssize_t pos_weight_row_stride, Py_ssize_t n_rows,
        Py_ssize_t n_classes, double* loss_out, int loss_row_sums, double* grad_out,
        double grad_scale)
    void lc_sigmoid_span_f32(const float* x, float* out, Py_ssize_t n)
    void lc_sigmoid_span_f64(const double* x, double* out, Py_ssize_t n)
    void lc_log_sigmoid_span_f32(const float* x, float* out, Py_ssize_t n)
    void lc_log_sigmoid_span_f64(const double* x, double* out, Py_ssize_t n)
    void lc_softmax_backward_rows_f32(const float* dy, const float* y, Py_ssize_t n_rows,
                                      Py_ssize_t n_classes, float* out)
    void lc_softmax_backward_rows_f64(const double* dy, const double* y, Py_ssize_t n_rows,
                                      Py_ssize_t n_classes, double* out)
    void lc_log_softmax_backward_rows_f32(const float* dy, const float* y, Py_ssize_t n_rows,
                                          Py_ssize_t n_classes, float* out)
    void lc_log_softmax_backward_rows_f64(const double* dy, const double* y, Py_ssize_t n_rows,
                                          Py_ssize_t n_classes, double* out)
    double lc_chunk_max_sum_exp_f32(const float* x, Py_ssize_t n, float* max_out, float* exp_out)
    double lc_chunk_max_sum_exp_f64(const double* x, Py_ssize_t n, double* max_out,
                                    double* exp_out)
    void lc_chunk_scale_f32(float* x, Py_ssize_t n, float factor)
    void lc_chunk_scale_f64(double* x, Py_ssize_t n, double factor)
    void lc_chunk_subtract_f32(const float* x, float* out, Py_ssize_t n, float a, float b)
    void lc_chunk_subtract_f64(const double* x, double* out, Py_ssize_t n, double a, double b)


SUPPORTED_KERNELS = frozenset(
    {
        "logsumexp",
        "logsumexp_scaled",
        "softmax",
        "log_softmax",
        "sigmoid",
        "log_sigmoid",
        "cross_entropy_labels",
        "cross_entropy_probs",
        "bce_with_logits",
        "softmax_backward",
        "log_softmax_backward",
    }
)

# True only when compiled with OpenMP; without it every prange below runs on one thread
# and nothing else would tell (tests/test_cython_build.py checks it).
OPENMP_ENABLED = bool(LC_OPENMP_ENABLED)

# The instruction set the row functions run with on this CPU, chosen at load time.
SIMD_PATH = lc_simd_path().decode("ascii")

ctypedef fused real:
    float
    double

# A thread gets at least this many elements: starting a parallel region costs a few
# microseconds, about the time these take.
cdef Py_ssize_t MIN_ELEMENTS_PER_THREAD = 32768


# ---------------------------------------------------------------- work splitting

# GNU OpenMP's thread pool does not survive fork(): a child that opens a parallel region
# after its parent ran one hangs. Such a child runs every kernel on one thread (a team of
# one does not touch the pool).
cdef bint threads_were_used = False
cdef bint forked_after_threads = False


def _note_fork_in_child():
    global forked_after_threads
    forked_after_threads = threads_were_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


cdef int usable_threads(int n_threads):
    global threads_were_used
    if forked_after_threads or n_threads < 1:
        return 1
    if n_threads > 1:
        threads_were_used = True
    return n_threads


cdef inline Py_ssize_t range_start(Py_ssize_t n, Py_ssize_t part, Py_ssize_t n_parts) noexcept nogil:
    """Start of part ``part`` when [0, n) is cut into n_parts contiguous, nearly equal parts."""
    return (n // n_parts) * part + min(part, n % n_parts)


cdef inline int threads_for(Py_ssize_t n_rows, Py_ssize_t row_length, int n_threads) noexcept nogil:
    """Threads worth using: at most n_threads and n_rows, fewer for small inputs."""
    cdef Py_ssize_t useful = max(1, (n_rows * row_length) // MIN_ELEMENTS_PER_THREAD)
    return <int>max(1, min(min(<Py_ssize_t>n_threads, n_rows), useful))


cdef inline int chunks_per_row(Py_ssize_t n_rows, Py_ssize_t n_classes, int n_threads) noexcept nogil:
    """Pieces to cut each row's class axis into so that every thread has work (1: no split)."""
    if n_rows >= n_threads:
        return 1
    return <int>max(1, min(<Py_ssize_t>(n_threads // n_rows), n_classes // MIN_ELEMENTS_PER_THREAD))


cdef inline real* row_pointer_or_null(real* base, Py_ssize_t row, Py_ssize_t row_length) noexcept nogil:
    return base + row * row_length if base != NULL else NULL


cdef inline object numpy_dtype(real* _):
    if real is float:
        return np.float32
    else:
        return np.float64


# ---------------------------------------------------------------- fused -> C dispatch

cdef inline void logsumexp_rows(const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                                real* out) noexcept nogil:
    if real is float:
        lc_logsumexp_rows_f32(x, n_rows, n_classes, out)
    else:
        lc_logsumexp_rows_f64(x, n_rows, n_classes, out)


cdef inline void softmax_rows(const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                              real* out) noexcept nogil:
    if real is float:
        lc_softmax_rows_f32(x, n_rows, n_classes, out)
    else:
        lc_softmax_rows_f64(x, n_rows, n_classes, out)


cdef inline void log_softmax_rows(const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                                  real* out) noexcept nogil:
    if real is float:
        lc_log_softmax_rows_f32(x, n_rows, n_classes, out)
    else:
        lc_log_softmax_rows_f64(x, n_rows, n_classes, out)


cdef inline double chunk_max_sum_exp(const real* x, Py_ssize_t n, real* max_out,
                                     real* exp_out) noexcept nogil:
    if real is float:
        return lc_chunk_max_sum_exp_f32(x, n, max_out, exp_out)
    else:
        return lc_chunk_max_sum_exp_f64(x, n, max_out, exp_out)


cdef inline void chunk_scale(real* x, Py_ssize_t n, real factor) noexcept nogil:
    if real is float:
        lc_chunk_scale_f32(x, n, factor)
    else:
        lc_chunk_scale_f64(x, n, factor)


cdef inline void chunk_subtract(const real* x, real* out, Py_ssize_t n, real a, real b) noexcept nogil:
    if real is float:
        lc_chunk_subtract_f32(x, out, n, a, b)
    else:
        lc_chunk_subtract_f64(x, out, n, a, b)


# ---------------------------------------------------------------- split class axis

cdef void chunk_partials(const real[:, ::1] x, real[:, ::1] chunk_max, double[:, ::1] chunk_sum,
                         real* exp_out, int n_threads) noexcept nogil:
    """(max, sum of exps) of every piece of every row; the exps go to exp_out unless NULL."""
    cdef Py_ssize_t n_classes = x.shape[1], n_chunks = chunk_max.shape[1]
    cdef Py_ssize_t task, row, piece, start, end
    for task in prange(x.shape[0] * n_chunks, num_threads=n_threads, schedule="static"):
        row = task // n_chunks
        piece = task % n_chunks
        start = range_start(n_classes, piece, n_chunks)
        end = range_start(n_classes, piece + 1, n_chunks)
        chunk_sum[row, piece] = chunk_max_sum_exp(
            &x[row, start], end - start, &chunk_max[row, piece],
            exp_out + row * n_classes + start if exp_out != NULL else NULL)


cdef inline void merge_chunks(const real* chunk_max, const double* chunk_sum, Py_ssize_t n_chunks,
                              real* row_max, double* normaliser) noexcept nogil:
    """A row's max and sum_c exp(x_c - max) from its pieces' pairs (the online-softmax merge).

    Each piece's sum is relative to its own max (or to 0 when that is not finite, so an
    all -inf piece contributes 0 and a NaN piece NaN). The normaliser is NaN when the
    row's max is not finite: softmax rows holding +inf or only -inf are NaN.
    """
    cdef Py_ssize_t piece
    cdef real top = -INFINITY
    cdef double total = 0.0
    for piece in range(n_chunks):
        if chunk_max[piece] > top:
            top = chunk_max[piece]
    if isfinite(top):
        for piece in range(n_chunks):
            total += chunk_sum[piece] * exp(<double>chunk_max[piece] - top)
    else:
        total = NAN
    row_max[0] = top
    normaliser[0] = total


cdef void logsumexp_split(const real[:, ::1] x, real[::1] out, int n_chunks, int n_threads):
    cdef Py_ssize_t n_rows = x.shape[0], row, piece
    cdef real[:, ::1] chunk_max = np.empty((n_rows, n_chunks), dtype=numpy_dtype(<real*>NULL))
    cdef double[:, ::1] chunk_sum = np.empty((n_rows, n_chunks))
    cdef real row_max
    cdef double normaliser, result
    with nogil:
        chunk_partials(x, chunk_max, chunk_sum, NULL, n_threads)
        for row in range(n_rows):
            merge_chunks(&chunk_max[row, 0], &chunk_sum[row, 0], n_chunks, &row_max, &normaliser)
            if isfinite(row_max):
                result = row_max + log(normaliser)
            else:
                # +inf (the row holds +inf) or -inf (only -inf), unless a piece held NaN
                result = row_max
                for piece in range(n_chunks):
                    if isnan(chunk_sum[row, piece]):
                        result = NAN
            out[row] = <real>result


cdef void softmax_split(const real[:, ::1] x, real[:, ::1] out, bint log_probabilities,
                        int n_chunks, int n_threads):
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1]
    cdef Py_ssize_t row, piece, task, start, end
    cdef real[:, ::1] chunk_max = np.empty((n_rows, n_chunks), dtype=numpy_dtype(<real*>NULL))
    cdef double[:, ::1] chunk_sum = np.empty((n_rows, n_chunks))
    cdef real[::1] row_max = np.empty(n_rows, dtype=numpy_dtype(<real*>NULL))
    cdef double[::1] normaliser = np.empty(n_rows)
    with nogil:
        # Two passes over each piece, the second from cache: the partial sums (softmax
        # keeps each piece's exps, relative to the piece's max, in out), then the output.
        chunk_partials(x, chunk_max, chunk_sum, NULL if log_probabilities else &out[0, 0],
                       n_threads)
        for row in range(n_rows):
            merge_chunks(&chunk_max[row, 0], &chunk_sum[row, 0], n_chunks, &row_max[row],
                         &normaliser[row])
        for task in prange(n_rows * n_chunks, num_threads=n_threads, schedule="static"):
            row = task // n_chunks
            piece = task % n_chunks
            start = range_start(n_classes, piece, n_chunks)
            end = range_start(n_classes, piece + 1, n_chunks)
            if log_probabilities:
                chunk_subtract(&x[row, start], &out[row, start], end - start, row_max[row],
                               <real>log(normaliser[row]))
            else:
                # exp(x - piece max) * exp(piece max - row max) / normaliser; NaN rows
                # (normaliser NaN) stay NaN, all -inf pieces of a finite row become 0
                chunk_scale(&out[row, start], end - start,
                            <real>(exp(<double>chunk_max[row, piece] - row_max[row])
                                   / normaliser[row]))


# ---------------------------------------------------------------- kernels

def logsumexp(const real[:, ::1] x, real[::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = -INFINITY
        return
    cdef int n_chunks = chunks_per_row(n_rows, n_classes, n_threads)
    if n_chunks > 1:
        logsumexp_split(x, out, n_chunks, n_threads)
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            logsumexp_rows(&x[first, 0], end - first, n_classes, &out[first])


def softmax(const real[:, ::1] x, real[:, ::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0 or n_classes == 0:
        return
    cdef int n_chunks = chunks_per_row(n_rows, n_classes, n_threads)
    if n_chunks > 1:
        softmax_split(x, out, False, n_chunks, n_threads)
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            softmax_rows(&x[first, 0], end - first, n_classes, &out[first, 0])


def log_softmax(const real[:, ::1] x, real[:, ::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0 or n_classes == 0:
        return
    cdef int n_chunks = chunks_per_row(n_rows, n_classes, n_threads)
    if n_chunks > 1:
        softmax_split(x, out, True, n_chunks, n_threads)
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            log_softmax_rows(&x[first, 0], end - first, n_classes, &out[first, 0])


def logsumexp_scaled(const real[:, ::1] x, const real[:, ::1] b, real[::1] out, real[::1] sign_out,
                     int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = -INFINITY
        sign_out[:] = 0
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_logsumexp_scaled_rows_f32(&x[first, 0], &b[first, 0], end - first, n_classes,
                                             &out[first], &sign_out[first])
            else:
                lc_logsumexp_scaled_rows_f64(&x[first, 0], &b[first, 0], end - first, n_classes,
                                             &out[first], &sign_out[first])


def sigmoid(const real[::1] x, real[::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n = x.shape[0], part, first, end
    if n == 0:
        return
    cdef int n_parts = threads_for(n, 1, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n, part, n_parts)
            end = range_start(n, part + 1, n_parts)
            if real is float:
                lc_sigmoid_span_f32(&x[first], &out[first], end - first)
            else:
                lc_sigmoid_span_f64(&x[first], &out[first], end - first)


def log_sigmoid(const real[::1] x, real[::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n = x.shape[0], part, first, end
    if n == 0:
        return
    cdef int n_parts = threads_for(n, 1, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n, part, n_parts)
            end = range_start(n, part + 1, n_parts)
            if real is float:
                lc_log_sigmoid_span_f32(&x[first], &out[first], end - first)
            else:
                lc_log_sigmoid_span_f64(&x[first], &out[first], end - first)


def cross_entropy_labels(const real[:, ::1] x, const int64_t[::1] labels, const real[::1] weight,
                         int64_t ignore_index, double label_smoothing, real[::1] loss_out,
                         real[:, ::1] grad_out, double grad_scale, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0:
        return
    if n_classes == 0:  # every label is ignore_index (validated): nothing to learn
        loss_out[:] = 0
        return
    cdef real* grad_base = &grad_out[0, 0] if grad_out.shape[0] != 0 else NULL
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_cross_entropy_labels_rows_f32(
                    &x[first, 0], &labels[first], &weight[0], ignore_index, label_smoothing,
                    end - first, n_classes, &loss_out[first],
                    row_pointer_or_null(grad_base, first, n_classes), grad_scale)
            else:
                lc_cross_entropy_labels_rows_f64(
                    &x[first, 0], &labels[first], &weight[0], ignore_index, label_smoothing,
                    end - first, n_classes, &loss_out[first],
                    row_pointer_or_null(grad_base, first, n_classes), grad_scale)


def cross_entropy_probs(const real[:, ::1] x, const real[:, ::1] target, const real[::1] weight,
                        double label_smoothing, real[::1] loss_out, real[:, ::1] grad_out,
                        double grad_scale, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    if n_rows == 0:
        return
    if n_classes == 0:
        loss_out[:] = 0
        return
    cdef real* grad_base = &grad_out[0, 0] if grad_out.shape[0] != 0 else NULL
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_cross_entropy_probs_rows_f32(
                    &x[first, 0], &target[first, 0], &weight[0], label_smoothing, end - first,
                    n_classes, &loss_out[first], row_pointer_or_null(grad_base, first, n_classes),
                    grad_scale)
            else:
                lc_cross_entropy_probs_rows_f64(
                    &x[first, 0], &target[first, 0], &weight[0], label_smoothing, end - first,
                    n_classes, &loss_out[first], row_pointer_or_null(grad_base, first, n_classes),
                    grad_scale)


def bce_with_logits(const real[:, ::1] x, const real[:, ::1] target, const real[:, ::1] weight,
                    const real[:, ::1] pos_weight, real[:, ::1] loss_out, real[:, ::1] grad_out,
                    double grad_scale, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = x.shape[0], n_classes = x.shape[1], part, first, end
    # loss_out (n, 1) with C != 1 asks for each row's sum
    cdef bint loss_row_sums = loss_out.shape[1] == 1 and n_classes != 1
    if n_rows == 0:
        return
    if n_classes == 0:
        if loss_row_sums:
            loss_out[:, :] = 0
        return
    # a (1, C) weight serves every row: stride 0
    cdef Py_ssize_t weight_stride = 0 if weight.shape[0] == 1 else n_classes
    cdef Py_ssize_t pos_weight_stride = 0 if pos_weight.shape[0] == 1 else n_classes
    cdef Py_ssize_t loss_row_length = 1 if loss_row_sums else n_classes
    cdef real* grad_base = &grad_out[0, 0] if grad_out.shape[0] != 0 else NULL
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_bce_rows_f32(
                    &x[first, 0], &target[first, 0], &weight[0, 0] + first * weight_stride,
                    weight_stride, &pos_weight[0, 0] + first * pos_weight_stride, pos_weight_stride,
                    end - first, n_classes, &loss_out[0, 0] + first * loss_row_length,
                    loss_row_sums, row_pointer_or_null(grad_base, first, n_classes), grad_scale)
            else:
                lc_bce_rows_f64(
                    &x[first, 0], &target[first, 0], &weight[0, 0] + first * weight_stride,
                    weight_stride, &pos_weight[0, 0] + first * pos_weight_stride, pos_weight_stride,
                    end - first, n_classes, &loss_out[0, 0] + first * loss_row_length,
                    loss_row_sums, row_pointer_or_null(grad_base, first, n_classes), grad_scale)


def softmax_backward(const real[:, ::1] dy, const real[:, ::1] y, real[:, ::1] out, int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = dy.shape[0], n_classes = dy.shape[1], part, first, end
    if n_rows == 0 or n_classes == 0:
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_softmax_backward_rows_f32(&dy[first, 0], &y[first, 0], end - first, n_classes,
                                             &out[first, 0])
            else:
                lc_softmax_backward_rows_f64(&dy[first, 0], &y[first, 0], end - first, n_classes,
                                             &out[first, 0])


def log_softmax_backward(const real[:, ::1] dy, const real[:, ::1] y, real[:, ::1] out,
                         int n_threads=1):
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t n_rows = dy.shape[0], n_classes = dy.shape[1], part, first, end
    if n_rows == 0 or n_classes == 0:
        return
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    with nogil:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(n_rows, part, n_parts)
            end = range_start(n_rows, part + 1, n_parts)
            if real is float:
                lc_log_softmax_backward_rows_f32(&dy[first, 0], &y[first, 0], end - first,
                                                 n_classes, &out[first, 0])
            else:
                lc_log_softmax_backward_rows_f64(&dy[first, 0], &y[first, 0], end - first,
                                                 n_classes, &out[first, 0])
