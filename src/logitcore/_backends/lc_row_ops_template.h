/*
 * lc_row_ops_template.h -- the generic half of lc_row_ops.h, over LC_REAL. Included only by
 * lc_row_ops.h, once per float type; LC_NAME(f) is f_f32 or f_f64.
 */

/* Elements per step of a row loop: 64 bytes of input, i.e. one AVX-512 or two AVX2 vectors.
   A reduction keeps that many independent partial sums, so the loop vectorises without
   reassociation flags and the adds' latency is hidden. */
#define LC_LANES ((int)(64 / sizeof(LC_REAL)))

/* The shift used for a row's exps: its maximum when finite, else 0. With 0, an all -inf
   row sums to 0 (not NaN) and a +inf row sums to inf, as the edge table (docs/architecture.md) wants for logsumexp;
   softmax and log_softmax turn both into NaN rows separately (see row_normaliser). */
LC_INLINE LC_REAL LC_NAME(finite_or_zero)(LC_REAL row_max)
{
    return isfinite(row_max) ? row_max : (LC_REAL)0;
}

/* Maximum of a row, ignoring NaN (a NaN still reaches every result through the sum of
   exps). -inf for an empty row. */
LC_INLINE LC_REAL LC_NAME(row_max)(const LC_REAL* x, lc_index n)
{
    LC_REAL lane_max[LC_LANES];
    for (int j = 0; j < LC_LANES; j++)
        lane_max[j] = -INFINITY;
    lc_index i = 0;
    for (; i + LC_LANES <= n; i += LC_LANES)
        LC_NO_UNROLL
        for (int j = 0; j < LC_LANES; j++)
            lane_max[j] = x[i + j] > lane_max[j] ? x[i + j] : lane_max[j];
    LC_REAL result = -INFINITY;
    for (; i < n; i++)
        result = x[i] > result ? x[i] : result;
    for (int j = 0; j < LC_LANES; j++)
        result = lane_max[j] > result ? lane_max[j] : result;
    return result;
}

/* Maximum of the x[i] whose b[i] is not 0: the shift of logsumexp(x, b=b), whose b == 0
   terms are left out entirely (as scipy does), so they must not set the shift either. */
LC_INLINE LC_REAL LC_NAME(row_max_where_nonzero)(const LC_REAL* x, const LC_REAL* b, lc_index n)
{
    LC_REAL lane_max[LC_LANES];
    for (int j = 0; j < LC_LANES; j++)
        lane_max[j] = -INFINITY;
    lc_index i = 0;
    for (; i + LC_LANES <= n; i += LC_LANES)
        LC_NO_UNROLL
        for (int j = 0; j < LC_LANES; j++) {
            LC_REAL value = b[i + j] != 0 ? x[i + j] : -INFINITY;
            lane_max[j] = value > lane_max[j] ? value : lane_max[j];
        }
    LC_REAL result = -INFINITY;
    for (; i < n; i++) {
        LC_REAL value = b[i] != 0 ? x[i] : -INFINITY;
        result = value > result ? value : result;
    }
    for (int j = 0; j < LC_LANES; j++)
        result = lane_max[j] > result ? lane_max[j] : result;
    return result;
}

/* The exp sums (lc_exp_sums: the terms at the shift counted apart) of a row, the hot loop
   of every kernel, optionally storing each exp(x - shift) in `store` (which may be x:
   element i is read before it is written). The terms are positive, so partial sums in the
   input precision lose nothing worth keeping as long as they are flushed into a double
   every LC_PARTIAL_SUM_LENGTH elements. exp(0) is exactly 1, so a term at the shift is taken out
   of `others` by subtracting the comparison's 1.0 (a compare, a subtract and an add per
   lane, which gcc vectorises where a select is left as a branch), and the stored exps need
   no select. */
LC_INLINE lc_exp_sums LC_NAME(row_sum_exp)(const LC_REAL* x, lc_index n, LC_REAL shift,
                                           LC_REAL* store)
{
    lc_exp_sums total = {0.0, 0.0};
    lc_index i = 0;
    while (i < n) {
        lc_index block_end = lc_min_index(n, i + LC_PARTIAL_SUM_LENGTH);
        LC_REAL lane_sum[LC_LANES], lane_count[LC_LANES];
        for (int j = 0; j < LC_LANES; j++) {
            lane_sum[j] = 0;
            lane_count[j] = 0;
        }
        if (store) {
            for (; i + LC_LANES <= block_end; i += LC_LANES)
                LC_NO_UNROLL
                for (int j = 0; j < LC_LANES; j++) {
                    LC_REAL value = LC_EXP(x[i + j] - shift);
                    LC_REAL at_max = (LC_REAL)(x[i + j] == shift);
                    store[i + j] = value;
                    lane_sum[j] += value - at_max; /* exactly 0 at the max, where value = 1 */
                    lane_count[j] += at_max;
                }
        } else {
            for (; i + LC_LANES <= block_end; i += LC_LANES)
                LC_NO_UNROLL
                for (int j = 0; j < LC_LANES; j++) {
                    LC_REAL at_max = (LC_REAL)(x[i + j] == shift);
                    lane_sum[j] += LC_EXP(x[i + j] - shift) - at_max;
                    lane_count[j] += at_max;
                }
        }
        for (; i < block_end; i++) {
            LC_REAL value = LC_EXP(x[i] - shift);
            LC_REAL at_max = (LC_REAL)(x[i] == shift);
            if (store)
                store[i] = value;
            lane_sum[0] += value - at_max;
            lane_count[0] += at_max;
        }
        lc_exp_sums block_total = {0.0, 0.0};
        for (int j = 0; j < LC_LANES; j++) {
            block_total.others += lane_sum[j];
            block_total.n_at_max += lane_count[j];
        }
        total = lc_exp_sums_add(total, block_total);
    }
    return total;
}

typedef struct {
    const LC_REAL* a;
    const LC_REAL* b;
    const LC_REAL* c;
    LC_REAL shift, scale, offset;
} LC_NAME(row_operands);

/* Cross-entropy's q = w ((1 - eps) t + eps / C), computed the same way everywhere. */
LC_INLINE LC_REAL LC_NAME(smoothed_target)(LC_REAL weight, LC_REAL target, LC_REAL scale,
                                           LC_REAL offset)
{
    return weight * (scale * target + offset);
}

LC_INLINE double LC_NAME(row_term)(enum lc_row_term term, LC_NAME(row_operands) op, lc_index i)
{
    /* `term` is a constant at every call site: after inlining only one case is left. */
    switch (term) {
    case LC_TERM_ABS:
        return LC_FABS(op.a[i]);
    case LC_TERM_PRODUCT:
        return (double)op.a[i] * op.b[i];
    case LC_TERM_WEIGHTED_SHIFTED: /* x - max in double: in float, -3e38 - 3e38 = -inf */
        return op.b[i] != 0 ? (double)op.b[i] * ((double)op.a[i] - (double)op.shift) : 0.0;
    case LC_TERM_SCALED_EXP:
        return op.b[i] != 0 ? (double)op.b[i] * LC_EXP(op.a[i] - op.shift) : 0.0;
    case LC_TERM_TARGET:
        return LC_NAME(smoothed_target)(op.b[i], op.c[i], op.scale, op.offset);
    case LC_TERM_SHIFTED_EXP_MOMENT: {
        double e = LC_EXP(op.a[i] - op.shift);
        return e != 0 ? ((double)op.a[i] - (double)op.shift) * e : 0.0;
    }
    case LC_TERM_TARGET_SHIFTED:
        return (double)LC_NAME(smoothed_target)(op.b[i], op.c[i], op.scale, op.offset) *
               ((double)op.a[i] - (double)op.shift);
    default:
        return op.a[i];
    }
}

/* Sum over a row of a term that may take either sign (dy, weighted logits, b * exp):
   partial sums in double, where float ones would lose the small total of large terms,
   flushed every LC_PARTIAL_SUM_LENGTH elements like row_sum_exp's (this two-level sum also keeps
   the rounding of 10^5 equal terms from piling up in one direction). */
LC_INLINE double LC_NAME(row_sum)(enum lc_row_term term, LC_NAME(row_operands) op, lc_index n)
{
    double total = 0.0;
    lc_index i = 0;
    while (i < n) {
        lc_index block_end = lc_min_index(n, i + LC_PARTIAL_SUM_LENGTH);
        double lane_sum[LC_LANES];
        for (int j = 0; j < LC_LANES; j++)
            lane_sum[j] = 0.0;
        for (; i + LC_LANES <= block_end; i += LC_LANES)
            LC_NO_UNROLL
            for (int j = 0; j < LC_LANES; j++)
                lane_sum[j] += LC_NAME(row_term)(term, op, i + j);
        for (; i < block_end; i++)
            lane_sum[0] += LC_NAME(row_term)(term, op, i);
        double block_total = 0.0;
        for (int j = 0; j < LC_LANES; j++)
            block_total += lane_sum[j];
        total += block_total;
    }
    return total;
}

LC_INLINE void LC_NAME(row_scale)(LC_REAL* x, lc_index n, LC_REAL factor)
{
    for (lc_index i = 0; i < n; i++)
        x[i] *= factor;
}

/* out = (x - a) - b; out may be x. */
LC_INLINE void LC_NAME(row_subtract)(const LC_REAL* x, LC_REAL* out, lc_index n, LC_REAL a,
                                     LC_REAL b)
{
    for (lc_index i = 0; i < n; i++)
        out[i] = (x[i] - a) - b;
}

/* The sum that normalises softmax, from a row's max and its exp sums (shift
   finite_or_zero(max)). A row whose maximum is not finite (it holds +inf, or only -inf)
   gets NaN: the edge table (docs/architecture.md) wants NaN softmax and log_softmax rows there. */
LC_INLINE double LC_NAME(row_normaliser)(LC_REAL row_max, lc_exp_sums sums)
{
    return isfinite(row_max) ? lc_exp_sums_total(sums) : NAN;
}

/* log(row_normaliser) without rounding the sum first (see lc_exp_sums). */
LC_INLINE double LC_NAME(row_log_normaliser)(LC_REAL row_max, lc_exp_sums sums)
{
    return isfinite(row_max) ? lc_exp_sums_log(sums) : NAN;
}

/* A row's logsumexp: max + log1p(others + n_at_max - 1), which is also right at the edges
   (see lc_exp_sums_log): inf + inf = inf, -inf + -inf = -inf, NaN stays NaN. */
LC_INLINE double LC_NAME(row_logsumexp)(LC_REAL row_max, lc_exp_sums sums)
{
    return (double)row_max + lc_exp_sums_log(sums);
}

/* ---- row tiles: n_rows rows of n_classes, at most lc_rows_per_tile(n_classes) ---- */

LC_INLINE void LC_NAME(tile_row_max)(const LC_REAL* x, lc_index n_rows, lc_index n_classes,
                                      LC_REAL* row_max)
{
    if (n_classes >= LC_NARROW_MAX_CLASSES) {
        for (lc_index r = 0; r < n_rows; r++)
            row_max[r] = LC_NAME(row_max)(x + r * n_classes, n_classes);
        return;
    }
    /* Narrow rows: a row's max is a chain of dependent compares, a few per class; run the
       loop across the rows instead (SIMD lanes = rows, strided loads), class by class. */
    for (lc_index r = 0; r < n_rows; r++)
        row_max[r] = -INFINITY;
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            LC_REAL value = x[r * n_classes + c];
            row_max[r] = value > row_max[r] ? value : row_max[r];
        }
}

/* row_sums[r] = the exp sums of row r for the shift finite_or_zero(row_max[r]), storing
   the exps in exp_out when it is not NULL (exp_out may be x). written_after, unless NULL,
   is the tile's output that the caller writes next (log_softmax): it is prefetched for
   writing. */
