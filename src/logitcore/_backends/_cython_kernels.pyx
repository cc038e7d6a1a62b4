"""Cython/OpenMP kernels of logitcore. Private: not a public API.

Use logitcore's public functions. This module implements the kernel contract described in
the docstring of ``logitcore._backends``: every function takes C-contiguous float32 or
float64 arrays that the Python layer has already validated and allocated, writes into
its outputs and returns None.

Layering (as in scikit-learn's ``_loss``): the row arithmetic lives in the ``lc_*.h``
headers (declared in ``_cython_kernels.pxd``), in C functions that gcc vectorises and compiles for several instruction sets (picked at
run time, see ``SIMD_PATH``). This file only splits the work across OpenMP threads:
contiguous ranges of rows (``schedule(static)``, one range per thread) or, when there are
fewer rows than threads, pieces of each row's class axis whose partial (max, sum of exps)
pairs are merged afterwards.

Entry points take plain ndarrays and read their data pointers through NumPy's C API:
typed memoryviews of fused types cost ~1.2 us per call to acquire and dispatch, more
than the arithmetic of a 1000-class row. The dtype, layout and shape of every operand
are still checked (cheap field reads), so a caller that breaks the contract gets a
ValueError, not a write out of bounds.
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, exp, isfinite
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

import os

from logitcore._backends import gnu_openmp

cnp.import_array()

# The C declarations (constants, row state, row operations) are in _cython_kernels.pxd,
# which Cython reads automatically for this module.

SUPPORTED_KERNELS = frozenset(
    {
        "logsumexp",
        "logsumexp_scaled",
        "softmax",
        "log_softmax",
        "sigmoid",
        "log_sigmoid",
        "label_stats",
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
# microseconds, about the time these take (kernel_constants.SMALL_CALL_ELEMENTS).
cdef Py_ssize_t MIN_ELEMENTS_PER_THREAD = LC_SMALL_CALL_ELEMENTS


# ---------------------------------------------------------------- operand checks

cdef int element_type(cnp.ndarray x) except -1:
    """NPY_FLOAT or NPY_DOUBLE: the kernel's element type, read off its first operand."""
    cdef int type_num = cnp.PyArray_TYPE(x)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"cython kernels take float32 or float64 arrays, got {(<object>x).dtype}")
    return type_num


cdef int expect(cnp.ndarray a, str name, int type_num, Py_ssize_t n_rows, Py_ssize_t n_cols,
                bint writable) except -1:
    """Check one operand: C-contiguous, of type_num, writable if an output, and shaped
    (n_rows,) when n_cols < 0, else (n_rows, n_cols)."""
    cdef int ndim = 1 if n_cols < 0 else 2
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(a)
    if (cnp.PyArray_TYPE(a) != type_num or cnp.PyArray_NDIM(a) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))
            or shape[0] != n_rows or (ndim == 2 and shape[1] != n_cols)):
        array = <object>a
        wanted = f"({n_rows},)" if n_cols < 0 else f"({n_rows}, {n_cols})"
        raise ValueError(
            f"kernel operand {name}: expected a C-contiguous{' writable' if writable else ''} "
            f"array of shape {wanted} and the dtype of x; got shape {array.shape}, "
            f"dtype {array.dtype}, C-contiguous={array.flags.c_contiguous}, "
            f"writable={array.flags.writeable}")
    return 0


cdef inline Py_ssize_t dim(cnp.ndarray a, int axis):
    return cnp.PyArray_DIMS(a)[axis] if cnp.PyArray_NDIM(a) > axis else 0


