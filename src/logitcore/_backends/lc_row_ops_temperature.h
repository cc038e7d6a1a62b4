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
 * the sums do not depend on the thread count; within a chunk, narrow rows go to lane sums
 * (a fixed order too) and longer rows are added in row order. The numba backend computes
 * the same sums (its rounding may differ in the last bits).
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
/* Elements per tile of narrow rows (its float64 copy, 16 KiB, stays in L1). */
#define LC_TEMPERATURE_TILE_ELEMENTS 2048
/* Rows per tile of narrow rows at most (sizes its per-row arrays, ~60 KiB in all). */
#define LC_TEMPERATURE_TILE_ROWS 512
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

/* exp(x) for x <= 0 (or NaN, which propagates), as lc_exp_f64 but with results below
   2^-1021 (x < -708) flushed to 0: they are below 1e-307 next to a row's sum of at least 1
   (its max's term). One 2^k factor instead of two and no upper clamp: 10% fewer
   instructions in the pass (callgrind, AVX2 clone, 1048576x10). x > 0 comes only from a
   block whose max is not finite (shift 0): its row's terms are NaN whatever this gives. */
LC_INLINE double lc_temperature_exp(double x)
{
    double clamped = -708.0 > x ? -708.0 : x; /* maxpd: x when x is NaN */
    double k_float;
    int64_t k;
    double exp_r = lc_exp_reduced_f64(clamped, &k_float, &k);
    double scale = lc_double_from_bits((int64_t)((uint64_t)(k + 1023) << 52));
    return x < -708.0 ? 0.0 : exp_r * scale;
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
        double e_ = lc_temperature_exp((b) * d_);                                          \
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

/* lc_temperature_narrow_tile_f32 / _f64: adds the weighted terms of n_rows narrow rows
   (fewer than LC_NARROW_MAX_CLASSES classes, one block each; n_rows * n_classes at most
   LC_TEMPERATURE_TILE_ELEMENTS, n_rows at most LC_TEMPERATURE_TILE_ROWS) to lanes[k], k <
   LC_TEMPERATURE_SUMS, row r going to lane r % LC_TEMPERATURE_LANES. A loop over 10
   classes does not vectorise, so every loop but the first runs across the rows: the tile
   is copied class-major into a float64 scratch (element (r, c) at [c * n_rows + r]),
   and the rows' maxima, their running sums, and their NLL terms (one log1p and three
   divisions per row) are each taken for all the tile's rows at once. */
LC_INLINE void LC_NAME(lc_temperature_narrow_tile)(
    const LC_REAL* x, lc_index n_rows, lc_index n_classes, const int64_t* labels,
    const LC_REAL* weight, int64_t ignore_index, double b,
    double (*lanes)[LC_TEMPERATURE_LANES])
{
    double values[LC_TEMPERATURE_TILE_ELEMENTS];
    double row_max[LC_TEMPERATURE_TILE_ROWS], shift[LC_TEMPERATURE_TILE_ROWS];
    double label_logit[LC_TEMPERATURE_TILE_ROWS], kept_weight[LC_TEMPERATURE_TILE_ROWS];
    double others[LC_TEMPERATURE_TILE_ROWS], n_at_max[LC_TEMPERATURE_TILE_ROWS];
    double s1[LC_TEMPERATURE_TILE_ROWS], s2[LC_TEMPERATURE_TILE_ROWS];
    double s3[LC_TEMPERATURE_TILE_ROWS];
    double terms[LC_TEMPERATURE_SUMS][LC_TEMPERATURE_TILE_ROWS];
    /* column by column (strided reads of the tile, which is in L1/L2 after the first
       column): 8% fewer instructions than row by row (callgrind, AVX2 clone) */
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++)
            values[c * n_rows + r] = (double)x[r * n_classes + c];
    for (lc_index r = 0; r < n_rows; r++) {
        /* an ignored row's terms are taken (from class 0) and then weighted 0; the label's
           logit comes from the copy (in L1), not from x */
        int64_t label = labels[r] == ignore_index ? 0 : labels[r];
        double w = weight ? (double)weight[r] : 1.0;
        kept_weight[r] = labels[r] == ignore_index ? 0.0 : w;
        label_logit[r] = n_classes > 0 ? values[label * n_rows + r] : NAN;
    }
    /* the row's max ignoring NaN (a NaN still reaches the row's sums through exp) */
    for (lc_index r = 0; r < n_rows; r++)
        row_max[r] = -INFINITY;
    for (lc_index c = 0; c < n_classes; c++)
        for (lc_index r = 0; r < n_rows; r++) {
            double v = values[c * n_rows + r];
            row_max[r] = v > row_max[r] ? v : row_max[r];
        }
    for (lc_index r = 0; r < n_rows; r++) {
        int finite = row_max[r] > -INFINITY && row_max[r] < INFINITY;
        shift[r] = finite ? row_max[r] : 0.0;
        others[r] = n_at_max[r] = s1[r] = s2[r] = s3[r] = 0.0;
    }
    for (lc_index c = 0; c < n_classes; c++) {
        const double* column = values + c * n_rows;
        for (lc_index r = 0; r < n_rows; r++)
            LC_TEMPERATURE_ADD_TERMS(column[r] - shift[r], b, others[r], n_at_max[r], s1[r],
                                     s2[r], s3[r]);
    }
    for (lc_index r = 0; r < n_rows; r++) {
        int finite = row_max[r] > -INFINITY && row_max[r] < INFINITY
                     && others[r] > -INFINITY && others[r] < INFINITY;
        double label_d = label_logit[r] - row_max[r];
        double total = others[r] + n_at_max[r];
        double mean_d = s1[r] / total;
        double second = s2[r] / total;
        double variance = second - mean_d * mean_d;
        /* E[(d - mean)^3] from the raw moments */
        double third = s3[r] / total - 3.0 * mean_d * second + 2.0 * mean_d * mean_d * mean_d;
        double nll = lc_log1p_f64(others[r] + (n_at_max[r] - 1.0)) - b * label_d;
        double w = kept_weight[r];
        int kept = w != 0.0;
        terms[0][r] = w;
        terms[1][r] = kept ? w * (finite ? nll : NAN) : 0.0;
        terms[2][r] = kept ? w * (finite ? mean_d - label_d : NAN) : 0.0;
        terms[3][r] = kept ? w * (finite ? (variance > 0.0 ? variance : 0.0) : NAN) : 0.0;
        terms[4][r] = kept ? w * (finite ? -label_d : NAN) : 0.0;
        terms[5][r] = kept ? w * (finite ? third : NAN) : 0.0;
    }
    for (int k = 0; k < LC_TEMPERATURE_SUMS; k++)
        lc_temperature_lane_sums(terms[k], n_rows, lanes[k]);
}

