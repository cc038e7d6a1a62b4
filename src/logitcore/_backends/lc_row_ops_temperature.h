/*
 * lc_row_ops_temperature.h -- temperature_nll's row operation (logitcore.fit_temperature),
 * for float and double. Private to logitcore._backends._cython_kernels.
 *
 * One pass returns, summed over the kept rows (label != ignore_index, weight != 0), the
 * mean-NLL's ingredients at inverse temperature b: sum w, sum w NLL(b), sum w dNLL/db,
 * sum w d2NLL/db2, sum w (max - x[label]) (the slope as b -> inf) and sum w d3NLL/db3
 * (the third central moment of x under p: fit_temperature's Halley step). Everything is
 * float64: the fit's root must be right to ~1e-9 relative. Per block of a row, with the
 * block's shift m (its max, or 0 when not finite), d = x - m <= 0 and e = exp(b d):
 * the exp-sum state (others, n_at_max) and the moments s1 = sum e d, s2 = sum e d^2,
 * s3 = sum e d^3, terms with e == 0 adding 0 (d = -inf: not -inf * 0). Blocks merge in
 * block order under the larger max M: with delta = m - M <= 0 and scale = exp(b delta), a
 * block's (total, s1, s2, s3) relative to M are scale (total, s1 + delta total, s2 +
 * 2 delta s1 + delta^2 total, s3 + 3 delta s2 + 3 delta^2 s1 + delta^3 total).
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

#define LC_TEMPERATURE_SUMS 6 /* weight, nll, slope, curvature, slope at b -> inf, third */
#define LC_TEMPERATURE_LANES 8
/* Elements per tile of narrow rows (its five float64 scratch arrays stay in L1/L2). */
#define LC_TEMPERATURE_TILE_ELEMENTS 1024
/* Rows per tile: narrow rows have at least 1 class (longer rows go one row per tile). */
#define LC_TEMPERATURE_TILE_ROWS LC_TEMPERATURE_TILE_ELEMENTS
/* Elements of a long row's block whose terms are taken at a time (see lc_temperature_block). */
#define LC_TEMPERATURE_PIECE 256
/* |d| beyond this has exp(b d) = 0 for every b >= 2^-40 the fit evaluates; its cube
   stays finite. */
#define LC_TEMPERATURE_FLOOR 1e100

/* A row's running moments relative to its max so far. */
typedef struct {
    double max;
    double others;
    double n_at_max;
    double s1;
    double s2;
    double s3;
} lc_temperature_state;

/* (total, s1, s2, s3) taken relative to a shift, re-expressed relative to a shift larger
   by -delta (delta <= 0), every term scaled by scale = exp(b delta); adds them to *into. */
LC_INLINE void lc_temperature_add_shifted(lc_temperature_state* into, double total,
                                          lc_temperature_state moments, double delta,
                                          double scale)
{
    double s1 = moments.s1, s2 = moments.s2, s3 = moments.s3;
    into->others += total * scale;
    into->s1 += (s1 + delta * total) * scale;
    into->s2 += (s2 + 2.0 * delta * s1 + delta * delta * total) * scale;
    into->s3 += (s3 + 3.0 * delta * s2 + 3.0 * delta * delta * s1
                 + delta * delta * delta * total) * scale;
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
        row->s3 += block.s3;
    } else if (block.max > row->max) { /* the row so far moves under the block's max */
        double delta = row->max - block.max;
        lc_temperature_state moved = block;
        lc_temperature_add_shifted(&moved, row_total, *row, delta, lc_exp_f64(b * delta));
        *row = moved;
    } else {
        double delta = block.max - row->max;
        lc_temperature_add_shifted(row, block_total, block, delta, lc_exp_f64(b * delta));
    }
}

/* One element's terms at inverse temperature b, d = x - shift: added to the exp-sum state
   (others, n_at_max) and the moments s1 = sum e d, s2 = sum e d^2, s3 = sum e d^3.
   Branch-free so that
   gcc vectorises the loops calling it: the term at the shift is taken out of `others` by
   subtracting the comparison as 1.0 (exp(0) is exactly 1), and the moments use d clamped
   at -LC_TEMPERATURE_FLOOR, where exp(b d) is 0 for any b the fit reaches, so a masked
   class (d = -inf) adds 0 * finite = 0, not -inf * 0 = NaN. */
#define LC_TEMPERATURE_ADD_TERMS(d_value, b, others, n_at_max, s1, s2, s3)            \
    do {                                                                             \
        double d_ = (d_value);                                                       \
        double clamped_ = d_ < -LC_TEMPERATURE_FLOOR ? -LC_TEMPERATURE_FLOOR : d_;     \
        double e_ = lc_exp_f64((b) * d_);                                            \
        double at_max_ = (double)(d_ == 0.0);                                        \
        (others) += e_ - at_max_;                                                    \
        (n_at_max) += at_max_;                                                       \
        (s1) += e_ * clamped_;                                                       \
        (s2) += e_ * clamped_ * clamped_;                                             \
        (s3) += e_ * clamped_ * clamped_ * clamped_;                                  \
    } while (0)

