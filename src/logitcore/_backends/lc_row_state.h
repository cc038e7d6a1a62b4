/*
 * lc_row_state.h -- the exp-sum row state and its merge (see docs/architecture.md, "Row
 * state"). Private to logitcore._backends._cython_kernels; not a public API.
 */
#ifndef LC_ROW_STATE_H
#define LC_ROW_STATE_H

#include "lc_math.h"

/*
 * The sums of a row's exps, kept so that tiny terms survive (SciPy gh-18295: the sum
 * 1 + 4e-18 of logsumexp([0, -40]) rounds to 1 and its log to 0). With shift the row's
 * maximum (finite_or_zero of it, see the template part):
 *   others   = sum of exp(x - shift) over the x that differ from shift,
 *   n_at_max = how many x equal shift,
 * so that sum exp(x - shift) = n_at_max + others and
 *   lse = max + log1p(others + (n_at_max - 1)),
 * which keeps every bit of `others` when the maximum is unique. Two pieces of a row with
 * maxima m1, m2 merge under the larger M (lc_exp_sums_rescaled): a piece whose max is M
 * adds both fields; a piece with a smaller max adds (n_at_max + others) exp(m - M) to
 * others. For a row whose max is not finite (the shift is 0), log1p(others + n - 1) is
 * +inf, -inf or NaN as the edge table needs: see lc_exp_sums_log.
 */
typedef struct {
    double others;
    double n_at_max;
} lc_exp_sums;

LC_INLINE lc_exp_sums lc_exp_sums_add(lc_exp_sums a, lc_exp_sums b)
{
    lc_exp_sums sum = {a.others + b.others, a.n_at_max + b.n_at_max};
    return sum;
}

/* A piece's sums, whose shift was its own max `piece_max`, re-expressed for the row max
   `row_max` >= piece_max (raw maxima: -inf for an all -inf piece, whose sums are 0). */
LC_INLINE lc_exp_sums lc_exp_sums_rescaled(lc_exp_sums piece, double piece_max, double row_max)
{
    if (piece_max == row_max)
        return piece;
    lc_exp_sums rescaled = {(piece.others + piece.n_at_max) * lc_exp_f64(piece_max - row_max), 0.0};
    return rescaled;
}

/* sum exp(x - shift): the normaliser of softmax. */
LC_INLINE double lc_exp_sums_total(lc_exp_sums sums) { return sums.others + sums.n_at_max; }

/* log(sum exp(x - shift)) = log1p(others + (n_at_max - 1)). For a row with a finite max,
   n_at_max >= 1. Rows whose max is not finite have shift 0: +inf rows have others = inf
   (-> inf); all -inf and empty rows have others = 0 and n_at_max = 0 (-> log1p(-1) = -inf);
   a NaN anywhere makes others NaN. */
LC_INLINE double lc_exp_sums_log(lc_exp_sums sums)
{
    return lc_log1p_f64(sums.others + (sums.n_at_max - 1.0));
}

#endif /* LC_ROW_STATE_H */