/* lc_temperature_chunk_f32 / _f64: the LC_TEMPERATURE_SUMS sums of rows [first, end)
   into sums. weight is NULL when every row weighs 1. Narrow rows go a row tile at a time
   into lane sums (added up at the end), longer ones a row at a time, in row order. */
LC_DISPATCH static void LC_NAME(lc_temperature_chunk)(
    const LC_REAL* x, lc_index n_classes, const int64_t* labels, const LC_REAL* weight,
    int64_t ignore_index, double b, lc_index first, lc_index end, double* sums)
{
    for (int k = 0; k < LC_TEMPERATURE_SUMS; k++)
        sums[k] = 0.0;
    if (n_classes < LC_NARROW_MAX_CLASSES) {
        double lanes[LC_TEMPERATURE_SUMS][LC_TEMPERATURE_LANES] = {{0}};
        lc_index rows_per_tile = LC_TEMPERATURE_TILE_ROWS;
        if (n_classes > 0)
            rows_per_tile = lc_min_index(LC_TEMPERATURE_TILE_ROWS,
                                         LC_TEMPERATURE_TILE_ELEMENTS / n_classes);
        if (rows_per_tile > LC_TEMPERATURE_LANES) /* whole vectors of rows */
            rows_per_tile -= rows_per_tile % LC_TEMPERATURE_LANES;
        for (lc_index tile_first = first; tile_first < end; tile_first += rows_per_tile) {
            lc_index tile_rows = lc_min_index(rows_per_tile, end - tile_first);
            LC_NAME(lc_temperature_narrow_tile)(
                x + tile_first * n_classes, tile_rows, n_classes, labels + tile_first,
                weight ? weight + tile_first : NULL, ignore_index, b, lanes);
        }
        for (int k = 0; k < LC_TEMPERATURE_SUMS; k++)
            for (int lane = 0; lane < LC_TEMPERATURE_LANES; lane++)
                sums[k] += lanes[k][lane];
        return;
    }
    double terms[LC_TEMPERATURE_SUMS - 1][LC_TEMPERATURE_TILE_ROWS];
    for (lc_index i = first; i < end; i++) {
        double w = weight ? (double)weight[i] : 1.0;
        if (labels[i] == ignore_index || w == 0.0)
            continue;
        const LC_REAL* row = x + i * n_classes;
        lc_temperature_state state = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
        for (lc_index start = 0; start < n_classes; start += LC_BLOCK_CLASSES) {
            lc_index count = lc_min_index(LC_BLOCK_CLASSES, n_classes - start);
            lc_temperature_merge(&state, LC_NAME(lc_temperature_block)(row + start, count, b),
                                 b);
        }
        lc_temperature_row_terms(state, (double)row[labels[i]], b, terms, 0);
        sums[0] += w;
        for (int k = 1; k < LC_TEMPERATURE_SUMS; k++)
            sums[k] += w * terms[k - 1][0];
    }
}

#endif