/* lanes[k] += the terms k, k + LC_TEMPERATURE_LANES, ... of terms[0, n), in order. */
LC_INLINE void lc_temperature_lane_sums(const double* terms, lc_index n, double* lanes)
{
    lc_index j = 0;
    for (; j + LC_TEMPERATURE_LANES <= n; j += LC_TEMPERATURE_LANES)
        LC_NO_UNROLL
        for (int k = 0; k < LC_TEMPERATURE_LANES; k++)
            lanes[k] += terms[j + k];
    for (int k = 0; j < n; j++, k++)
        lanes[k] += terms[j];
}

/* A row's terms from its state and label logit: NLL, dNLL/db, d2NLL/db2, max - x[label]
   and d3NLL/db3 into terms[k][r] (k < LC_TEMPERATURE_SUMS - 1); NaN when the row's max or
   sum is not finite. Branch-free, so that a loop over a tile's rows vectorises. */
LC_INLINE void lc_temperature_row_terms(lc_temperature_state state, double label_logit,
                                        double b, double (*terms)[LC_TEMPERATURE_TILE_ROWS],
                                        lc_index r)
{
    int finite = isfinite(state.max) && isfinite(state.others);
    double label_d = label_logit - state.max;
    double total = state.others + state.n_at_max;
    double mean_d = state.s1 / total;
    double second = state.s2 / total;
    double variance = second - mean_d * mean_d;
    /* E[(d - mean)^3] from the raw moments */
    double third = state.s3 / total - 3.0 * mean_d * second + 2.0 * mean_d * mean_d * mean_d;
    terms[0][r] = finite ? lc_log1p_f64(state.others + (state.n_at_max - 1.0)) - b * label_d
                         : NAN;
    terms[1][r] = finite ? mean_d - label_d : NAN;
    terms[2][r] = finite ? (variance > 0.0 ? variance : 0.0) : NAN;
    terms[3][r] = finite ? -label_d : NAN;
    terms[4][r] = finite ? third : NAN;
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

/* lc_temperature_block_f32 / _f64: one block's state at inverse temperature b (rows of
   LC_NARROW_MAX_CLASSES classes or more). The terms of LC_TEMPERATURE_PIECE elements at a
   time go to scratch arrays in one vectorised loop, then each array is added into its own
   lane sums: four running sums in one loop would not stay in registers. */
LC_INLINE lc_temperature_state LC_NAME(lc_temperature_block)(const LC_REAL* x, lc_index n,
                                                             double b)
{
    LC_REAL top = LC_NAME(row_max)(x, n);
    double shift = (double)LC_NAME(finite_or_zero)(top);
    double others[LC_TEMPERATURE_LANES] = {0}, n_at_max[LC_TEMPERATURE_LANES] = {0};
    double s1[LC_TEMPERATURE_LANES] = {0}, s2[LC_TEMPERATURE_LANES] = {0};
    double s3[LC_TEMPERATURE_LANES] = {0};
    double others_terms[LC_TEMPERATURE_PIECE], n_at_max_terms[LC_TEMPERATURE_PIECE];
    double s1_terms[LC_TEMPERATURE_PIECE], s2_terms[LC_TEMPERATURE_PIECE];
    double s3_terms[LC_TEMPERATURE_PIECE];
    for (lc_index start = 0; start < n; start += LC_TEMPERATURE_PIECE) {
        lc_index count = lc_min_index(LC_TEMPERATURE_PIECE, n - start);
        for (lc_index i = 0; i < count; i++) {
            others_terms[i] = n_at_max_terms[i] = 0.0;
            s1_terms[i] = s2_terms[i] = s3_terms[i] = 0.0;
            LC_TEMPERATURE_ADD_TERMS((double)x[start + i] - shift, b, others_terms[i],
                                     n_at_max_terms[i], s1_terms[i], s2_terms[i],
                                     s3_terms[i]);
        }
        lc_temperature_lane_sums(others_terms, count, others);
        lc_temperature_lane_sums(n_at_max_terms, count, n_at_max);
        lc_temperature_lane_sums(s1_terms, count, s1);
        lc_temperature_lane_sums(s2_terms, count, s2);
        lc_temperature_lane_sums(s3_terms, count, s3);
    }
    lc_temperature_state state = {(double)top, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < LC_TEMPERATURE_LANES; k++) {
        state.others += others[k];
        state.n_at_max += n_at_max[k];
        state.s1 += s1[k];
        state.s2 += s2[k];
        state.s3 += s3[k];
    }
    return state;
}

/* lc_temperature_tile_f32 / _f64: the states of n_rows narrow rows (fewer than
   LC_NARROW_MAX_CLASSES classes, one block each; n_rows * n_classes at most
   LC_TEMPERATURE_TILE_ELEMENTS). A loop over 10 classes does not vectorise, so the tile is
   shifted into a class-major scratch (element (r, c) at [c * n_rows + r]): every element's
   terms are taken in one flat loop, and each row's terms added in class order by loops
   that run across the rows. */
LC_INLINE void LC_NAME(lc_temperature_tile)(const LC_REAL* x, lc_index n_rows,
                                            lc_index n_classes, double b,
                                            lc_temperature_state* states)
{
    double shifted[LC_TEMPERATURE_TILE_ELEMENTS], others[LC_TEMPERATURE_TILE_ELEMENTS];
    double n_at_max[LC_TEMPERATURE_TILE_ELEMENTS], s1[LC_TEMPERATURE_TILE_ELEMENTS];
    double s2[LC_TEMPERATURE_TILE_ELEMENTS], s3[LC_TEMPERATURE_TILE_ELEMENTS];
    double row_sums[5][LC_TEMPERATURE_TILE_ROWS]; /* others, n_at_max, s1, s2, s3 */
    for (lc_index r = 0; r < n_rows; r++) {
        const LC_REAL* row = x + r * n_classes;
        LC_REAL top = LC_NAME(row_max)(row, n_classes);
        double shift = (double)LC_NAME(finite_or_zero)(top);
        states[r].max = (double)top;
        for (lc_index c = 0; c < n_classes; c++)
            shifted[c * n_rows + r] = (double)row[c] - shift;
    }
    lc_index n = n_rows * n_classes;
    for (lc_index i = 0; i < n; i++) {
        others[i] = n_at_max[i] = s1[i] = s2[i] = s3[i] = 0.0;
        LC_TEMPERATURE_ADD_TERMS(shifted[i], b, others[i], n_at_max[i], s1[i], s2[i], s3[i]);
    }
    for (int k = 0; k < 5; k++)
        for (lc_index r = 0; r < n_rows; r++)
            row_sums[k][r] = 0.0;
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            lc_index i = c * n_rows + r;
            row_sums[0][r] += others[i];
            row_sums[1][r] += n_at_max[i];
            row_sums[2][r] += s1[i];
            row_sums[3][r] += s2[i];
            row_sums[4][r] += s3[i];
        }
    for (lc_index r = 0; r < n_rows; r++) {
        states[r].others = row_sums[0][r];
        states[r].n_at_max = row_sums[1][r];
        states[r].s1 = row_sums[2][r];
        states[r].s2 = row_sums[3][r];
        states[r].s3 = row_sums[4][r];
    }
}

