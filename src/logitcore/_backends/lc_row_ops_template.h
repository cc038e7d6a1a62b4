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
    for (lc_index r = 0; r < n_rows; r++)
        row_max[r] = LC_NAME(row_max)(x + r * n_classes, n_classes);
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
    for (lc_index r = 0; r < n_rows; r++) {
        lc_exp_sums sums = {0.0, 0.0};
        for (lc_index c = 0; c < n_classes; c++) {
            sums.others += others_terms[r * n_classes + c];
            sums.n_at_max += at_max[r * n_classes + c];
        }
        row_sums[r] = sums;
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

