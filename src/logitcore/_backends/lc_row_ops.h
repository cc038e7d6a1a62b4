/*
 * lc_row_ops.h -- what each op computes on a row (a row operation), for float and double.
 * Private to logitcore._backends._cython_kernels; not a public API.
 *
 * Division of labour: Cython (_cython_kernels.pyx) validates nothing; its schedules split
 * the work across OpenMP threads (whole rows, blocks of long rows, flat spans) and call the
 * functions here on a contiguous range of rows or on one block of a row. This file does the
 * arithmetic, in loops gcc vectorises. Why C and not Cython for the row loops: portable
 * wheels are compiled for baseline x86-64 (SSE2); the row functions carry gcc's
 * target_clones attribute (LC_DISPATCH), so each is also compiled for AVX2+FMA and AVX-512
 * and the loader picks the best one for the CPU it runs on. Cython cannot attach that
 * attribute to the functions it generates. Reductions stay vectorisable without
 * reassociation flags because they are written with explicit independent accumulators
 * (LC_LANES of them).
 *
 * float and double: the generic code is in lc_row_ops_template.h, included twice below
 * with LC_REAL set to float and then to double (the C equivalent of a template).
 * LC_NAME(name) is name_f32 in the first pass and name_f64 in the second; each generic
 * function's comment names both.
 */
#ifndef LC_ROW_OPS_H
#define LC_ROW_OPS_H

#include "lc_row_state.h"

/* Sizes from kernel_constants.py (see docs/architecture.md): rows shorter than
   LC_NARROW_MAX_CLASSES are processed LC_ROW_TILE_ELEMENTS elements at a time as one flat
   array (vectorised across rows); longer rows one at a time (vectorised along the row), in
   blocks of LC_BLOCK_CLASSES classes once they are longer than one block. */
#define LC_TILE_MAX_ROWS 256 /* at most this many rows per row tile (sizes per-row arrays) */
/* Row sums keep LC_LANES partial sums and flush them into a double total every
   LC_PARTIAL_SUM_LENGTH elements: few enough terms per partial sum that float partials of
   positive terms stay at ~1e-7 relative error, and double ones near numpy's pairwise sum. */
#define LC_PARTIAL_SUM_LENGTH 1024

/* How many rows one row tile holds. Narrow rows: as many as fit LC_ROW_TILE_ELEMENTS. Wider
   rows (up to LC_BLOCK_CLASSES classes; longer ones take the class_split schedule): up to
   16, as long as the tile fits LC_BLOCK_CLASSES elements, because a kernel makes each of
   its passes over the whole tile before the next and the second pass must find the rows
   in cache. */
LC_INLINE lc_index lc_rows_per_tile(lc_index n_classes)
{
    lc_index budget = n_classes >= LC_NARROW_MAX_CLASSES ? LC_BLOCK_CLASSES : LC_ROW_TILE_ELEMENTS;
    lc_index rows = budget / (n_classes > 0 ? n_classes : 1);
    lc_index most = n_classes >= LC_NARROW_MAX_CLASSES ? 16 : LC_TILE_MAX_ROWS;
    return rows < 1 ? 1 : rows > most ? most : rows;
}

/* The terms the signed row reduction (row_sum below) can add up, from the arrays a, b, c
   and the numbers shift, scale, offset of its operands. */
enum lc_row_term {
    LC_TERM_VALUE,            /* a */
    LC_TERM_ABS,              /* |a| */
    LC_TERM_PRODUCT,          /* a * b */
    LC_TERM_WEIGHTED_SHIFTED, /* b * (a - shift), exactly 0 where b == 0 (even if a = -inf) */
    LC_TERM_SCALED_EXP,       /* b * exp(a - shift), exactly 0 where b == 0 (even if a = inf) */
    LC_TERM_TARGET,           /* q = b * (scale * c + offset): weight times smoothed target */
    LC_TERM_TARGET_SHIFTED,   /* q * (a - shift) */
    LC_TERM_SHIFTED_EXP_MOMENT, /* (a - shift) exp(a - shift), exactly 0 where the exp is 0
                                   (a = -inf: not -inf * 0 = NaN) */
};

/* What a kernel call hands its schedule (_cython_kernels.pyx fills it): the op, its sizes,
   every array as an untyped pointer (lc_rows_f32 / _f64 and lc_block_pass_f32 / _f64
   read them as float or double) and its scalars. Unused fields are 0 / NULL. */
typedef enum {
    LC_OP_LOGSUMEXP,
    LC_OP_LOGSUMEXP_SCALED,
    LC_OP_SOFTMAX,
    LC_OP_LOG_SOFTMAX,
    LC_OP_SOFTMAX_BACKWARD,
    LC_OP_LOG_SOFTMAX_BACKWARD,
    LC_OP_SIGMOID,
    LC_OP_LOG_SIGMOID,
    LC_OP_CROSS_ENTROPY_LABELS,
    LC_OP_CROSS_ENTROPY_PROBS,
    LC_OP_BCE_WITH_LOGITS,
    LC_OP_ENTROPY,
    LC_OP_SCORE_MULTICLASS,
    LC_OP_SCORE_BINARY,
    LC_OP_SCORE_MULTILABEL,
} lc_op;