LC_INLINE void LC_NAME(tile_sum_exp)(const LC_REAL* x, lc_index n_rows, lc_index n_classes,
                                      const LC_REAL* row_max, lc_exp_sums* row_sums,
                                      LC_REAL* exp_out, LC_REAL* written_after)
{
    if (n_classes >= LC_NARROW_MAX_CLASSES) {
        /* The exps are computed from cache; meanwhile the next tile (the data of the next
           memory-bound max pass, and its part of exp_out) is prefetched, so that memory keeps
           streaming while the cores compute. Cut at LC_PARTIAL_SUM_LENGTH, the sums are the same. */
        lc_index tile_elems = n_rows * n_classes;
        for (lc_index r = 0; r < n_rows; r++) {
            lc_index row_start = r * n_classes;
            LC_REAL shift = LC_NAME(finite_or_zero)(row_max[r]);
            lc_exp_sums sums = {0.0, 0.0};
            for (lc_index start = 0; start < n_classes; start += LC_PARTIAL_SUM_LENGTH) {
                lc_index count = lc_min_index(LC_PARTIAL_SUM_LENGTH, n_classes - start);
                lc_index at = row_start + start;
                lc_prefetch(x + tile_elems + at, count * (lc_index)sizeof(LC_REAL), 0);
                if (exp_out)
                    lc_prefetch(exp_out + tile_elems + at, count * (lc_index)sizeof(LC_REAL), 1);
                if (written_after)
                    lc_prefetch(written_after + at, count * (lc_index)sizeof(LC_REAL), 1);
                sums = lc_exp_sums_add(
                    sums, LC_NAME(row_sum_exp)(x + at, count, shift, exp_out ? exp_out + at : NULL));
            }
            row_sums[r] = sums;
        }
        return;
    }
    /* Narrow rows: a loop over 10 classes does not vectorise, so shift the whole tile into
       one flat scratch and take every exp, and every term of the exp sums, in one
       vectorised loop; then sum each row. The exps go to exp_out (which may be x: it is
       read only by the first loop). The exp is exactly 1 where x - shift == 0, i.e. where
       x == shift (gradual underflow): it is taken out of `others` as in row_sum_exp. */
    LC_REAL others_terms[LC_ROW_TILE_ELEMENTS], at_max[LC_ROW_TILE_ELEMENTS], scratch[LC_ROW_TILE_ELEMENTS];
    LC_REAL* buffer = exp_out ? exp_out : scratch;
    for (lc_index r = 0; r < n_rows; r++) {
        LC_REAL shift = LC_NAME(finite_or_zero)(row_max[r]);
        for (lc_index c = 0; c < n_classes; c++)
            others_terms[r * n_classes + c] = x[r * n_classes + c] - shift;
    }
    lc_index n = n_rows * n_classes;
    for (lc_index i = 0; i < n; i++) {
        LC_REAL shifted = others_terms[i];
        LC_REAL value = LC_EXP(shifted);
        at_max[i] = (LC_REAL)(shifted == 0);
        buffer[i] = value;
        others_terms[i] = value - at_max[i];
    }
    /* Each row's sums in class order, as a chain of dependent double adds per row: run
       across the rows (SIMD lanes = rows), class by class, which adds in the same order. */
    double others[LC_TILE_MAX_ROWS], n_at_max[LC_TILE_MAX_ROWS];
    for (lc_index r = 0; r < n_rows; r++)
        others[r] = n_at_max[r] = 0.0;
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            others[r] += others_terms[r * n_classes + c];
            n_at_max[r] += at_max[r * n_classes + c];
        }
    for (lc_index r = 0; r < n_rows; r++) {
        row_sums[r].others = others[r];
        row_sums[r].n_at_max = n_at_max[r];
    }
}

/* log_normaliser[r] = row_log_normaliser(r): vectorised across the rows of a block. */
LC_INLINE void LC_NAME(tile_log_normaliser)(const LC_REAL* row_max, const lc_exp_sums* row_sums,
                                             lc_index n_rows, double* log_normaliser)
{
    for (lc_index r = 0; r < n_rows; r++)
        log_normaliser[r] = LC_NAME(row_log_normaliser)(row_max[r], row_sums[r]);
}

/* ---- blocks of one long row -----------------------------------------------------------
   A row longer than LC_BLOCK_CLASSES is processed one block (LC_BLOCK_CLASSES classes, the
   last one shorter) at a time by the class_split schedule of _cython_kernels.pyx, whether
   its blocks are spread over threads or not: each pass over a block reads it while it is in
   L1, and the blocks' states are merged in block order (lc_row_state.h), so a row's bits do
   not depend on the thread count. See docs/architecture.md, "Schedules". */

/* lc_block_max_sum_exp_f32 / lc_block_max_sum_exp_f64: a block's max (NaN ignored) and its
   exp sums for the shift finite_or_zero(max); the exps go to exp_out unless it is NULL
   (exp_out may be x). logsumexp, softmax and log_softmax's first pass. With `prefetch`,
   while the exps are computed from L1, the next block (what the next memory-bound max
   reads, and where its exps go) is prefetched; cut at LC_PARTIAL_SUM_LENGTH, the sums are
   the same. (A thread that walks whole long rows streams from memory and gains from it; a
   few rows whose blocks are spread over the threads are mostly in cache, where the
   prefetches only cost instructions.) */
LC_INLINE lc_block_state LC_NAME(lc_block_max_sum_exp)(const LC_REAL* x, lc_index n,
                                                       LC_REAL* exp_out, int prefetch)
{
    LC_REAL top = LC_NAME(row_max)(x, n);
    LC_REAL shift = LC_NAME(finite_or_zero)(top);
    lc_block_state state = {top, {0.0, 0.0}, 0.0};
    for (lc_index at = 0; at < n; at += LC_PARTIAL_SUM_LENGTH) {
        lc_index k = lc_min_index(LC_PARTIAL_SUM_LENGTH, n - at);
        if (prefetch) {
            lc_prefetch(x + at + LC_BLOCK_CLASSES, k * (lc_index)sizeof(LC_REAL), 0);
            if (exp_out)
                lc_prefetch(exp_out + at + LC_BLOCK_CLASSES, k * (lc_index)sizeof(LC_REAL), 1);
        }
        state.sums = lc_exp_sums_add(
            state.sums, LC_NAME(row_sum_exp)(x + at, k, shift, exp_out ? exp_out + at : NULL));
    }
    return state;
}

/* lc_softmax_block_write_f32 / lc_softmax_block_write_f64: out holds the block's
   exp(x - block shift) (lc_block_max_sum_exp); times exp(block max - row max) / normaliser
   it is the softmax. A NaN normaliser makes the row NaN; an all -inf block of a finite row
   becomes 0. */
LC_INLINE void LC_NAME(lc_softmax_block_write)(LC_REAL* out, lc_index n, double block_max,
                                               double row_max, double normaliser)
{
    LC_NAME(row_scale)(out, n, (LC_REAL)(lc_exp_f64(block_max - row_max) / normaliser));
}

/* lc_log_softmax_block_write_f32 / lc_log_softmax_block_write_f64: out = x - max - log S
   over one block (out may be x). */
LC_INLINE void LC_NAME(lc_log_softmax_block_write)(const LC_REAL* x, LC_REAL* out,
                                                   lc_index n, double row_max,
                                                   double log_normaliser)
{
    LC_NAME(row_subtract)(x, out, n, (LC_REAL)row_max, (LC_REAL)log_normaliser);
}

/* lc_block_max_f32 / lc_block_max_f64: cross-entropy's first pass, the block's max. */
LC_INLINE double LC_NAME(lc_block_max)(const LC_REAL* x, lc_index n)
{
    return LC_NAME(row_max)(x, n);
}

/* lc_ce_label_block_sums_f32 / lc_ce_label_block_sums_f64: cross-entropy's second pass over
   a block, for the row's max: the exp sums for the shift finite_or_zero(row_max) (exps
   stored in `store` unless NULL; store may be x) and, with label smoothing, the extra
   sum_{w != 0} w (x - row_max). */
LC_INLINE lc_block_state LC_NAME(lc_ce_label_block_sums)(const LC_REAL* x,
                                                         const LC_REAL* weight, lc_index n,
                                                         double row_max, LC_REAL* store,
                                                         int use_smoothing)
{
    lc_block_state state = {row_max, {0.0, 0.0}, 0.0};
    if (use_smoothing)
        state.extra = LC_NAME(row_sum)(
            LC_TERM_WEIGHTED_SHIFTED,
            (LC_NAME(row_operands)){.a = x, .b = weight, .shift = (LC_REAL)row_max}, n);
    state.sums = LC_NAME(row_sum_exp)(x, n, LC_NAME(finite_or_zero)((LC_REAL)row_max), store);
    return state;
}

/* label_grad_span_f32 / label_grad_span_f64: cross-entropy's gradient over a span of a row:
   grad = exp_factor * grad - weight_factor * weight, grad holding exps on entry. */
LC_INLINE void LC_NAME(label_grad_span)(LC_REAL* grad, const LC_REAL* weight, lc_index n,
                                        LC_REAL exp_factor, LC_REAL weight_factor)
{
    if (weight_factor != 0)
        for (lc_index c = 0; c < n; c++)
            grad[c] = exp_factor * grad[c] - weight_factor * weight[c];
    else
        LC_NAME(row_scale)(grad, n, exp_factor);
}

/* lc_ce_label_setup_f32 / lc_ce_label_setup_f64: the per-call constants of cross-entropy
   with labels. The weight sums only matter with label smoothing (on one long row they would
   cost two extra passes over a weight vector as long as the row); all-zero weights make
   every q zero: no smoothing term even where log S is NaN. */
LC_DISPATCH static lc_ce_label_params LC_NAME(lc_ce_label_setup)(const LC_REAL* weight,
                                                                 lc_index n_classes,
                                                                 double label_smoothing,
                                                                 double grad_scale)
{
    LC_NAME(row_operands) weights = {.a = weight};
    const int smoothing = label_smoothing > 0.0;
    lc_ce_label_params params;
    params.label_smoothing = label_smoothing;
    params.grad_scale = grad_scale;
    params.weight_total = smoothing ? LC_NAME(row_sum)(LC_TERM_VALUE, weights, n_classes) : 0.0;
    params.smoothing_per_class = label_smoothing / (double)n_classes;
    params.use_smoothing = smoothing && LC_NAME(row_sum)(LC_TERM_ABS, weights, n_classes) != 0.0;
    return params;
}

/* ====================== the kernels: a contiguous range of rows ====================== */

/* normalise_tiles_f32 / normalise_tiles_f64: logsumexp, softmax or log_softmax (`op`, a
   constant at each call) of rows of at most LC_BLOCK_CLASSES classes, one row tile at a
   time: every row's max, then its exp sums (softmax stores the exps in out, read back from
   cache to be scaled; log_softmax prefetches its output), then the outputs. */