/* lc_temperature_chunk_f32 / _f64: the LC_TEMPERATURE_SUMS sums of rows [first, end),
   added in row order into sums (zeroed here). weight is NULL when every row weighs 1. */
LC_DISPATCH static void LC_NAME(lc_temperature_chunk)(
    const LC_REAL* x, lc_index n_classes, const int64_t* labels, const LC_REAL* weight,
    int64_t ignore_index, double b, lc_index first, lc_index end, double* sums)
{
    for (int k = 0; k < LC_TEMPERATURE_SUMS; k++)
        sums[k] = 0.0;
    lc_temperature_state tile[LC_TEMPERATURE_TILE_ROWS];
    double terms[LC_TEMPERATURE_SUMS - 1][LC_TEMPERATURE_TILE_ROWS];
    /* narrow rows a row tile at a time, longer ones a row at a time */
    lc_index rows_per_tile = 1;
    if (n_classes < LC_NARROW_MAX_CLASSES && n_classes > 0)
        rows_per_tile = LC_TEMPERATURE_TILE_ELEMENTS / n_classes;
    for (lc_index tile_first = first; tile_first < end; tile_first += rows_per_tile) {
        lc_index tile_rows = lc_min_index(rows_per_tile, end - tile_first);
        if (n_classes < LC_NARROW_MAX_CLASSES) {
            LC_NAME(lc_temperature_tile)(x + tile_first * n_classes, tile_rows, n_classes, b,
                                         tile);
        } else {
            const LC_REAL* row = x + tile_first * n_classes;
            tile[0] = (lc_temperature_state){-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
            for (lc_index start = 0; start < n_classes; start += LC_BLOCK_CLASSES) {
                lc_index count = lc_min_index(LC_BLOCK_CLASSES, n_classes - start);
                lc_temperature_merge(
                    &tile[0], LC_NAME(lc_temperature_block)(row + start, count, b), b);
            }
        }
        for (lc_index r = 0; r < tile_rows; r++) {
            lc_index i = tile_first + r;
            /* an ignored row's terms are taken (from class 0) and then skipped */
            int64_t label = labels[i] == ignore_index ? 0 : labels[i];
            double label_logit = n_classes > 0 ? (double)x[i * n_classes + label] : NAN;
            lc_temperature_row_terms(tile[r], label_logit, b, terms, r);
        }
        for (lc_index r = 0; r < tile_rows; r++) {
            lc_index i = tile_first + r;
            double w = weight ? (double)weight[i] : 1.0;
            if (labels[i] == ignore_index || w == 0.0)
                continue;
            sums[0] += w;
            for (int k = 1; k < LC_TEMPERATURE_SUMS; k++)
                sums[k] += w * terms[k - 1][r];
        }
    }
}

#endif
