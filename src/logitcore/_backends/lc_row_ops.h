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

/* How many rows one block holds. Short rows: as many as fit LC_ROW_TILE_ELEMENTS. Long rows:
   up to 16, as long as the block fits LC_BLOCK_CLASSES, because a kernel makes each of
   its passes over the whole block before the next and the second pass must find the rows
   in cache (one 131072-class row is a block of its own). */
LC_INLINE lc_index lc_rows_per_block(lc_index n_classes)
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
};

/* ---- instantiate the generic part for float and for double ---- */
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