LC_INLINE void LC_NAME(normalise_tiles)(lc_op op, const LC_REAL* x, lc_index n_rows,
                                        lc_index n_classes, LC_REAL* out)
{
    LC_REAL row_max[LC_TILE_MAX_ROWS];
    lc_exp_sums row_sums[LC_TILE_MAX_ROWS];
    double log_normaliser[LC_TILE_MAX_ROWS];
    lc_index rows_per_tile = lc_rows_per_tile(n_classes);
    for (lc_index first = 0; first < n_rows; first += rows_per_tile) {
        lc_index rows = lc_min_index(rows_per_tile, n_rows - first);
        const LC_REAL* x_tile = x + first * n_classes;
        LC_NAME(tile_row_max)(x_tile, rows, n_classes, row_max);
        if (op == LC_OP_LOGSUMEXP) {
            LC_NAME(tile_sum_exp)(x_tile, rows, n_classes, row_max, row_sums, NULL, NULL);
            for (lc_index r = 0; r < rows; r++)
                out[first + r] = (LC_REAL)LC_NAME(row_logsumexp)(row_max[r], row_sums[r]);
        } else if (op == LC_OP_SOFTMAX) {
            LC_REAL* out_tile = out + first * n_classes;
            LC_NAME(tile_sum_exp)(x_tile, rows, n_classes, row_max, row_sums, out_tile, NULL);
            for (lc_index r = 0; r < rows; r++)
                LC_NAME(row_scale)(out_tile + r * n_classes, n_classes,
                                   (LC_REAL)(1.0 / LC_NAME(row_normaliser)(row_max[r], row_sums[r])));
        } else {
            LC_REAL* out_tile = out + first * n_classes;
            LC_NAME(tile_sum_exp)(x_tile, rows, n_classes, row_max, row_sums, NULL, out_tile);
            LC_NAME(tile_log_normaliser)(row_max, row_sums, rows, log_normaliser);
            for (lc_index r = 0; r < rows; r++)
                LC_NAME(row_subtract)(x_tile + r * n_classes, out_tile + r * n_classes, n_classes,
                                      row_max[r], (LC_REAL)log_normaliser[r]);
        }
    }
}

/* lc_logsumexp_rows_f32 / _f64, lc_softmax_rows_f32 / _f64, lc_log_softmax_rows_f32 / _f64:
   normalise_tiles compiled once per op (and per SIMD clone). */
LC_DISPATCH static void LC_NAME(lc_logsumexp_rows)(const LC_REAL* x, lc_index n_rows,
                                                   lc_index n_classes, LC_REAL* out)
{
    LC_NAME(normalise_tiles)(LC_OP_LOGSUMEXP, x, n_rows, n_classes, out);
}

LC_DISPATCH static void LC_NAME(lc_softmax_rows)(const LC_REAL* x, lc_index n_rows,
                                                 lc_index n_classes, LC_REAL* out)
{
    LC_NAME(normalise_tiles)(LC_OP_SOFTMAX, x, n_rows, n_classes, out);
}

LC_DISPATCH static void LC_NAME(lc_log_softmax_rows)(const LC_REAL* x, lc_index n_rows,
                                                     lc_index n_classes, LC_REAL* out)
{
    LC_NAME(normalise_tiles)(LC_OP_LOG_SOFTMAX, x, n_rows, n_classes, out);
}

/* out = log|sum_c b e^x| over the classes with b != 0, sign_out = its sign (NaN for NaN).
   Row by row: the scaled form is rare, so it has no narrow-row path. */
LC_DISPATCH static void LC_NAME(lc_logsumexp_scaled_rows)(const LC_REAL* x, const LC_REAL* b,
                                                          lc_index n_rows, lc_index n_classes,
                                                          LC_REAL* out, LC_REAL* sign_out)
{
    for (lc_index r = 0; r < n_rows; r++) {
        const LC_REAL* x_row = x + r * n_classes;
        const LC_REAL* b_row = b + r * n_classes;
        LC_REAL shift =
            LC_NAME(finite_or_zero)(LC_NAME(row_max_where_nonzero)(x_row, b_row, n_classes));
        double total = LC_NAME(row_sum)(
            LC_TERM_SCALED_EXP, (LC_NAME(row_operands)){.a = x_row, .b = b_row, .shift = shift},
            n_classes);
        out[r] = (LC_REAL)(lc_log_f64(fabs(total)) + shift);
        sign_out[r] = (LC_REAL)(total > 0 ? 1.0 : total < 0 ? -1.0 : total == 0 ? 0.0 : NAN);
    }
}

/* out = the Shannon entropy of softmax(x) per row, H = log S - T / S with the shift the
   row max, S = sum exp(x - shift) (kept as exp sums, so log S keeps its small terms) and
   T = sum (x - shift) exp(x - shift); masked classes (x = -inf) add 0. Rows whose max is
   not finite (NaN, +inf, all -inf) have no softmax: NaN. Row by row: the narrow and
   class_split schedules would need a tile pass and a block merge of T of their own. */
LC_DISPATCH static void LC_NAME(lc_entropy_rows)(const LC_REAL* x, lc_index n_rows,
                                                 lc_index n_classes, LC_REAL* out)
{
    for (lc_index r = 0; r < n_rows; r++) {
        const LC_REAL* x_row = x + r * n_classes;
        LC_REAL row_max = LC_NAME(row_max)(x_row, n_classes);
        LC_REAL shift = LC_NAME(finite_or_zero)(row_max);
        lc_exp_sums sums = LC_NAME(row_sum_exp)(x_row, n_classes, shift, NULL);
        double moment = LC_NAME(row_sum)(
            LC_TERM_SHIFTED_EXP_MOMENT, (LC_NAME(row_operands)){.a = x_row, .shift = shift},
            n_classes);
        out[r] = isfinite(row_max)
                     ? (LC_REAL)(lc_exp_sums_log(sums) - moment / lc_exp_sums_total(sums))
                     : (LC_REAL)NAN;
    }
}

/*
 * Cross-entropy with integer labels, one pass over memory per row and no N x C temporary:
 * max, then (from cache) x[label] and, with label smoothing, sum_{w != 0} w (x - max);
 * then the exps, stored in grad_out when a gradient is wanted (grad_out may be x: what the
 * loss needs from x was read before); finally the gradient is formed in place from them.
 * With q = (1 - eps) w[y] onehot(y) + eps / C * w and log p = x - max - log S:
 *   loss = -sum_{q != 0} q log p
 *        = (1 - eps) w[y] (log S - (x[y] - max)) + eps / C (W log S - sum w (x - max)),
 * a sum of non-negative terms (for w >= 0), and grad = grad_scale (p sum(q) - q).
 * Ignored rows have q = 0: loss 0 and gradient p * 0 (NaN for NaN rows, like the reference).
 */
LC_DISPATCH static void LC_NAME(lc_cross_entropy_labels_rows)(
    const LC_REAL* x, const int64_t* labels, const LC_REAL* weight, int64_t ignore_index,
    double label_smoothing, lc_index n_rows, lc_index n_classes, LC_REAL* loss_out,
    LC_REAL* grad_out, double grad_scale)
{
    const lc_ce_label_params params =
        LC_NAME(lc_ce_label_setup)(weight, n_classes, label_smoothing, grad_scale);
    const int use_smoothing = params.use_smoothing;
    LC_REAL row_max[LC_TILE_MAX_ROWS];
    lc_exp_sums row_sums[LC_TILE_MAX_ROWS];
    double shifted_label_logit[LC_TILE_MAX_ROWS], smoothing_sum[LC_TILE_MAX_ROWS];
    lc_index rows_per_tile = lc_rows_per_tile(n_classes);
    for (lc_index first = 0; first < n_rows; first += rows_per_tile) {
        lc_index rows = lc_min_index(rows_per_tile, n_rows - first);
        const LC_REAL* x_tile = x + first * n_classes;
        LC_REAL* grad_tile = grad_out ? grad_out + first * n_classes : NULL;
        LC_NAME(tile_row_max)(x_tile, rows, n_classes, row_max);
        for (lc_index r = 0; r < rows; r++) {
            int64_t label = labels[first + r];
            int64_t safe_label = label == ignore_index ? 0 : label;
            shifted_label_logit[r] = (double)x_tile[r * n_classes + safe_label] - row_max[r];
            smoothing_sum[r] =
                use_smoothing
                    ? LC_NAME(row_sum)(LC_TERM_WEIGHTED_SHIFTED,
                                       (LC_NAME(row_operands)){.a = x_tile + r * n_classes,
                                                               .b = weight, .shift = row_max[r]},
                                       n_classes)
                    : 0.0;
        }
        LC_NAME(tile_sum_exp)(x_tile, rows, n_classes, row_max, row_sums, grad_tile, NULL);
        for (lc_index r = 0; r < rows; r++) {
            int64_t label = labels[first + r];
            int keep = label != ignore_index;
            int64_t safe_label = keep ? label : 0;
            LC_REAL* grad_row = grad_tile ? grad_tile + r * n_classes : NULL;
            lc_ce_label_row result = lc_ce_label_row_finish(
                &params, row_max[r], row_sums[r], shifted_label_logit[r], smoothing_sum[r], keep,
                weight[safe_label], grad_row ? grad_row[safe_label] : 0.0);
            loss_out[first + r] = (LC_REAL)result.loss;
            if (!grad_row)
                continue;
            LC_NAME(label_grad_span)(grad_row, weight, n_classes, (LC_REAL)result.exp_factor,
                                     (LC_REAL)result.weight_factor);
            if (keep)
                grad_row[safe_label] = (LC_REAL)result.label_grad;
        }
    }
}

/*
 * Cross-entropy with probability targets. With t' = (1 - eps) t + eps / C and q = w t':
 *   loss = -sum q log p = sum(q) log S - sum q (x - max),   grad = grad_scale (p sum(q) - q).
 * Like the reference, a class with q == 0 and x == -inf makes the loss NaN (0 * -inf).
 */
LC_DISPATCH static void LC_NAME(lc_cross_entropy_probs_rows)(
    const LC_REAL* x, const LC_REAL* target, const LC_REAL* weight, double label_smoothing,
    lc_index n_rows, lc_index n_classes, LC_REAL* loss_out, LC_REAL* grad_out, double grad_scale)
{
    LC_REAL row_max[LC_TILE_MAX_ROWS];
    lc_exp_sums row_sums[LC_TILE_MAX_ROWS];
    double log_normaliser[LC_TILE_MAX_ROWS];
    double q_total[LC_TILE_MAX_ROWS], q_dot_shifted[LC_TILE_MAX_ROWS];
    const LC_REAL target_scale = (LC_REAL)(1.0 - label_smoothing);
    const LC_REAL target_offset = (LC_REAL)(label_smoothing / (double)n_classes);
    lc_index rows_per_tile = lc_rows_per_tile(n_classes);
    for (lc_index first = 0; first < n_rows; first += rows_per_tile) {
        lc_index rows = lc_min_index(rows_per_tile, n_rows - first);
        const LC_REAL* x_tile = x + first * n_classes;
        const LC_REAL* target_tile = target + first * n_classes;
        LC_REAL* grad_tile = grad_out ? grad_out + first * n_classes : NULL;
        LC_NAME(tile_row_max)(x_tile, rows, n_classes, row_max);
        for (lc_index r = 0; r < rows; r++) {
            LC_NAME(row_operands) op = {.a = x_tile + r * n_classes, .b = weight,
                                        .c = target_tile + r * n_classes, .shift = row_max[r],
                                        .scale = target_scale, .offset = target_offset};
            q_total[r] = LC_NAME(row_sum)(LC_TERM_TARGET, op, n_classes);
            q_dot_shifted[r] = LC_NAME(row_sum)(LC_TERM_TARGET_SHIFTED, op, n_classes);
        }
        LC_NAME(tile_sum_exp)(x_tile, rows, n_classes, row_max, row_sums, grad_tile, NULL);
        LC_NAME(tile_log_normaliser)(row_max, row_sums, rows, log_normaliser);
        for (lc_index r = 0; r < rows; r++) {
            loss_out[first + r] = (LC_REAL)(q_total[r] * log_normaliser[r] - q_dot_shifted[r]);
            if (!grad_tile)
                continue;
            LC_REAL* grad_row = grad_tile + r * n_classes;
            const LC_REAL* t_row = target_tile + r * n_classes;
            double normaliser = LC_NAME(row_normaliser)(row_max[r], row_sums[r]);
            LC_REAL exp_factor = (LC_REAL)(grad_scale * q_total[r] / normaliser);
            LC_REAL scale = (LC_REAL)grad_scale;
            for (lc_index c = 0; c < n_classes; c++)
                grad_row[c] = exp_factor * grad_row[c] -
                              scale * LC_NAME(smoothed_target)(weight[c], t_row[c], target_scale,
                                                               target_offset);
        }
    }
}