/* The scoring kernels' inputs and outputs (op_table.py: score_multiclass, score_binary,
   score_multilabel). Every output is NULL when it was not asked for (the caller passed an
   empty array): the row functions neither compute nor write it. Float outputs have the
   element type of x; flags are uint8 0 / 1. */
typedef struct {
    const int64_t* labels; /* NULL: no labels (then every label output is NULL too) */
    int64_t ignore_index;
    lc_index top_k;        /* columns of top_k_indices / top_k_probs */
    int64_t* pred;
    void* max_logit;
    void* confidence;
    void* margin;
    void* logit_margin;
    void* entropy;
    void* logsumexp;
    int64_t* top_k_indices;
    void* top_k_probs;
    void* label_logprob;
    void* loss;
    uint8_t* correct;
    int64_t* label_rank;
    void* brier;
    /* What the outputs need, from lc_score_multiclass_plan: */
    lc_index heap_capacity; /* entries of the top-k heap (0: no ordering asked) */
    int want_sums;          /* the exp sums (every probability field) */
    int want_moment;        /* entropy's sum (x - shift) exp(x - shift) */
    int want_squares;       /* Brier's sum exp(2 (x - shift)) */
    int want_rank;          /* count the logits above the label's */
    int out_of_memory;      /* set when a row function could not allocate its scratch */
} lc_score_multiclass_fields;

typedef struct {
    const int64_t* labels; /* NULL: no labels; else 0, 1 or ignore_index */
    int64_t ignore_index;
    double threshold;
    void* prob;
    uint8_t* pred;
    void* confidence;
    void* entropy;
    void* loss;
    uint8_t* correct;
    void* brier;
} lc_score_binary_fields;

typedef struct {
    const uint8_t* targets; /* (n, C) 0 / 1, or NULL: no labels */
    const void* threshold;  /* (C,) of x's element type */
    int64_t* n_predicted;
    void* loss;
    uint8_t* exact_match;
    int64_t* true_positives;
    int64_t* false_positives;
    int64_t* false_negatives;
    uint8_t* pred;          /* (n, C) */
} lc_score_multilabel_fields;

/* Which sums and how large a top-k heap the asked outputs of score_multiclass need. */
LC_INLINE void lc_score_multiclass_plan(lc_score_multiclass_fields* f, lc_index n_classes)
{
    const int labels = f->labels != NULL;
    const int second = f->margin != NULL || f->logit_margin != NULL;
    const int top_k = f->top_k_indices != NULL || f->top_k_probs != NULL;
    const int order = f->pred != NULL || (labels && f->correct != NULL) || second || top_k;
    lc_index capacity = top_k ? f->top_k : 0;
    if (second && capacity < 2)
        capacity = 2;
    if (order && capacity < 1)
        capacity = 1;
    f->heap_capacity = capacity < n_classes ? capacity : n_classes;
    f->want_sums = f->confidence || f->margin || f->entropy || f->logsumexp || f->top_k_probs ||
                   (labels && (f->label_logprob || f->loss || f->brier));
    f->want_moment = f->entropy != NULL;
    f->want_squares = labels && f->brier != NULL;
    f->want_rank = labels && f->label_rank != NULL;
    f->out_of_memory = 0;
}

typedef struct {
    lc_op op;
    lc_index n_rows;
    lc_index n_classes;         /* 1 for the flat (elementwise) kernels */
    const void* x;              /* (n, C) logits; dy of the backward kernels; the flat input */
    const void* y;              /* second (n, C) operand: b, target, or y of the backward ones */
    const int64_t* labels;
    const void* weight;         /* (C,), or BCE's (1 or n, C) */
    const void* pos_weight;     /* BCE's (1 or n, C) */
    lc_index weight_stride;     /* BCE: 0 (one weight row for all rows) or C */
    lc_index pos_weight_stride;
    void* out;                  /* the first output */
    lc_index out_row_length;    /* its elements per row */
    void* out2;                 /* the second output: sign_out, or the gradient (NULL: none) */
    int loss_row_sums;          /* BCE: out holds each row's sum */
    int64_t ignore_index;
    double label_smoothing;
    double grad_scale;
    lc_ce_label_params ce;      /* cross-entropy with labels in the class split */
    int prefetch_next_block;    /* class split: prefetch the next block (see lc_block_max_sum_exp) */
    void* score;                /* the lc_score_*_fields of a scoring kernel */
} lc_operands;

/* The passes of the class_split schedule over the blocks of a long row. */
typedef enum {
    LC_STATE_PASS, /* each block's state (cross-entropy: its max) */
    LC_SUMS_PASS,  /* cross-entropy: each block's sums for the row's max */
    LC_WRITE_PASS, /* each block's output, given the row's state */
} lc_block_pass;

