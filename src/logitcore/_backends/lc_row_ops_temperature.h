/*
 * lc_row_ops_temperature.h -- temperature_nll's row operation (logitcore.fit_temperature),
 * for float and double. Private to logitcore._backends._cython_kernels.
 *
 * One pass returns, summed over the kept rows (label != ignore_index, weight != 0), the
 * mean-NLL's ingredients at inverse temperature b: sum w, sum w NLL(b), sum w dNLL/db,
 * sum w d2NLL/db2 and sum w (max - x[label]) (the slope as b -> inf). Everything is
 * float64: the fit's root must be right to ~1e-9 relative. Per block of a row, with the
 * block's shift m (its max, or 0 when not finite), d = x - m <= 0 and e = exp(b d):
 * the exp-sum state (others, n_at_max) and the moments s1 = sum e d, s2 = sum e d^2, terms
 * with e == 0 adding 0 (d = -inf: not -inf * 0). Blocks merge in block order under the
 * larger max M: with delta = m - M <= 0 and scale = exp(b delta), a block's (total, s1,
 * s2) relative to M are scale (total, s1 + delta total, s2 + 2 delta s1 + delta^2 total).
 * Rows are summed in fixed chunks of whole rows and the chunks in order by the .pyx, so
 * the sums do not depend on the thread count. The numba backend computes the same.
 *
 * The generic part (after #else) is included twice by this file, for float and double:
 * lc_temperature_chunk_f32 / lc_temperature_chunk_f64.
 */
#ifndef LC_TEMPERATURE_GENERIC
#ifndef LC_ROW_OPS_TEMPERATURE_H
#define LC_ROW_OPS_TEMPERATURE_H

#include "lc_row_ops.h"

#define LC_TEMPERATURE_SUMS 5 /* weight, nll, slope, curvature, slope at b -> inf */
#define LC_TEMPERATURE_LANES 8
/* |d| beyond this has exp(b d) = 0 for every b >= 2^-40 the fit evaluates; its square
   stays finite. */
#define LC_TEMPERATURE_FLOOR 1e150

/* A row's running moments relative to its max so far. */
typedef struct {
    double max;
    double others;
    double n_at_max;
    double s1;
    double s2;
} lc_temperature_state;

/* (total, s1, s2) taken relative to a shift, re-expressed relative to a shift larger by
   -delta (delta <= 0), every term scaled by scale = exp(b delta); adds them to *into. */
LC_INLINE void lc_temperature_add_shifted(lc_temperature_state* into, double total,
                                          double s1, double s2, double delta, double scale)
{
    into->others += total * scale;
    into->s1 += (s1 + delta * total) * scale;
    into->s2 += (s2 + 2.0 * delta * s1 + delta * delta * total) * scale;
}

/* Merges a block's state into the row's, in block order. */
LC_INLINE void lc_temperature_merge(lc_temperature_state* row, lc_temperature_state block,
                                    double b)
{
    double block_total = block.others + block.n_at_max;
    double row_total = row->others + row->n_at_max;
    if (block_total == 0.0) /* every class masked (-inf): adds nothing */
        return;
    if (row_total == 0.0) {
        *row = block;
    } else if (block.max == row->max) {
        row->others += block.others;
        row->n_at_max += block.n_at_max;
        row->s1 += block.s1;
        row->s2 += block.s2;
    } else if (block.max > row->max) { /* the row so far moves under the block's max */
        double delta = row->max - block.max;
        lc_temperature_state moved = block;
        lc_temperature_add_shifted(&moved, row_total, row->s1, row->s2, delta,
                                   lc_exp_f64(b * delta));
        *row = moved;
    } else {
        double delta = block.max - row->max;
        lc_temperature_add_shifted(row, block_total, block.s1, block.s2, delta,
                                   lc_exp_f64(b * delta));
    }
}

#define LC_TEMPERATURE_GENERIC
#define LC_SUFFIX _f32
#define LC_REAL float
#include "lc_row_ops_temperature.h"
#undef LC_REAL
#undef LC_SUFFIX
#define LC_SUFFIX _f64
#define LC_REAL double
#include "lc_row_ops_temperature.h"
#undef LC_REAL
#undef LC_SUFFIX
#undef LC_TEMPERATURE_GENERIC

#endif /* LC_ROW_OPS_TEMPERATURE_H */
#else /* ---- generic part: LC_REAL is float or double ---- */