/*
 * Binary cross-entropy with logits, elementwise, computed in double for both dtypes (the
 * reference formula (1 - t) x + (1 + (pw - 1) t) softplus(-x) cancels for x << 0, and the
 * gradient for a well-fitted target). weight and pos_weight rows repeat with a stride of 0
 * (one row for all) or n_classes (one row each). loss_out holds n_rows x n_classes values,
 * or one per row when loss_row_sums is set; grad_out may be NULL.
 */
LC_INLINE double LC_NAME(bce_element)(LC_REAL x_value, LC_REAL t_value, LC_REAL w_value,
                                      LC_REAL pw_value, double grad_scale, double* grad)
{
    double xd = x_value, t = t_value, w = w_value, pw = pw_value;
    double e = lc_exp_f64(-fabs(xd));
    double softplus_minus_x = (xd < 0.0 ? -xd : 0.0) + lc_log1p_unit_f64(e); /* NaN stays NaN */
    double log_weight = 1.0 + (pw - 1.0) * t;
    double inverse = 1.0 / (1.0 + e);
    double sigmoid = xd >= 0.0 ? inverse : e * inverse;
    *grad = grad_scale * w * (sigmoid * log_weight - pw * t);
    return w * ((1.0 - t) * xd + log_weight * softplus_minus_x);
}

LC_DISPATCH static void LC_NAME(lc_bce_rows)(const LC_REAL* x, const LC_REAL* target,
                                             const LC_REAL* weight, lc_index weight_row_stride,
                                             const LC_REAL* pos_weight, lc_index pos_weight_row_stride,
                                             lc_index n_rows, lc_index n_classes, LC_REAL* loss_out,
                                             int loss_row_sums, LC_REAL* grad_out, double grad_scale)
{
    /* The elements are processed in spans of at most LC_ROW_TILE_ELEMENTS: several whole rows when
       rows are short (so that 4M x 1 vectorises like 1 x 4M), else spans of one row. A
       weight row shared by all rows is tiled once to the length of a span of short rows. */
    LC_REAL tiled_weight[LC_ROW_TILE_ELEMENTS], tiled_pos_weight[LC_ROW_TILE_ELEMENTS];
    LC_REAL loss_buffer[LC_ROW_TILE_ELEMENTS], grad_buffer[LC_ROW_TILE_ELEMENTS];
    lc_index rows_per_step = n_classes >= LC_ROW_TILE_ELEMENTS ? 1 : LC_ROW_TILE_ELEMENTS / n_classes;
    int short_rows = rows_per_step > 1;
    lc_index span_length = short_rows ? rows_per_step * n_classes : LC_ROW_TILE_ELEMENTS;
    if (short_rows)
        for (lc_index i = 0; i < span_length; i++) {
            tiled_weight[i] = weight[i % n_classes];
            tiled_pos_weight[i] = pos_weight[i % n_classes];
        }
    for (lc_index first = 0; first < n_rows; first += rows_per_step) {
        lc_index rows = lc_min_index(rows_per_step, n_rows - first);
        lc_index step_length = rows * n_classes;
        double row_loss = 0.0; /* long rows: the loss of row `first`, over its spans */
        for (lc_index start = 0; start < step_length; start += span_length) {
            lc_index count = lc_min_index(span_length, step_length - start);
            lc_index offset = first * n_classes + start;
            const LC_REAL* w = weight_row_stride ? weight + offset
                               : short_rows      ? tiled_weight
                                                 : weight + start;
            const LC_REAL* pw = pos_weight_row_stride ? pos_weight + offset
                                : short_rows          ? tiled_pos_weight
                                                      : pos_weight + start;
            LC_REAL* loss_dest = loss_row_sums ? loss_buffer : loss_out + offset;
            LC_REAL* grad_dest = grad_out ? grad_out + offset : grad_buffer;
            for (lc_index i = 0; i < count; i++) {
                double grad;
                loss_dest[i] = (LC_REAL)LC_NAME(bce_element)(x[offset + i], target[offset + i], w[i],
                                                             pw[i], grad_scale, &grad);
                grad_dest[i] = (LC_REAL)grad;
            }
            if (loss_row_sums && short_rows)
                for (lc_index r = 0; r < rows; r++)
                    loss_out[first + r] = (LC_REAL)LC_NAME(row_sum)(
                        LC_TERM_VALUE, (LC_NAME(row_operands)){.a = loss_buffer + r * n_classes},
                        n_classes);
            else if (loss_row_sums)
                row_loss += LC_NAME(row_sum)(LC_TERM_VALUE,
                                             (LC_NAME(row_operands)){.a = loss_buffer}, count);
        }
        if (loss_row_sums && !short_rows)
            loss_out[first] = (LC_REAL)row_loss;
    }
}

/* Elementwise on a flat span: sigmoid(x) = 1 / (1 + e) or e / (1 + e) with e = exp(-|x|). */
LC_DISPATCH static void LC_NAME(lc_sigmoid_span)(const LC_REAL* x, LC_REAL* out, lc_index n)
{
    for (lc_index i = 0; i < n; i++) {
        LC_REAL e = LC_EXP(-LC_FABS(x[i]));
        LC_REAL inverse = (LC_REAL)1 / ((LC_REAL)1 + e);
        out[i] = x[i] >= 0 ? inverse : e * inverse;
    }
}

/* log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)); NaN propagates through the log1p. */
LC_DISPATCH static void LC_NAME(lc_log_sigmoid_span)(const LC_REAL* x, LC_REAL* out, lc_index n)
{
    for (lc_index i = 0; i < n; i++) {
        LC_REAL e = LC_EXP(-LC_FABS(x[i]));
        out[i] = (x[i] < 0 ? x[i] : (LC_REAL)0) - LC_LOG1P_UNIT(e);
    }
}

/* backward_rows_f32 / backward_rows_f64: the gradient of softmax or log_softmax (`op`, a
   constant at each call) given the output y and its cotangent dy; out may be dy or y.
     softmax:     out = y (dy - sum(dy y)), the difference in double (dy - dot cancels
                  where dy is close to the mean);
     log_softmax: out = dy - exp(y) sum(dy), the exp in double (sum(dy) can be large, and
                  it multiplies the exp's error). */
LC_INLINE void LC_NAME(backward_rows)(lc_op op, const LC_REAL* dy, const LC_REAL* y,
                                      lc_index n_rows, lc_index n_classes, LC_REAL* out)
{
    const enum lc_row_term term = op == LC_OP_SOFTMAX_BACKWARD ? LC_TERM_PRODUCT : LC_TERM_VALUE;
    for (lc_index r = 0; r < n_rows; r++) {
        const LC_REAL* dy_row = dy + r * n_classes;
        const LC_REAL* y_row = y + r * n_classes;
        LC_REAL* out_row = out + r * n_classes;
        double sum = LC_NAME(row_sum)(term, (LC_NAME(row_operands)){.a = dy_row, .b = y_row},
                                      n_classes);
        if (op == LC_OP_SOFTMAX_BACKWARD)
            for (lc_index c = 0; c < n_classes; c++)
                out_row[c] = (LC_REAL)((double)y_row[c] * ((double)dy_row[c] - sum));
        else
            for (lc_index c = 0; c < n_classes; c++)
                out_row[c] = (LC_REAL)((double)dy_row[c] - lc_exp_f64(y_row[c]) * sum);
    }
}

/* lc_softmax_backward_rows_f32 / _f64, lc_log_softmax_backward_rows_f32 / _f64:
   backward_rows compiled once per op. */
LC_DISPATCH static void LC_NAME(lc_softmax_backward_rows)(const LC_REAL* dy, const LC_REAL* y,
                                                          lc_index n_rows, lc_index n_classes,
                                                          LC_REAL* out)
{
    LC_NAME(backward_rows)(LC_OP_SOFTMAX_BACKWARD, dy, y, n_rows, n_classes, out);
}

LC_DISPATCH static void LC_NAME(lc_log_softmax_backward_rows)(const LC_REAL* dy, const LC_REAL* y,
                                                              lc_index n_rows, lc_index n_classes,
                                                              LC_REAL* out)
{
    LC_NAME(backward_rows)(LC_OP_LOG_SOFTMAX_BACKWARD, dy, y, n_rows, n_classes, out);
}

/* ====================== scoring: score_multiclass, score_binary, score_multilabel ======
   One read of each row. A row is cut into blocks of LC_BLOCK_CLASSES classes (one block
   when it is shorter); each block is swept while it is in L1: first its max, NaN flag and
   the count of logits above the label's (score_block_scan), then its entries into the
   top-k heap (score_block_top_k, only when an ordering field is asked), then its exp sums
   (score_block_sums, only when a probability field is asked). The blocks' states merge in
   block order (lc_score_states_merge) and the row's fields are formed from the merged
   state (score_row_finish). The rows schedule runs whole rows (lc_score_multiclass_rows);
   the class split runs ranges of blocks of one row on several threads
   (lc_score_multiclass_blocks) and then merges them (lc_score_multiclass_row_finish):
   the same block functions and the same merge, so the bits do not depend on the thread
   count. */

/* score_block_scan_f32 / _f64: the block's max (NaN ignored; -inf if all -inf), and into
   `part` whether it holds a NaN and how many of its logits exceed label_value (+inf: none
   counted). Counts are kept per lane in the element type: at most LC_BLOCK_CLASSES /
   LC_LANES per lane, exact. `lane_max` receives the lanes' maxima: the largest logit of
   each of LC_LANES disjoint sets of the block's logits (-inf for an empty set). */
LC_INLINE LC_REAL LC_NAME(score_block_scan)(const LC_REAL* x, lc_index n, LC_REAL label_value,
                                            lc_score_part* part, LC_REAL* lane_max)
{
    LC_REAL lane_nan[LC_LANES], lane_above[LC_LANES];
    for (int j = 0; j < LC_LANES; j++) {
        lane_max[j] = -INFINITY;
        lane_nan[j] = 0;
        lane_above[j] = 0;
    }
    lc_index i = 0;
    for (; i + LC_LANES <= n; i += LC_LANES)
        LC_NO_UNROLL
        for (int j = 0; j < LC_LANES; j++) {
            LC_REAL value = x[i + j];
            lane_max[j] = value > lane_max[j] ? value : lane_max[j];
            lane_nan[j] += (LC_REAL)(value != value);
            lane_above[j] += (LC_REAL)(value > label_value);
        }
    for (; i < n; i++) {
        LC_REAL value = x[i];
        lane_max[0] = value > lane_max[0] ? value : lane_max[0];
        lane_nan[0] += (LC_REAL)(value != value);
        lane_above[0] += (LC_REAL)(value > label_value);
    }
    LC_REAL top = -INFINITY, nans = 0, above = 0;
    for (int j = 0; j < LC_LANES; j++) {
        top = lane_max[j] > top ? lane_max[j] : top;
        nans += lane_nan[j];
        above += lane_above[j];
    }
    part->has_nan |= nans != 0;
    part->n_above_label += above;
    return top;
}

/* A lower bound of the k-th largest logit of a block from its lanes' maxima: they are k
   logits of the block (or -inf), so the k-th largest of them is at most the block's k-th
   largest. -inf when k > LC_LANES (no bound). Found by counting each lane's place in the
   descending order (ties by lane index), whose compares vectorise: a selection sort's
   data-dependent swaps mispredicted often enough to cost a quarter of a top-5 score. */
