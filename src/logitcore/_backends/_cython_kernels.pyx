"""Cython/OpenMP kernels of logitcore. Private: not a public API.

Use logitcore's public functions. This module implements the kernel contract described in
the docstring of ``logitcore._backends``: every function takes C-contiguous float32 or
float64 arrays that the Python layer has already validated and allocated, writes into
its outputs and returns None.

Layering (as in scikit-learn's ``_loss``): the arithmetic lives in the ``lc_*.h`` headers
(declared in ``_cython_kernels.pxd``), in C functions that gcc vectorises and compiles for
several instruction sets (picked at run time, see ``SIMD_PATH``): ``lc_math.h`` (exp, log,
log1p), ``lc_row_state.h`` (the exp-sum row state and its merge), ``lc_row_ops.h`` (what
each op computes on rows and on blocks of a long row, and the dispatch on the op). Sizes
and coefficients come from ``kernel_constants.py`` through the generated ``lc_constants.h``.
This file validates each call's operands and runs it on one of the schedules of
docs/architecture.md: ``rows`` (contiguous ranges of rows, one per thread; narrow rows are
tiled by the C row functions), ``flat`` (elementwise kernels: rows of one element) and
``class_split`` (rows longer than one block, in blocks merged in block order, so that the
bits do not depend on the thread count).

Entry points take plain ndarrays and read their data pointers through NumPy's C API:
typed memoryviews of fused types cost more per call to acquire and dispatch than the
arithmetic of a 1000-class row. The dtype, layout and shape of every operand
are still checked (cheap field reads), so a caller that breaks the contract gets a
ValueError, not a write out of bounds.
"""

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import os

from logitcore._backends import gnu_openmp

cnp.import_array()

# The C declarations (constants, row state, row operations) are in _cython_kernels.pxd,
# which Cython reads automatically for this module.

