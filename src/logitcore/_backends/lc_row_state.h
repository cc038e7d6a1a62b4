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
 * which keeps every bit of `others` when the maximum is unique. Two blocks of a row with
 * maxima m1, m2 merge under the larger M (lc_exp_sums_rescaled): a block whose max is M
 * adds both fields; a block with a smaller max adds (n_at_max + others) exp(m - M) to
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

/* A block's sums, whose shift was its own max `block_max`, re-expressed for the row max
   `row_max` >= block_max (raw maxima: -inf for an all -inf block, whose sums are 0). */
LC_INLINE lc_exp_sums lc_exp_sums_rescaled(lc_exp_sums block, double block_max, double row_max)
{
    if (block_max == row_max)
        return block;
    lc_exp_sums rescaled = {(block.others + block.n_at_max) * lc_exp_f64(block_max - row_max), 0.0};
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

/*
 * The state of one block of a long row (LC_BLOCK_CLASSES classes), and of the row once its
 * blocks' states are merged: the raw max (NaN ignored; -inf for an all -inf block), the
 * exp sums for the shift finite_or_zero(max) (or, for cross-entropy's second pass, for the
 * row's shift), and `extra`, a further sum an op carries (cross-entropy with label
 * smoothing: sum_{w != 0} w (x - row max)). Merges run in block order, so a row's result is
 * the same whichever threads computed its blocks.
 */
typedef struct {
    double max; /* first: lc_states_max reads it */
    lc_exp_sums sums;
    double extra;
} lc_block_state;

/* The largest max of `count` states of `state_size` bytes each whose first member is their
   double max: block states (lc_block_state) and scoring states (lc_score_state), NaN-free
   (each block's max ignores NaN). */
LC_INLINE double lc_states_max(const void* states, size_t state_size, lc_index count)
{
    double top = -INFINITY;
    for (lc_index b = 0; b < count; b++) {
        double block_max = *(const double*)((const char*)states + (size_t)b * state_size);
        top = block_max > top ? block_max : top;
    }
    return top;
}

LC_INLINE double lc_block_states_max(const lc_block_state* blocks, lc_index count)
{
    return lc_states_max(blocks, sizeof(lc_block_state), count);
}

/* The row state of blocks whose sums are each for their own max: the row max, and every
   block's sums rescaled to it (lc_exp_sums_rescaled) and added in block order. */
LC_INLINE lc_block_state lc_block_states_merge(const lc_block_state* blocks, lc_index count)
{
    lc_block_state row = {lc_block_states_max(blocks, count), {0.0, 0.0}, 0.0};
    for (lc_index b = 0; b < count; b++)
        row.sums = lc_exp_sums_add(row.sums,
                                   lc_exp_sums_rescaled(blocks[b].sums, blocks[b].max, row.max));
    return row;
}

/* The row state of blocks whose sums are all for the same shift (the row's): their sums
   and extras added in block order; `row_max` is the row's max. */
LC_INLINE lc_block_state lc_block_states_add(const lc_block_state* blocks, lc_index count,
                                             double row_max)
{
    lc_block_state row = {row_max, {0.0, 0.0}, 0.0};
    for (lc_index b = 0; b < count; b++) {
        row.sums = lc_exp_sums_add(row.sums, blocks[b].sums);
        row.extra += blocks[b].extra;
    }
    return row;
}

/* The sum that normalises softmax, and its log, from a row's state: NaN when the row's max
   is not finite (a +inf or all -inf row: the edge table of docs/architecture.md wants NaN
   softmax and log_softmax rows there). */
LC_INLINE double lc_row_state_normaliser(lc_block_state row)
{
    return isfinite(row.max) ? lc_exp_sums_total(row.sums) : NAN;
}

LC_INLINE double lc_row_state_log_normaliser(lc_block_state row)
{
    return isfinite(row.max) ? lc_exp_sums_log(row.sums) : NAN;
}

/* A row's logsumexp from its state: max + log1p(others + n_at_max - 1), right at the edges
   too (see lc_exp_sums_log): inf + inf = inf, -inf + -inf = -inf, NaN stays NaN. */
LC_INLINE double lc_row_state_logsumexp(lc_block_state row)
{
    return row.max + lc_exp_sums_log(row.sums);
}

/*
 * Cross-entropy with labels, what a row's loss and gradient need once its state is known.
 * With q = (1 - eps) w[y] onehot(y) + eps / C * w and log p = x - max - log S:
 *   loss = (1 - eps) w[y] (log S - (x[y] - max)) + eps / C (W log S - sum w (x - max)),
 *   grad = grad_scale (p sum(q) - q) = exp_factor * exp(x - shift) - weight_factor * w,
 * except the label's element, label_grad, formed in double (p[y] sum(q) - q[y] cancels
 * when p[y] -> 1). Ignored rows have q = 0: loss 0 and gradient p * 0 (NaN for NaN rows).
 */
typedef struct {
    double label_smoothing, grad_scale;
    double weight_total;       /* W = sum of the class weights (with label smoothing only) */
    double smoothing_per_class; /* eps / C */
    int use_smoothing;         /* eps > 0 and some weight != 0 */
} lc_ce_label_params;

typedef struct {
    double loss, exp_factor, weight_factor, label_grad;
} lc_ce_label_row;

/* `shifted_label_logit` x[y] - max; `smoothing_sum` sum_{w != 0} w (x - max); `label_weight`
   w[y] and `label_exp` exp(x[y] - shift) (any value when the row is ignored, `keep` 0). */
LC_INLINE lc_ce_label_row lc_ce_label_row_finish(const lc_ce_label_params* p, double row_max,
                                                 lc_exp_sums sums, double shifted_label_logit,
                                                 double smoothing_sum, int keep,
                                                 double label_weight, double label_exp)
{
    double normaliser = isfinite(row_max) ? lc_exp_sums_total(sums) : NAN;
    double log_normaliser = isfinite(row_max) ? lc_exp_sums_log(sums) : NAN;
    double label_coef = keep ? (1.0 - p->label_smoothing) * label_weight : 0.0;
    double smoothing_coef = keep && p->use_smoothing ? p->smoothing_per_class : 0.0;
    lc_ce_label_row row;
    row.loss = 0.0;
    if (label_coef != 0.0) /* q == 0 terms are 0 even where log p is -inf or NaN */
        row.loss += label_coef * (log_normaliser - shifted_label_logit);
    if (smoothing_coef != 0.0)
        row.loss += smoothing_coef * (p->weight_total * log_normaliser - smoothing_sum);
    double q_total = label_coef + smoothing_coef * p->weight_total;
    row.exp_factor = p->grad_scale * q_total / normaliser;
    row.weight_factor = p->grad_scale * smoothing_coef;
    row.label_grad = p->grad_scale * (label_exp / normaliser * q_total -
                                      (label_coef + smoothing_coef * label_weight));
    return row;
}

/*
 * Scoring (logitcore.score, kernel score_multiclass): the row state of one block of a row,
 * and of the row once its blocks are merged. It extends the exp-sum state with the two
 * further sums the score fields need, all for the shift finite_or_zero(max):
 *   moment  = sum (x - shift) exp(x - shift), 0 where the exp is 0 (entropy: H = log S -
 *             moment / S);
 *   squares = sum over the x that differ from shift of exp(2 (x - shift)) (Brier: the
 *             terms at the shift add n_at_max, as in `sums`).
 * Blocks merge in block order under the row max M: a block with a smaller max m scales
 * its sums by f = exp(m - M): others by f, squares by f^2 and the moment by
 * sum (x - M) e^(x - M) = f (moment + (m - M) S) with S its exp sum.
 */
typedef struct {
    double max; /* first, as in lc_block_state: lc_states_max reads it */
    lc_exp_sums sums;
    double moment;
    double squares;
} lc_score_state;

LC_INLINE lc_score_state lc_score_states_merge(const lc_score_state* blocks, lc_index count)
{
    const double top = lc_states_max(blocks, sizeof(lc_score_state), count);
    lc_score_state row = {top, {0.0, 0.0}, 0.0, 0.0};
    for (lc_index b = 0; b < count; b++) {
        const lc_score_state* block = &blocks[b];
        row.sums = lc_exp_sums_add(row.sums, lc_exp_sums_rescaled(block->sums, block->max, top));
        if (block->max == top) {
            row.moment += block->moment;
            row.squares += block->squares;
            continue;
        }
        double total = lc_exp_sums_total(block->sums);
        if (total == 0.0) /* an all -inf block adds nothing (and not -inf * 0) */
            continue;
        double factor = lc_exp_f64(block->max - top);
        row.moment += factor * (block->moment + (block->max - top) * total);
        row.squares += factor * factor * (block->squares + block->sums.n_at_max);
    }
    return row;
}

/*
 * The top k of a row by logit, ties to the lower class index: a min-heap of the k best
 * (value, index) pairs seen, its root the one ranked last, so that a scan compares each
 * logit with the root only. The order (larger value first, then lower index) is total, so
 * the k kept do not depend on how the row was cut into parts: heaps of parts of a row merge
 * exactly (lc_top_k_offer each entry of one into the other).
 */
typedef struct {
    double value;
    int64_t index;
} lc_ranked;

typedef struct {
    lc_ranked* entries;
    lc_index count, capacity;
} lc_top_k;

/* a ranks before b */
LC_INLINE int lc_ranked_before(lc_ranked a, lc_ranked b)
{
    return a.value > b.value || (a.value == b.value && a.index < b.index);
}

LC_INLINE void lc_top_k_sift_down(lc_ranked* heap, lc_index count, lc_index at)
{
    lc_ranked item = heap[at];
    for (;;) {
        lc_index child = 2 * at + 1;
        if (child >= count)
            break;
        /* the child ranked later goes up (the root is the last-ranked entry) */
        if (child + 1 < count && lc_ranked_before(heap[child], heap[child + 1]))
            child++;
        if (!lc_ranked_before(item, heap[child]))
            break;
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = item;
}

/* Keep `item` if it ranks among the best `capacity` seen. */
LC_INLINE void lc_top_k_offer(lc_top_k* top, lc_ranked item)
{
    if (top->count < top->capacity) {
        lc_index at = top->count++;
        while (at > 0) {
            lc_index parent = (at - 1) / 2;
            if (!lc_ranked_before(top->entries[parent], item))
                break;
            top->entries[at] = top->entries[parent];
            at = parent;
        }
        top->entries[at] = item;
    } else if (top->capacity > 0 && lc_ranked_before(item, top->entries[0])) {
        top->entries[0] = item;
        lc_top_k_sift_down(top->entries, top->count, 0);
    }
}

/* The entries in rank order (best first); the heap is used up. */
LC_INLINE void lc_top_k_sort(lc_top_k* top)
{
    for (lc_index n = top->count; n > 1; n--) {
        lc_ranked last = top->entries[0];
        top->entries[0] = top->entries[n - 1];
        top->entries[n - 1] = last;
        lc_top_k_sift_down(top->entries, n - 1, 0);
    }
}

/* What the parts of a row that are not sums keep (exact, so parts merge in any grouping):
   whether a NaN was seen, how many logits exceed the label's, and the top k. */
typedef struct {
    int has_nan;
    double n_above_label;
    lc_top_k top;
} lc_score_part;

LC_INLINE void lc_score_part_start(lc_score_part* part, lc_ranked* entries, lc_index capacity)
{
    part->has_nan = 0;
    part->n_above_label = 0.0;
    part->top.entries = entries;
    part->top.count = 0;
    part->top.capacity = capacity;
}

/* `part` takes in `other` (a part of the same row). */
LC_INLINE void lc_score_part_merge(lc_score_part* part, const lc_score_part* other)
{
    part->has_nan |= other->has_nan;
    part->n_above_label += other->n_above_label;
    for (lc_index i = 0; i < other->top.count; i++)
        lc_top_k_offer(&part->top, other->top.entries[i]);
}

#endif /* LC_ROW_STATE_H */