LC_INLINE LC_REAL LC_NAME(score_top_k_floor)(const LC_REAL* lane_max, lc_index k)
{
    if (k < 1 || k > LC_LANES)
        return -INFINITY;
    LC_REAL floor = (LC_REAL)-INFINITY;
    for (int a = 0; a < LC_LANES; a++) {
        int place = 0;
        for (int b = 0; b < LC_LANES; b++)
            place += (lane_max[b] > lane_max[a]) | ((lane_max[b] == lane_max[a]) & (b < a));
        floor = place == k - 1 ? lane_max[a] : floor;
    }
    return floor;
}

/* Offer x[i] (class first_class + i) to the heap if it can enter: not NaN, >= floor and,
   when the heap is full, not below its last-ranked entry. */
LC_INLINE void LC_NAME(score_top_k_consider)(const LC_REAL* x, lc_index i, lc_index first_class,
                                             LC_REAL floor, lc_top_k* top)
{
    LC_REAL value = x[i];
    if (!(value >= floor)) /* below the floor, or NaN (no rank) */
        return;
    if (top->count == top->capacity && !(value >= (LC_REAL)top->entries[0].value))
        return;
    lc_top_k_offer(top, (lc_ranked){value, first_class + i});
}

/* score_block_top_k_f32 / _f64: the block's logits (classes first_class, ...) offered to
   the heap, where only a few can enter and finding them is the cost.
   capacity <= LC_LANES: the block's k largest logits are all >= floor, the k-th largest
   of the lanes' maxima (score_top_k_floor), and usually only a few more are: a
   vectorised compare flags them, and only the flagged logits are offered.
   The heap's order is total, so the entries do not depend on the order of the offers.
   Larger capacity: the logits are compared in chunks of 4 LC_LANES through the chunk's
   max (vectorised); a chunk is walked only if it may hold an entrant. */
LC_INLINE void LC_NAME(score_block_top_k)(const LC_REAL* x, lc_index n, lc_index first_class,
                                          const LC_REAL* lane_max, lc_top_k* top)
{
    if (top->capacity <= LC_LANES) {
        const LC_REAL floor = LC_NAME(score_top_k_floor)(lane_max, top->capacity);
        /* One flag byte per logit (a vectorised compare), then eight flags at a time
           through one 64-bit test: only the words holding a flag are walked. (A
           per-vector any() is not vectorised by gcc: it unrolls into scalar compares.) */
        unsigned char reaches[LC_BLOCK_CLASSES + 8];
        const lc_index n_words = (n + 7) / 8;
        for (lc_index i = 0; i < n; i++)
            reaches[i] = x[i] >= floor; /* NaN: 0 */
        for (lc_index i = n; i < 8 * n_words; i++)
            reaches[i] = 0;
        for (lc_index w = 0; w < n_words; w++) {
            uint64_t word;
            memcpy(&word, reaches + 8 * w, sizeof word);
            if (!word)
                continue;
            for (lc_index i = 8 * w; i < 8 * w + 8; i++)
                if (reaches[i])
                    LC_NAME(score_top_k_consider)(x, i, first_class, floor, top);
        }
        return;
    }
    enum { CHUNK = 4 * LC_LANES };
    const LC_REAL floor = (LC_REAL)-INFINITY;
    lc_index i = 0;
    for (;;) {
        /* a chunk may hold an entrant if its max reaches the full heap's root */
        LC_REAL lowest = top->count == top->capacity ? (LC_REAL)top->entries[0].value : floor;
        for (; i + CHUNK <= n; i += CHUNK) {
            LC_REAL chunk_lanes[LC_LANES];
            for (int j = 0; j < LC_LANES; j++)
                chunk_lanes[j] = x[i + j];
            for (lc_index at = i + LC_LANES; at < i + CHUNK; at += LC_LANES)
                LC_NO_UNROLL
                for (int j = 0; j < LC_LANES; j++)
                    chunk_lanes[j] = x[at + j] > chunk_lanes[j] ? x[at + j] : chunk_lanes[j];
            LC_REAL chunk_max = chunk_lanes[0];
            for (int j = 1; j < LC_LANES; j++)
                chunk_max = chunk_lanes[j] > chunk_max ? chunk_lanes[j] : chunk_max;
            if (chunk_max >= lowest)
                break;
        }
        if (i >= n)
            return;
        lc_index end = lc_min_index(n, i + CHUNK); /* one chunk, or the tail */
        for (; i < end; i++)
            LC_NAME(score_top_k_consider)(x, i, first_class, floor, top);
    }
}

/* score_block_sums_f32 / _f64: the block's exp sums for the shift finite_or_zero(top) (its
   max), with the moment and the squares when asked (`want_moment`, `want_squares` are
   constants at each call: the loop is compiled once per combination). All terms of each
   sum have one sign, so partial sums in the element type lose nothing worth keeping when
   flushed into double every LC_PARTIAL_SUM_LENGTH elements (as row_sum_exp). The term at
   the shift is taken out of `others` and `squares` by subtracting the comparison's 1.0. */
LC_INLINE lc_score_state LC_NAME(score_block_sums)(const LC_REAL* x, lc_index n, LC_REAL top,
                                                   int want_moment, int want_squares)
{
    const LC_REAL shift = LC_NAME(finite_or_zero)(top);
    lc_score_state state = {top, {0.0, 0.0}, 0.0, 0.0};
    lc_index i = 0;
    while (i < n) {
        lc_index block_end = lc_min_index(n, i + LC_PARTIAL_SUM_LENGTH);
        LC_REAL lane_sum[LC_LANES], lane_count[LC_LANES], lane_moment[LC_LANES],
            lane_squares[LC_LANES];
        for (int j = 0; j < LC_LANES; j++) {
            lane_sum[j] = 0;
            lane_count[j] = 0;
            lane_moment[j] = 0;
            lane_squares[j] = 0;
        }
        for (; i + LC_LANES <= block_end; i += LC_LANES)
            LC_NO_UNROLL
            for (int j = 0; j < LC_LANES; j++) {
                LC_REAL shifted = x[i + j] - shift;
                LC_REAL value = LC_EXP(shifted);
                LC_REAL at_max = (LC_REAL)(x[i + j] == shift);
                lane_sum[j] += value - at_max;
                lane_count[j] += at_max;
                if (want_moment) /* 0 where the exp is 0: not (-inf) * 0 */
                    lane_moment[j] += (value != 0 ? shifted : (LC_REAL)0) * value;
                if (want_squares)
                    lane_squares[j] += value * value - at_max;
            }
        for (; i < block_end; i++) {
            LC_REAL shifted = x[i] - shift;
            LC_REAL value = LC_EXP(shifted);
            LC_REAL at_max = (LC_REAL)(x[i] == shift);
            lane_sum[0] += value - at_max;
            lane_count[0] += at_max;
            if (want_moment)
                lane_moment[0] += (value != 0 ? shifted : (LC_REAL)0) * value;
            if (want_squares)
                lane_squares[0] += value * value - at_max;
        }
        double others = 0.0, count = 0.0, moment = 0.0, squares = 0.0;
        for (int j = 0; j < LC_LANES; j++) {
            others += lane_sum[j];
            count += lane_count[j];
            moment += lane_moment[j];
            squares += lane_squares[j];
        }
        state.sums.others += others;
        state.sums.n_at_max += count;
        state.moment += moment;
        state.squares += squares;
    }
    return state;
}

/* score_block_f32 / _f64: one block of a row (classes first_class, ...): its state, and
   its NaN flag, label count and top-k entries into `part`. */
LC_INLINE lc_score_state LC_NAME(score_block)(const lc_score_multiclass_fields* f,
                                              const LC_REAL* x, lc_index n, lc_index first_class,
                                              LC_REAL label_value, lc_score_part* part)
{
    LC_REAL lane_max[LC_LANES];
    LC_REAL top = LC_NAME(score_block_scan)(x, n, label_value, part, lane_max);
    if (f->heap_capacity)
        LC_NAME(score_block_top_k)(x, n, first_class, lane_max, &part->top);
    if (!f->want_sums) {
        lc_score_state state = {top, {0.0, 0.0}, 0.0, 0.0};
        return state;
    }
    if (f->want_moment && f->want_squares)
        return LC_NAME(score_block_sums)(x, n, top, 1, 1);
    if (f->want_moment)
        return LC_NAME(score_block_sums)(x, n, top, 1, 0);
    if (f->want_squares)
        return LC_NAME(score_block_sums)(x, n, top, 0, 1);
    return LC_NAME(score_block_sums)(x, n, top, 0, 0);
}

/* A row's label: its class, whether it is kept (not ignore_index) and its logit. */
typedef struct {
    int64_t label;
    int kept;
    LC_REAL logit;
} LC_NAME(score_label);

LC_INLINE LC_NAME(score_label) LC_NAME(score_row_label)(const lc_score_multiclass_fields* f,
                                                        const LC_REAL* x_row, lc_index row)
{
    LC_NAME(score_label) label = {0, 0, 0};
    if (f->labels) {
        label.label = f->labels[row];
        label.kept = label.label != f->ignore_index;
        if (label.kept)
            label.logit = x_row[label.label];
    }
    return label;
}

/* What the block scans count the logits against: the label's logit when the rank is asked
   (read before the row's sweeps), else +inf (nothing is above it). */
LC_INLINE LC_REAL LC_NAME(score_rank_value)(const lc_score_multiclass_fields* f,
                                            LC_NAME(score_label) label)
{
    return f->want_rank && label.kept ? label.logit : (LC_REAL)INFINITY;
}

/* What the fields of up to LC_TILE_MAX_ROWS consecutive rows are formed from, one array
   per quantity (so that score_rows_finish runs each field's loop across rows, vectorised):
   the row state, the NaN flag and label count, the first and second class by logit, and
   the label. */
typedef struct {
    LC_REAL max[LC_TILE_MAX_ROWS];
    LC_REAL has_nan[LC_TILE_MAX_ROWS];
    LC_REAL n_above[LC_TILE_MAX_ROWS];
    LC_REAL second[LC_TILE_MAX_ROWS]; /* the 2nd logit; -inf for a row of one class */
    LC_REAL label_logit[LC_TILE_MAX_ROWS];
    int64_t first_index[LC_TILE_MAX_ROWS];
    int64_t label[LC_TILE_MAX_ROWS];
    int64_t kept[LC_TILE_MAX_ROWS];
    double others[LC_TILE_MAX_ROWS];
    double n_at_max[LC_TILE_MAX_ROWS];
    double moment[LC_TILE_MAX_ROWS];
    double squares[LC_TILE_MAX_ROWS];
    double total[LC_TILE_MAX_ROWS]; /* S = sum exp(x - max), NaN where max is not finite */
    double log_total[LC_TILE_MAX_ROWS]; /* log S */
} LC_NAME(score_rows);

/* Slot r of `rows` from a row's merged state, part (its heap sorted) and label. */
LC_INLINE void LC_NAME(score_rows_set)(LC_NAME(score_rows)* rows, lc_index r,
                                       lc_score_state state, const lc_score_part* part,
                                       LC_NAME(score_label) label)
{
    const lc_ranked* top = part->top.entries;
    rows->max[r] = (LC_REAL)state.max;
    rows->has_nan[r] = (LC_REAL)part->has_nan;
    rows->n_above[r] = (LC_REAL)part->n_above_label;
    rows->first_index[r] = part->top.count > 0 ? top[0].index : 0;
    rows->second[r] = part->top.count > 1 ? (LC_REAL)top[1].value : (LC_REAL)-INFINITY;
    rows->label[r] = label.label;
    rows->kept[r] = label.kept;
    rows->label_logit[r] = label.logit;
    rows->others[r] = state.sums.others;
    rows->n_at_max[r] = state.sums.n_at_max;
    rows->moment[r] = state.moment;
    rows->squares[r] = state.squares;
}