/* A long row's merged state, and what its write pass needs: softmax's normaliser or
   log_softmax's log of it (`normaliser`), cross-entropy's gradient coefficients. */
typedef struct {
    lc_block_state state;
    double normaliser;
    double exp_factor;
    double weight_factor;
} lc_row_result;

/* p = sigmoid(v) and log p, log(1 - p) without cancelling (-softplus(-v), -softplus(v)),
   in double; a NaN logit gives NaN for all three. */
typedef struct {
    double prob, log_prob, log_not_prob;
} lc_sigmoid_logs;

LC_INLINE lc_sigmoid_logs lc_sigmoid_logs_of(double v)
{
    double e = lc_exp_f64(-fabs(v));
    double inverse = 1.0 / (1.0 + e);
    double log1p_e = lc_log1p_unit_f64(e); /* NaN stays NaN */
    lc_sigmoid_logs result;
    result.prob = v >= 0.0 ? inverse : e * inverse;
    result.log_prob = (v < 0.0 ? v : 0.0) - log1p_e;
    result.log_not_prob = (v > 0.0 ? -v : 0.0) - log1p_e;
    return result;
}

/* ---- instantiate the generic part for float and for double ----
   Every name the two passes define (LC_NAME(f) is f_f32, then f_f64), for grep:
   finite_or_zero_f32/_f64, row_max_f32/_f64, row_max_where_nonzero_f32/_f64,
   row_sum_exp_f32/_f64, smoothed_target_f32/_f64, row_term_f32/_f64,
   row_sum_f32/_f64, row_scale_f32/_f64, row_subtract_f32/_f64,
   row_normaliser_f32/_f64, row_log_normaliser_f32/_f64, row_logsumexp_f32/_f64,
   tile_row_max_f32/_f64, tile_sum_exp_f32/_f64, tile_log_normaliser_f32/_f64,
   lc_block_max_sum_exp_f32/_f64, lc_softmax_block_write_f32/_f64,
   lc_log_softmax_block_write_f32/_f64, lc_block_max_f32/_f64,
   lc_ce_label_block_sums_f32/_f64, label_grad_span_f32/_f64,
   lc_ce_label_setup_f32/_f64,
   normalise_tiles_f32/_f64, lc_logsumexp_rows_f32/_f64, lc_softmax_rows_f32/_f64,
   lc_log_softmax_rows_f32/_f64, lc_logsumexp_scaled_rows_f32/_f64, lc_entropy_rows_f32/_f64,
   lc_cross_entropy_labels_rows_f32/_f64, lc_cross_entropy_probs_rows_f32/_f64,
   bce_element_f32/_f64, lc_bce_rows_f32/_f64, lc_sigmoid_span_f32/_f64,
   lc_log_sigmoid_span_f32/_f64, backward_rows_f32/_f64,
   lc_softmax_backward_rows_f32/_f64, lc_log_softmax_backward_rows_f32/_f64,
   lc_rows_f32/_f64, lc_block_pass_f32/_f64, row_operands_f32/_f64,
   scoring: score_block_scan_f32/_f64, score_top_k_floor_f32/_f64,
   score_top_k_consider_f32/_f64, score_block_top_k_f32/_f64, score_block_sums_f32/_f64,
   score_block_f32/_f64, score_label_f32/_f64, score_row_label_f32/_f64,
   score_rank_value_f32/_f64, score_rows_f32/_f64, score_rows_set_f32/_f64,
   score_prob_f32/_f64, score_rows_finish_f32/_f64, score_top_k_write_f32/_f64,
   score_narrow_sums_f32/_f64, score_transpose_f32/_f64, score_narrow_transpose_f32/_f64,
   score_narrow_top_k_f32/_f64, score_top_k_copy_f32/_f64, score_narrow_tile_f32/_f64,
   lc_score_multiclass_rows_f32/_f64, lc_score_multiclass_blocks_f32/_f64,
   lc_score_multiclass_row_finish_f32/_f64, lc_score_binary_span_f32/_f64,
   lc_score_multilabel_rows_f32/_f64 */
#define LC_CONCAT_(a, b) a##b
#define LC_CONCAT(a, b) LC_CONCAT_(a, b)
#define LC_NAME(name) LC_CONCAT(name, LC_SUFFIX)

#define LC_REAL float
#define LC_FABS fabsf
#define LC_SUFFIX _f32
#define LC_EXP lc_exp_f32
#define LC_LOG1P_UNIT lc_log1p_unit_f32
#include "lc_row_ops_template.h"
#undef LC_REAL
#undef LC_FABS
#undef LC_SUFFIX
#undef LC_EXP
#undef LC_LOG1P_UNIT

#define LC_REAL double
#define LC_FABS fabs
#define LC_SUFFIX _f64
#define LC_EXP lc_exp_f64
#define LC_LOG1P_UNIT lc_log1p_unit_f64
#include "lc_row_ops_template.h"
#undef LC_REAL
#undef LC_FABS
#undef LC_SUFFIX
#undef LC_EXP
#undef LC_LOG1P_UNIT

#endif /* LC_ROW_OPS_H */

