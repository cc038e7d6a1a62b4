/*
 * lc_half.h -- half-precision input: float16 and bfloat16 bits widened to float, exactly.
 *
 * The kernels never copy half input to float32 first: each schedule of _cython_kernels.pyx
 * widens what it is about to hand a row function -- a range of rows, or a range of blocks
 * of one row -- into a per-thread float buffer (lc_widen_span), and hands the row function
 * a window on it (lc_window): a float pointer whose element [first] is the buffer's
 * first, so the row functions index it as they index x and are not written twice. The
 * rule is the numba backend's (numba_kernels.py, "Half-precision input"): float16 by one
 * rebiasing multiplication (subnormals exact), the exponent set for inf and NaN (payload
 * kept); bfloat16 is the upper half of a float.
 * Private to logitcore._backends._cython_kernels; not a public API.
 */
#ifndef LC_HALF_H
#define LC_HALF_H

#include "lc_platform.h"

/* How a kernel operand is stored: the float type of the call, or 16 bits of half. */
typedef enum {
    LC_INPUT_FLOAT = 0,
    LC_INPUT_FLOAT16 = 1,
    LC_INPUT_BFLOAT16 = 2,
} lc_input_format;

/* float16 exponent and mantissa bits moved to a float's place are the value times
   2^-112, subnormals included: one multiplication rebiases them exactly. */
#define LC_FLOAT16_REBIAS 0x1p112f
/* |x| >= 2^16 after rebiasing: the float16 exponent was all ones (inf or NaN). */
#define LC_FLOAT16_INF_NAN_THRESHOLD 65536.0f

LC_INLINE float lc_float16_to_float(uint16_t bits)
{
    int32_t h = (int32_t)bits;
    float value = lc_float_from_bits((h & 0x7FFF) << 13) * LC_FLOAT16_REBIAS;
    int32_t value_bits = lc_float_bits(value);
    if (value >= LC_FLOAT16_INF_NAN_THRESHOLD)
        value_bits |= 0x7F800000;
    return lc_float_from_bits((int32_t)((uint32_t)value_bits | ((uint32_t)(h & 0x8000) << 16)));
}

LC_INLINE float lc_bfloat16_to_float(uint16_t bits)
{
    return lc_float_from_bits((int32_t)((uint32_t)bits << 16));
}

/* out[j] = the float of bits[j] (format LC_INPUT_FLOAT16 or LC_INPUT_BFLOAT16): the one
   place half input is read without a scale (lc_scale_span_f32 reads it with one). */
LC_DISPATCH static void lc_widen_span(lc_input_format format, const uint16_t* bits,
                                      float* out, lc_index n)
{
    if (format == LC_INPUT_FLOAT16) {
        for (lc_index j = 0; j < n; j++)
            out[j] = lc_float16_to_float(bits[j]);
    } else {
        for (lc_index j = 0; j < n; j++)
            out[j] = lc_bfloat16_to_float(bits[j]);
    }
}

/* One element of half input as a float (the label's logit of a long row). */
static inline float lc_widen_one(lc_input_format format, const uint16_t* bits, lc_index index)
{
    return format == LC_INPUT_FLOAT16 ? lc_float16_to_float(bits[index])
                                      : lc_bfloat16_to_float(bits[index]);
}

/* A window on buffer: the pointer p with p[first] == buffer[0], through which a row
   function reads the widened elements first, first + 1, ... at the indices it would read
   them in x. Computed on integers: only the buffer's own elements are ever read. */
static inline const float* lc_window(const float* buffer, lc_index first)
{
    return (const float*)((uintptr_t)buffer - (uintptr_t)first * sizeof(float));
}

/* temperature= (a kernel's row_scale, 1/T): the schedules load a row, or a range of
   blocks of one row, into a per-thread buffer of the call's type at the same load point,
   out[j] = source[first + j] * factor (half widened first), rounded once, and the row
   functions read a window on it, unchanged. source is the input in its own format. */
LC_DISPATCH static void lc_scale_span_f32(lc_input_format format, const void* source,
                                          lc_index first, float* out, lc_index n, float factor)
{
    if (format == LC_INPUT_FLOAT) {
        const float* x = (const float*)source + first;
        for (lc_index j = 0; j < n; j++)
            out[j] = x[j] * factor;
    } else if (format == LC_INPUT_FLOAT16) {
        const uint16_t* bits = (const uint16_t*)source + first;
        for (lc_index j = 0; j < n; j++)
            out[j] = lc_float16_to_float(bits[j]) * factor;
    } else {
        const uint16_t* bits = (const uint16_t*)source + first;
        for (lc_index j = 0; j < n; j++)
            out[j] = lc_bfloat16_to_float(bits[j]) * factor;
    }
}

LC_DISPATCH static void lc_scale_span_f64(const double* source, lc_index first, double* out,
                                          lc_index n, double factor)
{
    const double* x = source + first;
    for (lc_index j = 0; j < n; j++)
        out[j] = x[j] * factor;
}

/* lc_window for a double buffer. */
static inline const double* lc_window_f64(const double* buffer, lc_index first)
{
    return (const double*)((uintptr_t)buffer - (uintptr_t)first * sizeof(double));
}

#endif /* LC_HALF_H */