/* The probability of a logit of a row: exp(value - max) / S. */
LC_INLINE double LC_NAME(score_prob)(double value, double row_max, double total)
{
    return lc_exp_f64(value - row_max) / total;
}

/* score_rows_finish_f32 / _f64: every asked per-row field of the rows [first, first + n)
   (slots 0 .. n - 1 of `rows`), in double, one loop across the rows per field. Edge rows
   as in the reference (numpy_ref.score_multiclass and the table in logitcore/_score.py):
   a NaN row has pred -1, rank 0, correct False and NaN values; a row whose max is not
   finite (+inf, all -inf) has NaN probabilities. The top-k fields are written by the
   callers (they hold the top k). */
LC_INLINE void LC_NAME(score_rows_finish)(const lc_score_multiclass_fields* f,
                                          LC_NAME(score_rows)* rows, lc_index first, lc_index n)
{
    for (lc_index r = 0; r < n; r++) /* S; NaN for a NaN row through `others` */
        rows->total[r] = isfinite(rows->max[r]) ? rows->others[r] + rows->n_at_max[r] : NAN;
    const double* total = rows->total;
    const double* log_total = rows->log_total;
    /* log S = log1p(S - 1): right at the edges too, see lc_exp_sums_log. Once per row for
       every field that takes it. */
    const int want_logprob = f->labels && (f->label_logprob || f->loss);
    if (f->entropy || f->logsumexp || want_logprob)
        for (lc_index r = 0; r < n; r++)
            rows->log_total[r] = lc_log1p_f64(rows->others[r] + (rows->n_at_max[r] - 1.0));
    if (f->pred)
        for (lc_index r = 0; r < n; r++)
            f->pred[first + r] = rows->has_nan[r] != 0 ? -1 : rows->first_index[r];
    if (f->max_logit)
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->max_logit)[first + r] =
                rows->has_nan[r] != 0 ? (LC_REAL)NAN : rows->max[r];
    if (f->confidence) /* the top class's exp is exp(0) = 1 */
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->confidence)[first + r] = (LC_REAL)(1.0 / total[r]);
    if (f->margin)
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->margin)[first + r] =
                (LC_REAL)((1.0 - lc_exp_f64((double)rows->second[r] - rows->max[r])) / total[r]);
    if (f->logit_margin) /* the top logit is the max */
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->logit_margin)[first + r] =
                rows->has_nan[r] != 0 ? (LC_REAL)NAN
                                      : (LC_REAL)((double)rows->max[r] - rows->second[r]);
    if (f->entropy) /* H = log S - moment / S */
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->entropy)[first + r] = (LC_REAL)(
                log_total[r] - rows->moment[r] / total[r]);
    if (f->logsumexp)
        for (lc_index r = 0; r < n; r++)
            ((LC_REAL*)f->logsumexp)[first + r] = (LC_REAL)((double)rows->max[r] + log_total[r]);
    if (!f->labels)
        return;
    /* An ignored row (kept 0) is masked out: 0 everywhere. */
    if (want_logprob)
        for (lc_index r = 0; r < n; r++) {
            /* x[y] - max - log S; NaN where S is (the log is taken of NaN then) */
            double logprob = ((double)rows->label_logit[r] - rows->max[r]) -
                             (isfinite(rows->max[r]) ? log_total[r] : NAN);
            logprob = rows->kept[r] ? logprob : 0.0;
            if (f->label_logprob)
                ((LC_REAL*)f->label_logprob)[first + r] = (LC_REAL)logprob;
            if (f->loss) /* 0.0 - x: a certain label has loss 0.0, not -0.0 */
                ((LC_REAL*)f->loss)[first + r] = (LC_REAL)(0.0 - logprob);
        }
    if (f->correct)
        for (lc_index r = 0; r < n; r++)
            /* & not &&: no branches, the loop vectorises */
            f->correct[first + r] = (uint8_t)((rows->kept[r] != 0) & (rows->has_nan[r] == 0) &
                                              (rows->first_index[r] == rows->label[r]));
    if (f->label_rank)
        for (lc_index r = 0; r < n; r++)
            f->label_rank[first + r] = (rows->kept[r] != 0) & (rows->has_nan[r] == 0)
                                           ? 1 + (int64_t)rows->n_above[r]
                                           : 0;
    if (f->brier)
        for (lc_index r = 0; r < n; r++) {
            /* sum_c (p_c - onehot_c)^2 = (1 - p_y)^2 + sum_{c != y} p_c^2, each formed
               without cancelling. At the max (exp 1): S - 1 = others + n_at_max - 1, and the
               squares other than the label's are squares + n_at_max - 1. */
            const int at_max = rows->label_logit[r] == rows->max[r];
            double label_exp = at_max ? 1.0 : lc_exp_f64((double)rows->label_logit[r] - rows->max[r]);
            double miss = at_max ? rows->others[r] + (rows->n_at_max[r] - 1.0) : total[r] - label_exp;
            double rest = at_max ? rows->squares[r] + (rows->n_at_max[r] - 1.0)
                                 : rows->squares[r] - label_exp * label_exp + rows->n_at_max[r];
            double brier = (miss * miss + rest) / (total[r] * total[r]);
            ((LC_REAL*)f->brier)[first + r] = rows->kept[r] ? (LC_REAL)brier : (LC_REAL)0;
        }
}

/* The top-k fields of row `row` from its sorted heap (wide rows). */
LC_INLINE void LC_NAME(score_top_k_write)(const lc_score_multiclass_fields* f, lc_index row,
                                          const lc_score_part* part, lc_score_state state)
{
    const double total = isfinite(state.max) ? lc_exp_sums_total(state.sums) : NAN;
    const lc_ranked* top = part->top.entries;
    for (lc_index j = 0; j < f->top_k; j++) {
        lc_index at = row * f->top_k + j;
        if (f->top_k_indices)
            f->top_k_indices[at] = part->has_nan ? -1 : top[j].index;
        if (f->top_k_probs)
            ((LC_REAL*)f->top_k_probs)[at] =
                part->has_nan ? (LC_REAL)NAN
                              : (LC_REAL)LC_NAME(score_prob)(top[j].value, state.max, total);
    }
}

/* score_narrow_sums_f32 / _f64: the sums of the narrow rows of a transposed tile (xt[c *
   n_rows + r]), across the rows (vectorised), for the shift finite_or_zero(max) of each.
   `want_moment`, `want_squares` are constants at each call, as in score_block_sums. */
LC_INLINE void LC_NAME(score_narrow_sums)(const LC_REAL* xt, lc_index n_rows, lc_index n_classes,
                                          LC_NAME(score_rows)* rows, int want_moment,
                                          int want_squares)
{
    LC_REAL shift[LC_TILE_MAX_ROWS];
    for (lc_index r = 0; r < n_rows; r++)
        shift[r] = LC_NAME(finite_or_zero)(rows->max[r]);
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            LC_REAL shifted = xt[c * n_rows + r] - shift[r];
            LC_REAL value = LC_EXP(shifted);
            LC_REAL at_max = (LC_REAL)(shifted == 0); /* x == shift (gradual underflow) */
            rows->others[r] += value - at_max;
            rows->n_at_max[r] += at_max;
            if (want_moment) /* 0 where the exp is 0: not (-inf) * 0 */
                rows->moment[r] += (value != 0 ? shifted : (LC_REAL)0) * value;
            if (want_squares)
                rows->squares[r] += value * value - at_max;
        }
}

/* score_transpose_f32 / _f64: xt[c * n_rows + r] = x[r * n_classes + c], a row tile
   transposed. Called with a constant n_classes (score_narrow_transpose), the class loop
   unrolls: a loop of 10 per row costs as many instructions again as the copy itself. */
LC_INLINE void LC_NAME(score_transpose)(const LC_REAL* x, lc_index n_rows, lc_index n_classes,
                                        LC_REAL* xt)
{
    for (lc_index r = 0; r < n_rows; r++)
        for (lc_index c = 0; c < n_classes; c++)
            xt[c * n_rows + r] = x[r * n_classes + c];
}

LC_INLINE void LC_NAME(score_narrow_transpose)(const LC_REAL* x, lc_index n_rows,
                                               lc_index n_classes, LC_REAL* xt)
{
    switch (n_classes) { /* the common narrow widths; any other takes the loop */
    case 2: LC_NAME(score_transpose)(x, n_rows, 2, xt); break;
    case 3: LC_NAME(score_transpose)(x, n_rows, 3, xt); break;
    case 4: LC_NAME(score_transpose)(x, n_rows, 4, xt); break;
    case 5: LC_NAME(score_transpose)(x, n_rows, 5, xt); break;
    case 8: LC_NAME(score_transpose)(x, n_rows, 8, xt); break;
    case 10: LC_NAME(score_transpose)(x, n_rows, 10, xt); break;
    case 16: LC_NAME(score_transpose)(x, n_rows, 16, xt); break;
    default: LC_NAME(score_transpose)(x, n_rows, n_classes, xt);
    }
}

/* score_narrow_top_k_f32 / _f64: the k largest logits of each row of a transposed tile
   (xt[c * n_rows + r]), sorted in the rank order of lc_ranked_before, into
   top_value / top_index[j * n_rows + r] (class indices held in the element type: exact
   below 64). Each class in turn is passed down the k sorted entries of every row (compare
   and swap, across the rows). Each step reads one buffer and writes the other (ping-pong):
   written in place, `entry = take ? v : entry` lets the compiler store only where `take`
   holds, a masked store (vmaskmovps) that costs a third of a narrow score on AMD cores. */
LC_INLINE void LC_NAME(score_narrow_top_k)(const LC_REAL* xt, lc_index n_rows, lc_index n_classes,
                                           lc_index k, LC_REAL* top_value, LC_REAL* top_index)
{
    LC_REAL entry_value[2][LC_ROW_TILE_ELEMENTS], entry_index[2][LC_ROW_TILE_ELEMENTS];
    LC_REAL carry_value[2][LC_TILE_MAX_ROWS], carry_index[2][LC_TILE_MAX_ROWS];
    int now = 0; /* entry_*[now] holds the entries of the classes passed so far */
    /* index -1 marks an empty entry, which takes any logit but NaN */
    for (lc_index i = 0; i < k * n_rows; i++) {
        entry_value[now][i] = -INFINITY;
        entry_index[now][i] = -1;
    }
    for (lc_index c = 0; c < n_classes; c++) {
        for (lc_index r = 0; r < n_rows; r++) {
            carry_value[0][r] = xt[c * n_rows + r];
            carry_index[0][r] = (LC_REAL)c;
        }
        for (lc_index j = 0; j < k; j++) {
            const LC_REAL* kept_values = entry_value[now] + j * n_rows;
            const LC_REAL* kept_indices = entry_index[now] + j * n_rows;
            const LC_REAL* values = carry_value[j & 1];
            const LC_REAL* indices = carry_index[j & 1];
            LC_REAL* new_kept_values = entry_value[!now] + j * n_rows;
            LC_REAL* new_kept_indices = entry_index[!now] + j * n_rows;
            LC_REAL* passed_values = carry_value[!(j & 1)];
            LC_REAL* passed_indices = carry_index[!(j & 1)];
            for (lc_index r = 0; r < n_rows; r++) {
                LC_REAL kept_value = kept_values[r], kept_index = kept_indices[r];
                LC_REAL v = values[r], v_index = indices[r];
                /* the rank order of lc_ranked_before (an entry pushed down by a larger
                   logit may tie with the next one and has the lower index) */
                int take = v > kept_value || (v == kept_value && v_index < kept_index) ||
                           (kept_index < 0 && v == v);
                new_kept_values[r] = take ? v : kept_value;
                new_kept_indices[r] = take ? v_index : kept_index;
                passed_values[r] = take ? kept_value : v;
                passed_indices[r] = take ? kept_index : v_index;
            }
        }
        now = !now;
    }
    memcpy(top_value, entry_value[now], (size_t)(k * n_rows) * sizeof(LC_REAL));
    memcpy(top_index, entry_index[now], (size_t)(k * n_rows) * sizeof(LC_REAL));
}