SUPPORTED_KERNELS = frozenset(
    {
        "logsumexp",
        "logsumexp_scaled",
        "entropy",
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
        "score_multiclass",
        "score_binary",
        "score_multilabel",
        "temperature_nll",
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

cdef lc_input_format input_format(cnp.ndarray a):
    """How an input read like x is stored: LC_INPUT_FLOAT16 / LC_INPUT_BFLOAT16 for half
    precision in native byte order (read in 16 bits, widened to float by the schedules,
    lc_half.h), else LC_INPUT_FLOAT. bfloat16 (ml_dtypes) is recognised by its name."""
    if cnp.PyArray_ITEMSIZE(a) != 2 or not cnp.PyArray_ISNOTSWAPPED(a):
        return LC_INPUT_FLOAT
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT16:
        return LC_INPUT_FLOAT16
    if (<object>a).dtype.name == "bfloat16":
        return LC_INPUT_BFLOAT16
    return LC_INPUT_FLOAT


cdef int element_type(cnp.ndarray x) except -1:
    """NPY_FLOAT or NPY_DOUBLE: the kernel's element type, read off its first operand
    (half input computes in float)."""
    cdef int type_num = cnp.PyArray_TYPE(x)
    if input_format(x) != LC_INPUT_FLOAT:
        return cnp.NPY_FLOAT
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


cdef int expect_input(cnp.ndarray a, str name, int type_num, Py_ssize_t n_rows,
                      Py_ssize_t n_cols) except -1:
    """expect() for an input read like x (x, b, target, dy, y): in a float call it may be
    half precision as well."""
    if type_num == cnp.NPY_FLOAT and input_format(a) != LC_INPUT_FLOAT:
        return expect(a, name, cnp.PyArray_TYPE(a), n_rows, n_cols, False)
    return expect(a, name, type_num, n_rows, n_cols, False)


cdef inline int expect_gradient(cnp.ndarray grad_out, int type_num, Py_ssize_t n_rows,
                                Py_ssize_t n_classes) except -1:
    """The optional gradient output: empty (no gradient wanted) or like x."""
    if cnp.PyArray_SIZE(grad_out) != 0:
        expect(grad_out, "grad_out", type_num, n_rows, n_classes, True)
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



# ---------------------------------------------------------------- what a call hands a schedule
# lc_operands (lc_row_ops.h): the op (LC_OP_*), its sizes, arrays and scalars. The C side
# dispatches on the op (lc_rows_f32 / _f64, lc_block_pass_f32 / _f64); the schedules
# below only decide which rows or blocks run where.

cdef inline void init_operands(lc_operands* o, lc_op op, cnp.ndarray x, Py_ssize_t n_rows,
                               Py_ssize_t n_classes, void* out, Py_ssize_t out_row_length):
    # every field, so that no op reads an uninitialised one (cheaper than a memset)
    o.op = op
    o.y = NULL
    o.labels = NULL
    o.weight = NULL
    o.pos_weight = NULL
    o.weight_stride = 0
    o.pos_weight_stride = 0
    o.out2 = NULL
    o.loss_row_sums = 0
    o.ignore_index = 0
    o.label_smoothing = 0.0
    o.grad_scale = 0.0
    o.prefetch_next_block = 0
    o.score = NULL
    o.n_rows = n_rows
    o.n_classes = n_classes
    o.x = data(x)
    o.out = out
    o.out_row_length = out_row_length


cdef inline real* offset_or_null(real* base, Py_ssize_t offset) noexcept nogil:
    return base + offset if base != NULL else NULL


# ---------------------------------------------------------------- schedule: rows
#
# Whole rows in parallel: the rows are cut into one contiguous range per thread
# (schedule(static)) and the op's C row function runs on each range. Rows narrower than
# LC_NARROW_MAX_CLASSES are tiled by the row functions themselves (row tiles of
# LC_ROW_TILE_ELEMENTS, vectorised across rows); the flat kernels are rows of one element.

cdef inline void call_rows(const lc_operands* o, const real* x, Py_ssize_t first,
                           Py_ssize_t count) noexcept nogil:
    """The C row function of ``o.op`` on the rows [first, first + count) (x: o.x, typed)."""
    if real is float:
        lc_rows_f32(o, first, count)
    else:
        lc_rows_f64(o, first, count)


cdef void run_rows(const lc_operands* o, const real* x, int n_threads) noexcept nogil:
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(o.n_rows, o.n_classes, n_threads)
    if n_parts == 1:  # no parallel region at all: it costs more than a small input
        call_rows(o, x, 0, o.n_rows)
        return
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(o.n_rows, part, n_parts)
        end = range_start(o.n_rows, part + 1, n_parts)
        call_rows(o, x, first, end - first)


# Half input (lc_half.h): each thread widens its rows HALF_CHUNK_ELEMENTS at a time into
# a float buffer and runs the op's C row function on a window over it, so the row
# functions read float as for float32 input (and give the same bits).
cdef Py_ssize_t HALF_CHUNK_ELEMENTS = 4 * LC_BLOCK_CLASSES


cdef inline const void* widened(lc_input_format format, const void* source, float* buffer,
                                Py_ssize_t first, Py_ssize_t n) noexcept nogil:
    """The elements [first, first + n) of an input as the row functions read them: the
    input itself when it is float; half input widened into buffer, through a window."""
    if format == LC_INPUT_FLOAT:
        return source
    lc_widen_span(format, <const uint16_t*>source + first, buffer, n)
    return lc_window(buffer, first)


cdef inline float* half_buffer(lc_input_format format, Py_ssize_t n) noexcept nogil:
    return <float*>malloc(n * sizeof(float)) if format != LC_INPUT_FLOAT else NULL


cdef int widened_rows(const lc_operands* o, lc_input_format x_format,
                      lc_input_format y_format, Py_ssize_t first,
                      Py_ssize_t end) noexcept nogil:
    """The rows [first, end) of o, x and y widened chunk by chunk; 1 without memory."""
    cdef Py_ssize_t C = o.n_classes, start, count
    cdef Py_ssize_t chunk = max(1, HALF_CHUNK_ELEMENTS // C)
    cdef lc_operands local = o[0]
    cdef float* x_buffer = half_buffer(x_format, chunk * C)
    cdef float* y_buffer = half_buffer(y_format, chunk * C)
    if ((x_format != LC_INPUT_FLOAT and x_buffer == NULL)
            or (y_format != LC_INPUT_FLOAT and y_buffer == NULL)):
        free(x_buffer); free(y_buffer)
        return 1
    start = first
    while start < end:
        count = min(chunk, end - start)
        local.x = widened(x_format, o.x, x_buffer, start * C, count * C)
        local.y = widened(y_format, o.y, y_buffer, start * C, count * C)
        lc_rows_f32(&local, start, count)
        start += count
    free(x_buffer); free(y_buffer)
    return 0


cdef int run_rows_half(const lc_operands* o, int n_threads, lc_input_format x_format,
                       lc_input_format y_format) noexcept nogil:
    """run_rows for half input; -1 if a buffer cannot be allocated."""
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(o.n_rows, o.n_classes, n_threads)
    cdef int failed = 0
    if n_parts == 1:
        return -widened_rows(o, x_format, y_format, 0, o.n_rows)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(o.n_rows, part, n_parts)
        end = range_start(o.n_rows, part + 1, n_parts)
        failed += widened_rows(o, x_format, y_format, first, end)
    return -1 if failed else 0


# temperature= (a kernel's row_scale, 1/T): at the same load point each row (or range of
# blocks of one row) is copied -- half input widened -- and multiplied by its row's factor
# into a per-thread buffer of the call's type, and the unchanged C row functions read a
# window on it. Without a row_scale (factors NULL) no schedule changes. The gradient of
# the losses is with respect to the unscaled logits: one factor for every row rides on
# grad_scale (schedule); per-row factors multiply each gradient row of a chunk right after
# its row function wrote it, while it is in cache (class split: the row's own grad_scale).
cdef struct row_scaling:
    const double* factors  # NULL: no temperature
    bint per_row           # factors[row], else factors[0] for every row


cdef inline double factor_of(const row_scaling* s, Py_ssize_t row) noexcept nogil:
    return s.factors[row] if s.per_row else s.factors[0]


cdef inline const void* scaled(const row_scaling* s, lc_input_format format, const void* source,
                               real* buffer, Py_ssize_t row, Py_ssize_t first,
                               Py_ssize_t n) noexcept nogil:
    """The elements [first, first + n) of the input (all in row ``row``) times the row's
    factor, in buffer, through a window: the row functions index it as they index x."""
    if real is float:
        lc_scale_span_f32(format, source, first, buffer, n, <float>factor_of(s, row))
        return lc_window(buffer, first)
    else:
        lc_scale_span_f64(<const double*>source, first, buffer, n, factor_of(s, row))
        return lc_window_f64(buffer, first)


cdef inline bint scales_gradient_rows(const lc_operands* o, const row_scaling* s) noexcept nogil:
    return s.factors != NULL and s.per_row and o.out2 != NULL and (
        o.op == LC_OP_CROSS_ENTROPY_LABELS or o.op == LC_OP_CROSS_ENTROPY_PROBS
        or o.op == LC_OP_BCE_WITH_LOGITS)


cdef int scaled_rows(const lc_operands* o, const real* x, const row_scaling* s,
                     lc_input_format x_format, lc_input_format y_format, Py_ssize_t first,
                     Py_ssize_t end) noexcept nogil:
    """The rows [first, end) of o, x scaled (and y widened) chunk by chunk; 1 without
    memory."""
    cdef Py_ssize_t C = o.n_classes, start, count, r, j
    cdef Py_ssize_t chunk = max(1, HALF_CHUNK_ELEMENTS // C)
    cdef lc_operands local = o[0]
    cdef real* buffer = <real*>malloc(chunk * C * sizeof(real))
    cdef float* y_buffer = half_buffer(y_format, chunk * C)
    cdef real* grad = <real*>o.out2
    cdef real factor
    cdef bint scale_grad = scales_gradient_rows(o, s)
    if buffer == NULL or (y_format != LC_INPUT_FLOAT and y_buffer == NULL):
        free(buffer); free(y_buffer)
        return 1
    start = first
    while start < end:
        count = min(chunk, end - start)
        for r in range(count):
            scaled(s, x_format, o.x, buffer + r * C, start + r, (start + r) * C, C)
        if real is float:
            local.x = lc_window(buffer, start * C)
        else:
            local.x = lc_window_f64(buffer, start * C)
        local.y = widened(y_format, o.y, y_buffer, start * C, count * C)
        call_rows(&local, x, start, count)
        if scale_grad:
            for r in range(start, start + count):
                factor = <real>factor_of(s, r)
                for j in range(r * C, (r + 1) * C):
                    grad[j] *= factor
        start += count
    free(buffer); free(y_buffer)
    return 0


cdef int run_rows_scaled(const lc_operands* o, const real* x, int n_threads,
                         const row_scaling* s, lc_input_format x_format,
                         lc_input_format y_format) noexcept nogil:
    """run_rows with a row_scale; -1 if a buffer cannot be allocated."""
    cdef Py_ssize_t part, first, end
    cdef int n_parts = threads_for(o.n_rows, o.n_classes, n_threads)
    cdef int failed = 0
    if n_parts == 1:
        return -scaled_rows(o, x, s, x_format, y_format, 0, o.n_rows)
    for part in prange(n_parts, num_threads=n_parts, schedule="static"):
        first = range_start(o.n_rows, part, n_parts)
        end = range_start(o.n_rows, part + 1, n_parts)
        failed += scaled_rows(o, x, s, x_format, y_format, first, end)
    return -1 if failed else 0


# ---------------------------------------------------------------- schedule: class_split
#
# Rows longer than one block (LC_BLOCK_CLASSES classes) of logsumexp, softmax, log_softmax
# and cross-entropy with labels are processed block by block: a pass over the row's blocks
# gives one state per block (lc_row_state.h), the states are merged in block order, and ops
# with a same-shape output make a second pass that writes each block given the row's state
# (cross-entropy first takes the blocks' maxima, then its sums for the row's max). Which
# thread ran a block does not enter the arithmetic, so the bits do not depend on the thread
# count. With fewer long rows than threads the blocks of each row are spread over the
# threads; otherwise each thread takes whole rows and runs their blocks in order (a row's
# passes then follow each other while it is in cache). See docs/architecture.md.

cdef inline bint takes_class_split(const lc_operands* o) noexcept nogil:
    return o.n_classes > LC_BLOCK_CLASSES and (
        o.op == LC_OP_LOGSUMEXP or o.op == LC_OP_SOFTMAX or o.op == LC_OP_LOG_SOFTMAX
        or o.op == LC_OP_CROSS_ENTROPY_LABELS)


cdef inline void* scratch_part(void* scratch, Py_ssize_t offset,
                               const row_scaling* s, const real* x) noexcept nogil:
    """scratch + offset elements: of the call's type with a row_scale, else floats."""
    if scratch == NULL:
        return NULL
    return <char*>scratch + offset * (sizeof(real) if s.factors != NULL else sizeof(float))


cdef void block_pass(const lc_operands* o, const real* x, lc_block_pass step, Py_ssize_t row,
                     Py_ssize_t n_blocks, lc_block_state* states, const lc_row_result* result,
                     int n_threads, lc_input_format x_format, void* half_scratch,
                     const row_scaling* s) noexcept nogil:
    """One pass over every block of one row: a contiguous range of blocks per thread
    (half_scratch: a row's worth of loaded values per thread, for half input or a
    row_scale)."""
    cdef Py_ssize_t part, first, end
    cdef Py_ssize_t row_floats = n_blocks * LC_BLOCK_CLASSES
    if n_threads == 1:
        block_range_pass(o, x, step, row, 0, n_blocks, states, result, x_format, half_scratch,
                         s)
        return
    for part in prange(n_threads, num_threads=n_threads, schedule="static"):
        first = range_start(n_blocks, part, n_threads)
        end = range_start(n_blocks, part + 1, n_threads)
        block_range_pass(o, x, step, row, first, end, states, result, x_format,
                         scratch_part(half_scratch, part * row_floats, s, x), s)


cdef inline void block_range_pass(const lc_operands* o, const real* x, lc_block_pass step,
                                  Py_ssize_t row, Py_ssize_t first, Py_ssize_t end,
                                  lc_block_state* states, const lc_row_result* result,
                                  lc_input_format x_format,
                                  void* half_scratch, const row_scaling* s) noexcept nogil:
    cdef lc_operands local
    cdef Py_ssize_t begin, stop
    if s.factors != NULL:  # the blocks scaled into the scratch, the pass reads a window
        local = o[0]
        begin = row * o.n_classes + first * LC_BLOCK_CLASSES
        stop = min(row * o.n_classes + end * LC_BLOCK_CLASSES, (row + 1) * o.n_classes)
        local.x = scaled(s, x_format, o.x, <real*>half_scratch, row, begin, stop - begin)
        if real is float:
            lc_block_pass_f32(&local, step, row, first, end, states, result)
        else:
            lc_block_pass_f64(&local, step, row, first, end, states, result)
    elif x_format != LC_INPUT_FLOAT:  # the blocks widened, the pass reads a window on them
        local = o[0]
        begin = row * o.n_classes + first * LC_BLOCK_CLASSES
        stop = min(row * o.n_classes + end * LC_BLOCK_CLASSES, (row + 1) * o.n_classes)
        local.x = widened(x_format, o.x, <float*>half_scratch, begin, stop - begin)
        lc_block_pass_f32(&local, step, row, first, end, states, result)
    elif real is float:
        lc_block_pass_f32(o, step, row, first, end, states, result)
    else:
        lc_block_pass_f64(o, step, row, first, end, states, result)


cdef void split_row(const lc_operands* o, const real* x, Py_ssize_t row, Py_ssize_t n_blocks,
                    lc_block_state* states, int n_threads, lc_input_format x_format,
                    void* half_scratch, const row_scaling* s) noexcept nogil:
    """One long row of ``o.op``, block by block (its blocks on n_threads threads)."""
    cdef lc_row_result result
    cdef lc_ce_label_row loss
    cdef lc_ce_label_params ce = o.ce
    cdef real label_logit
    cdef Py_ssize_t C = o.n_classes
    cdef real* out = <real*>o.out
    cdef real* grad = <real*>o.out2
    cdef int64_t label
    cdef bint keep
    cdef double shifted_label_logit, label_weight
    memset(&result, 0, sizeof(lc_row_result))
    block_pass(o, x, LC_STATE_PASS, row, n_blocks, states, &result, n_threads, x_format,
               half_scratch, s)
    if o.op != LC_OP_CROSS_ENTROPY_LABELS:
        result.state = lc_block_states_merge(states, n_blocks)
        if o.op == LC_OP_LOGSUMEXP:
            out[row] = <real>lc_row_state_logsumexp(result.state)
            return
        if o.op == LC_OP_SOFTMAX:
            result.normaliser = lc_row_state_normaliser(result.state)
        else:
            result.normaliser = lc_row_state_log_normaliser(result.state)
        block_pass(o, x, LC_WRITE_PASS, row, n_blocks, states, &result, n_threads, x_format,
                   half_scratch, s)
        return
    result.state.max = lc_block_states_max(states, n_blocks)
    label = o.labels[row]
    keep = label != o.ignore_index
    if not keep:
        label = 0
    # everything the loss reads from x, before the sums pass may overwrite it (grad may be x)
    if x_format != LC_INPUT_FLOAT:
        label_logit = lc_widen_one(x_format, <const uint16_t*>o.x, row * C + label)
    else:
        label_logit = x[row * C + label]
    if s.factors != NULL:  # as the blocks were loaded, and the row's gradient factor
        label_logit = label_logit * <real>factor_of(s, row)
        if s.per_row:
            ce.grad_scale *= factor_of(s, row)
    shifted_label_logit = <double>label_logit - result.state.max
    label_weight = (<const real*>o.weight)[label]
    block_pass(o, x, LC_SUMS_PASS, row, n_blocks, states, &result, n_threads, x_format,
               half_scratch, s)
    result.state = lc_block_states_add(states, n_blocks, result.state.max)
    loss = lc_ce_label_row_finish(&ce, result.state.max, result.state.sums,
                                  shifted_label_logit, result.state.extra, keep, label_weight,
                                  grad[row * C + label] if grad != NULL else 0.0)
    out[row] = <real>loss.loss
    if grad == NULL:
        return
    result.exp_factor = loss.exp_factor
    result.weight_factor = loss.weight_factor
    block_pass(o, x, LC_WRITE_PASS, row, n_blocks, states, &result, n_threads, x_format,
               half_scratch, s)
    if keep:
        grad[row * C + label] = <real>loss.label_grad


cdef int class_split(lc_operands* o, const real* x, int n_threads,
                     lc_input_format x_format, const row_scaling* s) noexcept nogil:
    """Every row of ``o``, block by block; -1 if the scratch cannot be allocated."""
    cdef Py_ssize_t n_blocks = (o.n_classes + LC_BLOCK_CLASSES - 1) // LC_BLOCK_CLASSES
    cdef Py_ssize_t row, part, first, end
    cdef int row_threads = threads_for(o.n_rows, o.n_classes, n_threads)
    cdef int block_threads = threads_for(n_blocks, LC_BLOCK_CLASSES, n_threads)
    cdef bint split_blocks = o.n_rows < n_threads and block_threads > 1
    cdef int n_parts = 1 if split_blocks else row_threads
    cdef lc_block_state* states = <lc_block_state*>malloc(
        n_parts * n_blocks * sizeof(lc_block_state))
    # half input or a row_scale: a row's worth of loaded values per thread (parts of rows,
    # or of blocks)
    cdef Py_ssize_t row_floats = n_blocks * LC_BLOCK_CLASSES
    cdef Py_ssize_t scratch_values = max(n_parts, block_threads if split_blocks else 1) * row_floats
    cdef void* half_scratch
    if s.factors != NULL:
        half_scratch = malloc(scratch_values * sizeof(real))
    else:
        half_scratch = half_buffer(x_format, scratch_values)
    if states == NULL or ((x_format != LC_INPUT_FLOAT or s.factors != NULL)
                          and half_scratch == NULL):
        free(states); free(half_scratch)
        return -1
    if o.op == LC_OP_CROSS_ENTROPY_LABELS:
        if real is float:
            o.ce = lc_ce_label_setup_f32(<const float*>o.weight, o.n_classes,
                                         o.label_smoothing, o.grad_scale)
        else:
            o.ce = lc_ce_label_setup_f64(<const double*>o.weight, o.n_classes,
                                         o.label_smoothing, o.grad_scale)
    # whole rows per thread stream from memory: prefetching the next block pays there
    o.prefetch_next_block = not split_blocks
    if split_blocks:
        for row in range(o.n_rows):
            split_row(o, x, row, n_blocks, states, block_threads, x_format, half_scratch, s)
    elif n_parts == 1:
        for row in range(o.n_rows):
            split_row(o, x, row, n_blocks, states, 1, x_format, half_scratch, s)
    else:
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            first = range_start(o.n_rows, part, n_parts)
            end = range_start(o.n_rows, part + 1, n_parts)
            for row in range(first, end):
                split_row(o, x, row, n_blocks, states + part * n_blocks, 1, x_format,
                          scratch_part(half_scratch, part * row_floats, s, x), s)
    free(states)
    free(half_scratch)
    return 0


# ---------------------------------------------------------------- scoring: the class split
#
# score_multiclass on fewer rows than threads, rows longer than one block: each row's blocks
# are cut into one contiguous range per thread (a part). A part's block states go to the
# row's array of block states and its NaN flag, label count and top-k heap to its own
# lc_score_part; then the parts merge in order (exactly: flags, integer counts and a top k
# under a total order) and the block states in block order (lc_score_states_merge), as the
# rows schedule merges the same block states of a whole row (lc_score_multiclass_rows). So
# the bits do not depend on the thread count. Blocks are not prefetched: the row's parts are
# read by all threads at once.

cdef int score_class_split(lc_operands* o, const real* x, int n_parts) noexcept nogil:
    """Every row of score_multiclass, its blocks on n_parts threads; -1 without scratch."""
    cdef lc_score_multiclass_fields* f = <lc_score_multiclass_fields*>o.score
    cdef Py_ssize_t n_blocks = (o.n_classes + LC_BLOCK_CLASSES - 1) // LC_BLOCK_CLASSES
    cdef Py_ssize_t capacity = max(f.heap_capacity, 1)
    cdef Py_ssize_t row, part, first, end
    cdef lc_score_state* states = <lc_score_state*>malloc(n_blocks * sizeof(lc_score_state))
    cdef lc_score_part* parts = <lc_score_part*>malloc(n_parts * sizeof(lc_score_part))
    cdef lc_ranked* heaps = <lc_ranked*>malloc(n_parts * capacity * sizeof(lc_ranked))
    if states == NULL or parts == NULL or heaps == NULL:
        free(states); free(parts); free(heaps)
        return -1
    for row in range(o.n_rows):
        for part in prange(n_parts, num_threads=n_parts, schedule="static"):
            lc_score_part_start(&parts[part], heaps + part * capacity, f.heap_capacity)
            first = range_start(n_blocks, part, n_parts)
            end = range_start(n_blocks, part + 1, n_parts)
            if real is float:
                lc_score_multiclass_blocks_f32(f, x, row, o.n_classes, first, end, states,
                                               &parts[part])
            else:
                lc_score_multiclass_blocks_f64(f, x, row, o.n_classes, first, end, states,
                                               &parts[part])
        if real is float:
            lc_score_multiclass_row_finish_f32(f, x, row, o.n_classes, states, n_blocks, parts,
                                               n_parts)
        else:
            lc_score_multiclass_row_finish_f64(f, x, row, o.n_classes, states, n_blocks, parts,
                                               n_parts)
    free(states); free(parts); free(heaps)
    return 0


# ---------------------------------------------------------------- the schedule of a call

cdef int schedule(lc_operands* o, const real* x, int n_threads, lc_input_format x_format,
                  lc_input_format y_format, const row_scaling* s) noexcept nogil:
    cdef int block_threads
    if s.factors != NULL and not s.per_row:  # one 1/T for every row: on the gradient's scale
        o.grad_scale *= s.factors[0]
    if o.op == LC_OP_SCORE_MULTICLASS:  # float input only (op_table.HALF_INPUT_KERNELS)
        if o.n_classes > LC_BLOCK_CLASSES and o.n_rows < n_threads:
            block_threads = threads_for((o.n_classes + LC_BLOCK_CLASSES - 1) // LC_BLOCK_CLASSES,
                                        LC_BLOCK_CLASSES, n_threads)
            if block_threads > 1:
                return score_class_split(o, x, block_threads)
        run_rows(o, x, n_threads)
        return -1 if (<lc_score_multiclass_fields*>o.score).out_of_memory else 0
    if takes_class_split(o):
        return class_split(o, x, n_threads, x_format, s)
    if s.factors != NULL:
        return run_rows_scaled(o, x, n_threads, s, x_format, y_format)
    if x_format != LC_INPUT_FLOAT or y_format != LC_INPUT_FLOAT:
        return run_rows_half(o, n_threads, x_format, y_format)
    run_rows(o, x, n_threads)
    return 0


cdef int run(lc_operands* o, int type_num, int n_threads,
             lc_input_format x_format=LC_INPUT_FLOAT,
             lc_input_format y_format=LC_INPUT_FLOAT, cnp.ndarray row_scale=None) except -1:
    """Run one validated call on its schedule (the GIL released). x_format, y_format: how
    o.x and o.y are stored (half input is widened by the schedules); row_scale: the
    kernel's (op_table; None or size 0: none)."""
    cdef int status
    cdef row_scaling s
    s.factors = NULL
    s.per_row = False
    if row_scale is not None and row_scale.size > 0:
        expect(row_scale, "row_scale", cnp.NPY_DOUBLE,
               1 if dim(row_scale, 0) == 1 else o.n_rows, -1, False)
        s.factors = <const double*>data(row_scale)
        s.per_row = dim(row_scale, 0) != 1
    n_threads = usable_threads(n_threads)
    with nogil:
        if type_num == cnp.NPY_FLOAT:
            status = schedule(o, <const float*>o.x, n_threads, x_format, y_format, &s)
        else:
            status = schedule(o, <const double*>o.x, n_threads, x_format, y_format, &s)
    if status != 0:
        raise MemoryError("cython kernel: no memory for its scratch (block states, top-k heap)")
    return 0


# ---------------------------------------------------------------- entry points

def logsumexp(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1,
              cnp.ndarray row_scale=None):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1), row
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect(out, "out", type_num, n_rows, -1, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = -INFINITY
        return
    cdef lc_operands o
    init_operands(&o, LC_OP_LOGSUMEXP, x, n_rows, n_classes, data(out), 1)
    run(&o, type_num, n_threads, input_format(x), LC_INPUT_FLOAT, row_scale)


def entropy(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    # Whole rows only (the rows schedule); see lc_entropy_rows.
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect(out, "out", type_num, n_rows, -1, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = NAN
        return
    cdef lc_operands o
    init_operands(&o, LC_OP_ENTROPY, x, n_rows, n_classes, data(out), 1)
    run(&o, type_num, n_threads, input_format(x))


def softmax(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1,
            cnp.ndarray row_scale=None):
    _same_shape_entry(LC_OP_SOFTMAX, x, None, out, n_threads, row_scale)


def log_softmax(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1,
                cnp.ndarray row_scale=None):
    _same_shape_entry(LC_OP_LOG_SOFTMAX, x, None, out, n_threads, row_scale)


def softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None, cnp.ndarray out not None,
                     int n_threads=1):
    _same_shape_entry(LC_OP_SOFTMAX_BACKWARD, dy, y, out, n_threads)


def log_softmax_backward(cnp.ndarray dy not None, cnp.ndarray y not None,
                         cnp.ndarray out not None, int n_threads=1):
    _same_shape_entry(LC_OP_LOG_SOFTMAX_BACKWARD, dy, y, out, n_threads)


cdef int _same_shape_entry(lc_op op, cnp.ndarray x, cnp.ndarray y, cnp.ndarray out,
                           int n_threads, cnp.ndarray row_scale=None) except -1:
    """softmax, log_softmax (y None) and their backward kernels (x is dy): out of x's shape."""
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "dy" if y is not None else "x", type_num, n_rows, n_classes)
    if y is not None:
        expect_input(y, "y", type_num, n_rows, n_classes)
    expect(out, "out", type_num, n_rows, n_classes, True)
    if n_rows == 0 or n_classes == 0:
        return 0
    cdef lc_operands o
    init_operands(&o, op, x, n_rows, n_classes, data(out), n_classes)
    if y is not None:
        o.y = data(y)
    return run(&o, type_num, n_threads, input_format(x),
               input_format(y) if y is not None else LC_INPUT_FLOAT, row_scale)


# ---------------------------------------------------------------- small calls
#
# A whole public call on a small plain array, for logitcore._ops: the checks the Python
# layer would make, the output's allocation and the kernel in one C function, because for
# a 1000-class row the Python around the kernel took as long as the kernel. Each returns
# None when x is not the plain case (an ndarray, not a subclass, 2-D, C-contiguous,
# float32 or float64 in native byte order, no empty axis, under SMALL_CALL_ELEMENTS
# elements); the caller then takes the full path. The call runs on the calling thread.

def small_logsumexp(x, int n_threads):
    return small_rows_call(LC_OP_LOGSUMEXP, x, True, n_threads)


def small_softmax(x, int n_threads):
    return small_rows_call(LC_OP_SOFTMAX, x, False, n_threads)


def small_log_softmax(x, int n_threads):
    return small_rows_call(LC_OP_LOG_SOFTMAX, x, False, n_threads)


cdef object small_rows_call(lc_op op, object x, bint row_output, int n_threads):
    if type(x) is not cnp.ndarray:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int type_num = cnp.PyArray_TYPE(a)
    if (cnp.PyArray_NDIM(a) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)
            or (type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE)):
        return None
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(a)
    if shape[0] == 0 or shape[1] == 0 or shape[0] * shape[1] >= LC_SMALL_CALL_ELEMENTS:
        return None
    cdef cnp.ndarray result = cnp.PyArray_EMPTY(1 if row_output else 2, shape, type_num, 0)
    cdef lc_operands o
    init_operands(&o, op, a, shape[0], shape[1], data(result),
                  1 if row_output else shape[1])
    run(&o, type_num, n_threads)
    return result


def sigmoid(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _flat_entry(LC_OP_SIGMOID, x, out, n_threads)


def log_sigmoid(cnp.ndarray x not None, cnp.ndarray out not None, int n_threads=1):
    _flat_entry(LC_OP_LOG_SIGMOID, x, out, n_threads)


cdef int _flat_entry(lc_op op, cnp.ndarray x, cnp.ndarray out, int n_threads) except -1:
    """The flat schedule: an elementwise kernel is the rows schedule on rows of one element
    (each thread gets one contiguous span)."""
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n = dim(x, 0)
    expect_input(x, "x", type_num, n, -1)
    expect(out, "out", type_num, n, -1, True)
    if n == 0:
        return 0
    cdef lc_operands o
    init_operands(&o, op, x, n, 1, data(out), 1)
    return run(&o, type_num, n_threads, input_format(x))


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

def logsumexp_scaled(cnp.ndarray x not None, cnp.ndarray b not None, cnp.ndarray out not None,
                     cnp.ndarray sign_out not None, int n_threads=1):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect_input(b, "b", type_num, n_rows, n_classes)
    expect(out, "out", type_num, n_rows, -1, True)
    expect(sign_out, "sign_out", type_num, n_rows, -1, True)
    if n_rows == 0:
        return
    if n_classes == 0:
        out[:] = -INFINITY
        sign_out[:] = 0
        return
    cdef lc_operands o
    init_operands(&o, LC_OP_LOGSUMEXP_SCALED, x, n_rows, n_classes, data(out), 1)
    o.y = data(b)
    o.out2 = data(sign_out)
    run(&o, type_num, n_threads, input_format(x), input_format(b))


cdef bint init_loss_operands(lc_operands* o, lc_op op, cnp.ndarray x, int type_num,
                             Py_ssize_t n_rows, Py_ssize_t n_classes, cnp.ndarray loss_out,
                             Py_ssize_t loss_row_length, cnp.ndarray grad_out,
                             double grad_scale) except -1:
    """The loss kernels' common part, after their other operands are checked: checks
    loss_out ((n_rows,) for loss_row_length -1, else (n_rows, loss_row_length)) and the
    optional gradient grad_out, and initialises o with them and grad_scale. False when
    there is nothing to run: no rows, or no classes (every loss is then 0)."""
    expect(loss_out, "loss_out", type_num, n_rows, loss_row_length, True)
    expect_gradient(grad_out, type_num, n_rows, n_classes)
    if n_rows == 0 or n_classes == 0:
        loss_out[...] = 0  # rows without classes: every loss is 0 (else empty)
        return False
    init_operands(o, op, x, n_rows, n_classes, data(loss_out), max(loss_row_length, 1))
    o.out2 = data_or_null(grad_out)
    o.grad_scale = grad_scale
    return True


def cross_entropy_labels(cnp.ndarray x not None, cnp.ndarray labels not None,
                         cnp.ndarray weight not None, int64_t ignore_index,
                         double label_smoothing, cnp.ndarray loss_out not None,
                         cnp.ndarray grad_out not None, double grad_scale, int n_threads=1,
                         cnp.ndarray row_scale=None):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect(labels, "labels", cnp.NPY_INT64, n_rows, -1, False)
    expect(weight, "weight", type_num, n_classes, -1, False)
    cdef lc_operands o
    # no classes: every label is ignore_index (validated), nothing to learn
    if not init_loss_operands(&o, LC_OP_CROSS_ENTROPY_LABELS, x, type_num, n_rows, n_classes,
                              loss_out, -1, grad_out, grad_scale):
        return
    o.labels = <const int64_t*>data(labels)
    o.weight = data(weight)
    o.ignore_index = ignore_index
    o.label_smoothing = label_smoothing
    run(&o, type_num, n_threads, input_format(x), LC_INPUT_FLOAT, row_scale)


def cross_entropy_probs(cnp.ndarray x not None, cnp.ndarray target not None,
                        cnp.ndarray weight not None, double label_smoothing,
                        cnp.ndarray loss_out not None, cnp.ndarray grad_out not None,
                        double grad_scale, int n_threads=1, cnp.ndarray row_scale=None):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect_input(target, "target", type_num, n_rows, n_classes)
    expect(weight, "weight", type_num, n_classes, -1, False)
    cdef lc_operands o
    if not init_loss_operands(&o, LC_OP_CROSS_ENTROPY_PROBS, x, type_num, n_rows, n_classes,
                              loss_out, -1, grad_out, grad_scale):
        return
    o.y = data(target)
    o.weight = data(weight)
    o.label_smoothing = label_smoothing
    run(&o, type_num, n_threads, input_format(x), input_format(target), row_scale)


def bce_with_logits(cnp.ndarray x not None, cnp.ndarray target not None,
                    cnp.ndarray weight not None, cnp.ndarray pos_weight not None,
                    cnp.ndarray loss_out not None, cnp.ndarray grad_out not None,
                    double grad_scale, int n_threads=1, cnp.ndarray row_scale=None):
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect_input(x, "x", type_num, n_rows, n_classes)
    expect_input(target, "target", type_num, n_rows, n_classes)
    # a (1, C) weight serves every row: stride 0
    cdef Py_ssize_t weight_rows = 1 if dim(weight, 0) == 1 else n_rows
    cdef Py_ssize_t pos_weight_rows = 1 if dim(pos_weight, 0) == 1 else n_rows
    expect(weight, "weight", type_num, weight_rows, n_classes, False)
    expect(pos_weight, "pos_weight", type_num, pos_weight_rows, n_classes, False)
    # loss_out (n, 1) with C != 1 asks for each row's sum
    cdef bint loss_row_sums = dim(loss_out, 1) == 1 and n_classes != 1
    cdef lc_operands o
    if not init_loss_operands(&o, LC_OP_BCE_WITH_LOGITS, x, type_num, n_rows, n_classes,
                              loss_out, 1 if loss_row_sums else n_classes, grad_out,
                              grad_scale):
        return
    o.y = data(target)
    o.weight = data(weight)
    o.weight_stride = 0 if weight_rows == 1 else n_classes
    o.pos_weight = data(pos_weight)
    o.pos_weight_stride = 0 if pos_weight_rows == 1 else n_classes
    o.loss_row_sums = loss_row_sums
    run(&o, type_num, n_threads, input_format(x), input_format(target), row_scale)


# ---------------------------------------------------------------- scoring

cdef int take_output(void** slot, cnp.ndarray a, str name, int type_num, Py_ssize_t n_rows,
                     Py_ssize_t n_cols) except -1:
    """An optional output of a scoring kernel: empty (not asked: the slot stays NULL) or a
    writable array of type_num and shape (n_rows,) (n_cols < 0) or (n_rows, n_cols)."""
    slot[0] = NULL
    if cnp.PyArray_SIZE(a) != 0:
        expect(a, name, type_num, n_rows, n_cols, True)
        slot[0] = data(a)
    return 0


cdef int take_labels(const int64_t** slot, cnp.ndarray labels, Py_ssize_t n_items) except -1:
    """labels_or_empty: (n_items,) int64, or (0,) meaning no labels (slot NULL)."""
    slot[0] = NULL
    if cnp.PyArray_SIZE(labels) != 0:
        expect(labels, "labels", cnp.NPY_INT64, n_items, -1, False)
        slot[0] = <const int64_t*>data(labels)
    return 0


cdef int no_label_outputs_without_labels(str kernel, bint has_labels, list asked) except -1:
    if not has_labels and any(output is not None and cnp.PyArray_SIZE(output) != 0
                              for output in asked):
        raise ValueError(f"{kernel}: an output that needs labels was asked for without labels")
    return 0


def score_multiclass(cnp.ndarray x not None, cnp.ndarray labels not None, int64_t ignore_index,
                     Py_ssize_t top_k, cnp.ndarray pred_out not None,
                     cnp.ndarray max_logit_out not None, cnp.ndarray confidence_out not None,
                     cnp.ndarray margin_out not None, cnp.ndarray logit_margin_out not None,
                     cnp.ndarray entropy_out not None, cnp.ndarray logsumexp_out not None,
                     cnp.ndarray top_k_indices_out not None, cnp.ndarray top_k_probs_out not None,
                     cnp.ndarray label_logprob_out not None, cnp.ndarray loss_out not None,
                     cnp.ndarray correct_out not None, cnp.ndarray label_rank_out not None,
                     cnp.ndarray brier_out not None, int n_threads=1):
    # Whole rows (narrow ones in row tiles), or the class split for fewer long rows than
    # threads; see lc_row_ops_template.h, "scoring".
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    if not 0 <= top_k <= n_classes:
        raise ValueError(f"score_multiclass: top_k must be in [0, {n_classes}], got {top_k}")
    cdef lc_score_multiclass_fields f
    memset(&f, 0, sizeof(f))
    f.ignore_index = ignore_index
    f.top_k = top_k
    take_labels(&f.labels, labels, n_rows)
    take_output(<void**>&f.pred, pred_out, "pred_out", cnp.NPY_INT64, n_rows, -1)
    take_output(&f.max_logit, max_logit_out, "max_logit_out", type_num, n_rows, -1)
    take_output(&f.confidence, confidence_out, "confidence_out", type_num, n_rows, -1)
    take_output(&f.margin, margin_out, "margin_out", type_num, n_rows, -1)
    take_output(&f.logit_margin, logit_margin_out, "logit_margin_out", type_num, n_rows, -1)
    take_output(&f.entropy, entropy_out, "entropy_out", type_num, n_rows, -1)
    take_output(&f.logsumexp, logsumexp_out, "logsumexp_out", type_num, n_rows, -1)
    take_output(<void**>&f.top_k_indices, top_k_indices_out, "top_k_indices_out",
                cnp.NPY_INT64, n_rows, top_k)
    take_output(&f.top_k_probs, top_k_probs_out, "top_k_probs_out", type_num, n_rows, top_k)
    take_output(&f.label_logprob, label_logprob_out, "label_logprob_out", type_num, n_rows, -1)
    take_output(&f.loss, loss_out, "loss_out", type_num, n_rows, -1)
    take_output(<void**>&f.correct, correct_out, "correct_out", cnp.NPY_UINT8, n_rows, -1)
    take_output(<void**>&f.label_rank, label_rank_out, "label_rank_out", cnp.NPY_INT64,
                n_rows, -1)
    take_output(&f.brier, brier_out, "brier_out", type_num, n_rows, -1)
    no_label_outputs_without_labels(
        "score_multiclass", f.labels != NULL or n_rows == 0,
        [label_logprob_out, loss_out, correct_out, label_rank_out, brier_out])
    if n_rows == 0:
        return
    if n_classes == 0:
        raise ValueError("score_multiclass: x has no classes")
    lc_score_multiclass_plan(&f, n_classes)
    cdef lc_operands o
    init_operands(&o, LC_OP_SCORE_MULTICLASS, x, n_rows, n_classes, NULL, 0)
    o.score = &f
    run(&o, type_num, n_threads)


def score_binary(cnp.ndarray x not None, cnp.ndarray labels not None, int64_t ignore_index,
                 double threshold, cnp.ndarray prob_out not None, cnp.ndarray pred_out not None,
                 cnp.ndarray confidence_out not None, cnp.ndarray entropy_out not None,
                 cnp.ndarray loss_out not None, cnp.ndarray correct_out not None,
                 cnp.ndarray brier_out not None, int n_threads=1):
    # Elementwise: the flat schedule (items of one logit).
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n = dim(x, 0)
    expect(x, "x", type_num, n, -1, False)
    cdef lc_score_binary_fields f
    memset(&f, 0, sizeof(f))
    f.ignore_index = ignore_index
    f.threshold = threshold
    take_labels(&f.labels, labels, n)
    take_output(&f.prob, prob_out, "prob_out", type_num, n, -1)
    take_output(<void**>&f.pred, pred_out, "pred_out", cnp.NPY_UINT8, n, -1)
    take_output(&f.confidence, confidence_out, "confidence_out", type_num, n, -1)
    take_output(&f.entropy, entropy_out, "entropy_out", type_num, n, -1)
    take_output(&f.loss, loss_out, "loss_out", type_num, n, -1)
    take_output(<void**>&f.correct, correct_out, "correct_out", cnp.NPY_UINT8, n, -1)
    take_output(&f.brier, brier_out, "brier_out", type_num, n, -1)
    no_label_outputs_without_labels("score_binary", f.labels != NULL or n == 0,
                                    [loss_out, correct_out, brier_out])
    if n == 0:
        return
    cdef lc_operands o
    init_operands(&o, LC_OP_SCORE_BINARY, x, n, 1, NULL, 0)
    o.score = &f
    run(&o, type_num, n_threads)


def score_multilabel(cnp.ndarray x not None, cnp.ndarray targets not None,
                     cnp.ndarray threshold not None, cnp.ndarray n_predicted_out not None,
                     cnp.ndarray loss_out not None, cnp.ndarray exact_match_out not None,
                     cnp.ndarray true_positives_out not None,
                     cnp.ndarray false_positives_out not None,
                     cnp.ndarray false_negatives_out not None, cnp.ndarray pred_out not None,
                     int n_threads=1):
    # Whole rows (the rows schedule), one pass over each.
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(threshold, "threshold", type_num, n_classes, -1, False)
    cdef lc_score_multilabel_fields f
    memset(&f, 0, sizeof(f))
    f.threshold = data(threshold)
    if cnp.PyArray_SIZE(targets) != 0:
        expect(targets, "targets", cnp.NPY_UINT8, n_rows, n_classes, False)
        f.targets = <const uint8_t*>data(targets)
    take_output(<void**>&f.n_predicted, n_predicted_out, "n_predicted_out", cnp.NPY_INT64,
                n_rows, -1)
    take_output(&f.loss, loss_out, "loss_out", type_num, n_rows, -1)
    take_output(<void**>&f.exact_match, exact_match_out, "exact_match_out", cnp.NPY_UINT8,
                n_rows, -1)
    take_output(<void**>&f.true_positives, true_positives_out, "true_positives_out",
                cnp.NPY_INT64, n_rows, -1)
    take_output(<void**>&f.false_positives, false_positives_out, "false_positives_out",
                cnp.NPY_INT64, n_rows, -1)
    take_output(<void**>&f.false_negatives, false_negatives_out, "false_negatives_out",
                cnp.NPY_INT64, n_rows, -1)
    take_output(<void**>&f.pred, pred_out, "pred_out", cnp.NPY_UINT8, n_rows, n_classes)
    no_label_outputs_without_labels(
        "score_multilabel", f.targets != NULL or n_rows == 0 or n_classes == 0,
        [loss_out, exact_match_out, true_positives_out, false_positives_out,
         false_negatives_out])
    if n_rows == 0:
        return
    if n_classes == 0:
        raise ValueError("score_multilabel: x has no classes")
    cdef lc_operands o
    init_operands(&o, LC_OP_SCORE_MULTILABEL, x, n_rows, n_classes, NULL, 0)
    o.score = &f
    run(&o, type_num, n_threads)


# ---------------------------------------------------------------- test hooks of the math library
# Not kernels of the op table (SUPPORTED_KERNELS does not list them): the exp, log and log1p
# every kernel uses (lc_math.h), elementwise over a 1-D float32 or float64 array, so that
# tests can hold them to ulp bounds and compare them with the numba backend's.

def math_exp(cnp.ndarray x not None, cnp.ndarray out not None):
    """out = exp(x), the kernels' exp."""
    _math_entry(x, out, lc_exp_span_f32, lc_exp_span_f64)


def math_log(cnp.ndarray x not None, cnp.ndarray out not None):
    """out = log(x), the kernels' log (computed in double, also for float32)."""
    _math_entry(x, out, lc_log_span_f32, lc_log_span_f64)


def math_log1p(cnp.ndarray x not None, cnp.ndarray out not None):
    """out = log1p(x) for x in [-1, inf] (NaN below), the kernels' log1p (in double)."""
    _math_entry(x, out, lc_log1p_span_f32, lc_log1p_span_f64)


ctypedef void (*math_span_f32)(const float* x, float* out, Py_ssize_t n) noexcept nogil
ctypedef void (*math_span_f64)(const double* x, double* out, Py_ssize_t n) noexcept nogil


cdef _math_entry(cnp.ndarray x, cnp.ndarray out, math_span_f32 span_f32,
                 math_span_f64 span_f64):
    """out = f(x) by lc_math.h's span of f for x's type (span_f32 or span_f64)."""
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n = dim(x, 0)
    expect(x, "x", type_num, n, -1, False)
    expect(out, "out", type_num, n, -1, True)
    if type_num == cnp.NPY_FLOAT:
        span_f32(<const float*>data(x), <float*>data(out), n)
    else:
        span_f64(<const double*>data(x), <double*>data(out), n)


# ---------------------------------------------------------------- temperature_nll
# (logitcore.fit_temperature's pass; the row operation is in lc_row_ops_temperature.h)

def temperature_nll(cnp.ndarray x not None, cnp.ndarray labels not None,
                    cnp.ndarray sample_weight not None, int64_t ignore_index,
                    double inverse_temperature, int n_threads=1):
    """Sums over fixed chunks of whole rows (ROW_SUM_CHUNK_ELEMENTS elements, at least one
    row), the chunks added in order: the same bits for any thread count."""
    cdef int type_num = element_type(x)
    cdef Py_ssize_t n_rows = dim(x, 0), n_classes = dim(x, 1)
    expect(x, "x", type_num, n_rows, n_classes, False)
    expect(labels, "labels", cnp.NPY_INT64, n_rows, -1, False)
    cdef const void* weight = NULL
    if dim(sample_weight, 0) != 0:
        expect(sample_weight, "sample_weight", type_num, n_rows, -1, False)
        weight = data(sample_weight)
    cdef Py_ssize_t rows_per_chunk = max(1, LC_ROW_SUM_CHUNK_ELEMENTS // max(n_classes, 1))
    cdef Py_ssize_t n_chunks = (n_rows + rows_per_chunk - 1) // rows_per_chunk, chunk, first
    cdef Py_ssize_t end
    cdef double* chunk_sums = <double*>malloc(max(n_chunks, 1) * LC_TEMPERATURE_SUMS
                                              * sizeof(double))
    if chunk_sums == NULL:
        raise MemoryError("temperature_nll: no memory for its per-chunk sums")
    cdef const void* x_data = data(x)
    cdef const int64_t* label_data = <const int64_t*>data(labels)
    cdef double b = inverse_temperature
    cdef double totals[LC_TEMPERATURE_SUMS]
    cdef int k
    n_threads = <int>min(<Py_ssize_t>usable_threads(n_threads), max(n_chunks, 1))
    with nogil:
        # dynamic: a thread that the OS holds back (a shared machine) leaves its chunks to
        # the others instead of holding up the pass; each chunk's sums still go to its own
        # slot and are added in chunk order, so the result does not change
        for chunk in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
            first = chunk * rows_per_chunk
            end = min(n_rows, first + rows_per_chunk)
            if type_num == cnp.NPY_FLOAT:
                lc_temperature_chunk_f32(<const float*>x_data, n_classes, label_data,
                                         <const float*>weight, ignore_index, b, first, end,
                                         chunk_sums + chunk * LC_TEMPERATURE_SUMS)
            else:
                lc_temperature_chunk_f64(<const double*>x_data, n_classes, label_data,
                                         <const double*>weight, ignore_index, b, first, end,
                                         chunk_sums + chunk * LC_TEMPERATURE_SUMS)
    for k in range(LC_TEMPERATURE_SUMS):
        totals[k] = 0.0
    for chunk in range(n_chunks):
        for k in range(LC_TEMPERATURE_SUMS):
            totals[k] += chunk_sums[chunk * LC_TEMPERATURE_SUMS + k]
    free(chunk_sums)
    return tuple(totals[k] for k in range(LC_TEMPERATURE_SUMS))