cdef inline void* data(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef inline void* data_or_null(cnp.ndarray a):
    """An optional output (the gradient) is passed as an empty array when not wanted."""
    return cnp.PyArray_DATA(a) if cnp.PyArray_SIZE(a) != 0 else NULL


# ---------------------------------------------------------------- work splitting

# A child forked after this process ran GNU OpenMP threads (here or in numba's "omp"
# layer: one libgomp) runs every kernel on one thread; see gnu_openmp.py. The flags are
# copied into C so that small calls do not pay for Python attribute lookups.
cdef bint threads_noted = False
cdef bint forked_after_threads = False


def _note_fork_in_child():
    # after_in_child hooks run in registration order: gnu_openmp's (registered when it was
    # imported, above) has already updated its flag.
    global forked_after_threads
    forked_after_threads = gnu_openmp.forked_after_threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


cdef int usable_threads(int n_threads):
    global threads_noted
    if forked_after_threads or n_threads < 1:
        return 1
    if n_threads > 1 and not threads_noted:
        gnu_openmp.note_threads(n_threads)
        threads_noted = True
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


cdef inline real* offset_or_null(real* base, Py_ssize_t offset) noexcept nogil:
    return base + offset if base != NULL else NULL


# ---------------------------------------------------------------- kernels over rows
#
# One skeleton runs every kernel whose operands are rows of x (and of a second array of
# x's shape) and whose output is a row of x's length or one value per row: it cuts the rows
# into one contiguous range per thread and calls the kernel's C row function on each.

cdef enum RowKernel:
    LOGSUMEXP
    SOFTMAX
    LOG_SOFTMAX
    SOFTMAX_BACKWARD
    LOG_SOFTMAX_BACKWARD
    SIGMOID           # elementwise: called with rows of one element
    LOG_SIGMOID


cdef inline void call_rows(RowKernel kernel, const real* x, const real* y, Py_ssize_t n_rows,
                           Py_ssize_t n_classes, real* out) noexcept nogil:
    """The C row function of ``kernel`` on n_rows rows (y: the second operand, if any)."""
    if real is float:
        if kernel == LOGSUMEXP:
            lc_logsumexp_rows_f32(x, n_rows, n_classes, out)
        elif kernel == SOFTMAX:
            lc_softmax_rows_f32(x, n_rows, n_classes, out)
        elif kernel == LOG_SOFTMAX:
            lc_log_softmax_rows_f32(x, n_rows, n_classes, out)
        elif kernel == SOFTMAX_BACKWARD:
            lc_softmax_backward_rows_f32(x, y, n_rows, n_classes, out)
        elif kernel == LOG_SOFTMAX_BACKWARD:
            lc_log_softmax_backward_rows_f32(x, y, n_rows, n_classes, out)
        elif kernel == SIGMOID:
            lc_sigmoid_span_f32(x, out, n_rows * n_classes)
        else:
            lc_log_sigmoid_span_f32(x, out, n_rows * n_classes)
    else:
        if kernel == LOGSUMEXP:
            lc_logsumexp_rows_f64(x, n_rows, n_classes, out)
        elif kernel == SOFTMAX:
            lc_softmax_rows_f64(x, n_rows, n_classes, out)
        elif kernel == LOG_SOFTMAX:
            lc_log_softmax_rows_f64(x, n_rows, n_classes, out)
        elif kernel == SOFTMAX_BACKWARD:
            lc_softmax_backward_rows_f64(x, y, n_rows, n_classes, out)
        elif kernel == LOG_SOFTMAX_BACKWARD:
            lc_log_softmax_backward_rows_f64(x, y, n_rows, n_classes, out)
        elif kernel == SIGMOID:
            lc_sigmoid_span_f64(x, out, n_rows * n_classes)
        else:
            lc_log_sigmoid_span_f64(x, out, n_rows * n_classes)


cdef void run_rows(RowKernel kernel, const real* x, const real* y, Py_ssize_t n_rows,
                   Py_ssize_t n_classes, real* out, Py_ssize_t out_row_length,
                   int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    if n_parts == 1:  # no parallel region at all: it costs more than a small input
        call_rows(kernel, x, y, n_rows, n_classes, out)
        return
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(n_rows, part, n_parts)
        end = range_start(n_rows, part + 1, n_parts)
        call_rows(kernel, x + first * n_classes, offset_or_null(y, first * n_classes),
                  end - first, n_classes, out + first * out_row_length)


# ---------------------------------------------------------------- split class axis

cdef inline lc_exp_sums chunk_max_sum_exp(const real* x, Py_ssize_t n, real* max_out,
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


cdef void chunk_partials(const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes, int n_chunks,
                         real* chunk_max, lc_exp_sums* chunk_sums, real* exp_out,
                         int n_threads) noexcept nogil:
    """The max and exp sums of every piece of every row, stored at [row * n_chunks + piece];
    the exps go to exp_out unless NULL."""
    cdef Py_ssize_t task, row, start, end
    cdef int piece
    for task in prange(n_rows * n_chunks, num_threads=n_threads, schedule="static"):
        row = task // n_chunks
        piece = task % n_chunks
        start = row * n_classes + range_start(n_classes, piece, n_chunks)
        end = row * n_classes + range_start(n_classes, piece + 1, n_chunks)
        chunk_sums[task] = chunk_max_sum_exp(x + start, end - start, &chunk_max[task],
                                             offset_or_null(exp_out, start))


cdef inline lc_exp_sums merge_chunks(const real* chunk_max, const lc_exp_sums* chunk_sums,
                                     Py_ssize_t n_chunks, real* row_max) noexcept nogil:
    """A row's max and exp sums from its pieces': fast_math.h's merge_pieces, the merge
    its long-row kernels use too."""
    if real is float:
        return merge_pieces_f32(chunk_max, chunk_sums, n_chunks, row_max)
    else:
        return merge_pieces_f64(chunk_max, chunk_sums, n_chunks, row_max)


cdef bint split_classes(RowKernel kernel, const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                        real* out, int n_chunks, int n_threads) noexcept nogil:
    """logsumexp, softmax or log_softmax with each row cut into n_chunks pieces.
    False (nothing done) if the few bytes of scratch cannot be allocated."""
    cdef Py_ssize_t row, piece, task, start, end, n_tasks = n_rows * n_chunks
    cdef real* chunk_max = <real*>malloc(n_tasks * sizeof(real))
    cdef lc_exp_sums* chunk_sums = <lc_exp_sums*>malloc(n_tasks * sizeof(lc_exp_sums))
    cdef real* row_max = <real*>malloc(n_rows * sizeof(real))
    # per row: softmax's normaliser, or its log for log_softmax
    cdef double* normaliser = <double*>malloc(n_rows * sizeof(double))
    cdef lc_exp_sums sums
    if chunk_max == NULL or chunk_sums == NULL or row_max == NULL or normaliser == NULL:
        free(chunk_max); free(chunk_sums); free(row_max); free(normaliser)
        return False
    # Two passes over each piece, the second from cache: the partial sums (softmax keeps
    # each piece's exps, relative to the piece's max, in out), then the output.
    chunk_partials(x, n_rows, n_classes, n_chunks, chunk_max, chunk_sums,
                   out if kernel == SOFTMAX else NULL, n_threads)
    for row in range(n_rows):
        sums = merge_chunks(chunk_max + row * n_chunks, chunk_sums + row * n_chunks, n_chunks,
                            &row_max[row])
        if kernel == LOGSUMEXP:
            # right at the edges too: +inf, -inf, NaN (see lc_exp_sums_log)
            out[row] = <real>(row_max[row] + lc_exp_sums_log(sums))
        elif kernel == LOG_SOFTMAX:
            normaliser[row] = lc_exp_sums_log(sums) if isfinite(row_max[row]) else NAN
        else:
            normaliser[row] = lc_exp_sums_total(sums) if isfinite(row_max[row]) else NAN
    if kernel != LOGSUMEXP:
        for task in prange(n_tasks, num_threads=n_threads, schedule="static"):
            row = task // n_chunks
            piece = task % n_chunks
            start = row * n_classes + range_start(n_classes, piece, n_chunks)
            end = row * n_classes + range_start(n_classes, piece + 1, n_chunks)
            if kernel == LOG_SOFTMAX:
                chunk_subtract(x + start, out + start, end - start, row_max[row],
                               <real>normaliser[row])
            else:
                # exp(x - piece max) * exp(piece max - row max) / normaliser; NaN rows
                # (normaliser NaN) stay NaN, all -inf pieces of a finite row become 0
                chunk_scale(out + start, end - start,
                            <real>(exp(<double>chunk_max[task] - row_max[row]) / normaliser[row]))
    free(chunk_max); free(chunk_sums); free(row_max); free(normaliser)
    return True


cdef void normalise_rows(RowKernel kernel, const real* x, Py_ssize_t n_rows, Py_ssize_t n_classes,
                         real* out, int n_threads) noexcept nogil:
    """logsumexp (out: one value per row), softmax or log_softmax (out: x's shape)."""
    cdef Py_ssize_t row
    if n_rows == 0:
        return
    if n_classes == 0:
        if kernel == LOGSUMEXP:
            for row in range(n_rows):
                out[row] = -INFINITY
        return
    cdef int n_chunks = chunks_per_row(n_rows, n_classes, n_threads)
    if n_chunks > 1 and split_classes(kernel, x, n_rows, n_classes, out, n_chunks, n_threads):
        return
    run_rows(kernel, x, <const real*>NULL, n_rows, n_classes, out,
             1 if kernel == LOGSUMEXP else n_classes, n_threads)


# ---------------------------------------------------------------- entry points

def logsumexp(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(out, "out", type_num, n_rows, -1, True)
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef void* out_data = data(out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            normalise_rows(LOGSUMEXP, <const float*>x_data, n_rows, n_classes, <float*>out_data,
                           n_threads)
        else:
            normalise_rows(LOGSUMEXP, <const double*>x_data, n_rows, n_classes,
                           <double*>out_data, n_threads)


def softmax(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _normalise_entry(SOFTMAX, x, out, n_threads)


def log_softmax(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _normalise_entry(LOG_SOFTMAX, x, out, n_threads)


cdef _normalise_entry(RowKernel kernel, cnp.ndarray x, cnp.ndarray out, int n_threads):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(out, "out", type_num, n_rows, n_classes, True)
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef void* out_data = data(out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            normalise_rows(kernel, <const float*>x_data, n_rows, n_classes, <float*>out_data,
                           n_threads)
        else:
            normalise_rows(kernel, <const double*>x_data, n_rows, n_classes, <double*>out_data,
                           n_threads)


def softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray out not None,
                     int n_threads=1):
    _backward_entry(SOFTMAX_BACKWARD, dy, y, out, n_threads)


def log_softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None,
                         cnp.ndarray out not None, int n_threads=1):
    _backward_entry(LOG_SOFTMAX_BACKWARD, dy, y, out, n_threads)


cdef _backward_entry(RowKernel kernel, cnp.ndarray dy, cnp.ndarray y, cnp.ndarray out,
                     int n_threads):
    cdef int type_num = element_type(dy)
    cdef Py_ssize_t n_rows = dim(dy, 0), n_classes = dim(dy, 1)
    expect(dy, "dy", type_num, n_rows, n_classes, False)
    expect(y, "y", type_num, n_rows, n_classes, False)
    expect(out, "out", type_num, n_rows, n_classes, True)
    if n_rows == 0 or n_classes == 0:
        return
    n_threads = usable_threads(n_threads)
    cdef void* dy_data = data(dy)
    cdef void* y_data = data(y)
    cdef void* out_data = data(out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            run_rows(kernel, <const float*>dy_data, <const float*>y_data, n_rows, n_classes,
                     <float*>out_data, n_classes, n_threads)
        else:
            run_rows(kernel, <const double*>dy_data, <const double*>y_data, n_rows, n_classes,
                     <double*>out_data, n_classes, n_threads)


def sigmoid(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _elementwise_entry(SIGMOID, x, out, n_threads)


def log_sigmoid(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _elementwise_entry(LOG_SIGMOID, x, out, n_threads)


cdef _elementwise_entry(RowKernel kernel, cnp.ndarray x, cnp.ndarray out, int n_threads):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n = dim(x, 0)
    expect(x, "x", type_num, n, -1, False)
    expect(out, "out", type_num, n, -1, True)
    if n == 0:
        return
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef void* out_data = data(out)
    with nogil:
        # n rows of one element: the skeleton hands each thread one contiguous span
        if type_num == cnp.NPY_FLOAT:
            run_rows(kernel, <const float*>x_data, <const float*>NULL, n, 1, <float*>out_data, 1,
                     n_threads)
        else:
            run_rows(kernel, <const double*>x_data, <const double*>NULL, n, 1, <double*>out_data,
                     1, n_threads)


# ---------------------------------------------------------------- labels

# Labels per chunk of the label scan (kernel_constants.LABEL_CHUNK, as in the numba
# backend): a fixed decomposition, so the float64 sum of the weights does not depend on
# the thread count.
cdef Py_ssize_t LABEL_CHUNK = LC_LABEL_CHUNK


cdef void scan_label_chunk(const int64_t* labels, Py_ssize_t n, const real* weight,
                           Py_ssize_t n_classes, int64_t ignore_index, Py_ssize_t chunk,
                           Py_ssize_t* n_invalid, double* kept_weight) noexcept nogil:
    """Invalid labels counted, and weights of the kept valid ones summed, in one chunk."""
    cdef Py_ssize_t i, bad = 0
    cdef double total = 0.0
    cdef int64_t label
    for i in range(chunk * LABEL_CHUNK, min(n, (chunk + 1) * LABEL_CHUNK)):
        label = labels[i]
        if label != ignore_index:
            if 0 <= label < n_classes:
                total += weight[label]
            else:
                bad += 1
    n_invalid[chunk] = bad
    kept_weight[chunk] = total


cdef Py_ssize_t first_invalid_label(const int64_t* labels, Py_ssize_t n, Py_ssize_t n_classes,
                                    int64_t ignore_index, Py_ssize_t start) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, n):
        if labels[i] != ignore_index and not (0 <= labels[i] < n_classes):
            return i
    return -1


cdef Py_ssize_t scan_labels(const int64_t* labels, Py_ssize_t n, const real* weight,
                            Py_ssize_t n_classes, int64_t ignore_index, double* kept,
                            int n_threads) noexcept nogil:
    """First invalid position (-1 if none); the kept weight, summed in chunk order, in
    kept[0]. Returns -2 if its scratch cannot be allocated."""
    cdef Py_ssize_t n_chunks = (n + LABEL_CHUNK - 1) // LABEL_CHUNK, chunk
    cdef Py_ssize_t* n_invalid = <Py_ssize_t*>malloc(n_chunks * sizeof(Py_ssize_t))
    cdef double* kept_weight = <double*>malloc(n_chunks * sizeof(double))
    cdef Py_ssize_t result = -1
    if n_invalid == NULL or kept_weight == NULL:
        free(n_invalid); free(kept_weight)
        return -2
    n_threads = <int>min(<Py_ssize_t>n_threads, n_chunks)
    if n_threads == 1:
        for chunk in range(n_chunks):
            scan_label_chunk(labels, n, weight, n_classes, ignore_index, chunk, n_invalid,
                             kept_weight)
    else:
        for chunk in prange(n_chunks, num_threads=n_threads, schedule="static"):
            scan_label_chunk(labels, n, weight, n_classes, ignore_index, chunk, n_invalid,
                             kept_weight)
    kept[0] = 0.0
    for chunk in range(n_chunks):
        if n_invalid[chunk] != 0:
            result = first_invalid_label(labels, n, n_classes, ignore_index, chunk * LABEL_CHUNK)
            break
        kept[0] += kept_weight[chunk]
    free(n_invalid); free(kept_weight)
    return result


def label_stats(cnp.ndarray labels not None, cnp.ndarray weight not None,
                int64_t ignore_index, int n_threads=1):
    cdef int type_num = element_type(weight)
    cdef Py_ssize_t n = dim(labels, 0), n_classes = dim(weight, 0), first_invalid
    expect(labels, "labels", cnp.NPY_INT64, n, -1, False)
    expect(weight, "weight", type_num, n_classes, -1, False)
    n_threads = usable_threads(n_threads)
    cdef const int64_t* label_data = <const int64_t*>data(labels)
    cdef void* weight_data = data(weight)
    cdef double kept = 0.0
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            first_invalid = scan_labels(label_data, n, <const float*>weight_data, n_classes,
                                        ignore_index, &kept, n_threads)
        else:
            first_invalid = scan_labels(label_data, n, <const double*>weight_data, n_classes,
                                        ignore_index, &kept, n_threads)
    if first_invalid == -2:
        raise MemoryError("label_stats: no memory for its per-chunk scratch")
    return first_invalid, (kept if first_invalid < 0 else float("nan"))


# ---------------------------------------------------------------- kernels with more operands
# (a per-row label or target, class weights, scalars): each has its own loop over the
# threads' ranges of rows, with the same shape as run_rows.

cdef void scaled_logsumexp_rows(const real* x, const real* b, Py_ssize_t n_rows,
                                Py_ssize_t n_classes, real* out, real* sign_out,
                                int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(n_rows, part, n_parts)
        end = range_start(n_rows, part + 1, n_parts)
        if real is float:
            lc_logsumexp_scaled_rows_f32(x + first * n_classes, b + first * n_classes,
                                         end - first, n_classes, out + first, sign_out + first)
        else:
            lc_logsumexp_scaled_rows_f64(x + first * n_classes, b + first * n_classes,
                                         end - first, n_classes, out + first, sign_out + first)


def logsumexp_scaled(cnp.ndarray x not None, cnp.ndarray b not None, cnp.ndarray out not None,
                     cnp.ndarray sign_out not None, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1), row
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(b, "b", type_num, n_rows, n_classes, False)
    expect(out, "out", type_num, n_rows, -1, True)
    expect(sign_out, "sign_out", type_num, n_rows, -1, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = -INFINITY
        sign_out[:] = 0
        return
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef void* b_data = data(b)
    cdef void* out_data = data(out)
    cdef void* sign_data = data(sign_out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            scaled_logsumexp_rows(<const float*>x_data, <const float*>b_data, n_rows, n_classes,
                                  <float*>out_data, <float*>sign_data, n_threads)
        else:
            scaled_logsumexp_rows(<const double*>x_data, <const double*>b_data, n_rows,
                                  n_classes, <double*>out_data, <double*>sign_data, n_threads)


cdef void label_rows(const real* x, const int64_t* labels, const real* weight,
                     int64_t ignore_index, double label_smoothing, Py_ssize_t n_rows,
                     Py_ssize_t n_classes, real* loss_out, real* grad_out, double grad_scale,
                     int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(n_rows, part, n_parts)
        end = range_start(n_rows, part + 1, n_parts)
        if real is float:
            lc_cross_entropy_labels_rows_f32(
                x + first * n_classes, labels + first, weight, ignore_index, label_smoothing,
                end - first, n_classes, loss_out + first,
                offset_or_null(grad_out, first * n_classes), grad_scale)
        else:
            lc_cross_entropy_labels_rows_f64(
                x + first * n_classes, labels + first, weight, ignore_index, label_smoothing,
                end - first, n_classes, loss_out + first,
                offset_or_null(grad_out, first * n_classes), grad_scale)


cdef bint split_label_rows(const real* x, const int64_t* labels, const real* weight,
                           int64_t ignore_index, double eps, Py_ssize_t n_rows,
                           Py_ssize_t n_classes, real* loss_out, real* grad_out, double grad_scale,
                           int n_chunks, int n_threads) noexcept nogil:
    """Cross-entropy of few long rows, each cut into n_chunks pieces: the same formulas as
    lc_cross_entropy_labels_rows (see fast_math.h), pass by pass over the pieces: the row
    max; the label logit and smoothing sums (everything the loss reads from x, so that
    grad_out may be x); the sums of exps, stored in grad_out; the gradient. False (nothing
    done) if the scratch cannot be allocated."""
    cdef Py_ssize_t n_tasks = n_rows * n_chunks, task, row, start, end, c
    cdef int piece
    cdef real* chunk_max = <real*>malloc(n_tasks * sizeof(real))
    cdef lc_exp_sums* chunk_sums = <lc_exp_sums*>malloc(n_tasks * sizeof(lc_exp_sums))
    cdef double* chunk_smoothing = <double*>malloc(n_tasks * sizeof(double))
    cdef real* row_max = <real*>malloc(n_rows * sizeof(real))
    cdef double* row_factors = <double*>malloc(3 * n_rows * sizeof(double))
    if (chunk_max == NULL or chunk_sums == NULL or chunk_smoothing == NULL or row_max == NULL
            or row_factors == NULL):
        free(chunk_max); free(chunk_sums); free(chunk_smoothing); free(row_max); free(row_factors)
        return False
    # per row: exp_factor, weight_factor of the gradient, and the label's gradient
    cdef double* exp_factor = row_factors
    cdef double* weight_factor = row_factors + n_rows
    cdef double* label_grad = row_factors + 2 * n_rows
    cdef real top, shift
    cdef double weight_total = 0.0, normaliser, log_normaliser, loss, label_coef, smoothing_coef
    cdef double q_total, smoothing_sum
    cdef lc_exp_sums sums
    cdef bint use_smoothing = False, keep
    cdef int64_t label
    if eps > 0.0:
        for c in range(n_classes):
            weight_total += weight[c]
            use_smoothing = use_smoothing or weight[c] != 0
    # 1. each piece's max, merged into the row's
    for task in prange(n_tasks, num_threads=n_threads, schedule="static"):
        row = task // n_chunks
        piece = task % n_chunks
        start = range_start(n_classes, piece, n_chunks)
        end = range_start(n_classes, piece + 1, n_chunks)
        if real is float:
            chunk_max[task] = lc_chunk_max_f32(x + row * n_classes + start, end - start)
        else:
            chunk_max[task] = lc_chunk_max_f64(x + row * n_classes + start, end - start)
    for row in range(n_rows):
        top = -INFINITY
        for piece in range(n_chunks):
            if chunk_max[row * n_chunks + piece] > top:
                top = chunk_max[row * n_chunks + piece]
        row_max[row] = top
    # 2. sum_{w != 0} w (x - max) per piece (only with label smoothing), then the sums of
    #    exp(x - shift), the exps stored in grad_out (which may be x: read last)
    for task in prange(n_tasks, num_threads=n_threads, schedule="static"):
        row = task // n_chunks
        piece = task % n_chunks
        start = range_start(n_classes, piece, n_chunks)
        end = range_start(n_classes, piece + 1, n_chunks)
        if use_smoothing:
            if real is float:
                chunk_smoothing[task] = lc_chunk_weighted_shifted_sum_f32(
                    x + row * n_classes + start, weight + start, end - start, row_max[row])
            else:
                chunk_smoothing[task] = lc_chunk_weighted_shifted_sum_f64(
                    x + row * n_classes + start, weight + start, end - start, row_max[row])
    for row in range(n_rows):
        label = labels[row]
        keep = label != ignore_index
        # the loss's reads of x, before the exps may overwrite it
        label_grad[row] = <double>x[row * n_classes + (label if keep else 0)] - row_max[row]
    for task in prange(n_tasks, num_threads=n_threads, schedule="static"):
        row = task // n_chunks
        piece = task % n_chunks
        start = row * n_classes + range_start(n_classes, piece, n_chunks)
        end = row * n_classes + range_start(n_classes, piece + 1, n_chunks)
        shift = row_max[row] if isfinite(row_max[row]) else 0
        if real is float:
            chunk_sums[task] = lc_chunk_sum_exp_f32(x + start, end - start, shift,
                                                    offset_or_null(grad_out, start))
        else:
            chunk_sums[task] = lc_chunk_sum_exp_f64(x + start, end - start, shift,
                                                    offset_or_null(grad_out, start))
    # 3. the loss of each row and its gradient's coefficients
    for row in range(n_rows):
        label = labels[row]
        keep = label != ignore_index
        # every piece's sums are relative to the row's shift: they merge by adding
        sums.others = 0.0
        sums.n_at_max = 0.0
        smoothing_sum = 0.0
        for piece in range(n_chunks):
            sums = lc_exp_sums_add(sums, chunk_sums[row * n_chunks + piece])
            if use_smoothing:
                smoothing_sum += chunk_smoothing[row * n_chunks + piece]
        if isfinite(row_max[row]):
            normaliser = lc_exp_sums_total(sums)
            log_normaliser = lc_exp_sums_log(sums)
        else:
            normaliser = NAN
            log_normaliser = NAN
        label_coef = (1.0 - eps) * <double>weight[label] if keep else 0.0
        smoothing_coef = eps / n_classes if keep and use_smoothing else 0.0
        loss = 0.0
        if label_coef != 0.0:  # q == 0 terms are 0 even where log p is -inf or NaN
            loss += label_coef * (log_normaliser - label_grad[row])
        if smoothing_coef != 0.0:
            loss += smoothing_coef * (weight_total * log_normaliser - smoothing_sum)
        loss_out[row] = <real>loss
        q_total = label_coef + smoothing_coef * weight_total
        exp_factor[row] = grad_scale * q_total / normaliser
        weight_factor[row] = grad_scale * smoothing_coef
        if grad_out != NULL and keep:
            # in double: p[y] sum(q) - q[y] cancels when p[y] -> 1
            label_grad[row] = grad_scale * (
                <double>grad_out[row * n_classes + label] / normaliser * q_total
                - (label_coef + smoothing_coef * <double>weight[label]))
    # 4. the gradient, from the stored exps
    if grad_out != NULL:
        for task in prange(n_tasks, num_threads=n_threads, schedule="static"):
            row = task // n_chunks
            piece = task % n_chunks
            start = range_start(n_classes, piece, n_chunks)
            end = range_start(n_classes, piece + 1, n_chunks)
            if real is float:
                lc_chunk_label_grad_f32(grad_out + row * n_classes + start, weight + start,
                                        end - start, <float>exp_factor[row],
                                        <float>weight_factor[row])
            else:
                lc_chunk_label_grad_f64(grad_out + row * n_classes + start, weight + start,
                                        end - start, exp_factor[row], weight_factor[row])
        for row in range(n_rows):
            if labels[row] != ignore_index:
                grad_out[row * n_classes + labels[row]] = <real>label_grad[row]
    free(chunk_max); free(chunk_sums); free(chunk_smoothing); free(row_max); free(row_factors)
    return True


def cross_entropy_labels(cnp.ndarray x not None, cnp.ndarray labels not None,
                         cnp.ndarray weight not None, int64_t ignore_index,
                         double label_smoothing, cnp.ndarray loss_out not None,
                         cnp.ndarray grad_out not None, double grad_scale, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(labels, "labels", cnp.NPY_INT64, n_rows, -1, False)
    expect(weight, "weight", type_num, n_classes, -1, False)
    expect(loss_out, "loss_out", type_num, n_rows, -1, True)
    if cnp.PyArray_SIZE(grad_out) != 0:
        expect(grad_out, "grad_out", type_num, n_rows, n_classes, True)
    if n_rows == 0:
        return
    if n_classes == 0:  # every label is ignore_index (validated): nothing to learn
        loss_out[:] = 0
        return
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef const int64_t* label_data = <const int64_t*>data(labels)
    cdef void* weight_data = data(weight)
    cdef void* loss_data = data(loss_out)
    cdef void* grad_data = data_or_null(grad_out)
    # few long rows: each row's class axis is cut into pieces (falls back to whole rows
    # if its scratch cannot be allocated)
    cdef int n_chunks = chunks_per_row(n_rows, n_classes, n_threads)
    cdef bint done = False
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            if n_chunks > 1:
                done = split_label_rows(<const float*>x_data, label_data,
                                        <const float*>weight_data, ignore_index, label_smoothing,
                                        n_rows, n_classes, <float*>loss_data, <float*>grad_data,
                                        grad_scale, n_chunks, n_threads)
            if not done:
                label_rows(<const float*>x_data, label_data, <const float*>weight_data,
                           ignore_index, label_smoothing, n_rows, n_classes, <float*>loss_data,
                           <float*>grad_data, grad_scale, n_threads)
        else:
            if n_chunks > 1:
                done = split_label_rows(<const double*>x_data, label_data,
                                        <const double*>weight_data, ignore_index,
                                        label_smoothing, n_rows, n_classes, <double*>loss_data,
                                        <double*>grad_data, grad_scale, n_chunks, n_threads)
            if not done:
                label_rows(<const double*>x_data, label_data, <const double*>weight_data,
                           ignore_index, label_smoothing, n_rows, n_classes, <double*>loss_data,
                           <double*>grad_data, grad_scale, n_threads)


cdef void probability_rows(const real* x, const real* target, const real* weight,
                           double label_smoothing, Py_ssize_t n_rows, Py_ssize_t n_classes,
                           real* loss_out, real* grad_out, double grad_scale,
                           int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(n_rows, part, n_parts)
        end = range_start(n_rows, part + 1, n_parts)
        if real is float:
            lc_cross_entropy_probs_rows_f32(
                x + first * n_classes, target + first * n_classes, weight, label_smoothing,
                end - first, n_classes, loss_out + first,
                offset_or_null(grad_out, first * n_classes), grad_scale)
        else:
            lc_cross_entropy_probs_rows_f64(
                x + first * n_classes, target + first * n_classes, weight, label_smoothing,
                end - first, n_classes, loss_out + first,
                offset_or_null(grad_out, first * n_classes), grad_scale)


def cross_entropy_probs(cnp.ndarray x not None, cnp.ndarray target not None,
                        cnp.ndarray weight not None, double label_smoothing,
                        cnp.ndarray loss_out not None, cnp.ndarray grad_out not None,
                        double grad_scale, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(target, "target", type_num, n_rows, n_classes, False)
    expect(weight, "weight", type_num, n_classes, -1, False)
    expect(loss_out, "loss_out", type_num, n_rows, -1, True)
    if cnp.PyArray_SIZE(grad_out) != 0:
        expect(grad_out, "grad_out", type_num, n_rows, n_classes, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        loss_out[:] = 0
        return
    n_threads = usable_threads(n_threads)
    cdef void* x_data = data(x)
    cdef void* target_data = data(target)
    cdef void* weight_data = data(weight)
    cdef void* loss_data = data(loss_out)
    cdef void* grad_data = data_or_null(grad_out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            probability_rows(<const float*>x_data, <const float*>target_data,
                             <const float*>weight_data, label_smoothing, n_rows, n_classes,
                             <float*>loss_data, <float*>grad_data, grad_scale, n_threads)
        else:
            probability_rows(<const double*>x_data, <const double*>target_data,
                             <const double*>weight_data, label_smoothing, n_rows, n_classes,
                             <double*>loss_data, <double*>grad_data, grad_scale, n_threads)


cdef void binary_rows(const real* x, const real* target, const real* weight,
                      Py_ssize_t weight_stride, const real* pos_weight,
                      Py_ssize_t pos_weight_stride, Py_ssize_t n_rows, Py_ssize_t n_classes,
                      real* loss_out, Py_ssize_t loss_row_length, bint loss_row_sums,
                      real* grad_out, double grad_scale, int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(n_rows, n_classes, n_threads)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(n_rows, part, n_parts)
        end = range_start(n_rows, part + 1, n_parts)
        if real is float:
            lc_bce_rows_f32(
                x + first * n_classes, target + first * n_classes, weight + first * weight_stride,
                weight_stride, pos_weight + first * pos_weight_stride, pos_weight_stride,
                end - first, n_classes, loss_out + first * loss_row_length, loss_row_sums,
                offset_or_null(grad_out, first * n_classes), grad_scale)
        else:
            lc_bce_rows_f64(
                x + first * n_classes, target + first * n_classes, weight + first * weight_stride,
                weight_stride, pos_weight + first * pos_weight_stride, pos_weight_stride,
                end - first, n_classes, loss_out + first * loss_row_length, loss_row_sums,
                offset_or_null(grad_out, first * n_classes), grad_scale)


def bce_with_logits(cnp.ndarray x not None, cnp.ndarray target not None,
                    cnp.ndarray weight not None, cnp.ndarray pos_weight not None,
                    cnp.ndarray loss_out not None, cnp.ndarray grad_out not None,
                    double grad_scale, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(target, "target", type_num, n_rows, n_classes, False)
    # a (1, C) weight serves every row: stride 0
    cdef Py_ssize_t weight_rows = 1 if dim(weight, 0) == 1 else n_rows
    cdef Py_ssize_t pos_weight_rows = 1 if dim(pos_weight, 0) == 1 else n_rows
    expect(weight, "weight", type_num, weight_rows, n_classes, False)
    expect(pos_weight, "pos_weight", type_num, pos_weight_rows, n_classes, False)
    # loss_out (n, 1) with C != 1 asks for each row's sum
    cdef bint loss_row_sums = dim(loss_out, 1) == 1 and n_classes != 1
    cdef Py_ssize_t loss_row_length = 1 if loss_row_sums else n_classes
    expect(loss_out, "loss_out", type_num, n_rows, loss_row_length, True)
    if cnp.PyArray_SIZE(grad_out) != 0:
        expect(grad_out, "grad_out", type_num, n_rows, n_classes, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        if loss_row_sums:
            loss_out[:, :] = 0
        return
    n_threads = usable_threads(n_threads)
    cdef Py_ssize_t weight_stride = 0 if weight_rows == 1 else n_classes
    cdef Py_ssize_t pos_weight_stride = 0 if pos_weight_rows == 1 else n_classes
    cdef void* x_data = data(x)
    cdef void* target_data = data(target)
    cdef void* weight_data = data(weight)
    cdef void* pos_weight_data = data(pos_weight)
    cdef void* loss_data = data(loss_out)
    cdef void* grad_data = data_or_null(grad_out)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            binary_rows(<const float*>x_data, <const float*>target_data,
                        <const float*>weight_data, weight_stride,
                        <const float*>pos_weight_data, pos_weight_stride, n_rows, n_classes,
                        <float*>loss_data, loss_row_length, loss_row_sums, <float*>grad_data,
                        grad_scale, n_threads)
        else:
            binary_rows(<const double*>x_data, <const double*>target_data,
                        <const double*>weight_data, weight_stride,
                        <const double*>pos_weight_data, pos_weight_stride, n_rows, n_classes,
                        <double*>loss_data, loss_row_length, loss_row_sums, <double*>grad_data,
                        grad_scale, n_threads)