/* score_top_k_copy_f32 / _f64: the top-k fields of the rows [first, first + n_rows) from
   their values by entry (top_class / top_prob[j * n_rows + r]) into the (row, j) layout of
   the outputs. Called with a constant k (score_narrow_tile), the j loop unrolls. */
LC_INLINE void LC_NAME(score_top_k_copy)(const lc_score_multiclass_fields* f, lc_index first,
                                         lc_index n_rows, lc_index k, const int64_t* top_class,
                                         const LC_REAL* top_prob)
{
    for (lc_index r = 0; r < n_rows; r++)
        for (lc_index j = 0; j < k; j++) {
            if (f->top_k_indices)
                f->top_k_indices[(first + r) * k + j] = top_class[j * n_rows + r];
            if (f->top_k_probs)
                ((LC_REAL*)f->top_k_probs)[(first + r) * k + j] = top_prob[j * n_rows + r];
        }
}

/* score_narrow_tile_f32 / _f64: narrow rows (fewer than LC_NARROW_MAX_CLASSES classes),
   the rows [first, first + n_rows) as one row tile. A loop over 10 classes does not
   vectorise, so the tile is transposed (xt[c * n_rows + r]) and every step runs across
   the rows: the scan, the top k (score_narrow_top_k), the sums, and the top-k
   probabilities. */
LC_INLINE void LC_NAME(score_narrow_tile)(const lc_score_multiclass_fields* f, const LC_REAL* x,
                                          lc_index first, lc_index n_rows, lc_index n_classes,
                                          LC_NAME(score_rows)* rows)
{
    const LC_REAL* x_tile = x + first * n_classes;
    const lc_index k = f->heap_capacity; /* <= n_classes, so k * n_rows fits a tile */
    LC_REAL xt[LC_ROW_TILE_ELEMENTS], top_value[LC_ROW_TILE_ELEMENTS],
        top_index[LC_ROW_TILE_ELEMENTS];
    LC_REAL rank_value[LC_TILE_MAX_ROWS];
    for (lc_index r = 0; r < n_rows; r++) {
        LC_NAME(score_label) label = LC_NAME(score_row_label)(f, x_tile + r * n_classes, first + r);
        rows->label[r] = label.label;
        rows->kept[r] = label.kept;
        rows->label_logit[r] = label.logit;
        rank_value[r] = LC_NAME(score_rank_value)(f, label);
        rows->max[r] = -INFINITY;
        rows->has_nan[r] = 0;
        rows->n_above[r] = 0;
        rows->others[r] = rows->n_at_max[r] = rows->moment[r] = rows->squares[r] = 0.0;
    }
    LC_NAME(score_narrow_transpose)(x_tile, n_rows, n_classes, xt);
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            LC_REAL v = xt[c * n_rows + r];
            rows->max[r] = v > rows->max[r] ? v : rows->max[r];
            rows->has_nan[r] += (LC_REAL)(v != v);
        }
    if (f->want_rank)
        for (lc_index c = 0; c < n_classes; c++)
            for (lc_index r = 0; r < n_rows; r++)
                rows->n_above[r] += (LC_REAL)(xt[c * n_rows + r] > rank_value[r]);
    if (k == 1 || (k == 2 && f->top_k == 0)) {
        /* The argmax (pred, correct) and, with k = 2, the second logit (margin) without
           the sorted entries: the first class above all before it (NaN ignored as in the
           scan, 0 for a row of -inf), then the max over the other classes. The index is
           blended by arithmetic (exact: small integers): a select written back in place
           becomes a masked store, see score_narrow_top_k. */
        LC_REAL best[LC_TILE_MAX_ROWS];
        for (lc_index r = 0; r < n_rows; r++) {
            best[r] = -INFINITY;
            top_index[r] = 0;
        }
        for (lc_index c = 0; c < n_classes; c++)
            for (lc_index r = 0; r < n_rows; r++) {
                LC_REAL v = xt[c * n_rows + r];
                LC_REAL above = (LC_REAL)(v > best[r]);
                best[r] = v > best[r] ? v : best[r];
                top_index[r] += above * ((LC_REAL)c - top_index[r]);
            }
        for (lc_index r = 0; r < n_rows; r++) {
            rows->first_index[r] = (int64_t)top_index[r];
            rows->second[r] = -INFINITY;
        }
        if (k == 2)
            for (lc_index c = 0; c < n_classes; c++)
                for (lc_index r = 0; r < n_rows; r++) {
                    LC_REAL v = (LC_REAL)c == top_index[r] ? (LC_REAL)-INFINITY : xt[c * n_rows + r];
                    rows->second[r] = v > rows->second[r] ? v : rows->second[r];
                }
        for (lc_index r = 0; r < n_rows; r++)
            top_value[r] = rows->max[r]; /* top_k = 1's probability */
    } else if (k > 1) {
        LC_NAME(score_narrow_top_k)(xt, n_rows, n_classes, k, top_value, top_index);
        for (lc_index r = 0; r < n_rows; r++) {
            rows->first_index[r] = (int64_t)top_index[r];
            rows->second[r] = top_value[n_rows + r];
        }
    } else {
        for (lc_index r = 0; r < n_rows; r++) {
            rows->first_index[r] = 0;
            rows->second[r] = -INFINITY;
        }
    }
    if (f->want_sums) {
        if (f->want_moment && f->want_squares)
            LC_NAME(score_narrow_sums)(xt, n_rows, n_classes, rows, 1, 1);
        else if (f->want_moment)
            LC_NAME(score_narrow_sums)(xt, n_rows, n_classes, rows, 1, 0);
        else if (f->want_squares)
            LC_NAME(score_narrow_sums)(xt, n_rows, n_classes, rows, 0, 1);
        else
            LC_NAME(score_narrow_sums)(xt, n_rows, n_classes, rows, 0, 0);
    }
    LC_NAME(score_rows_finish)(f, rows, first, n_rows);
    if (f->top_k == 0)
        return;
    /* Both fields formed across the rows first (vectorised: the exps, the int64
       conversion (through int32: AVX2 has no float to int64), the NaN rows), in place of
       the entries ([j * n_rows + r]), then copied row by row into their (row, j) layout. */
    int64_t top_class[LC_ROW_TILE_ELEMENTS];
    if (f->top_k_indices)
        for (lc_index j = 0; j < f->top_k; j++)
            for (lc_index r = 0; r < n_rows; r++)
                top_class[j * n_rows + r] =
                    rows->has_nan[r] != 0 ? -1 : (int64_t)(int32_t)top_index[j * n_rows + r];
    if (f->top_k_probs)
        for (lc_index j = 0; j < f->top_k; j++)
            for (lc_index r = 0; r < n_rows; r++)
                top_value[j * n_rows + r] =
                    rows->has_nan[r] != 0
                        ? (LC_REAL)NAN
                        : (LC_REAL)LC_NAME(score_prob)(top_value[j * n_rows + r], rows->max[r],
                                                       rows->total[r]);
    switch (f->top_k) { /* the common k; any other takes the loop */
    case 1: LC_NAME(score_top_k_copy)(f, first, n_rows, 1, top_class, top_value); break;
    case 2: LC_NAME(score_top_k_copy)(f, first, n_rows, 2, top_class, top_value); break;
    case 3: LC_NAME(score_top_k_copy)(f, first, n_rows, 3, top_class, top_value); break;
    case 5: LC_NAME(score_top_k_copy)(f, first, n_rows, 5, top_class, top_value); break;
    case 10: LC_NAME(score_top_k_copy)(f, first, n_rows, 10, top_class, top_value); break;
    default: LC_NAME(score_top_k_copy)(f, first, n_rows, f->top_k, top_class, top_value);
    }
}

/* lc_score_multiclass_rows_f32 / _f64: rows [first, first + count) of x (the rows
   schedule). Narrow rows go by row tiles; others one at a time, block by block, their
   results gathered for score_rows_finish in batches of LC_TILE_MAX_ROWS rows. The heap
   and the block states are scratch of this call. */
LC_DISPATCH static void LC_NAME(lc_score_multiclass_rows)(lc_score_multiclass_fields* f,
                                                          const LC_REAL* x, lc_index first,
                                                          lc_index count, lc_index n_classes)
{
    enum { ON_STACK = 64 };
    lc_ranked heap_on_stack[ON_STACK];
    lc_score_state states_on_stack[ON_STACK];
    LC_NAME(score_rows) rows;
    const lc_index n_blocks = (n_classes + LC_BLOCK_CLASSES - 1) / LC_BLOCK_CLASSES;
    if (n_classes < LC_NARROW_MAX_CLASSES) {
        lc_index rows_per_tile = lc_rows_per_tile(n_classes);
        for (lc_index at = first; at < first + count; at += rows_per_tile)
            LC_NAME(score_narrow_tile)(f, x, at, lc_min_index(rows_per_tile, first + count - at),
                                       n_classes, &rows);
        return;
    }
    lc_ranked* heap = f->heap_capacity <= ON_STACK
                          ? heap_on_stack
                          : (lc_ranked*)malloc((size_t)f->heap_capacity * sizeof(lc_ranked));
    lc_score_state* states =
        n_blocks <= ON_STACK ? states_on_stack
                             : (lc_score_state*)malloc((size_t)n_blocks * sizeof(lc_score_state));
    if (heap == NULL || states == NULL) {
        f->out_of_memory = 1;
    } else {
        lc_index batch_first = first, slot = 0;
        for (lc_index row = first; row < first + count; row++) {
            const LC_REAL* x_row = x + row * n_classes;
            LC_NAME(score_label) label = LC_NAME(score_row_label)(f, x_row, row);
            LC_REAL rank_value = LC_NAME(score_rank_value)(f, label);
            lc_score_part part;
            lc_score_part_start(&part, heap, f->heap_capacity);
            for (lc_index b = 0; b < n_blocks; b++) {
                lc_index start = b * LC_BLOCK_CLASSES;
                states[b] = LC_NAME(score_block)(f, x_row + start,
                                                 lc_min_index(LC_BLOCK_CLASSES, n_classes - start),
                                                 start, rank_value, &part);
            }
            lc_score_state state =
                n_blocks == 1 ? states[0] : lc_score_states_merge(states, n_blocks);
            lc_top_k_sort(&part.top);
            LC_NAME(score_top_k_write)(f, row, &part, state);
            LC_NAME(score_rows_set)(&rows, slot++, state, &part, label);
            if (slot == LC_TILE_MAX_ROWS || row + 1 == first + count) {
                LC_NAME(score_rows_finish)(f, &rows, batch_first, slot);
                batch_first += slot;
                slot = 0;
            }
        }
    }
    if (heap != heap_on_stack)
        free(heap);
    if (states != states_on_stack)
        free(states);
}

/* lc_score_multiclass_blocks_f32 / _f64: the class split's part of one row: the blocks
   [first_block, end_block), their states into `states`, the rest into `part`. */