/* lc_temperature_block_f32 / _f64: one block's state at inverse temperature b. */
LC_INLINE lc_temperature_state LC_NAME(lc_temperature_block)(const LC_REAL* x, lc_index n,
                                                             double b)
{
    LC_REAL top = LC_NAME(row_max)(x, n);
    double shift = (double)LC_NAME(finite_or_zero)(top);
    double others[LC_TEMPERATURE_LANES] = {0}, n_at_max[LC_TEMPERATURE_LANES] = {0};
    double s1[LC_TEMPERATURE_LANES] = {0}, s2[LC_TEMPERATURE_LANES] = {0};
    lc_index j = 0;
    /* Branch-free so that gcc vectorises it: the term at the shift is taken out of
       `others` by subtracting the comparison as 1.0 (exp(0) is exactly 1), and the moments
       use d clamped at -LC_TEMPERATURE_FLOOR, where exp(b d) is 0 for any b the fit
       reaches, so a masked class (d = -inf) adds 0 * finite = 0, not -inf * 0 = NaN. */
    for (; j + LC_TEMPERATURE_LANES <= n; j += LC_TEMPERATURE_LANES)
        LC_NO_UNROLL
        for (int k = 0; k < LC_TEMPERATURE_LANES; k++) {
            double d = (double)x[j + k] - shift;
            double clamped = d < -LC_TEMPERATURE_FLOOR ? -LC_TEMPERATURE_FLOOR : d;
            double e = lc_exp_f64(b * d);
            double at_max = (double)(d == 0.0);
            others[k] += e - at_max;
            n_at_max[k] += at_max;
            s1[k] += e * clamped;
            s2[k] += e * clamped * clamped;
        }
    for (int k = 0; j < n; j++, k++) {
        double d = (double)x[j] - shift;
        double clamped = d < -LC_TEMPERATURE_FLOOR ? -LC_TEMPERATURE_FLOOR : d;
        double e = lc_exp_f64(b * d);
        double at_max = (double)(d == 0.0);
        others[k] += e - at_max;
        n_at_max[k] += at_max;
        s1[k] += e * clamped;
        s2[k] += e * clamped * clamped;
    }
    lc_temperature_state state = {(double)top, 0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < LC_TEMPERATURE_LANES; k++) {
        state.others += others[k];
        state.n_at_max += n_at_max[k];
        state.s1 += s1[k];
        state.s2 += s2[k];
    }
    return state;
}

/* lc_temperature_chunk_f32 / _f64: the LC_TEMPERATURE_SUMS sums of rows [first, end),
   added in row order into sums (zeroed here). weight is NULL when every row weighs 1. */
LC_DISPATCH static void LC_NAME(lc_temperature_chunk)(
    const LC_REAL* x, lc_index n_classes, const int64_t* labels, const LC_REAL* weight,
    int64_t ignore_index, double b, lc_index first, lc_index end, double* sums)
{
    for (int k = 0; k < LC_TEMPERATURE_SUMS; k++)
        sums[k] = 0.0;
    for (lc_index i = first; i < end; i++) {
        double w = weight ? (double)weight[i] : 1.0;
        if (labels[i] == ignore_index || w == 0.0)
            continue;
        const LC_REAL* row = x + i * n_classes;
        lc_temperature_state state = {-INFINITY, 0.0, 0.0, 0.0, 0.0};
        for (lc_index start = 0; start < n_classes; start += LC_BLOCK_CLASSES) {
            lc_index count = lc_min_index(LC_BLOCK_CLASSES, n_classes - start);
            lc_temperature_merge(&state, LC_NAME(lc_temperature_block)(row + start, count, b),
                                 b);
        }
        double nll = NAN, slope = NAN, curvature = NAN, limit_slope = NAN;
        if (isfinite(state.max) && isfinite(state.others)) {
            double label_d = (double)row[labels[i]] - state.max;
            double total = state.others + state.n_at_max;
            double mean_d = state.s1 / total;
            double variance = state.s2 / total - mean_d * mean_d;
            nll = lc_log1p_f64(state.others + (state.n_at_max - 1.0)) - b * label_d;
            slope = mean_d - label_d;
            curvature = variance > 0.0 ? variance : 0.0;
            limit_slope = -label_d;
        }
        sums[0] += w;
        sums[1] += w * nll;
        sums[2] += w * slope;
        sums[3] += w * curvature;
        sums[4] += w * limit_slope;
    }
}

#endif