LC_DISPATCH static void LC_NAME(lc_score_multiclass_blocks)(const lc_score_multiclass_fields* f,
                                                            const LC_REAL* x, lc_index row,
                                                            lc_index n_classes,
                                                            lc_index first_block,
                                                            lc_index end_block,
                                                            lc_score_state* states,
                                                            lc_score_part* part)
{
    const LC_REAL* x_row = x + row * n_classes;
    LC_REAL rank_value =
        LC_NAME(score_rank_value)(f, LC_NAME(score_row_label)(f, x_row, row));
    for (lc_index b = first_block; b < end_block; b++) {
        lc_index start = b * LC_BLOCK_CLASSES;
        states[b] = LC_NAME(score_block)(f, x_row + start,
                                         lc_min_index(LC_BLOCK_CLASSES, n_classes - start), start,
                                         rank_value, part);
    }
}

/* lc_score_multiclass_row_finish_f32 / _f64: the class split's end of one row: the parts
   merged in order into parts[0], the block states in block order, then the fields. It is
   compiled for the same instruction sets as lc_score_multiclass_rows (LC_DISPATCH), so
   that the merge and the fields round alike (gcc contracts a * b + c into one FMA where
   the instruction set has it): a row gives the same bits on either schedule. */
LC_DISPATCH static void LC_NAME(lc_score_multiclass_row_finish)(const lc_score_multiclass_fields* f,
                                                    const LC_REAL* x, lc_index row,
                                                    lc_index n_classes,
                                                    const lc_score_state* states,
                                                    lc_index n_blocks, lc_score_part* parts,
                                                    lc_index n_parts)
{
    LC_NAME(score_rows) rows;
    for (lc_index p = 1; p < n_parts; p++)
        lc_score_part_merge(&parts[0], &parts[p]);
    lc_top_k_sort(&parts[0].top);
    lc_score_state state = lc_score_states_merge(states, n_blocks);
    LC_NAME(score_top_k_write)(f, row, &parts[0], state);
    LC_NAME(score_rows_set)(&rows, 0, state, &parts[0],
                            LC_NAME(score_row_label)(f, x + row * n_classes, row));
    LC_NAME(score_rows_finish)(f, &rows, row, 1);
}

/* lc_score_binary_span_f32 / _f64: score_binary on the items [first, first + count), in
   double as the reference (numpy_ref.score_binary). */
LC_DISPATCH static void LC_NAME(lc_score_binary_span)(const lc_score_binary_fields* f,
                                                      const LC_REAL* x, lc_index first,
                                                      lc_index count)
{
    for (lc_index i = first; i < first + count; i++) {
        double v = x[i];
        lc_sigmoid_logs s = lc_sigmoid_logs_of(v);
        double p = s.prob, q = 1.0 - p;
        int pred = p >= f->threshold; /* false for NaN */
        if (f->prob)
            ((LC_REAL*)f->prob)[i] = (LC_REAL)p;
        if (f->pred)
            f->pred[i] = (uint8_t)pred;
        if (f->confidence)
            ((LC_REAL*)f->confidence)[i] = (LC_REAL)(p != p ? p : p > q ? p : q);
        if (f->entropy) /* p log p -> 0 as p -> 0 */
            ((LC_REAL*)f->entropy)[i] = (LC_REAL)(-((p == 0.0 ? 0.0 : p * s.log_prob) +
                                                    (q == 0.0 ? 0.0 : q * s.log_not_prob)));
        if (!f->labels)
            continue;
        int64_t label = f->labels[i];
        int kept = label != f->ignore_index, positive = label == 1;
        if (f->loss)
            ((LC_REAL*)f->loss)[i] =
                kept ? (LC_REAL)(-(positive ? s.log_prob : s.log_not_prob)) : (LC_REAL)0;
        if (f->correct)
            f->correct[i] = (uint8_t)(kept && v == v && pred == positive);
        if (f->brier)
            ((LC_REAL*)f->brier)[i] = kept ? (LC_REAL)((p - positive) * (p - positive)) : (LC_REAL)0;
    }
}

/* lc_score_multilabel_rows_f32 / _f64: score_multilabel on the rows [first, first + count),
   in double as the reference (numpy_ref.score_multilabel): pred[c] = sigmoid(x[c]) >=
   threshold[c], the BCE mean over the row and the counts. */
LC_DISPATCH static void LC_NAME(lc_score_multilabel_rows)(const lc_score_multilabel_fields* f,
                                                          const LC_REAL* x, lc_index first,
                                                          lc_index count, lc_index n_classes)
{
    const LC_REAL* threshold = (const LC_REAL*)f->threshold;
    for (lc_index row = first; row < first + count; row++) {
        const LC_REAL* x_row = x + row * n_classes;
        const uint8_t* truth = f->targets ? f->targets + row * n_classes : NULL;
        uint8_t* pred_row = f->pred ? f->pred + row * n_classes : NULL;
        int64_t n_predicted = 0, true_positives = 0, false_positives = 0, false_negatives = 0;
        double loss = 0.0;
        for (lc_index c = 0; c < n_classes; c++) {
            lc_sigmoid_logs s = lc_sigmoid_logs_of((double)x_row[c]);
            int pred = s.prob >= (double)threshold[c];
            n_predicted += pred;
            if (pred_row)
                pred_row[c] = (uint8_t)pred;
            if (!truth)
                continue;
            int t = truth[c] != 0;
            true_positives += pred && t;
            false_positives += pred && !t;
            false_negatives += !pred && t;
            loss -= t ? s.log_prob : s.log_not_prob; /* BCE = softplus(-x) or softplus(x) */
        }
        if (f->n_predicted)
            f->n_predicted[row] = n_predicted;
        if (!truth)
            continue;
        if (f->loss)
            ((LC_REAL*)f->loss)[row] = (LC_REAL)(loss / (double)n_classes);
        if (f->exact_match)
            f->exact_match[row] = false_positives + false_negatives == 0;
        if (f->true_positives)
            f->true_positives[row] = true_positives;
        if (f->false_positives)
            f->false_positives[row] = false_positives;
        if (f->false_negatives)
            f->false_negatives[row] = false_negatives;
    }
}

/* ====================== dispatch on the op, for the schedules ====================== */

/* lc_rows_f32 / lc_rows_f64: the op's row function on the rows [first, first + count) (the
   rows and flat schedules). */
static void LC_NAME(lc_rows)(const lc_operands* o, lc_index first, lc_index count)
{
    const lc_index C = o->n_classes, at = first * C;
    const LC_REAL* x = (const LC_REAL*)o->x + at;
    const LC_REAL* y = o->y ? (const LC_REAL*)o->y + at : NULL;
    const LC_REAL* weight = (const LC_REAL*)o->weight;
    const LC_REAL* pos_weight = (const LC_REAL*)o->pos_weight;
    LC_REAL* out = (LC_REAL*)o->out + first * o->out_row_length;
    LC_REAL* out2 = (LC_REAL*)o->out2;
    if (out2)
        out2 += o->op == LC_OP_LOGSUMEXP_SCALED ? first : at;
    switch (o->op) {
    case LC_OP_LOGSUMEXP:
        LC_NAME(lc_logsumexp_rows)(x, count, C, out);
        break;
    case LC_OP_SOFTMAX:
        LC_NAME(lc_softmax_rows)(x, count, C, out);
        break;
    case LC_OP_LOG_SOFTMAX:
        LC_NAME(lc_log_softmax_rows)(x, count, C, out);
        break;
    case LC_OP_SOFTMAX_BACKWARD:
        LC_NAME(lc_softmax_backward_rows)(x, y, count, C, out);
        break;
    case LC_OP_LOG_SOFTMAX_BACKWARD:
        LC_NAME(lc_log_softmax_backward_rows)(x, y, count, C, out);
        break;
    case LC_OP_SIGMOID:
        LC_NAME(lc_sigmoid_span)(x, out, count * C);
        break;
    case LC_OP_LOG_SIGMOID:
        LC_NAME(lc_log_sigmoid_span)(x, out, count * C);
        break;
    case LC_OP_LOGSUMEXP_SCALED:
        LC_NAME(lc_logsumexp_scaled_rows)(x, y, count, C, out, out2);
        break;
    case LC_OP_ENTROPY:
        LC_NAME(lc_entropy_rows)(x, count, C, out);
        break;
    case LC_OP_CROSS_ENTROPY_LABELS:
        LC_NAME(lc_cross_entropy_labels_rows)(x, o->labels + first, weight, o->ignore_index,
                                              o->label_smoothing, count, C, out, out2,
                                              o->grad_scale);
        break;
    case LC_OP_CROSS_ENTROPY_PROBS:
        LC_NAME(lc_cross_entropy_probs_rows)(x, y, weight, o->label_smoothing, count, C, out,
                                             out2, o->grad_scale);
        break;
    case LC_OP_SCORE_MULTICLASS:
        LC_NAME(lc_score_multiclass_rows)((lc_score_multiclass_fields*)o->score,
                                          (const LC_REAL*)o->x, first, count, C);
        break;
    case LC_OP_SCORE_BINARY:
        LC_NAME(lc_score_binary_span)((const lc_score_binary_fields*)o->score,
                                      (const LC_REAL*)o->x, first, count);
        break;
    case LC_OP_SCORE_MULTILABEL:
        LC_NAME(lc_score_multilabel_rows)((const lc_score_multilabel_fields*)o->score,
                                          (const LC_REAL*)o->x, first, count, C);
        break;
    case LC_OP_BCE_WITH_LOGITS:
        LC_NAME(lc_bce_rows)(x, y, weight + first * o->weight_stride, o->weight_stride,
                             pos_weight + first * o->pos_weight_stride, o->pos_weight_stride,
                             count, C, out, o->loss_row_sums, out2, o->grad_scale);
        break;
    }
}

/* lc_block_pass_f32 / lc_block_pass_f64: one pass of the op over the blocks
   [first_block, end_block) of one long row (the class_split schedule): logsumexp, softmax,
   log_softmax and cross-entropy with labels. `states` holds the row's block states,
   `result` its merged state. One call per thread and pass, so that the block functions are
   inlined into this SIMD clone. */
LC_DISPATCH static void LC_NAME(lc_block_pass)(const lc_operands* o, lc_block_pass step,
                                               lc_index row, lc_index first_block,
                                               lc_index end_block, lc_block_state* states,
                                               const lc_row_result* result)
{
    const int labels = o->op == LC_OP_CROSS_ENTROPY_LABELS;
    for (lc_index block = first_block; block < end_block; block++) {
        const lc_index class_start = block * LC_BLOCK_CLASSES;
        const lc_index start = row * o->n_classes + class_start;
        const lc_index n = lc_min_index(LC_BLOCK_CLASSES, o->n_classes - class_start);
        const LC_REAL* x = (const LC_REAL*)o->x + start;
        const LC_REAL* weight = (const LC_REAL*)o->weight + class_start;
        LC_REAL* out = (LC_REAL*)o->out;
        LC_REAL* grad = o->out2 ? (LC_REAL*)o->out2 + start : NULL;
        if (step == LC_STATE_PASS && labels)
            states[block].max = LC_NAME(lc_block_max)(x, n);
        else if (step == LC_STATE_PASS)
            states[block] = LC_NAME(lc_block_max_sum_exp)(
                x, n, o->op == LC_OP_SOFTMAX ? out + start : NULL, o->prefetch_next_block);
        else if (step == LC_SUMS_PASS)
            states[block] = LC_NAME(lc_ce_label_block_sums)(x, weight, n, result->state.max,
                                                            grad, o->ce.use_smoothing);
        else if (o->op == LC_OP_SOFTMAX)
            LC_NAME(lc_softmax_block_write)(out + start, n, states[block].max, result->state.max,
                                            result->normaliser);
        else if (o->op == LC_OP_LOG_SOFTMAX)
            LC_NAME(lc_log_softmax_block_write)(x, out + start, n, result->state.max,
                                                result->normaliser);
        else if (labels && grad)
            LC_NAME(label_grad_span)(grad, weight, n, (LC_REAL)result->exp_factor,
                                     (LC_REAL)result->weight_factor);
    }
}

#undef LC_LANES

